//! An epoch whose queries run on a cluster's executors (`weir run
//! --cluster`, every query stateless; see [`crate::remote`]).
//!
//! The protocol is the local one; only steps 3 to 5 (read, run, stage)
//! move. The driver cuts each source's logged offset into whole parts, and
//! each query runs as one cluster job: a task per part reads it, runs the
//! query's plan over it and stages the output as its own file, named after
//! the task's attempt. The driver keeps one report per part, names exactly
//! those files in the epoch's manifest, advances the sources' progress
//! from the parts' row counts and the watermarks from their greatest event
//! times, then writes state, commits and publishes as always. No row
//! crosses to the driver.
//!
//! A replayed epoch runs again the same way (or here, if the checkpoint
//! moved): its manifest is replaced and names the new attempts' files.
//! Files of attempts no manifest names stay staged, invisible to readers,
//! until retention deletes them.

use super::*;
use crate::remote::{PartReport, RemotePipeline, RemoteRead, RemoteSink};

/// What an epoch run on the executors gave.
pub(super) struct RemoteRan {
    /// Rows read from each source.
    pub(super) rows_in: BTreeMap<String, u64>,
    /// Each source's greatest event time among them, as the watermark
    /// takes it.
    pub(super) max_time: BTreeMap<String, Option<i64>>,
    /// Rows written by each query's sink, in pipeline order.
    pub(super) rows_by_sink: Vec<u64>,
}

/// Whether a pipeline can run on the executors: a stateless plan (filters,
/// projections and functions) over one source's scan, without late-row
/// sinks or bounded tables, into a files sink that is not a changelog or a
/// blackhole, and calling none of the functions the job was given
/// (`udfs`; executors do not have them).
pub(super) fn runs_on_executors(p: &Pipeline, udfs: &[String]) -> std::result::Result<(), &'static str> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    match &p.sink {
        PipelineSink::Files(_) if p.changelog => return Err("its sink is a changelog"),
        PipelineSink::Files(_) | PipelineSink::Blackhole(_) => {}
        PipelineSink::Kafka(_) => return Err("its sink is a Kafka topic"),
        PipelineSink::Live(_) => return Err("its rows go to this shell"),
    }
    if !p.operators.is_empty() {
        return Err("it keeps state (a window, an aggregate, a join, dedup or Top-N)");
    }
    if !p.late_sinks.is_empty() {
        return Err("it sends late rows to a sink");
    }
    if !p.lookups.is_empty() {
        return Err("it joins a bounded table");
    }
    if p.sources.len() != 1 {
        return Err("it reads more than one source");
    }
    let mut plan = Arc::clone(&p.plan);
    loop {
        let mut calls_udf = false;
        let walked = plan.apply_expressions(&mut |e| {
            e.apply(|n| {
                if let Some(f) = n.downcast_ref::<datafusion::physical_expr::ScalarFunctionExpr>()
                    && udfs.iter().any(|u| u == f.name())
                {
                    calls_udf = true;
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
        });
        if walked.is_err() || calls_udf {
            return Err("it calls a function given to this process, which executors do not have");
        }
        if plan.downcast_ref::<crate::exec::scan::StreamScanExec>().is_some() {
            return Ok(());
        }
        // A limit needs the whole epoch's rows, not a part's.
        if plan.fetch().is_some() {
            return Err("its plan has a limit");
        }
        let passes = plan.downcast_ref::<ProjectionExec>().is_some()
            || plan.downcast_ref::<FilterExec>().is_some()
            || plan.downcast_ref::<CooperativeExec>().is_some()
            || plan.downcast_ref::<CoalescePartitionsExec>().is_some();
        let children = plan.children();
        if !passes || children.len() != 1 {
            return Err("its plan has a step other than filters and projections");
        }
        plan = Arc::clone(children[0]);
    }
}

impl StreamingJob {
    /// Whether this job's queries run on the cluster's executors, rows and
    /// output files there (every query stateless, every source one whose
    /// offsets are cut into whole parts: a Parquet folder, the Nexmark
    /// generator; see [`crate::remote`]), rather than only its input being
    /// read there.
    pub fn queries_run_remotely(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.runs_pipelines())
            && !self.pipelines.is_empty()
            && self.why_not_on_executors().is_none()
    }

    /// Why this job's queries do not run on the executors (`None` when
    /// they do, or there is no cluster to run on).
    pub(super) fn why_not_on_executors(&self) -> Option<String> {
        self.remote.as_ref()?;
        if !self.remote.as_ref().is_some_and(|r| r.runs_pipelines()) {
            return Some("this cluster runs no queries".into());
        }
        for p in &self.pipelines {
            if let Err(why) = &p.on_executors {
                return Some(format!("{} cannot: {why}", p.sink.describe()));
            }
        }
        for (name, s) in &self.sources {
            if !s.source.cuts_whole_parts() {
                return Some(format!(
                    "source '{name}' cannot be cut into parts without reading them (only Parquet folders read with 'on_error' = 'fail', and the nexmark generator, can)"
                ));
            }
        }
        None
    }

    /// Steps 3 to 5 of an epoch on the executors. `None`, before anything
    /// ran, when a source cannot cut this offset into whole parts (a CSV or
    /// JSON folder): the epoch then runs the usual way.
    pub(super) async fn run_remote(&mut self, epoch: u64, entry: &OffsetsEntry) -> Result<Option<RemoteRan>> {
        let Some(remote) = self.remote.clone() else {
            return Ok(None);
        };
        let mut cuts: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for (name, offset) in &entry.sources {
            let Some(slot) = self.sources.get_mut(name) else {
                return Err(self.unknown_source(epoch, name));
            };
            match slot.source.remote_whole_parts(offset).await? {
                Some(parts) => cuts.insert(name.clone(), parts),
                None => return Ok(None),
            };
        }
        let mut rows_of_parts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut max_time: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let mut staged = Vec::with_capacity(self.pipelines.len());
        for p in &self.pipelines {
            let Some(name) = p.sources.first() else {
                return Err(Error::Runtime(format!(
                    "{}: a query without a source",
                    p.statement
                )));
            };
            let (Some(slot), Some(parts)) = (self.sources.get(name), cuts.get(name)) else {
                // The source has nothing this epoch.
                staged.push(Vec::new());
                continue;
            };
            let sink = match &p.sink {
                PipelineSink::Files(f) => match f.remote_target().await? {
                    Some(target) => target,
                    None => {
                        return Err(Error::Runtime(format!(
                            "{}: a changelog sink cannot be written on a cluster",
                            p.statement
                        )));
                    }
                },
                PipelineSink::Blackhole(_) => RemoteSink::Blackhole,
                PipelineSink::Kafka(_) | PipelineSink::Live(_) => {
                    return Err(Error::Runtime(format!(
                        "{}: this sink cannot be written on a cluster",
                        p.statement
                    )));
                }
            };
            let time_column = match &slot.watermark {
                Some(w) => {
                    let declared = slot.source.schema().index_of(&w.column)?;
                    slot.columns.iter().position(|&c| c == declared)
                }
                None => None,
            };
            let job = RemotePipeline {
                read: RemoteRead {
                    table: slot.decl.clone(),
                    columns: slot.columns.to_vec(),
                    parts: parts.clone(),
                },
                plan: datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(&p.plan))?,
                epoch,
                processing_time_ms: entry.processing_time_ms,
                time_column,
                sink,
            };
            let reports = remote.run_pipeline(job).await.map_err(|e| {
                Error::Runtime(weir_sql::preprocess::hide_placeholders(
                    &format!("epoch {epoch}, {} (on {}): {e}", p.statement, remote.describe()),
                    &self.tvfs,
                ))
            })?;
            check_reports(&remote.describe(), name, parts.len(), &reports)?;
            let rows: Vec<u64> = reports.iter().map(|r| r.rows_in).collect();
            match rows_of_parts.get(name) {
                // Two queries of one source read the same parts.
                Some(seen) if seen != &rows => {
                    return Err(Error::Input(format!(
                        "source '{name}': two reads of the same parts of epoch {epoch} gave different rows ({seen:?} and {rows:?}); its files changed while being read"
                    )));
                }
                Some(_) => {}
                None => {
                    rows_of_parts.insert(name.clone(), rows);
                    max_time.insert(name.clone(), reports.iter().filter_map(|r| r.max_time_ms).max());
                }
            }
            staged.push(reports);
        }
        // Progress, as a local read of the same parts advances it (an
        // input error here rolls the epoch back, as a local read's does).
        let mut rows_in = BTreeMap::new();
        for (name, offset) in &entry.sources {
            let rows = rows_of_parts.remove(name).unwrap_or_default();
            let Some(slot) = self.sources.get_mut(name) else {
                continue;
            };
            let known = slot.source.record_remote(offset, &rows)?;
            if let Some(w) = &slot.watermark
                && slot.source.knows_max_time(&w.column)
            {
                max_time.insert(name.clone(), known);
            }
            rows_in.insert(name.clone(), rows.iter().sum());
        }
        // Staged files no commit names yet: checked and named in the
        // manifests (also rolled back on error: nothing is committed).
        let mut rows_by_sink = Vec::with_capacity(self.pipelines.len());
        for (p, reports) in self.pipelines.iter().zip(staged) {
            let rows: u64 = reports.iter().map(|r| r.rows_out).sum();
            match &p.sink {
                PipelineSink::Files(f) => f.stage_remote(epoch, reports).await?,
                PipelineSink::Blackhole(_) | PipelineSink::Kafka(_) | PipelineSink::Live(_) => {}
            }
            rows_by_sink.push(rows);
        }
        Ok(Some(RemoteRan {
            rows_in,
            max_time,
            rows_by_sink,
        }))
    }

    /// The steps after an epoch's remote run that a local run takes in
    /// `stage` (the hooks where tests stop the process, the dead-letter
    /// and blackhole sinks): errors here are not rolled back, as there.
    pub(super) fn finish_remote_stage(&self, epoch: u64, ran: &RemoteRan) -> Result<()> {
        self.hooks.reached(Step::BeforeSink, epoch)?;
        for (p, &rows) in self.pipelines.iter().zip(&ran.rows_by_sink) {
            match &p.sink {
                // The files were written, and named by the manifest.
                PipelineSink::Files(_) => self.hooks.reached(Step::MidSinkWrite, epoch)?,
                PipelineSink::Blackhole(b) => b.add_rows(rows),
                PipelineSink::Kafka(_) | PipelineSink::Live(_) => {}
            }
        }
        Ok(())
    }
}

/// A job's reports must be one per part, in part order.
fn check_reports(cluster: &str, source: &str, parts: usize, reports: &[PartReport]) -> Result<()> {
    let in_order = reports.len() == parts && reports.iter().enumerate().all(|(i, r)| r.part == i);
    if in_order {
        return Ok(());
    }
    Err(Error::Runtime(format!(
        "source '{source}': {cluster} reported {} parts of {parts}",
        reports.len()
    )))
}
