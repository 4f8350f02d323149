//! Claiming a checkpoint for a job: the records a checkpoint keeps of the
//! job's operators, sources and sinks, the check of an existing
//! checkpoint's records against a (possibly changed) job under the rules in
//! [`super`], and the reset of a checkpoint for a changed query started
//! with `--fresh-state`.

use std::collections::{BTreeMap, BTreeSet};

use weir_sql::{Job, TableDecl};
use weir_storage::location::Create;
use weir_storage::{
    Checkpoint, Location, Metadata, OperatorRecord, SinkLayout, SinkRecord, SourceRecord, StoreOptions,
};

use super::Records;
use crate::dead_letter;
use crate::driver::{JobOptions, PhysicalPipeline, late_sink_tables, sink_writer, source_state_name};
use crate::source::table_store_options;
use crate::{Error, Result};

/// Creates the checkpoint's metadata, or checks an existing checkpoint
/// against this job under the compatibility rules of `compat`. Returns
/// the metadata, notes for the user, and the sources that restart from
/// the beginning.
pub(crate) async fn claim_checkpoint(
    checkpoint: &Checkpoint,
    job: &Job,
    options: &JobOptions,
    records: &(dyn Fn(&str) -> Result<Records> + Sync),
) -> Result<(Metadata, Vec<String>, BTreeSet<String>)> {
    let fingerprint = job.fingerprint()?;
    let Some(existing) = checkpoint.read_metadata().await? else {
        let query_id = uuid::Uuid::new_v4().simple().to_string();
        let r = records(&query_id)?;
        let metadata = Metadata {
            version: weir_storage::FORMAT_VERSION,
            query_id,
            sql: job.redacted_sql(),
            fingerprint,
            created_at: chrono::Utc::now().to_rfc3339(),
            weir_version: env!("CARGO_PKG_VERSION").to_string(),
            operators: r.operators,
            sources: r.sources,
            sinks: r.sinks,
            state_generations: Default::default(),
        };
        return match checkpoint.create_metadata(&metadata).await {
            Ok(()) => Ok((metadata, Vec::new(), BTreeSet::new())),
            // Another process created it first: check against theirs.
            Err(weir_storage::Error::AlreadyExists { .. }) => {
                Box::pin(claim_checkpoint(checkpoint, job, options, records)).await
            }
            Err(e) => Err(e.into()),
        };
    };
    let mut new = records(&existing.query_id)?;
    let mut old = Records::of_metadata(&existing);
    // A sink column a changed query dropped stays in its record: its files
    // keep it, and a later query that writes it again must write its type
    // (else dropping it, running, and adding it back retyped it). Records
    // are matched k-th to k-th per table, as in `compat`.
    if let Some(old) = &old {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for n in new.sinks.iter_mut().filter(|n| !n.columns.is_empty()) {
            let k = seen.entry(n.table.clone()).or_default();
            let before = old
                .sinks
                .iter()
                .filter(|o| o.table == n.table && !o.columns.is_empty())
                .nth(*k);
            *k += 1;
            let Some(before) = before else { continue };
            let name = |c: &String| c.split_once(' ').map(|(n, _)| n.to_string()).unwrap_or_default();
            let have: BTreeSet<String> = n.columns.iter().map(name).collect();
            let dropped: Vec<String> = before
                .columns
                .iter()
                .filter(|c| !have.contains(&name(c)))
                .cloned()
                .collect();
            n.columns.extend(dropped);
        }
    }
    let same_text = existing.fingerprint == fingerprint;
    // A checkpoint of an earlier Weir has no statement hashes in its sink
    // records: the same text has the same statements, whose hashes are
    // the new records' (kept in the metadata from this run on).
    if same_text && let Some(old) = &mut old {
        for o in old.sinks.iter_mut().filter(|o| o.statement.is_empty()) {
            if let Some(n) = new
                .sinks
                .iter()
                .find(|n| n.table == o.table && n.writer == o.writer)
            {
                o.statement = n.statement.clone();
            }
        }
    }
    let differences = match &old {
        Some(old) => super::incompatibilities(old, &new),
        None if same_text => Vec::new(),
        None => vec![
            "the checkpoint was made by an earlier Weir that did not record its operators, \
             so a changed query cannot be checked against it"
                .to_string(),
        ],
    };
    // As stored: records filled in above are written back below.
    let unchanged = Records::of_metadata(&existing)
        .is_some_and(|o| o.operators == new.operators && o.sources == new.sources && o.sinks == new.sinks);
    if same_text && unchanged {
        return Ok((existing, Vec::new(), BTreeSet::new()));
    }
    let mut updated = Metadata {
        sql: job.redacted_sql(),
        fingerprint,
        operators: new.operators.clone(),
        sources: new.sources.clone(),
        sinks: new.sinks.clone(),
        ..existing.clone()
    };
    let mut notes = Vec::new();
    let mut reset = BTreeSet::new();
    // A checkpoint whose query never logged an epoch (its first run failed
    // before reading, say on a mistyped path) holds no progress, state or
    // output to carry over or protect: the changed query takes it as it is.
    let never_ran = checkpoint.offsets.epochs().await?.is_empty()
        && checkpoint.commits.epochs().await?.is_empty()
        && checkpoint.state_operators().await?.is_empty();
    let retyped = match &old {
        Some(old) if !never_ran => super::sink_type_changes(old, &new),
        _ => Vec::new(),
    };
    if !retyped.is_empty() {
        return Err(Error::Checkpoint(format!(
            "the query changed the type of a column its sink has committed output for:\n  - {}\nThe sink's \
             folder would hold files whose columns disagree, which readers cannot read as one table. Write the \
             changed query to a sink with its own 'path' (and its own --checkpoint), or CAST the column back",
            retyped.join("\n  - ")
        )));
    }
    if never_ran {
        if !differences.is_empty() {
            notes.push(format!(
                "the checkpoint at {} was made by another query that never ran an epoch: it is this \
                 query's now",
                checkpoint.location()
            ));
        }
    } else if differences.is_empty() {
        if !same_text {
            notes.push(format!(
                "the query differs from the one that made the checkpoint at {}, but its stateful \
                 operators, sources and sinks are the same: continuing with its state",
                checkpoint.location()
            ));
        }
    } else if !options.fresh_state {
        let first = existing
            .sql
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("--"))
            .unwrap_or("")
            .to_string();
        // A source --fresh-state would start over: its rows already in the
        // sinks would be written again. Say so where the way out is named.
        let kept = super::kept_sources(old.as_ref(), &new);
        let restarted: Vec<String> = new
            .sources
            .iter()
            // Changed, not new: a new source has sent nothing yet.
            .filter(|s| !kept.contains(&s.name))
            .filter(|s| {
                old.as_ref()
                    .is_some_and(|o| o.sources.iter().any(|x| x.name == s.name))
            })
            .map(|s| format!("'{}'", s.name))
            .collect();
        let restart_note = if restarted.is_empty() {
            String::new()
        } else {
            format!(
                " With --fresh-state, source {} would start from its beginning, and the rows it already \
                 sent to the sinks would be written to them again; for exactly-once output give the changed \
                 query sinks of its own ('path') as well as its own --checkpoint.",
                restarted.join(", ")
            )
        };
        return Err(Error::Checkpoint(format!(
            "the checkpoint at {} was made by a different query (it begins `{first}`), and its state \
             cannot be carried over:\n  - {}\nRun with --fresh-state to start this query with empty \
             state (sources that did not change keep their progress), give it its own --checkpoint, \
             or run the original query.{restart_note} The rules are in the README, under \"Changing a query\".",
            checkpoint.location(),
            differences.join("\n  - ")
        )));
    } else {
        let kept = super::kept_sources(old.as_ref(), &new);
        let dropped = reset_for_fresh_state(checkpoint, &existing, &kept, &options.store_options).await?;
        // The last commit still names the dropped tables' files: a new
        // generation of each table makes every list of them so far void.
        // The tables are what the commit names (less the sources that keep
        // their progress) as well as what was deleted: a reset killed after
        // deleting a folder and run again finds the folder gone.
        let named: Vec<String> = match checkpoint.commits.latest().await? {
            Some(c) => checkpoint
                .commits
                .read(c)
                .await?
                .and_then(|e| e.state)
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let kept_tables: BTreeSet<String> = kept.iter().map(|k| source_state_name(k)).collect();
        for table in named.iter().filter(|t| !kept_tables.contains(*t)).chain(&dropped) {
            let g = existing.state_generation(table) + 1;
            updated.state_generations.insert(table.clone(), g);
        }
        reset = new
            .sources
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| !kept.contains(n))
            .collect();
        notes.push(format!(
            "--fresh-state: starting the changed query with empty state ({}); {}; {}",
            differences.join("; "),
            if dropped.is_empty() {
                "there was no operator state to drop".to_string()
            } else {
                format!("dropped the state of {}", dropped.join(", "))
            },
            if kept.is_empty() {
                "every source starts from the beginning".to_string()
            } else {
                format!(
                    "{} keep their progress",
                    kept.iter()
                        .map(|k| format!("'{k}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
    }
    checkpoint.replace_metadata(&updated).await?;
    Ok((updated, notes, reset))
}

/// What a source's progress refers to: its connector and what it reads.
/// Rate limits, watermarks and error handling are left out, since changing
/// them leaves the progress meaningful. (A path holds no credentials: an
/// s3:// URL with them is refused, and masking a path here could make two
/// folders' signatures equal.)
pub(crate) fn source_signature(decl: &TableDecl) -> String {
    ["connector", "path", "topic", "format", "seed"]
        .iter()
        .filter_map(|k| decl.options.get(k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The checkpoint records of a job (see `compat`).
pub(crate) fn job_records(
    job: &Job,
    pipelines: &[PhysicalPipeline],
    dead_letters: &BTreeMap<String, String>,
    query_id: &str,
    store_options: &StoreOptions,
) -> Result<Records> {
    let mut r = Records::default();
    for (p, plan, operators) in pipelines {
        let inputs = crate::driver::operator_inputs(plan);
        for (id, op) in operators {
            let t = op.describe();
            // `p<k>-agg<n>` (or a side table of it, `p<k>-agg<n>-<name>`):
            // the n-th operator, whose input columns are `inputs[n]`.
            let n = id
                .split_once("-agg")
                .and_then(|(_, rest)| rest.split('-').next()?.parse::<usize>().ok());
            // The mark goes in even when nothing below is computed: a
            // record without it was written by an older Weir.
            let mut signature = op.signature();
            let (computed, more) = n.and_then(|n| inputs.get(n)).cloned().unwrap_or_default();
            signature.push_str(super::INPUTS_MARK);
            signature.push_str(&computed);
            signature.push_str(super::MORE_MARK);
            signature.push_str(&more);
            r.operators.push(OperatorRecord {
                id: id.clone(),
                kind: op.kind().to_string(),
                signature,
                keys: t.keys,
                values: t.values,
                evicted_by: t.evicted_by,
            });
        }
        for name in &p.sources {
            if !r.sources.iter().any(|s| &s.name == name) {
                r.sources.push(SourceRecord {
                    name: name.clone(),
                    signature: source_signature(&job.tables[name]),
                });
            }
        }
        let mut sinks: Vec<(String, String)> = Vec::new();
        if let Some(decl) = &p.sink {
            sinks.push((decl.name.clone(), sink_writer(query_id, p.index, false)));
        }
        for (table, _) in late_sink_tables(plan) {
            if !sinks.iter().any(|(t, _)| *t == table) {
                sinks.push((table, sink_writer(query_id, p.index, true)));
            }
        }
        let first = r.sinks.len();
        sinks_records(job, sinks, store_options, &mut r)?;
        if let (Some(decl), Some(rec)) = (&p.sink, r.sinks.get_mut(first))
            && rec.table == decl.name
        {
            rec.statement = p.fingerprint();
            rec.columns = plan
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect();
        }
    }
    // Dead-letter tables belong to the job's sources, not to a pipeline.
    let mut tables: Vec<&String> = dead_letters.values().collect();
    tables.sort_unstable();
    tables.dedup();
    let sinks = tables
        .into_iter()
        .map(|t| (t.clone(), dead_letter::writer(query_id)))
        .collect();
    sinks_records(job, sinks, store_options, &mut r)?;
    Ok(r)
}

/// Adds the records of sinks `(table, writer)` to `r`.
pub(crate) fn sinks_records(
    job: &Job,
    sinks: Vec<(String, String)>,
    store_options: &StoreOptions,
    r: &mut Records,
) -> Result<()> {
    for (table, writer) in sinks {
        let Some(decl) = job.tables.get(&table) else {
            continue; // reported when the sink is opened
        };
        let Some(path) = decl.options.get("path") else {
            continue;
        };
        let url = Location::open(path, &table_store_options(decl, store_options), Create::Yes)
            .map_err(|e| Error::Config(format!("sink table '{table}': {e}")))?
            .url()
            .to_string();
        r.sinks.push(SinkRecord {
            table,
            path: path.to_string(),
            url,
            writer,
            columns: Vec::new(),
            statement: String::new(),
        });
    }
    Ok(())
}

/// Prepares a checkpoint for a changed query under `fresh_state`: publishes
/// the old sinks' last committed output (a crash may have left it staged),
/// forgets an uncommitted epoch, and deletes the state of every operator
/// and of every source not in `kept`. Returns the state tables dropped.
pub(crate) async fn reset_for_fresh_state(
    checkpoint: &Checkpoint,
    old: &Metadata,
    kept: &[String],
    store_options: &StoreOptions,
) -> Result<Vec<String>> {
    let committed = checkpoint.commits.latest().await?;
    if let Some(c) = committed {
        for s in &old.sinks {
            let loc = Location::open(&s.url, store_options, Create::No)
                .map_err(|e| Error::Config(format!("sink '{}' of the old query: {e}", s.table)))?;
            SinkLayout::new(loc, s.writer.clone()).publish(c).await?;
        }
    }
    let after = committed.unwrap_or(0);
    let keep: BTreeSet<String> = kept.iter().map(|k| source_state_name(k)).collect();
    let mut dropped = Vec::new();
    for op in checkpoint.state_operators().await? {
        if !keep.contains(&op) {
            checkpoint.drop_state(&op).await?;
            dropped.push(op);
        } else {
            for f in checkpoint.state_files(&op).await? {
                if f.epoch > after {
                    checkpoint.delete_state_file(&f).await?;
                }
            }
        }
    }
    // Offsets last: until they go, leftover state of an uncommitted epoch
    // is that epoch's, not an orphan.
    for e in checkpoint.offsets.epochs().await? {
        if e > after {
            checkpoint.offsets.delete(e).await?;
        }
    }
    Ok(dropped)
}
