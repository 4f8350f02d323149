-- q2 as a DataFusion batch query (the ceiling).
SELECT auction, price FROM bid WHERE auction % 123 = 0
