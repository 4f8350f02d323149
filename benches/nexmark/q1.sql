-- q1: Currency conversion: each bid's price from dollars to euros
-- Flink: nexmark-flink q1.sql (Flink's price is DECIMAL(23, 3); here 0.908 is a DOUBLE, DataFusion's default for a decimal literal)
-- Kind: stateless
-- Needs: nothing more; runs today
CREATE TABLE nexmark_q1 WITH (${SINK});

INSERT INTO nexmark_q1
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid;
