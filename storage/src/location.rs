//! A [`Location`] is a folder on some object store: a local directory, an S3
//! prefix, or a named in-memory store (for tests). Every path Weir reads or
//! writes is a location plus a relative name.
//!
//! Every operation through a location is retried when it fails for a reason
//! that can pass ([`crate::retry`]), and so is every operation through the
//! store handle it gives out ([`Location::store`]). When the options ask for
//! it, the store is first wrapped in a [`FaultyStore`] that injects faults
//! (tests). A checkpoint's location is checked once per process and store
//! for the one guarantee Weir cannot do without:
//! [`Location::verify_create_if_absent`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::faults::{FaultConfig, FaultyStore};
pub use crate::options::StoreOptions;
use crate::options::build_s3;
use crate::retry::{self, RetryPolicy, RetryingStore};
use crate::{Error, Result};

/// Named in-memory stores, so that `memory://name/...` means the same store
/// everywhere in one process.
static MEMORY_STORES: LazyLock<Mutex<BTreeMap<String, Arc<InMemory>>>> = LazyLock::new(Default::default);

/// Stores whose create-if-absent has been checked in this process.
static VERIFIED_CREATE: LazyLock<Mutex<BTreeSet<String>>> = LazyLock::new(Default::default);

/// A folder on an object store.
#[derive(Clone)]
pub struct Location {
    /// The store, its operations retried: what [`Location::store`] gives out.
    store: Arc<dyn ObjectStore>,
    /// The store without retries (with faults, when injected): what this
    /// location's own methods retry around whole operations.
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    prefix: Path,
    url: String,
    /// Identifies the store (scheme, bucket or root, options) for checks
    /// made once per store.
    store_id: String,
    /// What a local folder's store wrote, for [`Location::sync`] (`None`:
    /// a store whose writes are durable when they return, as S3's are).
    local_root: Option<Arc<crate::durable::Written>>,
}

/// The file a local write's temporary (`<name>#<n>`) was to become.
pub fn temporary_of(name: &str) -> Option<&str> {
    name.rsplit_once('#')
        .filter(|(base, n)| !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map(|(base, _)| base)
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Whether opening a local location may create its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// The directory must exist (sources).
    No,
    /// Create the directory when missing (checkpoints, sinks).
    Yes,
}

/// Refuses a URL with credentials in it (`s3://user:password@bucket/`,
/// `file://user:password@localhost/...`): S3 takes no credentials in its
/// URLs (they would be read as part of the bucket's name), a local folder
/// needs none (they became part of its name), and a URL is printed and
/// kept in checkpoints. The error does not show them. A bucket's or
/// host's name has no `@` and no `:`; a password may hold a `/` (as AWS
/// secret keys do), which ends what looks like the bucket.
pub fn refuse_credentials(location: &str) -> Result<()> {
    let Some((scheme, rest)) = location.split_once("://") else {
        return Ok(());
    };
    let host = rest.split('/').next().unwrap_or(rest);
    if let Some(at) = rest.rfind('@')
        && (host.contains('@') || host.contains(':'))
    {
        let how = match scheme {
            "s3" | "s3a" => {
                "give them as the table's 's3.access_key_id' and 's3.secret_access_key' options, or in \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            }
            _ => "it needs none",
        };
        return Err(Error::InvalidLocation {
            location: format!("{scheme}://***@{}", &rest[at + 1..]),
            reason: format!("a {scheme}:// URL cannot carry credentials (user:password@); {how}"),
        });
    }
    Ok(())
}

/// The local path a location names, when it is local: a path without a
/// scheme as it is, and `file:///abs`, `file://localhost/abs` (RFC 8089)
/// and `file:/abs` as `/abs`. `None` for other stores, and for a
/// `file://` URL naming another host, which [`Location::open`] refuses.
pub fn local_path(location: &str) -> Option<&str> {
    if let Some((scheme, rest)) = location.split_once("://") {
        if !scheme.eq_ignore_ascii_case("file") {
            return None;
        }
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        return rest.starts_with('/').then_some(rest);
    }
    match location.split_once(":/") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
            Some(&location[location.len() - rest.len() - 1..])
        }
        _ => Some(location),
    }
}

/// Schemes whose URL written with one slash (`s3:/bucket/`) is a typo, not
/// a local folder named `s3:`.
const SCHEMES: [&str; 9] = ["s3", "s3a", "memory", "gs", "az", "abfs", "http", "https", "hdfs"];

impl Location {
    /// Opens a location given as a local path (relative to the current
    /// directory) or a URL: `file:///abs/path`, `s3://bucket/prefix`,
    /// `memory://name/prefix`.
    pub fn open(location: &str, options: &StoreOptions, create: Create) -> Result<Location> {
        let invalid = |reason: String| Error::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if location.trim().is_empty() {
            return Err(invalid("the path is empty".into()));
        }
        options.check_weir_keys().map_err(&invalid)?;
        let policy = RetryPolicy::from_options(options).map_err(&invalid)?;
        let faults = FaultConfig::from_options(options).map_err(&invalid)?;
        let mut local_root = None;
        refuse_credentials(location)?;
        if !location.contains("://")
            && let Some((scheme, _)) = location.split_once(":/")
            && SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Err(Error::InvalidLocation {
                location: format!("{scheme}:/..."),
                reason: format!(
                    "a '{scheme}:/' URL lacks a slash: write {scheme}://... (a local folder named '{scheme}:' would be made instead)"
                ),
            });
        }
        let (store, prefix, url, root): (Arc<dyn ObjectStore>, Path, String, String) = match location
            .split_once("://")
        {
            // `file://localhost/abs` and `file:/abs` are `file:///abs`
            // (RFC 8089); they were read as relative folders.
            None => Self::open_local(local_path(location).unwrap_or(location), create, &mut local_root)?,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("file") => match local_path(location) {
                Some(path) => Self::open_local(path, create, &mut local_root)?,
                None => {
                    let host = location["file://".len()..].split('/').next().unwrap_or_default();
                    return Err(invalid(format!(
                        "a file:// URL names a folder on this machine: file:///abs/path (or \
                         file://localhost/abs/path); this one names the host '{host}'. For a relative folder, \
                         give the path without file://"
                    )));
                }
            },
            Some(("memory", rest)) => {
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let store = MEMORY_STORES
                    .lock()
                    .map_err(|_| invalid("memory store registry poisoned".into()))?
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone();
                (
                    store,
                    Path::from(prefix),
                    format!("memory://{}", rest.trim_end_matches('/')),
                    format!("memory://{name}"),
                )
            }
            Some(("s3" | "s3a", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("an s3:// URL needs a bucket".into()));
                }
                let store = build_s3(bucket, options).map_err(&invalid)?;
                (
                    Arc::new(store),
                    Path::from(prefix),
                    format!("s3://{}", rest.trim_end_matches('/')),
                    format!("s3://{bucket}"),
                )
            }
            Some((scheme, _)) => {
                return Err(invalid(format!(
                    "the scheme '{scheme}://' is not supported (use a local path, file://, s3:// or memory://)"
                )));
            }
        };
        let inner: Arc<dyn ObjectStore> = match faults {
            Some(config) => Arc::new(FaultyStore::new(store, config, prefix.clone())),
            None => store,
        };
        Ok(Location {
            store: Arc::new(RetryingStore::new(Arc::clone(&inner), policy)),
            inner,
            policy,
            prefix,
            url,
            store_id: format!("{root}#{:016x}", options.digest()),
            local_root,
        })
    }

    fn open_local(
        path: &str,
        create: Create,
        local_root: &mut Option<Arc<crate::durable::Written>>,
    ) -> Result<(Arc<dyn ObjectStore>, Path, String, String)> {
        let invalid = |reason: String| Error::InvalidLocation {
            location: path.to_string(),
            reason,
        };
        let dir = std::path::Path::new(path);
        if !dir.exists() {
            match create {
                Create::No => return Err(invalid("no such file or directory".into())),
                Create::Yes => {
                    // The folders made here, and the one they were made in,
                    // are flushed, so that their entries are on the disk
                    // before any epoch's files (a first run's checkpoint
                    // folder could otherwise vanish in a power cut).
                    let made = std::path::absolute(dir).map_err(|e| invalid(e.to_string()))?;
                    let base = made
                        .ancestors()
                        .find(|a| a.exists())
                        .map(std::path::Path::to_path_buf);
                    std::fs::create_dir_all(dir)
                        .map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
                    for f in made.ancestors() {
                        if let Ok(handle) = std::fs::File::open(f) {
                            handle
                                .sync_all()
                                .map_err(|e| invalid(format!("cannot flush {} to disk: {e}", f.display())))?;
                        }
                        if Some(f) == base.as_deref() {
                            break;
                        }
                    }
                }
            }
        }
        if !dir.is_dir() {
            return Err(invalid("not a directory".into()));
        }
        let abs = std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&abs).map_err(|e| invalid(e.to_string()))?;
        let url = format!("file://{}", abs.display());
        let (store, written) = crate::durable::Tracked::new(store, abs.clone());
        *local_root = Some(written);
        Ok((Arc::new(store), Path::default(), url.clone(), url))
    }

    /// A location over an existing store (used to wrap stores, e.g. to
    /// inject faults), with the default retry policy.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Location {
        let policy = RetryPolicy::default();
        let url = url.trim_end_matches('/').to_string();
        Location {
            store: Arc::new(RetryingStore::new(Arc::clone(&store), policy)),
            inner: store,
            policy,
            prefix: Path::from(prefix),
            store_id: url.clone(),
            url,
            local_root: None,
        }
    }

    /// The same location with another retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Location {
        self.policy = policy;
        self.store = Arc::new(RetryingStore::new(Arc::clone(&self.inner), policy));
        self
    }

    /// The retry policy of this location's operations.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The location's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store, every operation on it retried as this
    /// location's are (for readers that need an `ObjectStore`).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The location's prefix within its store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The files that writes to a local folder left when the process was
    /// killed in the middle of one: object_store's local store writes each
    /// file as `<name>#<n>` and renames it when complete, and a SIGKILL in
    /// between left the temporary for good (listings skip it, so retention
    /// never deletes it). `recursive`: in sub-folders too. Other stores
    /// have none.
    pub fn interrupted_writes(&self, recursive: bool) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, recursive: bool, found: &mut Vec<std::path::PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() && recursive {
                    walk(&entry.path(), recursive, found);
                } else if kind.is_file() && entry.file_name().to_str().and_then(temporary_of).is_some() {
                    found.push(entry.path());
                }
            }
        }
        let mut found = Vec::new();
        if let Some(dir) = self.url.strip_prefix("file://") {
            walk(std::path::Path::new(dir), recursive, &mut found);
        }
        found
    }

    /// Makes what was written through this location's store so far
    /// durable: for a local folder, each file written since the last call
    /// (by this location or another on the same store: its children, the
    /// location it is a child of) is flushed to disk with its folders, so
    /// that a power cut or a kernel crash after this returns loses none of
    /// it ([`crate::durable`]). Other stores' writes are durable when they
    /// return; for them this does nothing.
    pub async fn sync(&self) -> Result<()> {
        let Some(written) = self.local_root.clone() else {
            return Ok(());
        };
        let url = self.url.clone();
        let synced = tokio::task::spawn_blocking(move || written.sync())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        synced.map_err(|e| Error::Store {
            op: "flushing to disk",
            url,
            error: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        })
    }

    /// Whether one [`Location::sync`] flushes both locations' writes: they
    /// share a local folder's store (`false` for stores that need none).
    pub fn syncs_with(&self, other: &Location) -> bool {
        matches!((&self.local_root, &other.local_root), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    /// Whether [`Location::sync`] has anything to do here.
    pub fn needs_sync(&self) -> bool {
        self.local_root.is_some()
    }

    /// A sub-folder.
    pub fn child(&self, name: &str) -> Location {
        Location {
            store: Arc::clone(&self.store),
            inner: Arc::clone(&self.inner),
            policy: self.policy,
            prefix: self.path(name),
            url: self.url_of(name),
            store_id: self.store_id.clone(),
            local_root: self.local_root.clone(),
        }
    }

    /// The store path of a name relative to this location. A name is in
    /// the store's own form, as [`Location::relative`] gives it for a listed
    /// object, and is used as it is: stores differ in what they escape (a
    /// local folder lists `ünï.parquet` as `%C3%BCn%C3%AF.parquet`, S3 as
    /// it is), so escaping a listed name again would name another object.
    pub fn path(&self, name: &str) -> Path {
        let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
        let joined = std::iter::once(self.prefix.as_ref())
            .filter(|p| !p.is_empty())
            .chain(parts.iter().copied())
            .collect::<Vec<_>>()
            .join("/");
        match Path::parse(&joined) {
            Ok(p) => p,
            // Not a valid store path as it is (e.g. a `..` part): escape it.
            Err(_) => parts
                .into_iter()
                .fold(self.prefix.clone(), |p, part| p.join(part)),
        }
    }

    /// The URL of a name relative to this location, for messages.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{}", self.url, name.trim_start_matches('/'))
    }

    /// The name of a store path relative to this location.
    pub fn relative(&self, path: &Path) -> String {
        match path.prefix_match(&self.prefix) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    fn store_err(&self, op: &'static str, name: &str) -> impl FnOnce(object_store::Error) -> Error {
        let url = self.url_of(name);
        move |error| Error::Store { op, url, error }
    }

    /// Writes an object atomically, replacing any object of that name.
    pub async fn put(&self, name: &str, bytes: impl Into<PutPayload>) -> Result<()> {
        let path = self.path(name);
        let payload: PutPayload = bytes.into();
        retry::run(&self.policy, || self.inner.put(&path, payload.clone()))
            .await
            .map_err(self.store_err("writing", name))?;
        Ok(())
    }

    /// Creates an object atomically, failing with [`Error::AlreadyExists`] if
    /// it exists. This is what makes a commit happen at most once. Finding
    /// the object counts as success only if it holds these bytes: an
    /// earlier attempt whose answer was lost wrote it ([`crate::retry`]).
    pub async fn put_if_absent(&self, name: &str, bytes: Bytes) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let path = self.path(name);
        match retry::create(
            self.inner.as_ref(),
            &self.policy,
            &path,
            PutPayload::from_bytes(bytes),
            opts,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::AlreadyExists {
                url: self.url_of(name),
            }),
            Err(e) => Err(self.store_err("creating", name)(e)),
        }
    }

    /// Reads a whole object; `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let path = self.path(name);
        match retry::run(&self.policy, || async {
            self.inner.get(&path).await?.bytes().await
        })
        .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", name)(e)),
        }
    }

    /// An object's size in bytes; `None` if it does not exist.
    pub async fn size(&self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name);
        match retry::run(&self.policy, || async { self.inner.head(&path).await }).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading the size of", name)(e)),
        }
    }

    /// Reads a whole object that must exist.
    pub async fn get_required(&self, name: &str) -> Result<Bytes> {
        let path = self.path(name);
        retry::run(&self.policy, || async {
            self.inner.get(&path).await?.bytes().await
        })
        .await
        .map_err(self.store_err("reading", name))
    }

    /// Lists every object under `name` (recursively), in path order.
    pub async fn list(&self, name: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(name);
        let mut all: Vec<ObjectMeta> = retry::run(&self.policy, || {
            self.inner.list(Some(&prefix)).try_collect::<Vec<_>>()
        })
        .await
        .map_err(self.store_err("listing", name))?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    /// Deletes an object; deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match retry::run(&self.policy, || self.inner.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", name)(e)),
        }
    }

    /// Moves an object. On stores without an atomic rename (S3) this is a copy
    /// and a delete; the destination still appears whole, all at once. A
    /// retry after a failure whose answer was lost may find the source gone:
    /// then the move happened if the destination is there.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.path(from), self.path(to));
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = retry::run(&self.policy, || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.rename(&src, &dst)
        })
        .await;
        match result {
            Err(object_store::Error::NotFound { .. })
                if attempts.load(std::sync::atomic::Ordering::Relaxed) > 1
                    && retry::run(&self.policy, || self.inner.head(&dst)).await.is_ok() =>
            {
                Ok(())
            }
            r => r.map_err(self.store_err("renaming", from)),
        }
    }

    /// Checks that the store refuses a second create-if-absent of an object,
    /// once per process and store: Weir's commits rely on it (crate docs),
    /// and a store that silently overwrites instead would let two writers
    /// both commit an epoch. The check creates `_probe/<random>` here twice
    /// (with different bytes) and deletes it. A store that accepts the
    /// second create, or does not support create-if-absent, is refused with
    /// [`Error::UnsafeStore`], saying why and what to do.
    pub async fn verify_create_if_absent(&self) -> Result<()> {
        let verified = |id: &str| {
            VERIFIED_CREATE
                .lock()
                .map(|set| set.contains(id))
                .unwrap_or(false)
        };
        if verified(&self.store_id) {
            return Ok(());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("_probe/{id}");
        let probe_url = self.url_of(&name);
        let unsupported = |e: &object_store::Error| {
            matches!(
                e,
                object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }
            )
        };
        let refuse = |what: String| Error::UnsafeStore {
            url: self.url.clone(),
            // `what` may end with a store's own message, and its full stop.
            reason: format!(
                "{}. Weir commits an epoch (and takes the checkpoint's lease) by creating a file \
                 only if it is absent (commits/<epoch>.json, lease/<generation>.json); without \
                 that, two writers could both commit an epoch and exactly-once would be \
                 silently weakened, so Weir will not keep a checkpoint here. Use a store with \
                 conditional writes: for S3, a server or bucket that honours `If-None-Match: *` on \
                 PutObject (AWS S3, MinIO, Cloudflare R2, moto 5.2.1 or later), with object_store's \
                 `aws_conditional_put` setting at `etag`, its default (AWS_CONDITIONAL_PUT=etag)",
                what.trim_end_matches('.')
            ),
        };
        match self
            .put_if_absent(
                &name,
                Bytes::from(format!("weir create-if-absent probe {id}: first")),
            )
            .await
        {
            Ok(()) => {}
            Err(Error::Store { error, .. }) if unsupported(&error) => {
                return Err(refuse(format!(
                    "the store does not support create-if-absent writes (object_store's PutMode::Create): {error}"
                )));
            }
            Err(e) => return Err(e),
        }
        let second = self
            .put_if_absent(
                &name,
                Bytes::from(format!("weir create-if-absent probe {id}: second")),
            )
            .await;
        self.delete(&name).await?;
        match second {
            Err(Error::AlreadyExists { .. }) => {}
            Ok(()) => {
                return Err(refuse(format!(
                    "the store accepted a second create-if-absent write (object_store's PutMode::Create) \
                     of {probe_url}, replacing the object instead of refusing"
                )));
            }
            Err(Error::Store { error, .. }) if unsupported(&error) => {
                return Err(refuse(format!(
                    "the store does not support create-if-absent writes (object_store's PutMode::Create): {error}"
                )));
            }
            // A local folder always refuses a second create: its error is
            // the folder's own (a full disk, a file it may not write).
            Err(e) if self.local_root.is_some() => return Err(e),
            Err(e) => {
                return Err(refuse(format!(
                    "a second create-if-absent write of {probe_url} failed with an error instead of \
                     reporting that the object exists ({e}), so a lost race and a failure look alike"
                )));
            }
        }
        if let Ok(mut set) = VERIFIED_CREATE.lock() {
            set.insert(self.store_id.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_locations_share_a_store_by_name() {
        let a = Location::open("memory://loc-test/a", &StoreOptions::default(), Create::Yes).unwrap();
        a.put("x/y.json", Bytes::from_static(b"1")).await.unwrap();
        let root = Location::open("memory://loc-test", &StoreOptions::default(), Create::Yes).unwrap();
        let got = root.get("a/x/y.json").await.unwrap().unwrap();
        assert_eq!(&got[..], b"1");
        assert_eq!(a.list("x").await.unwrap().len(), 1);
        assert_eq!(a.relative(&a.list("").await.unwrap()[0].location), "x/y.json");
    }

    #[tokio::test]
    async fn put_if_absent_refuses_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::open(dir.path().to_str().unwrap(), &StoreOptions::default(), Create::No).unwrap();
        loc.put_if_absent("c/1.json", Bytes::from_static(b"a"))
            .await
            .unwrap();
        let err = loc
            .put_if_absent("c/1.json", Bytes::from_static(b"b"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(&loc.get("c/1.json").await.unwrap().unwrap()[..], b"a");
    }

    /// A local folder's writes (this location's and its children's, which
    /// share its store) are flushed at a sync and then forgotten; a file
    /// gone by then (renamed, deleted) is passed over; a store whose
    /// writes are durable needs nothing.
    #[tokio::test]
    async fn a_local_folder_syncs_what_it_wrote_and_other_stores_need_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ck");
        let loc = Location::open(root.to_str().unwrap(), &StoreOptions::default(), Create::Yes).unwrap();
        let pending = |l: &Location| l.local_root.as_ref().unwrap().pending();
        loc.put_if_absent("commits/1.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let child = loc.child("state/op");
        child.put("a.parquet", Bytes::from_static(b"x")).await.unwrap();
        child.put("b.parquet", Bytes::from_static(b"y")).await.unwrap();
        child.delete("b.parquet").await.unwrap();
        assert!(loc.needs_sync() && child.syncs_with(&loc));
        assert_eq!(
            pending(&loc),
            4,
            "three files written, and a folder that lost one"
        );
        child.sync().await.unwrap();
        assert_eq!(
            pending(&loc),
            0,
            "one store: the child's sync flushed the parent's write too"
        );
        loc.sync().await.unwrap();
        let other = Location::open(
            dir.path().join("out").to_str().unwrap(),
            &StoreOptions::default(),
            Create::Yes,
        )
        .unwrap();
        assert!(
            other.needs_sync() && !other.syncs_with(&loc),
            "another store, its own writes"
        );
        let memory = Location::open("memory://sync-test/x", &StoreOptions::default(), Create::Yes).unwrap();
        assert!(!memory.needs_sync() && !memory.syncs_with(&loc) && !loc.syncs_with(&memory));
        memory.sync().await.unwrap();
    }

    #[test]
    fn a_missing_local_source_is_an_error_naming_it() {
        let err = Location::open("/no/such/dir/weir", &StoreOptions::default(), Create::No).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/weir"), "{err}");
        let err = Location::open("gs://b/x", &StoreOptions::default(), Create::No).unwrap_err();
        assert!(err.to_string().contains("gs://"), "{err}");
    }

    fn flaky_location(store: &Arc<crate::testing::Flaky>, url: &str) -> Location {
        Location::from_store(Arc::clone(store) as _, "ck", url)
    }

    #[tokio::test]
    async fn a_store_that_ignores_create_if_absent_is_refused_with_the_reason() {
        let mut flaky = crate::testing::Flaky::new();
        flaky.ignores_create = true;
        let store = Arc::new(flaky);
        let loc = flaky_location(&store, "s3://no-conditional-writes/ck");
        let err = loc.verify_create_if_absent().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::UnsafeStore { .. }), "{text}");
        for needle in [
            "s3://no-conditional-writes/ck",
            "accepted a second create-if-absent",
            "s3://no-conditional-writes/ck/_probe/",
            "exactly-once would be silently weakened",
            "If-None-Match: *",
            "aws_conditional_put",
        ] {
            assert!(text.contains(needle), "missing '{needle}' in: {text}");
        }
        // The probe is cleaned up, and the check is not remembered as passed.
        assert!(loc.list("_probe").await.unwrap().is_empty());
        assert!(loc.verify_create_if_absent().await.is_err());
    }

    #[tokio::test]
    async fn a_store_without_create_if_absent_is_refused() {
        let mut flaky = crate::testing::Flaky::new();
        flaky.no_create = true;
        let store = Arc::new(flaky);
        let err = flaky_location(&store, "s3://disabled/ck")
            .verify_create_if_absent()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not support create-if-absent") && err.contains("aws_conditional_put"),
            "{err}"
        );
        assert!(
            !err.contains(".."),
            "the store's own full stop is not doubled: {err}"
        );
    }

    #[tokio::test]
    async fn stores_that_refuse_a_second_create_pass_once_per_store() {
        let store = Arc::new(crate::testing::Flaky::new());
        let loc = flaky_location(&store, "memory://honest/ck");
        loc.verify_create_if_absent().await.unwrap();
        assert_eq!(store.calls("put").len(), 2, "created twice");
        assert!(loc.list("_probe").await.unwrap().is_empty(), "and deleted");
        loc.child("other").verify_create_if_absent().await.unwrap();
        assert_eq!(store.calls("put").len(), 2, "checked once per store");

        // Even when answers get lost: the first create took effect and its
        // retry reads back its own bytes (success); the second failed, and
        // its retry reads back the first's bytes (refused, as it must be).
        // Puts: first create (lost answer), its retry, second create
        // (failed), its retry.
        use crate::testing::{Step, transient};
        let store = Arc::new(crate::testing::Flaky::new());
        store.script(
            "put",
            [
                Step::After(transient("put")),
                Step::Pass,
                Step::Before(transient("put")),
            ],
        );
        flaky_location(&store, "memory://lossy/ck")
            .with_retry_policy(crate::retry::RetryPolicy {
                base: std::time::Duration::from_millis(1),
                ..Default::default()
            })
            .verify_create_if_absent()
            .await
            .unwrap();
        assert_eq!(store.calls("put").len(), 4);
        assert_eq!(store.calls("get").len(), 2, "both retries read back");

        for url in ["memory://verify-mem/ck"] {
            let loc = Location::open(url, &StoreOptions::default(), Create::Yes).unwrap();
            loc.verify_create_if_absent().await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::open(dir.path().to_str().unwrap(), &StoreOptions::default(), Create::No).unwrap();
        loc.verify_create_if_absent().await.unwrap();
        assert!(loc.list("").await.unwrap().is_empty(), "no probe left behind");
    }

    #[test]
    fn unknown_weir_options_and_bad_values_are_named() {
        let err = Location::open(
            "memory://opts",
            &StoreOptions::new([("weir.retry_atempts", "3")]),
            Create::Yes,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("weir.retry_atempts") && err.contains("weir.retry_attempts"),
            "{err}"
        );
        let err = Location::open(
            "memory://opts",
            &StoreOptions::new([("weir.fault_rate", "2")]),
            Create::Yes,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("weir.fault_rate") && err.contains("0 to 1"), "{err}");
        // Weir's own keys are not passed to S3 as S3 settings.
        Location::open(
            "s3://bucket/ck",
            &StoreOptions::new([("weir.retry_attempts", "2"), ("aws_region", "us-east-1")]),
            Create::Yes,
        )
        .unwrap();
    }

    /// An s3:// URL with credentials is refused without printing them; an
    /// `@` in a path is a path.
    #[test]
    fn an_s3_url_with_credentials_is_refused_without_showing_them() {
        let region = StoreOptions::new([("aws_region", "us-east-1")]);
        for url in [
            "s3://AKIAQQ:wJal/rXUtn@bkt/in/",
            "s3://AKIAQQ:pa;ss@bkt/in/",
            "s3://user@bkt/in/",
        ] {
            let err = Location::open(url, &region, Create::Yes).unwrap_err().to_string();
            assert!(
                err.contains("s3://***@bkt/in/") && err.contains("cannot carry credentials"),
                "{err}"
            );
            assert!(!err.contains("AKIAQQ") && !err.contains("user@"), "{err}");
        }
        Location::open("s3://bkt/me@home/x/", &region, Create::Yes).unwrap();
        // Any scheme: a local folder named after the password was made.
        for url in ["file://u:SECRETXYZ@localhost/tmp/x/", "memory://u:SECRETXYZ@m/x"] {
            let err = Location::open(url, &region, Create::Yes).unwrap_err().to_string();
            assert!(
                err.contains("cannot carry credentials") && !err.contains("SECRETXYZ"),
                "{err}"
            );
        }
    }

    /// An endpoint with a space or a quote panicked at the first request.
    #[test]
    fn an_endpoint_that_is_no_url_is_refused_without_showing_it() {
        for endpoint in [
            "http://u:pa SECRETXYZ@127.0.0.1:1",
            "http://u:pa\"SECRETXYZ@127.0.0.1:1",
            "not a url",
        ] {
            let o = StoreOptions::new([("aws_region", "us-east-1"), ("s3.endpoint", endpoint)]);
            let err = Location::open("s3://bkt/x/", &o, Create::Yes)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not a valid URL") && !err.contains("SECRETXYZ"),
                "{err}"
            );
        }
        let o = StoreOptions::new([
            ("aws_region", "us-east-1"),
            ("s3.endpoint", "http://127.0.0.1:9000"),
        ]);
        Location::open("s3://bkt/x/", &o, Create::Yes).unwrap();
    }

    /// `file://localhost/abs` and `file:/abs` name the absolute folder, as
    /// `file:///abs`; another host, or a scheme with one slash, is refused
    /// (each made a relative folder).
    #[test]
    fn a_file_url_may_name_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().display().to_string();
        let o = StoreOptions::default();
        let b = Location::open(&format!("file://{abs}"), &o, Create::No).unwrap();
        for other in [
            format!("file://localhost{abs}"),
            format!("file:{abs}"),
            format!("FILE://{abs}"),
        ] {
            assert_eq!(
                Location::open(&other, &o, Create::No).unwrap().url(),
                b.url(),
                "{other}"
            );
        }
        let e = Location::open("file://nas1/tmp/x/", &o, Create::Yes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("names the host 'nas1'"), "{e}");
        let e = Location::open("s3:/AK:SECRETXYZ@b/x", &o, Create::Yes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks a slash") && !e.contains("SECRETXYZ"), "{e}");
        assert!(!std::path::Path::new("nas1").exists() && !std::path::Path::new("s3:").exists());
    }

    #[test]
    fn options_never_print_their_values() {
        let o = StoreOptions::new([("aws_secret_access_key", "hunter2")]);
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
