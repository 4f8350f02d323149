//! Settings for opening stores ([`StoreOptions`]), and what they mean for
//! S3: the only place that turns them into a store's configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

use crate::faults::FAULT_OPTIONS;
use crate::retry::RETRY_OPTIONS;

/// Settings for opening stores, as lower-case keys.
///
/// Keys are the ones `object_store` knows for S3 (`aws_access_key_id`,
/// `aws_endpoint`, `aws_region`, `aws_allow_http`, ...), and Weir's own
/// `weir.*` keys for any store: the retry policy (`weir.retry_attempts`,
/// `weir.retry_base_ms`, `weir.retry_max_ms`) and injected faults
/// (`weir.fault_rate`, ..., see [`crate::faults`]). The caller decides where
/// they come from (the environment, a table's `WITH ('s3.…')` options); this
/// crate never reads the environment itself.
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

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Checks that every `weir.*` key is one this crate knows.
    pub(crate) fn check_weir_keys(&self) -> std::result::Result<(), String> {
        for (key, _) in self.iter() {
            if key.starts_with("weir.")
                && !RETRY_OPTIONS.contains(&key)
                && !FAULT_OPTIONS.iter().any(|(_, k)| *k == key)
            {
                let mut known: Vec<&str> = RETRY_OPTIONS.to_vec();
                known.extend(FAULT_OPTIONS.iter().map(|(_, k)| *k));
                return Err(format!("unknown option '{key}' (known: {})", known.join(", ")));
            }
        }
        Ok(())
    }

    /// A digest of every setting, to tell stores apart (never printed).
    pub(crate) fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.values.hash(&mut h);
        h.finish()
    }
}

/// Whether a table's `s3.*` option names an S3 setting (`s3.region`,
/// `s3.endpoint`, `s3.aws_access_key_id`, ...): a typo is refused when the
/// table is declared, not only once its path is on S3.
pub fn is_s3_option(key: &str) -> bool {
    let Some(key) = key.strip_prefix("s3.") else {
        return false;
    };
    let full = if key.starts_with("aws_") {
        key.to_string()
    } else {
        format!("aws_{key}")
    };
    AmazonS3ConfigKey::from_str(&full).is_ok()
}

pub(crate) fn build_s3(bucket: &str, options: &StoreOptions) -> Result<object_store::aws::AmazonS3, String> {
    let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in &options.values {
        if key.starts_with("weir.") {
            continue; // Weir's own settings, for any store
        }
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
    // An endpoint the HTTP client cannot parse panicked at the first
    // request (object_store takes it as valid): refused here, without
    // printing it (it may carry a user info).
    for (key, value) in &options.values {
        if key.ends_with("endpoint") || key.ends_with("endpoint_url") {
            let bad = value.chars().find(|c| {
                !c.is_ascii_graphic() || matches!(c, '"' | '<' | '>' | '`' | '{' | '}' | '|' | '^' | '\\')
            });
            if let Some(c) = bad {
                return Err(format!(
                    "the S3 endpoint ('{key}') is not a valid URL: it holds {} (percent-encode it, e.g. %20 for a \
                     space, %22 for '\"')",
                    if c == ' ' {
                        "a space".to_string()
                    } else {
                        format!("{c:?}")
                    }
                ));
            }
            if url::Url::parse(value).is_err() {
                return Err(format!(
                    "the S3 endpoint ('{key}') is not a valid URL (e.g. http://127.0.0.1:9000)"
                ));
            }
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
    // The client's own retries are kept few and short: Weir retries every
    // operation around it (`crate::retry`, 5 attempts by default), and the
    // client's default (10 retries within 3 minutes) under each of those
    // made a wrong endpoint take half a minute to be refused (measured on
    // a closed port: 30 s, now 2 s).
    builder = builder.with_retry(object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(30),
    });
    builder.build().map_err(|e| e.to_string())
}
