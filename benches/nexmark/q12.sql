-- q12: Bids per bidder in 10-second windows (not in the original suite); Flink's q12 uses processing time, here event time
-- Flink: nexmark-flink q12.sql, TUMBLE over date_time instead of PROCTIME()
-- Kind: windowed
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q12 WITH (${SINK});

INSERT INTO nexmark_q12
SELECT bidder, COUNT(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
