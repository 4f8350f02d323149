-- q9: Winning bids: the highest bid of each auction before it expires (not in the original suite)
-- Flink: nexmark-flink q9.sql
-- Kind: join
-- Needs: nothing more; runs today (an interval join of auction and bid whose bound ends at the auction's own expiry column, so its state is bounded by the watermark; then a Top-1 per auction; its changelog into the Parquet sink declared 'mode' = 'changelog')
-- Output: changelog
CREATE TABLE nexmark_q9 WITH (${SINK});

INSERT INTO nexmark_q9
SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra,
       auction, bidder, price, bid_date_time, bid_extra
FROM (
  SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
         ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
  FROM auction A, bid B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
)
WHERE rownum <= 1;
