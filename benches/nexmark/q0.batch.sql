-- q0 as a DataFusion batch query (the ceiling).
SELECT auction, bidder, price, date_time, extra FROM bid
