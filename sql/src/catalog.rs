//! Declared tables: sources and sinks from `CREATE TABLE ... WITH (...)`.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::arrow::datatypes::SchemaRef;

use crate::{Error, Result};

/// A table's `WITH (...)` options. Keys are lower-cased; values are kept as
/// written. Values of secret keys never appear in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options(BTreeMap<String, String>);

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

/// Option names whose values are credentials. Matching is by substring of the
/// lower-cased key, so `s3.secret_access_key`, `password`, `sasl.password`,
/// `auth.token` are all covered.
const SECRET_MARKERS: &[&str] = &[
    "secret",
    // `password`, `passwd`, and their misspellings (`passwrd`): a
    // mistyped key is refused as unknown, but its value must not show.
    // (Not `pwd`: the environment's `PWD` is the working directory.)
    "passw",
    "pasw",
    "token",
    "credential",
    "private_key",
    "access_key",
    "api_key",
    "apikey",
    "jaas",
    // Azure's account and SAS keys, GCS's service account key, S3's SSE-C
    // customer key, any encryption key.
    "account_key",
    "sas_key",
    "customer_key",
    "encryption_key",
    // Kafka's PEM private key in a keystore, and its OAuth settings
    // (which hold a client secret).
    "keystore_key",
    "oauthbearer",
];

/// Whether an option's value is a secret, by its name, in any case and
/// with `-` or `.` for `_` (Flink's `s3.access-key`, `s3.sse-customer-key`).
pub fn is_secret_key(key: &str) -> bool {
    let key: String = key
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    SECRET_MARKERS.iter().any(|m| key.contains(m))
}

/// What secrets print as.
pub const REDACTED: &str = "***";

impl Options {
    /// Options from pairs (keys lower-cased).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        )
    }

    /// An option's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// All options, secrets included (for connectors, never for printing).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// All options with secret values replaced by `***`, and the
    /// credentials written into URLs in the others (`s3://***@host/b/`).
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) {
                    REDACTED.to_string()
                } else {
                    crate::secrets::mask_value_credentials(v, true)
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// An option's value as it may be printed ([`Options::redacted`]).
    pub fn get_redacted(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|v| {
            if is_secret_key(key) {
                REDACTED.to_string()
            } else {
                crate::secrets::mask_value_credentials(v, true)
            }
        })
    }

    /// The values of secret options, and the credentials written into
    /// URLs in the others (so printed text can be scrubbed of them).
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            if is_secret_key(k) {
                if !v.is_empty() {
                    out.push(v.clone());
                }
            } else {
                out.extend(crate::secrets::value_secret_values(v, true));
            }
        }
        out
    }
}

/// A source's watermark: `WATERMARK FOR column AS column - INTERVAL delay`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Watermark {
    /// The event-time column.
    pub column: String,
    /// How far the watermark trails the largest event time seen, in ms.
    pub delay_ms: i64,
}

/// A declared table.
#[derive(Clone, Debug)]
pub struct TableDecl {
    /// Name (normalized: unquoted names lower-cased).
    pub name: String,
    /// Declared columns; `None` for a sink whose schema comes from its query.
    pub schema: Option<SchemaRef>,
    /// Each declared column's SQL type as written (`TIMESTAMP(3)`), for
    /// `DESCRIBE`; empty when no columns are declared.
    pub column_types: Vec<String>,
    /// The watermark, for event-time sources.
    pub watermark: Option<Watermark>,
    /// `WITH (...)` options.
    pub options: Options,
    /// A bounded table (`'bounded' = 'true'`, or looked up with `FOR
    /// SYSTEM_TIME AS OF`): not a stream but a table read whole, whose
    /// current version each epoch joins with (a lookup join).
    pub bounded: bool,
    /// Metadata columns (`ts TIMESTAMP(3) METADATA FROM 'timestamp'`): each
    /// column's name and the metadata key its value comes from. Only a
    /// connector with metadata (Kafka) accepts them.
    pub metadata: BTreeMap<String, String>,
    /// `PRIMARY KEY (...) NOT ENFORCED`: the columns (positions in
    /// `schema`) that no two rows of the source share, as the user
    /// promises (Flink's meaning: Weir does not check it). A regular join
    /// on them holds fewer rows (see `weir_sql::nodes::UniqueSide`); empty
    /// when none is declared.
    pub primary_key: Vec<usize>,
}

impl TableDecl {
    /// The value of a required option, or an error naming the table.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.options.get(key).ok_or_else(|| {
            Error::Plan(format!(
                "table '{}' needs the option '{key}' in its WITH (...) clause",
                self.name
            ))
        })
    }

    /// The connector name (`'connector' = '...'`).
    pub fn connector(&self) -> Result<&str> {
        self.require("connector")
    }
}

/// An Arrow type as the SQL type a user writes for it (`BIGINT`,
/// `VARCHAR`, `TIMESTAMP(3)`), for messages; Arrow's name for the rest.
pub fn sql_type_name(t: &datafusion::arrow::datatypes::DataType) -> String {
    use datafusion::arrow::datatypes::{DataType::*, TimeUnit};
    match t {
        Boolean => "BOOLEAN".into(),
        Int8 => "TINYINT".into(),
        Int16 => "SMALLINT".into(),
        Int32 => "INT".into(),
        Int64 => "BIGINT".into(),
        UInt8 => "TINYINT UNSIGNED".into(),
        UInt16 => "SMALLINT UNSIGNED".into(),
        UInt32 => "INT UNSIGNED".into(),
        UInt64 => "BIGINT UNSIGNED".into(),
        Float32 => "FLOAT".into(),
        Float64 => "DOUBLE".into(),
        Utf8 | LargeUtf8 | Utf8View => "VARCHAR".into(),
        Binary | LargeBinary | BinaryView => "BYTEA".into(),
        Date32 | Date64 => "DATE".into(),
        Interval(_) => "INTERVAL".into(),
        Map(entries, _) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 => format!(
                "MAP<{}, {}>",
                sql_type_name(kv[0].data_type()),
                sql_type_name(kv[1].data_type())
            ),
            other => format!("MAP<{}>", sql_type_name(other)),
        },
        Decimal128(p, s) | Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        Timestamp(unit, tz) => {
            let p = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            match tz {
                Some(_) => format!("TIMESTAMP({p}) WITH TIME ZONE"),
                None => format!("TIMESTAMP({p})"),
            }
        }
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => {
            format!("ARRAY<{}>", sql_type_name(f.data_type()))
        }
        Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
