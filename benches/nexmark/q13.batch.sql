-- q13 as a DataFusion batch query (the ceiling); side_input is the harness's CSV.
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B JOIN side_input S ON B.auction % 10000 = S.key
