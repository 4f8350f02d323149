-- q13: Bounded side input join: each bid enriched from a side table keyed by auction % 10000 (not in the original suite)
-- Flink: nexmark-flink q13.sql
-- Kind: join
-- Needs: nothing more; runs today (a lookup join: side_input, the harness's CSV of keys 0..9999, read whole and snapshotted into the checkpoint; each epoch joins with the version its offsets entry names)
CREATE TABLE side_input ("key" BIGINT, "value" VARCHAR)
  WITH ('connector' = 'files', 'path' = '${SIDE_INPUT}', 'format' = 'csv');
CREATE TABLE nexmark_q13 WITH (${SINK});

INSERT INTO nexmark_q13
SELECT B.auction, B.bidder, B.price, B.date_time, S."value"
FROM (SELECT *, PROCTIME() AS p_time FROM bid) B
JOIN side_input FOR SYSTEM_TIME AS OF B.p_time AS S
ON B.auction % 10000 = S."key";
