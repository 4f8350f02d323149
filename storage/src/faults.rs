//! A store that fails on purpose, to prove that Weir survives stores that fail.
//!
//! Retries ([`crate::retry`]) and the epoch protocol are only as good as the
//! failures they have been tried against. [`FaultyStore`] wraps any store
//! and, as [`FaultConfig`] says:
//!
//! - fails a fraction (`rate`) of operations with a transient error. Which
//!   ones is decided by a hash of the seed, the operation, the object and how
//!   many times that operation was made on that object before, so a run
//!   with the same seed fails the same operations however its tasks
//!   interleave. A write fails either before it reaches the store or after
//!   it took effect (its answer lost), as a dropped connection does; the
//!   latter is what makes a retried create-if-absent ambiguous. No operation
//!   on one object fails more than `max_consecutive` times in a row, so
//!   retries with more attempts than that always get through;
//! - adds `latency` to every operation, as a remote store would;
//! - fails every read, write or delete of an object whose name, relative to
//!   the opened folder, starts with `permanent_prefix`, on every attempt, as
//!   a store that denies access to those objects would (listings still
//!   work, as an object-level policy allows);
//! - with `ignore_create`, treats a create-if-absent as a plain overwrite,
//!   as a store without conditional writes would.
//!
//! It is selected through [`StoreOptions`] keys (`weir.fault_rate`, ...,
//! [`FAULT_OPTIONS`]); `weir` sets them from `WEIR_FAULTS` (README,
//! Development). Injected errors say "injected" and what was injected, so a
//! test (or a person) can tell them from real ones.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::location::StoreOptions;

/// The keys of a fault specification (`WEIR_FAULTS=rate=0.2,...`) and the
/// [`StoreOptions`] keys they set.
pub const FAULT_OPTIONS: [(&str, &str); 6] = [
    ("rate", "weir.fault_rate"),
    ("latency_ms", "weir.fault_latency_ms"),
    ("seed", "weir.fault_seed"),
    ("permanent", "weir.fault_permanent_prefix"),
    ("max_consecutive", "weir.fault_max_consecutive"),
    ("ignore_create", "weir.fault_ignore_create"),
];

/// What to inject.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// The fraction of operations that fail transiently, 0 to 1.
    pub rate: f64,
    /// Added to every operation.
    pub latency: Duration,
    /// Which operations fail (same seed, same failures).
    pub seed: u64,
    /// Objects under this prefix (relative to the opened folder) fail on
    /// every read, write and delete.
    pub permanent_prefix: Option<String>,
    /// The most transient failures in a row of one operation on one object.
    pub max_consecutive: u32,
    /// Create-if-absent writes overwrite instead.
    pub ignore_create: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            rate: 0.0,
            latency: Duration::ZERO,
            seed: 0,
            permanent_prefix: None,
            max_consecutive: 3,
            ignore_create: false,
        }
    }
}

impl FaultConfig {
    /// The configuration the options hold, or `None` when no `weir.fault_*`
    /// option is set.
    pub fn from_options(options: &StoreOptions) -> Result<Option<FaultConfig>, String> {
        let mut any = false;
        let mut config = FaultConfig::default();
        for (key, value) in options.iter() {
            let Some(name) = key.strip_prefix("weir.fault_") else {
                continue;
            };
            any = true;
            let v = value.trim();
            let whole = |what: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .map_err(|_| format!("{key} must be a whole number ({what}), not '{value}'"))
            };
            match name {
                "rate" => {
                    config.rate = match v.parse::<f64>() {
                        Ok(r) if (0.0..=1.0).contains(&r) => r,
                        _ => return Err(format!("{key} must be a number from 0 to 1, not '{value}'")),
                    }
                }
                "latency_ms" => config.latency = Duration::from_millis(whole("milliseconds")?),
                "seed" => config.seed = whole("any")?,
                "permanent_prefix" => {
                    let p = v.trim_start_matches('/');
                    if p.is_empty() {
                        return Err(format!("{key} must name a prefix, e.g. 'commits/'"));
                    }
                    config.permanent_prefix = Some(p.to_string());
                }
                "max_consecutive" => {
                    config.max_consecutive = u32::try_from(whole("at least 1")?)
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| format!("{key} must be at least 1, not '{value}'"))?
                }
                "ignore_create" => {
                    config.ignore_create = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(format!("{key} must be true or false, not '{value}'")),
                    }
                }
                _ => {
                    let known: Vec<&str> = FAULT_OPTIONS.iter().map(|(_, k)| *k).collect();
                    return Err(format!("unknown option '{key}' (known: {})", known.join(", ")));
                }
            }
        }
        Ok(any.then_some(config))
    }

    /// The [`StoreOptions`] pairs of a specification such as
    /// `rate=0.2,latency_ms=2,seed=7,permanent=commits/`, checked.
    pub fn options_from_spec(spec: &str) -> Result<Vec<(String, String)>, String> {
        let mut pairs = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            let key = FAULT_OPTIONS
                .iter()
                .find(|(short, _)| *short == k.trim())
                .map(|(_, key)| *key)
                .ok_or_else(|| {
                    let keys: Vec<&str> = FAULT_OPTIONS.iter().map(|(s, _)| *s).collect();
                    format!("unknown key '{}' (keys: {})", k.trim(), keys.join(", "))
                })?;
            pairs.push((key.to_string(), v.trim().to_string()));
        }
        FaultConfig::from_options(&StoreOptions::new(pairs.clone()))?;
        Ok(pairs)
    }
}

/// Faults injected in this process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Transient failures of reads (get, head, list).
    pub reads: u64,
    /// Transient failures of writes (put, copy, rename, delete).
    pub writes: u64,
    /// Of those writes, the ones that failed after taking effect.
    pub after_write: u64,
    /// Failures of objects under the permanent prefix.
    pub permanent: u64,
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transient faults on reads, {} on writes ({} of them after the write took effect), {} permanent",
            self.reads, self.writes, self.after_write, self.permanent
        )
    }
}

static READS: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);
static AFTER_WRITE: AtomicU64 = AtomicU64::new(0);
static PERMANENT: AtomicU64 = AtomicU64::new(0);

/// The faults every [`FaultyStore`] of this process has injected.
pub fn injected() -> FaultCounts {
    FaultCounts {
        reads: READS.load(Ordering::Relaxed),
        writes: WRITES.load(Ordering::Relaxed),
        after_write: AFTER_WRITE.load(Ordering::Relaxed),
        permanent: PERMANENT.load(Ordering::Relaxed),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    List,
    Put,
    Copy,
    Rename,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Put => "put",
            Op::Copy => "copy",
            Op::Rename => "rename",
            Op::Delete => "delete",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Op::Put | Op::Copy | Op::Rename | Op::Delete)
    }
}

/// What happens to one operation.
enum Fault {
    None,
    /// Fail without doing it.
    Before(object_store::Error),
    /// Do it, then fail as if the answer was lost.
    After(object_store::Error),
}

#[derive(Default)]
struct Streak {
    calls: u64,
    consecutive: u32,
}

/// Decides each operation's fault; shared with the streams a store returns.
struct Decider {
    config: FaultConfig,
    root: Path,
    streaks: Mutex<HashMap<String, Streak>>,
}

/// A store that injects faults into another (module docs).
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    decider: Arc<Decider>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("config", &self.decider.config)
            .field("root", &self.decider.root)
            .finish()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected_error(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: message.into(),
    }
}

/// FNV-1a: a hash that is the same in every build (std's is not promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Decider {
    fn relative(&self, path: &Path) -> String {
        match path.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    fn permanent(&self, op: Op, path: &Path) -> Option<object_store::Error> {
        let prefix = self.config.permanent_prefix.as_deref()?;
        let rel = self.relative(path);
        if op == Op::List || !rel.starts_with(prefix) {
            return None;
        }
        PERMANENT.fetch_add(1, Ordering::Relaxed);
        Some(injected_error(format!(
            "injected permanent fault: {} of {rel} (WEIR_FAULTS permanent={prefix})",
            op.name()
        )))
    }

    /// The fault of one operation. `may_take_effect` says whether the
    /// operation can fail after taking effect (a plain write can; starting
    /// a multipart upload cannot, as the upload would leak).
    fn decide(&self, op: Op, path: &Path, may_take_effect: bool) -> Fault {
        if let Some(e) = self.permanent(op, path) {
            return Fault::Before(e);
        }
        if self.config.rate <= 0.0 {
            return Fault::None;
        }
        let key = format!("{}:{}", op.name(), path);
        let h = {
            let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
            let s = streaks.entry(key.clone()).or_default();
            let n = s.calls;
            s.calls += 1;
            let h = mix(self.config.seed ^ fnv1a(key.as_bytes()) ^ mix(n.wrapping_add(1)));
            let u = (h >> 11) as f64 / (1u64 << 53) as f64;
            if u >= self.config.rate || s.consecutive >= self.config.max_consecutive {
                s.consecutive = 0;
                return Fault::None;
            }
            s.consecutive += 1;
            h
        };
        let rel = self.relative(path);
        if op.writes() {
            if may_take_effect && h & 1 == 1 {
                // Counted by `lost_answer`, once the write did take effect.
                return Fault::After(injected_error(format!(
                    "injected transient fault: {} of {rel} took effect, but its answer was lost",
                    op.name()
                )));
            }
            WRITES.fetch_add(1, Ordering::Relaxed);
        } else {
            READS.fetch_add(1, Ordering::Relaxed);
        }
        Fault::Before(injected_error(format!(
            "injected transient fault: {} of {rel} failed",
            op.name()
        )))
    }

    async fn enter(&self, op: Op, path: &Path, may_take_effect: bool) -> Fault {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        self.decide(op, path, may_take_effect)
    }
}

/// Does `write`, then reports `lost` instead of its answer. A write that
/// fails by itself (deleting a missing object) returns its own error, and
/// no fault is counted: nothing was injected.
async fn lost_answer<T>(
    write: impl Future<Output = object_store::Result<T>>,
    lost: object_store::Error,
) -> object_store::Result<T> {
    write.await?;
    WRITES.fetch_add(1, Ordering::Relaxed);
    AFTER_WRITE.fetch_add(1, Ordering::Relaxed);
    Err(lost)
}

impl FaultyStore {
    /// `inner` with faults; `root` is the opened folder's prefix in the
    /// store, which `permanent_prefix` is relative to.
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig, root: Path) -> Self {
        Self {
            inner,
            decider: Arc::new(Decider {
                config,
                root,
                streaks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs a write as the fault says.
    async fn write<T>(
        &self,
        op: Op,
        path: &Path,
        also: Option<&Path>,
        write: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        if let Some(e) = also.and_then(|p| self.decider.permanent(op, p)) {
            return Err(e);
        }
        match self.decider.enter(op, path, true).await {
            Fault::None => write.await,
            Fault::Before(e) => Err(e),
            Fault::After(e) => lost_answer(write, e).await,
        }
    }

    async fn read(&self, op: Op, path: &Path) -> object_store::Result<()> {
        match self.decider.enter(op, path, false).await {
            Fault::None => Ok(()),
            Fault::Before(e) | Fault::After(e) => Err(e),
        }
    }

    /// A listing that first waits, then may fail before its first entry.
    fn faulty_listing(
        &self,
        prefix: Option<&Path>,
        listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let decider = Arc::clone(&self.decider);
        let at = prefix.cloned().unwrap_or_else(|| decider.root.clone());
        stream::once(async move {
            match decider.enter(Op::List, &at, false).await {
                Fault::None => listing,
                Fault::Before(e) | Fault::After(e) => stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.decider.config.ignore_create && matches!(opts.mode, PutMode::Create) {
            opts.mode = PutMode::Overwrite;
        }
        self.write(
            Op::Put,
            location,
            None,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // Starting an upload that then "fails" would leak it: fail before.
        match self.decider.enter(Op::Put, location, false).await {
            Fault::None => self.inner.put_multipart_opts(location, opts).await,
            Fault::Before(e) | Fault::After(e) => Err(e),
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.read(Op::Get, location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.read(Op::Get, location).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let decider = Arc::clone(&self.decider);
        locations
            .and_then(move |path| {
                let inner = Arc::clone(&inner);
                let decider = Arc::clone(&decider);
                async move {
                    match decider.enter(Op::Delete, &path, true).await {
                        Fault::None => inner.delete(&path).await?,
                        Fault::Before(e) => return Err(e),
                        Fault::After(e) => lost_answer(inner.delete(&path), e).await?,
                    }
                    Ok(path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        self.faulty_listing(prefix, listing)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = self.inner.list_with_offset(prefix, offset);
        self.faulty_listing(prefix, listing)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.read(Op::List, prefix.unwrap_or(&self.decider.root)).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.write(Op::Copy, from, Some(to), self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.write(
            Op::Rename,
            from,
            Some(to),
            self.inner.rename_opts(from, to, options),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use object_store::memory::InMemory;

    use super::*;
    use crate::Location;
    use crate::location::Create;
    use crate::retry::RetryPolicy;

    fn config(rate: f64, seed: u64) -> FaultConfig {
        FaultConfig {
            rate,
            seed,
            ..Default::default()
        }
    }

    /// Which of `n` gets of distinct objects fail.
    async fn failures(store: &FaultyStore, n: usize) -> Vec<usize> {
        let mut failed = Vec::new();
        for i in 0..n {
            if store
                .get(&Path::from(format!("o/{i}")))
                .await
                .is_err_and(|e| e.to_string().contains("injected"))
            {
                failed.push(i);
            }
        }
        failed
    }

    #[tokio::test]
    async fn the_same_seed_fails_the_same_operations_at_about_the_rate() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = |seed| FaultyStore::new(Arc::clone(&inner), config(0.2, seed), Path::default());
        let a = failures(&store(7), 2000).await;
        let b = failures(&store(7), 2000).await;
        let c = failures(&store(8), 2000).await;
        assert_eq!(a, b, "deterministic by seed");
        assert_ne!(a, c, "another seed, other failures");
        assert!((300..500).contains(&a.len()), "about 20% of 2000: {}", a.len());
    }

    #[tokio::test]
    async fn no_object_fails_more_than_max_consecutive_times_in_a_row() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = FaultyStore::new(
            inner,
            FaultConfig {
                rate: 1.0,
                max_consecutive: 2,
                ..Default::default()
            },
            Path::default(),
        );
        let path = Path::from("x");
        let outcomes: Vec<bool> = futures::future::join_all((0..6).map(|_| store.head(&path)))
            .await
            .iter()
            .map(|r| r.as_ref().is_err_and(|e| e.to_string().contains("injected")))
            .collect();
        // Two injected failures, then the real answer (NotFound), and again.
        assert_eq!(outcomes, [true, true, false, true, true, false]);
    }

    #[tokio::test]
    async fn a_write_may_fail_after_taking_effect() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = FaultyStore::new(Arc::clone(&inner), config(1.0, 1), Path::default());
        let mut after = 0;
        for i in 0..40 {
            let path = Path::from(format!("w/{i}"));
            let err = store
                .put(&path, PutPayload::from_static(b"x"))
                .await
                .unwrap_err()
                .to_string();
            let written = inner.get(&path).await.is_ok();
            assert_eq!(written, err.contains("took effect"), "{err}");
            after += usize::from(written);
        }
        assert!((5..35).contains(&after), "some before, some after: {after}");
    }

    #[tokio::test]
    async fn the_permanent_prefix_is_relative_to_the_opened_folder_and_spares_listings() {
        let options = StoreOptions::new([
            ("weir.fault_permanent_prefix", "commits/"),
            ("weir.retry_base_ms", "1"),
        ]);
        let loc = Location::open("memory://faults-permanent/q/ck", &options, Create::Yes).unwrap();
        loc.put("offsets/1.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let err = loc
            .put_if_absent("commits/1.json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memory://faults-permanent/q/ck/commits/1.json")
                && err.contains("gave up after 5 attempts")
                && err.contains("injected permanent fault"),
            "{err}"
        );
        assert!(loc.list("commits").await.unwrap().is_empty());
        let before = injected().permanent;
        assert!(loc.get("commits/1.json").await.is_err());
        assert_eq!(injected().permanent - before, 5, "every attempt fails");
    }

    #[tokio::test]
    async fn retries_get_through_heavy_transient_faults_with_every_byte_right() {
        let options = StoreOptions::new([
            ("weir.fault_rate", "0.5"),
            ("weir.fault_seed", "3"),
            ("weir.fault_max_consecutive", "3"),
            ("weir.retry_base_ms", "1"),
        ]);
        let loc = Location::open("memory://faults-heavy/ck", &options, Create::Yes).unwrap();
        assert_eq!(loc.retry_policy().attempts, RetryPolicy::default().attempts);
        for i in 0..40 {
            loc.put_if_absent(
                &format!("commits/{i:03}.json"),
                Bytes::from(format!("commit {i}")),
            )
            .await
            .unwrap();
        }
        for i in 0..40 {
            let name = format!("commits/{i:03}.json");
            assert_eq!(
                loc.get_required(&name).await.unwrap(),
                Bytes::from(format!("commit {i}"))
            );
            assert!(matches!(
                loc.put_if_absent(&name, Bytes::from_static(b"again")).await,
                Err(crate::Error::AlreadyExists { .. })
            ));
        }
        assert_eq!(loc.list("commits").await.unwrap().len(), 40);
        loc.rename("commits/000.json", "moved.json").await.unwrap();
        loc.delete("moved.json").await.unwrap();
        assert_eq!(loc.list("").await.unwrap().len(), 39);
    }

    #[test]
    fn specifications_map_to_options_and_mistakes_are_named() {
        let pairs =
            FaultConfig::options_from_spec("rate=0.2, latency_ms=2,seed=7,permanent=commits/").unwrap();
        assert_eq!(
            pairs,
            [
                ("weir.fault_rate".to_string(), "0.2".to_string()),
                ("weir.fault_latency_ms".into(), "2".into()),
                ("weir.fault_seed".into(), "7".into()),
                ("weir.fault_permanent_prefix".into(), "commits/".into()),
            ]
        );
        let config = FaultConfig::from_options(&StoreOptions::new(pairs))
            .unwrap()
            .unwrap();
        assert_eq!(config.latency, Duration::from_millis(2));
        assert_eq!(config.permanent_prefix.as_deref(), Some("commits/"));
        assert_eq!(FaultConfig::from_options(&StoreOptions::default()).unwrap(), None);

        for (spec, needle) in [
            ("rate", "expected key=value"),
            ("rat=0.2", "unknown key 'rat'"),
            ("rate=1.5", "from 0 to 1"),
            ("latency_ms=-1", "weir.fault_latency_ms"),
            ("ignore_create=maybe", "true or false"),
            ("max_consecutive=0", "at least 1"),
        ] {
            let err = FaultConfig::options_from_spec(spec).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
