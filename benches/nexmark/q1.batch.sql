-- q1 as a DataFusion batch query (the ceiling).
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid
