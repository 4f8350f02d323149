//! `'connector' = 'kafka'` as a sink: a query's rows as Kafka records.
//!
//! Delivery is **at least once**, with what a consumer needs to drop the
//! repeats: every record carries the headers `weir.epoch` and `weir.seq`
//! (its epoch, and its position in the epoch's output, 0, 1, ...), which a
//! replay gives again unchanged. Kafka transactions would make it exactly
//! once, but the client (rskafka) has none.
//!
//! An epoch's records are staged in the checkpoint, in
//! `kafka-sinks/<writer>/<epoch>.parquet` (columns `key`, `value`, both
//! BYTES; written with the epoch's other output, before its commit), and
//! produced after the commit, as a file sink publishes; then the staged
//! file is deleted. A crash after the commit publishes the epoch again on
//! restart: records produced before the crash are produced again, with
//! the same headers. An epoch staged and never committed is staged again,
//! under the same name, when it is replayed.
//!
//! `'mode'`:
//! - `append` (default): each row is a record; the value is the row in
//!   `'format'` (`json` or `csv`).
//! - `changelog`: as `append`, for a changelog: the value has the `op`
//!   column (`+I`, `-U`, `+U`, `-D`) first.
//! - `upsert` (Flink's upsert-kafka): a changelog keyed by `'key.fields'`:
//!   `+I` and `+U` rows are records keyed by those fields (as JSON), `-D`
//!   rows are tombstones (the key, no value), `-U` rows are not written.
//!   A compacted topic then holds the latest row of each key.
//!
//! A record's partition: with `'key.fields'`, Kafka's default partitioner
//! (murmur2 of the key, as the Java client computes it), so rows of one key
//! go to one partition; without, round robin by the row's position.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::Mutex;
use weir_sql::TableDecl;
use weir_storage::{Location, codec};

use crate::source::kafka::{CONNECTION_OPTIONS, Connection, auth_failure, connection_of, untrusted};
use crate::{Error, Result};

/// Options a Kafka sink knows (besides the connection's).
const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "format",
    "mode",
    "key.fields",
    "csv.field-delimiter",
    "sink.compression",
];

/// Records produced per request.
const PRODUCE_CHUNK: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Append,
    Changelog,
    Upsert,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Json,
    Csv { delimiter: u8 },
}

/// A Kafka sink.
pub struct KafkaSink {
    table: String,
    topic: String,
    mode: Mode,
    encoding: Encoding,
    /// The names of the key columns (`'key.fields'`).
    key_fields: Vec<String>,
    compression: Compression,
    connection: Connection,
    /// Where epochs are staged until their commit.
    staging: Location,
    /// The columns the table declares NOT NULL (checked before staging).
    not_null: Vec<String>,
    client: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("table", &self.table)
            .field("topic", &self.topic)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn staged_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
    ]))
}

/// Kafka's default partitioner's hash (the Java client's `murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match rest.len() {
        3 => {
            h ^= (rest[2] as u32) << 16;
            h ^= (rest[1] as u32) << 8;
            h ^= rest[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (rest[1] as u32) << 8;
            h ^= rest[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= rest[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key.
fn partition_of_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

impl KafkaSink {
    /// The options a Kafka sink takes.
    pub fn known_options() -> Vec<&'static str> {
        OPTIONS.iter().chain(CONNECTION_OPTIONS).copied().collect()
    }

    /// Opens the sink a table declares, staging in `staging`.
    pub fn open(decl: &TableDecl, staging: Location) -> Result<Self> {
        let known = Self::known_options();
        crate::source::check_options(decl, &known)?;
        crate::options::refuse_metadata(decl)?;
        let table = decl.name.clone();
        let err = |m: String| Error::Config(format!("sink table '{table}': {m}"));
        let topic = decl.require("topic")?.trim().to_string();
        if topic.is_empty() || topic.contains([';', ',']) {
            return Err(err(format!("'topic' must name one topic, not '{topic}'")));
        }
        let format = decl.require("format")?.to_ascii_lowercase();
        crate::options::refuse_csv_options_unless_csv(decl, &format)?;
        let encoding = match format.as_str() {
            "json" => Encoding::Json,
            "csv" => Encoding::Csv {
                delimiter: match decl.options.get("csv.field-delimiter") {
                    None => b',',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some(d) => {
                        return Err(err(format!(
                            "csv.field-delimiter must be one ASCII character (one byte), not '{d}'"
                        )));
                    }
                },
            },
            other => {
                return Err(err(format!(
                    "unknown format '{other}' for a Kafka sink (supported: json, csv)"
                )));
            }
        };
        let mode = match decl
            .options
            .get("mode")
            .unwrap_or("append")
            .to_ascii_lowercase()
            .as_str()
        {
            "append" => Mode::Append,
            "changelog" => Mode::Changelog,
            "upsert" => Mode::Upsert,
            other => {
                return Err(err(format!(
                    "unknown mode '{other}' (append, changelog or upsert)"
                )));
            }
        };
        let key_fields: Vec<String> = decl
            .options
            .get("key.fields")
            .map(|k| {
                k.split([';', ','])
                    .map(|f| f.trim().to_string())
                    .filter(|f| !f.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if mode == Mode::Upsert && key_fields.is_empty() {
            return Err(err(
                "'mode' = 'upsert' needs 'key.fields' (the columns that key each row), e.g. 'key.fields' = 'auction'"
                    .into(),
            ));
        }
        let compression = match decl
            .options
            .get("sink.compression")
            .map(|c| c.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("none") => Compression::NoCompression,
            Some("gzip") => Compression::Gzip,
            Some("snappy") => Compression::Snappy,
            Some("lz4") => Compression::Lz4,
            Some("zstd") => Compression::Zstd,
            Some(other) => {
                return Err(err(format!(
                    "unknown sink.compression '{other}' (none, gzip, snappy, lz4, zstd)"
                )));
            }
        };
        Ok(Self {
            connection: connection_of(decl)?,
            table,
            topic,
            mode,
            encoding,
            key_fields,
            compression,
            staging,
            not_null: crate::sink::not_null_columns(decl),
            client: Mutex::new(None),
        })
    }

    /// The sink's table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The topic written.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn staged_name(epoch: u64) -> String {
        format!("{epoch:020}.parquet")
    }

    /// Encodes an epoch's rows as records and stages them; returns rows and
    /// bytes staged.
    pub async fn stage(
        &self,
        epoch: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        between: impl FnOnce() -> Result<()>,
    ) -> Result<(u64, u64)> {
        crate::sink::check_not_null(&self.table, &self.not_null, epoch, schema, batches)?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let (keys, values) = self.encode(schema, batches)?;
        let staged = RecordBatch::try_new(
            staged_schema(),
            vec![Arc::new(keys) as ArrayRef, Arc::new(values) as ArrayRef],
        )?;
        let name = Self::staged_name(epoch);
        let url = self.staging.url_of(&name);
        let meta = BTreeMap::from([("weir.epoch".to_string(), epoch.to_string())]);
        let bytes = codec::encode(&url, &staged_schema(), &[staged], &meta)?;
        let len = bytes.content_length() as u64;
        between()?;
        self.staging.put(&name, bytes).await?;
        Ok((rows as u64, len))
    }

    /// The rows as (key, value) pairs, in order; `None` value: a tombstone;
    /// a row not written (`-U` in upsert mode) has neither.
    fn encode(&self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(BinaryArray, BinaryArray)> {
        let table = &self.table;
        let changelog = schema.fields().first().is_some_and(|f| f.name() == "op");
        let key_idx: Vec<usize> = self
            .key_fields
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    Error::Config(format!(
                        "sink table '{table}': 'key.fields' names '{k}', which the query does not produce (it produces {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let mut keys: Vec<Option<Vec<u8>>> = Vec::new();
        let mut values: Vec<Option<Vec<u8>>> = Vec::new();
        for b in batches {
            // The value's columns: all but `op` in upsert mode.
            let value_cols: Vec<usize> = (0..b.num_columns())
                .filter(|&i| !(self.mode == Mode::Upsert && changelog && i == 0))
                .collect();
            let value_batch = b.project(&value_cols)?;
            let lines = self.lines(&value_batch)?;
            let key_lines = if key_idx.is_empty() {
                None
            } else {
                Some(json_lines(&b.project(&key_idx)?)?)
            };
            let ops = if changelog {
                Some(datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?)
            } else {
                None
            };
            let ops = ops.as_ref().map(|a| a.as_string::<i32>());
            for (i, line) in lines.into_iter().enumerate() {
                let op = ops.filter(|a| a.is_valid(i)).map(|a| a.value(i));
                let key = key_lines.as_ref().map(|k| k[i].clone());
                match (self.mode, op) {
                    (Mode::Upsert, Some("-U")) => continue,
                    (Mode::Upsert, Some("-D")) => {
                        keys.push(key);
                        values.push(None);
                    }
                    _ => {
                        keys.push(key);
                        values.push(Some(line));
                    }
                }
            }
        }
        Ok((
            BinaryArray::from_iter(keys.iter().map(|k| k.as_deref())),
            BinaryArray::from_iter(values.iter().map(|v| v.as_deref())),
        ))
    }

    /// Each row as one line of the sink's format, without its newline.
    fn lines(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        match self.encoding {
            Encoding::Json => json_lines(batch),
            Encoding::Csv { delimiter } => {
                let mut buf = Vec::new();
                {
                    let mut w = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .with_delimiter(delimiter)
                        .build(&mut buf);
                    w.write(batch)?;
                }
                Ok(split_lines(&buf, batch.num_rows(), true))
            }
        }
    }

    async fn client(&self) -> Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(Arc::clone(c));
        }
        let builder = |deadline: u64| {
            let mut builder = ClientBuilder::new(self.connection.brokers.clone())
                .client_id(self.connection.client_id.clone())
                .backoff_config(rskafka::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_secs(5),
                    base: 2.0,
                    deadline: Some(std::time::Duration::from_secs(deadline)),
                });
            if let Some(s) = &self.connection.sasl {
                builder = builder.sasl_config(s.clone());
            }
            if let Some(t) = &self.connection.tls {
                builder = builder.tls_config(Arc::clone(t));
            }
            builder
        };
        // First a short try, so that refused credentials or a certificate
        // TLS does not trust fail at once (the client retries those as it
        // retries an outage).
        if let Err(e) = builder(5).build().await {
            if auth_failure(&e) {
                return Err(self.err(format!(
                    "the brokers refused the credentials ('properties.sasl.*'): {e}"
                )));
            }
            if untrusted(&e) {
                return Err(self.err(format!(
                    "TLS refused the broker's certificate (give the CA that signed it in \
                     'properties.ssl.ca.location'): {e}"
                )));
            }
        }
        // A broker out of reach is retried for up to five minutes per
        // request; then the publish fails, and the (committed) epoch is
        // published again when the job restarts.
        let client = Arc::new(builder(300).build().await.map_err(|e| self.err(e))?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Input(format!(
            "sink table '{}': Kafka topic '{}' on {}: {e}",
            self.table,
            self.topic,
            self.connection.brokers.join(",")
        ))
    }

    /// Produces a committed epoch's staged records, then deletes them.
    /// Run again after a crash, it produces them again (with the same
    /// headers).
    pub async fn publish(&self, epoch: u64, between: impl FnOnce() -> Result<()>) -> Result<u64> {
        let name = Self::staged_name(epoch);
        let Some(bytes) = self.staging.get(&name).await? else {
            // Published already.
            between()?;
            return Ok(0);
        };
        let decoded = codec::decode(&self.staging.url_of(&name), Some(epoch), bytes)?;
        let client = self.client().await?;
        let topics = client.list_topics().await.map_err(|e| self.err(e))?;
        let partitions = topics
            .iter()
            .find(|t| t.name == self.topic)
            .map(|t| t.partitions.len() as i32)
            .filter(|&n| n > 0)
            .ok_or_else(|| self.err("the topic does not exist (create it first)"))?;
        let now = chrono::Utc::now();
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        let mut seq: i64 = 0;
        for b in &decoded.batches {
            let keys = b.column(0).as_binary::<i32>();
            let values = b.column(1).as_binary::<i32>();
            for i in 0..b.num_rows() {
                let key = keys.is_valid(i).then(|| keys.value(i).to_vec());
                let value = values.is_valid(i).then(|| values.value(i).to_vec());
                let partition = match &key {
                    Some(k) => partition_of_key(k, partitions),
                    None => (seq % partitions as i64) as i32,
                };
                let headers = BTreeMap::from([
                    ("weir.epoch".to_string(), epoch.to_string().into_bytes()),
                    ("weir.seq".to_string(), seq.to_string().into_bytes()),
                ]);
                by_partition.entry(partition).or_default().push(Record {
                    key,
                    value,
                    headers,
                    timestamp: now,
                });
                seq += 1;
            }
        }
        let mut produced = 0u64;
        for (p, records) in by_partition {
            let pc = client
                .partition_client(self.topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| self.err(e))?;
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<Record> = records.by_ref().take(PRODUCE_CHUNK).collect();
                produced += chunk.len() as u64;
                pc.produce(chunk, self.compression)
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        between()?;
        self.staging.delete(&name).await?;
        Ok(produced)
    }
}

/// Each row as one JSON object, without its newline.
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(split_lines(&buf, batch.num_rows(), false))
}

/// The `n` lines of `buf` (each ending in a newline). A CSV field may
/// hold a quoted newline, so a CSV line ends at a newline outside quotes
/// (JSON escapes its newlines).
fn split_lines(buf: &[u8], n: usize, csv: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    let mut quoted = false;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'"' if csv => quoted = !quoted,
            b'\n' if !quoted => {
                let mut line = &buf[start..i];
                if line.ends_with(b"\r") {
                    line = &line[..line.len() - 1];
                }
                out.push(line.to_vec());
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // Values from the Java client's `Utils.murmur2` tests.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    /// A NULL for a column the sink table declares NOT NULL stops the
    /// epoch before anything is staged, as the file sink does (no broker is
    /// needed: staging comes before any record is sent).
    #[tokio::test]
    async fn a_null_for_a_not_null_column_stages_nothing() {
        use datafusion::arrow::array::Int64Array;
        use weir_storage::StoreOptions;
        use weir_storage::location::Create;
        let decl = weir_sql::job::parse_create_table(
            "CREATE TABLE out (a BIGINT NOT NULL, b BIGINT) WITH ('connector' = 'kafka', 'topic' = 't', \
             'properties.bootstrap.servers' = '127.0.0.1:9', 'format' = 'json')",
        )
        .unwrap();
        let staging = Location::open(
            "memory://kafka-not-null/staging",
            &StoreOptions::default(),
            Create::Yes,
        )
        .unwrap();
        // (A CSV option on this JSON sink is refused, naming it.)
        let csv = weir_sql::job::parse_create_table(
            "CREATE TABLE out (a BIGINT) WITH ('connector' = 'kafka', 'topic' = 't', \
             'properties.bootstrap.servers' = '127.0.0.1:9', 'format' = 'json', 'csv.field-delimiter' = ';')",
        )
        .unwrap();
        let e = KafkaSink::open(&csv, staging.clone())
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("option 'csv.field-delimiter' applies to 'format' = 'csv' only")),
            "{e:?}"
        );
        let sink = KafkaSink::open(&decl, staging.clone()).unwrap();
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let batch = |a: Vec<Option<i64>>| {
            let b = Int64Array::from(vec![Some(1); a.len()]);
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(a)), Arc::new(b)],
            )
            .unwrap()
        };
        let err = sink
            .stage(
                7,
                &schema,
                &[batch(vec![Some(1)]), batch(vec![Some(2), None])],
                || Ok(()),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column 'a' is declared NOT NULL") && err.contains("epoch 7"),
            "{err}"
        );
        assert!(staging.get(&KafkaSink::staged_name(7)).await.unwrap().is_none());
        let (rows, _) = sink
            .stage(8, &schema, &[batch(vec![Some(1), Some(2)])], || Ok(()))
            .await
            .unwrap();
        assert_eq!(rows, 2);
        assert!(staging.get(&KafkaSink::staged_name(8)).await.unwrap().is_some());
    }
}
