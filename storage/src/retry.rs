//! Retrying store operations that failed for a reason that can pass.
//!
//! Object stores fail now and then: a connection resets, a server answers
//! 503, a request times out. `object_store` retries some HTTP requests
//! itself, but not all (a create-if-absent is not idempotent, so it is not
//! retried there), and a local or wrapped store retries nothing. One failed
//! request must not stop a query that would otherwise run for days, so every
//! operation Weir makes through a [`Location`](crate::Location) (and through
//! the store handle it gives to readers) is retried here, with exponential
//! backoff and jitter:
//!
//! ```text
//! attempt 1 ── fails (transient) ── sleep ~base ──┐
//! attempt 2 ── fails (transient) ── sleep ~2·base ─┤   each sleep: d/2 + random(0..=d/2),
//! attempt 3 ── fails (transient) ── sleep ~4·base ─┤   d = min(base·2^(n-1), cap)
//! ...                                              │
//! attempt N ── fails ── error: "gave up after N attempts (elapsed): <last error>"
//! ```
//!
//! Only errors that can be transient are retried ([`is_transient`]): a
//! missing object, an object that already exists, a failed precondition, an
//! unsupported operation, a bad path or a refused credential is the answer,
//! not an accident, and retrying it would only delay the error.
//!
//! # Creating an object that must be created once
//!
//! A create-if-absent (`PutMode::Create`) whose response was lost is
//! ambiguous: the object may have been written. Its retry then finds the
//! object already there. That is our own write only if the object holds
//! exactly the bytes we wrote, so [`create`] reads it back: the same bytes
//! are success, other bytes are [`object_store::Error::AlreadyExists`]
//! (another writer won). It reads back even when "already exists" is the
//! first answer it gets: the client below may have retried on its own
//! (`object_store`'s S3 client retries a 5xx answer to any request, a
//! create included), so a first answer can already be a retry's. Everything
//! Weir creates carries something unique to its writer (a commit's
//! timestamp, a lease's owner id, a query id, a probe's random id), so two
//! writers do not write the same bytes by accident; if they ever did, the
//! outcome would be the same as the writer that won.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// How often and how patiently an operation is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retries).
    pub attempts: u32,
    /// The backoff before the first retry; it doubles for each retry after.
    pub base: Duration,
    /// The longest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, backoffs of about 50, 100, 200 and 400 ms (at most
    /// 0.75 s of waiting in all), capped at 2 s for larger settings.
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

/// The option keys of a retry policy, in [`StoreOptions`].
pub const RETRY_OPTIONS: [&str; 3] = ["weir.retry_attempts", "weir.retry_base_ms", "weir.retry_max_ms"];

impl RetryPolicy {
    /// No retries: every error is returned as it comes.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The policy the options set (`weir.retry_attempts`,
    /// `weir.retry_base_ms`, `weir.retry_max_ms`), the default otherwise.
    pub fn from_options(options: &StoreOptions) -> Result<Self, String> {
        let mut policy = Self::default();
        let number = |key: &str| -> Result<Option<u64>, String> {
            options
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{key} must be a whole number, not '{v}'"))
                })
                .transpose()
        };
        if let Some(n) = number("weir.retry_attempts")? {
            if n == 0 || n > 100 {
                return Err(format!("weir.retry_attempts must be between 1 and 100, not {n}"));
            }
            policy.attempts = n as u32;
        }
        if let Some(ms) = number("weir.retry_base_ms")? {
            policy.base = Duration::from_millis(ms);
        }
        if let Some(ms) = number("weir.retry_max_ms")? {
            policy.cap = Duration::from_millis(ms);
        }
        Ok(policy)
    }

    /// The backoff before retry number `retry` (1 for the first retry):
    /// half the exponential delay, plus a random part of the other half, so
    /// that writers who failed together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX));
        let d = exp.min(self.cap);
        let half = d / 2;
        let spread = half.as_nanos() as u64;
        let jitter = if spread == 0 { 0 } else { random() % (spread + 1) };
        half + Duration::from_nanos(jitter)
    }
}

/// A random number, without a dependency: std's hasher keys are random per
/// process and per hasher.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Whether an error may go away if the operation is tried again. A local
/// folder's refusal (no permission, a read-only file system) is an answer,
/// as a store's refused credentials are: the local store reports it as a
/// generic error, so its cause is looked at.
pub fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error::*;
    if no_such_bucket(e) {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            )
        {
            return false;
        }
        cause = c.source();
    }
    !matches!(
        e,
        NotFound { .. }
            | AlreadyExists { .. }
            | Precondition { .. }
            | NotModified { .. }
            | NotSupported { .. }
            | NotImplemented { .. }
            | InvalidPath { .. }
            | PermissionDenied { .. }
            | Unauthenticated { .. }
            | UnknownConfigurationKey { .. }
    )
}

/// Retries made and operations given up on, in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Operations tried again after a transient error.
    pub retries: u64,
    /// Operations that failed on every attempt.
    pub gave_up: u64,
    /// Creates that found the object already there and read it back: it
    /// held our bytes (an earlier attempt took effect, its answer lost).
    pub creates_confirmed: u64,
}

impl fmt::Display for RetryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} retries, {} gave up, {} creates found done by reading back",
            self.retries, self.gave_up, self.creates_confirmed
        )
    }
}

static RETRIES: AtomicU64 = AtomicU64::new(0);
static GAVE_UP: AtomicU64 = AtomicU64::new(0);
static CONFIRMED: AtomicU64 = AtomicU64::new(0);

/// What retrying has done in this process so far (for reports and tests).
pub fn stats() -> RetryStats {
    RetryStats {
        retries: RETRIES.load(Ordering::Relaxed),
        gave_up: GAVE_UP.load(Ordering::Relaxed),
        creates_confirmed: CONFIRMED.load(Ordering::Relaxed),
    }
}

/// The last error of an operation that failed on every attempt.
#[derive(Debug)]
struct GaveUp {
    attempts: u32,
    elapsed: Duration,
    last: object_store::Error,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempts ({:.1} s): {}",
            self.attempts,
            self.elapsed.as_secs_f64(),
            self.last
        )
    }
}

// No `source()`: the message already ends with the last error, and a
// printed chain of causes would repeat it.
impl std::error::Error for GaveUp {}

/// A store error as one line for messages: an operation that gave up reads
/// "gave up after N attempts (T s): `<the last error>`", without the
/// `Generic retry error:` that wrapping it in an `object_store::Error` adds.
pub fn describe(e: &object_store::Error) -> String {
    if no_such_bucket(e) {
        return "the bucket does not exist (the store answered NoSuchBucket)".into();
    }
    match e {
        object_store::Error::Generic {
            store: "retry",
            source,
        } => match source.downcast_ref::<GaveUp>() {
            Some(gave_up) => with_root_cause(gave_up.to_string(), &gave_up.last),
            None => with_root_cause(e.to_string(), e),
        },
        _ => with_root_cause(e.to_string(), e),
    }
}

/// `message`, and the deepest cause of `e` when the message does not
/// already say it: the S3 client's "HTTP error: error sending request"
/// hides what went wrong ("Connection refused", a DNS failure) in its
/// chain of causes.
fn with_root_cause(message: String, e: &(dyn std::error::Error + 'static)) -> String {
    let mut root: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let cause = root.to_string();
    if cause.is_empty() || message.contains(&cause) {
        message
    } else {
        format!("{message} (cause: {cause})")
    }
}

/// Whether the store answered that the bucket does not exist (S3's
/// `NoSuchBucket`, which the S3 client reports as a generic error with the
/// answer's XML): an answer, not retried, and said plainly.
fn no_such_bucket(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("<Code>NoSuchBucket</Code>") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The retry loop's bookkeeping.
struct Attempts<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempt: u32,
    /// Whether [`SLOW_NOTICE`] was told of this operation.
    told: bool,
}

/// Where a retry of a store operation that has been failing for
/// [`SLOW_AFTER_MS`] or more is told, once per operation (`weir run` prints
/// it, scrubbed of secrets): a store that hangs rather than refuses (each
/// attempt waiting out the client's 30 s timeout) otherwise leaves a job
/// silent for minutes before its error.
static SLOW_NOTICE: std::sync::OnceLock<SlowNotice> = std::sync::OnceLock::new();

/// What a slow retry is told to.
pub type SlowNotice = Box<dyn Fn(&str) + Send + Sync>;

/// How long (ms) an operation fails before its retries are told: 10 s
/// (lowered by a test).
static SLOW_AFTER_MS: AtomicU64 = AtomicU64::new(10_000);

/// Sets where slow retries are told (see [`SLOW_NOTICE`]); the first call
/// wins.
pub fn set_slow_notice(notice: SlowNotice) {
    let _ = SLOW_NOTICE.set(notice);
}

impl<'a> Attempts<'a> {
    fn new(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            started: Instant::now(),
            attempt: 1,
            told: false,
        }
    }

    /// After a failed attempt: `Ok` once it has waited and the operation
    /// should be tried again, `Err` with the error to return.
    async fn failed(&mut self, e: object_store::Error) -> Result<(), object_store::Error> {
        if !is_transient(&e) {
            return Err(e);
        }
        if self.attempt >= self.policy.attempts {
            if self.policy.attempts == 1 {
                return Err(e);
            }
            GAVE_UP.fetch_add(1, Ordering::Relaxed);
            return Err(object_store::Error::Generic {
                store: "retry",
                source: Box::new(GaveUp {
                    attempts: self.attempt,
                    elapsed: self.started.elapsed(),
                    last: e,
                }),
            });
        }
        RETRIES.fetch_add(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        if !self.told
            && elapsed >= Duration::from_millis(SLOW_AFTER_MS.load(Ordering::Relaxed))
            && let Some(notice) = SLOW_NOTICE.get()
        {
            self.told = true;
            notice(&format!(
                "the object store is slow or unreachable: retrying (attempt {} of {}, {:.0} s so far): {e}",
                self.attempt + 1,
                self.policy.attempts,
                elapsed.as_secs_f64()
            ));
        }
        tokio::time::sleep(self.policy.backoff(self.attempt)).await;
        self.attempt += 1;
        Ok(())
    }
}

/// Runs `op` until it succeeds, fails for good, or runs out of attempts.
pub async fn run<T, F, Fut>(policy: &RetryPolicy, mut op: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut attempts = Attempts::new(policy);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => attempts.failed(e).await?,
        }
    }
}

/// Creates an object if absent, retrying; "already exists" is resolved by
/// reading the object back: our bytes mean an earlier attempt (ours, or the
/// client's own retry) took effect (module docs).
pub async fn create(
    store: &dyn ObjectStore,
    policy: &RetryPolicy,
    path: &Path,
    payload: PutPayload,
    opts: PutOptions,
) -> object_store::Result<PutResult> {
    let mut attempts = Attempts::new(policy);
    loop {
        match store.put_opts(path, payload.clone(), opts.clone()).await {
            Ok(r) => return Ok(r),
            Err(e @ object_store::Error::AlreadyExists { .. }) => {
                let (meta, found) = run(policy, || async {
                    let r = store.get(path).await?;
                    let meta = r.meta.clone();
                    Ok((meta, r.bytes().await?))
                })
                .await?;
                if same_bytes(&payload, &found) {
                    CONFIRMED.fetch_add(1, Ordering::Relaxed);
                    return Ok(PutResult {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    });
                }
                return Err(e);
            }
            // A transient failure: the write may have happened though its
            // answer was lost; a retry that finds the object reads it back.
            Err(e) => attempts.failed(e).await?,
        }
    }
}

fn same_bytes(payload: &PutPayload, found: &Bytes) -> bool {
    if payload.content_length() != found.len() {
        return false;
    }
    let mut at = 0;
    for chunk in payload.iter() {
        if found[at..at + chunk.len()] != chunk[..] {
            return false;
        }
        at += chunk.len();
    }
    true
}

/// A store whose every operation is retried as this module describes: what
/// [`Location::store`](crate::Location::store) hands to readers that work on
/// a raw `ObjectStore` (Parquet readers, DataFusion's listing tables).
///
/// A listing is read whole on each attempt (a stream cannot resume), then
/// handed out; reading an object's body after `get_opts` returned is not
/// retried here (use `get_range`, or [`Location::get`](crate::Location::get),
/// which retries the whole read). Parts of a multipart upload are the
/// caller's to retry.
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    /// `inner`, retried with `policy`.
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn listing(
        &self,
        list: impl Fn() -> BoxStream<'static, object_store::Result<ObjectMeta>> + Send + Sync + 'static,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let policy = self.policy;
        stream::once(async move { run(&policy, || list().try_collect::<Vec<_>>()).await })
            .map_ok(|all| stream::iter(all.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Create) {
            return create(self.inner.as_ref(), &self.policy, location, payload, opts).await;
        }
        run(&self.policy, || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        run(&self.policy, || {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        run(&self.policy, || self.inner.get_opts(location, options.clone())).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        run(&self.policy, || self.inner.get_ranges(location, ranges)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let policy = self.policy;
        locations
            .and_then(move |path| {
                let inner = Arc::clone(&inner);
                async move {
                    run(&policy, || inner.delete(&path)).await?;
                    Ok(path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        self.listing(move || inner.list(prefix.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        let offset = offset.clone();
        self.listing(move || inner.list_with_offset(prefix.as_ref(), &offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        run(&self.policy, || self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        run(&self.policy, || self.inner.copy_opts(from, to, options.clone())).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        run(&self.policy, || self.inner.rename_opts(from, to, options.clone())).await
    }
}

#[cfg(test)]
mod tests {

    /// A local folder that refuses (no permission, read-only) is not
    /// retried: the local store wraps the I/O error in a generic one.
    #[test]
    fn a_refusal_of_the_local_file_system_is_not_transient() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "unable to create file: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let generic = |kind: std::io::ErrorKind| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(Wrapper(std::io::Error::from(kind))),
        };
        assert!(!is_transient(&generic(std::io::ErrorKind::PermissionDenied)));
        assert!(!is_transient(&generic(std::io::ErrorKind::ReadOnlyFilesystem)));
        assert!(is_transient(&generic(std::io::ErrorKind::ConnectionReset)));
        assert!(is_transient(&generic(std::io::ErrorKind::Interrupted)));
    }

    /// S3's answer that the bucket does not exist is not retried, and is
    /// said in words, not as the answer's XML.
    #[test]
    fn no_such_bucket_is_an_answer() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing list request: Client error with status 404 Not Found: \
                     <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><BucketName>b</BucketName></Error>"
                .into(),
        };
        assert!(!is_transient(&e));
        assert_eq!(
            describe(&e),
            "the bucket does not exist (the store answered NoSuchBucket)"
        );
    }
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::testing::{Flaky, Step, transient};
    use crate::{Error, Location};

    fn policy(attempts: u32, base_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempts,
            base: Duration::from_millis(base_ms),
            cap: Duration::from_secs(1),
        }
    }

    fn location(store: &Arc<Flaky>, p: RetryPolicy) -> Location {
        Location::from_store(Arc::clone(store) as _, "ck", "memory://flaky/ck").with_retry_policy(p)
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let p = policy(10, 100);
        for _ in 0..50 {
            for (retry, d) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
                let b = p.backoff(retry);
                let d = Duration::from_millis(d);
                assert!(
                    b >= d / 2 && b <= d,
                    "retry {retry}: {b:?} not in [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
        // Jitter: the waits of writers that failed together differ.
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| p.backoff(3)).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[tokio::test]
    async fn transient_write_failures_are_retried_with_growing_waits() {
        let store = Arc::new(Flaky::new());
        store.script(
            "put",
            (0..3).map(|i| Step::Before(transient(&format!("put {i}")))),
        );
        let loc = location(&store, policy(5, 20));
        loc.put("state/x.parquet", Bytes::from_static(b"v1"))
            .await
            .unwrap();
        let calls = store.calls("put");
        assert_eq!(calls.len(), 4, "three failures, then success");
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        // Each wait is at least half the doubling delay: 10, 20, 40 ms.
        for (gap, min) in gaps.iter().zip([10, 20, 40]) {
            assert!(*gap >= Duration::from_millis(min), "{gaps:?}");
        }
        assert_eq!(&loc.get("state/x.parquet").await.unwrap().unwrap()[..], b"v1");
    }

    #[tokio::test]
    async fn reads_and_listings_are_retried_whole() {
        let store = Arc::new(Flaky::new());
        let loc = location(&store, policy(5, 1));
        for i in 0..3 {
            loc.put(&format!("offsets/{i}.json"), Bytes::from(format!("{i}")))
                .await
                .unwrap();
        }
        store.script(
            "get",
            [Step::Before(transient("get")), Step::Before(transient("get"))],
        );
        assert_eq!(&loc.get_required("offsets/1.json").await.unwrap()[..], b"1");
        assert_eq!(store.calls("get").len(), 3);

        // A listing that fails midway is listed again from the start: no
        // entry is lost or doubled.
        store.script("list", [Step::Before(transient("list"))]);
        let names: Vec<String> = loc
            .list("offsets")
            .await
            .unwrap()
            .iter()
            .map(|m| loc.relative(&m.location))
            .collect();
        assert_eq!(names, ["offsets/0.json", "offsets/1.json", "offsets/2.json"]);
        assert_eq!(store.calls("list").len(), 2);
    }

    /// An operation failing for longer than the threshold is told once,
    /// with its attempt and error; a quick failure is not told.
    #[tokio::test]
    async fn slow_retries_are_told_once() {
        static TOLD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        set_slow_notice(Box::new(|m: &str| TOLD.lock().unwrap().push(m.to_string())));
        SLOW_AFTER_MS.store(30, Ordering::Relaxed);
        let timeout = || object_store::Error::Generic {
            store: "test",
            source: "operation timed out (slow_retries_are_told_once)".into(),
        };
        let r: object_store::Result<()> = run(&policy(4, 1), || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(timeout())
        })
        .await;
        assert!(r.is_err());
        SLOW_AFTER_MS.store(10_000, Ordering::Relaxed);
        // Other tests retry meanwhile (the notice and the threshold are
        // the process's): only this one's messages count.
        let told: Vec<String> = TOLD
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("slow_retries_are_told_once"))
            .cloned()
            .collect();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].contains("slow or unreachable: retrying (attempt ") && told[0].contains(" of 4, "),
            "{told:?}"
        );
    }

    #[tokio::test]
    async fn answers_that_are_not_accidents_are_not_retried() {
        let store = Arc::new(Flaky::new());
        let loc = location(&store, policy(5, 1));
        assert_eq!(loc.get("missing.json").await.unwrap(), None);
        assert_eq!(store.calls("get").len(), 1, "NotFound is an answer");

        store.script(
            "put",
            [Step::Before(object_store::Error::PermissionDenied {
                path: "ck/x".into(),
                source: "access denied".into(),
            })],
        );
        let err = loc.put("x", Bytes::from_static(b"1")).await.unwrap_err();
        assert!(err.to_string().contains("memory://flaky/ck/x"), "{err}");
        assert_eq!(store.calls("put").len(), 1, "a refused credential is an answer");
    }

    #[tokio::test]
    async fn a_failure_on_every_attempt_gives_up_naming_the_object() {
        let store = Arc::new(Flaky::new());
        store.script("put", (0..10).map(|_| Step::Before(transient("put"))));
        let loc = location(&store, policy(4, 1));
        let err = loc
            .put_if_absent("commits/00000000000000000003.json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("creating memory://flaky/ck/commits/00000000000000000003.json")
                && text.contains("gave up after 4 attempts")
                && text.contains("connection reset"),
            "{text}"
        );
        assert!(matches!(err, Error::Store { .. }));
        // One line, each cause once: printing the chain of causes (as
        // `weir` does) adds nothing to repeat.
        assert_eq!(text.matches("gave up").count(), 1, "{text}");
        assert_eq!(text.matches("connection reset").count(), 1, "{text}");
        assert!(std::error::Error::source(&err).is_none());
        assert_eq!(store.calls("put").len(), 4);
    }

    #[tokio::test]
    async fn an_ambiguous_create_that_took_effect_is_a_success() {
        let store = Arc::new(Flaky::new());
        // The create is written, but its answer is lost; the retry finds it.
        store.script("put", [Step::After(transient("put"))]);
        let loc = location(&store, policy(5, 1));
        let before = stats().creates_confirmed;
        loc.put_if_absent("commits/1.json", Bytes::from_static(b"ours"))
            .await
            .unwrap();
        assert_eq!(store.calls("put").len(), 2);
        assert_eq!(store.calls("get").len(), 1, "read back once");
        assert!(stats().creates_confirmed > before);
        assert_eq!(&loc.get("commits/1.json").await.unwrap().unwrap()[..], b"ours");
    }

    #[tokio::test]
    async fn an_ambiguous_create_that_finds_other_bytes_lost_the_race() {
        let store = Arc::new(Flaky::new());
        // Our create fails before reaching the store; meanwhile another
        // writer creates the object; our retry finds theirs.
        store.script("put", [Step::Before(transient("put")), Step::Race(b"theirs")]);
        let loc = location(&store, policy(5, 1));
        let err = loc
            .put_if_absent("commits/1.json", Bytes::from_static(b"ours"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::AlreadyExists { url } if url == "memory://flaky/ck/commits/1.json"),
            "{err}"
        );
        assert_eq!(&loc.get("commits/1.json").await.unwrap().unwrap()[..], b"theirs");
    }

    #[tokio::test]
    async fn a_create_whose_first_answer_is_already_exists_still_reads_back() {
        // Another writer's object: refused, after one read.
        let store = Arc::new(Flaky::new());
        let loc = location(&store, policy(5, 1));
        loc.put("commits/1.json", Bytes::from_static(b"theirs"))
            .await
            .unwrap();
        let err = loc
            .put_if_absent("commits/1.json", Bytes::from_static(b"ours"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(
            store.calls("put").len(),
            2,
            "the setup, then one create: a lost race is not retried"
        );
        assert_eq!(store.calls("get").len(), 1);

        // Our own bytes, written by a retry the client below made without
        // telling us (its first attempt's answer lost): a success.
        loc.put("commits/2.json", Bytes::from_static(b"ours"))
            .await
            .unwrap();
        loc.put_if_absent("commits/2.json", Bytes::from_static(b"ours"))
            .await
            .unwrap();
        assert_eq!(store.calls("get").len(), 2);
    }

    #[tokio::test]
    async fn the_store_handle_given_to_readers_retries_too() {
        let store = Arc::new(Flaky::new());
        let loc = location(&store, policy(5, 1));
        loc.put("in/a.parquet", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        store.script(
            "get",
            [Step::Before(transient("get")), Step::Before(transient("get"))],
        );
        let path = Path::from("ck/in/a.parquet");
        let got = loc.store().get_range(&path, 2..5).await.unwrap();
        assert_eq!(&got[..], b"234");
        assert_eq!(store.calls("get").len(), 3);

        // And a create through it is resolved like a location's.
        store.script("put", [Step::After(transient("put"))]);
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        loc.store()
            .put_opts(&Path::from("ck/c.json"), PutPayload::from_static(b"c"), opts)
            .await
            .unwrap();

        store.script("list", [Step::Before(transient("list"))]);
        let listed: Vec<_> =
            futures::TryStreamExt::try_collect::<Vec<_>>(loc.store().list(Some(&Path::from("ck"))))
                .await
                .unwrap();
        assert_eq!(listed.len(), 2);
    }

    #[test]
    fn policies_come_from_options_and_bad_values_are_named() {
        let p = RetryPolicy::from_options(&StoreOptions::new([
            ("weir.retry_attempts", "3"),
            ("weir.retry_base_ms", "10"),
        ]))
        .unwrap();
        assert_eq!((p.attempts, p.base), (3, Duration::from_millis(10)));
        let err = RetryPolicy::from_options(&StoreOptions::new([("weir.retry_attempts", "0")])).unwrap_err();
        assert!(err.contains("weir.retry_attempts"), "{err}");
        let err =
            RetryPolicy::from_options(&StoreOptions::new([("weir.retry_base_ms", "soon")])).unwrap_err();
        assert!(err.contains("'soon'"), "{err}");
    }
}
