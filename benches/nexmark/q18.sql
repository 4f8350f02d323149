-- q18: Find last bid: each bidder's last bid on each auction (not in the original suite)
-- Flink: nexmark-flink q18.sql
-- Kind: aggregate
-- Needs: nothing more; runs today (deduplication keeping the last bid: a Top-1 outside windows, its changelog into the Parquet sink declared 'mode' = 'changelog')
-- Output: changelog
CREATE TABLE nexmark_q18 WITH (${SINK});

INSERT INTO nexmark_q18
SELECT auction, bidder, price, channel, url, date_time, extra
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
  FROM bid
)
WHERE rank_number <= 1;
