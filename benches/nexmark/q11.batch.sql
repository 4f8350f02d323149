-- q11 as a DataFusion batch query (the ceiling): a bid 10 seconds or more
-- after the bidder's previous one starts a new session.
WITH gaps AS (
  SELECT bidder, date_time,
         CASE WHEN date_time - lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time)
                   < INTERVAL '10' SECOND THEN 0 ELSE 1 END AS starts
  FROM bid
), sessions AS (
  SELECT bidder, date_time,
         SUM(starts) OVER (PARTITION BY bidder ORDER BY date_time ROWS UNBOUNDED PRECEDING) AS session
  FROM gaps
)
SELECT bidder, COUNT(*) AS bid_count, MIN(date_time) AS starttime,
       MAX(date_time) + INTERVAL '10' SECOND AS endtime
FROM sessions
GROUP BY bidder, session
