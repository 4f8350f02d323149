-- q5_agg: Hot items, the windowed aggregate part: bids per auction in each 10-second window, sliding every 2 seconds
-- Flink: the AuctionBids subquery of nexmark-flink q5.sql
-- Kind: windowed
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q5_agg WITH (${SINK});

INSERT INTO nexmark_q5_agg
SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime
FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
GROUP BY auction, window_start, window_end;
