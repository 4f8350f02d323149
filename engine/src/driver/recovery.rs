//! Recovery when a job opens: restore state and watermarks as of the last
//! commit, publish it again, find an uncommitted epoch to replay, and
//! refuse a damaged checkpoint with the file and epoch to look at.

use super::*;

impl StreamingJob {
    pub(super) async fn recover(&mut self) -> Result<()> {
        let committed = self.checkpoint.commits.latest().await?;
        if let Some(c) = committed {
            let entry: CommitEntry = self.checkpoint.commits.read(c).await?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} vanished while reading it",
                    self.checkpoint.commits.url(c)
                ))
            })?;
            // The files the commit names (`None` in a commit of a Weir
            // before they were named: the folders are listed).
            let listed = self.metadata.state_listing(&entry);
            let listed = listed.as_ref();
            // Sources that start from the beginning: those this run's claim
            // reset, and those a `--fresh-state` reset since the commit (its
            // process may have been killed before committing, so the rerun
            // sees an unchanged query). Their old watermarks would make
            // their rows late.
            let reset: BTreeSet<String> = self
                .sources
                .keys()
                .filter(|s| {
                    self.reset_sources.contains(*s)
                        || entry.state.as_ref().is_some_and(|m| {
                            let id = source_state_name(s);
                            m.get(&id)
                                .is_some_and(|c| c.generation != self.metadata.state_generation(&id))
                        })
                })
                .cloned()
                .collect();
            for (source, wm) in entry.watermarks {
                if reset.contains(&source) {
                    continue;
                }
                if let Some(w) = self.watermarks.get_mut(&source) {
                    *w = wm;
                }
            }
            for (name, slot) in self.sources.iter_mut() {
                let id = source_state_name(name);
                if let Some(restored) = self
                    .checkpoint
                    .restore_state_listed(&id, c, listed)
                    .await
                    .map_err(|e| missing_as_damage(e, c, &id))?
                {
                    self.state_chains.insert(id, restored.chains.clone());
                    slot.source.restore(&restored.batches).map_err(|e| {
                        Error::Checkpoint(format!(
                            "restoring source '{name}' from {} (epoch {c}): {e}",
                            self.checkpoint.location()
                        ))
                    })?;
                }
            }
            self.pipeline_high = entry.pipeline_watermarks.clone();
            for p in &self.pipelines {
                let wm = entry
                    .pipeline_watermarks
                    .get(&p.index)
                    .copied()
                    .unwrap_or(i64::MIN);
                for (id, op) in &p.operators {
                    if let Some(restored) = self
                        .checkpoint
                        .restore_state_listed(id, c, listed)
                        .await
                        .map_err(|e| missing_as_damage(e, c, id))?
                    {
                        self.state_chains.insert(id.clone(), restored.chains.clone());
                        // The rows move into the operator, which may let each
                        // batch go once it has taken what it keeps.
                        let (snapshot_epoch, deltas) = (restored.snapshot_epoch, restored.deltas);
                        check_state_columns(&op.state_schema(), &restored.schema).and_then(|()| {
                            op.restore(restored.batches, wm).map_err(|e| weir_sql::strip_df(&e))
                        }).map_err(|e| {
                            Error::Checkpoint(format!(
                                "state/{id}/ in {} (epoch {c}, from the snapshot of epoch {snapshot_epoch} and {deltas} deltas): {e}",
                                self.checkpoint.location(),
                            ))
                        })?;
                    }
                }
                p.sink.publish(c, || Ok(())).await?;
            }
            for s in self.side_sinks() {
                s.publish(c).await?;
            }
            for (source, ms) in entry.last_data_ms {
                if reset.contains(&source) {
                    continue;
                }
                if let Some(slot) = self.sources.get_mut(&source) {
                    slot.last_data_ms = ms;
                }
            }
        }
        self.last_committed = committed;
        let next = committed.map_or(1, |c| c + 1);
        let logged: Vec<u64> = self.checkpoint.offsets.epochs().await?;
        self.check_damage(committed, &logged, next).await?;
        if let Some(&newest) = logged.last()
            && newest >= next
        {
            if newest > next {
                return Err(Error::Checkpoint(format!(
                    "{} is for epoch {newest}, but the last commit is {:?}: the offsets log is ahead by more than one epoch",
                    self.checkpoint.offsets.url(newest),
                    committed
                )));
            }
            let entry: OffsetsEntry = self.checkpoint.offsets.read(next).await?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} vanished while reading it",
                    self.checkpoint.offsets.url(next)
                ))
            })?;
            self.pending = Some((next, entry));
        }
        Ok(())
    }

    /// Damage that recovery would otherwise not notice (files that are
    /// there but unreadable are reported where they are read): a commit
    /// without its offsets entry, state of epochs never started, state of
    /// operators this query does not have.
    pub(super) async fn check_damage(&self, committed: Option<u64>, logged: &[u64], next: u64) -> Result<()> {
        if let Some(c) = committed
            && !logged.contains(&c)
        {
            return Err(Error::Checkpoint(format!(
                "{} (epoch {c}) has no offsets entry: {} is missing, so what the epoch read cannot be \
                 known. The checkpoint is damaged; roll back to an earlier epoch with \
                 `weir checkpoint rollback {} --to N` (see `weir checkpoint inspect`)",
                self.checkpoint.commits.url(c),
                self.checkpoint.offsets.url(c),
                self.checkpoint.location()
            )));
        }
        let damaged = |what: String| {
            Error::Checkpoint(format!(
                "{what}. The checkpoint is damaged; roll back to an earlier epoch with `weir checkpoint \
                 rollback {} --to N` (see `weir checkpoint inspect`)",
                self.checkpoint.location()
            ))
        };
        // Every retained epoch up to the last commit is committed and has
        // its offsets entry: a run never leaves a hole (rollback and
        // retention delete from the end and from the start).
        let commits = self.checkpoint.commits.epochs().await?;
        if let Some(&first) = commits.first() {
            for e in first..=committed.unwrap_or(first) {
                if !commits.contains(&e) {
                    return Err(damaged(format!(
                        "{} is missing, between committed epochs {first} and {}",
                        self.checkpoint.commits.url(e),
                        committed.unwrap_or(first)
                    )));
                }
                if !logged.contains(&e) {
                    return Err(damaged(format!(
                        "{} (epoch {e}) has no offsets entry: {} is missing",
                        self.checkpoint.commits.url(e),
                        self.checkpoint.offsets.url(e)
                    )));
                }
            }
        }
        // The retained log entries are not needed to go on (the last commit
        // holds the progress), but a rollback or a replay reads them: a
        // damaged one is reported now, while the epochs before it can
        // still be rolled back to. Read side by side: a few small objects.
        let offsets = futures::future::join_all(commits.iter().map(|&e| self.checkpoint.offsets.read(e)));
        let entries = futures::future::join_all(commits.iter().map(|&e| self.checkpoint.commits.read(e)));
        let (offsets, entries) = futures::join!(offsets, entries);
        for r in offsets {
            r.map_err(|e| damaged(e.to_string()))?;
        }
        for r in entries {
            r.map_err(|e| damaged(e.to_string()))?;
        }
        let pending = logged.contains(&next).then_some(next);
        self.checkpoint.check_orphan_state(committed, pending).await?;
        let known: BTreeSet<String> = self
            .pipelines
            .iter()
            .flat_map(|p| p.operators.iter().map(|(id, _)| id.clone()))
            .chain(self.sources.keys().map(|s| source_state_name(s)))
            .collect();
        for op in self.checkpoint.state_operators().await? {
            if !known.contains(&op) {
                let files = self.checkpoint.state_files(&op).await?;
                return Err(Error::Checkpoint(format!(
                    "{} (epoch {}) is state of '{op}', which is no operator or source of this query; \
                     it was not written by this job. Remove state/{op}/ if it does not belong there",
                    files.first().map_or_else(
                        || self.checkpoint.location().url_of(&format!("state/{op}")),
                        |f| { self.checkpoint.location().url_of(&f.name) }
                    ),
                    files.first().map_or(0, |f| f.epoch),
                )));
            }
        }
        Ok(())
    }
}

/// The restored rows must have the columns the operator keeps now.
fn check_state_columns(expected: &SchemaRef, found: &SchemaRef) -> std::result::Result<(), String> {
    let e: Vec<&DataType> = expected.fields().iter().map(|f| f.data_type()).collect();
    let f: Vec<&DataType> = found.fields().iter().map(|f| f.data_type()).collect();
    if e != f {
        return Err(format!(
            "the state has columns {:?}, but the operator keeps {:?}",
            found.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
            expected.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

/// A state file the last commit names that is gone, as the damage it is
/// (a restore needs every one; a raw "not found" said neither). Only a
/// restore, which holds the checkpoint, says so: `inspect` beside a
/// running job can see retention delete a file it listed.
fn missing_as_damage(e: weir_storage::Error, commit: u64, table: &str) -> weir_storage::Error {
    match e {
        weir_storage::Error::Store {
            url,
            error: object_store::Error::NotFound { .. },
            ..
        } => weir_storage::Error::Corrupt {
            url,
            epoch: Some(commit),
            reason: format!(
                "commit {commit} names this state file, which is missing, and '{table}' cannot be restored without it"
            ),
        },
        e => e,
    }
}
