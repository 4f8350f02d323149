-- q22: Get URL directories: the first three directories of each bid's URL (not in the original suite)
-- Flink: nexmark-flink q22.sql (SPLIT_INDEX(url, '/', i), 0-based, is split_part(url, '/', i + 1))
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q22 WITH (${SINK});

INSERT INTO nexmark_q22
SELECT auction, bidder, price, channel,
       split_part(url, '/', 4) AS dir1,
       split_part(url, '/', 5) AS dir2,
       split_part(url, '/', 6) AS dir3
FROM bid;
