-- q0: Pass-through: every bid, unchanged (not in the original suite; measures the source and the engine's overhead)
-- Flink: nexmark-flink q0.sql
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q0 WITH (${SINK});

INSERT INTO nexmark_q0
SELECT auction, bidder, price, date_time, extra FROM bid;
