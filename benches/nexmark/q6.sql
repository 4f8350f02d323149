-- q6: Average selling price by seller: the average of each seller's last 10 winning bids (Flink cannot run it either)
-- Flink: nexmark-flink q6.sql
-- Kind: join
-- Needs: an interval join of auction and bid, Top-N (ROW_NUMBER) per auction, and an OVER window that consumes its retractions
CREATE TABLE nexmark_q6 WITH (${SINK});

INSERT INTO nexmark_q6
SELECT Q.seller,
       AVG(Q.price) OVER (PARTITION BY Q.seller ORDER BY Q.date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_price
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY id, seller ORDER BY price DESC) AS rownum
  FROM (
    SELECT A.id, A.seller, B.price, B.date_time
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  )
) AS Q
WHERE Q.rownum <= 1;
