-- q15: Bidding statistics report: bids, bidders and auctions per day, by price range (not in the original suite)
-- Flink: nexmark-flink q15.sql (DATE_FORMAT is to_char)
-- Kind: aggregate
-- Needs: a changelog sink here: the aggregate runs today as an update-mode aggregate, but only to a sink declared 'mode' = 'changelog' (op/+I/-U/+U/-D rows), which the blackhole sink does not take yet and whose output the batch ceiling would not match row for row
CREATE TABLE nexmark_q15 WITH (${SINK});

INSERT INTO nexmark_q15
SELECT
  to_char(date_time, '%Y-%m-%d') AS day,
  COUNT(*) AS total_bids,
  COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,
  COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
  COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
  COUNT(DISTINCT bidder) AS total_bidders,
  COUNT(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
  COUNT(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
  COUNT(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
  COUNT(DISTINCT auction) AS total_auctions,
  COUNT(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
  COUNT(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
  COUNT(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
FROM bid
GROUP BY to_char(date_time, '%Y-%m-%d');
