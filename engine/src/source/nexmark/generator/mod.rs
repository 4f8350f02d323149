//! The Nexmark event generator, columnar.
//!
//! The event stream is the one Beam's and Flink's generators define:
//!
//! ```text
//!  event number n ──out-of-order groups──▶ event id a = ⌊n/g⌋·g + (n·953 mod g)
//!  a mod 50:   0      → Person     (1 in 50)
//!              1..=3  → Auction    (3 in 50)
//!              4..=49 → Bid        (46 in 50)
//!  event time  = base_time + ⌊a · 10⁶/rate µs⌋ / 1000   (ms)
//!  fields      = drawn in a fixed order from java.util.Random(a + seed·φ)
//! ```
//!
//! Person and auction ids follow from the event id (the `k`-th person has
//! id 1000 + k), so foreign keys are consistent across the three tables
//! without any shared state: a bid names an auction and a person that exist
//! (or, by the 10-id "leads", will soon exist). Hot auctions, bidders and
//! sellers: half of the bids go to the newest auction of a block of 100, a
//! quarter... (ratios 2, 4, 4: a bid is for the hot auction with
//! probability 1 − 1/2, by the hot bidder with 1 − 1/4; an auction is the hot
//! seller's with 1 − 1/4); the others pick among the 100 in-flight auctions
//! and the 1,000 active people. Prices are log-uniform from $1 to $1M.
//! Channels: half are one of four hot ones, half one of 10,000 with its own
//! URL. `extra` pads each record to 200 (person), 500 (auction) and 100
//! (bid) bytes on average.
//!
//! Because every event is a pure function of its number, any range of event
//! numbers can be generated alone, in any order, and always gives the same
//! rows: the offset of a batch is just its range. With seed 0 the draws are
//! exactly those of Beam's `Generator` (which seeds a `java.util.Random` with
//! each event id); the bid's `channel` and `url` follow Flink's generator,
//! whose URLs are random per process: here they are fixed per channel.

mod events;

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, StringArray, StringViewArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::random::{JavaRandom, next_extra, next_price, next_string, next_string_with, prices_of};
use crate::{Error, Result};
use events::{Builder, channels};

/// Proportions of people, auctions and bids (per 50 events).
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;

/// Ids start here so that small runs still find matches.
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i32 = 5;

/// Ids up to this many past the newest one may be referenced.
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;

/// Nexmark's defaults: `hotAuctionRatio`, `hotSellersRatio`, `hotBiddersRatio`.
const HOT_AUCTION_RATIO: i32 = 2;
const HOT_SELLERS_RATIO: i32 = 4;
const HOT_BIDDERS_RATIO: i32 = 4;
/// The hot auction/seller/bidder is the first (second for bidders) of the
/// newest block of this many.
const HOT_BLOCK: i64 = 100;

/// Nexmark's defaults: `numActivePeople`, `numInFlightAuctions`.
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;

/// Average record sizes `extra` pads to (`avgPersonByteSize`, ...).
const AVG_PERSON_BYTES: i32 = 200;
const AVG_AUCTION_BYTES: i32 = 500;
const AVG_BID_BYTES: i32 = 100;

/// Channels: half of the bids come through a hot one.
const HOT_CHANNELS_RATIO: i32 = 2;
const CHANNELS_NUMBER: i32 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The permutation of an out-of-order group multiplies by this prime.
const OUT_OF_ORDER_PRIME: u64 = 953;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Default start of event time: 2026-01-01T00:00:00Z.
pub const DEFAULT_BASE_TIME_MS: i64 = 1_767_225_600_000;
/// Default events per second of event time.
pub const DEFAULT_RATE: f64 = 10_000.0;

/// What shapes the event stream. Tables opened with equal configs see the
/// same events.
#[derive(Clone, Debug, PartialEq)]
pub struct NexmarkConfig {
    /// Mixed into each event's RNG seed; 0 gives Beam's events.
    pub seed: i64,
    /// Events per second of event time.
    pub rate: f64,
    /// Event time of event 0, ms since the Unix epoch.
    pub base_time_ms: i64,
    /// Events are shuffled within consecutive groups of this many (1: in
    /// order). Must not be a multiple of 953.
    pub out_of_order_group: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            rate: DEFAULT_RATE,
            base_time_ms: DEFAULT_BASE_TIME_MS,
            out_of_order_group: 1,
        }
    }
}

impl NexmarkConfig {
    /// Checks the settings; errors say what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!(
                "'rate' must be a positive number of events per second, not {}",
                self.rate
            ));
        }
        if self.out_of_order_group == 0 {
            return Err("'out_of_order_group' must be at least 1".into());
        }
        if self.out_of_order_group.is_multiple_of(OUT_OF_ORDER_PRIME) {
            return Err(format!(
                "'out_of_order_group' must not be a multiple of {OUT_OF_ORDER_PRIME}: the generator shuffles a \
                 group by multiplying by {OUT_OF_ORDER_PRIME}, which would repeat events"
            ));
        }
        Ok(())
    }

    /// The event id of event number `n`: `n` shuffled within its
    /// out-of-order group (Beam's `nextAdjustedEventNumber`).
    #[inline]
    pub fn event_id(&self, n: u64) -> u64 {
        let g = self.out_of_order_group;
        if g == 1 {
            return n;
        }
        (n / g) * g + (n % g) * OUT_OF_ORDER_PRIME % g
    }

    /// The event time of an event id, ms (Flink's `timestampForEvent`).
    #[inline]
    pub fn timestamp_ms(&self, event_id: u64) -> i64 {
        let delay_us = 1_000_000.0 / self.rate;
        self.base_time_ms + ((event_id as f64 * delay_us) as i64) / 1000
    }

    /// The watermark Nexmark would declare after event number `n`: the
    /// event time of the first event of `n`'s out-of-order group, which no
    /// later event precedes.
    pub fn watermark_ms(&self, n: u64) -> i64 {
        let g = self.out_of_order_group;
        self.timestamp_ms((n / g) * g)
    }

    #[inline]
    fn rng(&self, event_id: u64) -> JavaRandom {
        JavaRandom::new(
            (event_id as i64).wrapping_add(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64)),
        )
    }
}

/// What an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NexmarkTable {
    /// A new person (1 in 50 events).
    Person,
    /// A new auction (3 in 50).
    Auction,
    /// A bid (46 in 50).
    Bid,
}

/// A generated column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `BIGINT`.
    Int64,
    /// `VARCHAR` (any Arrow string type).
    Text,
    /// `TIMESTAMP` (any unit; values are whole milliseconds).
    Timestamp,
}

impl ColumnType {
    /// The type's SQL name.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Int64 => "BIGINT",
            ColumnType::Text => "VARCHAR",
            ColumnType::Timestamp => "TIMESTAMP(3)",
        }
    }

    /// Whether a declared Arrow type can hold this column.
    pub fn accepts(self, t: &DataType) -> bool {
        match self {
            ColumnType::Int64 => t == &DataType::Int64,
            ColumnType::Text => matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8),
            ColumnType::Timestamp => matches!(t, DataType::Timestamp(_, _)),
        }
    }

    fn default_arrow(self) -> DataType {
        match self {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Text => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
        }
    }
}

use ColumnType::{Int64, Text, Timestamp};

/// Person columns, in Flink's order (snake_case).
const PERSON_COLUMNS: [(&str, ColumnType); 8] = [
    ("id", Int64),
    ("name", Text),
    ("email_address", Text),
    ("credit_card", Text),
    ("city", Text),
    ("state", Text),
    ("date_time", Timestamp),
    ("extra", Text),
];
const AUCTION_COLUMNS: [(&str, ColumnType); 10] = [
    ("id", Int64),
    ("item_name", Text),
    ("description", Text),
    ("initial_bid", Int64),
    ("reserve", Int64),
    ("date_time", Timestamp),
    ("expires", Timestamp),
    ("seller", Int64),
    ("category", Int64),
    ("extra", Text),
];
const BID_COLUMNS: [(&str, ColumnType); 7] = [
    ("auction", Int64),
    ("bidder", Int64),
    ("price", Int64),
    ("channel", Text),
    ("url", Text),
    ("date_time", Timestamp),
    ("extra", Text),
];

// Column indices, and the order in which each table's fields draw from the
// event's RNG (a field's "step"; 0: no draws).
const P_ID: usize = 0;
const P_NAME: usize = 1;
const P_EMAIL: usize = 2;
const P_CARD: usize = 3;
const P_CITY: usize = 4;
const P_STATE: usize = 5;
const P_DATE_TIME: usize = 6;
const P_EXTRA: usize = 7;
const PERSON_STEPS: [u8; 8] = [0, 1, 2, 3, 4, 5, 0, 6];

const A_ID: usize = 0;
const A_ITEM_NAME: usize = 1;
const A_DESCRIPTION: usize = 2;
const A_INITIAL_BID: usize = 3;
const A_RESERVE: usize = 4;
const A_DATE_TIME: usize = 5;
const A_EXPIRES: usize = 6;
const A_SELLER: usize = 7;
const A_CATEGORY: usize = 8;
const A_EXTRA: usize = 9;
// seller, category, initial_bid, expires, item_name, description, reserve, extra
const AUCTION_STEPS: [u8; 10] = [0, 5, 6, 3, 7, 0, 4, 1, 2, 8];

const B_AUCTION: usize = 0;
const B_BIDDER: usize = 1;
const B_PRICE: usize = 2;
const B_CHANNEL: usize = 3;
const B_URL: usize = 4;
const B_DATE_TIME: usize = 5;
const B_EXTRA: usize = 6;
const BID_STEPS: [u8; 7] = [1, 2, 3, 4, 4, 0, 5];

impl NexmarkTable {
    /// The table called `name` (`person`, `auction`, `bid`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "person" => Some(Self::Person),
            "auction" => Some(Self::Auction),
            "bid" => Some(Self::Bid),
            _ => None,
        }
    }

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Auction => "auction",
            Self::Bid => "bid",
        }
    }

    /// The generator's columns for this table.
    pub fn columns(self) -> &'static [(&'static str, ColumnType)] {
        match self {
            Self::Person => &PERSON_COLUMNS,
            Self::Auction => &AUCTION_COLUMNS,
            Self::Bid => &BID_COLUMNS,
        }
    }

    fn steps(self) -> &'static [u8] {
        match self {
            Self::Person => &PERSON_STEPS,
            Self::Auction => &AUCTION_STEPS,
            Self::Bid => &BID_STEPS,
        }
    }

    /// All columns, as `VARCHAR` = Utf8 and `TIMESTAMP(3)`.
    pub fn schema(self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns()
                .iter()
                .map(|(name, t)| Field::new(*name, t.default_arrow(), false))
                .collect::<Vec<_>>(),
        ))
    }

    /// The kind of the event with this id.
    #[inline]
    pub fn of_event(event_id: u64) -> Self {
        let r = event_id % TOTAL_PROPORTION;
        if r < Self::Person.residues().1 {
            Self::Person
        } else if r < Self::Auction.residues().1 {
            Self::Auction
        } else {
            Self::Bid
        }
    }

    /// The ids of this table's events in each block of `TOTAL_PROPORTION`
    /// ids: `id % TOTAL_PROPORTION` in `lo..hi`.
    #[inline]
    pub fn residues(self) -> (u64, u64) {
        match self {
            Self::Person => (0, PERSON_PROPORTION),
            Self::Auction => (PERSON_PROPORTION, PERSON_PROPORTION + AUCTION_PROPORTION),
            Self::Bid => (PERSON_PROPORTION + AUCTION_PROPORTION, TOTAL_PROPORTION),
        }
    }

    /// Maps declared columns to the generator's: each must be one of this
    /// table's columns, with a type that can hold it. Columns may be left out
    /// or reordered. Returns each declared column's generator column.
    pub fn check_schema(self, table: &str, declared: &Schema) -> std::result::Result<Vec<usize>, String> {
        let ours = self.columns();
        let listing = || {
            ours.iter()
                .map(|(n, t)| format!("{n} {}", t.sql()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        declared
            .fields()
            .iter()
            .map(|f| {
                let Some(i) = ours.iter().position(|(n, _)| *n == f.name().as_str()) else {
                    return Err(format!(
                        "table '{table}': column '{}' is not a column of the nexmark {} table (its columns: {})",
                        f.name(),
                        self.name(),
                        listing()
                    ));
                };
                let (_, t) = ours[i];
                if !t.accepts(f.data_type()) {
                    return Err(format!(
                        "table '{table}': column '{}' is declared as {} but the nexmark generator makes {} values for it",
                        f.name(),
                        f.data_type(),
                        t.sql()
                    ));
                }
                Ok(i)
            })
            .collect()
    }
}

/// The last person id (base 0) at event id `e`: the current one if `e` is a
/// person (Beam's `lastBase0PersonId`).
#[inline]
fn last_base0_person_id(e: i64) -> i64 {
    let epoch = e / TOTAL_PROPORTION as i64;
    let mut offset = e % TOTAL_PROPORTION as i64;
    if offset >= PERSON_PROPORTION as i64 {
        offset = PERSON_PROPORTION as i64 - 1;
    }
    epoch * PERSON_PROPORTION as i64 + offset
}

/// The last auction id (base 0) at event id `e` (Beam's `lastBase0AuctionId`).
#[inline]
fn last_base0_auction_id(e: i64) -> i64 {
    let (p, a) = (PERSON_PROPORTION as i64, AUCTION_PROPORTION as i64);
    let mut epoch = e / TOTAL_PROPORTION as i64;
    let mut offset = e % TOTAL_PROPORTION as i64;
    if offset < p {
        epoch -= 1;
        offset = a - 1;
    } else if offset >= p + a {
        offset = a - 1;
    } else {
        offset -= p;
    }
    epoch * a + offset
}

/// A random active person (base 0), or one of the next few.
#[inline]
fn next_base0_person_id(e: i64, rng: &mut JavaRandom) -> i64 {
    let num_people = last_base0_person_id(e) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    let n = rng.next_long_below(active + PERSON_ID_LEAD);
    num_people - active + n
}

/// A random in-flight auction (base 0), or one of the next few.
#[inline]
fn next_base0_auction_id(e: i64, rng: &mut JavaRandom) -> i64 {
    let max = last_base0_auction_id(e);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + rng.next_long_below(max - min + 1 + AUCTION_ID_LEAD)
}

/// Converts a generated array to the declared type.
fn convert(a: ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if a.data_type() == to {
        return Ok(a);
    }
    if to == &DataType::Utf8View
        && let Some(s) = a.as_any().downcast_ref::<StringArray>()
    {
        // Views over the same bytes: no copy.
        return Ok(Arc::new(StringViewArray::from(s)));
    }
    Ok(cast(&a, to)?)
}

/// Rows per generated `RecordBatch` (DataFusion's default batch size).
pub const ROWS_PER_BATCH: usize = crate::source::BATCH_ROWS;

/// Generates one table's rows for ranges of event numbers, with the
/// columns a query reads.
#[derive(Clone, Debug)]
pub struct TableGenerator {
    config: NexmarkConfig,
    table: NexmarkTable,
    /// The output columns: the generator column and its declared type.
    outputs: Vec<(usize, DataType)>,
    wanted: Vec<bool>,
    as_channel: Vec<bool>,
    schema: SchemaRef,
    rows_per_batch: usize,
}

impl TableGenerator {
    /// A generator of `table` producing batches with `schema`, whose columns
    /// must pass [`NexmarkTable::check_schema`].
    pub fn new(config: NexmarkConfig, table: NexmarkTable, schema: SchemaRef) -> Result<Self> {
        config
            .validate()
            .map_err(|e| Error::Config(format!("nexmark {}: {e}", table.name())))?;
        let cols = table.check_schema(table.name(), &schema).map_err(Error::Config)?;
        let mut wanted = vec![false; table.columns().len()];
        let mut as_channel = vec![false; table.columns().len()];
        for (&c, f) in cols.iter().zip(schema.fields()) {
            wanted[c] = true;
            as_channel[c] = table == NexmarkTable::Bid
                && (c == B_CHANNEL || c == B_URL)
                && f.data_type() == &DataType::Utf8View
                && !channels().name_views.is_empty()
                && !channels().url_views.is_empty();
        }
        let outputs = cols
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| (c, f.data_type().clone()))
            .collect();
        Ok(Self {
            config,
            table,
            outputs,
            wanted,
            as_channel,
            schema,
            rows_per_batch: ROWS_PER_BATCH,
        })
    }

    /// Makes batches of at most `rows` rows.
    pub fn with_rows_per_batch(mut self, rows: usize) -> Self {
        self.rows_per_batch = rows.max(1);
        self
    }

    /// The batches' schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The table.
    pub fn table(&self) -> NexmarkTable {
        self.table
    }

    /// The config.
    pub fn config(&self) -> &NexmarkConfig {
        &self.config
    }

    /// Whether events come in order (`out_of_order_group` 1): then an
    /// event's id is its number, and later events are never earlier.
    pub fn in_order(&self) -> bool {
        self.config.out_of_order_group == 1
    }

    /// The greatest event id of this table's kind among event numbers
    /// `start..end` with events in order (`out_of_order_group` 1, where the
    /// id is the number): one of the last 50. `None` when there is none,
    /// or when events are shuffled.
    pub fn last_event_in(&self, start: u64, end: u64) -> Option<u64> {
        if !self.in_order() {
            return None;
        }
        (start.max(end.saturating_sub(TOTAL_PROPORTION))..end)
            .rev()
            .find(|&id| NexmarkTable::of_event(id) == self.table)
    }

    /// This table's rows among event numbers `start..end`, in event-number
    /// order.
    pub fn generate(&self, start: u64, end: u64) -> Result<Vec<RecordBatch>> {
        let cfg = &self.config;
        // Expected rows, for capacity: the table's share of the range.
        let (lo, hi) = self.table.residues();
        let share = hi - lo;
        let expected = (end.saturating_sub(start) * share / TOTAL_PROPORTION) as usize + 1;
        let capacity = expected.min(self.rows_per_batch);
        let mut b = Builder::new(self.table, &self.wanted, &self.as_channel, capacity);
        let mut out = Vec::new();
        let mut row = |b: &mut Builder, id: u64| -> Result<()> {
            match self.table {
                NexmarkTable::Person => b.person(cfg, id, cfg.timestamp_ms(id)),
                NexmarkTable::Auction => b.auction(cfg, id, cfg.timestamp_ms(id)),
                // A bid's time is only its column, which a query may not read:
                // made only then (a float product, a saturating cast and a
                // division are a tenth of a bid).
                NexmarkTable::Bid => b.bid(cfg, id),
            }
            b.rows += 1;
            if b.rows == self.rows_per_batch {
                out.push(b.finish(&self.outputs, &self.schema)?);
            }
            Ok(())
        };
        if cfg.out_of_order_group == 1 {
            // In order, event number n is event id n, and the table's ids
            // are a fixed range of residues in each block of
            // TOTAL_PROPORTION: visit only those (a person is 1 event in 50,
            // so its table skips 49 of every 50 ids without looking).
            let mut block = start - start % TOTAL_PROPORTION;
            while block < end {
                for id in (block + lo).max(start)..(block + hi).min(end) {
                    row(&mut b, id)?;
                }
                block += TOTAL_PROPORTION;
            }
        } else {
            for n in start..end {
                let id = cfg.event_id(n);
                if NexmarkTable::of_event(id) == self.table {
                    row(&mut b, id)?;
                }
            }
        }
        if b.rows > 0 {
            out.push(b.finish(&self.outputs, &self.schema)?);
        }
        Ok(out)
    }
}
