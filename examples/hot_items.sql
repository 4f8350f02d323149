-- Hot items: for every 10-second window, the auctions that got at least
-- three bids, with their top price and total volume.
--
-- Run from the repository root:
--   cargo run --release -p weir-cli -- run examples/hot_items.sql --trigger available-now --drain

CREATE TABLE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND
) WITH ('connector' = 'files', 'path' = 'examples/data/bids/', 'format' = 'parquet');

CREATE TABLE hot_items WITH ('connector' = 'files', 'path' = 'out/hot_items/', 'format' = 'parquet');

INSERT INTO hot_items
SELECT window_start, window_end, auction,
       COUNT(*) AS bids, MAX(price) AS top_price, SUM(price) AS volume
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction
HAVING COUNT(*) >= 3;
