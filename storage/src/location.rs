//! A [`Location`] is a folder on some object store: a local directory, an S3
//! prefix, or a named in-memory store (for tests). Every path Weir reads or
//! writes is a location plus a relative name.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::{Error, Result};

/// Settings for opening remote stores, as lower-case keys.
///
/// Keys are the ones `object_store` knows for S3 (`aws_access_key_id`,
/// `aws_endpoint`, `aws_region`, `aws_allow_http`, ...). The caller decides
/// where they come from (the environment, a table's `WITH ('s3.…')` options);
/// this crate never reads the environment itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for StoreOptions {
    // Values may be credentials: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl StoreOptions {
    /// Options from `(key, value)` pairs; keys are lower-cased.
    pub fn new<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let values = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
            .collect();
        Self { values }
    }

    /// These options overlaid with `other` (whose values win).
    pub fn merged(&self, other: &StoreOptions) -> StoreOptions {
        let mut values = self.values.clone();
        values.extend(other.values.clone());
        StoreOptions { values }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// Named in-memory stores, so that `memory://name/...` means the same store
/// everywhere in one process.
static MEMORY_STORES: LazyLock<Mutex<BTreeMap<String, Arc<InMemory>>>> = LazyLock::new(Default::default);

/// A folder on an object store.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
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
        match location.split_once("://") {
            None => Self::open_local(location, create),
            Some(("file", rest)) => Self::open_local(rest, create),
            Some(("memory", rest)) => {
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let store = MEMORY_STORES
                    .lock()
                    .map_err(|_| invalid("memory store registry poisoned".into()))?
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone();
                Ok(Location {
                    store,
                    prefix: Path::from(prefix),
                    url: format!("memory://{}", rest.trim_end_matches('/')),
                })
            }
            Some(("s3" | "s3a", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("an s3:// URL needs a bucket".into()));
                }
                let store = build_s3(bucket, options).map_err(|e| invalid(e.to_string()))?;
                Ok(Location {
                    store: Arc::new(store),
                    prefix: Path::from(prefix),
                    url: format!("s3://{}", rest.trim_end_matches('/')),
                })
            }
            Some((scheme, _)) => Err(invalid(format!(
                "the scheme '{scheme}://' is not supported (use a local path, file://, s3:// or memory://)"
            ))),
        }
    }

    fn open_local(path: &str, create: Create) -> Result<Location> {
        let invalid = |reason: String| Error::InvalidLocation {
            location: path.to_string(),
            reason,
        };
        let dir = std::path::Path::new(path);
        if !dir.exists() {
            match create {
                Create::No => return Err(invalid("no such file or directory".into())),
                Create::Yes => std::fs::create_dir_all(dir)
                    .map_err(|e| invalid(format!("cannot create the directory: {e}")))?,
            }
        }
        if !dir.is_dir() {
            return Err(invalid("not a directory".into()));
        }
        let abs = std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&abs).map_err(|e| invalid(e.to_string()))?;
        Ok(Location {
            store: Arc::new(store),
            prefix: Path::default(),
            url: format!("file://{}", abs.display()),
        })
    }

    /// A location over an existing store (used to wrap stores, e.g. to inject faults).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Location {
        Location {
            store,
            prefix: Path::from(prefix),
            url: url.trim_end_matches('/').to_string(),
        }
    }

    /// The location's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The location's prefix within its store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// A sub-folder.
    pub fn child(&self, name: &str) -> Location {
        Location {
            store: Arc::clone(&self.store),
            prefix: self.path(name),
            url: self.url_of(name),
        }
    }

    /// The store path of a name relative to this location.
    pub fn path(&self, name: &str) -> Path {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
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
        move |source| Error::Store { op, url, source }
    }

    /// Writes an object atomically, replacing any object of that name.
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(name), PutPayload::from_bytes(bytes))
            .await
            .map_err(self.store_err("writing", name))?;
        Ok(())
    }

    /// Creates an object atomically, failing with [`Error::AlreadyExists`] if
    /// it exists. This is what makes a commit happen at most once.
    pub async fn put_if_absent(&self, name: &str, bytes: Bytes) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(name), PutPayload::from_bytes(bytes), opts)
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
        match self.store.get(&self.path(name)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(self.store_err("reading", name))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", name)(e)),
        }
    }

    /// Reads a whole object that must exist.
    pub async fn get_required(&self, name: &str) -> Result<Bytes> {
        let bytes = self.store.get(&self.path(name)).await;
        match bytes {
            Ok(r) => r.bytes().await.map_err(self.store_err("reading", name)),
            Err(e) => Err(self.store_err("reading", name)(e)),
        }
    }

    /// Lists every object under `name` (recursively), in path order.
    pub async fn list(&self, name: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(name);
        let mut all: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.store_err("listing", name))?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    /// Deletes an object; deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", name)(e)),
        }
    }

    /// Moves an object. On stores without an atomic rename (S3) this is a copy
    /// and a delete; the destination still appears whole, all at once.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.store
            .rename(&self.path(from), &self.path(to))
            .await
            .map_err(self.store_err("renaming", from))
    }
}

fn build_s3(bucket: &str, options: &StoreOptions) -> Result<object_store::aws::AmazonS3, String> {
    let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in &options.values {
        let key = key.strip_prefix("s3.").unwrap_or(key);
        let full = if key.starts_with("aws_") {
            key.to_string()
        } else {
            format!("aws_{key}")
        };
        match AmazonS3ConfigKey::from_str(&full) {
            Ok(k) => builder = builder.with_config(k, value.clone()),
            Err(_) if key.starts_with("aws_") => {} // unrelated AWS_* environment variable
            Err(_) => return Err(format!("unknown S3 option '{key}'")),
        }
    }
    // A plain-http endpoint (a local test server) needs http allowed.
    if let Some(endpoint) = options
        .get("aws_endpoint")
        .or(options.get("aws_endpoint_url"))
        .or(options.get("s3.endpoint"))
        && endpoint.starts_with("http://")
    {
        builder = builder.with_allow_http(true);
    }
    builder.build().map_err(|e| e.to_string())
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

    #[test]
    fn a_missing_local_source_is_an_error_naming_it() {
        let err = Location::open("/no/such/dir/weir", &StoreOptions::default(), Create::No).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/weir"), "{err}");
        let err = Location::open("gs://b/x", &StoreOptions::default(), Create::No).unwrap_err();
        assert!(err.to_string().contains("gs://"), "{err}");
    }

    #[test]
    fn options_never_print_their_values() {
        let o = StoreOptions::new([("aws_secret_access_key", "hunter2")]);
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
