-- q14: Calculation: bids with a price in a range, their time of day and the c's in extra (not in the original suite)
-- Flink: nexmark-flink q14.sql; its count_char UDF is written with built-ins, length(extra) - length(replace(extra, 'c', ''))
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q14 WITH (${SINK});

INSERT INTO nexmark_q14
SELECT auction, bidder, 0.908 * price AS price,
       CASE
         WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime'
         WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime'
         ELSE 'otherTime'
       END AS bid_time_type,
       date_time, extra,
       length(extra) - length(replace(extra, 'c', '')) AS c_counts
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000;
