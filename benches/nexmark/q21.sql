-- q21: Add channel id: each bid of a known channel with its channel id (not in the original suite)
-- Flink: nexmark-flink q21.sql (REGEXP_EXTRACT(url, re, 2) is regexp_match(url, re)[2])
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q21 WITH (${SINK});

INSERT INTO nexmark_q21
SELECT auction, bidder, price, channel,
       CASE
         WHEN lower(channel) = 'apple' THEN '0'
         WHEN lower(channel) = 'google' THEN '1'
         WHEN lower(channel) = 'facebook' THEN '2'
         WHEN lower(channel) = 'baidu' THEN '3'
         ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2]
       END AS channel_id
FROM bid
WHERE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] IS NOT NULL
   OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu');
