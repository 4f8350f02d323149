-- q17: Auction statistics report: bids per auction and day, by price range, with min/max/avg/sum price (not in the original suite)
-- Flink: nexmark-flink q17.sql (DATE_FORMAT is to_char)
-- Kind: aggregate
-- Needs: a changelog sink here: the aggregate runs today as an update-mode aggregate, but only to a sink declared 'mode' = 'changelog' (op/+I/-U/+U/-D rows), which the blackhole sink does not take yet and whose output the batch ceiling would not match row for row
CREATE TABLE nexmark_q17 WITH (${SINK});

INSERT INTO nexmark_q17
SELECT
  auction,
  to_char(date_time, '%Y-%m-%d') AS day,
  COUNT(*) AS total_bids,
  COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,
  COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
  COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
  MIN(price) AS min_price,
  MAX(price) AS max_price,
  AVG(price) AS avg_price,
  SUM(price) AS sum_price
FROM bid
GROUP BY auction, to_char(date_time, '%Y-%m-%d');
