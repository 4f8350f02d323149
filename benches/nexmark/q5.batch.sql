-- q5 as a DataFusion batch query (the ceiling).
WITH counts AS (
  SELECT auction, COUNT(*) AS num, starttime
  FROM (
    SELECT auction,
           date_bin(INTERVAL '2' SECOND, date_time) - INTERVAL '2' SECOND * k AS starttime
    FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS hops(k)
  ) AS w
  GROUP BY auction, starttime
)
SELECT c.auction, c.num
FROM counts c
JOIN (SELECT starttime, MAX(num) AS maxn FROM counts GROUP BY starttime) m
  ON c.starttime = m.starttime AND c.num >= m.maxn
