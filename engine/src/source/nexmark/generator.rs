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
        if r < PERSON_PROPORTION {
            Self::Person
        } else if r < PERSON_PROPORTION + AUCTION_PROPORTION {
            Self::Auction
        } else {
            Self::Bid
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

/// The channels and their fixed URLs: the 4 hot ones first, then the
/// 10,000 others. Columns declared `VARCHAR` (Utf8View) take their channel
/// and URL as views into one shared buffer each, not as copies.
struct Channels {
    names: Vec<String>,
    urls: Vec<String>,
    name_data: Buffer,
    name_views: Vec<u128>,
    url_data: Buffer,
    url_views: Vec<u128>,
}

/// Seeds for the channel URLs (Flink draws them from an unseeded Random).
const HOT_URL_SEED: i64 = -1;
const CHANNEL_URL_SEED: i64 = 1 << 40;

fn base_url(rng: &mut JavaRandom) -> String {
    let mut s = b"https://www.nexmark.com/".to_vec();
    for _ in 0..3 {
        next_string_with(rng, 5, b'_', &mut s);
        s.push(b'/');
    }
    s.extend_from_slice(b"item.htm?query=1");
    String::from_utf8_lossy(&s).into_owned()
}

/// The strings one after another, and a view of each into them, checked
/// (so that arrays of any of these views over this buffer are valid); no
/// views if the check fails, and then columns are made as copies.
fn views_of(strings: &[String]) -> (Buffer, Vec<u128>) {
    let mut data = Vec::new();
    let views: Vec<u128> = strings
        .iter()
        .map(|s| {
            let offset = data.len() as u32;
            data.extend_from_slice(s.as_bytes());
            make_view(s.as_bytes(), 0, offset)
        })
        .collect();
    let data = Buffer::from_vec(data);
    let valid = StringViewArray::try_new(ScalarBuffer::from(views.clone()), vec![data.clone()], None).is_ok();
    (data, if valid { views } else { Vec::new() })
}

fn channels() -> &'static Channels {
    static CHANNELS: OnceLock<Channels> = OnceLock::new();
    CHANNELS.get_or_init(|| {
        let hot = (0..HOT_CHANNELS.len()).map(|i| {
            let url = base_url(&mut JavaRandom::new(HOT_URL_SEED - i as i64));
            (HOT_CHANNELS[i].to_string(), url)
        });
        let others = (0..CHANNELS_NUMBER).map(|c| {
            let mut rng = JavaRandom::new(CHANNEL_URL_SEED + i64::from(c));
            let mut url = base_url(&mut rng);
            if rng.next_int_below(10) > 0 {
                url.push_str(&format!("&channel_id={}", c.reverse_bits().wrapping_abs()));
            }
            (format!("channel-{c}"), url)
        });
        let (names, urls): (Vec<String>, Vec<String>) = hot.chain(others).unzip();
        let (name_data, name_views) = views_of(&names);
        let (url_data, url_views) = views_of(&urls);
        Channels {
            names,
            urls,
            name_data,
            name_views,
            url_data,
            url_views,
        }
    })
}

/// A string column being built.
struct TextBuf {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl TextBuf {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    #[inline]
    fn end_row(&mut self) {
        self.offsets.push(self.values.len() as i32);
    }

    fn finish(self) -> Result<StringArray> {
        Ok(StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from_vec(self.values),
            None,
        )?)
    }
}

enum ColBuf {
    Int(Vec<i64>),
    Ts(Vec<i64>),
    Text(TextBuf),
    /// Indices into the channel table (`channel` or `url` as views).
    Channel(Vec<u32>),
    /// A price column's uniform draws, made prices all at once when the
    /// batch is finished ([`prices_of`]).
    Price(Vec<f64>),
}

/// The columns of one output batch, for the columns a query reads.
struct Builder {
    table: NexmarkTable,
    cols: Vec<Option<ColBuf>>,
    wanted: Vec<bool>,
    /// Columns made as views into the channel table.
    as_channel: Vec<bool>,
    /// Rows per batch to make room for.
    capacity: usize,
    /// The last RNG step any wanted column needs: draws stop there.
    last_step: u8,
    /// Strings that must be drawn (for the RNG's sake, or for a length) but
    /// are not wanted.
    scratch: Vec<u8>,
    rows: usize,
}

impl Builder {
    fn new(table: NexmarkTable, wanted: &[bool], as_channel: &[bool], capacity: usize) -> Self {
        let steps = table.steps();
        let last_step = wanted
            .iter()
            .zip(steps)
            .filter(|(w, _)| **w)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0);
        let mut b = Self {
            table,
            cols: Vec::new(),
            wanted: wanted.to_vec(),
            as_channel: as_channel.to_vec(),
            capacity,
            last_step,
            scratch: Vec::new(),
            rows: 0,
        };
        b.cols = b.fresh_columns();
        b
    }

    /// Empty columns for the wanted columns, with room for a batch.
    fn fresh_columns(&self) -> Vec<Option<ColBuf>> {
        let table = self.table;
        let capacity = self.capacity;
        let text_bytes = |col: usize| -> usize {
            match (table, col) {
                (NexmarkTable::Bid, B_URL) => 64,
                (NexmarkTable::Bid, B_EXTRA) => 72,
                (NexmarkTable::Auction, A_EXTRA) => 360,
                (NexmarkTable::Auction, A_DESCRIPTION) => 50,
                (NexmarkTable::Person, P_EXTRA) => 140,
                _ => 16,
            }
        };
        table
            .columns()
            .iter()
            .enumerate()
            .map(|(i, (_, t))| {
                self.wanted[i].then(|| match t {
                    Text if self.as_channel[i] => ColBuf::Channel(Vec::with_capacity(capacity)),
                    Int64 if table == NexmarkTable::Bid && i == B_PRICE => {
                        ColBuf::Price(Vec::with_capacity(capacity))
                    }
                    Int64 => ColBuf::Int(Vec::with_capacity(capacity)),
                    Timestamp => ColBuf::Ts(Vec::with_capacity(capacity)),
                    Text => ColBuf::Text(TextBuf::with_capacity(capacity, capacity * text_bytes(i))),
                })
            })
            .collect()
    }

    #[inline]
    fn int(&mut self, col: usize, v: i64) {
        if let Some(ColBuf::Int(b) | ColBuf::Ts(b)) = &mut self.cols[col] {
            b.push(v);
        }
    }

    /// Writes a string column with `f` (into the column, or into scratch
    /// when the column is not wanted); returns the string's length.
    #[inline]
    fn text(&mut self, col: usize, f: impl FnOnce(&mut Vec<u8>)) -> usize {
        match &mut self.cols[col] {
            Some(ColBuf::Text(t)) => {
                let before = t.values.len();
                f(&mut t.values);
                t.end_row();
                t.values.len() - before
            }
            _ => {
                self.scratch.clear();
                f(&mut self.scratch);
                self.scratch.len()
            }
        }
    }

    /// Writes a channel's name or URL (`which`) to a column.
    #[inline]
    fn channel(&mut self, col: usize, pick: u32, which: fn(&Channels) -> &Vec<String>) {
        match &mut self.cols[col] {
            Some(ColBuf::Channel(v)) => v.push(pick),
            Some(ColBuf::Text(t)) => {
                t.values
                    .extend_from_slice(which(channels())[pick as usize].as_bytes());
                t.end_row();
            }
            _ => {}
        }
    }

    #[inline]
    fn wants(&self, col: usize) -> bool {
        self.cols[col].is_some()
    }

    fn person(&mut self, cfg: &NexmarkConfig, id: u64, ts: i64) {
        let e = id as i64;
        self.int(P_ID, last_base0_person_id(e) + FIRST_PERSON_ID);
        self.int(P_DATE_TIME, ts);
        if self.last_step == 0 {
            return;
        }
        let mut rng = cfg.rng(id);
        let name = self.text(P_NAME, |out| {
            out.extend_from_slice(
                FIRST_NAMES[rng.next_int_below(FIRST_NAMES.len() as i32) as usize].as_bytes(),
            );
            out.push(b' ');
            out.extend_from_slice(
                LAST_NAMES[rng.next_int_below(LAST_NAMES.len() as i32) as usize].as_bytes(),
            );
        });
        let email = self.text(P_EMAIL, |out| {
            next_string(&mut rng, 7, out);
            out.push(b'@');
            next_string(&mut rng, 5, out);
            out.extend_from_slice(b".com");
        });
        let card = self.text(P_CARD, |out| {
            for i in 0..4 {
                if i > 0 {
                    out.push(b' ');
                }
                let d = rng.next_int_below(10_000);
                out.extend_from_slice(format!("{d:04}").as_bytes());
            }
        });
        let city = self.text(P_CITY, |out| {
            out.extend_from_slice(US_CITIES[rng.next_int_below(US_CITIES.len() as i32) as usize].as_bytes())
        });
        let state = self.text(P_STATE, |out| {
            out.extend_from_slice(US_STATES[rng.next_int_below(US_STATES.len() as i32) as usize].as_bytes())
        });
        if self.wants(P_EXTRA) {
            let size = 8 + (name + email + card + city + state) as i32;
            self.text(P_EXTRA, |out| next_extra(&mut rng, size, AVG_PERSON_BYTES, out));
        }
    }

    fn auction(&mut self, cfg: &NexmarkConfig, id: u64, ts: i64) {
        let e = id as i64;
        self.int(A_ID, last_base0_auction_id(e) + FIRST_AUCTION_ID);
        self.int(A_DATE_TIME, ts);
        if self.last_step == 0 {
            return;
        }
        let mut rng = cfg.rng(id);
        let seller = if rng.next_int_below(HOT_SELLERS_RATIO) > 0 {
            (last_base0_person_id(e) / HOT_BLOCK) * HOT_BLOCK
        } else {
            next_base0_person_id(e, &mut rng)
        };
        self.int(A_SELLER, seller + FIRST_PERSON_ID);
        if self.last_step < 2 {
            return;
        }
        self.int(
            A_CATEGORY,
            FIRST_CATEGORY_ID + i64::from(rng.next_int_below(NUM_CATEGORIES)),
        );
        if self.last_step < 3 {
            return;
        }
        let initial_bid = next_price(&mut rng);
        self.int(A_INITIAL_BID, initial_bid);
        if self.last_step < 4 {
            return;
        }
        // An auction lasts on average as long as it takes to start the next
        // `numInFlightAuctions` auctions.
        let events_for_auctions = (NUM_IN_FLIGHT_AUCTIONS as u64 * TOTAL_PROPORTION) / AUCTION_PROPORTION;
        let horizon = cfg.timestamp_ms(id + events_for_auctions) - ts;
        let length = 1 + rng.next_long_below((horizon * 2).max(1));
        self.int(A_EXPIRES, ts + length);
        if self.last_step < 5 {
            return;
        }
        let name = self.text(A_ITEM_NAME, |out| next_string(&mut rng, 20, out));
        if self.last_step < 6 {
            return;
        }
        let desc = self.text(A_DESCRIPTION, |out| next_string(&mut rng, 100, out));
        if self.last_step < 7 {
            return;
        }
        self.int(A_RESERVE, initial_bid + next_price(&mut rng));
        if self.wants(A_EXTRA) {
            let size = (8 + name + desc + 8 * 5) as i32;
            self.text(A_EXTRA, |out| next_extra(&mut rng, size, AVG_AUCTION_BYTES, out));
        }
    }

    #[inline]
    fn bid(&mut self, cfg: &NexmarkConfig, id: u64) {
        let e = id as i64;
        if self.wants(B_DATE_TIME) {
            self.int(B_DATE_TIME, cfg.timestamp_ms(id));
        }
        if self.last_step == 0 {
            return;
        }
        let mut rng = cfg.rng(id);
        let auction = if rng.next_int_below(HOT_AUCTION_RATIO) > 0 {
            (last_base0_auction_id(e) / HOT_BLOCK) * HOT_BLOCK
        } else {
            next_base0_auction_id(e, &mut rng)
        };
        self.int(B_AUCTION, auction + FIRST_AUCTION_ID);
        if self.last_step < 2 {
            return;
        }
        let bidder = if rng.next_int_below(HOT_BIDDERS_RATIO) > 0 {
            // The second of the block, so hot bidders and hot sellers differ.
            (last_base0_person_id(e) / HOT_BLOCK) * HOT_BLOCK + 1
        } else {
            next_base0_person_id(e, &mut rng)
        };
        self.int(B_BIDDER, bidder + FIRST_PERSON_ID);
        if self.last_step < 3 {
            return;
        }
        let draw = rng.next_double();
        if let Some(ColBuf::Price(draws)) = &mut self.cols[B_PRICE] {
            draws.push(draw);
        }
        if self.last_step < 4 {
            return;
        }
        let pick = if rng.next_int_below(HOT_CHANNELS_RATIO) > 0 {
            rng.next_int_below(HOT_CHANNELS.len() as i32) as u32
        } else {
            HOT_CHANNELS.len() as u32 + rng.next_int_below(CHANNELS_NUMBER) as u32
        };
        self.channel(B_CHANNEL, pick, |c| &c.names);
        self.channel(B_URL, pick, |c| &c.urls);
        if self.wants(B_EXTRA) {
            self.text(B_EXTRA, |out| next_extra(&mut rng, 8 * 4, AVG_BID_BYTES, out));
        }
    }

    /// The batch of the rows so far, as `outputs` lists them; resets.
    fn finish(&mut self, outputs: &[(usize, DataType)], schema: &SchemaRef) -> Result<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let fresh = self.fresh_columns();
        let mut arrays: Vec<Option<ArrayRef>> = Vec::with_capacity(fresh.len());
        for (i, col) in std::mem::replace(&mut self.cols, fresh).into_iter().enumerate() {
            arrays.push(match col {
                None => None,
                Some(ColBuf::Int(v)) => Some(Arc::new(Int64Array::from(v))),
                Some(ColBuf::Price(draws)) => {
                    let mut prices = Vec::with_capacity(draws.len());
                    prices_of(&draws, &mut prices);
                    Some(Arc::new(Int64Array::from(prices)))
                }
                Some(ColBuf::Ts(v)) => Some(Arc::new(TimestampMillisecondArray::from(v))),
                Some(ColBuf::Text(t)) => Some(Arc::new(t.finish()?)),
                Some(ColBuf::Channel(picks)) => {
                    let ch = channels();
                    let (data, views) = match self.table.columns()[i].0 {
                        "url" => (&ch.url_data, &ch.url_views),
                        _ => (&ch.name_data, &ch.name_views),
                    };
                    let views: Vec<u128> = picks.iter().map(|&p| views[p as usize]).collect();
                    // SAFETY: every view is one of the table's, which
                    // `channels()` validated against this same buffer; a
                    // view array is valid when each of its views is.
                    Some(Arc::new(unsafe {
                        StringViewArray::new_unchecked(ScalarBuffer::from(views), vec![data.clone()], None)
                    }))
                }
            });
        }
        let columns = outputs
            .iter()
            .map(|(col, to)| {
                let a = arrays[*col].clone().ok_or_else(|| {
                    Error::Config(format!(
                        "nexmark {}: column {} was not generated",
                        self.table.name(),
                        self.table.columns()[*col].0
                    ))
                })?;
                convert(a, to)
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &options,
        )?)
    }
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
pub const ROWS_PER_BATCH: usize = 8192;

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
        let share = match self.table {
            NexmarkTable::Person => PERSON_PROPORTION,
            NexmarkTable::Auction => AUCTION_PROPORTION,
            NexmarkTable::Bid => TOTAL_PROPORTION - PERSON_PROPORTION - AUCTION_PROPORTION,
        };
        let expected = (end.saturating_sub(start) * share / TOTAL_PROPORTION) as usize + 1;
        let capacity = expected.min(self.rows_per_batch);
        let mut b = Builder::new(self.table, &self.wanted, &self.as_channel, capacity);
        let mut out = Vec::new();
        for n in start..end {
            let id = cfg.event_id(n);
            if NexmarkTable::of_event(id) != self.table {
                continue;
            }
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
        }
        if b.rows > 0 {
            out.push(b.finish(&self.outputs, &self.schema)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use std::collections::{BTreeSet, HashMap};

    fn all(table: NexmarkTable, cfg: &NexmarkConfig, start: u64, end: u64) -> RecordBatch {
        let g = TableGenerator::new(cfg.clone(), table, table.schema()).unwrap();
        concat_batches(g.schema(), &g.generate(start, end).unwrap()).unwrap()
    }

    fn ints(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    fn times(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec()
    }

    fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
        let a = b.column_by_name(name).unwrap().as_string::<i32>();
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    }

    /// Events computed on a JVM by a transcription of Beam's generator (with
    /// `java.util.Random`, `Math.pow`, `String.trim`, ...), with Flink's
    /// channel and URL fields and this module's fixed channel URLs: each
    /// `# seed rate group n` line is followed by event n, fields joined by `|`
    /// and times in ms.
    #[test]
    fn events_equal_those_a_jvm_computes() {
        let text = include_str!("testdata/jvm-events.txt");
        let mut lines = text.lines();
        let mut checked = 0;
        while let Some(header) = lines.next() {
            let h: Vec<&str> = header.trim_start_matches("# ").split(' ').collect();
            let cfg = NexmarkConfig {
                seed: h[0].parse().unwrap(),
                rate: h[1].parse().unwrap(),
                out_of_order_group: h[2].parse().unwrap(),
                ..Default::default()
            };
            let n: u64 = h[3].parse().unwrap();
            let expected = lines.next().unwrap();
            let kind = expected.split('|').next().unwrap();
            let table = NexmarkTable::from_name(kind).unwrap();
            let batch = all(table, &cfg, n, n + 1);
            assert_eq!(batch.num_rows(), 1, "event {n}");
            let opts = datafusion::arrow::util::display::FormatOptions::default();
            let mut got = vec![kind.to_string()];
            for (col, (_, t)) in batch.columns().iter().zip(table.columns()) {
                got.push(match t {
                    Timestamp => col
                        .as_primitive::<TimestampMillisecondType>()
                        .value(0)
                        .to_string(),
                    _ => datafusion::arrow::util::display::ArrayFormatter::try_new(col.as_ref(), &opts)
                        .unwrap()
                        .value(0)
                        .to_string(),
                });
            }
            assert_eq!(
                got.join("|"),
                expected,
                "event {n} of seed {} group {}",
                cfg.seed,
                cfg.out_of_order_group
            );
            checked += 1;
        }
        assert_eq!(checked, 284);
    }

    #[test]
    fn events_come_as_one_person_three_auctions_and_46_bids_in_50() {
        for g in [1, 7, 100] {
            let cfg = NexmarkConfig {
                out_of_order_group: g,
                ..Default::default()
            };
            let n = 50 * 700; // a multiple of every group size
            let p = all(NexmarkTable::Person, &cfg, 0, n).num_rows();
            let a = all(NexmarkTable::Auction, &cfg, 0, n).num_rows();
            let b = all(NexmarkTable::Bid, &cfg, 0, n).num_rows();
            assert_eq!((p, a, b), (700, 2100, 32_200), "group {g}");
        }
    }

    #[test]
    fn ids_are_dense_and_references_point_at_existing_or_soon_existing_rows() {
        let cfg = NexmarkConfig::default();
        let n = 200_000;
        let people = all(NexmarkTable::Person, &cfg, 0, n);
        let auctions = all(NexmarkTable::Auction, &cfg, 0, n);
        let bids = all(NexmarkTable::Bid, &cfg, 0, n);
        let person_ids = ints(&people, "id");
        let auction_ids = ints(&auctions, "id");
        assert_eq!(person_ids, (1000..1000 + 4000).collect::<Vec<_>>());
        assert_eq!(auction_ids, (1000..1000 + 12_000).collect::<Vec<_>>());
        // Each reference is at most the newest id so far plus the lead, and
        // at least the oldest active/in-flight one.
        let person_at = |ts: i64| -> i64 {
            // People created at or before ts.
            let times = times(&people, "date_time");
            times.partition_point(|&t| t <= ts) as i64 + 999
        };
        let bid_times = times(&bids, "date_time");
        for (i, (&bidder, &auction)) in ints(&bids, "bidder")
            .iter()
            .zip(&ints(&bids, "auction"))
            .enumerate()
            .step_by(97)
        {
            let newest_person = person_at(bid_times[i]);
            assert!(
                bidder <= newest_person + PERSON_ID_LEAD,
                "bid {i}: bidder {bidder}"
            );
            assert!(bidder >= (newest_person - NUM_ACTIVE_PEOPLE).max(1000) - 1);
            assert!((1000..1000 + 12_000 + AUCTION_ID_LEAD).contains(&auction));
        }
        let sellers = ints(&auctions, "seller");
        assert!(
            sellers
                .iter()
                .all(|&s| (1000..1000 + 4000 + PERSON_ID_LEAD).contains(&s))
        );
        let categories: BTreeSet<i64> = ints(&auctions, "category").into_iter().collect();
        assert_eq!(categories, (10..15).collect());
    }

    /// Share of the most frequent value in each block of consecutive rows.
    fn hot_share(values: &[i64], block: usize) -> f64 {
        let mut hot = 0;
        for chunk in values.chunks(block) {
            let mut counts: HashMap<i64, usize> = HashMap::new();
            for v in chunk {
                *counts.entry(*v).or_default() += 1;
            }
            hot += counts.values().max().copied().unwrap_or(0);
        }
        hot as f64 / values.len() as f64
    }

    #[test]
    fn hot_auctions_bidders_and_sellers_follow_the_ratios() {
        let cfg = NexmarkConfig::default();
        let n = 500_000;
        let bids = all(NexmarkTable::Bid, &cfg, 0, n);
        let auctions = all(NexmarkTable::Auction, &cfg, 0, n);
        // Within 50 bids (about one event block) the hot auction gets about
        // 1 - 1/2 of them, the hot bidder about 1 - 1/4.
        let a = hot_share(&ints(&bids, "auction"), 46);
        let b = hot_share(&ints(&bids, "bidder"), 46);
        assert!((0.45..0.6).contains(&a), "hot auction share {a}");
        assert!((0.7..0.82).contains(&b), "hot bidder share {b}");
        let s = hot_share(&ints(&auctions, "seller"), 30);
        assert!((0.7..0.85).contains(&s), "hot seller share {s}");
        // Hot channels: about half of the bids.
        let channels = strings(&bids, "channel");
        let hot = channels
            .iter()
            .filter(|c| HOT_CHANNELS.contains(&c.as_str()))
            .count();
        let share = hot as f64 / channels.len() as f64;
        assert!((0.48..0.52).contains(&share), "hot channels {share}");
        assert!(
            channels
                .iter()
                .filter(|c| !HOT_CHANNELS.contains(&c.as_str()))
                .all(|c| c.starts_with("channel-"))
        );
    }

    #[test]
    fn urls_channels_prices_and_sizes_look_like_nexmarks() {
        let cfg = NexmarkConfig::default();
        let bids = all(NexmarkTable::Bid, &cfg, 0, 100_000);
        let urls = strings(&bids, "url");
        let channels = strings(&bids, "channel");
        for (u, c) in urls.iter().zip(&channels) {
            assert!(
                u.starts_with("https://www.nexmark.com/") && u.contains("/item.htm?query=1"),
                "{u}"
            );
            // A channel always has the same URL.
            if c == "Google" {
                assert_eq!(u, &channels_url("Google"));
            }
        }
        let with_id = urls.iter().filter(|u| u.contains("&channel_id=")).count() as f64
            / channels.iter().filter(|c| c.starts_with("channel-")).count() as f64;
        assert!((0.85..0.95).contains(&with_id), "{with_id}");
        let prices = ints(&bids, "price");
        assert!(prices.iter().all(|p| (100..=100_000_000).contains(p)));
        // Average bid size: 4 numbers of 8 bytes and the padding.
        let extra: usize = strings(&bids, "extra").iter().map(String::len).sum();
        let avg = 32.0 + extra as f64 / bids.num_rows() as f64;
        assert!((avg - 100.0).abs() < 1.0, "bid bytes {avg}");
        let people = all(NexmarkTable::Person, &cfg, 0, 100_000);
        let states: BTreeSet<String> = strings(&people, "state").into_iter().collect();
        assert_eq!(states.len(), 6);
        let cities: BTreeSet<String> = strings(&people, "city").into_iter().collect();
        assert_eq!(cities.len(), 10);
        let size: usize = ["name", "email_address", "credit_card", "city", "state", "extra"]
            .iter()
            .map(|c| strings(&people, c).iter().map(String::len).sum::<usize>())
            .sum();
        let avg = 8.0 + size as f64 / people.num_rows() as f64;
        assert!((avg - 200.0).abs() < 3.0, "person bytes {avg}");
        assert!(strings(&people, "credit_card")[0].len() == 19);
        let auctions = all(NexmarkTable::Auction, &cfg, 0, 100_000);
        let size: usize = ["item_name", "description", "extra"]
            .iter()
            .map(|c| strings(&auctions, c).iter().map(String::len).sum::<usize>())
            .sum();
        let avg = 48.0 + size as f64 / auctions.num_rows() as f64;
        assert!((avg - 500.0).abs() < 5.0, "auction bytes {avg}");
        // Reserve is at least the initial bid; auctions expire after they start.
        for ((r, i), (e, d)) in ints(&auctions, "reserve")
            .iter()
            .zip(ints(&auctions, "initial_bid"))
            .zip(
                times(&auctions, "expires")
                    .iter()
                    .zip(times(&auctions, "date_time")),
            )
        {
            assert!(*r > i && *e > d);
        }
    }

    fn channels_url(hot: &str) -> String {
        let i = HOT_CHANNELS.iter().position(|c| *c == hot).unwrap();
        channels().urls[i].clone()
    }

    #[test]
    fn event_time_advances_at_the_rate() {
        let cfg = NexmarkConfig {
            rate: 1000.0,
            base_time_ms: 5_000,
            ..Default::default()
        };
        let bids = all(NexmarkTable::Bid, &cfg, 0, 1000);
        let t = times(&bids, "date_time");
        // Event 4 is the first bid; at 1,000 events/s each event is 1 ms.
        assert_eq!(t[0], 5_004);
        assert_eq!(*t.last().unwrap(), 5_999);
        let cfg = NexmarkConfig::default(); // 10,000/s: 10 events per ms
        assert_eq!(cfg.timestamp_ms(0), DEFAULT_BASE_TIME_MS);
        assert_eq!(cfg.timestamp_ms(19), DEFAULT_BASE_TIME_MS + 1);
        assert_eq!(cfg.timestamp_ms(10_000), DEFAULT_BASE_TIME_MS + 1000);
    }

    #[test]
    fn any_range_generates_the_same_rows_as_the_whole() {
        for group in [1, 13] {
            let cfg = NexmarkConfig {
                seed: 11,
                out_of_order_group: group,
                ..Default::default()
            };
            for table in [NexmarkTable::Person, NexmarkTable::Auction, NexmarkTable::Bid] {
                let g = TableGenerator::new(cfg.clone(), table, table.schema())
                    .unwrap()
                    .with_rows_per_batch(333);
                let whole = concat_batches(g.schema(), &g.generate(0, 20_000).unwrap()).unwrap();
                let mut parts = Vec::new();
                for (s, e) in [
                    (0, 1),
                    (1, 4_999),
                    (4_999, 5_000),
                    (5_000, 13_131),
                    (13_131, 20_000),
                ] {
                    parts.extend(g.generate(s, e).unwrap());
                }
                let pieced = concat_batches(g.schema(), &parts).unwrap();
                assert_eq!(whole, pieced, "{table:?} group {group}");
                // Again, from a fresh generator (as after a restart).
                let again = TableGenerator::new(cfg.clone(), table, table.schema()).unwrap();
                let sub = concat_batches(again.schema(), &again.generate(5_000, 13_131).unwrap()).unwrap();
                let first: usize = g
                    .generate(0, 5_000)
                    .unwrap()
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum();
                assert_eq!(sub, whole.slice(first, sub.num_rows()));
            }
        }
    }

    #[test]
    fn seeds_change_the_draws_but_not_the_ids_or_times() {
        let a = all(NexmarkTable::Bid, &NexmarkConfig::default(), 0, 5000);
        let b = all(
            NexmarkTable::Bid,
            &NexmarkConfig {
                seed: 1,
                ..Default::default()
            },
            0,
            5000,
        );
        assert_eq!(times(&a, "date_time"), times(&b, "date_time"));
        assert_ne!(ints(&a, "price"), ints(&b, "price"));
        let pa = all(NexmarkTable::Person, &NexmarkConfig::default(), 0, 5000);
        let pb = all(
            NexmarkTable::Person,
            &NexmarkConfig {
                seed: 1,
                ..Default::default()
            },
            0,
            5000,
        );
        assert_eq!(ints(&pa, "id"), ints(&pb, "id"));
        assert_ne!(strings(&pa, "name"), strings(&pb, "name"));
    }

    #[test]
    fn only_the_wanted_columns_are_made_and_they_equal_the_full_rows() {
        let cfg = NexmarkConfig::default();
        for table in [NexmarkTable::Person, NexmarkTable::Auction, NexmarkTable::Bid] {
            let full = all(table, &cfg, 1_000, 9_000);
            let n = table.columns().len();
            // Every single column, and a few pairs in a different order.
            let mut picks: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
            picks.push(vec![n - 1, 0]);
            picks.push(vec![2, 1]);
            for pick in picks {
                let fields: Vec<Field> = pick.iter().map(|&i| full.schema().field(i).clone()).collect();
                let schema = Arc::new(Schema::new(fields));
                let g = TableGenerator::new(cfg.clone(), table, schema).unwrap();
                let got = concat_batches(g.schema(), &g.generate(1_000, 9_000).unwrap()).unwrap();
                for (j, &i) in pick.iter().enumerate() {
                    assert_eq!(got.column(j), full.column(i), "{table:?} column {i}");
                }
            }
        }
    }

    #[test]
    fn out_of_order_groups_shuffle_events_within_each_group() {
        let g = 10;
        let cfg = NexmarkConfig {
            out_of_order_group: g,
            rate: 1000.0, // 1 ms per event: times name the event id
            ..Default::default()
        };
        let ids: Vec<u64> = (0..1000).map(|n| cfg.event_id(n)).collect();
        for (k, chunk) in ids.chunks(g as usize).enumerate() {
            let mut sorted = chunk.to_vec();
            sorted.sort_unstable();
            let k = k as u64;
            assert_eq!(sorted, (k * g..(k + 1) * g).collect::<Vec<_>>());
        }
        assert_ne!(ids, (0..1000).collect::<Vec<_>>());
        let bids = all(NexmarkTable::Bid, &cfg, 0, 1000);
        let t = times(&bids, "date_time");
        assert!(t.windows(2).any(|w| w[1] < w[0]), "some bids are out of order");
        // Never more than a group behind the latest so far; never before the
        // group's watermark.
        let mut max = i64::MIN;
        for (n, &ts) in t.iter().enumerate() {
            max = max.max(ts);
            assert!(max - ts < g as i64, "bid {n}");
        }
        assert_eq!(cfg.watermark_ms(25), cfg.timestamp_ms(20));
        let bad = NexmarkConfig {
            out_of_order_group: 953 * 2,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("953"));
    }

    #[test]
    fn channels_and_urls_as_views_equal_them_as_copies() {
        let cfg = NexmarkConfig::default();
        let copies = all(NexmarkTable::Bid, &cfg, 0, 30_000);
        let schema = Arc::new(Schema::new(vec![
            Field::new("url", DataType::Utf8View, true),
            Field::new("channel", DataType::Utf8View, true),
        ]));
        let g = TableGenerator::new(cfg, NexmarkTable::Bid, schema).unwrap();
        let views = concat_batches(g.schema(), &g.generate(0, 30_000).unwrap()).unwrap();
        for (name, i) in [("url", 0), ("channel", 1)] {
            let v = views.column(i).as_string_view();
            let got: Vec<String> = (0..v.len()).map(|r| v.value(r).to_string()).collect();
            assert_eq!(got, strings(&copies, name), "{name}");
        }
    }

    #[test]
    fn declared_columns_are_checked_by_name_and_type() {
        let ok = Schema::new(vec![
            Field::new("price", DataType::Int64, true),
            Field::new("url", DataType::Utf8View, true),
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
        ]);
        assert_eq!(NexmarkTable::Bid.check_schema("b", &ok).unwrap(), vec![2, 4, 5]);
        let bad_name = Schema::new(vec![Field::new("dateTime", DataType::Int64, true)]);
        let e = NexmarkTable::Bid.check_schema("b", &bad_name).unwrap_err();
        assert!(
            e.contains("'dateTime' is not a column of the nexmark bid table")
                && e.contains("date_time TIMESTAMP(3)"),
            "{e}"
        );
        let bad_type = Schema::new(vec![Field::new("price", DataType::Int32, true)]);
        let e = NexmarkTable::Bid.check_schema("b", &bad_type).unwrap_err();
        assert!(
            e.contains("'price' is declared as Int32") && e.contains("BIGINT"),
            "{e}"
        );
        // Declared types other than the generator's own are converted.
        let g = TableGenerator::new(NexmarkConfig::default(), NexmarkTable::Bid, Arc::new(ok)).unwrap();
        let batch = &g.generate(0, 100).unwrap()[0];
        assert_eq!(batch.column(1).data_type(), &DataType::Utf8View);
        assert_eq!(
            batch.column(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
    }
}
