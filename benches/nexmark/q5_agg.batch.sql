-- q5_agg as a DataFusion batch query (the ceiling): each bid counts in the
-- five 10-second windows, 2 seconds apart, that contain it.
SELECT auction, COUNT(*) AS num, starttime, starttime + INTERVAL '10' SECOND AS endtime
FROM (
  SELECT auction,
         date_bin(INTERVAL '2' SECOND, date_time) - k AS starttime
  FROM bid CROSS JOIN (VALUES (INTERVAL '0' SECOND), (INTERVAL '2' SECOND), (INTERVAL '4' SECOND),
                           (INTERVAL '6' SECOND), (INTERVAL '8' SECOND)) AS hops(k)
) AS w
GROUP BY auction, starttime
