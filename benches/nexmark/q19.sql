-- q19: Auction top-10 price: the 10 highest bids of each auction (not in the original suite)
-- Flink: nexmark-flink q19.sql
-- Kind: aggregate
-- Needs: Top-N (ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) <= 10) with updating results
CREATE TABLE nexmark_q19 WITH (${SINK});

INSERT INTO nexmark_q19
SELECT * FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid
)
WHERE rank_number <= 10;
