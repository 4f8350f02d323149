-- Outbid: each bid that was beaten on the same auction within 2 seconds,
-- with the bid that beat it. An interval join of the bids with themselves:
-- a bid is kept only until the watermark passes its time + 2 s.
--
-- Run from the repository root:
--   cargo run --release -p weir-cli -- run examples/outbid.sql --trigger available-now --drain

CREATE TABLE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND
) WITH ('connector' = 'files', 'path' = 'examples/data/bids/', 'format' = 'parquet');

CREATE TABLE outbid WITH ('connector' = 'files', 'path' = 'out/outbid/', 'format' = 'parquet');

INSERT INTO outbid
SELECT a.auction, a.bidder, a.price, a.date_time,
       b.bidder AS by_bidder, b.price AS by_price, b.date_time AS by_time
FROM bids a JOIN bids b
  ON a.auction = b.auction AND b.price > a.price
 AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '2' SECOND;
