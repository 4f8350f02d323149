-- q19: Auction top-10 price: the 10 highest bids of each auction (not in the original suite)
-- Flink: nexmark-flink q19.sql
-- Kind: aggregate
-- Needs: nothing more; runs today (a Top-10 outside windows, its changelog into the Parquet sink declared 'mode' = 'changelog')
-- Output: changelog
CREATE TABLE nexmark_q19 WITH (${SINK});

INSERT INTO nexmark_q19
SELECT * FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid
)
WHERE rank_number <= 10;
