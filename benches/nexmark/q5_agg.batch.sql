-- q5_agg as a DataFusion batch query (the ceiling): each bid counts in the
-- five 10-second windows, 2 seconds apart, that contain it.
SELECT auction, COUNT(*) AS num, starttime, starttime + INTERVAL '10' SECOND AS endtime
FROM (
  SELECT auction,
         date_bin(INTERVAL '2' SECOND, date_time) - INTERVAL '2' SECOND * k AS starttime
  FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS hops(k)
) AS w
GROUP BY auction, starttime
