//! The epoch loop: plan an epoch, write its offsets, read, advance the
//! watermarks, run the pipelines, stage the output, write state, commit,
//! publish (the steps of the protocol in the module's docs).

use super::*;

/// A pipeline's rows of an epoch, and its late rows by late sink.
type PipelineOutput = (Vec<RecordBatch>, Vec<(String, RecordBatch)>);

/// A pipeline whose every row was late: its statement, its rows, and the
/// watermarks before them.
type AllLate = (String, u64, BTreeMap<String, i64>);

/// What running the pipelines of an epoch gave.
pub(super) struct Executed {
    /// Each pipeline's output, in pipeline order.
    outputs: Vec<PipelineOutput>,
    /// Each pipeline's watermark after the epoch (before its operators' lag).
    pipeline_watermarks: BTreeMap<usize, i64>,
    /// Late rows dropped.
    late_rows: u64,
    /// Of which, by pipeline (in pipeline order).
    late_by_pipeline: Vec<u64>,
    /// Pipelines whose every row was late.
    all_late: Vec<AllLate>,
    /// Whether a pipeline with input kept some of it.
    some_on_time: bool,
}

impl StreamingJob {
    /// Runs epochs by the trigger until the input is done (available-now,
    /// once) or `stop` turns true; with `drain`, then closes every window.
    /// An epoch in progress when `stop` turns true is completed first.
    pub async fn run(
        &mut self,
        trigger: Trigger,
        drain: bool,
        stop: watch::Receiver<bool>,
        on_progress: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<RunSummary> {
        self.run_with_warnings(trigger, drain, stop, on_progress, None)
            .await
    }

    /// [`Self::run`], giving `on_warning` the warnings found while a
    /// `--trigger` interval finds no new input (a file changed after it was
    /// read): they would otherwise wait for the next epoch's progress, which
    /// a quiet stream may not have for hours.
    pub async fn run_with_warnings(
        &mut self,
        trigger: Trigger,
        drain: bool,
        mut stop: watch::Receiver<bool>,
        on_progress: &mut (dyn FnMut(&BatchProgress) + Send),
        mut on_warning: Option<&mut (dyn FnMut(&str) + Send)>,
    ) -> Result<RunSummary> {
        if drain && matches!(trigger, Trigger::Interval(_)) {
            return Err(Error::Config(
                "--drain treats the input as complete, so it needs --trigger available-now or once".into(),
            ));
        }
        if trigger == Trigger::AvailableNow {
            for slot in self.sources.values_mut() {
                // A source may wait on its input (a Kafka broker out of
                // reach); a stop ends the wait.
                tokio::select! {
                    frozen = slot.source.freeze() => frozen?,
                    _ = async {
                        // A dropped sender can never say "stop": wait on.
                        if stop.wait_for(|s| *s).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    } => {
                        return Ok(RunSummary {
                            stopped: true,
                            ..RunSummary::default()
                        }
                        .done(self.last_committed, &mut self.warnings));
                    }
                }
            }
        }
        // Batches planned ahead by an earlier run are stale: the sources
        // were frozen again.
        self.ahead.clear();
        let mut summary = RunSummary::default();
        if let Some((epoch, entry)) = self.pending.take() {
            let p = self.run_epoch(epoch, entry, true).await?;
            summary.add(&p);
            on_progress(&p);
            if trigger == Trigger::Once {
                return Ok(summary.done(self.last_committed, &mut self.warnings));
            }
        }
        loop {
            if *stop.borrow() {
                // Stopped early only if there was more to do: input left for
                // a bounded trigger (planning reads nothing), or a drain.
                summary.stopped = match trigger {
                    Trigger::Interval(_) => true,
                    Trigger::Once if summary.epochs > 0 => false,
                    Trigger::Once | Trigger::AvailableNow => {
                        self.plan_epoch(false).await?.is_some()
                            || (drain && self.watermarks.values().any(|&w| w != i64::MAX))
                    }
                };
                return Ok(summary.done(self.last_committed, &mut self.warnings));
            }
            let started = Instant::now();
            let ran = match self.plan_epoch(false).await? {
                Some(entry) => {
                    let epoch = self.next_epoch();
                    let p = self.run_epoch(epoch, entry, false).await?;
                    summary.add(&p);
                    on_progress(&p);
                    true
                }
                None => false,
            };
            match trigger {
                Trigger::AvailableNow if ran => continue,
                Trigger::Once if !ran && summary.epochs == 0 => {
                    // Nothing read: no input, or none reachable. The second
                    // is not "done" (status 0 would hide it from a script).
                    if let Some(why) = self.sources.values().find_map(|s| s.source.out_of_reach()) {
                        return Err(Error::Input(format!(
                            "{why}: --trigger once reads what is there now, and could not reach it \
                             (--trigger available-now waits for it, up to the source's 'scan.retry.timeout')"
                        )));
                    }
                    break;
                }
                Trigger::AvailableNow | Trigger::Once => break,
                Trigger::Interval(every) => {
                    if !ran && let Some(f) = on_warning.as_mut() {
                        for w in std::mem::take(&mut self.warnings) {
                            f(&w);
                        }
                    }
                    let wait = every.saturating_sub(started.elapsed());
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            changed = stop.changed() => {
                                // A dropped sender can never say "go on": stop.
                                if changed.is_err() {
                                    return Ok(summary.done(self.last_committed, &mut self.warnings));
                                }
                            }
                        }
                    }
                }
            }
        }
        let undrained = self.watermarks.values().any(|&w| w != i64::MAX);
        if drain && *stop.borrow() && undrained {
            summary.stopped = true;
        } else if drain && undrained {
            let entry = self
                .plan_epoch(true)
                .await?
                .ok_or_else(|| Error::Checkpoint("internal error: no drain epoch was planned".into()))?;
            let epoch = self.next_epoch();
            let p = self.run_epoch(epoch, entry, false).await?;
            summary.add(&p);
            on_progress(&p);
        }
        Ok(summary.done(self.last_committed, &mut self.warnings))
    }

    pub(super) fn next_epoch(&self) -> u64 {
        self.last_committed.map_or(1, |c| c + 1)
    }

    /// Asks every source for its next batch; `None` when none has input.
    pub(super) async fn plan_epoch(&mut self, drain: bool) -> Result<Option<OffsetsEntry>> {
        let mut offsets = BTreeMap::new();
        let mut ahead = std::mem::take(&mut self.ahead);
        if !drain {
            for (name, slot) in self.sources.iter_mut() {
                let planned = match ahead.remove(name) {
                    Some(planned) => planned?,
                    None => slot.source.plan_batch().await?,
                };
                self.warnings.extend(slot.source.take_warnings());
                if let Some(o) = planned {
                    offsets.insert(name.clone(), o);
                }
            }
            if offsets.is_empty() {
                return Ok(None);
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        // Each bounded table's version for this epoch, snapshotted into the
        // checkpoint before the entry names it.
        let mut lookups = BTreeMap::new();
        for (name, table) in self.lookups.iter_mut() {
            let (version, warning) = table.plan(&self.checkpoint).await?;
            self.warnings.extend(warning);
            lookups.insert(name.clone(), version);
        }
        let idle = self
            .sources
            .iter()
            .filter(|(name, slot)| {
                !offsets.contains_key(*name)
                    && slot
                        .idle_timeout_ms
                        .is_some_and(|t| now.saturating_sub(slot.last_data_ms) >= t)
            })
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Some(OffsetsEntry {
            sources: offsets,
            watermarks_in: self.watermarks.clone(),
            drain,
            processing_time_ms: now,
            idle,
            lookups,
        }))
    }

    /// Runs epoch `epoch` over the input `entry` describes, step by step
    /// (the protocol in the module's docs); `replayed` when its offsets
    /// entry was written by an earlier process.
    pub(super) async fn run_epoch(
        &mut self,
        epoch: u64,
        entry: OffsetsEntry,
        replayed: bool,
    ) -> Result<BatchProgress> {
        let started = Instant::now();
        let offsets_bytes = self.write_offsets(epoch, &entry, replayed).await?;
        // Stateless queries on a cluster run where their input is read
        // (`remote_epoch`); otherwise the rows come here.
        let on_executors = if self.queries_run_remotely() {
            match self.run_remote(epoch, &entry).await {
                Ok(ran) => ran,
                Err(e) => return Err(self.abandon(epoch, e).await),
            }
        } else {
            None
        };
        let mut remote_states = Vec::new();
        let (rows_by_source, bad_by_source, watermarks_out, ran, rows_by_sink) = match on_executors {
            Some(mut r) => {
                remote_states = std::mem::take(&mut r.states);
                self.finish_remote_stage(epoch, &r)?;
                self.dead_letters.stage(epoch, &BTreeMap::new()).await?;
                self.hooks.reached(Step::SinkStaged, epoch)?;
                let watermarks_out = self.watermarks_after(&entry, &r.max_time);
                // Pipelines whose every row was late, as a local run finds
                // them.
                let mut all_late = Vec::new();
                let mut some_on_time = false;
                for (p, &late) in self.pipelines.iter().zip(&r.late_by_sink) {
                    let active = active_sources(p, &entry);
                    let rows: u64 = p.sources.iter().filter_map(|s| r.rows_in.get(s)).sum();
                    if rows > 0 && late >= rows {
                        let wms = entry
                            .watermarks_in
                            .iter()
                            .filter(|(s, _)| active.contains(s))
                            .map(|(s, w)| (s.clone(), *w))
                            .collect();
                        all_late.push((p.statement.clone(), rows, wms));
                    } else if rows > 0 {
                        some_on_time = true;
                    }
                }
                let ran = Executed {
                    outputs: Vec::new(),
                    pipeline_watermarks: self
                        .pipelines
                        .iter()
                        .map(|p| (p.index, pipeline_watermark(p, &entry, &watermarks_out)))
                        .collect(),
                    late_rows: r.late_by_sink.iter().sum(),
                    late_by_pipeline: r.late_by_sink.clone(),
                    all_late,
                    some_on_time,
                };
                (r.rows_in, BTreeMap::new(), watermarks_out, ran, r.rows_by_sink)
            }
            None => {
                let (input, bad) = match self.read_input(epoch, &entry).await {
                    Ok(read) => read,
                    Err(e) => return Err(self.abandon(epoch, e).await),
                };
                let lookups = match self.load_lookups(epoch, &entry).await {
                    Ok(l) => l,
                    Err(e) => return Err(self.abandon(epoch, e).await),
                };
                // (A cluster reads the input where it runs: nothing to
                // read ahead here.)
                if !entry.drain && self.remote.is_none() {
                    self.plan_ahead().await;
                }
                let watermarks_out = self.advance_watermarks(&entry, &input)?;
                if let Err(e) = self.catch_up().await {
                    return Err(self.abandon(epoch, e).await);
                }
                let ran = self
                    .execute(epoch, &entry, &input, &lookups, &watermarks_out)
                    .await?;
                self.hooks.reached(Step::BeforeSink, epoch)?;
                let rows_by_sink = self
                    .stage(epoch, &ran.outputs, &bad)
                    .await
                    .map_err(|e| left_to_replay(epoch, e))?;
                let rows_by_source: BTreeMap<String, u64> = input
                    .iter()
                    .map(|(name, r)| (name.clone(), r.batches.iter().map(|b| b.num_rows() as u64).sum()))
                    .collect();
                let bad_by_source: BTreeMap<String, u64> = bad
                    .iter()
                    .map(|(name, b)| (name.clone(), b.len() as u64))
                    .collect();
                (rows_by_source, bad_by_source, watermarks_out, ran, rows_by_sink)
            }
        };
        let rows_out = rows_by_sink.iter().sum();
        let checkpoint_started = Instant::now();
        let (state_bytes, operators, chains) = self
            .write_state(epoch, &remote_states)
            .await
            .map_err(|e| left_to_replay(epoch, e))?;
        let rows_of = |name: &String| rows_by_source.get(name).copied().unwrap_or(0);
        let rows_in = rows_by_source.values().sum();
        let bad_rows = bad_by_source.values().sum();
        // What each pipeline's operators were run to: never lower than
        // before (see `pipeline_high`).
        let pipeline_watermarks: BTreeMap<usize, i64> = ran
            .pipeline_watermarks
            .iter()
            .map(|(&p, &w)| (p, w.max(self.pipeline_high.get(&p).copied().unwrap_or(i64::MIN))))
            .collect();
        let commit = CommitEntry {
            watermarks: watermarks_out,
            rows_in,
            rows_out,
            late_rows: ran.late_rows,
            bad_rows,
            committed_at: chrono::Utc::now().to_rfc3339(),
            last_data_ms: BTreeMap::new(),
            pipeline_watermarks,
            state: Some(chains.clone()),
        };
        let read: Vec<&String> = rows_by_source.keys().collect();
        let commit_bytes = self.commit(epoch, &entry, &read, commit).await?;
        self.state_chains = chains;
        // Their state here is as of before this epoch.
        self.behind.extend(remote_states.into_iter().map(|s| s.id));
        let checkpoint_ms = checkpoint_started.elapsed().as_secs_f64() * 1000.0;
        self.publish(epoch).await?;
        self.warn_of_late_rows(&entry, rows_in, &ran.all_late).await;
        let batch_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (watermark_ms, watermark) =
            shown_watermark(self.watermarks.values().copied().min().unwrap_or(i64::MIN));
        let sources = self
            .sources
            .iter()
            .map(|(name, slot)| SourceProgress {
                name: name.clone(),
                rows_in: rows_of(name),
                bad_rows: bad_by_source.get(name).copied().unwrap_or(0),
                watermark_ms: self.watermarks.get(name).and_then(|&w| shown_watermark(w).0),
                backlog: slot.source.backlog(),
                lag: slot.source.lag().into_iter().collect(),
            })
            .collect();
        let sinks = self
            .pipelines
            .iter()
            .zip(rows_by_sink)
            .zip(&ran.late_by_pipeline)
            .map(|((p, rows_out), &late_rows)| SinkProgress {
                name: p.sink.name().to_string(),
                rows_out,
                late_rows,
            })
            .collect();
        Ok(BatchProgress {
            epoch,
            replayed,
            drain: entry.drain,
            rows_in,
            rows_out,
            late_rows: ran.late_rows,
            bad_rows,
            rows_per_sec: if batch_ms > 0.0 {
                rows_in as f64 / (batch_ms / 1000.0)
            } else {
                0.0
            },
            watermark_ms,
            watermark,
            state_rows: operators.iter().map(|o| o.state_rows).sum(),
            state_bytes,
            batch_ms,
            checkpoint_ms,
            all_late: !ran.all_late.is_empty() && !ran.some_on_time,
            warnings: std::mem::take(&mut self.warnings),
            checkpoint_bytes: offsets_bytes + state_bytes + commit_bytes,
            sources,
            sinks,
            operators,
        })
    }

    /// Step 2: the write-ahead entry, created only if absent (a replayed
    /// epoch's is there already). Returns the bytes written.
    async fn write_offsets(&self, epoch: u64, entry: &OffsetsEntry, replayed: bool) -> Result<u64> {
        self.lease.check(&format!("starting epoch {epoch}")).await?;
        let mut written = 0;
        if !replayed {
            written = self.checkpoint.offsets.create(epoch, entry).await.map_err(|e| match e {
                weir_storage::Error::AlreadyExists { url } => Error::Checkpoint(format!(
                    "{url} appeared while this job was running: another process is running this job on the same checkpoint"
                )),
                e => e.into(),
            })?;
        }
        self.hooks.reached(Step::OffsetsWritten, epoch)?;
        Ok(written)
    }

    /// Lets each source plan the next epoch's batch now, once this epoch's
    /// rows are read, and start reading it while this epoch runs
    /// (`Source::plan_ahead`): on more than one thread, the next epoch's
    /// decoding then overlaps this epoch's operators and commit. Nothing
    /// is written: the next epoch's offsets entry is logged only after
    /// this epoch commits, as without planning ahead.
    async fn plan_ahead(&mut self) {
        for (name, slot) in self.sources.iter_mut() {
            match slot.source.plan_ahead().await {
                Ok(None) => {}
                Ok(Some(planned)) => {
                    self.ahead.insert(name.clone(), Ok(planned));
                }
                Err(e) => {
                    self.ahead.insert(name.clone(), Err(e));
                }
            }
        }
    }

    /// Each watermarked source's watermark after this epoch's rows: the
    /// greatest event time read so far, less the declared delay (the end of
    /// time for the drain epoch).
    fn advance_watermarks(
        &self,
        entry: &OffsetsEntry,
        input: &BTreeMap<String, SourceRows>,
    ) -> Result<BTreeMap<String, i64>> {
        let mut max_time = BTreeMap::new();
        for name in entry.watermarks_in.keys() {
            let (Some(slot), Some(rows)) = (self.sources.get(name), input.get(name)) else {
                continue;
            };
            let Some(decl) = &slot.watermark else { continue };
            // A source that knows its event-time frontier says it (a Kafka
            // source's is per partition: the least of their greatest).
            if slot.source.knows_max_time(&decl.column) {
                max_time.insert(name.clone(), rows.max_time_ms);
                continue;
            }
            let declared = slot.source.schema().index_of(&decl.column)?;
            let Some(idx) = slot.columns.iter().position(|&c| c == declared) else {
                return Err(Error::Config(format!(
                    "source '{name}' did not read its watermark column"
                )));
            };
            max_time.insert(name.clone(), rows.batch_max(idx)?.iter().flatten().copied().max());
        }
        Ok(self.watermarks_after(entry, &max_time))
    }

    /// The watermarks after an epoch whose rows of each source reached
    /// `max_time` (the greatest event time, `None` without rows).
    pub(super) fn watermarks_after(
        &self,
        entry: &OffsetsEntry,
        max_time: &BTreeMap<String, Option<i64>>,
    ) -> BTreeMap<String, i64> {
        let mut watermarks_out = entry.watermarks_in.clone();
        for (name, wm) in watermarks_out.iter_mut() {
            if entry.drain {
                *wm = i64::MAX;
                continue;
            }
            let (Some(slot), Some(Some(m))) = (self.sources.get(name), max_time.get(name)) else {
                continue;
            };
            let Some(decl) = &slot.watermark else { continue };
            *wm = (*wm).max(m.saturating_sub(decl.delay_ms));
        }
        watermarks_out
    }

    /// Restores the operators whose epochs ran on a cluster's executors
    /// ([`StreamingJob::behind`]) from the checkpoint, as of the last
    /// commit, before an epoch runs them here.
    async fn catch_up(&mut self) -> Result<()> {
        if self.behind.is_empty() {
            return Ok(());
        }
        let Some(c) = self.last_committed else {
            self.behind.clear();
            return Ok(());
        };
        for p in &self.pipelines {
            let wm = self.pipeline_high.get(&p.index).copied().unwrap_or(i64::MIN);
            for (id, op) in &p.operators {
                if !self.behind.contains(id) {
                    continue;
                }
                let restored = self
                    .checkpoint
                    .restore_state_listed(id, c, Some(&self.state_chains))
                    .await?;
                let batches = restored.map(|r| r.batches).unwrap_or_default();
                op.restore(batches, wm).map_err(|e| {
                    Error::Checkpoint(format!(
                        "state/{id}/ in {} (epoch {c}): {}",
                        self.checkpoint.location(),
                        weir_sql::strip_df(&e)
                    ))
                })?;
                // Its next checkpoint here starts a chain of its own.
                self.policies.remove(id);
            }
        }
        self.behind.clear();
        Ok(())
    }

    /// Step 4: each pipeline's plan over its sources' rows, with the
    /// watermarks before and after them. An error (or a panic) rolls the
    /// epoch back.
    async fn execute(
        &mut self,
        epoch: u64,
        entry: &OffsetsEntry,
        input: &BTreeMap<String, SourceRows>,
        lookups: &BTreeMap<String, Arc<Vec<RecordBatch>>>,
        watermarks_out: &BTreeMap<String, i64>,
    ) -> Result<Executed> {
        let watermarks_in = &entry.watermarks_in;
        // DataFusion's own nodes keep what they computed in one execution:
        // a hash repartition runs once per instance, a hash join keeps its
        // build side, a scalar subquery its value. Each epoch therefore
        // runs a fresh copy of the plan. Weir's operators share their
        // state and metrics with the copy; DataFusion's nodes start new
        // metrics (EXPLAIN ANALYZE then shows the last epoch's for them).
        for p in &mut self.pipelines {
            p.plan = datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(&p.plan))?;
        }
        let mut ran = Executed {
            outputs: Vec::with_capacity(self.pipelines.len()),
            pipeline_watermarks: BTreeMap::new(),
            late_rows: 0,
            late_by_pipeline: Vec::with_capacity(self.pipelines.len()),
            all_late: Vec::new(),
            some_on_time: false,
        };
        for p in &self.pipelines {
            let active = active_sources(p, entry);
            let pick = |m: &BTreeMap<String, i64>| -> BTreeMap<String, i64> {
                m.iter()
                    .filter(|(s, _)| active.contains(s))
                    .map(|(s, w)| (s.clone(), *w))
                    .collect()
            };
            let wm_out = pick(watermarks_out).values().copied().min().unwrap_or(i64::MIN);
            ran.pipeline_watermarks.insert(p.index, wm_out);
            let epoch_input = Arc::new(EpochInput {
                epoch,
                batches: input
                    .iter()
                    .filter(|(s, _)| p.sources.contains(*s))
                    .map(|(s, b)| (s.clone(), b.clone()))
                    .collect(),
                lookups: lookups
                    .iter()
                    .filter(|(t, _)| p.lookups.contains(*t))
                    .map(|(t, rows)| (t.clone(), Arc::clone(rows)))
                    .collect(),
                source_watermarks_in: pick(watermarks_in).into_iter().collect(),
                watermark_out: wm_out,
                late_rows: Default::default(),
                late_batches: Default::default(),
                processing_time_ms: entry.processing_time_ms,
            });
            let config = self
                .state
                .config()
                .clone()
                .with_extension(Arc::clone(&epoch_input));
            let ctx = Arc::new(TaskContext::from(&self.state).with_session_config(config));
            let pipeline_rows: u64 = epoch_input
                .batches
                .values()
                .map(|r| r.batches.iter().map(|b| b.num_rows() as u64).sum::<u64>())
                .sum();
            let out = match run_plan(&p.plan, ctx).await {
                Ok(out) => out,
                Err(e) => {
                    let e = Error::Runtime(weir_sql::preprocess::hide_placeholders(
                        &format!("epoch {epoch}, {}: {e}", p.statement),
                        &self.tvfs,
                    ));
                    return Err(self.abandon(epoch, e).await);
                }
            };
            let late = epoch_input.late_rows.load(Ordering::Relaxed);
            ran.late_rows += late;
            ran.late_by_pipeline.push(late);
            if pipeline_rows > 0 && late >= pipeline_rows {
                ran.all_late
                    .push((p.statement.clone(), pipeline_rows, pick(watermarks_in)));
            } else if pipeline_rows > 0 {
                // A pipeline kept some of its rows: not every row was late.
                ran.some_on_time = true;
            }
            let late =
                std::mem::take(&mut *epoch_input.late_batches.lock().unwrap_or_else(|e| e.into_inner()));
            ran.outputs.push((out, late));
        }
        Ok(ran)
    }

    /// Step 5: each sink stages the epoch's output (late rows and bad
    /// records too); returns the rows written to each query's sink, in
    /// pipeline order.
    async fn stage(
        &self,
        epoch: u64,
        outputs: &[PipelineOutput],
        bad: &BTreeMap<String, Vec<BadRecord>>,
    ) -> Result<Vec<u64>> {
        let mut rows_out = Vec::with_capacity(self.pipelines.len());
        for (p, (out, late)) in self.pipelines.iter().zip(outputs) {
            let mid = || self.hooks.reached(Step::MidSinkWrite, epoch);
            let (rows, _) = p.sink.stage(epoch, &p.schema, out, mid).await?;
            rows_out.push(rows);
            for l in &p.late_sinks {
                let rows: Vec<RecordBatch> = late
                    .iter()
                    .filter(|(t, _)| t == l.table())
                    .map(|(_, b)| b.clone())
                    .collect();
                l.stage(epoch, &rows).await?;
            }
        }
        self.dead_letters.stage(epoch, bad).await?;
        self.hooks.reached(Step::SinkStaged, epoch)?;
        Ok(rows_out)
    }

    /// Step 6: sources' progress and operators' state, as a delta of what
    /// changed or now and then a snapshot, one file per part (shard) of a
    /// table that checkpoints its shards apart. Returns the bytes written,
    /// each operator's state, and the state files that restore every
    /// table as of this epoch (for the commit to name).
    async fn write_state(
        &mut self,
        epoch: u64,
        remote: &[super::remote_epoch::RemoteState],
    ) -> Result<(u64, Vec<OperatorProgress>, BTreeMap<String, StateChains>)> {
        let mut state_bytes = 0;
        let mut operators = Vec::new();
        let mut chains = self.state_chains.clone();
        // One table's parts for this epoch: (table, kind, schema,
        // unit_key_len, parts), a part per shard (`None`: unchanged).
        type Parts = Vec<Option<crate::exec::StateChange>>;
        let mut tables: Vec<(String, StateKind, SchemaRef, usize, Parts)> = Vec::new();
        // A table whose stored parts do not match its shards (another
        // thread count before a restart) starts over with a snapshot.
        let mismatched = |chains: &BTreeMap<String, StateChains>, id: &str, parts: usize| {
            chains.get(id).is_none_or(|c| c.shards.len() != parts)
        };
        for (name, slot) in self.sources.iter_mut() {
            let id = source_state_name(name);
            let full = self.policies.entry(id.clone()).or_default().full(None) || mismatched(&chains, &id, 1);
            if let Some(change) = slot.source.checkpoint(full)? {
                tables.push((
                    id,
                    kind_of(full),
                    slot.source.progress_schema(),
                    1,
                    vec![Some(change)],
                ));
            }
        }
        for p in &self.pipelines {
            for (id, op) in &p.operators {
                // The executors wrote it (added below).
                if remote.iter().any(|r| &r.id == id) {
                    continue;
                }
                let held = op.state_rows() as u64;
                let n = op.state_shards().max(1);
                let full = self.policies.entry(id.clone()).or_default().full(Some(held))
                    || mismatched(&chains, id, n);
                let mut parts = op.checkpoint(full)?;
                if parts.len() != n {
                    return Err(Error::Runtime(format!(
                        "internal error: operator {id} checkpointed {} parts of its state, not {n}",
                        parts.len()
                    )));
                }
                if parts.iter().any(Option::is_some) {
                    if full {
                        // Every part restarts its chain with a snapshot,
                        // an empty one if it holds nothing.
                        for part in &mut parts {
                            part.get_or_insert_with(Default::default);
                        }
                    }
                    tables.push((
                        id.clone(),
                        kind_of(full),
                        op.state_schema(),
                        op.unit_key_len(),
                        parts,
                    ));
                }
                operators.push(OperatorProgress {
                    name: id.clone(),
                    state_rows: held,
                    state_bytes: 0,
                });
            }
        }
        // Encoded on every thread the job has (the epoch's other work is
        // done), then written side by side.
        let threads = self.state.config().target_partitions().max(1);
        let mut owners: Vec<(usize, usize)> = Vec::new();
        let encoded = {
            let mut states: Vec<(&str, StateWrite<'_>)> = Vec::new();
            for (t, (id, kind, schema, unit_key_len, parts)) in tables.iter().enumerate() {
                for (k, part) in parts.iter().enumerate() {
                    let Some(change) = part else { continue };
                    owners.push((t, k));
                    states.push((
                        id.as_str(),
                        StateWrite {
                            kind: *kind,
                            shard: ShardOf::new(k, parts.len()),
                            schema,
                            unit_key_len: *unit_key_len,
                            upserts: &change.upserts,
                            deletes: &change.deletes,
                            attempt: None,
                        },
                    ));
                }
            }
            self.checkpoint.encode_states(epoch, &states, threads)?
        };
        // Writing a state file deletes the other kind's for its epoch: a
        // process that stalled past its lease must not, since its
        // replacement may have committed this epoch naming that file.
        self.lease
            .ensure(&format!("writing epoch {epoch}'s state"))
            .await?;
        let written =
            futures::future::try_join_all(encoded.into_iter().map(|e| self.checkpoint.put_state(e))).await?;
        let mut table_bytes = vec![0u64; tables.len()];
        for (&(t, _), bytes) in owners.iter().zip(written) {
            table_bytes[t] += bytes;
        }
        for ((id, kind, _, _, parts), bytes) in tables.into_iter().zip(table_bytes) {
            let rows = parts
                .iter()
                .flatten()
                .flat_map(|c| &c.upserts)
                .map(|b| b.num_rows() as u64)
                .sum();
            // The files that restore the table as of this epoch: a snapshot
            // (of every part) starts them over; a delta adds to its part's.
            match kind {
                StateKind::Snapshot => {
                    chains.insert(
                        id.clone(),
                        StateChains {
                            shards: vec![vec![epoch]; parts.len()],
                            generation: self.metadata.state_generation(&id),
                            attempts: BTreeMap::new(),
                        },
                    );
                }
                StateKind::Delta => {
                    let chain = chains.entry(id.clone()).or_default();
                    for (k, part) in parts.iter().enumerate() {
                        if part.is_some() {
                            chain.shards[k].push(epoch);
                        }
                    }
                }
            }
            self.policies.entry(id).or_default().record(kind, bytes, rows);
            state_bytes += bytes;
        }
        // What the executors wrote: each shard's file under its attempt's
        // name, which the commit names exactly, so it must be here.
        let checkpoint = &self.checkpoint;
        let reported = remote.iter().flat_map(|r| {
            r.reports.iter().filter_map(move |report| {
                let (kind, bytes) = report.state?;
                Some(checkpoint.check_reported_state(
                    &r.id,
                    epoch,
                    kind,
                    weir_storage::state::ShardOf::new(report.shard, r.shards),
                    &report.attempt,
                    bytes,
                ))
            })
        });
        futures::future::try_join_all(reported).await?;
        for r in remote {
            let kind = kind_of(r.full);
            let mut written = 0;
            match kind {
                StateKind::Snapshot => {
                    chains.insert(
                        r.id.clone(),
                        StateChains {
                            shards: vec![Vec::new(); r.shards],
                            generation: self.metadata.state_generation(&r.id),
                            attempts: BTreeMap::new(),
                        },
                    );
                }
                StateKind::Delta => {}
            }
            let chain = chains.entry(r.id.clone()).or_default();
            chain.shards.resize(r.shards, Vec::new());
            for report in &r.reports {
                let Some((k, bytes)) = report.state else {
                    if r.full {
                        return Err(Error::Runtime(format!(
                            "internal error: shard {} of operator {} wrote no snapshot in epoch {epoch}",
                            report.shard, r.id
                        )));
                    }
                    continue;
                };
                if k != kind {
                    return Err(Error::Runtime(format!(
                        "internal error: shard {} of operator {} wrote a state file of another kind",
                        report.shard, r.id
                    )));
                }
                chain.shards[report.shard].push(epoch);
                chain.attempts.insert(
                    weir_storage::state::attempt_key(report.shard, epoch),
                    report.attempt.clone(),
                );
                written += bytes;
            }
            // Attempts of files no chain holds any longer are dropped.
            let live: BTreeSet<String> = chain
                .shards
                .iter()
                .enumerate()
                .flat_map(|(k, c)| c.iter().map(move |&e| weir_storage::state::attempt_key(k, e)))
                .collect();
            chain.attempts.retain(|key, _| live.contains(key));
            self.policies
                .entry(r.id.clone())
                .or_default()
                .record(kind, written, 0);
            state_bytes += written;
            operators.push(OperatorProgress {
                name: r.id.clone(),
                state_rows: r.reports.iter().map(|s| s.state_rows).sum(),
                state_bytes: 0,
            });
        }
        for op in &mut operators {
            op.state_bytes = self.policies.get(&op.name).map_or(0, SnapshotPolicy::bytes);
        }
        self.hooks.reached(Step::StateWritten, epoch)?;
        Ok((state_bytes, operators, chains))
    }

    /// Step 7: `commits/N`, created only if absent. Only now is the epoch
    /// done; the job's watermarks move to the commit's. Returns the bytes
    /// written.
    async fn commit(
        &mut self,
        epoch: u64,
        entry: &OffsetsEntry,
        read: &[&String],
        mut commit: CommitEntry,
    ) -> Result<u64> {
        for &name in read {
            if let Some(slot) = self.sources.get_mut(name) {
                slot.last_data_ms = entry.processing_time_ms;
            }
        }
        commit.last_data_ms = self
            .sources
            .iter()
            .map(|(n, s)| (n.clone(), s.last_data_ms))
            .collect();
        self.lease.check(&format!("committing epoch {epoch}")).await?;
        // What the commit names (offsets, state, staged sink files and
        // their manifests) reaches the disk before the commit does.
        self.sync_stores().await.map_err(|e| left_to_replay(epoch, e))?;
        let written = self.checkpoint.commits.create(epoch, &commit).await.map_err(|e| match e {
            weir_storage::Error::AlreadyExists { url } => Error::Checkpoint(format!(
                "{url} was committed by another process: two processes are running this job on the same checkpoint"
            )),
            // A store can fail a write it made (a timeout after S3 kept
            // it): only the next run's read of the checkpoint knows.
            e => noted(
                e.into(),
                &format!(
                    "epoch {epoch} was not committed, or its commit was written but not confirmed: the next run \
                     looks, and replays it if it was not, as after a crash"
                ),
            ),
        })?;
        // The commit on the disk before the next epoch writes anything: a
        // later offsets entry there without this commit would be a log
        // ahead by two epochs. (The files it publishes next reach the disk
        // with the next epoch's, or when the job closes; a power cut before
        // that is mended by publishing the last commit again on restart.)
        self.checkpoint.location().sync().await.map_err(|e| {
            noted(
                e.into(),
                &format!(
                    "epoch {epoch} is committed, but its commit may not be on the disk yet; the next run \
                     replays it if a power cut lost it"
                ),
            )
        })?;
        self.last_committed = Some(epoch);
        self.watermarks = commit.watermarks;
        self.pipeline_high = commit.pipeline_watermarks;
        self.hooks.reached(Step::Committed, epoch)?;
        Ok(written)
    }

    /// Flushes the local file systems of the checkpoint and of the sinks,
    /// each once ([`weir_storage::Location::sync`]).
    pub(super) async fn sync_stores(&self) -> Result<()> {
        let locations = std::iter::once(self.checkpoint.location())
            .chain(
                self.pipelines
                    .iter()
                    .filter_map(|p| p.sink.files())
                    .map(|f| f.location()),
            )
            .chain(self.side_sinks().map(|s| s.location()));
        let mut synced: Vec<&weir_storage::Location> = Vec::new();
        for loc in locations {
            if !loc.needs_sync() || synced.iter().any(|s| s.syncs_with(loc)) {
                continue;
            }
            loc.sync().await?;
            synced.push(loc);
        }
        Ok(())
    }

    /// Step 8: each sink makes the committed epoch's output visible; now and
    /// then, old checkpoint files go.
    async fn publish(&self, epoch: u64) -> Result<()> {
        let committed = |e: Error| {
            noted(
                e,
                &format!("epoch {epoch} is committed; the next run publishes its output, as after a crash"),
            )
        };
        for p in &self.pipelines {
            p.sink
                .publish(epoch, || self.hooks.reached(Step::MidPublish, epoch))
                .await
                .map_err(committed)?;
        }
        for s in self.side_sinks() {
            s.publish(epoch).await.map_err(committed)?;
        }
        self.hooks.reached(Step::Published, epoch)?;
        // Often enough that a checkpoint never holds more than twice what
        // it retains (a small `checkpoint.retain_epochs` prunes each time),
        // and, for a large one, a tenth of it at a time: a pass lists every
        // retained file, so passes every ten epochs over 100,000 retained
        // ones made each epoch slower as they piled up.
        let every = self
            .retain_epochs
            .clamp(1, RETENTION_EVERY)
            .max(self.retain_epochs / RETENTION_EVERY);
        if epoch.is_multiple_of(every) {
            self.retain(epoch).await?;
        }
        Ok(())
    }

    /// Warnings about late rows for the progress line: rows read by a
    /// drained checkpoint (once), or an epoch whose every row was late.
    async fn warn_of_late_rows(&mut self, entry: &OffsetsEntry, rows_in: u64, all_late: &[AllLate]) {
        let drained = !entry.watermarks_in.is_empty() && entry.watermarks_in.values().all(|&w| w == i64::MAX);
        if drained && rows_in > 0 && !all_late.is_empty() {
            if !self.warned_drained {
                self.warned_drained = true;
                let warning = self.drained_warning().await;
                self.warnings.push(warning);
            }
            return;
        }
        for (statement, rows, wms) in all_late {
            // No source has a watermark yet: no row had an event time.
            if wms.values().all(|&w| w == i64::MIN) {
                self.warnings.push(format!(
                    "every one of the {rows} rows that {statement} read this epoch had no event time (NULL in \
                     the WATERMARK column), so it belongs to no window and is handled as late (dropped, or \
                     sent to 'late.sink'); declare the column NOT NULL to have such rows be bad records \
                     instead ('on_error')"
                ));
                continue;
            }
            let shown: Vec<String> = wms
                .iter()
                .map(|(s, &w)| {
                    let at = match shown_watermark(w) {
                        (_, Some(text)) => text,
                        // Beyond what a date can show.
                        (Some(ms), None) => format!("{ms} ms after 1970"),
                        (None, None) => "none yet".into(),
                    };
                    format!("'{s}' at {at}")
                })
                .collect();
            self.warnings.push(format!(
                "every one of the {rows} rows that {statement} read this epoch was late: older than the \
                 watermark when it arrived ({}), so its windows had closed (or had no event time: NULL). \
                 Late rows are dropped (or sent to 'late.sink'); a longer WATERMARK delay keeps windows open \
                 longer",
                shown.join(", ")
            ));
        }
    }

    /// The warning for rows read by a checkpoint whose input was declared
    /// complete (`--drain`): every one of them is late.
    pub(super) async fn drained_warning(&self) -> String {
        let loc = self.checkpoint.location();
        let rollback = match self.drain_epoch().await.ok().flatten() {
            Some(e) if e > 1 => format!(
                "`weir checkpoint rollback {loc} --to {}` undoes the drain (epoch {e})",
                e - 1
            ),
            _ => format!("`weir checkpoint rollback {loc} --to N` to an epoch before the drain undoes it"),
        };
        format!(
            "this checkpoint was drained: a run with --drain declared its input complete and moved the \
             watermark to the end of time (closing every window, and every time-bounded join's wait for \
             matches), so every row its watermark judges now is late (dropped, or sent to 'late.sink'). To add input to a job, run it without --drain; {rollback}, or give the \
             job a new --checkpoint"
        )
    }

    /// Each bounded table's rows at the version the entry names (an entry
    /// written before the job joined with a table names none: the current
    /// version is used).
    async fn load_lookups(
        &mut self,
        epoch: u64,
        entry: &OffsetsEntry,
    ) -> Result<BTreeMap<String, Arc<Vec<RecordBatch>>>> {
        let mut out = BTreeMap::new();
        for (name, table) in self.lookups.iter_mut() {
            let version = match entry.lookups.get(name) {
                Some(v) => v.clone(),
                None => {
                    let (v, warning) = table.plan(&self.checkpoint).await?;
                    self.warnings.extend(warning);
                    v
                }
            };
            let rows = table
                .load(&version, &self.checkpoint)
                .await
                .map_err(|e| Error::Checkpoint(format!("epoch {epoch}: {e}")))?;
            out.insert(name.clone(), rows);
        }
        Ok(out)
    }

    /// Reads each source's offset: its rows, and its bad records.
    pub(super) async fn read_input(
        &mut self,
        epoch: u64,
        entry: &OffsetsEntry,
    ) -> Result<(BTreeMap<String, SourceRows>, BTreeMap<String, Vec<BadRecord>>)> {
        let mut input = BTreeMap::new();
        let mut bad = BTreeMap::new();
        for (name, offset) in &entry.sources {
            let Some(slot) = self.sources.get_mut(name) else {
                return Err(self.unknown_source(epoch, name));
            };
            let read = match &self.remote {
                None => slot.source.read_batch(offset).await?,
                Some(remote) => {
                    let parts = slot.source.remote_parts(offset)?;
                    let mut read = Vec::with_capacity(parts.len());
                    let mut wave = slot.source.remote_first_wave().unwrap_or(parts.len()).max(1);
                    while read.len() < parts.len()
                        && (read.is_empty() || slot.source.remote_wants_more(offset, &read)?)
                    {
                        let from = read.len();
                        let to = parts.len().min(from.saturating_add(wave));
                        let got = remote
                            .read(crate::remote::RemoteRead {
                                table: slot.decl.clone(),
                                columns: slot.columns.to_vec(),
                                parts: parts[from..to].to_vec(),
                            })
                            .await?;
                        if got.len() != to - from {
                            return Err(Error::Runtime(format!(
                                "source '{name}': {} gave {} parts for {}",
                                remote.describe(),
                                got.len(),
                                to - from
                            )));
                        }
                        read.extend(got);
                        wave = wave.saturating_mul(2);
                    }
                    slot.source.assemble_remote(offset, read)?
                }
            };
            // Maxima the source computed as it decoded: one per batch.
            let mut maxima = std::collections::HashMap::new();
            if let Some((position, m)) = read.time_maxima
                && m.len() == read.batches.len()
            {
                maxima.insert(position, Arc::new(m));
            }
            input.insert(
                name.clone(),
                SourceRows {
                    columns: Arc::clone(&slot.columns),
                    batches: Arc::new(read.batches),
                    max_time_ms: read.max_time_ms,
                    maxima: Arc::new(std::sync::Mutex::new(maxima)),
                },
            );
            bad.insert(name.clone(), read.bad);
        }
        Ok((input, bad))
    }

    /// The error for an offsets entry naming a source this job lacks.
    pub(super) fn unknown_source(&self, epoch: u64, name: &str) -> Error {
        Error::Checkpoint(format!(
            "{} names source '{name}', which this job does not read",
            self.checkpoint.offsets.url(epoch)
        ))
    }

    /// An epoch whose input cannot be read (a bad or vanished file) is rolled
    /// back: nothing of it was committed or published, so its state files and
    /// offsets entry are removed and the next run plans the epoch again
    /// (after the operator has fixed or removed the file). State files go
    /// first: if this is interrupted, the offsets entry is still there and the
    /// epoch is replayed as after any crash.
    pub(super) async fn abandon(&self, epoch: u64, error: Error) -> Error {
        // Only the lease's holder rolls back, and never a committed epoch:
        // a process that stalled past its lease finds its epoch committed
        // by its replacement, whose offsets entry and state these are.
        if let Err(lost) = self.lease.ensure(&format!("rolling back epoch {epoch}")).await {
            return noted(lost, &error.to_string());
        }
        match self.checkpoint.commits.read(epoch).await {
            Ok(Some(_)) => {
                return Error::Checkpoint(format!(
                    "{error}\n(epoch {epoch} was committed by another process meanwhile: two processes are running \
                     this job on the same checkpoint; this one stops and leaves it as it is)"
                ));
            }
            Ok(None) => {}
            Err(e) => {
                return noted(
                    error,
                    &format!("epoch {epoch} was not rolled back: reading its commit failed: {e}"),
                );
            }
        }
        let rollback = async {
            self.checkpoint.delete_epoch_state(epoch).await?;
            self.checkpoint.offsets.delete(epoch).await
        };
        let fix = match &error {
            // A topic's record cannot be fixed in place: let it through.
            Error::Input(m) if m.contains("kafka://") => {
                "a topic's record stays as it is: set 'on_error' = 'skip' or 'dead_letter' on the source to \
                 pass over bad records, and run the job again"
            }
            // A file gone since the epoch was planned: nothing to fix.
            Error::Input(m) if m.contains("Object at location") && m.contains("not found") => {
                "the file is gone: run the job again, and the epoch is planned anew from what is there"
            }
            Error::Input(_) => "fix or remove the file and run the job again",
            _ => "the checkpoint is as it was before it; fix the cause and run the job again",
        };
        let wrap = |text: String| match error {
            Error::Input(_) => Error::Input(text),
            _ => Error::Runtime(text),
        };
        match rollback.await {
            Ok(()) => wrap(format!("{error}\n(epoch {epoch} was not committed; {fix})")),
            Err(e) => wrap(format!(
                "{error}\n(and rolling back uncommitted epoch {epoch} failed: {e})"
            )),
        }
    }
}

/// An error while an epoch's output or state is written (a store that
/// fails or refuses): the epoch is not rolled back, since part of it may
/// be staged, but left to be replayed by the next run, as after a crash
/// (replaying writes each file again). The message says so.
fn left_to_replay(epoch: u64, e: Error) -> Error {
    noted(
        e,
        &format!("epoch {epoch} was not committed; the next run replays it, as after a crash"),
    )
}

/// `e` with a line saying where the epoch stands, in parentheses.
fn noted(e: Error, note: &str) -> Error {
    let note = |m: String| format!("{m}\n({note})");
    match e {
        Error::Input(m) => Error::Input(note(m)),
        Error::Config(m) => Error::Config(note(m)),
        Error::Checkpoint(m) => Error::Checkpoint(note(m)),
        Error::Runtime(m) => Error::Runtime(note(m)),
        e => Error::Runtime(note(e.to_string())),
    }
}

/// How often (in epochs) old checkpoint files are cleaned up.
const RETENTION_EVERY: u64 = 10;

/// When a state table gets a full snapshot instead of a delta: first after
/// the process starts, after many deltas, or once the deltas since the last
/// snapshot add up to more than it (the next restore would read more deltas
/// than state) *and*, for an operator's table, the rows written since the
/// snapshot are more than twice the rows it holds now.
///
/// The rows test keeps a state that only grows from being rewritten: a
/// regular join holds every row it was given, each written once in the
/// delta of its epoch, and a restore reads each of them once, no more than
/// a snapshot would hold. Rewriting it whenever the deltas outgrew the last
/// snapshot wrote the whole state again every few epochs (Nexmark q20: 1.1
/// GB of snapshots beside 0.85 GB of deltas over ten epochs). A table whose
/// units are rewritten or deleted (a window aggregate, an interval join's
/// evicted rows) writes more rows than it holds, and still gets its
/// snapshot.
#[derive(Default)]
pub(super) struct SnapshotPolicy {
    written: bool,
    snapshot_bytes: u64,
    delta_bytes: u64,
    deltas: u32,
    /// Rows in the last snapshot and in the deltas' upserts since.
    rows_written: u64,
}

impl SnapshotPolicy {
    const MAX_DELTAS: u32 = 64;

    /// `held_rows`: the rows the table holds now (`None` for a source's
    /// progress, which the bytes alone decide).
    pub(super) fn full(&self, held_rows: Option<u64>) -> bool {
        if !self.written || self.deltas >= Self::MAX_DELTAS {
            return true;
        }
        if self.delta_bytes <= self.snapshot_bytes.max(64 * 1024) {
            return false;
        }
        held_rows.is_none_or(|held| self.rows_written > 2 * held)
    }

    /// The table's bytes in the checkpoint: the last snapshot and the
    /// deltas since.
    pub(super) fn bytes(&self) -> u64 {
        self.snapshot_bytes + self.delta_bytes
    }

    pub(super) fn record(&mut self, kind: StateKind, bytes: u64, rows: u64) {
        match kind {
            StateKind::Snapshot => {
                *self = SnapshotPolicy {
                    written: true,
                    snapshot_bytes: bytes,
                    delta_bytes: 0,
                    deltas: 0,
                    rows_written: rows,
                }
            }
            StateKind::Delta => {
                self.deltas += 1;
                self.delta_bytes += bytes;
                self.rows_written += rows;
            }
        }
    }
}

fn kind_of(full: bool) -> StateKind {
    if full {
        StateKind::Snapshot
    } else {
        StateKind::Delta
    }
}

/// The pipeline's watermarked sources, less the idle ones (unless all are
/// idle: then nothing advances).
fn active_sources<'a>(p: &Pipeline, entry: &'a OffsetsEntry) -> BTreeSet<&'a String> {
    let mine: BTreeSet<&String> = entry
        .watermarks_in
        .keys()
        .filter(|s| p.sources.contains(*s))
        .collect();
    let awake: BTreeSet<&String> = mine
        .iter()
        .copied()
        .filter(|s| !entry.idle.contains(*s))
        .collect();
    if awake.is_empty() { mine } else { awake }
}

/// A pipeline's watermark after an epoch: the least of its active sources'.
pub(super) fn pipeline_watermark(
    p: &Pipeline,
    entry: &OffsetsEntry,
    watermarks_out: &BTreeMap<String, i64>,
) -> i64 {
    let active = active_sources(p, entry);
    watermarks_out
        .iter()
        .filter(|(s, _)| active.contains(s))
        .map(|(_, &w)| w)
        .min()
        .unwrap_or(i64::MIN)
}

/// Runs a pipeline's plan over an epoch. A panic anywhere in it (in a
/// DataFusion operator or one of ours) becomes an error instead of ending
/// the process, so the driver can roll the epoch back.
async fn run_plan(plan: &Arc<dyn ExecutionPlan>, ctx: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(collect(Arc::clone(plan), ctx))
        .catch_unwind()
        .await
    {
        Ok(r) => Ok(r?),
        Err(panic) => Err(Error::Runtime(format!(
            "internal error (a bug in Weir, please report it): {}",
            crate::panics::message(panic.as_ref())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one table's epochs under the policy: each epoch's delta (or
    /// snapshot) bytes and rows follow from the rows it writes and holds.
    /// Returns the epochs that wrote snapshots.
    fn snapshots(epochs: u64, written_rows: impl Fn(u64) -> u64, held_rows: impl Fn(u64) -> u64) -> Vec<u64> {
        let mut policy = SnapshotPolicy::default();
        let mut out = vec![];
        for e in 1..=epochs {
            let held = held_rows(e);
            let full = policy.full(Some(held));
            let rows = if full { held } else { written_rows(e) };
            if full {
                out.push(e);
            }
            policy.record(kind_of(full), rows * 100, rows);
        }
        out
    }

    #[test]
    fn a_state_that_only_grows_is_not_rewritten() {
        // A regular join: each epoch adds 10,000 rows and rewrites none.
        let s = snapshots(200, |_| 10_000, |e| e * 10_000);
        assert_eq!(
            s,
            vec![1, 66, 131, 196],
            "a snapshot first and after every 64 deltas"
        );
    }

    #[test]
    fn a_state_that_rewrites_its_rows_is_snapshotted() {
        // A window aggregate: 10,000 rows held, each epoch rewrites 4,000.
        let s = snapshots(20, |_| 4_000, |_| 10_000);
        assert!(s.len() >= 5, "{s:?}");
        // An interval join: each epoch adds 10,000 rows and evicts as many.
        let s = snapshots(20, |_| 10_000, |_| 50_000);
        assert!(s.len() >= 2 && s.len() <= 4, "{s:?}");
    }

    #[test]
    fn a_source_progress_table_follows_its_bytes() {
        let mut policy = SnapshotPolicy::default();
        assert!(policy.full(None));
        policy.record(StateKind::Snapshot, 100_000, 1);
        policy.record(StateKind::Delta, 60_000, 1);
        assert!(!policy.full(None));
        policy.record(StateKind::Delta, 60_000, 1);
        assert!(policy.full(None));
    }
}
