-- q2: Selection: the bids on every 123rd auction
-- Flink: nexmark-flink q2.sql (MOD(auction, 123) written as auction % 123)
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q2 WITH (${SINK});

INSERT INTO nexmark_q2
SELECT auction, price FROM bid WHERE auction % 123 = 0;
