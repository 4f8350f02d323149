-- q3: Local item suggestion: who sells in OR, ID or CA in category 10, and which auctions
-- Flink: nexmark-flink q3.sql
-- Kind: join
-- Needs: nothing more; runs today (a regular inner join: its state grows without bound, as in Flink, unless 'state.ttl' is set)
CREATE TABLE nexmark_q3 WITH (${SINK});

INSERT INTO nexmark_q3
SELECT P.name, P.city, P.state, A.id
FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
