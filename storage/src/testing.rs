//! Test stores with scripted behaviour, for the retry and create-if-absent
//! tests: each operation kind takes its next scripted failure, if any, and
//! every call is logged with its time, so a test can count attempts and
//! measure backoff.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// What one scripted call does instead of (or besides) the operation.
pub enum Step {
    /// Do it, as if unscripted (to script a later call).
    Pass,
    /// Fail without doing it.
    Before(object_store::Error),
    /// Do it, then fail.
    After(object_store::Error),
    /// Before doing it, another writer puts these bytes at the same path.
    Race(&'static [u8]),
}

/// A transient-looking error.
pub fn transient(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Flaky",
        source: format!("connection reset during {what}").into(),
    }
}

/// An in-memory store that follows a script.
pub struct Flaky {
    pub inner: Arc<InMemory>,
    script: Mutex<HashMap<&'static str, VecDeque<Step>>>,
    calls: Mutex<Vec<(&'static str, Instant)>>,
    /// Turn create-if-absent into overwrite (a store without conditional writes).
    pub ignores_create: bool,
    /// Refuse create-if-absent as not implemented.
    pub no_create: bool,
}

impl Flaky {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(InMemory::new()),
            script: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            ignores_create: false,
            no_create: false,
        }
    }

    /// The next calls of `op` (`put`, `get`, `list`, `delete`, `copy`) do these.
    pub fn script(&self, op: &'static str, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().unwrap().entry(op).or_default().extend(steps);
    }

    /// The times of the calls of `op`.
    pub fn calls(&self, op: &str) -> Vec<Instant> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, t)| *t)
            .collect()
    }

    fn next(&self, op: &'static str) -> Option<Step> {
        self.calls.lock().unwrap().push((op, Instant::now()));
        self.script.lock().unwrap().get_mut(op)?.pop_front()
    }

    async fn follow<T>(
        &self,
        op: &'static str,
        path: &Path,
        run: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        match self.next(op) {
            None | Some(Step::Pass) => run.await,
            Some(Step::Before(e)) => Err(e),
            Some(Step::After(e)) => {
                run.await?;
                Err(e)
            }
            Some(Step::Race(bytes)) => {
                self.inner.put(path, PutPayload::from_static(bytes)).await?;
                run.await
            }
        }
    }
}

impl fmt::Debug for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky")
    }
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky")
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Create) {
            if self.no_create {
                self.next("put");
                return Err(object_store::Error::NotImplemented {
                    operation: "put_opts with PutMode::Create".into(),
                    implementer: "Flaky".into(),
                });
            }
            if self.ignores_create {
                opts.mode = PutMode::Overwrite;
            }
        }
        self.follow("put", location, self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.follow("get", location, self.inner.get_opts(location, options))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let step = self.next("delete");
        match step {
            Some(Step::Before(e)) => futures::stream::once(async move { Err(e) }).boxed(),
            _ => self.inner.delete_stream(locations),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.next("list") {
            Some(Step::Before(e)) => {
                // Some entries, then the failure: a listing cut off midway.
                let first = self.inner.list(prefix).take(1);
                first.chain(futures::stream::once(async move { Err(e) })).boxed()
            }
            _ => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.follow("copy", to, self.inner.copy_opts(from, to, options))
            .await
    }
}
