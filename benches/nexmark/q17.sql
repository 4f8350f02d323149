-- q17: Auction statistics report: bids per auction and day, by price range, with min/max/avg/sum price (not in the original suite)
-- Flink: nexmark-flink q17.sql (DATE_FORMAT is to_char)
-- Kind: aggregate
-- Needs: nothing more; runs today (an update aggregate: its changelog goes to the Parquet sink declared 'mode' = 'changelog', so its rows out are +I/-U/+U/-D rows, not the batch query's final rows)
-- Output: changelog
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
