-- q20: Expand bid with auction: bids with their auction's details, for auctions in category 10 (not in the original suite)
-- Flink: nexmark-flink q20.sql
-- Kind: join
-- Needs: nothing more; runs today (a regular inner join on auction's declared key: a bid is held only until its
-- auction arrives, but every auction is held, so the state grows without bound, as in Flink, unless 'state.ttl' is set)
CREATE TABLE nexmark_q20 WITH (${SINK});

INSERT INTO nexmark_q20
SELECT auction, bidder, price, channel, url, B.date_time AS bid_date_time, B.extra AS bid_extra,
       item_name, description, initial_bid, reserve, A.date_time AS auction_date_time, expires, seller,
       category, A.extra AS auction_extra
FROM bid AS B INNER JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;
