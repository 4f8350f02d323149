-- q4: Average price for a category: the average winning bid of the auctions in each category
-- Flink: nexmark-flink q4.sql
-- Kind: join
-- Needs: an interval join of bid and auction (bid time between the auction's start and expiry), then two non-windowed (updating) aggregates
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
