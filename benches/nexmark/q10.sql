-- q10: Log to file system: every bid with its day and minute (not in the original suite)
-- Flink: nexmark-flink q10.sql (Flink partitions its filesystem sink by dt, hm; Weir's sink is not partitioned; DATE_FORMAT is to_char)
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q10 WITH (${SINK});

INSERT INTO nexmark_q10
SELECT auction, bidder, price, date_time, extra,
       to_char(date_time, '%Y-%m-%d') AS dt, to_char(date_time, '%H:%M') AS hm
FROM bid;
