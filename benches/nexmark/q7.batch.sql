-- q7 as a DataFusion batch query (the ceiling).
SELECT B.auction, B.bidder, B.price, B.date_time, B.extra
FROM bid B
JOIN (
  SELECT MAX(price) AS maxprice,
         date_bin(INTERVAL '10' SECOND, date_time) + INTERVAL '10' SECOND AS date_time
  FROM bid
  GROUP BY date_bin(INTERVAL '10' SECOND, date_time)
) B1
ON B.price = B1.maxprice
WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time
