//! Object-store requests of an epoch at increasing fan-out (issue 16, B.6).
//!
//! ```text
//! cargo run --release -p weir-storage --example scale -- [options]
//!   --fanout 1,10,100,1000,10000  state shards S = sink files F per epoch (local store)
//!   --s3-fanout 1,10,100,1000 the same on S3
//!   --list 1000,10000,100000  source-folder sizes to list (local store)
//!   --s3-list 1000,10000      the same on S3 (each file is one PUT to create)
//!   --epochs 3                epochs per fan-out (the first writes snapshots)
//!   --concurrency 32          requests in flight (the executors' tasks)
//!   --state-rows 200000       state rows changed per epoch, split over S shards
//!   --sink-rows 100000        output rows per epoch, split over F files
//!   --stores local,s3         which stores (s3 needs WEIR_TEST_S3_ENDPOINT)
//!   --units window            a state unit is a window of many keys (a window
//!                             aggregate's); `row`: one row (an update-mode GROUP BY's)
//! ```
//!
//! Every request goes through a counting wrapper around the store, beneath
//! the storage crate's own retrying [`Location`], so what is counted is what
//! the store is asked. The epoch is driven through the crate's real API:
//!
//! - offsets: the lease check (`Checkpoint::lease_generations`, a LIST) and
//!   `OffsetLog::create` (a create-if-absent PUT);
//! - state: `Checkpoint::write_state`, once per shard. Each shard is
//!   written as an operator of its own, `agg/shard-NNNN`, which gives
//!   `state/agg/shard-NNNN/<epoch>.delta.parquet`: the same requests and
//!   bytes as the engine's per-shard file (`<epoch>.delta.<k>-of-<n>.parquet`
//!   in one folder per operator, since 2026-12-06), in a folder per shard;
//! - sink: `SinkLayout::stage` for each of F writers (one per sink task; today
//!   a sink has one writer and one file per epoch), then `SinkLayout::publish`
//!   after the commit;
//! - commit: the lease check and `CommitLog::create`. A cluster's commit also
//!   names every file of the epoch's successful attempts; the API has no
//!   place for that list yet, so it is written beside the commit, as one more
//!   create-if-absent PUT of the JSON it would hold (`_sim/commit-files/`);
//! - restore: `Checkpoint::restore_state` for every shard (LIST its folder,
//!   GET snapshot and deltas, merge), and, for comparison, one LIST of the
//!   whole operator folder. The engine now restores from the names its
//!   commit lists, without the LIST;
//! - a source folder: `Location::list` of N files, as the files source lists
//!   its folder each epoch, and a listing that starts after the last file
//!   seen (S3's `start-after`), as an incremental listing would.
//!
//! S3 answers a LIST with at most 1,000 keys, so one listing is
//! `max(1, ceil(keys / 1000))` requests; the "LIST pages" columns count that
//! for every store (on a local folder it is what S3 would need). On S3 a
//! rename is a COPY and a DELETE (object_store has no other way); on a local
//! folder it is one rename(2).
//!
//! Prints a Markdown report on stdout (progress on stderr). Never panics on a
//! store error: the error is printed and the program exits non-zero.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RenameTargetMode,
};
use serde_json::json;
use weir_storage::lease::LeaseRecord;
use weir_storage::{
    Checkpoint, CommitEntry, Location, OffsetsEntry, ShardOf, SinkLayout, StateKind, StateWrite, codec,
};

/// Errors of this program: any, with its message.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result alias.
type Res<T> = Result<T, BoxError>;

/// Keys in one S3 LIST answer.
const PAGE: u64 = 1000;

// ---------------------------------------------------------------------------
// Counting requests

/// Requests made so far, by kind.
#[derive(Default, Debug)]
struct Counters {
    put: AtomicU64,
    create: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    pages: AtomicU64,
    keys: AtomicU64,
    delete: AtomicU64,
    copy: AtomicU64,
    rename: AtomicU64,
    bytes_put: AtomicU64,
    bytes_get: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A copy of [`Counters`] at one instant, or the difference of two.
#[derive(Clone, Copy, Default, Debug)]
struct Counts {
    put: u64,
    create: u64,
    get: u64,
    head: u64,
    list: u64,
    pages: u64,
    keys: u64,
    delete: u64,
    copy: u64,
    rename: u64,
    bytes_put: u64,
    bytes_get: u64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            put: l(&self.put),
            create: l(&self.create),
            get: l(&self.get),
            head: l(&self.head),
            list: l(&self.list),
            pages: l(&self.pages),
            keys: l(&self.keys),
            delete: l(&self.delete),
            copy: l(&self.copy),
            rename: l(&self.rename),
            bytes_put: l(&self.bytes_put),
            bytes_get: l(&self.bytes_get),
        }
    }
}

impl Counts {
    fn minus(self, o: Counts) -> Counts {
        Counts {
            put: self.put - o.put,
            create: self.create - o.create,
            get: self.get - o.get,
            head: self.head - o.head,
            list: self.list - o.list,
            pages: self.pages - o.pages,
            keys: self.keys - o.keys,
            delete: self.delete - o.delete,
            copy: self.copy - o.copy,
            rename: self.rename - o.rename,
            bytes_put: self.bytes_put - o.bytes_put,
            bytes_get: self.bytes_get - o.bytes_get,
        }
    }

    fn plus(self, o: Counts) -> Counts {
        Counts {
            put: self.put + o.put,
            create: self.create + o.create,
            get: self.get + o.get,
            head: self.head + o.head,
            list: self.list + o.list,
            pages: self.pages + o.pages,
            keys: self.keys + o.keys,
            delete: self.delete + o.delete,
            copy: self.copy + o.copy,
            rename: self.rename + o.rename,
            bytes_put: self.bytes_put + o.bytes_put,
            bytes_get: self.bytes_get + o.bytes_get,
        }
    }

    /// Requests S3 counts against its 3,500/s per-prefix write limit.
    fn write_class(&self) -> u64 {
        self.put + self.create + self.delete + self.copy + self.rename
    }

    /// Requests S3 counts against its 5,500/s per-prefix read limit
    /// (LIST pages included: a LIST is a GET on the bucket).
    fn read_class(&self) -> u64 {
        self.get + self.head + self.pages
    }

    fn requests(&self) -> u64 {
        self.write_class() + self.read_class()
    }
}

/// A store that counts what it is asked, and passes it on.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    /// Whether the store renames in one request (a local folder); S3 copies
    /// and deletes, and so does this wrapper then, so both are counted.
    native_rename: bool,
    c: Arc<Counters>,
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

impl Counting {
    /// Counts one listing: the call, its keys, and its S3 pages.
    fn counted(
        &self,
        listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bump(&self.c.list, 1);
        let seen = Arc::new(AtomicU64::new(0));
        let (c, c_end, seen_end) = (Arc::clone(&self.c), Arc::clone(&self.c), Arc::clone(&seen));
        listing
            .inspect(move |r| {
                if r.is_ok() {
                    let n = seen.fetch_add(1, Ordering::Relaxed);
                    bump(&c.keys, 1);
                    if n.is_multiple_of(PAGE) {
                        bump(&c.pages, 1);
                    }
                }
            })
            .chain(
                stream::once(async move {
                    // An empty answer is a request too.
                    if seen_end.load(Ordering::Relaxed) == 0 {
                        bump(&c_end.pages, 1);
                    }
                })
                .filter_map(|()| futures::future::ready(None)),
            )
            .boxed()
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match opts.mode {
            PutMode::Create => bump(&self.c.create, 1),
            _ => bump(&self.c.put, 1),
        }
        bump(&self.c.bytes_put, payload.content_length() as u64);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        bump(&self.c.put, 1);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let head = options.head;
        bump(if head { &self.c.head } else { &self.c.get }, 1);
        let r = self.inner.get_opts(location, options).await?;
        if !head {
            bump(&self.c.bytes_get, r.range.end - r.range.start);
        }
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let c = Arc::clone(&self.c);
        self.inner.delete_stream(
            locations
                .inspect(move |r| {
                    if r.is_ok() {
                        bump(&c.delete, 1);
                    }
                })
                .boxed(),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counted(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counted(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        bump(&self.c.list, 1);
        let r = self.inner.list_with_delimiter(prefix).await?;
        let n = (r.objects.len() + r.common_prefixes.len()) as u64;
        bump(&self.c.keys, n);
        bump(&self.c.pages, n.div_ceil(PAGE).max(1));
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        bump(&self.c.copy, 1);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        if self.native_rename {
            bump(&self.c.rename, 1);
            return self.inner.rename_opts(from, to, options).await;
        }
        // What object_store does for S3: a copy, then a delete.
        let mode = match options.target_mode {
            RenameTargetMode::Create => CopyMode::Create,
            _ => CopyMode::Overwrite,
        };
        self.copy_opts(from, to, CopyOptions::new().with_mode(mode))
            .await?;
        self.delete(from).await
    }
}

// ---------------------------------------------------------------------------
// Settings

/// What to run.
#[derive(Clone, Debug)]
struct Settings {
    fanouts: Vec<usize>,
    fanouts_s3: Vec<usize>,
    list_local: Vec<usize>,
    list_s3: Vec<usize>,
    epochs: u64,
    concurrency: usize,
    state_rows: usize,
    sink_rows: usize,
    stores: Vec<String>,
    /// Leading state columns that make a unit: 2 (a window, many rows, as a
    /// window aggregate's) or 3 (one row, as an update-mode GROUP BY's).
    unit_key_len: usize,
}

fn parse_list(flag: &str, v: &str) -> Res<Vec<usize>> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|e| format!("{flag}: '{s}' is not a whole number ({e})").into())
        })
        .collect()
}

fn parse_one(flag: &str, v: &str) -> Res<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: '{v}' must be a positive whole number").into()),
    }
}

impl Settings {
    fn from_args() -> Res<Settings> {
        let mut s = Settings {
            fanouts: vec![1, 10, 100, 1000, 10_000],
            fanouts_s3: vec![1, 10, 100, 1000],
            list_local: vec![1_000, 10_000, 100_000],
            list_s3: vec![1_000, 10_000],
            epochs: 3,
            concurrency: 32,
            state_rows: 200_000,
            sink_rows: 100_000,
            stores: vec!["local".into(), "s3".into()],
            unit_key_len: 2,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err("usage: scale [--fanout 1,10,100,1000,10000] [--s3-fanout 1,10,100,1000] [--list 1000,10000,100000] \
                            [--s3-list 1000,10000] [--epochs 3] [--concurrency 32] \
                            [--state-rows 200000] [--sink-rows 100000] [--stores local,s3] \
                            [--units window|row]"
                    .into());
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
            match flag.as_str() {
                "--fanout" => s.fanouts = parse_list(&flag, &value)?,
                "--s3-fanout" => s.fanouts_s3 = parse_list(&flag, &value)?,
                "--list" => s.list_local = parse_list(&flag, &value)?,
                "--s3-list" => s.list_s3 = parse_list(&flag, &value)?,
                "--epochs" => s.epochs = parse_one(&flag, &value)? as u64,
                "--concurrency" => s.concurrency = parse_one(&flag, &value)?,
                "--state-rows" => s.state_rows = parse_one(&flag, &value)?,
                "--sink-rows" => s.sink_rows = parse_one(&flag, &value)?,
                "--stores" => s.stores = value.split(',').map(|x| x.trim().to_string()).collect(),
                "--units" => {
                    s.unit_key_len = match value.as_str() {
                        "window" => 2,
                        "row" => 3,
                        _ => return Err(format!("--units: 'window' or 'row', not '{value}'").into()),
                    }
                }
                _ => return Err(format!("unknown option {flag} (see --help)").into()),
            }
        }
        if s.fanouts.contains(&0) || s.fanouts_s3.contains(&0) {
            return Err("--fanout: a fan-out must be at least 1".into());
        }
        if s.epochs < 2 {
            return Err("--epochs: at least 2 (a snapshot epoch, then delta epochs)".into());
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------
// Stores

/// One store under test: its root folder, and its counters.
struct Store {
    /// For the report's heading.
    title: String,
    root: Location,
    counting: Arc<Counting>,
    /// The local folder behind `root`, to create many source files quickly.
    local_dir: Option<std::path::PathBuf>,
    /// Which source-folder sizes to list.
    list_sizes: Vec<usize>,
    /// Which fan-outs to run.
    fanouts: Vec<usize>,
}

impl Store {
    fn counts(&self) -> Counts {
        self.counting.c.snapshot()
    }

    fn local(dir: &std::path::Path, s: &Settings) -> Res<Store> {
        let inner: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir)?);
        let counting = Arc::new(Counting {
            inner,
            native_rename: true,
            c: Arc::default(),
        });
        let url = format!("file://{}", dir.display());
        Ok(Store {
            title: "local filesystem (object_store LocalFileSystem on this machine's disk)".into(),
            root: Location::from_store(Arc::clone(&counting) as _, "", &url),
            counting,
            local_dir: Some(dir.to_path_buf()),
            list_sizes: s.list_local.clone(),
            fanouts: s.fanouts.clone(),
        })
    }

    async fn s3(endpoint: &str, s: &Settings) -> Res<Store> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let bucket = create_bucket(&endpoint).await?;
        let inner: Arc<dyn ObjectStore> = Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(&bucket)
                .with_endpoint(&endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("weir-scale")
                .with_secret_access_key("weir-scale")
                .build()?,
        );
        let counting = Arc::new(Counting {
            inner,
            native_rename: false,
            c: Arc::default(),
        });
        let root = Location::from_store(
            Arc::clone(&counting) as _,
            "scale",
            &format!("s3://{bucket}/scale"),
        );
        // Weir's commits need create-if-absent: check it as Weir does.
        root.verify_create_if_absent().await?;
        Ok(Store {
            title: format!("S3 API (the server at {endpoint}, WEIR_TEST_S3_ENDPOINT), bucket {bucket}"),
            root,
            counting,
            local_dir: None,
            list_sizes: s.list_s3.clone(),
            fanouts: s.fanouts_s3.clone(),
        })
    }
}

/// Creates a bucket with a unique name, as tests/s3.rs does (an anonymous
/// `PUT /<bucket>`, which moto accepts).
async fn create_bucket(endpoint: &str) -> Res<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let name = format!("weir-scale-{}-{nanos:x}", std::process::id());
    let host = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("WEIR_TEST_S3_ENDPOINT must be http://host:port, not {endpoint}"))?
        .to_string();
    let bucket = name.clone();
    let status = tokio::task::spawn_blocking(move || -> Res<String> {
        let mut conn = std::net::TcpStream::connect(&host)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or("").to_string())
    })
    .await??;
    if !status.contains(" 200") {
        return Err(format!("creating bucket {name} at {endpoint}: {status}").into());
    }
    Ok(name)
}

// ---------------------------------------------------------------------------
// Data

fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window_start", DataType::Int64, false),
        Field::new("window_end", DataType::Int64, false),
        Field::new("auction", DataType::Int64, false),
        Field::new("count", DataType::Int64, false),
        Field::new("max_price", DataType::Int64, false),
        Field::new("sum_price", DataType::Int64, false),
    ]))
}

fn sink_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window_start", DataType::Int64, false),
        Field::new("window_end", DataType::Int64, false),
        Field::new("auction", DataType::Int64, false),
        Field::new("bids", DataType::Int64, false),
    ]))
}

fn int64(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(values.collect::<Int64Array>())
}

/// How many windows a shard's state holds at once.
const WINDOWS: usize = 10;

/// A shard's rows of a windowed aggregate's state at an epoch: its keys
/// (those that hash to it, here `shard + j * shards`) in each of
/// [`WINDOWS`] open windows, and values that change from epoch to epoch.
fn state_rows(schema: &SchemaRef, shard: usize, shards: usize, rows: usize, epoch: u64) -> Res<RecordBatch> {
    let e = epoch as i64;
    let start = |i: usize| 1_767_225_600_000 + 10_000 * (i % WINDOWS) as i64;
    let key = |i: usize| (shard + (i / WINDOWS) * shards) as i64;
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            int64((0..rows).map(start)),
            int64((0..rows).map(|i| start(i) + 10_000)),
            int64((0..rows).map(key)),
            int64((0..rows).map(|i| e * 3 + (i % 7) as i64)),
            int64((0..rows).map(|i| (key(i) * 31 + e * 17) % 100_000)),
            int64((0..rows).map(|i| (key(i) * 131 + e * 1_000_003) % 10_000_000)),
        ],
    )?)
}

/// A sink task's output of an epoch: closed windows' counts.
fn sink_rows(schema: &SchemaRef, task: usize, tasks: usize, rows: usize, epoch: u64) -> Res<RecordBatch> {
    let e = epoch as i64;
    let start = 1_767_225_600_000 + 10_000 * e;
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            int64((0..rows).map(|_| start)),
            int64((0..rows).map(|_| start + 10_000)),
            int64((0..rows).map(|i| (task + i * tasks) as i64)),
            int64((0..rows).map(|i| 1 + ((task + i) % 97) as i64)),
        ],
    )?)
}

// ---------------------------------------------------------------------------
// Running

/// Runs `f(0..n)` with up to `concurrency` at once, each on its own tokio
/// task (so Parquet encoding uses every core, as executors would).
async fn for_each<F, Fut, T>(n: usize, concurrency: usize, f: F) -> Res<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Res<T>> + Send + 'static,
    T: Send + 'static,
{
    let results: Vec<Res<T>> = stream::iter(0..n)
        .map(|i| tokio::spawn(f(i)))
        .buffer_unordered(concurrency.max(1))
        .map(|joined| match joined {
            Ok(r) => r,
            Err(e) => Err(BoxError::from(e)),
        })
        .collect()
        .await;
    results.into_iter().collect()
}

/// One measured step: what it asked of the store, and how long it took.
#[derive(Clone, Debug)]
struct Step {
    name: &'static str,
    counts: Counts,
    elapsed: Duration,
}

/// Times `work` and counts its requests.
async fn measure<T>(
    store: &Store,
    name: &'static str,
    work: impl std::future::Future<Output = Res<T>>,
) -> Res<(Step, T)> {
    let before = store.counts();
    let t0 = Instant::now();
    let out = work.await?;
    let elapsed = t0.elapsed();
    let counts = store.counts().minus(before);
    Ok((
        Step {
            name,
            counts,
            elapsed,
        },
        out,
    ))
}

/// The measurements of one fan-out.
struct FanoutResult {
    fanout: usize,
    /// The last epoch's steps (a delta epoch: the steady state).
    last_epoch: Vec<Step>,
    /// Every epoch's total (requests, time).
    epochs: Vec<(Counts, Duration)>,
    restore: Step,
    restore_files: usize,
    restore_rows: usize,
    one_listing: Step,
    driver_recovery: Step,
}

fn offsets_entry(epoch: u64) -> OffsetsEntry {
    // A files source's offset: the files this epoch reads.
    let files: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            json!({"path": format!("bids/part-{:07}.parquet", epoch * 10 + i), "size": 134_217_728,
                   "modified_ms": 1_767_225_600_000_i64, "start_row": 0})
        })
        .collect();
    OffsetsEntry {
        sources: BTreeMap::from([("bids".to_string(), json!({"files": files, "max_rows": 1_000_000}))]),
        watermarks_in: BTreeMap::from([("bids".to_string(), 1_767_225_600_000 + epoch as i64 * 1000)]),
        drain: false,
        processing_time_ms: 1_767_225_600_000 + epoch as i64 * 1000,
        idle: Default::default(),
        lookups: Default::default(),
    }
}

fn commit_entry(epoch: u64, rows_in: u64, rows_out: u64) -> CommitEntry {
    CommitEntry {
        watermarks: BTreeMap::from([("bids".to_string(), 1_767_225_600_000 + epoch as i64 * 1000)]),
        rows_in,
        rows_out,
        late_rows: 0,
        bad_rows: 0,
        committed_at: "2026-01-01T00:00:00+00:00".into(),
        last_data_ms: BTreeMap::new(),
        pipeline_watermarks: BTreeMap::new(),
        state: None,
    }
}

fn shard_operator(shard: usize) -> String {
    format!("agg/shard-{shard:04}")
}

fn writer_of(task: usize) -> String {
    format!("0f1e2d3c-p0-t{task:04}")
}

async fn run_fanout(store: &Store, s: &Settings, k: usize) -> Res<FanoutResult> {
    let base = store.root.child(&format!("fanout-{k}"));
    let ck = Checkpoint::new(base.child("ck"));
    let sink_loc = base.child("out");
    let conc = s.concurrency;
    let state_per_shard = (s.state_rows / k).max(1);
    let sink_per_file = (s.sink_rows / k).max(1);
    let (sschema, oschema) = (state_schema(), sink_schema());
    let unit_key_len = s.unit_key_len;

    // The driver's lease, as `weir run` takes it (not part of an epoch).
    ck.create_lease(&LeaseRecord {
        version: 1,
        generation: 1,
        owner: "scale".into(),
        host: "localhost".into(),
        pid: std::process::id(),
        acquired_at: "2026-01-01T00:00:00+00:00".into(),
        expires_at_ms: i64::MAX,
        released: false,
    })
    .await?;

    let mut last_epoch = Vec::new();
    let mut epochs = Vec::new();
    for epoch in 1..=s.epochs {
        let mut steps = Vec::new();
        let t0 = Instant::now();
        let c0 = store.counts();

        // 2. The write-ahead entry, after the fencing check.
        let (step, _) = measure(store, "offsets (lease check + offsets/N)", async {
            ck.lease_generations().await?;
            ck.offsets.create(epoch, &offsets_entry(epoch)).await?;
            Ok(())
        })
        .await?;
        steps.push(step);

        // 5. Sink tasks stage their files (before state, as the engine does).
        let (step, staged) = measure(store, "sink: stage F files (+ F manifests)", async {
            for_each(k, conc, |task| {
                let layout = SinkLayout::new(sink_loc.clone(), writer_of(task));
                let schema = Arc::clone(&oschema);
                async move {
                    let batch = sink_rows(&schema, task, k, sink_per_file, epoch)?;
                    let url = layout.location().url_of(&layout.final_name(epoch));
                    let meta = BTreeMap::from([("weir.epoch".to_string(), epoch.to_string())]);
                    let payload = codec::encode(&url, &schema, &[batch], &meta)?;
                    let bytes = payload.content_length() as u64;
                    layout.stage(epoch, Some((payload, sink_per_file as u64))).await?;
                    Ok((layout.final_name(epoch), bytes))
                }
            })
            .await
        })
        .await?;
        steps.push(step);

        // 6. Each shard writes its state (a snapshot first, then deltas).
        let kind = if epoch == 1 {
            StateKind::Snapshot
        } else {
            StateKind::Delta
        };
        let (step, written) = measure(store, "state: S shard files", async {
            for_each(k, conc, |shard| {
                let ck = ck.clone();
                let schema = Arc::clone(&sschema);
                async move {
                    let batch = state_rows(&schema, shard, k, state_per_shard, epoch)?;
                    let op = shard_operator(shard);
                    let w = StateWrite {
                        kind,
                        shard: ShardOf::WHOLE,
                        schema: &schema,
                        unit_key_len,
                        upserts: std::slice::from_ref(&batch),
                        deletes: &[],
                        attempt: None,
                    };
                    let bytes = ck.write_state(&op, epoch, w).await?;
                    Ok((op, bytes))
                }
            })
            .await
        })
        .await?;
        steps.push(step);

        // 7. The commit, after the fencing check; on a cluster it names
        // every file of the successful attempts (written beside it here).
        let (step, _) = measure(store, "commit (lease check + commits/N)", async {
            ck.lease_generations().await?;
            ck.commits
                .create(
                    epoch,
                    &commit_entry(epoch, s.state_rows as u64, s.sink_rows as u64),
                )
                .await?;
            Ok(())
        })
        .await?;
        steps.push(step);
        let (step, _) = measure(store, "commit's file list (cluster; simulated)", async {
            let list = json!({
                "version": 1,
                "epoch": epoch,
                "state": written.iter().map(|(op, bytes)| json!({
                    "name": format!("state/{op}/{epoch:020}.{}.parquet",
                                    if epoch == 1 { "snapshot" } else { "delta" }),
                    "bytes": bytes, "attempt": 0})).collect::<Vec<_>>(),
                "sink": staged.iter().map(|(name, bytes)| json!({
                    "name": name, "rows": sink_per_file, "bytes": bytes, "attempt": 0})).collect::<Vec<_>>(),
            });
            let body = serde_json::to_vec(&list)?;
            ck.location()
                .put_if_absent(&format!("_sim/commit-files/{epoch:020}.json"), Bytes::from(body))
                .await?;
            Ok(())
        })
        .await?;
        steps.push(step);

        // 8. Publish: each sink writer's staged file becomes visible.
        let (step, _) = measure(store, "publish F files (manifest GET + rename)", async {
            for_each(k, conc, |task| {
                let layout = SinkLayout::new(sink_loc.clone(), writer_of(task));
                async move { Ok(layout.publish(epoch).await?) }
            })
            .await
        })
        .await?;
        steps.push(step);

        epochs.push((store.counts().minus(c0), t0.elapsed()));
        last_epoch = steps;
        eprintln!(
            "  fan-out {k}: epoch {epoch} in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1000.0
        );
    }

    // Recovery. The driver: the last commit, and whether the next epoch's
    // offsets are logged.
    let last = s.epochs;
    let (driver_recovery, _) = measure(store, "driver: last commit, offsets", async {
        let c = ck.commits.latest().await?;
        if let Some(c) = c {
            ck.commits.read(c).await?;
            ck.offsets.read(c + 1).await?;
        }
        ck.lease_generations().await?;
        Ok(())
    })
    .await?;
    // Every shard: list its files, read snapshot and deltas, merge.
    let (restore, restored) = measure(store, "restore every shard", async {
        for_each(k, conc, |shard| {
            let ck = ck.clone();
            async move {
                let op = shard_operator(shard);
                let state = ck
                    .restore_state(&op, last)
                    .await?
                    .ok_or_else(|| format!("no state restored for {op}"))?;
                Ok(state.batches.iter().map(RecordBatch::num_rows).sum::<usize>())
            }
        })
        .await
    })
    .await?;
    let restore_rows: usize = restored.iter().sum();
    if restore_rows != state_per_shard * k {
        return Err(format!(
            "fan-out {k}: restored {restore_rows} rows, expected {}",
            state_per_shard * k
        )
        .into());
    }
    // The same files found by one listing of the operator's folder.
    let (one_listing, files) = measure(store, "one LIST of the operator folder", async {
        Ok(ck.location().list("state/agg").await?.len())
    })
    .await?;
    Ok(FanoutResult {
        fanout: k,
        last_epoch,
        epochs,
        restore,
        restore_files: files,
        restore_rows,
        one_listing,
        driver_recovery,
    })
}

/// The listing of a source folder of `n` files.
struct ListingResult {
    files: usize,
    setup: Duration,
    full: Step,
    full_ms: Vec<f64>,
    incremental: Step,
}

/// Adds files `from..to` to the source folder.
async fn add_source_files(store: &Store, src: &Location, from: usize, to: usize, conc: usize) -> Res<()> {
    let name = |i: usize| format!("part-{i:07}.parquet");
    if let Some(dir) = &store.local_dir {
        // A local folder: plain files (the store lists them as it would
        // files it wrote; the listing, not the setup, is measured).
        let dir = dir.join(src.prefix().as_ref());
        tokio::task::spawn_blocking(move || -> Res<()> {
            std::fs::create_dir_all(&dir)?;
            for i in from..to {
                std::fs::write(dir.join(name(i)), b"PAR1 scale source file PAR1")?;
            }
            Ok(())
        })
        .await??;
        return Ok(());
    }
    for_each(to - from, conc, |j| {
        let src = src.clone();
        async move {
            src.put(
                &name(from + j),
                Bytes::from_static(b"PAR1 scale source file PAR1"),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

async fn run_listings(store: &Store, s: &Settings) -> Res<Vec<ListingResult>> {
    let src = store.root.child("source");
    let mut sizes = store.list_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut have = 0;
    let mut out = Vec::new();
    for n in sizes {
        let t0 = Instant::now();
        add_source_files(store, &src, have, n, s.concurrency).await?;
        have = n;
        let setup = t0.elapsed();
        // The files source's listing (`Location::list` of its folder), three times.
        let mut full = None;
        let mut full_ms = Vec::new();
        for _ in 0..3 {
            let (step, listed) =
                measure(store, "list the folder", async { Ok(src.list("").await?.len()) }).await?;
            if listed != n {
                return Err(format!("listed {listed} files, expected {n}").into());
            }
            full_ms.push(step.elapsed.as_secs_f64() * 1000.0);
            full = Some(step);
        }
        let full = full.ok_or("no listing")?;
        full_ms.sort_by(f64::total_cmp);
        // An incremental listing: only what sorts after the last file seen
        // (S3 `start-after`; a local folder still walks it all).
        let prefix = src.prefix().clone();
        let seen = src.path(&format!("part-{:07}.parquet", n.saturating_sub(2)));
        let store_ref = Arc::clone(&store.counting);
        let (incremental, newer) = measure(store, "list after the last file seen", async move {
            let listed: Vec<object_store::Result<ObjectMeta>> =
                store_ref.list_with_offset(Some(&prefix), &seen).collect().await;
            let mut n = 0;
            for r in listed {
                r?;
                n += 1;
            }
            Ok(n)
        })
        .await?;
        if newer != 1 {
            return Err(format!("the incremental listing found {newer} files, expected 1").into());
        }
        eprintln!(
            "  listing {n} files: {:.1} ms (median of 3)",
            full_ms[full_ms.len() / 2]
        );
        out.push(ListingResult {
            files: n,
            setup,
            full,
            full_ms,
            incremental,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

fn rate(n: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        "-".into()
    } else {
        format!("{:.0}", n as f64 / s)
    }
}

fn report(store: &Store, s: &Settings, fanouts: &[FanoutResult], listings: &[ListingResult]) -> String {
    let mut o = String::new();
    let mut line = |text: String| {
        o.push_str(&text);
        o.push('\n');
    };
    line(format!("## Store: {}", store.title));
    line(String::new());
    line(format!(
        "{} epochs per fan-out (epoch 1 writes a snapshot per shard, the others deltas); per epoch \
         {} state rows ({}) split over S shards and {} output rows over F sink files (S = F = the \
         fan-out); up to {} requests in flight. \"LIST pages\" is S3's request count for the listing \
         (1 per 1,000 keys); a RENAME is one request on a local folder and a COPY + DELETE on S3.",
        s.epochs,
        s.state_rows,
        if s.unit_key_len == 2 {
            "a window aggregate's: units are windows of many keys, 10 open per shard"
        } else {
            "one row per unit, as an update-mode GROUP BY keeps"
        },
        s.sink_rows,
        s.concurrency
    ));
    line(String::new());
    line("### One steady-state epoch (the last, a delta epoch), step by step".into());
    line(String::new());
    line(
        "| S = F | step | PUT | PUT if absent | GET | LIST pages (keys) | DELETE | COPY | RENAME | \
         requests | MB written | ms |"
            .into(),
    );
    line("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".into());
    for f in fanouts {
        for st in &f.last_epoch {
            let c = st.counts;
            line(format!(
                "| {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
                f.fanout,
                st.name,
                c.put,
                c.create,
                c.get + c.head,
                c.pages,
                c.keys,
                c.delete,
                c.copy,
                c.rename,
                c.requests(),
                mb(c.bytes_put),
                ms(st.elapsed)
            ));
        }
    }
    line(String::new());
    line("### Whole epochs".into());
    line(String::new());
    line(
        "| S = F | epoch 1 (snapshots): requests, ms | later epochs (deltas): requests, ms (mean) | \
         of which write-class (PUT/COPY/DELETE) | read-class (GET/HEAD/LIST) | requests/s achieved |"
            .into(),
    );
    line("|---:|---|---|---:|---:|---:|".into());
    for f in fanouts {
        let (first, first_t) = f.epochs.first().copied().unwrap_or_default();
        let later = &f.epochs[1.min(f.epochs.len())..];
        let sum = later.iter().fold(Counts::default(), |acc, (c, _)| acc.plus(*c));
        let t: Duration = later.iter().map(|(_, d)| *d).sum();
        let n = later.len().max(1) as u64;
        line(format!(
            "| {} | {}, {} | {}, {} | {} | {} | {} |",
            f.fanout,
            first.requests(),
            ms(first_t),
            sum.requests() / n,
            ms(t / n as u32),
            sum.write_class() / n,
            sum.read_class() / n,
            rate(sum.requests(), t)
        ));
    }
    line(String::new());
    line(format!(
        "### Restore after a failure: S shards of one operator, each a snapshot and {} deltas",
        s.epochs - 1
    ));
    line(String::new());
    line(
        "| S | files | driver: requests, ms | every shard (`restore_state`: LIST + GETs + merge): \
         LIST pages, GET, MB read, ms | ms per shard | rows | one LIST of all shards' files: pages, ms |"
            .into(),
    );
    line("|---:|---:|---|---|---:|---:|---|".into());
    for f in fanouts {
        let r = f.restore.counts;
        line(format!(
            "| {} | {} | {}, {} | {}, {}, {}, {} | {:.2} | {} | {}, {} |",
            f.fanout,
            f.restore_files,
            f.driver_recovery.counts.requests(),
            ms(f.driver_recovery.elapsed),
            r.pages,
            r.get,
            mb(r.bytes_get),
            ms(f.restore.elapsed),
            f.restore.elapsed.as_secs_f64() * 1000.0 / f.fanout as f64,
            f.restore_rows,
            f.one_listing.counts.pages,
            ms(f.one_listing.elapsed)
        ));
    }
    line(String::new());
    line("### Listing a source folder of N files".into());
    line(String::new());
    line(
        "| N | setup (creating the files), s | full listing (`Location::list`, as the files source \
         does each epoch): LIST pages, keys | ms (min / median / max of 3) | µs per key | listing \
         after the last file seen: pages, keys, ms |"
            .into(),
    );
    line("|---:|---:|---|---|---:|---|".into());
    for l in listings {
        let c = l.full.counts;
        let med = l.full_ms.get(l.full_ms.len() / 2).copied().unwrap_or(0.0);
        line(format!(
            "| {} | {:.1} | {}, {} | {:.1} / {:.1} / {:.1} | {:.2} | {}, {}, {} |",
            l.files,
            l.setup.as_secs_f64(),
            c.pages,
            c.keys,
            l.full_ms.first().copied().unwrap_or(0.0),
            med,
            l.full_ms.last().copied().unwrap_or(0.0),
            med * 1000.0 / l.files.max(1) as f64,
            l.incremental.counts.pages,
            l.incremental.counts.keys,
            ms(l.incremental.elapsed)
        ));
    }
    line(String::new());
    o
}

async fn run_store(store: &Store, s: &Settings) -> Res<String> {
    eprintln!("store: {}", store.title);
    let mut fanouts = Vec::new();
    for &k in &store.fanouts {
        fanouts.push(run_fanout(store, s, k).await?);
    }
    let listings = run_listings(store, s).await?;
    Ok(report(store, s, &fanouts, &listings))
}

async fn run(s: Settings) -> Res<()> {
    let mut out = String::new();
    if s.stores.iter().any(|x| x == "local") {
        let dir = tempfile::Builder::new().prefix("weir-scale-").tempdir()?;
        let store = Store::local(dir.path(), &s)?;
        out.push_str(&run_store(&store, &s).await?);
        // Deleting 100k files takes a moment; say so.
        eprintln!("removing {}", dir.path().display());
    }
    if s.stores.iter().any(|x| x == "s3") {
        match std::env::var("WEIR_TEST_S3_ENDPOINT") {
            Ok(endpoint) => {
                let store = Store::s3(&endpoint, &s).await?;
                out.push_str(&run_store(&store, &s).await?);
            }
            Err(_) => {
                out.push_str("## Store: S3\n\nNot run: WEIR_TEST_S3_ENDPOINT is not set.\n\n");
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Settings::from_args() {
        Ok(s) => run(s).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
