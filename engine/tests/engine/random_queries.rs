//! Random queries against DataFusion's batch answer: no query panics, and
//! every query either runs and gives the batch answer or is refused with a
//! clean error.
//!
//! A seeded generator writes queries over one test table: every window kind
//! (TUMBLE, HOP, CUMULATE, SESSION with and without PARTITION BY), or none
//! (a changelog, or stateless rows); GROUP BY with 0 to 3 keys; DISTINCT;
//! HAVING; aggregates with and without FILTER; subqueries in FROM (over a
//! window's rows and over its results) and, now and then, in an expression;
//! interval joins of the table with itself (inner, outer, semi, anti).
//! The input is cut into files and epochs at random, with rows out of order
//! and late.
//!
//! The batch answer runs the same query text in DataFusion with the window
//! call replaced by a table that holds each on-time row once per window it
//! belongs to (computed here, in plain Rust), so the window semantics are
//! checked independently of Weir's operators. A changelog is folded into
//! its final rows before comparing.
//!
//! `WEIR_RANDOM_QUERIES=N` runs N cases (default 200); `WEIR_RANDOM_SEED`
//! picks another sequence. A failure prints the case's seed and query.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use weir_engine::{JobOptions, StreamingJob, Trigger};

const BASE: i64 = 1_767_225_600_000;

/// splitmix64.
#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Clone, Debug)]
struct Row {
    k1: i64,
    k2: &'static str,
    k3: Option<i64>,
    price: i64,
    ts: i64,
}

/// Rows advancing by up to `step` ms, some shifted back (out of order), a
/// few by a minute (late, mostly); with `in_order`, none.
fn gen_rows(rng: &mut Rng, n: usize, in_order: bool) -> Vec<Row> {
    let step = 1 + rng.below(600);
    let disorder = rng.below(4000);
    let mut t = BASE;
    (0..n)
        .map(|_| {
            t += rng.below(step + 1) as i64;
            let mut ts = t;
            match rng.below(40) {
                _ if in_order => {}
                0 => ts -= rng.below(60_000) as i64,
                1..=12 => ts -= rng.below(disorder + 1) as i64,
                _ => {}
            }
            Row {
                k1: rng.below(4) as i64,
                k2: ["a", "b", "c"][rng.below(3) as usize],
                k3: (!rng.chance(15)).then(|| rng.below(3) as i64),
                price: 1 + rng.below(1000) as i64,
                ts,
            }
        })
        .collect()
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k1", DataType::Int64, false),
        Field::new("k2", DataType::Utf8, false),
        Field::new("k3", DataType::Int64, true),
        Field::new("price", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]))
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.k1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.k2).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.k3).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.price).collect::<Vec<_>>())),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// The rows that are not late under a per-row watermark of `max event time
/// so far - delay`, in arrival order.
fn on_time(rows: &[Row], delay_ms: i64) -> Vec<Row> {
    let mut wm = i64::MIN;
    let mut kept = Vec::new();
    for r in rows {
        if r.ts >= wm {
            kept.push(r.clone());
        }
        wm = wm.max(r.ts - delay_ms);
    }
    kept
}

#[derive(Clone, Debug)]
enum Window {
    Tumble { size: i64 },
    Hop { slide: i64, size: i64 },
    Cumulate { step: i64, size: i64 },
    Session { gap: i64, partition: Vec<&'static str> },
}

impl Window {
    /// The window call over table (or view) `t`.
    fn call(&self, t: &str) -> String {
        let s = |ms: i64| format!("INTERVAL '{ms}' MILLISECOND");
        match self {
            Window::Tumble { size } => format!("TABLE(TUMBLE(TABLE {t}, DESCRIPTOR(ts), {}))", s(*size)),
            Window::Hop { slide, size } => format!(
                "TABLE(HOP(TABLE {t}, DESCRIPTOR(ts), {}, {}))",
                s(*slide),
                s(*size)
            ),
            Window::Cumulate { step, size } => format!(
                "TABLE(CUMULATE(TABLE {t}, DESCRIPTOR(ts), {}, {}))",
                s(*step),
                s(*size)
            ),
            Window::Session { gap, partition } if partition.is_empty() => {
                format!("TABLE(SESSION(TABLE {t}, DESCRIPTOR(ts), {}))", s(*gap))
            }
            Window::Session { gap, partition } => format!(
                "TABLE(SESSION(TABLE {t} PARTITION BY {}, DESCRIPTOR(ts), {}))",
                partition.join(", "),
                s(*gap)
            ),
        }
    }

    /// Each row once per window it is in: `(row, start, end)`.
    fn assign(&self, rows: &[Row]) -> Vec<(Row, i64, i64)> {
        let floor = |t: i64, d: i64| t - t.rem_euclid(d);
        let mut out = Vec::new();
        match self {
            Window::Tumble { size } => {
                for r in rows {
                    let s = floor(r.ts, *size);
                    out.push((r.clone(), s, s + size));
                }
            }
            Window::Hop { slide, size } => {
                for r in rows {
                    let last = floor(r.ts, *slide);
                    for j in 0..size / slide {
                        let s = last - j * slide;
                        out.push((r.clone(), s, s + size));
                    }
                }
            }
            Window::Cumulate { step, size } => {
                for r in rows {
                    let base = floor(r.ts, *size);
                    for j in 0..size / step {
                        let e = base + (j + 1) * step;
                        if e > r.ts {
                            out.push((r.clone(), base, e));
                        }
                    }
                }
            }
            Window::Session { gap, partition } => {
                let mut parts: BTreeMap<String, Vec<Row>> = BTreeMap::new();
                for r in rows {
                    let key = partition
                        .iter()
                        .map(|c| match *c {
                            "k1" => r.k1.to_string(),
                            "k2" => r.k2.to_string(),
                            _ => format!("{:?}", r.k3),
                        })
                        .collect::<Vec<_>>()
                        .join("|");
                    parts.entry(key).or_default().push(r.clone());
                }
                for (_, mut rs) in parts {
                    rs.sort_by_key(|r| r.ts);
                    let mut i = 0;
                    while i < rs.len() {
                        let mut j = i;
                        while j + 1 < rs.len() && rs[j + 1].ts - rs[j].ts < *gap {
                            j += 1;
                        }
                        let (s, e) = (rs[i].ts, rs[j].ts + gap);
                        for r in &rs[i..=j] {
                            out.push((r.clone(), s, e));
                        }
                        i = j + 1;
                    }
                }
            }
        }
        out
    }
}

/// The oracle's window table `w`: the table's columns and the window's.
fn window_table(rows: &[(Row, i64, i64)]) -> RecordBatch {
    let plain: Vec<Row> = rows.iter().map(|(r, _, _)| r.clone()).collect();
    let base = batch(&plain);
    let mut fields: Vec<Field> = schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    fields.push(Field::new("window_start", ts.clone(), false));
    fields.push(Field::new("window_end", ts.clone(), false));
    fields.push(Field::new("window_time", ts, false));
    let mut cols: Vec<ArrayRef> = base.columns().to_vec();
    cols.push(Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
    )));
    cols.push(Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|(_, _, e)| *e).collect::<Vec<_>>(),
    )));
    cols.push(Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|(_, _, e)| *e - 1).collect::<Vec<_>>(),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// What a generated query is, for running and for the oracle.
#[derive(Debug)]
struct Case {
    seed: u64,
    /// The query with `{FROM}` where the window call (or the table) goes.
    query: String,
    window: Option<Window>,
    /// The filters on the table's columns the query applies to the rows of
    /// the window call (in a FROM subquery or its WHERE): a session is made
    /// of the rows that pass them, since sessions form in the aggregate.
    filters: Vec<Filter>,
    /// The window call reads a view of the table, `SELECT * FROM bids
    /// WHERE price > n`: rows the view drops still move the watermark.
    view: Option<i64>,
    /// Whether its output is a changelog.
    changelog: bool,
    delay_ms: i64,
    rows: Vec<Row>,
    cuts: Vec<usize>,
    max_rows: usize,
    /// Threads the job runs on.
    threads: usize,
    /// Reopen the job from its checkpoint before every epoch.
    restart: bool,
    /// An interval join of the table with itself: the batch answer is the
    /// same query over the on-time rows.
    join: bool,
    /// A regular join (no time bound): no row is late, the batch answer
    /// reads them all.
    regular: bool,
    /// The batch answer's query, when it is not `query` itself (a join
    /// with a window aggregate, whose windows batch SQL computes by hand).
    oracle: Option<String>,
}

const AGGS: &[&str] = &[
    "COUNT(*)",
    "COUNT(k3)",
    "SUM(price)",
    "MIN(price)",
    "MAX(price)",
    "AVG(price)",
    "COUNT(DISTINCT k1)",
    "COUNT(DISTINCT k2) FILTER (WHERE price > 300)",
    "SUM(DISTINCT price)",
    "AVG(DISTINCT k1)",
    "SUM(price) FILTER (WHERE k1 > 1)",
    "MAX(price) FILTER (WHERE k2 = 'b')",
    "COUNT(*) FILTER (WHERE k3 IS NULL)",
    "MIN(k2)",
];

const KEYS: &[&str] = &["k1", "k2", "k3"];

/// A filter on the table's columns.
#[derive(Clone, Copy, Debug)]
enum Filter {
    PriceAbove(i64),
    NotC,
    /// An expression subquery: refused (a join).
    InSubquery,
}

impl Filter {
    fn sql(self) -> String {
        match self {
            Filter::PriceAbove(n) => format!("price > {n}"),
            Filter::NotC => "k2 <> 'c'".into(),
            Filter::InSubquery => "k1 IN (SELECT k1 FROM bids WHERE price > 900)".into(),
        }
    }

    fn keeps(self, r: &Row) -> bool {
        match self {
            Filter::PriceAbove(n) => r.price > n,
            Filter::NotC => r.k2 != "c",
            Filter::InSubquery => true,
        }
    }
}

fn gen_case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let n = 50 + rng.below(350) as usize;
    // Lateness is decided in the source's order whatever the threads (the
    // scan deals batches round-robin), so any case may run on two.
    let in_order = rng.chance(25);
    let threads = if in_order || rng.chance(30) { 2 } else { 1 };
    let restart = rng.chance(25);
    let rows = gen_rows(&mut rng, n, in_order);
    let delay_ms = *rng.pick(&[0i64, 500, 2000, 5000]);
    let mut cuts: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(n as u64) as usize).collect();
    cuts.sort_unstable();
    let max_rows = 1 + rng.below(150) as usize;
    // What every kind of case shares; each sets its query and what it is.
    let base = Case {
        seed,
        query: String::new(),
        window: None,
        filters: vec![],
        view: None,
        changelog: false,
        delay_ms,
        rows,
        cuts,
        max_rows,
        threads,
        restart,
        oracle: None,
        join: false,
        regular: false,
    };
    if rng.chance(20) {
        let (query, changelog, regular, oracle) = if rng.chance(25) {
            let (query, oracle) = gen_window_join(&mut rng);
            (query, false, false, Some(oracle))
        } else if rng.chance(25) {
            let (query, changelog) = gen_regular_join(&mut rng);
            (query, changelog, true, None)
        } else {
            (gen_join(&mut rng), false, false, None)
        };
        return Case {
            query,
            regular,
            changelog,
            oracle,
            join: true,
            ..base
        };
    }

    if rng.chance(10) {
        return Case {
            query: gen_top_n(&mut rng),
            changelog: true,
            ..base
        };
    }

    if rng.chance(10) {
        let window = match rng.below(3) {
            0 => Window::Tumble {
                size: *rng.pick(&[1000, 5000, 10_000]),
            },
            1 => {
                let slide = *rng.pick(&[1000i64, 2000]);
                Window::Hop {
                    slide,
                    size: slide * (1 + rng.below(4) as i64),
                }
            }
            _ => {
                let step = *rng.pick(&[1000i64, 2000]);
                Window::Cumulate {
                    step,
                    size: step * (1 + rng.below(4) as i64),
                }
            }
        };
        let (query, filters) = gen_window_top_n(&mut rng);
        // Half on two threads: without keys beside the window, each input
        // partition keeps its top rows first; with keys, the state is sharded.
        let threads = if rng.chance(50) { 2 } else { threads };
        return Case {
            query,
            window: Some(window),
            filters,
            threads,
            ..base
        };
    }

    let window = match rng.below(7) {
        0 => None,
        1 | 2 => Some(Window::Tumble {
            size: *rng.pick(&[1000, 5000, 10_000]),
        }),
        3 => {
            let slide = *rng.pick(&[1000i64, 2000]);
            Some(Window::Hop {
                slide,
                size: slide * (1 + rng.below(5) as i64),
            })
        }
        4 => {
            let step = *rng.pick(&[1000i64, 2000]);
            Some(Window::Cumulate {
                step,
                size: step * (1 + rng.below(5) as i64),
            })
        }
        _ => {
            let partition = match rng.below(3) {
                0 => vec![],
                1 => vec!["k1"],
                _ => vec!["k1", "k2"],
            };
            Some(Window::Session {
                gap: *rng.pick(&[500i64, 2000, 5000]),
                partition,
            })
        }
    };
    // Grouping keys: SESSION's partition keys first (a session is per
    // partition), then others.
    let mut keys: Vec<&str> = match &window {
        Some(Window::Session { partition, .. }) => partition.clone(),
        _ => vec![],
    };
    for _ in 0..rng.below(4) {
        let k = *rng.pick(KEYS);
        if !keys.contains(&k) && keys.len() < 3 {
            keys.push(k);
        }
    }
    let distinct = rng.chance(12);
    let stateless = window.is_none() && rng.chance(20);
    let mut aggs: Vec<String> = Vec::new();
    if !distinct && !stateless {
        for i in 0..1 + rng.below(3) {
            aggs.push(format!("{} AS a{i}", rng.pick(AGGS)));
        }
    }
    let win_cols: &[&str] = if window.is_some() {
        &["window_start", "window_end"]
    } else {
        &[]
    };
    let group: Vec<&str> = win_cols.iter().chain(keys.iter()).copied().collect();

    // The rows the window (or the table) gives, with a filter now and then:
    // after the window call (a WHERE on its rows) or in a subquery over it.
    let from = "{FROM}".to_string();
    let mut all_filters: Vec<Filter> = Vec::new();
    let view = (window.is_some() && rng.chance(15)).then(|| rng.below(600) as i64);
    if let Some(n) = view {
        all_filters.push(Filter::PriceAbove(n));
    }
    let source = match rng.below(6) {
        0 => {
            let f = Filter::PriceAbove(rng.below(500) as i64);
            all_filters.push(f);
            format!("(SELECT * FROM {from} WHERE {}) AS s", f.sql())
        }
        1 => format!("(SELECT * FROM {from}) AS s"),
        _ => from,
    };
    let mut filters: Vec<Filter> = Vec::new();
    if rng.chance(30) {
        filters.push(Filter::PriceAbove(rng.below(700) as i64));
    }
    if rng.chance(15) {
        filters.push(Filter::NotC);
    }
    if rng.chance(4) {
        // An expression subquery (a join): refused for now, cleanly.
        filters.push(Filter::InSubquery);
    }
    all_filters.extend(filters.iter().copied());
    let where_clause = if filters.is_empty() {
        String::new()
    } else {
        let sql: Vec<String> = filters.iter().map(|f| f.sql()).collect();
        format!(" WHERE {}", sql.join(" AND "))
    };

    let (mut query, changelog) = if stateless {
        let cols = ["k1", "k2", "k3", "price"];
        let picked: Vec<&str> = cols.iter().copied().filter(|_| rng.chance(60)).collect();
        let picked = if picked.is_empty() { vec!["price"] } else { picked };
        (
            format!("SELECT {} FROM {source}{where_clause}", picked.join(", ")),
            false,
        )
    } else if distinct {
        let cols = if group.is_empty() {
            vec!["k1"]
        } else {
            group.clone()
        };
        (
            format!("SELECT DISTINCT {} FROM {source}{where_clause}", cols.join(", ")),
            window.is_none(),
        )
    } else {
        let select: Vec<String> = group
            .iter()
            .map(|c| c.to_string())
            .chain(aggs.iter().cloned())
            .collect();
        let mut q = format!("SELECT {} FROM {source}{where_clause}", select.join(", "));
        if !group.is_empty() {
            q.push_str(&format!(" GROUP BY {}", group.join(", ")));
        }
        if rng.chance(25) {
            q.push_str(&format!(
                " HAVING {}",
                rng.pick(&[
                    "COUNT(*) > 1",
                    "SUM(price) > 500",
                    "MAX(price) >= 100",
                    "COUNT(*) % 2 = 0"
                ])
            ));
        }
        (q, window.is_none())
    };
    // Now and then, an aggregate over a changelog: the outer aggregate must
    // take back the inner one's retracted rows.
    if changelog && rng.chance(35) {
        let inner_cols: Vec<String> = if distinct {
            vec![]
        } else {
            aggs.iter()
                .enumerate()
                // Integer results: their sums are exact in any order.
                .filter(|(_, a)| !a.starts_with("AVG") && !a.starts_with("MIN(k2)"))
                .map(|(i, _)| format!("a{i}"))
                .collect()
        };
        let keys_in: Vec<&str> = group.iter().copied().filter(|_| rng.chance(50)).collect();
        let mut outer: Vec<String> = keys_in.iter().map(|k| k.to_string()).collect();
        for i in 0..1 + rng.below(3) {
            let arg = match (inner_cols.as_slice(), group.first()) {
                ([], Some(k)) => k.to_string(),
                ([], None) => "1".to_string(),
                (cols, _) => rng.pick(cols).clone(),
            };
            let f = *rng.pick(&["COUNT(*)", "COUNT(#)", "SUM(#)", "AVG(#)", "SUM(#)", "MAX(#)"]);
            let arg = if rng.chance(20) && group.contains(&"k3") {
                "k3".to_string()
            } else {
                arg
            };
            outer.push(format!("{} AS o{i}", f.replace('#', &arg)));
        }
        query = format!("SELECT {} FROM ({query}) AS r", outer.join(", "));
        if !keys_in.is_empty() {
            query.push_str(&format!(" GROUP BY {}", keys_in.join(", ")));
        }
    }
    // Now and then, a stateless query over the results.
    if !changelog && rng.chance(15) {
        query = format!("SELECT * FROM ({query}) AS r WHERE 1 = 1");
    }
    Case {
        query,
        window,
        filters: all_filters,
        view,
        changelog,
        ..base
    }
}

/// A regular join of `bids` with itself (no time bound): inner or semi
/// (append-only), or outer or anti (an updating join: a changelog, then
/// `true`).
fn gen_regular_join(rng: &mut Rng) -> (String, bool) {
    let key = *rng.pick(&[
        "a.k1 = b.k1",
        "a.k2 = b.k2",
        "a.k3 = b.k3",
        "a.k1 = b.k1 AND a.k2 = b.k2",
    ]);
    let extra = if rng.chance(50) {
        " AND a.price > b.price + 900"
    } else {
        ""
    };
    // The right side, sometimes a changelog (an aggregate's rows, which
    // it updates and takes back).
    let (b_side, b_changelog) = if rng.chance(35) {
        let agg = *rng.pick(&["MAX(price)", "SUM(price)", "MIN(price)"]);
        let having = *rng.pick(&["", " HAVING COUNT(*) % 2 = 1"]);
        (
            format!(
                "(SELECT k1, k2, k3, {agg} AS price, MAX(ts) AS ts FROM bids GROUP BY k1, k2, k3{having}) b"
            ),
            true,
        )
    } else {
        ("bids b".to_string(), false)
    };
    match rng.below(10) {
        0..=2 => (
            format!(
                "SELECT a.k1, a.price, a.ts FROM bids a WHERE EXISTS (SELECT 1 FROM {b_side} WHERE {key}{extra})"
            ),
            b_changelog,
        ),
        3 => (
            format!(
                "SELECT a.k1, a.price, a.ts FROM bids a WHERE NOT EXISTS (SELECT 1 FROM {b_side} WHERE {key}{extra})"
            ),
            true,
        ),
        4..=6 => {
            let kind = *rng.pick(&["LEFT", "RIGHT", "FULL"]);
            (
                format!(
                    "SELECT a.k1, a.price AS ap, b.k2, b.price AS bp, a.ts AS at, b.ts AS bt FROM bids a {kind} JOIN {b_side} ON {key}{extra}"
                ),
                true,
            )
        }
        _ => (
            format!(
                "SELECT a.k1, a.price, b.k2, b.price, a.ts, b.ts FROM bids a JOIN {b_side} ON {key}{extra}"
            ),
            b_changelog,
        ),
    }
}

/// The orders a Top-N case ranks by: `ORDER BY` and its columns.
const RANK_ORDERS: &[(&str, &str)] = &[
    ("price DESC", "price"),
    ("price", "price"),
    ("ts DESC", "ts"),
    ("price DESC, ts", "price, ts"),
    ("k3 DESC NULLS LAST, price", "k3, price"),
];

/// The columns a ROW_NUMBER case selects: `first`, then the partition keys
/// and the order columns (comma-separated lists), each once (a key may also
/// be an order column). Rows tied in all of them look the same, so the
/// batch answer cannot differ by which tied row it picked.
fn ranked_columns(first: &[&str], keys: &str, order_cols: &str) -> String {
    let mut cols: Vec<&str> = first.to_vec();
    for c in keys.split(", ").chain(order_cols.split(", ")) {
        let c = c.trim_start_matches(", ");
        if !c.is_empty() && !cols.contains(&c) {
            cols.push(c);
        }
    }
    cols.join(", ")
}

/// A Top-N or deduplication outside windows (a changelog): a random
/// ranking function, partition (none, one or two keys), order and N, over
/// the table, a filtered subquery or an aggregate's changelog. Under ROW_NUMBER only the partition
/// and order columns are selected, so a tie can only pick between rows
/// that look the same.
fn gen_top_n(rng: &mut Rng) -> String {
    let partition = *rng.pick(&["", "PARTITION BY k1", "PARTITION BY k2", "PARTITION BY k1, k3"]);
    let (order, order_cols) = *rng.pick(RANK_ORDERS);
    let f = *rng.pick(&["ROW_NUMBER()", "RANK()", "DENSE_RANK()"]);
    let cols = if f == "ROW_NUMBER()" {
        ranked_columns(&[], partition.trim_start_matches("PARTITION BY "), order_cols)
    } else {
        "k1, k2, k3, price, ts".to_string()
    };
    let from = if rng.chance(30) {
        format!("(SELECT * FROM {{FROM}} WHERE price > {}) AS s", rng.below(600))
    } else if rng.chance(35) {
        // A changelog: an aggregate's rows, which it updates and takes back.
        let agg = *rng.pick(&["MAX(price)", "SUM(price)", "MIN(price)"]);
        let having = *rng.pick(&["", " HAVING COUNT(*) % 3 <> 1"]);
        format!(
            "(SELECT k1, k2, k3, {agg} AS price, MAX(ts) AS ts FROM {{FROM}} GROUP BY k1, k2, k3{having}) AS s"
        )
    } else {
        "{FROM}".to_string()
    };
    let filter = *rng.pick(&[
        "rn <= 1",
        "rn = 1",
        "rn <= 3",
        "rn < 3",
        "rn <= 10",
        "rn <= 2 AND price > 100",
    ]);
    format!(
        "SELECT {cols}, rn FROM (SELECT *, {f} OVER ({partition} ORDER BY {order}) AS rn FROM {from}) AS t WHERE {filter}"
    )
}

/// A window Top-N (append-only: each window's ranking is emitted once, when
/// it closes): a random ranking function, partition (the window alone, or
/// with one or two keys), order and N, over the window's rows, a filtered
/// subquery of them, or a window aggregate's rows (Flink's "Top-N after a
/// window aggregation"). Under ROW_NUMBER only the partition and order
/// columns are selected, so a tie can only pick between rows that look the
/// same. Returns the query and the filters it applies to the window's rows.
fn gen_window_top_n(rng: &mut Rng) -> (String, Vec<Filter>) {
    let f = *rng.pick(&["ROW_NUMBER()", "RANK()", "DENSE_RANK()"]);
    let filter = *rng.pick(&[
        "rn <= 1",
        "rn = 1",
        "rn <= 3",
        "rn < 3",
        "rn <= 2 AND price > 100",
    ]);
    if rng.chance(30) {
        // Over a window aggregate: one row per (window, key), so `k` breaks
        // every tie of ROW_NUMBER.
        let (key, agg) = *rng.pick(&[
            ("k1", "COUNT(*)"),
            ("k2", "SUM(price)"),
            ("k1", "MAX(price)"),
            ("k3", "MIN(price)"),
        ]);
        let order = *rng.pick(&["price DESC", "price", "price DESC NULLS LAST"]);
        let tie = if f == "ROW_NUMBER()" {
            format!(", {key} NULLS FIRST")
        } else {
            String::new()
        };
        return (
            format!(
                "SELECT window_start, window_end, {key}, price, rn FROM (SELECT *, {f} OVER \
                 (PARTITION BY window_start, window_end ORDER BY {order}{tie}) AS rn FROM \
                 (SELECT window_start, window_end, {key}, {agg} AS price FROM {{FROM}} \
                 GROUP BY window_start, window_end, {key}) AS a) AS t WHERE {filter}"
            ),
            vec![],
        );
    }
    let keys = *rng.pick(&["", ", k1", ", k2", ", k1, k3"]);
    let (order, order_cols) = *rng.pick(RANK_ORDERS);
    let cols = if f == "ROW_NUMBER()" {
        ranked_columns(&["window_start", "window_end"], keys, order_cols)
    } else {
        "window_start, window_end, k1, k2, k3, price, ts".to_string()
    };
    let mut filters = Vec::new();
    let from = if rng.chance(30) {
        let f = Filter::PriceAbove(rng.below(600) as i64);
        filters.push(f);
        format!("(SELECT * FROM {{FROM}} WHERE {}) AS s", f.sql())
    } else {
        "{FROM}".to_string()
    };
    (
        format!(
            "SELECT {cols}, rn FROM (SELECT *, {f} OVER (PARTITION BY window_start, window_end{keys} \
             ORDER BY {order}) AS rn FROM {from}) AS t WHERE {filter}"
        ),
        filters,
    )
}

/// An interval join of `bids` with itself: a random kind (inner, outer,
/// semi, anti), keys (none, one, two, a nullable one), bound (any width,
/// either side first, BETWEEN or two comparisons) and extra condition.
fn gen_join(rng: &mut Rng) -> String {
    let shift = |ms: i64| {
        if ms < 0 {
            format!("- INTERVAL '{}' MILLISECOND", -ms)
        } else {
            format!("+ INTERVAL '{ms}' MILLISECOND")
        }
    };
    let lo = *rng.pick(&[-3000i64, -1000, 0, 500]);
    let hi = lo + *rng.pick(&[0i64, 1000, 2500, 4000]);
    // b.ts - a.ts in [lo, hi].
    let bound = match rng.below(3) {
        0 => format!("b.ts BETWEEN a.ts {} AND a.ts {}", shift(lo), shift(hi)),
        1 => format!("b.ts >= a.ts {} AND b.ts <= a.ts {}", shift(lo), shift(hi)),
        _ => format!("a.ts >= b.ts {} AND a.ts <= b.ts {}", shift(-hi), shift(-lo)),
    };
    let key = *rng.pick(&[
        "a.k1 = b.k1",
        "a.k2 = b.k2",
        "a.k3 = b.k3",
        "a.k1 = b.k1 AND a.k2 = b.k2",
        "",
    ]);
    let mut cond: Vec<String> = vec![bound];
    if !key.is_empty() {
        cond.insert(0, key.to_string());
    }
    if rng.chance(30) {
        cond.push("a.price > b.price".into());
    }
    let cond = cond.join(" AND ");
    match rng.below(6) {
        4 => {
            format!("SELECT a.k1, a.price, a.ts FROM bids a WHERE EXISTS (SELECT 1 FROM bids b WHERE {cond})")
        }
        5 => format!(
            "SELECT a.k1, a.k3, a.ts FROM bids a WHERE NOT EXISTS (SELECT 1 FROM bids b WHERE {cond})"
        ),
        k => {
            let kind = ["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"][k as usize];
            format!("SELECT a.k1, a.price, b.k2, b.price, a.ts, b.ts FROM bids a {kind} bids b ON {cond}")
        }
    }
}

/// Nexmark q7's form: rows joined with a value of each tumbling window
/// near them (the highest price, the lowest or highest `k1`), an interval
/// join of the table with a window aggregate of itself without keys (one
/// row a window; on two threads that side is broadcast to every partition
/// when its rows need not remember matches: not the preserved side of a
/// RIGHT join). Returns the query and its batch form, which computes the
/// windows by hand.
fn gen_window_join(rng: &mut Rng) -> (String, String) {
    let size = *rng.pick(&[1000i64, 2000, 5000]);
    let (agg, key) = *rng.pick(&[("MAX(price)", "price"), ("MAX(k1)", "k1"), ("MIN(k1)", "k1")]);
    let stream = format!(
        "(SELECT {agg} AS v, window_end AS we FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), \
         INTERVAL '{size}' MILLISECOND)) GROUP BY window_start, window_end) w"
    );
    let batch = format!(
        "(SELECT {agg} AS v, to_timestamp_millis(s + {size}) AS we FROM (SELECT *, \
         CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % {size} AS s FROM bids) AS a GROUP BY s) w"
    );
    // b.ts - w.we in [-before, after].
    let before = *rng.pick(&[size / 2, size, 2 * size]);
    let after = *rng.pick(&[0i64, 1000, 3000]);
    let on = format!(
        "b.{key} = w.v AND b.ts BETWEEN w.we - INTERVAL '{before}' MILLISECOND \
         AND w.we + INTERVAL '{after}' MILLISECOND"
    );
    let shape = rng.below(4);
    (sql_of(shape, &stream, &on), sql_of(shape, &batch, &on))
}

/// [`gen_window_join`]'s query, shape `shape`, over the window side `w`.
fn sql_of(shape: u64, w: &str, on: &str) -> String {
    match shape {
        0 => format!("SELECT b.k1, b.price, b.ts, w.v, w.we FROM bids b LEFT JOIN {w} ON {on}"),
        1 => format!("SELECT b.k1, b.ts, w.v, w.we FROM bids b RIGHT JOIN {w} ON {on}"),
        2 => format!("SELECT b.k2, b.price, b.ts, w.we FROM {w} JOIN bids b ON {on}"),
        _ => format!("SELECT b.k1, b.k3, b.price, b.ts, w.we FROM bids b JOIN {w} ON {on}"),
    }
}

/// Rows as text, sorted; floats to 9 significant digits (sums in another
/// order may differ in the last bits).
fn format_rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<Box<dyn Fn(usize) -> String>> = b
            .columns()
            .iter()
            .map(|c| -> Box<dyn Fn(usize) -> String> {
                if let Some(f) = c.as_any().downcast_ref::<Float64Array>() {
                    let f = f.clone();
                    Box::new(move |i| {
                        if f.is_null(i) {
                            "NULL".into()
                        } else {
                            format!("{:.8e}", f.value(i))
                        }
                    })
                } else {
                    let c = Arc::clone(c);
                    let opts = opts.clone();
                    Box::new(move |i| {
                        ArrayFormatter::try_new(c.as_ref(), &opts)
                            .map(|f| f.value(i).to_string())
                            .unwrap_or_default()
                    })
                }
            })
            .collect();
        for i in 0..b.num_rows() {
            out.push(cols.iter().map(|f| f(i)).collect::<Vec<_>>().join("|"));
        }
    }
    out.sort();
    out
}

/// Applies a changelog (`op` first) in order; returns the final rows.
fn apply_changelog(lines: Vec<String>) -> Result<Vec<String>, String> {
    let mut table: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines {
        let (op, row) = line.split_once('|').unwrap_or((line.as_str(), ""));
        match op {
            "+I" | "+U" => *table.entry(row.to_string()).or_default() += 1,
            "-U" | "-D" => match table.get_mut(row) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        table.remove(row);
                    }
                }
                None => return Err(format!("retracting a row never inserted: {row}")),
            },
            other => return Err(format!("unknown op {other}")),
        }
    }
    let mut out: Vec<String> = table
        .into_iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r, n))
        .collect();
    out.sort();
    Ok(out)
}

use crate::common::read_sink;

/// How a case ended.
enum Outcome {
    /// It ran and matched the batch answer (with this many rows).
    Matched(usize),
    /// Weir refused it, or the batch side cannot run it either.
    Refused(String),
}

/// Whether an error is a clean one: no internal names, no internals.
fn clean(e: &str) -> Result<(), String> {
    let lower = e.to_lowercase();
    for bad in [
        "__weir",
        "panicked",
        "internal error",
        "bug in",
        "not yet implemented",
    ] {
        if lower.contains(bad) {
            return Err(format!("not a clean error ({bad}): {e}"));
        }
    }
    Ok(())
}

async fn run_case(case: &Case) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut bounds = vec![0];
    bounds.extend(
        case.cuts
            .iter()
            .copied()
            .filter(|&c| c > 0 && c < case.rows.len()),
    );
    bounds.push(case.rows.len());
    bounds.dedup();
    for (i, w) in bounds.windows(2).enumerate() {
        let f = std::fs::File::create(input.join(format!("part-{i:04}.parquet"))).unwrap();
        let b = batch(&case.rows[w[0]..w[1]]);
        let mut writer = ArrowWriter::try_new(f, b.schema(), None).unwrap();
        writer.write(&b).unwrap();
        writer.close().unwrap();
    }
    let out = dir.path().join("out");
    let table = if case.view.is_some() { "v" } else { "bids" };
    let query = case.query.replace(
        "{FROM}",
        &case.window.as_ref().map_or("bids".to_string(), |w| w.call(table)),
    );
    let view = case
        .view
        .map(|n| format!("CREATE VIEW v AS SELECT * FROM bids WHERE price > {n};"))
        .unwrap_or_default();
    let sql = format!(
        "CREATE TABLE bids (k1 BIGINT, k2 VARCHAR, k3 BIGINT, price BIGINT, ts TIMESTAMP(3),
           WATERMARK FOR ts AS ts - INTERVAL '{}' MILLISECOND)
           WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_rows_per_batch' = '{}');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'mode' = '{}');
         {view}
         INSERT INTO out {query};",
        case.delay_ms,
        input.display(),
        case.max_rows,
        out.display(),
        if case.changelog { "changelog" } else { "append" }
    );
    let options = || JobOptions {
        threads: case.threads,
        ..JobOptions::new(dir.path().join("ck").display().to_string())
    };
    let mut job = match StreamingJob::open(&sql, options()).await {
        Ok(j) => j,
        Err(e) => {
            let e = e.to_string();
            clean(&e)?;
            return Ok(Outcome::Refused(e));
        }
    };
    let (_tx, stop) = tokio::sync::watch::channel(false);
    // Planned but failed while running: that is a bug, not a refusal.
    let failed = |e: weir_engine::Error| format!("the query was planned but failed while running: {e}");
    if case.restart {
        // One epoch per process, as if it were stopped after each.
        loop {
            let ran = job
                .run(Trigger::Once, false, stop.clone(), &mut |_| {})
                .await
                .map_err(failed)?;
            job.close().await.map_err(failed)?;
            job = StreamingJob::open(&sql, options()).await.map_err(failed)?;
            if ran.epochs == 0 {
                break;
            }
        }
    }
    job.run(Trigger::AvailableNow, true, stop, &mut |_| {})
        .await
        .map_err(failed)?;
    let got = format_rows(&read_sink(&out));

    // The batch answer.
    let ctx = SessionContext::new();
    let oracle_query = match &case.window {
        None if case.join => {
            let rows = if case.regular {
                case.rows.clone()
            } else {
                on_time(&case.rows, case.delay_ms)
            };
            ctx.register_batch("bids", batch(&rows)).unwrap();
            case.oracle.clone().unwrap_or_else(|| case.query.clone())
        }
        None => {
            ctx.register_batch("bids", batch(&case.rows)).unwrap();
            case.query.replace("{FROM}", "bids")
        }
        Some(w) => {
            let rows = on_time(&case.rows, case.delay_ms);
            ctx.register_batch("bids", batch(&rows)).unwrap();
            let rows: Vec<Row> = match case.view {
                Some(n) => rows.into_iter().filter(|r| r.price > n).collect(),
                None => rows,
            };
            let windowed: Vec<Row> = match w {
                Window::Session { .. } => rows
                    .iter()
                    .filter(|r| case.filters.iter().all(|f| f.keeps(r)))
                    .cloned()
                    .collect(),
                _ => rows,
            };
            ctx.register_batch("w", window_table(&w.assign(&windowed)))
                .unwrap();
            case.query.replace("{FROM}", "w")
        }
    };
    let want = match ctx.sql(&oracle_query).await {
        Ok(df) => match df.collect().await {
            Ok(b) => format_rows(&b),
            Err(e) => return Ok(Outcome::Refused(format!("the batch side fails too: {e}"))),
        },
        Err(e) => return Ok(Outcome::Refused(format!("the batch side refuses it too: {e}"))),
    };
    let got = if case.changelog {
        apply_changelog(got)?
    } else {
        got
    };
    if got != want {
        // The rows of each side the other lacks (both sorted), at most 12.
        let only = |a: &[String], b: &[String]| {
            a.iter()
                .filter(|r| !b.contains(r))
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        };
        return Err(format!(
            "the result differs from the batch answer ({} rows against {}):\n streaming only:\n  {}\n batch only:\n  {}",
            got.len(),
            want.len(),
            only(&got, &want),
            only(&want, &got)
        ));
    }
    Ok(Outcome::Matched(want.len()))
}

#[test]
fn random_queries_match_the_batch_answer_or_are_refused_cleanly() {
    let cases: u64 = std::env::var("WEIR_RANDOM_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed0: u64 = std::env::var("WEIR_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut matched, mut refused, mut rows) = (0, 0, 0);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..cases {
        let seed = seed0.wrapping_add(i);
        let case = gen_case(seed);
        // On a task of its own, so that a panic is caught and reported.
        let task = {
            let case = Arc::new(case);
            let c = Arc::clone(&case);
            (
                rt.block_on(async move { tokio::spawn(async move { run_case(&c).await }).await }),
                case,
            )
        };
        match task {
            (Ok(Ok(Outcome::Matched(n))), _) => {
                matched += 1;
                rows += n;
            }
            (Ok(Ok(Outcome::Refused(e))), _) => {
                refused += 1;
                // The reason, without the statement it is about.
                let reason = e.split_once("`): ").map_or(e.as_str(), |(_, r)| r);
                let key: String = reason.chars().take(90).collect();
                *reasons.entry(key).or_default() += 1;
            }
            (Ok(Err(e)), case) => failures.push(format!("seed {}: {}\n  {e}", case.seed, case.query)),
            (Err(join), case) => {
                failures.push(format!("seed {}: {}\n  PANICKED: {join}", case.seed, case.query))
            }
        }
    }
    eprintln!("{cases} random queries: {matched} matched the batch answer ({rows} rows), {refused} refused:");
    for (r, n) in &reasons {
        eprintln!("  {n:4}  {r}");
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The generator must mostly write queries that run, or this proves little.
    assert!(
        matched * 3 >= cases * 2,
        "only {matched} of {cases} queries ran; the generator or the engine refuses too much"
    );
}
