-- q4: Average price for a category: the average winning bid of the auctions in each category
-- Flink: nexmark-flink q4.sql
-- Kind: join
-- Needs: nothing more; runs today (an interval join of bid and auction whose bound ends at the auction's own expiry column: an auction is kept until the watermark passes its expiry, a bid until it passes the bid; then an update aggregate, and an aggregate over its changelog)
-- Output: changelog
CREATE TABLE nexmark_q4 WITH (${SINK});

INSERT INTO nexmark_q4
SELECT Q.category, AVG(Q.final) AS avg_final
FROM (
  SELECT MAX(B.price) AS final, A.category
  FROM auction A, bid B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
