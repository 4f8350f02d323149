//! `weir checkpoint inspect` and `weir checkpoint rollback`: an operator's
//! view of a checkpoint, and a way back to a good epoch.
//!
//! Inspecting reads everything recovery would read (every retained commit
//! and offsets entry, every operator's state as of the last commit) and
//! reports what it finds; damage is listed as problems, each naming the file
//! and the epoch, rather than stopping at the first.
//!
//! Rolling back to epoch N (with the checkpoint's lease held, so no job runs
//! meanwhile) first checks that N can be restored (its commit, its offsets,
//! every operator's state as of N), then deletes, newest first: the commits
//! after N, the sinks' files of the epochs after N (published, staged and
//! manifests, found through the sinks recorded in the metadata), the state
//! files after N, and the offsets after N. Every step is idempotent, so an
//! interrupted rollback is finished by running it again. The next run then
//! continues from N and writes the later epochs' output anew, under the same
//! file names: the sink's later output is replaced, not duplicated.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use weir_storage::location::Create;
use weir_storage::{Checkpoint, CommitEntry, Location, Metadata, OffsetsEntry, SinkLayout, StoreOptions};

use crate::{Error, LeaseOwner, Result};

/// What `inspect` found.
#[derive(Debug)]
pub struct Inspection {
    /// The report, for people.
    pub text: String,
    /// Damage found, each naming the file and epoch.
    pub problems: Vec<String>,
}

fn open(url: &str, store_options: &StoreOptions) -> Result<Checkpoint> {
    let loc = Location::open(url, store_options, Create::No)
        .map_err(|e| Error::Config(format!("checkpoint: {e}")))?;
    Ok(Checkpoint::new(loc))
}

fn time_text(ms: i64) -> String {
    match ms {
        i64::MIN => "-".into(),
        i64::MAX => "end of input".into(),
        ms => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|| ms.to_string()),
    }
}

fn bytes_text(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// A source's offset, shortened for a table cell.
fn offset_text(v: &Value) -> String {
    let text = match v {
        Value::Object(m) if m.get("files").is_some_and(Value::is_array) => {
            // The files source: which files, from which row.
            let files: Vec<String> = m["files"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let path = f.get("path").and_then(Value::as_str).unwrap_or("?");
                    let name = path.rsplit('/').next().unwrap_or(path);
                    match f.get("start_row").and_then(Value::as_u64) {
                        Some(r) if r > 0 => format!("{name}@{r}"),
                        _ => name.to_string(),
                    }
                })
                .collect();
            // A row cap ('max_rows_per_batch') reads the listed files in
            // order until it is met: the later ones may not have been read
            // at all. (Every entry has one; the default is not shown.)
            match m.get("max_rows").and_then(Value::as_u64) {
                _ if files.is_empty() => "no new rows".into(),
                Some(n) if files.len() > 1 && n != crate::source::files::DEFAULT_MAX_ROWS as u64 => {
                    format!("up to {n} rows of {}", files.join(", "))
                }
                _ => files.join(", "),
            }
        }
        Value::Object(m) if m.get("ranges").is_some_and(Value::is_array) => {
            // The Kafka source: each partition's range of offsets.
            let ranges: Vec<String> = m["ranges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r.get("end").and_then(Value::as_i64) > r.get("start").and_then(Value::as_i64))
                .map(|r| {
                    format!(
                        "{}/{}:{}..{}",
                        r.get("topic").and_then(Value::as_str).unwrap_or("?"),
                        r.get("partition").and_then(Value::as_i64).unwrap_or(-1),
                        r.get("start").and_then(Value::as_i64).unwrap_or(-1),
                        r.get("end").and_then(Value::as_i64).unwrap_or(-1),
                    )
                })
                .collect();
            if ranges.is_empty() {
                "no new records".into()
            } else {
                ranges.join(", ")
            }
        }
        v => v.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(59).collect::<String>())
    } else {
        text
    }
}

/// Describes a checkpoint: its query, epochs with offsets and watermarks,
/// state tables with their files, sizes and rows, sinks, and the lease.
pub async fn inspect(url: &str, store_options: &StoreOptions) -> Result<Inspection> {
    let ck = open(url, store_options)?;
    let mut out = String::new();
    let mut problems = Vec::new();
    let _ = writeln!(out, "checkpoint {}", ck.location());
    let meta = match ck.read_metadata().await {
        Ok(Some(m)) => Some(m),
        Ok(None) => {
            return Err(Error::Config(format!(
                "{} is not a Weir checkpoint (it has no metadata.json)",
                ck.location()
            )));
        }
        // A store that cannot be reached (or refuses access) says nothing
        // of the checkpoint's files: no reason to call them damaged.
        Err(e @ weir_storage::Error::Store { .. }) => {
            return Err(Error::Runtime(format!(
                "cannot read the checkpoint {}: {e}",
                ck.location()
            )));
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Some(m) = &meta {
        describe_metadata(&mut out, m);
    }
    // Whether a job holds the checkpoint now: it writes on while this runs.
    let mut running = false;
    match ck.current_lease().await {
        Ok(Some(l)) if !l.released && l.expires_at_ms > chrono::Utc::now().timestamp_millis() => {
            running = true;
            let _ = writeln!(
                out,
                "lease      held by pid {} on {} since {} (until {})",
                l.pid,
                l.host,
                l.acquired_at,
                time_text(l.expires_at_ms)
            );
        }
        Ok(Some(l)) => {
            let _ = writeln!(out, "lease      free (last held by pid {} on {})", l.pid, l.host);
        }
        Ok(None) => {
            let _ = writeln!(out, "lease      free");
        }
        Err(e) => problems.push(e.to_string()),
    }

    // A rollback killed midway leaves the files after its epoch for the
    // next run (or rollback) to delete: they are not damage.
    let rolling_back = match interrupted_rollback(&ck).await {
        Ok(Some(to)) => {
            let _ = writeln!(
                out,
                "rollback   to epoch {to}, interrupted: the next `weir run` (or `weir checkpoint rollback {} --to {to}`) \
                 finishes it",
                ck.location()
            );
            true
        }
        Ok(None) => false,
        Err(e) => {
            problems.push(e.to_string());
            false
        }
    };

    // Epochs.
    let commits = ck.commits.epochs().await.unwrap_or_else(|e| {
        problems.push(e.to_string());
        Vec::new()
    });
    let offsets = ck.offsets.epochs().await.unwrap_or_else(|e| {
        problems.push(e.to_string());
        Vec::new()
    });
    // A run never leaves a hole among committed epochs (rollback and
    // retention delete from the ends): one is damage, as `weir run` says.
    if let (Some(&first), Some(&last)) = (commits.first(), commits.last()) {
        for e in first..last {
            if !commits.contains(&e) {
                problems.push(format!(
                    "{} is missing, between committed epochs {first} and {last}",
                    ck.commits.url(e)
                ));
            }
        }
    }
    let mut epochs: Vec<u64> = commits.iter().chain(&offsets).copied().collect();
    epochs.sort_unstable();
    epochs.dedup();
    let _ = writeln!(
        out,
        "\nepochs ({} committed, {} retained)",
        commits.len(),
        epochs.len()
    );
    let _ = writeln!(
        out,
        "  {:>6}  {:<11}  {:>10}  {:>10}  {:>6}  {:<23}  offsets",
        "epoch", "status", "rows in", "rows out", "late", "watermark"
    );
    let mut last_good = None;
    for &e in &epochs {
        let commit: Option<CommitEntry> = if commits.contains(&e) {
            match ck.commits.read(e).await {
                Ok(c) => c,
                Err(err) => {
                    problems.push(err.to_string());
                    None
                }
            }
        } else {
            None
        };
        let offset: Option<OffsetsEntry> = if offsets.contains(&e) {
            match ck.offsets.read(e).await {
                Ok(o) => o,
                Err(err) => {
                    problems.push(err.to_string());
                    None
                }
            }
        } else {
            if commits.contains(&e) {
                problems.push(format!(
                    "{} (epoch {e}) has no offsets entry ({} is missing)",
                    ck.commits.url(e),
                    ck.offsets.url(e)
                ));
            }
            None
        };
        let status = match (&commit, commits.contains(&e)) {
            (Some(_), _) if offset.is_some() => {
                last_good = Some(e);
                "committed"
            }
            (Some(_), _) => "damaged",
            (None, true) => "unreadable",
            (None, false) => "uncommitted",
        };
        let num = |f: fn(&CommitEntry) -> u64| commit.as_ref().map_or("-".to_string(), |c| f(c).to_string());
        let watermark = commit
            .as_ref()
            .and_then(|c| c.watermarks.values().copied().min())
            .map_or("-".to_string(), time_text);
        let offsets_text = offset
            .as_ref()
            .map(|o| {
                o.sources
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", offset_text(v)))
                    // A bounded table's version (a lookup join's snapshot).
                    .chain(o.lookups.iter().map(|(t, v)| format!("{t}: version {v}")))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| "-".into());
        let drain = offset.as_ref().is_some_and(|o| o.drain);
        let _ = writeln!(
            out,
            "  {e:>6}  {status:<11}  {:>10}  {:>10}  {:>6}  {watermark:<23}  {}{offsets_text}",
            num(|c| c.rows_in),
            num(|c| c.rows_out),
            num(|c| c.late_rows),
            if drain { "(drain) " } else { "" },
        );
    }

    // State, as of the last commit.
    let _ = writeln!(
        out,
        "\nstate{}",
        last_good.map_or(String::new(), |c| format!(" (as of epoch {c})"))
    );
    // `files` and `bytes` are what a restore as of that epoch reads (its
    // snapshot and the deltas since); `other` the table's other files:
    // older ones kept for rollback, and any of an epoch not committed yet.
    let _ = writeln!(
        out,
        "  {:<24}  {:>5}  {:>6}  {:>9}  {:>6}  {:>10}  {:>10}  other",
        "table", "files", "shards", "snapshot", "deltas", "bytes", "rows"
    );
    let operators = ck.state_operators().await.unwrap_or_else(|e| {
        problems.push(e.to_string());
        Vec::new()
    });
    for op in operators {
        let files = match ck.state_files(&op).await {
            Ok(f) => f,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let mut read: Vec<String> = Vec::new();
        let (shards, snapshot, deltas, rows) = match last_good {
            Some(c) => match ck.restore_state(&op, c).await {
                Ok(Some(r)) => {
                    read = Checkpoint::chain_file_names(&op, &r.chains);
                    (
                        r.chains.shards.len().to_string(),
                        r.snapshot_epoch.to_string(),
                        r.deltas.to_string(),
                        r.batches.iter().map(|b| b.num_rows()).sum::<usize>().to_string(),
                    )
                }
                Ok(None) => ("-".into(), "-".into(), "-".into(), "0".into()),
                Err(e) => {
                    problems.push(e.to_string());
                    ("?".into(), "?".into(), "?".into(), "?".into())
                }
            },
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let (chain, others): (Vec<_>, Vec<_>) = files.iter().partition(|f| read.contains(&f.name));
        let bytes = |fs: &[&weir_storage::StateFile]| bytes_text(fs.iter().map(|f| f.bytes).sum());
        let other = match others.len() {
            0 => "-".to_string(),
            n => format!("{n} file(s), {}", bytes(&others)),
        };
        let _ = writeln!(
            out,
            "  {op:<24}  {:>5}  {shards:>6}  {snapshot:>9}  {deltas:>6}  {:>10}  {rows:>10}  {other}",
            chain.len(),
            bytes(&chain)
        );
    }
    if let Some(m) = &meta
        && !m.operators.is_empty()
    {
        let known: Vec<String> = m
            .operators
            .iter()
            .map(|o| o.id.clone())
            .chain(m.sources.iter().map(|s| format!("source-{}", s.name)))
            .collect();
        for op in ck.state_operators().await.unwrap_or_default() {
            if !known.contains(&op) {
                let first = ck.state_files(&op).await.ok().and_then(|f| f.into_iter().next());
                problems.push(format!(
                    "{} (epoch {}) is state of '{op}', which is no operator or source of the checkpoint's query",
                    first.as_ref().map_or_else(
                        || ck.location().url_of(&format!("state/{op}")),
                        |f| ck.location().url_of(&f.name)
                    ),
                    first.map_or(0, |f| f.epoch)
                ));
            }
        }
    }
    let pending = last_good.map_or(1, |c| c + 1);
    let orphans = if running {
        ck.check_orphan_state_running().await
    } else {
        ck.check_orphan_state(
            commits.last().copied(),
            offsets.contains(&pending).then_some(pending),
        )
        .await
    };
    if !rolling_back && let Err(e) = orphans {
        problems.push(e.to_string());
    }
    // The last commit's output, which a crash may have left staged: every
    // file must be staged or published (what the next run's recovery
    // publishes, and stops at when one is neither).
    if let (Some(m), Some(&last)) = (&meta, commits.last())
        && !rolling_back
    {
        for s in &m.sinks {
            let Ok(loc) = Location::open(&s.url, store_options, Create::No) else {
                continue;
            };
            match SinkLayout::new(loc, s.writer.clone()).lost_files(last).await {
                Ok(lost) => problems.extend(lost.into_iter().map(|url| {
                    format!(
                        "{url} (epoch {last}): sink '{}' has committed this file, and it is neither staged nor \
                         published",
                        s.table
                    )
                })),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    // Not damage: a kill's half-written temporaries, which the next run
    // deletes (listings skip them).
    let leftovers = ck.interrupted_writes().len();
    if leftovers > 0 {
        let _ = writeln!(
            out,
            "\nleftovers  {leftovers} temporary file(s) of writes a kill interrupted (`name#N`); the next `weir run` \
             deletes them"
        );
    }
    // One damaged file (metadata.json, read for each table) is one problem.
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    if !problems.is_empty() {
        let _ = writeln!(out, "\nproblems");
        for p in &problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    Ok(Inspection { text: out, problems })
}

fn describe_metadata(out: &mut String, m: &Metadata) {
    // Masked again: a checkpoint of an earlier Weir may keep a URL's
    // credentials.
    let first = weir_sql::secrets::mask_secrets(&m.sql)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ");
    let first: String = if first.chars().count() > 100 {
        format!("{}…", first.chars().take(99).collect::<String>())
    } else {
        first
    };
    let _ = writeln!(
        out,
        "query      {} (created {}, Weir {}, format {})",
        m.query_id, m.created_at, m.weir_version, m.version
    );
    let _ = writeln!(out, "sql        {first}");
    for o in &m.operators {
        let _ = writeln!(
            out,
            "operator   {} {} keyed by ({})",
            o.id,
            o.kind,
            o.keys.join(", ")
        );
        if !o.evicted_by.is_empty() {
            let _ = writeln!(out, "             evicted by {}", o.evicted_by);
        }
    }
    for s in &m.sources {
        let _ = writeln!(
            out,
            "source     {} ({})",
            s.name,
            weir_sql::secrets::mask_url_credentials(&s.signature, false)
        );
    }
    // A table two queries write (a source's late.sink) has a writer each:
    // one line, naming both.
    let mut sinks: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for s in &m.sinks {
        match sinks.iter_mut().find(|(t, u, _)| *t == s.table && *u == s.url) {
            Some((_, _, writers)) => writers.push(&s.writer),
            None => sinks.push((&s.table, &s.url, vec![&s.writer])),
        }
    }
    for (table, url, writers) in sinks {
        let _ = writeln!(
            out,
            "sink       {table} -> {url} (writer{} {})",
            if writers.len() == 1 { "" } else { "s" },
            writers.join(", ")
        );
    }
}

/// What a rollback did.
#[derive(Debug, Default)]
pub struct Rollback {
    /// Commits removed (epochs after the target).
    pub commits: Vec<u64>,
    /// Uncommitted or committed offsets entries removed.
    pub offsets: Vec<u64>,
    /// State files removed.
    pub state_files: usize,
    /// Per sink: its table, the folder rolled back, the files removed.
    pub sink_files: Vec<(String, String, usize)>,
}

/// Rolls a checkpoint back to the committed epoch `to` (see the module
/// comment). Refused while a job holds the checkpoint's lease.
pub async fn rollback(
    url: &str,
    store_options: &StoreOptions,
    to: u64,
    owner: &LeaseOwner,
) -> Result<Rollback> {
    let ck = open(url, store_options)?;
    let meta = ck.read_metadata().await?.ok_or_else(|| {
        Error::Config(format!(
            "{} is not a Weir checkpoint (it has no metadata.json)",
            ck.location()
        ))
    })?;
    let lease = crate::lease::Lease::acquire(&ck, owner, Duration::from_secs(30)).await?;
    let result = rollback_held(&ck, &meta, store_options, to, &lease.id()).await;
    lease.release().await?;
    result
}

/// `rollback.json`: a rollback under way, `{"to": N}`. Written before its
/// first deletion and deleted after its last, so that a rollback killed
/// midway (commits gone, later offsets and state not yet) is finished by
/// the next `weir run` or rollback rather than read as damage.
const ROLLBACK_MARKER: &str = "rollback.json";

/// The epoch an interrupted rollback was rolling back to, if any.
pub async fn interrupted_rollback(ck: &Checkpoint) -> Result<Option<u64>> {
    let Some(bytes) = ck.location().get(ROLLBACK_MARKER).await? else {
        return Ok(None);
    };
    let to = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("to").and_then(Value::as_u64))
        .ok_or_else(|| {
            Error::Checkpoint(format!(
                "{} is not a rollback record ({{\"to\": N}})",
                ck.location().url_of(ROLLBACK_MARKER)
            ))
        })?;
    Ok(Some(to))
}

/// Finishes a rollback that was interrupted (see [`ROLLBACK_MARKER`]),
/// under the lease `lease` that the caller holds.
pub async fn finish_rollback(
    ck: &Checkpoint,
    store_options: &StoreOptions,
    lease: &str,
) -> Result<Option<u64>> {
    let Some(to) = interrupted_rollback(ck).await? else {
        return Ok(None);
    };
    let meta = ck.read_metadata().await?.ok_or_else(|| {
        Error::Config(format!(
            "{} is not a Weir checkpoint (it has no metadata.json)",
            ck.location()
        ))
    })?;
    rollback_held(ck, &meta, store_options, to, lease).await?;
    Ok(Some(to))
}

/// The folder a sink's output is in now, for a rollback.
///
/// The metadata records the folder as the job's last run resolved it
/// (`url`). A `'path'` that is relative resolves against the directory the
/// job runs from, so after the job's folder was moved or copied with its
/// checkpoint, the recorded folder is the old one: rolling it back would
/// delete another folder's files and leave the later epochs' output where
/// the job writes, to be written a second time. So a relative path is
/// resolved here too, against this process's directory, and when that gives
/// another folder the recorded folder's owner record decides: if it names
/// this checkpoint at its present place, nothing moved (the rollback runs
/// from another directory) and the recorded folder is the one; otherwise
/// the checkpoint moved or is a copy, and the folder its job writes now is
/// the one found here, which must hold this query's output.
async fn sink_folder(
    ck: &Checkpoint,
    s: &weir_storage::SinkRecord,
    options: &StoreOptions,
) -> Result<String> {
    let relative =
        !s.path.is_empty() && !s.path.contains("://") && !std::path::Path::new(&s.path).is_absolute();
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let here = match Location::open(&s.path, options, Create::No) {
        Ok(loc) if relative => loc,
        _ => return Ok(s.url.clone()),
    };
    if same(here.url(), &s.url) {
        return Ok(s.url.clone());
    }
    let recorded_owner = match Location::open(&s.url, options, Create::No) {
        Ok(loc) => weir_storage::SinkOwner::read(&loc).await.ok().flatten(),
        Err(_) => None,
    };
    if recorded_owner
        .as_ref()
        .is_some_and(|o| same(&o.checkpoint, ck.location().url()))
    {
        return Ok(s.url.clone());
    }
    let meta = ck.read_metadata().await?;
    let ours = weir_storage::SinkOwner::read(&here)
        .await
        .ok()
        .flatten()
        .zip(meta)
        .is_some_and(|(o, m)| o.query_id == m.query_id);
    if !ours {
        return Err(Error::Config(format!(
            "sink '{}' has the relative path '{}': its job's last run wrote it at {}, and this checkpoint \
             has moved since (or is a copy), while from this directory the path is {}, which does not \
             hold this query's output. Run the rollback from the directory the job runs from",
            s.table,
            s.path,
            s.url,
            here.url()
        )));
    }
    Ok(here.url().to_string())
}

async fn rollback_held(
    ck: &Checkpoint,
    meta: &Metadata,
    store_options: &StoreOptions,
    to: u64,
    lease: &str,
) -> Result<Rollback> {
    let commits = ck.commits.epochs().await?;
    let cannot =
        |why: String| Error::Checkpoint(format!("cannot roll back {} to epoch {to}: {why}", ck.location()));
    if !commits.contains(&to) {
        return Err(cannot(format!(
            "it is not a retained committed epoch (committed: {})",
            match (commits.first(), commits.last()) {
                (Some(a), Some(b)) => format!("{a} to {b}"),
                _ => "none".into(),
            }
        )));
    }
    let commit = ck.commits.read(to).await?;
    if ck.offsets.read(to).await?.is_none() {
        return Err(cannot(format!("{} is missing", ck.offsets.url(to))));
    }
    // Every state table must come back as of `to`, or the rollback would
    // leave a checkpoint that cannot start: those with files, and those
    // the commit names (whose folder may be gone).
    let mut tables: BTreeSet<String> = ck.state_operators().await?.into_iter().collect();
    if let Some(listed) = commit.as_ref().and_then(|c| meta.state_listing(c)) {
        tables.extend(listed.into_keys());
    }
    for op in tables {
        ck.restore_state(&op, to)
            .await
            .map_err(|e| cannot(e.to_string()))?;
    }
    // Every state table's generation at `to` must be the current one: an
    // older one is the state of the query before a `--fresh-state` change,
    // deleted by it, and the changed query would restart from `to` with
    // none (the rows of its windows open then lost).
    if let Some(c) = &commit
        && let Some(listed) = &c.state
    {
        let older: Vec<&str> = listed
            .iter()
            .filter(|(table, chains)| chains.generation < meta.state_generation(table))
            .map(|(table, _)| table.as_str())
            .collect();
        if !older.is_empty() {
            let mut since = None;
            for &e in commits.iter().filter(|&&e| e > to) {
                if let Some(later) = ck.commits.read(e).await?
                    && later.state.as_ref().is_some_and(|l| {
                        older
                            .iter()
                            .all(|t| l.get(*t).is_none_or(|c| c.generation == meta.state_generation(t)))
                    })
                {
                    since = Some(e);
                    break;
                }
            }
            return Err(cannot(format!(
                "it was committed by the query as it was before `--fresh-state` dropped the state of {} \
                 (the query changed since), so that state is gone and the changed query would go on from \
                 epoch {to} without it, losing the rows of windows open then{}",
                older.join(", "),
                match since {
                    Some(e) => format!("; the earliest epoch to roll back to is {e}"),
                    None => String::new(),
                }
            )));
        }
    }
    let mut sinks = Vec::new();
    for s in &meta.sinks {
        let url = sink_folder(ck, s, store_options)
            .await
            .map_err(|e| cannot(e.to_string()))?;
        let loc = Location::open(&url, store_options, Create::No)
            .map_err(|e| cannot(format!("sink '{}': {e}", s.table)))?;
        // The folder's files are deleted only if they are this
        // checkpoint's: not another query's, nor those of a copy of this
        // checkpoint that is still in place (which has committed them).
        let me = weir_storage::SinkOwner {
            version: weir_storage::FORMAT_VERSION,
            checkpoint: ck.location().url().to_string(),
            query_id: meta.query_id.clone(),
            table: s.table.clone(),
        };
        crate::folders::check_owner(&loc, &me, lease, store_options)
            .await
            .map_err(|e| cannot(e.to_string()))?;
        sinks.push((s.table.clone(), url, SinkLayout::new(loc, s.writer.clone())));
    }

    let marker = serde_json::to_vec(&serde_json::json!({ "to": to }))
        .map_err(|e| Error::Checkpoint(format!("rollback record: {e}")))?;
    ck.location().put(ROLLBACK_MARKER, marker).await?;
    // On the disk before anything is deleted: a rollback cut short (by a
    // crash, or a power cut) is finished by the next run.
    ck.location().sync().await?;
    let mut done = Rollback::default();
    for &e in commits.iter().rev().filter(|&&e| e > to) {
        ck.commits.delete(e).await?;
        done.commits.push(e);
    }
    for (table, url, layout) in &sinks {
        let removed = layout.remove_after(to).await?;
        done.sink_files.push((table.clone(), url.clone(), removed.len()));
    }
    for op in ck.state_operators().await? {
        for f in ck
            .state_files(&op)
            .await?
            .into_iter()
            .rev()
            .filter(|f| f.epoch > to)
        {
            ck.delete_state_file(&f).await?;
            done.state_files += 1;
        }
    }
    for e in ck.offsets.epochs().await?.into_iter().rev().filter(|&e| e > to) {
        ck.offsets.delete(e).await?;
        done.offsets.push(e);
    }
    // The deletes on the disk before the record of the rollback goes, and
    // that last.
    for (_, _, layout) in &sinks {
        layout.location().sync().await?;
    }
    ck.location().sync().await?;
    ck.location().delete(ROLLBACK_MARKER).await?;
    ck.location().sync().await?;
    done.commits.reverse();
    done.offsets.reverse();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_cap_is_shown_with_the_files_it_limits() {
        let capped = serde_json::json!({
            "files": [{"path": "in/f0.csv", "start_row": 7}, {"path": "in/f1.csv", "start_row": 0}],
            "max_rows": 7
        });
        assert_eq!(offset_text(&capped), "up to 7 rows of f0.csv@7, f1.csv");
        let default = serde_json::json!({
            "files": [{"path": "a.csv", "start_row": 0}, {"path": "b.csv", "start_row": 0}],
            "max_rows": 1_000_000
        });
        assert_eq!(offset_text(&default), "a.csv, b.csv");
        let one = serde_json::json!({"files": [{"path": "f2.csv", "start_row": 0}], "max_rows": 7});
        assert_eq!(offset_text(&one), "f2.csv");
        let none = serde_json::json!({"files": [], "max_rows": 7});
        assert_eq!(offset_text(&none), "no new rows");
    }
}
