//! The Kafka source against a real Kafka-protocol broker (`tansu`, see
//! `common::kafka`): jobs run by the real binary over topics a producer
//! filled, compared with DataFusion's batch answer over the same rows.
//!
//! Without a broker the tests print a skip line and pass (unless
//! `WEIR_REQUIRE_KAFKA` is set, as in CI).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::kafka::*;
use crate::common::*;

const DRAIN: [&str; 5] = ["run", "job.sql", "--trigger", "available-now", "--drain"];

/// `weir run job.sql` with a 300 ms trigger and its progress in `p.json`,
/// left running (stderr piped).
fn run_in_background(ws: &Workspace) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "run",
            "job.sql",
            "--trigger",
            "300ms",
            "--progress-json",
            "p.json",
        ])
        .current_dir(ws.dir.path())
        .env("HOME", ws.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the job in `ws` has read `n` rows (by its `p.json`).
fn wait_for_rows(ws: &Workspace, n: u64) {
    let rows = || sum_field(&progress(&ws.path("p.json")), "rows_in");
    let deadline = Instant::now() + Duration::from_secs(120);
    while rows() < n {
        assert!(Instant::now() < deadline, "only {} rows read", rows());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_windowed_job_over_four_partitions_equals_the_batch_answer_and_resumes() {
    let Some(broker) = Broker::any() else { return };
    let bids = gen_bids(7, 20_000, BASE_MS, 1500);
    broker.create_topic("bids-e2e", 4);
    produce_bids(&broker, "bids-e2e", 4, &bids[..12_000]);
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&broker.addr, "bids-e2e", ", 'max_rows_per_batch' = '3000'"),
    );
    // Read what is there now; then more arrives, and a second run reads
    // only that (from the checkpoint), then drains.
    let first = ws
        .weir(&[
            "run",
            "job.sql",
            "--trigger",
            "available-now",
            "--progress-json",
            "p1.json",
        ])
        .ok();
    let p1 = progress(&ws.path("p1.json"));
    assert!(p1.len() >= 3, "several epochs: {}", first.stderr());
    assert_eq!(sum_field(&p1, "rows_in"), 12_000);
    produce_bids(&broker, "bids-e2e", 4, &bids[12_000..]);
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--progress-json",
        "p2.json",
    ])
    .ok();
    assert_eq!(sum_field(&progress(&ws.path("p2.json")), "rows_in"), 8_000);
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    // The checkpoint names each epoch's ranges by partition.
    let offsets =
        std::fs::read_to_string(ws.path("job.checkpoint/offsets/00000000000000000001.json")).unwrap();
    assert!(offsets.contains("\"partition\": 3"), "{offsets}");
    let inspect = ws.weir(&["checkpoint", "inspect", "job.checkpoint"]).ok();
    assert!(inspect.stdout().contains("bids-e2e/0:"), "{}", inspect.stdout());
}

#[test]
fn metadata_columns_and_startup_modes() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("meta", 2);
    let mut recs = Vec::new();
    for i in 0..6i64 {
        let mut r = record(&format!("{{\"v\": {i}}}"), BASE_MS + i * 1000);
        r.key = Some(format!("k{i}").into_bytes());
        r.headers.insert("trace".into(), format!("t{i}").into_bytes());
        recs.push(r);
    }
    // A record batch each: tansu answers a fetch from the middle of a
    // batch with the batches after it, so a start inside one would lose
    // the rest of it there (Kafka gives the whole batch).
    broker.produce_in("meta", 0, recs[..3].to_vec(), 1);
    broker.produce_in("meta", 1, recs[3..].to_vec(), 1);
    let table = |extra: &str| {
        format!(
            "CREATE TABLE m (v BIGINT, ts TIMESTAMP(3) METADATA FROM 'timestamp', p INT METADATA FROM 'partition',
               \"offset\" BIGINT METADATA VIRTUAL, k VARCHAR METADATA FROM 'key', h VARCHAR METADATA FROM 'headers',
               t VARCHAR METADATA FROM 'topic')
             WITH ('connector' = 'kafka', 'topic' = 'meta', 'properties.bootstrap.servers' = '{}',
                   'format' = 'json'{extra});
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
             INSERT INTO out SELECT v, ts, p, \"offset\", k, h, t FROM m;",
            broker.addr
        )
    };
    let run = |extra: &str| -> Vec<String> {
        let ws = Workspace::new();
        ws.write("job.sql", &table(extra));
        ws.weir(&DRAIN).ok();
        sink_rows(&ws.path("out"))
    };
    let all = run("");
    assert_eq!(
        all,
        vec![
            "0|2026-01-01T00:00:00|0|0|k0|{\"trace\":\"t0\"}|meta",
            "1|2026-01-01T00:00:01|0|1|k1|{\"trace\":\"t1\"}|meta",
            "2|2026-01-01T00:00:02|0|2|k2|{\"trace\":\"t2\"}|meta",
            "3|2026-01-01T00:00:03|1|0|k3|{\"trace\":\"t3\"}|meta",
            "4|2026-01-01T00:00:04|1|1|k4|{\"trace\":\"t4\"}|meta",
            "5|2026-01-01T00:00:05|1|2|k5|{\"trace\":\"t5\"}|meta",
        ]
    );
    let vs = |rows: Vec<String>| -> Vec<String> {
        rows.iter()
            .map(|r| r.split('|').next().unwrap().to_string())
            .collect()
    };
    // From given offsets, for some partitions (the rest from the start).
    assert_eq!(
        vs(run(
            ", 'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = 'partition:0,offset:2'"
        )),
        vec!["2", "3", "4", "5"]
    );
    // From the end: nothing of what is there.
    assert!(run(", 'scan.startup.mode' = 'latest-offset'").is_empty());

    // From the first record at or after a time. The records are stamped
    // with the time they are sent (a broker may look records up by when
    // it stored them, as tansu does, or by their timestamps, as Kafka does:
    // then both agree).
    broker.create_topic("ts-mode", 1);
    let now = || chrono::Utc::now().timestamp_millis();
    let stamped = |v: i64| record(&format!("{{\"v\": {v}}}"), now());
    broker.produce_in("ts-mode", 0, (0..3).map(stamped).collect(), 1);
    std::thread::sleep(Duration::from_millis(100));
    let from = now();
    std::thread::sleep(Duration::from_millis(100));
    broker.produce_in("ts-mode", 0, (3..6).map(stamped).collect(), 1);
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE m (v BIGINT) WITH ('connector' = 'kafka', 'topic' = 'ts-mode',
               'properties.bootstrap.servers' = '{}', 'format' = 'json',
               'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '{from}');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
             INSERT INTO out SELECT v FROM m;",
            broker.addr
        ),
    );
    ws.weir(&DRAIN).ok();
    assert_eq!(sink_rows(&ws.path("out")), vec!["3", "4", "5"]);
}

#[test]
fn bad_records_name_their_partition_and_offset() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("bad", 1);
    let good = |i: i64| {
        record(
            &format!(
                "{{\"auction\": 1, \"price\": {i}, \"date_time\": \"{}\"}}",
                iso(BASE_MS + i)
            ),
            BASE_MS + i,
        )
    };
    broker.produce(
        "bad",
        0,
        vec![
            good(1),
            record("{\"auction\": \"x\"", BASE_MS),
            good(2),
            record("  ", BASE_MS),
            good(3),
            // A tombstone (no value at all, as a compacted topic holds,
            // Weir's own upsert sink among its writers): no row, and not bad.
            rskafka::record::Record {
                value: None,
                ..record("", BASE_MS)
            },
        ],
    );
    // Under 'fail', a topic of good records and tombstones runs clean.
    broker.create_topic("tombstones", 1);
    broker.produce(
        "tombstones",
        0,
        vec![
            good(1),
            rskafka::record::Record {
                value: None,
                ..record("", BASE_MS)
            },
            good(2),
        ],
    );
    let ws = Workspace::new();
    ws.write("job.sql", &kafka_job(&broker.addr, "tombstones", ""));
    ws.weir(&DRAIN).ok();
    assert_eq!(
        sink_rows(&ws.path("out")),
        vec!["2026-01-01T00:00:00|2026-01-01T00:00:10|1|2|3|2"]
    );
    let ws = Workspace::new();
    ws.write("job.sql", &kafka_job(&broker.addr, "bad", ""));
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(e.contains("kafka://bad/0: offset 1:"), "{e}");
    // A record cannot be fixed in place as a file can: the way on is a policy.
    assert!(
        e.contains("set 'on_error' = 'skip' or 'dead_letter'") && !e.contains("remove the file"),
        "{e}"
    );
    ws.write(
        "job.sql",
        &format!(
            "{}CREATE TABLE dead WITH ('connector' = 'files', 'path' = 'dead/', 'format' = 'parquet');",
            kafka_job(
                &broker.addr,
                "bad",
                ", 'on_error' = 'dead_letter', 'dead_letter' = 'dead'"
            )
        ),
    );
    ws.weir(&DRAIN).ok();
    let dead = sink_rows(&ws.path("dead"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead[0].starts_with("bids|kafka://bad/0||1|"), "{dead:?}");
    assert!(
        dead[1].starts_with("bids|kafka://bad/0||3|the record has no value"),
        "{dead:?}"
    );
    assert_eq!(
        sink_rows(&ws.path("out")),
        vec!["2026-01-01T00:00:00|2026-01-01T00:00:10|1|3|6|3"]
    );
}

#[test]
fn refusals_name_the_problem_and_secrets_never_show() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("present", 1);
    let ws = Workspace::new();
    ws.write("job.sql", &kafka_job(&broker.addr, "absent-topic", ""));
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(e.contains("topic 'absent-topic' does not exist"), "{e}");
    assert!(e.contains("present"), "{e}");
    // The wrong format: CSV values read as JSON.
    let ws = Workspace::new();
    broker.create_topic("csvs", 1);
    broker.produce("csvs", 0, vec![record("1,2,2026-01-01T00:00:00", BASE_MS)]);
    ws.write("job.sql", &kafka_job(&broker.addr, "csvs", ""));
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(e.contains("kafka://csvs/0: offset 0:"), "{e}");
    // A secret in the options: refused by a broker that does not do SASL,
    // and never printed, nor kept in the checkpoint's query text.
    const SECRET: &str = "kafka-Pa55-word-SECRET";
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(
            &broker.addr,
            "present",
            &format!(
                ", 'properties.security.protocol' = 'SASL_PLAINTEXT', 'properties.sasl.mechanism' = 'PLAIN', \
                 'properties.sasl.jaas.config' = 'org.apache.kafka.common.security.plain.PlainLoginModule required \
                 username=\"u\" password=\"{SECRET}\";'"
            ),
        ),
    );
    let run = ws.weir(&["run", "job.sql", "--trigger", "once"]).fails();
    let all = format!("{}{}", run.stdout(), run.stderr());
    assert!(all.contains("refused the credentials"), "{all}");
    assert!(!all.contains(SECRET), "{all}");
    let explain = ws.weir(&["run", "job.sql", "--explain"]).ok();
    let all = format!("{}{}", explain.stdout(), explain.stderr());
    assert!(all.contains("StreamScanExec: source=bids"), "{all}");
    assert!(
        all.contains("-- source bids: max event time = the lowest over the partitions of 'present' of each one's greatest"),
        "{all}"
    );
    assert!(!all.contains(SECRET), "{all}");
    let meta = std::fs::read_to_string(ws.path("job.checkpoint/metadata.json")).unwrap();
    assert!(meta.contains("properties.sasl.jaas.config"), "{meta}");
    assert!(!meta.contains(SECRET), "{meta}");
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("idle", 2);
    // Partition 1 never gets a record: without an idle timeout, the
    // watermark waits for it and no window closes; with one, windows close.
    let bids = gen_bids(3, 400, BASE_MS, 0);
    let records: Vec<_> = bids
        .iter()
        .map(|b| {
            record(
                &format!(
                    "{{\"auction\": {}, \"price\": {}, \"date_time\": \"{}\"}}",
                    b.auction,
                    b.price,
                    iso(b.ts)
                ),
                b.ts,
            )
        })
        .collect();
    broker.produce("idle", 0, records);
    for (extra, closes) in [("", false), (", 'scan.watermark.idle-timeout' = '1s'", true)] {
        let ws = Workspace::new();
        ws.write(
            "job.sql",
            &kafka_job(
                &broker.addr,
                "idle",
                &format!(", 'max_rows_per_batch' = '100'{extra}"),
            ),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "job.sql", "--trigger", "500ms"])
            .current_dir(ws.dir.path())
            .env("HOME", ws.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(if closes { 60 } else { 8 });
        let mut rows = Vec::new();
        while Instant::now() < deadline {
            rows = sink_rows(&ws.path("out"));
            if !rows.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(!rows.is_empty(), closes, "{extra}: {rows:?}");
        if closes {
            let expected = batch_query(&bids, ORACLE);
            assert!(rows.iter().all(|r| expected.contains(r)), "{rows:?}");
        }
    }
}

#[test]
fn a_broker_that_goes_away_mid_run_is_waited_for_exactly_once() {
    let proxy_port = free_port();
    let Some(broker) = Broker::private_advertising(Some(proxy_port)) else {
        return;
    };
    let mut proxy = Proxy::on(proxy_port, &broker.addr);
    let via = format!("127.0.0.1:{proxy_port}");
    // The test's own client talks to the broker directly, but the broker
    // advertises the proxy: produce through a client of the proxy.
    let producer = Broker::external(&via);
    let bids = gen_bids(11, 6_000, BASE_MS, 1500);
    producer.create_topic("flaky", 2);
    produce_bids(&producer, "flaky", 2, &bids[..3_000]);
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&via, "flaky", ", 'max_rows_per_batch' = '500'"),
    );
    let mut child = run_in_background(&ws);
    let wait_for_rows = |n: u64| wait_for_rows(&ws, n);
    wait_for_rows(1_000);
    proxy.take_down();
    assert!(std::net::TcpStream::connect(&via).is_err(), "the proxy is down");
    // Longer than the client's own retries: Weir's take over, and say so.
    std::thread::sleep(Duration::from_secs(9));
    proxy.bring_up();
    wait_for_rows(3_000);
    produce_bids(&producer, "flaky", 2, &bids[3_000..]);
    wait_for_rows(6_000);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    // Once: said as it happens, not again among the epoch's warnings.
    assert_eq!(stderr.matches("reachable again").count(), 1, "{stderr}");
    // Every bid once: drain what is left and compare with the batch answer.
    ws.weir(&DRAIN).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    assert_eq!(sum_field(&progress(&ws.path("p.json")), "rows_in"), 6_000);
}

/// A JSON object's values in its key order, as `a|b|c` (strings unquoted).
fn json_row(value: &str, columns: &[&str]) -> String {
    let v: serde_json::Value = serde_json::from_str(value).unwrap();
    columns
        .iter()
        .map(|c| match &v[*c] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// The records with repeats dropped by their `weir.epoch` and `weir.seq`
/// headers (checking that repeats are the same record), in output order.
fn without_repeats(records: Vec<Consumed>) -> Vec<Consumed> {
    let mut by_position: BTreeMap<(u64, u64), Consumed> = BTreeMap::new();
    for r in records {
        match by_position.get(&r.position()) {
            Some(first) => assert_eq!(
                (&first.key, &first.value, first.partition),
                (&r.key, &r.value, r.partition),
                "a repeat differs"
            ),
            None => {
                by_position.insert(r.position(), r);
            }
        }
    }
    let out: Vec<Consumed> = by_position.into_values().collect();
    // Every epoch's positions run 0, 1, ... without a gap.
    let mut expected_seq: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &out {
        let (e, s) = r.position();
        let next = expected_seq.entry(e).or_insert(0);
        assert_eq!(s, *next, "epoch {e} lacks a record before seq {s}");
        *next += 1;
    }
    out
}

#[test]
fn a_kafka_sink_gets_every_row_with_headers_that_drop_the_repeats() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("windows-out", 3);
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
               WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
               WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'max_rows_per_batch' = '250');
             CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'windows-out',
               'properties.bootstrap.servers' = '{}', 'format' = 'json');
             INSERT INTO out
             SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m
             FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, auction;",
            broker.addr
        ),
    );
    // Killed after a commit and before its publish, while publishing (the
    // records produced, not yet noted), and before a commit: each restart
    // publishes the last committed epoch again.
    for failpoint in ["committed@3", "mid-publish@5", "sink-staged@7"] {
        ws.weir_env(&DRAIN, &[("WEIR_FAILPOINT", failpoint)]).killed();
    }
    ws.weir(&DRAIN).ok();
    let records = broker.read_all("windows-out");
    let unique = without_repeats(records.clone());
    assert!(
        records.len() > unique.len(),
        "a restart repeated records ({} records)",
        records.len()
    );
    let mut got: Vec<String> = unique
        .iter()
        .map(|r| {
            json_row(
                r.value.as_deref().unwrap(),
                &["window_start", "window_end", "auction", "n", "s", "m"],
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, batch_query(&bids, ORACLE));
    // Unkeyed records go round robin over the partitions.
    let partitions: std::collections::BTreeSet<i32> = unique.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 3);
}

#[test]
fn changelog_and_upsert_kafka_sinks_rebuild_the_table() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("counts-changelog", 2);
    broker.create_topic("counts-upsert", 2);
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
               WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'max_rows_per_batch' = '400');
             CREATE TABLE changes WITH ('connector' = 'kafka', 'topic' = 'counts-changelog',
               'properties.bootstrap.servers' = '{b}', 'format' = 'json', 'mode' = 'changelog');
             CREATE TABLE latest WITH ('connector' = 'kafka', 'topic' = 'counts-upsert',
               'properties.bootstrap.servers' = '{b}', 'format' = 'json', 'mode' = 'upsert', 'key.fields' = 'auction');
             INSERT INTO changes SELECT auction, COUNT(*) AS n, MAX(price) AS m FROM bids GROUP BY auction;
             INSERT INTO latest SELECT auction, COUNT(*) AS n, MAX(price) AS m FROM bids GROUP BY auction;",
            b = broker.addr
        ),
    );
    ws.weir_env(&DRAIN, &[("WEIR_FAILPOINT", "committed@4")]).killed();
    ws.weir(&DRAIN).ok();
    let expected = batch_query(
        &bids,
        "SELECT auction, COUNT(*), MAX(price) FROM bids GROUP BY auction",
    );
    // The changelog applied in order (by epoch and seq, across partitions).
    let mut table: Vec<String> = Vec::new();
    for r in without_repeats(broker.read_all("counts-changelog")) {
        let value = r.value.unwrap();
        let op = json_row(&value, &["op"]);
        let row = json_row(&value, &["auction", "n", "m"]);
        match op.as_str() {
            "+I" | "+U" => table.push(row),
            "-U" | "-D" => {
                let at = table
                    .iter()
                    .position(|t| *t == row)
                    .expect("a retraction of a row shown");
                table.remove(at);
            }
            other => panic!("op {other}"),
        }
    }
    table.sort();
    assert_eq!(table, expected);
    // The upsert topic: the last record of each key (a tombstone deletes),
    // keys on one partition each, as a compacted topic keeps them.
    let mut latest: BTreeMap<String, (i32, Option<String>)> = BTreeMap::new();
    for r in without_repeats(broker.read_all("counts-upsert")) {
        let key = r.key.clone().expect("a keyed record");
        if let Some((p, _)) = latest.get(&key) {
            assert_eq!(*p, r.partition, "one key, one partition");
        }
        latest.insert(key, (r.partition, r.value));
    }
    let mut rows: Vec<String> = latest
        .into_values()
        .filter_map(|(_, v)| v)
        .map(|v| json_row(&v, &["auction", "n", "m"]))
        .collect();
    rows.sort();
    assert_eq!(rows, expected);
}

#[test]
fn a_partition_that_no_longer_has_what_was_read_is_an_error_or_read_from_its_start() {
    let Some(broker) = Broker::any() else { return };
    broker.create_topic("remade", 1);
    let bids = gen_bids(21, 300, BASE_MS, 0);
    produce_bids(&broker, "remade", 1, &bids[..200]);
    let ws = Workspace::new();
    ws.write("job.sql", &kafka_job(&broker.addr, "remade", ""));
    let run = ["run", "job.sql", "--trigger", "available-now"];
    ws.weir(&run).ok();
    // The topic is deleted and made again, with fewer records than were read.
    broker.delete_topic("remade");
    broker.create_topic("remade", 1);
    produce_bids(&broker, "remade", 1, &bids[200..]);
    let e = ws.weir(&run).fails().stderr();
    assert!(
        e.contains("topic 'remade' partition 0: the partition now ends at offset 100, before offset 200"),
        "{e}"
    );
    // With 'skip', it is read from its start, with a warning.
    ws.write(
        "job.sql",
        &kafka_job(&broker.addr, "remade", ", 'scan.offset-out-of-range' = 'skip'"),
    );
    let out = ws.weir(&DRAIN).ok();
    assert!(
        out.stderr().contains("reading it from its start (0)"),
        "{}",
        out.stderr()
    );
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

#[test]
fn a_broker_restarted_mid_run_is_waited_for_and_the_job_goes_on_exactly_once() {
    let Some(mut broker) = Broker::private_on_s3() else {
        return;
    };
    let bids = gen_bids(13, 4_000, BASE_MS, 1500);
    broker.create_topic("restarted", 2);
    produce_bids(&broker, "restarted", 2, &bids[..2_000]);
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&broker.addr, "restarted", ", 'max_rows_per_batch' = '400'"),
    );
    let mut child = run_in_background(&ws);
    let wait_for_rows = |n: u64| wait_for_rows(&ws, n);
    wait_for_rows(400);
    broker.stop();
    std::thread::sleep(Duration::from_secs(8));
    broker.start();
    wait_for_rows(2_000);
    produce_bids(&broker, "restarted", 2, &bids[2_000..]);
    wait_for_rows(4_000);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    ws.weir(&DRAIN).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    assert_eq!(sum_field(&progress(&ws.path("p.json")), "rows_in"), 4_000);
}

#[test]
fn partitions_added_while_a_job_runs_are_found_and_read_from_their_start() {
    // The gate shows two of the topic's four partitions, then all four: to
    // the job, the topic grows (tansu cannot add partitions to a topic).
    let gate_port = free_port();
    let Some(broker) = Broker::private_advertising(Some(gate_port)) else {
        return;
    };
    let gate = PartitionGate::on(gate_port, &broker.addr);
    let via = format!("127.0.0.1:{gate_port}");
    let producer = Broker::external(&via);
    producer.create_topic("grows", 4);
    gate.show("grows", 2);
    let bids = gen_bids(19, 6_000, BASE_MS, 1500);
    produce_bids(&producer, "grows", 2, &bids[..3_000]);
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(
            &via,
            "grows",
            ", 'max_rows_per_batch' = '500', 'scan.topic-partition-discovery.interval' = '1s'",
        ),
    );
    let mut child = run_in_background(&ws);
    wait_for_rows(&ws, 3_000);
    gate.show("grows", 4);
    // Records arrive in the new partitions (and the old ones) only now.
    produce_bids(&producer, "grows", 4, &bids[3_000..]);
    wait_for_rows(&ws, 6_000);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("new partition(s) grows/2, grows/3; reading them from their start"),
        "{stderr}"
    );
    ws.weir(&DRAIN).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    assert_eq!(sum_field(&progress(&ws.path("p.json")), "rows_in"), 6_000);
}

#[test]
fn tls_trusts_the_given_ca_and_refuses_a_broker_it_cannot_trust() {
    let port = free_port();
    let Some(mut broker) = Broker::private_advertising(Some(port)) else {
        return;
    };
    broker.tls_front(port);
    let bids = gen_bids(17, 2_000, BASE_MS, 1500);
    broker.create_topic("secure", 2);
    produce_bids(&broker, "secure", 2, &bids);
    let ca = tls_fixtures().join("ca.pem");
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(
            &broker.addr,
            "secure",
            &format!(
                ", 'properties.security.protocol' = 'SSL', 'properties.ssl.ca.location' = '{}'",
                ca.display()
            ),
        ),
    );
    ws.weir(&DRAIN).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    // A Kafka sink over TLS too: every bid, copied from topic to topic.
    broker.create_topic("secure-out", 1);
    let tls = format!(
        "'properties.bootstrap.servers' = '{}', 'format' = 'json', \
         'properties.security.protocol' = 'SSL', 'properties.ssl.ca.location' = '{}'",
        broker.addr,
        ca.display()
    );
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
               WITH ('connector' = 'kafka', 'topic' = 'secure', {tls});
             CREATE TABLE copy WITH ('connector' = 'kafka', 'topic' = 'secure-out', {tls});
             INSERT INTO copy SELECT auction, price FROM bids;"
        ),
    );
    ws.weir(&DRAIN).ok();
    let mut copied: Vec<String> = broker
        .read_all("secure-out")
        .iter()
        .map(|r| json_row(r.value.as_deref().unwrap(), &["auction", "price"]))
        .collect();
    let mut expected: Vec<String> = bids
        .iter()
        .map(|b| format!("{}|{}", b.auction, b.price))
        .collect();
    copied.sort();
    expected.sort();
    assert_eq!(copied, expected);
    // Without the CA, the system's roots do not vouch for the broker.
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&broker.addr, "secure", ", 'properties.security.protocol' = 'SSL'"),
    );
    // That is a setting to fix, said at once, not an outage to wait out.
    let started = Instant::now();
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(
        e.contains("TLS refused the broker's certificate (give the CA that signed it in 'properties.ssl.ca.location')"),
        "{e}"
    );
    assert!(!e.contains("unreachable"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(60), "{e}");
    // The same for a sink (the source trusts the broker, the sink does not).
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
               WITH ('connector' = 'kafka', 'topic' = 'secure', {tls});
             CREATE TABLE copy WITH ('connector' = 'kafka', 'topic' = 'secure-out',
               'properties.bootstrap.servers' = '{}', 'format' = 'json',
               'properties.security.protocol' = 'SSL');
             INSERT INTO copy SELECT auction, price FROM bids;",
            broker.addr
        ),
    );
    let started = Instant::now();
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(
        e.contains("sink table 'copy'") && e.contains("TLS refused the broker's certificate"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(60), "{e}");
}

/// A broker behind a [`PartitionGate`], a producer through it, and a
/// one-partition topic of 600 JSON bids in record batches of 100.
fn gated_topic(topic: &str, seed: u64) -> Option<(Broker, PartitionGate, String, Vec<Bid>)> {
    let gate_port = free_port();
    let broker = Broker::private_advertising(Some(gate_port))?;
    let gate = PartitionGate::on(gate_port, &broker.addr);
    let via = format!("127.0.0.1:{gate_port}");
    let producer = Broker::external(&via);
    producer.create_topic(topic, 1);
    let bids = gen_bids(seed, 600, BASE_MS, 0);
    let records: Vec<_> = bids
        .iter()
        .map(|b| {
            let json = format!(
                "{{\"auction\": {}, \"price\": {}, \"date_time\": \"{}\"}}",
                b.auction,
                b.price,
                iso(b.ts)
            );
            record(&json, b.ts)
        })
        .collect();
    producer.produce_in(topic, 0, records, 100);
    Some((broker, gate, via, bids))
}

#[test]
fn records_retention_deleted_before_they_were_read_are_an_error_or_skipped_and_counted() {
    let Some((_broker, gate, via, bids)) = gated_topic("retained", 23) else {
        return;
    };
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&via, "retained", ", 'max_rows_per_batch' = '200'"),
    );
    // One epoch reads offsets 0..200; then retention deletes 0..400.
    ws.weir(&["run", "job.sql", "--trigger", "once"]).ok();
    gate.delete_before("retained", 0, 400);
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(
        e.contains(
            "topic 'retained' partition 0: offsets 200..400 are no longer on the broker (retention deleted them \
             before they were read; the partition now starts at 400)"
        ),
        "{e}"
    );
    // Nothing was committed by the failed run: with 'skip' the job goes on
    // from 400, says what it skipped, and has every other bid once.
    skip_and_check(&ws, &via, "retained", &bids, 200..400);
}

#[test]
fn a_logged_epoch_whose_records_retention_deleted_is_an_error_or_replayed_without_them() {
    let Some((_broker, gate, via, bids)) = gated_topic("replayed", 29) else {
        return;
    };
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&via, "replayed", ", 'max_rows_per_batch' = '200'"),
    );
    // Epoch 1 (0..200) commits; epoch 2 (200..400) is logged, then the
    // process dies; retention then deletes 0..300.
    ws.weir(&["run", "job.sql", "--trigger", "once"]).ok();
    ws.weir_env(
        &["run", "job.sql", "--trigger", "once"],
        &[("WEIR_FAILPOINT", "offsets-written@2")],
    )
    .killed();
    gate.delete_before("replayed", 0, 300);
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(
        e.contains(
            "topic 'replayed' partition 0: offsets 200..300 are no longer on the broker (retention deleted them; \
             the partition now starts at 300), so this epoch cannot read them"
        ),
        "{e}"
    );
    // With 'skip', the replayed epoch reads what is left of its range.
    skip_and_check(&ws, &via, "replayed", &bids, 200..300);
}

/// Runs the job again with `'scan.offset-out-of-range' = 'skip'`: it must
/// say it skipped the `lost` offsets, and give the batch answer over every
/// other bid (bid `i` is offset `i`).
fn skip_and_check(ws: &Workspace, via: &str, topic: &str, bids: &[Bid], lost: std::ops::Range<usize>) {
    ws.write(
        "job.sql",
        &kafka_job(
            via,
            topic,
            ", 'max_rows_per_batch' = '200', 'scan.offset-out-of-range' = 'skip'",
        ),
    );
    let out = ws.weir(&DRAIN).ok();
    let said = format!("skipped {} records that retention deleted", lost.len());
    assert!(out.stderr().contains(&said), "{}", out.stderr());
    let kept: Vec<Bid> = bids[..lost.start]
        .iter()
        .chain(&bids[lost.end..])
        .cloned()
        .collect();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&kept, ORACLE));
}

#[test]
fn a_scram_login_reads_the_topic_and_a_wrong_password_is_refused() {
    const SECRET: &str = "scram-Pa55-word-SECRET";
    let Some(broker) = Broker::with_user("alice", SECRET) else {
        return;
    };
    let bids = gen_bids(31, 1_000, BASE_MS, 1500);
    broker.create_topic("private", 2);
    produce_bids(&broker, "private", 2, &bids);
    let login = |password: &str| {
        format!(
            ", 'properties.security.protocol' = 'SASL_PLAINTEXT', \
             'properties.sasl.mechanism' = 'SCRAM-SHA-256', \
             'properties.sasl.username' = 'alice', 'properties.sasl.password' = '{password}'"
        )
    };
    let ws = Workspace::new();
    ws.write("job.sql", &kafka_job(&broker.addr, "private", &login(SECRET)));
    let run = ws.weir(&DRAIN).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    let all = format!("{}{}", run.stdout(), run.stderr());
    assert!(!all.contains(SECRET), "{all}");
    // The wrong password: refused at once, and said so.
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&broker.addr, "private", &login("not-the-password")),
    );
    let e = ws.weir(&DRAIN).fails().stderr();
    assert!(e.contains("refused the credentials ('properties.sasl.*')"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");
}

/// Brokers out of reach fail a `--trigger once` run (at once) as they fail
/// an available-now run (after 'scan.retry.timeout'): it used to plan an
/// epoch that found nothing, and end "done: 0 epoch(s)" with status 0,
/// which a script cannot tell from no input. No broker needed.
#[test]
fn brokers_out_of_reach_fail_a_once_run_as_an_available_now_run() {
    let port = free_port();
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &kafka_job(&format!("127.0.0.1:{port}"), "t", ", 'scan.retry.timeout' = '2s'"),
    );
    for trigger in ["once", "available-now"] {
        let e = ws
            .weir(&["run", "job.sql", "--trigger", trigger])
            .fails()
            .stderr();
        assert!(
            e.contains(&format!("Kafka broker(s) 127.0.0.1:{port} unreachable for")),
            "{trigger}: {e}"
        );
    }
}
