-- q7_agg as a DataFusion batch query (the ceiling).
SELECT date_bin(INTERVAL '10' SECOND, date_time) AS window_start,
       date_bin(INTERVAL '10' SECOND, date_time) + INTERVAL '10' SECOND AS window_end,
       MAX(price) AS maxprice
FROM bid
GROUP BY date_bin(INTERVAL '10' SECOND, date_time)
