-- q13: Bounded side input join: each bid enriched from a side table keyed by auction % 10000 (not in the original suite)
-- Flink: nexmark-flink q13.sql
-- Kind: join
-- Needs: a lookup join of a stream with a bounded side table (FOR SYSTEM_TIME AS OF) and processing time (PROCTIME()); the harness writes the side table (key 0..9999, value) as CSV
CREATE TABLE side_input ("key" BIGINT, "value" VARCHAR)
  WITH ('connector' = 'files', 'path' = '${SIDE_INPUT}', 'format' = 'csv');
CREATE TABLE nexmark_q13 WITH (${SINK});

INSERT INTO nexmark_q13
SELECT B.auction, B.bidder, B.price, B.date_time, S."value"
FROM (SELECT *, PROCTIME() AS p_time FROM bid) B
JOIN side_input FOR SYSTEM_TIME AS OF B.p_time AS S
ON B.auction % 10000 = S."key";
