-- The three Nexmark tables over one generated stream of ${EVENTS} events
-- (Flink's nexmark DDL, column names in snake_case). The harness replaces
-- ${EVENTS} and ${BATCH} and appends one query file.
-- Unlike Flink's DDL, person and auction declare their id as PRIMARY KEY
-- (... NOT ENFORCED): the generator gives each id once, and a regular join
-- on it (q3, q20) then holds only the rows still waiting for their partner
-- (see the README's "Joins of streams"). The batch queries do not need it.
CREATE TABLE person (
  id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR,
  state VARCHAR, date_time TIMESTAMP(3), extra VARCHAR,
  PRIMARY KEY (id) NOT ENFORCED,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'nexmark', 'table' = 'person', 'events' = '${EVENTS}',
        'max_events_per_batch' = '${BATCH}');

CREATE TABLE auction (
  id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT,
  date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra VARCHAR,
  PRIMARY KEY (id) NOT ENFORCED,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'nexmark', 'table' = 'auction', 'events' = '${EVENTS}',
        'max_events_per_batch' = '${BATCH}');

CREATE TABLE bid (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'nexmark', 'table' = 'bid', 'events' = '${EVENTS}',
        'max_events_per_batch' = '${BATCH}');
