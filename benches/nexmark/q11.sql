-- q11: User sessions: bids per bidder in each session of activity (gap 10 seconds) (not in the original suite)
-- Flink: nexmark-flink q11.sql, with the SESSION table function instead of the legacy GROUP BY SESSION(...)
-- Kind: windowed
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q11 WITH (${SINK});

INSERT INTO nexmark_q11
SELECT bidder, COUNT(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
