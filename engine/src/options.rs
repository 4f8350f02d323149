//! Table options every connector shares: the store settings a table adds
//! to the job's, the options any source takes, and the check that refuses
//! an option a connector does not know.

use weir_sql::TableDecl;
use weir_storage::StoreOptions;

use crate::{Error, Result};

/// Store options for a table: the job's (from the environment) overlaid
/// with the table's own `s3.*` options.
pub fn table_store_options(decl: &TableDecl, base: &StoreOptions) -> StoreOptions {
    let own = StoreOptions::new(
        decl.options
            .iter()
            .filter(|(k, _)| k.starts_with("s3."))
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    base.merged(&own)
}

/// Options every source takes, whatever its connector.
pub const SOURCE_OPTIONS: &[&str] = &[
    "late.policy",
    "late.sink",
    "watermark.idle_timeout",
    "state.ttl",
    "on_error",
    "dead_letter",
];

/// Checks that a table only has options its connector knows.
pub fn check_options(decl: &TableDecl, known: &[&str]) -> Result<()> {
    for (key, _) in decl.options.iter() {
        if key.starts_with("s3.") && !weir_storage::options::is_s3_option(key) {
            return Err(Error::Config(format!(
                "table '{}': unknown option '{key}' (the s3.* options are object_store's S3 settings: \
                 s3.region, s3.endpoint, s3.access_key_id, s3.secret_access_key, s3.allow_http, ...)",
                decl.name
            )));
        }
        if !known.contains(&key) && !key.starts_with("s3.") {
            // The same setting under another connector's name (Flink's
            // CSV format says field-delimiter; Weir's files say delimiter).
            const SAME: &[(&str, &str)] = &[
                ("csv.field-delimiter", "csv.delimiter"),
                ("csv.delimiter", "csv.field-delimiter"),
            ];
            let hint = SAME
                .iter()
                .find(|(other, ours)| *other == key && known.contains(ours))
                .map(|(_, ours)| *ours)
                .or_else(|| weir_sql::settings::nearest(key, known))
                .map(|n| format!("did you mean '{n}'? "))
                .unwrap_or_default();
            return Err(Error::Config(format!(
                "table '{}': unknown option '{key}' ({hint}known: {}, s3.*)",
                decl.name,
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Checks a declared table's options before it is known whether it will be
/// read or written (the shell's `CREATE TABLE`): refused only when an
/// option is one no use of its connector takes, naming the nearest one. A
/// mix of a source's and a sink's options is refused where the table is
/// used, as in a job.
pub fn check_declared_options(decl: &TableDecl) -> Result<()> {
    let roles: Vec<Vec<&str>> = match decl.connector()? {
        "files" => vec![
            crate::source::files::FilesSource::known_options(),
            crate::sink::OPTIONS.to_vec(),
            crate::driver::lookup::OPTIONS.to_vec(),
        ],
        "kafka" => vec![
            crate::source::kafka::KafkaSource::known_options(),
            crate::kafka_sink::KafkaSink::known_options(),
        ],
        "nexmark" => vec![crate::source::nexmark::NexmarkSource::known_options()],
        "blackhole" => vec![vec!["connector"]],
        other => {
            return Err(Error::Config(format!(
                "table '{}': unknown connector '{other}' (supported: files, kafka, nexmark, blackhole)",
                decl.name
            )));
        }
    };
    let mut all: Vec<&str> = Vec::new();
    for option in roles.iter().flatten() {
        if !all.contains(option) {
            all.push(option);
        }
    }
    check_options(decl, &all)?;
    if decl.connector()? == "files" {
        crate::source::files::check_option_values(decl)?;
    }
    Ok(())
}

/// Refuses a `csv.*` option on a table whose `format` (lower case) is not
/// CSV: an option of another format is a mistake (a format changed, the
/// option left behind), not something to ignore.
pub fn refuse_csv_options_unless_csv(decl: &TableDecl, format: &str) -> Result<()> {
    if format != "csv"
        && let Some((key, _)) = decl.options.iter().find(|(k, _)| k.starts_with("csv."))
    {
        return Err(Error::Config(format!(
            "table '{}': option '{key}' applies to 'format' = 'csv' only, and the table is '{format}'",
            decl.name
        )));
    }
    Ok(())
}

/// Refuses metadata columns on a connector that has no record metadata
/// (only Kafka's records have a partition, offset, timestamp, key and
/// headers).
pub fn refuse_metadata(decl: &TableDecl) -> Result<()> {
    if let Some((column, key)) = decl.metadata.iter().next() {
        return Err(Error::Config(format!(
            "table '{}': column '{column}' is declared METADATA FROM '{key}', but the '{}' connector has no \
             record metadata (the 'kafka' connector has)",
            decl.name,
            decl.options.get("connector").unwrap_or("?")
        )));
    }
    Ok(())
}
