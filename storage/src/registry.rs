//! Where DataFusion finds the object store of a URL it is asked to read
//! (`SELECT * FROM 's3://bucket/out/'`, a sink table on S3, a plan sent to
//! a cluster's executor): the stores registered, and otherwise an `s3://`
//! bucket opened on first use with this process's settings (its `AWS_*`
//! environment, [`StoreOptions`]), as Weir's own reads open it (retries,
//! injected faults and all; see [`Location::open`]).
//!
//! DataFusion's default registry knows local files only, so a quoted S3
//! path was an error, and an executor could not read an S3 table that a
//! client planned.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

use crate::location::Create;
use crate::{Location, StoreOptions};

/// The registered stores, and `s3://` buckets opened on demand.
pub struct StoreRegistry {
    registered: DefaultObjectStoreRegistry,
    /// Settings for the buckets it opens (may hold credentials: never
    /// shown).
    options: StoreOptions,
}

impl std::fmt::Debug for StoreRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRegistry").finish_non_exhaustive()
    }
}

impl StoreRegistry {
    /// A registry that opens S3 buckets with `options`.
    pub fn new(options: StoreOptions) -> Self {
        Self {
            registered: DefaultObjectStoreRegistry::new(),
            options,
        }
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.registered.get_store(url) {
            return Ok(store);
        }
        let scheme = url.scheme();
        if !matches!(scheme, "s3" | "s3a") {
            return self.registered.get_store(url);
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| DataFusionError::Plan(format!("'{url}' names no bucket")))?;
        let loc = Location::open(&format!("s3://{bucket}"), &self.options, Create::No)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let store = Arc::clone(loc.store());
        let key = Url::parse(&format!("{scheme}://{bucket}"))
            .map_err(|e| DataFusionError::Plan(format!("'{url}': {e}")))?;
        // Two threads opening it at once each get a working store; the
        // later registration stays.
        self.registered.register_store(&key, Arc::clone(&store));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_opened_once_on_first_use_and_other_schemes_are_refused() {
        let registry = StoreRegistry::new(StoreOptions::new([
            ("aws_region".to_string(), "us-east-1".to_string()),
            ("aws_access_key_id".to_string(), "k".to_string()),
            ("aws_secret_access_key".to_string(), "very-secret".to_string()),
        ]));
        let a = registry
            .get_store(&Url::parse("s3://bucket/some/path/").unwrap())
            .unwrap();
        let b = registry
            .get_store(&Url::parse("s3://bucket/other").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = registry.get_store(&Url::parse("s3://another/").unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(registry.get_store(&Url::parse("gs://bucket/").unwrap()).is_err());
        assert!(registry.get_store(&Url::parse("file:///").unwrap()).is_ok());
        assert!(!format!("{registry:?}").contains("very-secret"));
    }
}
