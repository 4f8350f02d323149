-- q8 as a DataFusion batch query (the ceiling).
SELECT P.id, P.name, P.starttime
FROM (
  SELECT id, name, date_bin(INTERVAL '10' SECOND, date_time) AS starttime
  FROM person
  GROUP BY id, name, date_bin(INTERVAL '10' SECOND, date_time)
) P
JOIN (
  SELECT seller, date_bin(INTERVAL '10' SECOND, date_time) AS starttime
  FROM auction
  GROUP BY seller, date_bin(INTERVAL '10' SECOND, date_time)
) A
ON P.id = A.seller AND P.starttime = A.starttime
