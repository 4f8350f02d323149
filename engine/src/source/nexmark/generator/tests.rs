//! The generator against Beam's and Flink's: fixed draws, ratios, ids.

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
