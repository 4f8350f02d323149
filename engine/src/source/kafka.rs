//! `'connector' = 'kafka'`: one or more Kafka topics, read by ranges of
//! partition offsets, with Flink's option names.
//!
//! The checkpoint, not a consumer group, is the source of truth for what
//! was read (as in Spark's Kafka source): each epoch's offsets entry names,
//! for every partition, the exact range of offsets the epoch reads, and a
//! replayed epoch reads that range again, so it sees the same records.
//!
//! Offset of a batch (in `offsets/N.json`):
//! `{"ranges": [{"topic": "bids", "partition": 0, "start": 120, "end": 480,
//!   "fetch_from": 100, "resume_from": 400}, ...], "idle": [{"topic": "bids", "partition": 3}]}`:
//! read the records of each partition with offsets in `[start, end)`,
//! fetching from `fetch_from` (default `start`); `resume_from` is where the
//! next range fetches from (default `end`). Every
//! partition the source knows is listed (an empty range when it has nothing
//! new), so the position of each is recorded even before it has records.
//! `idle` lists the partitions that had no record for
//! `'scan.watermark.idle-timeout'` when the batch was planned: they do not
//! hold the watermark back (decided at planning, so a replay computes the
//! same watermark).
//!
//! Progress (state `source-<table>`): one row per partition:
//! `partition_key` (`topic/partition`), `topic`, `partition`, `next_offset`
//! (the first offset not read yet), `max_time_ms` (the greatest event time
//! read from it, for the watermark), `fetch_from` (where to fetch from to
//! read `next_offset`, when a batch ended inside a record batch: that
//! batch's first offset; see [`scan`]).
//!
//! Watermarks are per partition, as in Flink: the source's event-time
//! frontier is the least, over its partitions that are not idle, of the
//! greatest event time read from each; the driver subtracts the declared
//! delay. A partition that never had a record holds the watermark back
//! until it is idle.
//!
//! The client is `rskafka` (pure Rust, no librdkafka): it reads a partition
//! from an offset, which is all an exactly-once source needs, and builds from
//! the registries alone. It has no consumer groups and no transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Array, Int64Array, RecordBatch, RecordBatchOptions,
    StringArray, StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, sort_to_indices, take, take_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use futures::future::{join_all, try_join_all};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::RecordAndOffset;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_sql::TableDecl;

use super::bad::{BadRecord, KAFKA_PREFIX, OnError, record_text};
use super::formats::{Columns, Format, read_json_values, read_text};
use super::{Amount, Backlog, Notice, Source, SourceBatch, check_options};
use crate::{Error, Result};

/// The options that say how to reach the brokers (a source's and a
/// sink's).
pub(crate) const CONNECTION_OPTIONS: &[&str] = &[
    "properties.bootstrap.servers",
    "properties.client.id",
    "properties.security.protocol",
    "properties.sasl.mechanism",
    "properties.sasl.jaas.config",
    "properties.sasl.username",
    "properties.sasl.password",
    "properties.ssl.ca.location",
];

/// Options this connector knows (besides [`CONNECTION_OPTIONS`] and
/// [`super::SOURCE_OPTIONS`]).
const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "format",
    "csv.field-delimiter",
    "scan.startup.mode",
    "scan.startup.timestamp-millis",
    "scan.startup.specific-offsets",
    "scan.watermark.idle-timeout",
    "scan.topic-partition-discovery.interval",
    "scan.offset-out-of-range",
    "scan.records-per-second",
    "scan.retry.timeout",
    "max_rows_per_batch",
];

/// Default cap on records per batch.
pub const DEFAULT_MAX_ROWS: usize = 1_000_000;
/// Bytes asked for per fetch request.
const FETCH_BYTES: i32 = 16 << 20;
/// How long a fetch waits on the broker for records (they are known to be
/// there: a range ends at most at the high watermark seen when planning).
const FETCH_WAIT_MS: i32 = 500;
/// How long one request keeps retrying inside the client before Weir's own
/// retry (which reports the outage) takes over. Shorter than
/// [`UNREACHABLE_NOTICE`]: the client retries a certificate TLS refuses as
/// it retries an outage, and the refusal it gives up with must come before
/// the outage notice. With both at 5 s they raced, and a loaded machine
/// printed "unreachable" before the certificate error.
const CLIENT_DEADLINE: Duration = Duration::from_secs(4);
/// How long a call waits on the brokers before the user is told they are
/// unreachable (then every 30 s).
const UNREACHABLE_NOTICE: Duration = Duration::from_secs(5);

/// A topic's partition.
type Tp = (String, i32);

/// A range's records, and how many offsets before them retention had
/// deleted (skipped under `'scan.offset-out-of-range' = 'skip'`).
type RangeRecords = (Vec<RecordAndOffset>, u64);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Range {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
    /// Where to fetch from to read `start` (a record batch's first offset,
    /// at or before it), when not `start` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fetch_from: Option<i64>,
    /// Where to fetch from to read `end` (the next range's `fetch_from`),
    /// when not `end` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume_from: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct TpRef {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct KafkaOffset {
    ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    idle: Vec<TpRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartProgress {
    /// The first offset not read yet.
    next: i64,
    /// Where to fetch from to read `next`, when not `next` itself (see
    /// [`scan`]).
    fetch_from: Option<i64>,
    /// The greatest event time read from the partition (ms).
    max_time_ms: Option<i64>,
}

/// The record format of the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, the declared (non-metadata) columns in
    /// order, no header.
    Csv { delimiter: u8 },
    /// The value whole, as the one non-metadata column (BYTES or VARCHAR).
    Raw,
}

/// A metadata column's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Meta {
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Headers,
}

impl Meta {
    const KEYS: &'static str = "topic, partition, offset, timestamp, key, headers";

    fn parse(key: &str) -> Option<Self> {
        Some(match key {
            "topic" => Meta::Topic,
            "partition" => Meta::Partition,
            "offset" => Meta::Offset,
            "timestamp" => Meta::Timestamp,
            "key" => Meta::Key,
            "headers" => Meta::Headers,
            _ => return None,
        })
    }

    /// Whether a column of this type can hold the metadata.
    fn accepts(self, t: &DataType) -> bool {
        let text = matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        match self {
            Meta::Topic | Meta::Headers => text,
            Meta::Partition => matches!(t, DataType::Int32 | DataType::Int64),
            Meta::Offset => matches!(t, DataType::Int64),
            Meta::Timestamp => matches!(t, DataType::Timestamp(_, _)),
            Meta::Key => text || matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView),
        }
    }

    /// The types [`Self::accepts`], for messages.
    fn types(self) -> &'static str {
        match self {
            Meta::Topic => "VARCHAR",
            Meta::Headers => "VARCHAR: a JSON object of the headers",
            Meta::Partition => "INT or BIGINT",
            Meta::Offset => "BIGINT",
            Meta::Timestamp => "TIMESTAMP(3)",
            Meta::Key => "BYTES or VARCHAR",
        }
    }
}

/// `'scan.startup.mode'`: where a partition is first read from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Startup {
    Earliest,
    Latest,
    Timestamp(i64),
    /// Offsets by partition number (for every topic); others from the
    /// earliest.
    Specific(BTreeMap<i32, i64>),
}

/// What to do when a range's records are gone (retention deleted them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutOfRange {
    Fail,
    Skip,
}

/// How to reach the brokers (the source's and the sink's options).
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) brokers: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) sasl: Option<SaslConfig>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// An outage of the brokers, while it lasts.
struct Outage {
    since: Instant,
    last_notice: Instant,
}

/// A source over Kafka topics.
pub struct KafkaSource {
    table: String,
    topics: Vec<String>,
    schema: SchemaRef,
    /// The declared columns the job reads.
    columns: Vec<usize>,
    payload: Payload,
    /// The declared columns that come from the payload, in order.
    physical: Vec<usize>,
    /// The declared columns that come from the record's metadata.
    metadata: BTreeMap<usize, Meta>,
    /// The declared index of the watermark column.
    watermark_column: Option<usize>,
    connection: Connection,
    client: Option<Arc<Client>>,
    partitions: BTreeMap<Tp, Arc<PartitionClient>>,
    startup: Startup,
    /// Whether progress was restored: partitions without progress are then
    /// new ones, read from their start whatever the startup mode.
    restored: bool,
    /// Whether the partitions were discovered once in this run.
    discovered_once: bool,
    progress: BTreeMap<Tp, PartProgress>,
    /// Partitions whose progress changed since the last checkpoint.
    changed: BTreeSet<Tp>,
    /// Where partitions without progress start (resolved once per run).
    positioned: BTreeMap<Tp, i64>,
    /// Each partition's high watermark when last planned.
    high: BTreeMap<Tp, i64>,
    /// When each partition last had new records (this process's clock).
    last_data: BTreeMap<Tp, Instant>,
    opened: Instant,
    idle_timeout: Option<Duration>,
    discovery_every: Duration,
    last_discovery: Option<Instant>,
    max_rows: usize,
    /// `'scan.records-per-second'`, and when the next batch may start.
    rate: Option<f64>,
    rate_next: Option<Instant>,
    out_of_range: OutOfRange,
    retry_timeout: Duration,
    on_error: OnError,
    /// The partitions idle in the last batch planned.
    idle: BTreeSet<TpRef>,
    /// The batch planning read ahead: its ranges, and each range's records
    /// and how many offsets retention had deleted.
    planned: Option<(Vec<Range>, Vec<RangeRecords>)>,
    /// The high watermarks fixed by `freeze` (available-now).
    frozen: Option<BTreeMap<Tp, i64>>,
    read_records: u64,
    warnings: Vec<String>,
    notice: Option<Notice>,
    outage: Option<Outage>,
}

fn config_err(table: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("table '{table}': {msg}"))
}

/// Whether a client error is the brokers being unreachable (worth waiting
/// out), not an answer.
fn transient(e: &KafkaError) -> bool {
    if auth_failure(e) || untrusted(e) {
        return false;
    }
    match e {
        KafkaError::Connection(c) => !matches!(
            c,
            rskafka::ConnectionError::SaslFailed(_) | rskafka::ConnectionError::SyncVersions(_)
        ),
        KafkaError::Request(_) | KafkaError::RetryFailed(_) | KafkaError::Timeout => true,
        _ => false,
    }
}

/// Whether the brokers refused the credentials (possibly after the client's
/// retries, which wrap the error in their own).
pub(crate) fn auth_failure(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Connection(rskafka::ConnectionError::SaslFailed(_)))
        || e.to_string().contains("Sasl handshake failed")
}

/// Whether TLS failed on the broker's certificate (not trusted, expired,
/// or for another name): a setting to fix, not an outage to wait out.
pub(crate) fn untrusted(e: &KafkaError) -> bool {
    e.to_string().contains("invalid peer certificate")
}

fn is_out_of_range(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        }
    )
}

fn parse_duration(table: &str, key: &str, v: &str) -> Result<Duration> {
    humantime::parse_duration(v.trim())
        .map_err(|e| config_err(table, format!("'{key}' = '{v}': {e} (write e.g. '30s' or '5m')")))
}

/// The credentials of a JAAS line (`... username="u" password="p";`).
fn jaas_credentials(jaas: &str) -> Option<(String, String)> {
    let field = |name: &str| -> Option<String> {
        let at = jaas.find(&format!("{name}="))? + name.len() + 1;
        let rest = jaas[at..].trim_start();
        let quote = rest.chars().next()?;
        if quote == '"' || quote == '\'' {
            let end = rest[1..].find(quote)?;
            Some(rest[1..1 + end].to_string())
        } else {
            Some(
                rest.split(|c: char| c.is_whitespace() || c == ';')
                    .next()?
                    .to_string(),
            )
        }
    };
    Some((field("username")?, field("password")?))
}

pub(crate) fn connection_of(decl: &TableDecl) -> Result<Connection> {
    let table = &decl.name;
    let servers = decl.require("properties.bootstrap.servers")?;
    let brokers: Vec<String> = servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if brokers.is_empty() {
        return Err(config_err(
            table,
            "'properties.bootstrap.servers' names no broker",
        ));
    }
    for b in &brokers {
        if !b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(config_err(
                table,
                format!("'properties.bootstrap.servers': '{b}' is not host:port"),
            ));
        }
    }
    let protocol = decl
        .options
        .get("properties.security.protocol")
        .unwrap_or("PLAINTEXT")
        .to_ascii_uppercase();
    let (sasl_on, tls_on) = match protocol.as_str() {
        "PLAINTEXT" => (false, false),
        "SSL" => (false, true),
        "SASL_PLAINTEXT" => (true, false),
        "SASL_SSL" => (true, true),
        other => {
            return Err(config_err(
                table,
                format!(
                    "'properties.security.protocol' = '{other}' (supported: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
                ),
            ));
        }
    };
    let sasl = if sasl_on {
        let creds = match (
            decl.options.get("properties.sasl.username"),
            decl.options.get("properties.sasl.password"),
            decl.options.get("properties.sasl.jaas.config"),
        ) {
            (Some(u), Some(p), _) => (u.to_string(), p.to_string()),
            (_, _, Some(jaas)) => jaas_credentials(jaas).ok_or_else(|| {
                config_err(
                    table,
                    "'properties.sasl.jaas.config' has no username=\"...\" password=\"...\"",
                )
            })?,
            _ => {
                return Err(config_err(
                    table,
                    format!(
                        "'properties.security.protocol' = '{protocol}' needs credentials: 'properties.sasl.jaas.config', \
                         or 'properties.sasl.username' and 'properties.sasl.password'"
                    ),
                ));
            }
        };
        let creds = Credentials::new(creds.0, creds.1);
        let mechanism = decl
            .options
            .get("properties.sasl.mechanism")
            .unwrap_or("PLAIN")
            .to_ascii_uppercase();
        Some(match mechanism.as_str() {
            "PLAIN" => SaslConfig::Plain(creds),
            "SCRAM-SHA-256" => SaslConfig::ScramSha256(creds),
            "SCRAM-SHA-512" => SaslConfig::ScramSha512(creds),
            other => {
                return Err(config_err(
                    table,
                    format!(
                        "'properties.sasl.mechanism' = '{other}' (supported: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                    ),
                ));
            }
        })
    } else {
        None
    };
    let tls = if tls_on {
        Some(tls_config(table, decl.options.get("properties.ssl.ca.location"))?)
    } else {
        None
    };
    Ok(Connection {
        brokers,
        client_id: decl
            .options
            .get("properties.client.id")
            .unwrap_or("weir")
            .to_string(),
        sasl,
        tls,
    })
}

/// A TLS client configuration trusting the certificates of a PEM file
/// (`'properties.ssl.ca.location'`), or else the system's bundle.
fn tls_config(table: &str, ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    const SYSTEM: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    let path = match ca {
        Some(p) => p.to_string(),
        None => SYSTEM
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| p.to_string())
            .ok_or_else(|| {
                config_err(
                    table,
                    "TLS needs trusted certificates: no system bundle found; give 'properties.ssl.ca.location'",
                )
            })?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| config_err(table, format!("cannot read certificates from '{path}': {e}")))?;
    for c in certs {
        let c = c.map_err(|e| config_err(table, format!("'{path}': {e}")))?;
        roots
            .add(c)
            .map_err(|e| config_err(table, format!("'{path}': {e}")))?;
    }
    if roots.is_empty() {
        return Err(config_err(table, format!("'{path}' holds no certificate")));
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(table, format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn startup_of(decl: &TableDecl) -> Result<Startup> {
    let table = &decl.name;
    let mode = decl
        .options
        .get("scan.startup.mode")
        .unwrap_or("earliest-offset")
        .to_ascii_lowercase();
    Ok(match mode.as_str() {
        "earliest-offset" => Startup::Earliest,
        "latest-offset" => Startup::Latest,
        "timestamp" => {
            let v = decl.options.get("scan.startup.timestamp-millis").ok_or_else(|| {
                config_err(
                    table,
                    "'scan.startup.mode' = 'timestamp' needs 'scan.startup.timestamp-millis'",
                )
            })?;
            Startup::Timestamp(v.trim().parse().map_err(|_| {
                config_err(
                    table,
                    format!("'scan.startup.timestamp-millis' = '{v}' is not a whole number of milliseconds"),
                )
            })?)
        }
        "specific-offsets" => {
            let v = decl.options.get("scan.startup.specific-offsets").ok_or_else(|| {
                config_err(
                    table,
                    "'scan.startup.mode' = 'specific-offsets' needs 'scan.startup.specific-offsets', \
                     e.g. 'partition:0,offset:42;partition:1,offset:300'",
                )
            })?;
            let mut offsets = BTreeMap::new();
            for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let bad = || {
                    config_err(
                        table,
                        format!(
                            "'scan.startup.specific-offsets': '{part}' is not 'partition:<n>,offset:<n>'"
                        ),
                    )
                };
                let (p, o) = part.split_once(',').ok_or_else(bad)?;
                let p = p.trim().strip_prefix("partition:").ok_or_else(bad)?;
                let o = o.trim().strip_prefix("offset:").ok_or_else(bad)?;
                let (p, o) = (
                    p.trim().parse::<i32>().map_err(|_| bad())?,
                    o.trim().parse::<i64>().map_err(|_| bad())?,
                );
                // Offsets and partitions count from 0: Kafka reads a
                // negative offset as out of range (and some brokers answer
                // it with records read twice).
                if p < 0 || o < 0 {
                    return Err(config_err(
                        table,
                        format!(
                            "'scan.startup.specific-offsets': in '{part}', partitions and offsets count from 0"
                        ),
                    ));
                }
                if offsets.insert(p, o).is_some() {
                    return Err(config_err(
                        table,
                        format!("'scan.startup.specific-offsets' names partition {p} twice"),
                    ));
                }
            }
            Startup::Specific(offsets)
        }
        "group-offsets" => {
            return Err(config_err(
                table,
                "'scan.startup.mode' = 'group-offsets' is not supported: Weir keeps its offsets in its \
                 checkpoint, not in a consumer group (use earliest-offset, latest-offset, timestamp or \
                 specific-offsets)",
            ));
        }
        other => {
            return Err(config_err(
                table,
                format!(
                    "unknown 'scan.startup.mode' '{other}' (earliest-offset, latest-offset, timestamp, specific-offsets)"
                ),
            ));
        }
    })
}

fn payload_of(decl: &TableDecl, schema: &Schema, physical: &[usize]) -> Result<Payload> {
    let table = &decl.name;
    let format = decl.require("format")?.to_ascii_lowercase();
    crate::options::refuse_csv_options_unless_csv(decl, &format)?;
    Ok(match format.as_str() {
        "json" => Payload::Json,
        "csv" => {
            let delimiter = match decl.options.get("csv.field-delimiter") {
                None => b',',
                Some(d) if d.len() == 1 => d.as_bytes()[0],
                Some("\\t") | Some("tab") => b'\t',
                Some(d) => {
                    return Err(config_err(
                        table,
                        format!("csv.field-delimiter must be one ASCII character (one byte), not '{d}'"),
                    ));
                }
            };
            Payload::Csv { delimiter }
        }
        "raw" => {
            let [only] = physical else {
                return Err(config_err(
                    table,
                    format!(
                        "'format' = 'raw' reads each record's value as one column, but {} columns are not METADATA",
                        physical.len()
                    ),
                ));
            };
            let f = schema.field(*only);
            if !matches!(
                f.data_type(),
                DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
            ) {
                return Err(config_err(
                    table,
                    format!(
                        "'format' = 'raw': column '{}' must be BYTES or VARCHAR, not {}",
                        f.name(),
                        weir_sql::catalog::sql_type_name(f.data_type())
                    ),
                ));
            }
            Payload::Raw
        }
        other => {
            return Err(config_err(
                table,
                format!("unknown format '{other}' for a Kafka table (supported: json, csv, raw)"),
            ));
        }
    })
}

impl KafkaSource {
    /// The options a Kafka source takes.
    pub fn known_options() -> Vec<&'static str> {
        OPTIONS
            .iter()
            .chain(CONNECTION_OPTIONS)
            .chain(super::SOURCE_OPTIONS)
            .copied()
            .collect()
    }

    /// Opens the source a table declares (connecting happens when it first
    /// plans a batch).
    pub fn open(decl: &TableDecl) -> Result<Self> {
        let table = decl.name.clone();
        let known = Self::known_options();
        check_options(decl, &known)?;
        let schema = decl
            .schema
            .clone()
            .ok_or_else(|| Error::Config(format!("source table '{table}' must declare its columns")))?;
        let topics: Vec<String> = decl
            .require("topic")?
            .split([';', ','])
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if topics.is_empty() {
            return Err(config_err(&table, "'topic' names no topic"));
        }
        if let Some(t) = topics
            .iter()
            .enumerate()
            .find_map(|(i, t)| topics[..i].contains(t).then_some(t))
        {
            return Err(config_err(&table, format!("'topic' names '{t}' twice")));
        }
        let mut metadata = BTreeMap::new();
        for (column, key) in &decl.metadata {
            let idx = schema
                .index_of(column)
                .map_err(|_| config_err(&table, format!("METADATA column '{column}' is not declared")))?;
            let meta = Meta::parse(&key.to_ascii_lowercase()).ok_or_else(|| {
                config_err(
                    &table,
                    format!(
                        "column '{column}': unknown metadata key '{key}' (Kafka has: {})",
                        Meta::KEYS
                    ),
                )
            })?;
            let declared = schema.field(idx).data_type();
            if !meta.accepts(declared) {
                return Err(config_err(
                    &table,
                    format!(
                        "column '{column}': metadata '{key}' cannot be {} (declare it {})",
                        weir_sql::catalog::sql_type_name(declared),
                        meta.types()
                    ),
                ));
            }
            metadata.insert(idx, meta);
        }
        let physical: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !metadata.contains_key(i))
            .collect();
        let payload = payload_of(decl, &schema, &physical)?;
        let watermark_column = match &decl.watermark {
            Some(w) => Some(schema.index_of(&w.column)?),
            None => None,
        };
        let max_rows = match decl.options.get("max_rows_per_batch") {
            None => DEFAULT_MAX_ROWS,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(config_err(
                        &table,
                        format!("option 'max_rows_per_batch' must be a positive whole number, not '{v}'"),
                    ));
                }
            },
        };
        let rate = match decl.options.get("scan.records-per-second") {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if r > 0.0 && r.is_finite() => Some(r),
                _ => {
                    return Err(config_err(
                        &table,
                        format!("option 'scan.records-per-second' must be a positive number, not '{v}'"),
                    ));
                }
            },
        };
        let out_of_range = match decl
            .options
            .get("scan.offset-out-of-range")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("fail") => OutOfRange::Fail,
            Some("skip") => OutOfRange::Skip,
            Some(other) => {
                return Err(config_err(
                    &table,
                    format!("'scan.offset-out-of-range' = '{other}' (fail or skip)"),
                ));
            }
        };
        let duration = |key: &str, default: Duration| -> Result<Duration> {
            match decl.options.get(key) {
                None => Ok(default),
                Some(v) => parse_duration(&table, key, v),
            }
        };
        let idle_timeout = match decl.options.get("scan.watermark.idle-timeout") {
            None => None,
            Some(v) => Some(parse_duration(&table, "scan.watermark.idle-timeout", v)?),
        };
        Ok(Self {
            topics,
            columns: (0..schema.fields().len()).collect(),
            payload,
            physical,
            metadata,
            watermark_column,
            connection: connection_of(decl)?,
            client: None,
            partitions: BTreeMap::new(),
            startup: startup_of(decl)?,
            restored: false,
            discovered_once: false,
            progress: BTreeMap::new(),
            changed: BTreeSet::new(),
            positioned: BTreeMap::new(),
            high: BTreeMap::new(),
            last_data: BTreeMap::new(),
            opened: Instant::now(),
            idle_timeout,
            discovery_every: duration("scan.topic-partition-discovery.interval", Duration::from_secs(5))?,
            last_discovery: None,
            max_rows,
            rate,
            rate_next: None,
            out_of_range,
            retry_timeout: duration("scan.retry.timeout", Duration::from_secs(300))?,
            on_error: OnError::from_decl(decl)?,
            idle: BTreeSet::new(),
            planned: None,
            frozen: None,
            read_records: 0,
            warnings: Vec::new(),
            notice: None,
            outage: None,
            schema,
            table,
        })
    }

    fn brokers(&self) -> String {
        self.connection.brokers.join(",")
    }

    fn notify(&self, msg: &str) {
        match &self.notice {
            Some(n) => n(msg),
            None => tracing::warn!("{msg}"),
        }
    }

    /// Notes that the brokers could not be reached (a notice now and then
    /// while it lasts).
    fn broker_down(&mut self, e: &KafkaError) {
        let now = Instant::now();
        let (since, say) = match &self.outage {
            None => (now, true),
            Some(o) => (
                o.since,
                now.duration_since(o.last_notice) >= Duration::from_secs(30),
            ),
        };
        if say {
            self.notify(&format!(
                "source '{}': Kafka broker(s) {} unreachable for {} s ({e}); retrying",
                self.table,
                self.brokers(),
                now.duration_since(since).as_secs()
            ));
        }
        self.outage = Some(Outage {
            since,
            last_notice: if say {
                now
            } else {
                self.outage.as_ref().map_or(now, |o| o.last_notice)
            },
        });
    }

    /// Who to tell, and what to call the brokers, while a call waits on
    /// them (see [`watched`]).
    fn watch_target(&self) -> (Option<Notice>, String) {
        (
            self.notice.clone(),
            format!("source '{}': Kafka broker(s) {}", self.table, self.brokers()),
        )
    }

    /// After a call that [`watched`] said was waiting: that it answered.
    fn answered(&mut self, waited: Option<Duration>) {
        if let Some(w) = waited
            && self.outage.is_none()
        {
            let msg = format!(
                "source '{}': Kafka broker(s) {} reachable again after {} s",
                self.table,
                self.brokers(),
                w.as_secs()
            );
            // Said now, not again among the epoch's warnings: the outage
            // was said as it began, in the same place.
            self.notify(&msg);
        }
    }

    /// Notes that the brokers answered again.
    fn broker_up(&mut self) {
        if let Some(o) = self.outage.take() {
            let msg = format!(
                "source '{}': Kafka broker(s) {} reachable again after {} s",
                self.table,
                self.brokers(),
                o.since.elapsed().as_secs()
            );
            // Said now, not again among the epoch's warnings: the outage
            // was said as it began, in the same place.
            self.notify(&msg);
        }
    }

    async fn client(&mut self) -> std::result::Result<Arc<Client>, KafkaError> {
        if let Some(c) = &self.client {
            return Ok(Arc::clone(c));
        }
        let mut builder = ClientBuilder::new(self.connection.brokers.clone())
            .client_id(self.connection.client_id.clone())
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
                deadline: Some(CLIENT_DEADLINE),
            });
        if let Some(s) = &self.connection.sasl {
            builder = builder.sasl_config(s.clone());
        }
        if let Some(t) = &self.connection.tls {
            builder = builder.tls_config(Arc::clone(t));
        }
        let client = Arc::new(builder.build().await?);
        self.client = Some(Arc::clone(&client));
        Ok(client)
    }

    async fn partition(&mut self, tp: &Tp) -> std::result::Result<Arc<PartitionClient>, KafkaError> {
        if let Some(p) = self.partitions.get(tp) {
            return Ok(Arc::clone(p));
        }
        let client = self.client().await?;
        let p = Arc::new(
            client
                .partition_client(tp.0.clone(), tp.1, UnknownTopicHandling::Error)
                .await?,
        );
        self.partitions.insert(tp.clone(), Arc::clone(&p));
        Ok(p)
    }

    /// The partitions of the source's topics, from the brokers; an error
    /// names a missing topic.
    async fn discover(&mut self) -> Result<std::result::Result<Vec<Tp>, KafkaError>> {
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let listed = match client.list_topics().await {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let mut out = Vec::new();
        for topic in &self.topics {
            let Some(t) = listed.iter().find(|t| &t.name == topic) else {
                let mut names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
                names.sort();
                return Err(Error::Input(format!(
                    "source '{}': topic '{topic}' does not exist on {} (topics there: {})",
                    self.table,
                    self.brokers(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            };
            out.extend(t.partitions.iter().map(|&p| (topic.clone(), p)));
        }
        self.last_discovery = Some(Instant::now());
        Ok(Ok(out))
    }

    /// The partitions known (with progress or a start), in order.
    fn known(&self) -> BTreeSet<Tp> {
        self.progress
            .keys()
            .chain(self.positioned.keys())
            .cloned()
            .collect()
    }

    /// Finds partitions and where new ones start; a client of each known
    /// partition. `Err` of the inner result when the brokers are
    /// unreachable.
    async fn survey(&mut self) -> Result<std::result::Result<Vec<(Tp, Arc<PartitionClient>)>, KafkaError>> {
        let due = self
            .last_discovery
            .is_none_or(|at| at.elapsed() >= self.discovery_every);
        if due && self.frozen.is_none() {
            let found = match self.discover().await? {
                Ok(f) => f,
                Err(e) => return Ok(Err(e)),
            };
            // A start given for a partition no topic has is said once.
            if let Startup::Specific(map) = &self.startup
                && !self.restored
                && !self.discovered_once
            {
                let missing: Vec<String> = map
                    .keys()
                    .filter(|p| !found.iter().any(|tp| tp.1 == **p))
                    .map(i32::to_string)
                    .collect();
                if !missing.is_empty() {
                    self.warnings.push(format!(
                        "source '{}': 'scan.startup.specific-offsets' names partition(s) {} that the topic \
                         does not have (it has {}); they are ignored",
                        self.table,
                        missing.join(", "),
                        found.len()
                    ));
                }
            }
            // Partitions that appeared since this run's first discovery (a
            // topic given more partitions), said once as Flink logs them.
            let mut appeared = Vec::new();
            for tp in found {
                if self.progress.contains_key(&tp) || self.positioned.contains_key(&tp) {
                    continue;
                }
                if self.discovered_once {
                    appeared.push(format!("{}/{}", tp.0, tp.1));
                }
                // The partitions of the first discovery of a job that has
                // read nothing yet start by the startup mode; a partition
                // found later (or a job restored from its checkpoint) is
                // new, and read from its start.
                let at = if self.restored || self.discovered_once {
                    OffsetAt::Earliest
                } else {
                    match &self.startup {
                        Startup::Earliest => OffsetAt::Earliest,
                        Startup::Latest => OffsetAt::Latest,
                        Startup::Timestamp(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                            Some(t) => OffsetAt::Timestamp(t),
                            None => OffsetAt::Latest,
                        },
                        Startup::Specific(map) => match map.get(&tp.1) {
                            Some(&o) => {
                                self.positioned.insert(tp.clone(), o);
                                self.last_data.insert(tp, Instant::now());
                                continue;
                            }
                            None => OffsetAt::Earliest,
                        },
                    }
                };
                let pc = match self.partition(&tp).await {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                let found = match at {
                    OffsetAt::Latest => log_end(&pc).await,
                    at => pc.get_offset(at).await,
                };
                let mut start = match found {
                    Ok(o) => o,
                    Err(e) if transient(&e) => return Ok(Err(e)),
                    Err(e) => return Err(self.kafka_err(&tp, "finding where to start", e)),
                };
                if start < 0 {
                    // No record at or after the timestamp: from the end.
                    start = match log_end(&pc).await {
                        Ok(o) => o,
                        Err(e) if transient(&e) => return Ok(Err(e)),
                        Err(e) => return Err(self.kafka_err(&tp, "finding where to start", e)),
                    };
                }
                self.positioned.insert(tp.clone(), start);
                self.last_data.insert(tp, Instant::now());
            }
            if !appeared.is_empty() {
                self.warnings.push(format!(
                    "source '{}': new partition(s) {}; reading them from their start",
                    self.table,
                    appeared.join(", ")
                ));
            }
            self.discovered_once = true;
        }
        let known: Vec<Tp> = self.known().into_iter().collect();
        let mut clients = Vec::with_capacity(known.len());
        for tp in known {
            match self.partition(&tp).await {
                Ok(p) => clients.push((tp, p)),
                Err(e) if transient(&e) => return Ok(Err(e)),
                Err(e) => return Err(self.kafka_err(&tp, "looking up its leader", e)),
            }
        }
        Ok(Ok(clients))
    }

    /// The error for records retention deleted before they were read.
    fn lost(&self, tp: &Tp, from: i64, low: i64) -> Error {
        if low <= from {
            return Error::Input(format!(
                "source '{}': topic '{}' partition {}: offset {from} is out of range, though the partition \
                 starts at {low}",
                self.table, tp.0, tp.1
            ));
        }
        Error::Input(format!(
            "source '{}': topic '{}' partition {}: offsets {from}..{low} are no longer on the broker \
             (retention deleted them before they were read; the partition now starts at {low}). Set \
             'scan.offset-out-of-range' = 'skip' to skip ahead and count what is skipped",
            self.table, tp.0, tp.1
        ))
    }

    /// An answer of the brokers that waiting will not change.
    fn fatal(&self, e: KafkaError) -> Error {
        if auth_failure(&e) {
            return Error::Input(format!(
                "source '{}': Kafka broker(s) {} refused the credentials ('properties.sasl.*'): {e}",
                self.table,
                self.brokers()
            ));
        }
        if untrusted(&e) {
            return Error::Input(format!(
                "source '{}': Kafka broker(s) {}: TLS refused the broker's certificate (give the CA that signed \
                 it in 'properties.ssl.ca.location'): {e}",
                self.table,
                self.brokers()
            ));
        }
        Error::Input(format!(
            "source '{}': Kafka broker(s) {}: {e}",
            self.table,
            self.brokers()
        ))
    }

    fn kafka_err(&self, tp: &Tp, doing: &str, e: KafkaError) -> Error {
        Error::Input(format!(
            "source '{}': topic '{}' partition {}: {doing}: {e}",
            self.table, tp.0, tp.1
        ))
    }

    /// Where a partition's next range starts.
    fn start_of(&self, tp: &Tp) -> Option<i64> {
        self.progress
            .get(tp)
            .map(|p| p.next)
            .or_else(|| self.positioned.get(tp).copied())
    }

    /// Reads the records of `[start, end)` of a partition. Records that
    /// retention deleted are skipped (and counted) under `skip`, an error
    /// otherwise.
    async fn fetch_range(
        &self,
        pc: Arc<PartitionClient>,
        range: &Range,
    ) -> Result<std::result::Result<RangeRecords, KafkaError>> {
        let mut out = Vec::new();
        let mut at = range.fetch_from.unwrap_or(range.start).min(range.start);
        let mut skipped = 0u64;
        let mut empty = 0;
        let mut stale = 0;
        while at < range.end {
            match pc.fetch_records(at, 1..FETCH_BYTES, FETCH_WAIT_MS).await {
                Ok((records, high)) => {
                    if records.is_empty() {
                        // Nothing at `at`: the rest of the range may be
                        // offsets without records (compacted away, or
                        // transaction markers). A broker answers at once when
                        // it has records, so a few empty answers settle it.
                        empty += 1;
                        if empty >= 3 || high <= at {
                            break;
                        }
                        continue;
                    }
                    let from = at;
                    for r in records {
                        if r.offset >= range.end {
                            at = range.end;
                            break;
                        }
                        // Offsets only go up: a record at or before one
                        // already taken is one a broker sent twice (some
                        // answer with overlapping batches), and is dropped,
                        // as the Java consumer drops it.
                        if r.offset < at {
                            continue;
                        }
                        at = r.offset + 1;
                        if r.offset >= range.start {
                            out.push(r);
                        }
                    }
                    // Only records before `at`, answered again and again:
                    // stop with an error rather than loop, or take the
                    // range short and lose the records after `at` that
                    // planning saw.
                    if at == from {
                        stale += 1;
                        if stale >= 3 {
                            return Err(Error::Input(format!(
                                "source '{}': topic '{}' partition {}: fetching from offset {at}, the broker \
                                 answered {stale} times with earlier records only, so offsets {at}..{} cannot \
                                 be read",
                                self.table, range.topic, range.partition, range.end
                            )));
                        }
                    } else {
                        stale = 0;
                        empty = 0;
                    }
                }
                Err(e) if is_out_of_range(&e) => {
                    let low = match pc.get_offset(OffsetAt::Earliest).await {
                        Ok(l) => l,
                        Err(e) if transient(&e) => return Ok(Err(e)),
                        Err(e) => {
                            return Err(self.kafka_err(
                                &(range.topic.clone(), range.partition),
                                "fetching",
                                e,
                            ));
                        }
                    };
                    if low <= at {
                        return Err(Error::Input(format!(
                            "source '{}': topic '{}' partition {}: offset {at} is out of range, though the \
                             partition starts at {low}",
                            self.table, range.topic, range.partition
                        )));
                    }
                    // The fetch began before the range (at its first record
                    // batch); only what retention took from the range
                    // itself is lost.
                    let from = at.max(range.start);
                    if low <= from {
                        at = low;
                        continue;
                    }
                    let lost_to = low.min(range.end);
                    match self.out_of_range {
                        OutOfRange::Fail => {
                            return Err(Error::Input(format!(
                                "source '{}': topic '{}' partition {}: offsets {from}..{lost_to} are no longer on \
                                 the broker (retention deleted them; the partition now starts at {low}), so \
                                 this epoch cannot read them. Set 'scan.offset-out-of-range' = 'skip' to skip \
                                 ahead and count what is skipped",
                                self.table, range.topic, range.partition
                            )));
                        }
                        OutOfRange::Skip => {
                            skipped += (lost_to - from) as u64;
                            at = lost_to;
                        }
                    }
                }
                Err(e) if transient(&e) => return Ok(Err(e)),
                Err(e) => {
                    return Err(self.kafka_err(&(range.topic.clone(), range.partition), "fetching", e));
                }
            }
        }
        Ok(Ok((out, skipped)))
    }

    /// Turns the records read into rows of the declared schema, the bad
    /// records aside.
    fn decode(
        &self,
        parts: &[(Tp, Vec<RecordAndOffset>)],
        wanted: &[usize],
    ) -> Result<(Option<RecordBatch>, Vec<BadRecord>)> {
        // Every record, in range order: (part index, record).
        let records: Vec<(usize, &RecordAndOffset)> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, (_, recs))| recs.iter().map(move |r| (i, r)))
            .collect();
        let file_of = |i: usize| format!("{KAFKA_PREFIX}{}/{}", parts[i].0.0, parts[i].0.1);
        let mut bad: Vec<(usize, BadRecord)> = Vec::new();
        let payload_schema = Arc::new(self.schema.project(&self.physical)?);
        let all_payload: Vec<usize> = (0..self.physical.len()).collect();
        // The good records (their indices in `records`) and their payload
        // columns, in order.
        // JSON whose every record is a good row decodes straight from the
        // values (the common case); otherwise they are read as one text,
        // which finds the bad records.
        let json_fast = if self.payload == Payload::Json
            && !records.is_empty()
            && records.iter().all(|(_, r)| r.record.value.is_some())
        {
            let columns = Columns {
                declared: &payload_schema,
                needed: &all_payload,
                max_of: None,
            };
            read_json_values(
                &format!("{KAFKA_PREFIX}{}", self.topics.join(",")),
                &self.table,
                records
                    .iter()
                    .map(|(_, r)| r.record.value.as_deref().unwrap_or_default()),
                records.len(),
                &columns,
            )?
        } else {
            None
        };
        // A payload column the job does not read is not assembled (`None`).
        let wanted_physical = |j: usize| wanted.contains(&self.physical[j]);
        let (good, payload): (Vec<usize>, Vec<Option<ArrayRef>>) = match self.payload {
            Payload::Raw => {
                let mut values = BinaryBuilder::new();
                let mut good = Vec::with_capacity(records.len());
                for (k, (_, r)) in records.iter().enumerate() {
                    values.append_option(r.record.value.as_deref());
                    good.push(k);
                }
                let field = payload_schema.field(0);
                let values: ArrayRef = Arc::new(values.finish());
                let col = match field.data_type() {
                    DataType::Binary => values,
                    t => {
                        // Text: a value that is not UTF-8 is a bad record.
                        let bin = values.as_binary::<i32>();
                        let mut keep = Vec::with_capacity(bin.len());
                        let mut text = StringBuilder::new();
                        for (k, &(i, r)) in records.iter().enumerate() {
                            if bin.is_null(k) {
                                text.append_null();
                                keep.push(k);
                                continue;
                            }
                            match std::str::from_utf8(bin.value(k)) {
                                Ok(s) => {
                                    text.append_value(s);
                                    keep.push(k);
                                }
                                Err(e) => {
                                    bad.push((
                                        k,
                                        BadRecord {
                                            file: file_of(i),
                                            line: None,
                                            row: r.offset as u64,
                                            error: format!(
                                                "column '{}': the value is not UTF-8: {e}",
                                                field.name()
                                            ),
                                            record: record_text(&String::from_utf8_lossy(bin.value(k))),
                                        },
                                    ));
                                }
                            }
                        }
                        good.retain(|k| keep.binary_search(k).is_ok());
                        cast(&(Arc::new(text.finish()) as ArrayRef), t)?
                    }
                };
                if !field.is_nullable() && col.null_count() > 0 {
                    // A record without a value, for a NOT NULL column.
                    let mut kept = Vec::with_capacity(good.len());
                    let mut rows = Vec::with_capacity(good.len());
                    for (pos, &k) in good.iter().enumerate() {
                        if col.is_null(pos) {
                            let (i, r) = records[k];
                            bad.push((
                                k,
                                BadRecord {
                                    file: file_of(i),
                                    line: None,
                                    row: r.offset as u64,
                                    error: format!(
                                        "column '{}': the record has no value (NOT NULL)",
                                        field.name()
                                    ),
                                    record: String::new(),
                                },
                            ));
                        } else {
                            kept.push(k);
                            rows.push(pos as u32);
                        }
                    }
                    let col = take(&col, &UInt32Array::from(rows), None)?;
                    (kept, vec![Some(col)])
                } else {
                    (good, vec![Some(col)])
                }
            }
            Payload::Json if json_fast.is_some() => {
                let batches = json_fast.unwrap_or_default();
                let mut columns = Vec::with_capacity(self.physical.len());
                for j in 0..self.physical.len() {
                    columns.push(if wanted_physical(j) {
                        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(j).as_ref()).collect();
                        Some(datafusion::arrow::compute::concat(&parts)?)
                    } else {
                        None
                    });
                }
                ((0..records.len()).collect(), columns)
            }
            Payload::Json | Payload::Csv { .. } => {
                // The values as lines of one text (a CSV one after a header
                // of the declared names), each record on its own line. A
                // record without a value, or (CSV) one spanning lines, is bad
                // here; the reader finds the rest.
                let size: usize = records
                    .iter()
                    .map(|(_, r)| r.record.value.as_ref().map_or(0, Vec::len) + 1)
                    .sum();
                let mut text: Vec<u8> = Vec::with_capacity(size + 4096);
                let (format, first_line) = match self.payload {
                    Payload::Csv { delimiter } => {
                        let mut w = ::csv::WriterBuilder::new()
                            .delimiter(delimiter)
                            .from_writer(Vec::new());
                        w.write_record(payload_schema.fields().iter().map(|f| f.name().as_str()))
                            .map_err(|e| Error::Config(format!("table '{}': {e}", self.table)))?;
                        text = w
                            .into_inner()
                            .map_err(|e| Error::Config(format!("table '{}': {e}", self.table)))?;
                        if !text.ends_with(b"\n") {
                            text.push(b'\n');
                        }
                        (Format::Csv { delimiter }, 2u64)
                    }
                    _ => (Format::Json, 1u64),
                };
                // The record index of each line of the text (from
                // `first_line`).
                let mut line_records: Vec<usize> = Vec::with_capacity(records.len());
                for (k, (i, r)) in records.iter().enumerate() {
                    let value = r.record.value.as_deref().unwrap_or_default();
                    let value = value.strip_suffix(b"\n").unwrap_or(value);
                    let value = value.strip_suffix(b"\r").unwrap_or(value);
                    let problem = if value.iter().all(u8::is_ascii_whitespace) {
                        Some("the record has no value".to_string())
                    } else if format != Format::Json && value.contains(&b'\n') {
                        Some("a CSV record must be one line".to_string())
                    } else {
                        None
                    };
                    if let Some(error) = problem {
                        bad.push((
                            k,
                            BadRecord {
                                file: file_of(*i),
                                line: None,
                                row: r.offset as u64,
                                error,
                                record: record_text(&String::from_utf8_lossy(value)),
                            },
                        ));
                        continue;
                    }
                    let at = text.len();
                    text.extend_from_slice(value);
                    if format == Format::Json && value.iter().any(|&b| b == b'\n' || b == b'\r') {
                        // Raw newlines in JSON are only whitespace between
                        // tokens (a string holds `\n` escaped).
                        for b in &mut text[at..] {
                            if *b == b'\n' || *b == b'\r' {
                                *b = b' ';
                            }
                        }
                    }
                    text.push(b'\n');
                    line_records.push(k);
                }
                let columns = Columns {
                    declared: &payload_schema,
                    needed: &all_payload,
                    max_of: None,
                };
                let url = format!("{KAFKA_PREFIX}{}", self.topics.join(","));
                let rows = read_text(&url, &self.table, format, Bytes::from(text), &columns)?;
                let mut bad_lines = BTreeSet::new();
                for b in rows.bad {
                    let k = b
                        .line
                        .and_then(|l| l.checked_sub(first_line))
                        .and_then(|l| line_records.get(l as usize))
                        .copied()
                        .ok_or_else(|| {
                            Error::Input(format!(
                                "source '{}': internal error: a bad record at an unknown line",
                                self.table
                            ))
                        })?;
                    bad_lines.insert(k);
                    let (i, r) = records[k];
                    bad.push((
                        k,
                        BadRecord {
                            file: file_of(i),
                            line: None,
                            row: r.offset as u64,
                            error: b.error,
                            record: b.record,
                        },
                    ));
                }
                let good: Vec<usize> = line_records
                    .into_iter()
                    .filter(|k| !bad_lines.contains(k))
                    .collect();
                let batch = if rows.batches.is_empty() {
                    RecordBatch::new_empty(Arc::clone(&payload_schema))
                } else {
                    concat_batches(&rows.batches[0].schema(), &rows.batches)?
                };
                if batch.num_rows() != good.len() {
                    return Err(Error::Input(format!(
                        "source '{}': internal error: {} rows from {} good records",
                        self.table,
                        batch.num_rows(),
                        good.len()
                    )));
                }
                (good, batch.columns().iter().cloned().map(Some).collect())
            }
        };
        bad.sort_by_key(|(k, _)| *k);
        let bad: Vec<BadRecord> = bad.into_iter().map(|(_, b)| b).collect();
        if self.on_error == OnError::Fail
            && let Some(first) = bad.first()
        {
            return Err(first.stops(&self.table));
        }
        if good.is_empty() {
            return Ok((None, bad));
        }
        // Every declared column: the payload's, and the metadata built for
        // the good records.
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(wanted.len());
        let mut next_payload = payload.into_iter();
        for (idx, field) in self.schema.fields().iter().enumerate() {
            let from_payload = match self.metadata.get(&idx) {
                None => Some(next_payload.next().flatten()),
                Some(_) => None,
            };
            if !wanted.contains(&idx) {
                continue;
            }
            let col = match self.metadata.get(&idx) {
                None => from_payload.flatten().ok_or_else(|| {
                    Error::Input(format!(
                        "source '{}': internal error: a payload column is missing",
                        self.table
                    ))
                })?,
                Some(meta) => {
                    let built = self.metadata_column(*meta, &good, &records, parts);
                    cast(&built, field.data_type()).map_err(|e| {
                        Error::Input(format!(
                            "source '{}': column '{}' (METADATA {:?}): {e}",
                            self.table,
                            field.name(),
                            meta
                        ))
                    })?
                }
            };
            if !field.is_nullable() && col.null_count() > 0 {
                return Err(Error::Input(format!(
                    "source '{}': column '{}' is NOT NULL, but a record has none",
                    self.table,
                    field.name()
                )));
            }
            columns.push(col);
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(self.schema.project(wanted)?),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(good.len())),
        )?;
        Ok((Some(batch), bad))
    }

    fn metadata_column(
        &self,
        meta: Meta,
        good: &[usize],
        records: &[(usize, &RecordAndOffset)],
        parts: &[(Tp, Vec<RecordAndOffset>)],
    ) -> ArrayRef {
        let recs = good.iter().map(|&k| records[k]);
        match meta {
            Meta::Topic => Arc::new(StringArray::from_iter_values(
                recs.map(|(i, _)| parts[i].0.0.as_str()),
            )),
            Meta::Partition => Arc::new(Int32Array::from_iter_values(recs.map(|(i, _)| parts[i].0.1))),
            Meta::Offset => Arc::new(Int64Array::from_iter_values(recs.map(|(_, r)| r.offset))),
            Meta::Timestamp => Arc::new(TimestampMillisecondArray::from_iter_values(
                recs.map(|(_, r)| r.record.timestamp.timestamp_millis()),
            )),
            Meta::Key => {
                let mut b = BinaryBuilder::new();
                for (_, r) in recs {
                    b.append_option(r.record.key.as_deref());
                }
                Arc::new(b.finish())
            }
            Meta::Headers => {
                let mut b = StringBuilder::new();
                for (_, r) in recs {
                    let map: serde_json::Map<String, Value> = r
                        .record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(String::from_utf8_lossy(v).into_owned())))
                        .collect();
                    b.append_value(Value::Object(map).to_string());
                }
                Arc::new(b.finish())
            }
        }
    }

    fn progress_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("partition_key", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("next_offset", DataType::Int64, false),
            Field::new("max_time_ms", DataType::Int64, true),
            Field::new("fetch_from", DataType::Int64, true),
        ]))
    }

    /// Waits until a batch of `n` records may start under the rate limit.
    async fn pace(&mut self, n: usize) {
        let Some(rate) = self.rate else { return };
        let now = Instant::now();
        let start = self.rate_next.map_or(now, |t| t.max(now));
        if start > now {
            tokio::time::sleep(start - now).await;
        }
        self.rate_next = Some(start + Duration::from_secs_f64(n as f64 / rate));
    }
}

/// Bytes asked for per fetch while planning: a batch reads whole fetch
/// responses, so this bounds how far it may go past its share.
const PLAN_FETCH_BYTES: i32 = 8 << 20;

/// Awaits `fut`, telling `notice` while it takes long: the client retries
/// a broker it cannot reach on its own (for some seconds per call, longer
/// when the calls nest), and a user watching the job must see why it
/// stalls. Returns how long it waited, when it said so.
async fn watched<T>(
    notice: &Option<Notice>,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> (T, Option<Duration>) {
    let started = Instant::now();
    tokio::pin!(fut);
    let mut said = false;
    loop {
        let wait = if said {
            Duration::from_secs(30)
        } else {
            UNREACHABLE_NOTICE
        };
        tokio::select! {
            out = &mut fut => return (out, said.then(|| started.elapsed())),
            _ = tokio::time::sleep(wait) => {
                said = true;
                let msg = format!(
                    "{what} unreachable (no answer for {} s); waiting",
                    started.elapsed().as_secs()
                );
                match notice {
                    Some(n) => n(&msg),
                    None => tracing::warn!("{msg}"),
                }
            }
        }
    }
}

/// The offset after a partition's last record (its high watermark), as a
/// fetch answers it: the broker's answer to a list-offsets request for the
/// latest offset is the same on Kafka, but tansu's is the last record
/// batch's first offset plus one.
async fn log_end(pc: &PartitionClient) -> std::result::Result<i64, KafkaError> {
    let earliest = pc.get_offset(OffsetAt::Earliest).await?;
    let (_, high) = pc.fetch_records(earliest, 1..1024, 0).await?;
    Ok(high)
}

/// What [`scan`] read of a partition.
struct Scanned {
    records: Vec<RecordAndOffset>,
    /// The offset after the last record read.
    end: i64,
    /// Where to fetch from to read `end`.
    resume_from: i64,
    /// The partition's high watermark.
    high: i64,
}

/// Reads up to `budget` records of a partition from `start`, fetching from
/// `fetch_from` (a record batch's first offset, at or before `start`),
/// stopping at `limit` (available-now) or at the end of what there is.
///
/// A range may end inside a record batch (where the budget runs out); the
/// next one then fetches from that batch's first offset and drops the
/// records before its start. Kafka answers a fetch from inside a batch with
/// the whole batch anyway, but some brokers (tansu among them) answer it
/// with the batches after it, which would lose the rest of that one.
async fn scan(
    pc: &PartitionClient,
    start: i64,
    fetch_from: i64,
    limit: Option<i64>,
    budget: usize,
) -> std::result::Result<Scanned, KafkaError> {
    let mut at = fetch_from.min(start);
    let mut out: Vec<RecordAndOffset> = Vec::new();
    let mut end = start;
    let mut resume_from = start;
    let mut high = start;
    // Ask for about as many bytes as the records still wanted take.
    let mut bytes_per_record = 200.0f64;
    while out.len() < budget && limit.is_none_or(|l| end < l) {
        let want = ((budget - out.len()) as f64 * bytes_per_record * 1.1) as i64;
        let max_bytes = want.clamp(1024, PLAN_FETCH_BYTES as i64) as i32;
        let (records, h) = pc.fetch_records(at, 1..max_bytes, 0).await?;
        high = h;
        let Some(last) = records.last() else { break };
        let after = last.offset + 1;
        let bytes: usize = records.iter().map(|r| r.record.approximate_size() + 16).sum();
        bytes_per_record = bytes as f64 / records.len() as f64;
        let mut cut = false;
        for r in records {
            // Before the range, or (from a broker answering with
            // overlapping batches) at or before a record already taken.
            if r.offset < end {
                continue;
            }
            if out.len() >= budget || limit.is_some_and(|l| r.offset >= l) {
                cut = true;
                break;
            }
            end = r.offset + 1;
            out.push(r);
        }
        if cut {
            // The next range starts inside what this fetch returned.
            resume_from = at;
            break;
        }
        at = after;
        end = end.max(after);
        resume_from = end;
        if at >= h {
            break;
        }
    }
    Ok(Scanned {
        records: out,
        end,
        resume_from,
        high,
    })
}

#[async_trait]
impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.table
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn set_columns(&mut self, columns: Vec<usize>) {
        self.columns = columns;
    }

    fn set_notice(&mut self, notice: Notice) {
        self.notice = Some(notice);
    }

    fn knows_max_time(&self, column: &str) -> bool {
        self.watermark_column
            .is_some_and(|c| self.schema.field(c).name() == column)
    }

    async fn freeze(&mut self) -> Result<()> {
        let (notice, what) = self.watch_target();
        let (r, waited) = watched(&notice, &what, self.freeze_inner()).await;
        if r.is_ok() {
            self.answered(waited);
        }
        r
    }

    async fn plan_batch(&mut self) -> Result<Option<Value>> {
        let (notice, what) = self.watch_target();
        let (r, waited) = watched(&notice, &what, self.plan_inner()).await;
        if r.is_ok() {
            self.answered(waited);
        }
        r
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    fn out_of_reach(&self) -> Option<String> {
        self.outage.as_ref().map(|o| {
            format!(
                "source '{}': Kafka broker(s) {} unreachable (for {} s)",
                self.table,
                self.brokers(),
                o.since.elapsed().as_secs()
            )
        })
    }

    fn max_time_rule(&self) -> Option<String> {
        let idle = match self.idle_timeout {
            Some(d) => format!(
                "a partition without records for {} stops holding it back",
                humantime::format_duration(d)
            ),
            None => "an idle partition holds it back ('scan.watermark.idle-timeout' not set)".to_string(),
        };
        Some(format!(
            "max event time = the lowest over the partitions of {} of each one's greatest; {idle}",
            self.topics
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn backlog(&self) -> Option<Backlog> {
        let unread: i64 = self
            .high
            .iter()
            .map(|(tp, &h)| (h - self.start_of(tp).unwrap_or(h)).max(0))
            .sum();
        Some(Backlog {
            unread: Amount {
                events: Some(unread as u64),
                ..Amount::default()
            },
            read: Amount {
                events: Some(self.read_records),
                ..Amount::default()
            },
        })
    }

    fn lag(&self) -> Vec<(String, i64)> {
        self.high
            .iter()
            .map(|(tp, &h)| {
                (
                    format!("{}/{}", tp.0, tp.1),
                    (h - self.start_of(tp).unwrap_or(h)).max(0),
                )
            })
            .collect()
    }

    async fn read_batch(&mut self, offset: &Value) -> Result<SourceBatch> {
        let offset: KafkaOffset = serde_json::from_value(offset.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "source '{}': unreadable offset in the offsets log (was it written by another connector?): {e}",
                self.table
            ))
        })?;
        for r in &offset.ranges {
            if r.end < r.start {
                return Err(Error::Checkpoint(format!(
                    "source '{}': the offsets log names offsets {}..{} of topic '{}' partition {}, which is backwards",
                    self.table, r.start, r.end, r.topic, r.partition
                )));
            }
        }
        let wanted: Vec<&Range> = offset.ranges.iter().filter(|r| r.end > r.start).collect();
        // The records planning read ahead, when this is the batch it
        // planned; else (a replayed epoch) read again.
        let cached = match self.planned.take() {
            Some((ranges, data)) if ranges == offset.ranges => Some(
                ranges
                    .iter()
                    .zip(data)
                    .filter(|(r, _)| r.end > r.start)
                    .map(|(_, d)| d)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        let fetched = match cached {
            Some(c) => c,
            None => {
                let (notice, what) = self.watch_target();
                let (r, waited) = watched(&notice, &what, self.fetch_all(&wanted)).await;
                if r.is_ok() {
                    self.answered(waited);
                }
                r?
            }
        };
        let mut parts = Vec::with_capacity(wanted.len());
        let mut skipped = 0u64;
        let mut tombstones = 0u64;
        for (r, (mut records, s)) in wanted.iter().zip(fetched) {
            skipped += s;
            // A tombstone (a record with no value at all, as an upsert sink
            // or a compacted topic leaves to delete a key) is no row of a
            // JSON or CSV table: skipped, as Flink's `json` and `csv`
            // formats skip it. A raw table keeps it, its value NULL.
            if self.payload != Payload::Raw {
                let before = records.len();
                records.retain(|r| r.record.value.is_some());
                tombstones += (before - records.len()) as u64;
            }
            if s > 0 {
                self.warnings.push(format!(
                    "source '{}': topic '{}' partition {}: skipped {s} records that retention deleted before \
                     they were read ('scan.offset-out-of-range' = 'skip')",
                    self.table, r.topic, r.partition
                ));
            }
            parts.push(((r.topic.clone(), r.partition), records));
        }
        let _ = skipped;
        // The columns the job reads, and the watermark's.
        let mut wanted = self.columns.clone();
        if let Some(wm) = self.watermark_column
            && !wanted.contains(&wm)
        {
            wanted.push(wm);
            wanted.sort_unstable();
        }
        let wm_at = self
            .watermark_column
            .and_then(|wm| wanted.iter().position(|&c| c == wm));
        let read_at: Vec<usize> = self
            .columns
            .iter()
            .filter_map(|c| wanted.iter().position(|w| w == c))
            .collect();
        let (batch, bad) = self.decode(&parts, &wanted)?;
        self.read_records += tombstones + parts.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
        // Each partition's greatest event time, then the frontier.
        if let (Some(batch), Some(wm)) = (&batch, wm_at) {
            let ms = cast(
                batch.column(wm),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )?;
            let ms = ms.as_primitive::<TimestampMillisecondType>();
            let part_col = self.partition_of_rows(&parts, &bad);
            for (row, part) in part_col.iter().enumerate() {
                if ms.is_null(row) || !crate::exec::window_assign::in_event_range(ms.value(row)) {
                    continue;
                }
                let tp = &parts[*part].0;
                let p = self.progress.entry(tp.clone()).or_insert(PartProgress {
                    next: 0,
                    fetch_from: None,
                    max_time_ms: None,
                });
                p.max_time_ms = Some(p.max_time_ms.map_or(ms.value(row), |m| m.max(ms.value(row))));
            }
        }
        for r in &offset.ranges {
            let tp = (r.topic.clone(), r.partition);
            let max_time_ms = self.progress.get(&tp).and_then(|p| p.max_time_ms);
            self.progress.insert(
                tp.clone(),
                PartProgress {
                    next: r.end,
                    // An empty range keeps where to fetch from.
                    fetch_from: if r.end > r.start {
                        r.resume_from
                    } else {
                        r.fetch_from
                    },
                    max_time_ms,
                },
            );
            self.positioned.remove(&tp);
            self.changed.insert(tp);
        }
        let idle: BTreeSet<Tp> = offset
            .idle
            .iter()
            .map(|t| (t.topic.clone(), t.partition))
            .collect();
        let max_time_ms = if self.watermark_column.is_some() {
            let mut frontier: Option<i64> = None;
            let mut held = false;
            for r in &offset.ranges {
                let tp = (r.topic.clone(), r.partition);
                if idle.contains(&tp) {
                    continue;
                }
                match self.progress.get(&tp).and_then(|p| p.max_time_ms) {
                    Some(m) => frontier = Some(frontier.map_or(m, |f| f.min(m))),
                    None => held = true,
                }
            }
            if held { None } else { frontier }
        } else {
            None
        };
        // The epoch's rows in event-time order: its partitions' records
        // come one partition after another, and a row must not be judged
        // late by another partition's later rows of the same epoch (the
        // driver's watermark before a row is the greatest event time before
        // it). So a row is late only when older than the watermark the
        // epoch started with, the least of the partitions' (as in Flink,
        // whose watermark moves between records, not inside a partition's
        // batch). The order is a function of the rows, so a replay sees the
        // same.
        let batches = match (batch, wm_at) {
            (Some(b), Some(wm)) if b.num_rows() > 1 => {
                let order = sort_to_indices(b.column(wm), None, None)?;
                vec![take_record_batch(&b.project(&read_at)?, &order)?]
            }
            (Some(b), _) => vec![b.project(&read_at)?],
            (None, _) => Vec::new(),
        };
        Ok(SourceBatch {
            batches,
            bad,
            max_time_ms,
            time_maxima: None,
        })
    }

    fn progress_schema(&self) -> SchemaRef {
        Self::progress_schema()
    }

    fn checkpoint(&mut self, full: bool) -> Result<Option<crate::exec::StateChange>> {
        if !full && self.changed.is_empty() {
            return Ok(None);
        }
        let entries: Vec<(&Tp, &PartProgress)> = if full {
            self.progress.iter().collect()
        } else {
            self.changed
                .iter()
                .filter_map(|tp| self.progress.get_key_value(tp))
                .collect()
        };
        let keys: StringArray = entries
            .iter()
            .map(|(tp, _)| Some(format!("{}/{}", tp.0, tp.1)))
            .collect();
        let topics: StringArray = entries.iter().map(|(tp, _)| Some(tp.0.as_str())).collect();
        let partitions: Int32Array = entries.iter().map(|(tp, _)| Some(tp.1)).collect();
        let next: Int64Array = entries.iter().map(|(_, p)| Some(p.next)).collect();
        let max: Int64Array = entries.iter().map(|(_, p)| p.max_time_ms).collect();
        let from: Int64Array = entries.iter().map(|(_, p)| p.fetch_from).collect();
        let batch = RecordBatch::try_new(
            Self::progress_schema(),
            vec![
                Arc::new(keys),
                Arc::new(topics),
                Arc::new(partitions),
                Arc::new(next),
                Arc::new(max),
                Arc::new(from),
            ],
        )?;
        self.changed.clear();
        Ok(Some(crate::exec::StateChange {
            upserts: vec![batch],
            deletes: vec![],
        }))
    }

    fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        self.progress.clear();
        for b in batches {
            if b.schema().fields() != Self::progress_schema().fields() {
                return Err(Error::Checkpoint(format!(
                    "source '{}': its progress state is not a Kafka source's (columns {:?}); was it written by \
                     another connector?",
                    self.table,
                    b.schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                )));
            }
            let topics = b.column(1).as_string::<i32>();
            let partitions = b
                .column(2)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
            let next = b.column(3).as_primitive::<Int64Type>();
            let max = b.column(4).as_primitive::<Int64Type>();
            let from = b.column(5).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                self.progress.insert(
                    (topics.value(i).to_string(), partitions.value(i)),
                    PartProgress {
                        next: next.value(i),
                        fetch_from: from.is_valid(i).then(|| from.value(i)),
                        max_time_ms: max.is_valid(i).then(|| max.value(i)),
                    },
                );
            }
        }
        self.restored = !self.progress.is_empty();
        self.positioned.clear();
        self.changed.clear();
        Ok(())
    }
}

impl KafkaSource {
    async fn freeze_inner(&mut self) -> Result<()> {
        // Available-now: the end offsets now are the end of the input. The
        // brokers must answer (waited for, up to 'scan.retry.timeout').
        let started = Instant::now();
        loop {
            let ends = match self.survey().await? {
                Ok(clients) => {
                    let ends = try_join_all(clients.iter().map(|(_, c)| log_end(c))).await;
                    ends.map(|e| {
                        clients
                            .iter()
                            .map(|(tp, _)| tp.clone())
                            .zip(e)
                            .collect::<BTreeMap<Tp, i64>>()
                    })
                }
                Err(e) => Err(e),
            };
            match ends {
                Ok(ends) => {
                    self.broker_up();
                    self.frozen = Some(ends);
                    return Ok(());
                }
                Err(e) if transient(&e) && started.elapsed() < self.retry_timeout => {
                    self.broker_down(&e);
                    self.client = None;
                    self.partitions.clear();
                    self.last_discovery = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) if transient(&e) => {
                    return Err(Error::Input(format!(
                        "source '{}': Kafka broker(s) {} unreachable for {} s: {e}",
                        self.table,
                        self.brokers(),
                        started.elapsed().as_secs()
                    )));
                }
                Err(e) => return Err(self.fatal(e)),
            }
        }
    }

    async fn plan_inner(&mut self) -> Result<Option<Value>> {
        let clients = match self.survey().await? {
            Ok(c) => c,
            Err(e) if !transient(&e) => return Err(self.fatal(e)),
            Err(e) => {
                // Unreachable: no batch now; the trigger asks again.
                self.broker_down(&e);
                self.client = None;
                self.partitions.clear();
                self.last_discovery = None;
                return Ok(None);
            }
        };
        let now = Instant::now();
        let mut budget = self.max_rows;
        if let Some(rate) = self.rate {
            // About a second's worth per batch.
            budget = budget.min(rate.ceil() as usize).max(1);
        }
        let each = budget.div_ceil(clients.len().max(1));
        // Read ahead from each partition's position (the records are kept
        // for `read_batch`): a range ends where a fetch response ends, which
        // is where a record batch of the broker's ends, so the next range
        // starts on a batch's first record (some brokers, tansu among them,
        // answer a fetch from the middle of a batch with the batches after it).
        let scans = join_all(clients.iter().map(|(tp, pc)| {
            let start = self.start_of(tp).unwrap_or(0);
            let fetch_from = self.progress.get(tp).and_then(|p| p.fetch_from).unwrap_or(start);
            let limit = self.frozen.as_ref().map(|f| f.get(tp).copied().unwrap_or(start));
            let pc = Arc::clone(pc);
            async move { (start, fetch_from, scan(&pc, start, fetch_from, limit, each).await) }
        }))
        .await;
        let mut ranges = Vec::with_capacity(clients.len());
        let mut data = Vec::with_capacity(clients.len());
        let mut idle = Vec::new();
        let mut any = false;
        for ((tp, pc), (start, fetch_from, scanned)) in clients.iter().zip(scans) {
            let (mut start, mut fetch_from) = (start, fetch_from);
            // Where the partition's log starts and ends, when the source's
            // position is outside it.
            let frozen_before = self
                .frozen
                .as_ref()
                .and_then(|f| f.get(tp))
                .is_some_and(|&end| end < start);
            let bounds = match &scanned {
                Err(e) if is_out_of_range(e) => true,
                Ok(s) => s.records.is_empty() && (s.high < start || frozen_before),
                Err(_) => false,
            };
            let mut skipped = 0;
            let scanned = if bounds {
                let ends = async {
                    Ok::<_, KafkaError>((pc.get_offset(OffsetAt::Earliest).await?, log_end(pc).await?))
                };
                let (low, high) = match ends.await {
                    Ok(b) => b,
                    Err(e) if transient(&e) => {
                        self.broker_down(&e);
                        return Ok(None);
                    }
                    Err(e) => return Err(self.kafka_err(tp, "finding where it starts and ends", e)),
                };
                if high < start {
                    // The log ends before what the job read: the topic was
                    // deleted and made again, or truncated.
                    if self.out_of_range == OutOfRange::Fail && !self.progress.contains_key(tp) {
                        // Nothing read yet: the start came from the options.
                        return Err(Error::Input(format!(
                            "source '{}': topic '{}' partition {}: 'scan.startup.specific-offsets' starts it at \
                             offset {start}, past its end (offset {high}); give an offset from {low} to {high}",
                            self.table, tp.0, tp.1
                        )));
                    }
                    if self.out_of_range == OutOfRange::Fail {
                        return Err(Error::Input(format!(
                            "source '{}': topic '{}' partition {}: the partition now ends at offset {high}, \
                             before offset {start} that this job has read up to (was the topic deleted and \
                             made again?). Set 'scan.offset-out-of-range' = 'skip' to read it from its start \
                             ({low})",
                            self.table, tp.0, tp.1
                        )));
                    }
                    self.warnings.push(format!(
                        "source '{}': topic '{}' partition {}: the partition now ends at offset {high}, before \
                         offset {start} that this job had read up to; reading it from its start ({low})",
                        self.table, tp.0, tp.1
                    ));
                    start = low;
                } else if low > start {
                    // Retention deleted records this source has not read.
                    if self.out_of_range == OutOfRange::Fail {
                        return Err(self.lost(tp, start, low));
                    }
                    skipped = (low - start) as u64;
                } else {
                    return Err(self.lost(tp, start, low));
                }
                fetch_from = start.max(low);
                scan(pc, start.max(low), fetch_from, None, each).await
            } else {
                scanned
            };
            let scanned = match scanned {
                Ok(scanned) => scanned,
                Err(e) if transient(&e) => {
                    self.broker_down(&e);
                    self.client = None;
                    self.partitions.clear();
                    return Ok(None);
                }
                Err(e) => return Err(self.kafka_err(tp, "fetching", e)),
            };
            let Scanned {
                records,
                end,
                resume_from,
                high,
            } = scanned;
            self.high.insert(tp.clone(), high.max(end));
            if end > start {
                any = true;
                self.last_data.insert(tp.clone(), now);
            } else if let Some(t) = self.idle_timeout {
                let last = self.last_data.get(tp).copied().unwrap_or(self.opened);
                if now.duration_since(last) >= t {
                    idle.push(TpRef {
                        topic: tp.0.clone(),
                        partition: tp.1,
                    });
                }
            }
            ranges.push(Range {
                topic: tp.0.clone(),
                partition: tp.1,
                start,
                end,
                fetch_from: (fetch_from != start).then_some(fetch_from),
                resume_from: (resume_from != end).then_some(resume_from),
            });
            data.push((records, skipped));
        }
        self.broker_up();
        // No records, but partitions turned idle since the last batch: a
        // batch without records lets the watermark move past them.
        let newly_idle = idle.iter().any(|t| !self.idle.contains(t));
        if !(any || newly_idle && self.watermark_column.is_some()) {
            return Ok(None);
        }
        self.idle = idle.iter().cloned().collect();
        self.pace(data.iter().map(|(r, _)| r.len()).sum()).await;
        self.planned = Some((ranges.clone(), data));
        let offset = KafkaOffset { ranges, idle };
        Ok(Some(
            serde_json::to_value(offset).map_err(|e| Error::Checkpoint(e.to_string()))?,
        ))
    }

    /// Reads every range again (a replayed epoch); while the brokers are
    /// unreachable, waits and retries (the epoch is logged: it must read
    /// exactly these ranges), up to 'scan.retry.timeout'.
    async fn fetch_all(&mut self, wanted: &[&Range]) -> Result<Vec<RangeRecords>> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(500);
        let fetched = loop {
            let attempt: Result<std::result::Result<Vec<RangeRecords>, KafkaError>> = async {
                let mut clients = Vec::with_capacity(wanted.len());
                for r in wanted {
                    match self.partition(&(r.topic.clone(), r.partition)).await {
                        Ok(p) => clients.push(p),
                        Err(e) if transient(&e) => return Ok(Err(e)),
                        Err(e) => {
                            return Err(self.kafka_err(
                                &(r.topic.clone(), r.partition),
                                "looking up its leader",
                                e,
                            ));
                        }
                    }
                }
                let reads = join_all(
                    clients
                        .into_iter()
                        .zip(wanted)
                        .map(|(pc, r)| self.fetch_range(pc, r)),
                )
                .await;
                let mut out = Vec::with_capacity(reads.len());
                for r in reads {
                    match r? {
                        Ok(v) => out.push(v),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(out))
            }
            .await;
            match attempt? {
                Ok(v) => break v,
                Err(e) if started.elapsed() < self.retry_timeout => {
                    self.broker_down(&e);
                    self.client = None;
                    self.partitions.clear();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    return Err(Error::Input(format!(
                        "source '{}': Kafka broker(s) {} unreachable for {} s while reading a logged epoch \
                         (it is read again when the job restarts): {e}",
                        self.table,
                        self.brokers(),
                        started.elapsed().as_secs()
                    )));
                }
            }
        };
        self.broker_up();
        Ok(fetched)
    }

    /// For each good row of a decoded batch, the index of its part (the
    /// records minus the bad ones, in order).
    fn partition_of_rows(&self, parts: &[(Tp, Vec<RecordAndOffset>)], bad: &[BadRecord]) -> Vec<usize> {
        let mut out = Vec::with_capacity(parts.iter().map(|(_, r)| r.len()).sum());
        for (i, (tp, recs)) in parts.iter().enumerate() {
            let file = format!("{KAFKA_PREFIX}{}/{}", tp.0, tp.1);
            let bad_here: BTreeSet<u64> = bad.iter().filter(|b| b.file == file).map(|b| b.row).collect();
            if bad_here.is_empty() {
                out.extend(std::iter::repeat_n(i, recs.len()));
            } else {
                out.extend(
                    recs.iter()
                        .filter(|r| !bad_here.contains(&(r.offset as u64)))
                        .map(|_| i),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(columns: &str, options: &str) -> TableDecl {
        weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE k ({columns}) WITH ('connector' = 'kafka', 'topic' = 'bids', \
             'properties.bootstrap.servers' = '127.0.0.1:9092', 'format' = 'json'{options})"
        ))
        .unwrap()
    }

    #[test]
    fn reads_jaas_credentials() {
        let jaas = r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="alice" password='s3cr"et';"#;
        assert_eq!(
            jaas_credentials(jaas),
            Some(("alice".to_string(), "s3cr\"et".to_string()))
        );
        assert_eq!(jaas_credentials("nothing here"), None);
    }

    #[test]
    fn refuses_bad_options_clearly() {
        let e = |cols: &str, opts: &str| KafkaSource::open(&decl(cols, opts)).err().unwrap().to_string();
        assert!(e("v BIGINT", ", 'scan.startup.mode' = 'group-offsets'").contains("consumer group"));
        assert!(
            e("v BIGINT", ", 'scan.startup.mode' = 'timestamp'").contains("scan.startup.timestamp-millis")
        );
        assert!(
            e(
                "v BIGINT",
                ", 'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = 'p0'"
            )
            .contains("partition:<n>,offset:<n>")
        );
        assert!(
            e("v BIGINT", ", 'properties.security.protocol' = 'SASL_PLAINTEXT'")
                .contains("needs credentials")
        );
        assert!(e("v BIGINT METADATA FROM 'nope'", "").contains("unknown metadata key 'nope'"));
        assert!(e("v BIGINT", ", 'csv.field-delimiter' = ';'").contains(
            "option 'csv.field-delimiter' applies to 'format' = 'csv' only, and the table is 'json'"
        ));
        assert!(
            e("p TIMESTAMP(3) METADATA FROM 'partition'", "")
                .contains("cannot be TIMESTAMP(3) (declare it INT or BIGINT)")
        );
        let raw = KafkaSource::open(
            &weir_sql::job::parse_create_table(
                "CREATE TABLE k (a VARCHAR, b VARCHAR) WITH ('connector' = 'kafka', 'topic' = 't', \
             'properties.bootstrap.servers' = 'h:1', 'format' = 'raw')",
            )
            .unwrap(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(raw.contains("one column"), "{raw}");
        let servers = KafkaSource::open(
            &weir_sql::job::parse_create_table(
                "CREATE TABLE k (a VARCHAR) WITH ('connector' = 'kafka', 'topic' = 't', \
             'properties.bootstrap.servers' = 'localhost', 'format' = 'json')",
            )
            .unwrap(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(servers.contains("not host:port"), "{servers}");
    }

    #[test]
    fn specific_offsets_parse() {
        let d = decl(
            "v BIGINT",
            ", 'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = 'partition:0,offset:42;partition:3,offset:7'",
        );
        let s = KafkaSource::open(&d).unwrap();
        assert_eq!(s.startup, Startup::Specific(BTreeMap::from([(0, 42), (3, 7)])));
        let d = weir_sql::job::parse_create_table(
            "CREATE TABLE k (v BIGINT) WITH ('connector' = 'kafka', 'topic' = 'bids; bids', \
             'properties.bootstrap.servers' = '127.0.0.1:9092', 'format' = 'json')",
        )
        .unwrap();
        let e = KafkaSource::open(&d).err().expect("a topic twice").to_string();
        assert!(e.contains("'topic' names 'bids' twice"), "{e}");
        for (value, says) in [
            ("partition:0,offset:-3", "count from 0"),
            ("partition:-1,offset:3", "count from 0"),
            ("partition:0,offset:1;partition:0,offset:2", "partition 0 twice"),
        ] {
            let d = decl(
                "v BIGINT",
                &format!(
                    ", 'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = '{value}'"
                ),
            );
            let e = KafkaSource::open(&d).err().expect(value).to_string();
            assert!(e.contains(says), "{value}: {e}");
        }
    }
}
