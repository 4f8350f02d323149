-- q5 as a DataFusion batch query (the ceiling).
WITH counts AS (
  SELECT auction, COUNT(*) AS num, starttime
  FROM (
    SELECT auction,
           date_bin(INTERVAL '2' SECOND, date_time) - k AS starttime
    FROM bid CROSS JOIN (VALUES (INTERVAL '0' SECOND), (INTERVAL '2' SECOND), (INTERVAL '4' SECOND),
                           (INTERVAL '6' SECOND), (INTERVAL '8' SECOND)) AS hops(k)
  ) AS w
  GROUP BY auction, starttime
)
SELECT c.auction, c.num
FROM counts c
JOIN (SELECT starttime, MAX(num) AS maxn FROM counts GROUP BY starttime) m
  ON c.starttime = m.starttime AND c.num >= m.maxn
