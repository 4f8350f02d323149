-- q7_agg: Highest bid, the windowed aggregate part: the top price of each 10-second window
-- Flink: the B1 subquery of nexmark-flink q7.sql
-- Kind: windowed
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q7_agg WITH (${SINK});

INSERT INTO nexmark_q7_agg
SELECT window_start, window_end, MAX(price) AS maxprice
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
