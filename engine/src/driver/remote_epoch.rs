//! An epoch whose queries run on a cluster's executors (`weir run
//! --cluster`, every query stateless or of one stateful step: an aggregate,
//! windowed or not, a Top-N, or a join of two sources; see
//! [`crate::remote`]).
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
use crate::remote::{PartReport, RemoteAggregate, RemotePipeline, RemoteRead, RemoteSink, ShardReport};

/// What an epoch run on the executors gave.
pub(super) struct RemoteRan {
    /// Rows read from each source.
    pub(super) rows_in: BTreeMap<String, u64>,
    /// Each source's greatest event time among them, as the watermark
    /// takes it.
    pub(super) max_time: BTreeMap<String, Option<i64>>,
    /// Rows written by each query's sink, in pipeline order.
    pub(super) rows_by_sink: Vec<u64>,
    /// Late rows of each query, in pipeline order.
    pub(super) late_by_sink: Vec<u64>,
    /// The state the executors wrote, per operator.
    pub(super) states: Vec<RemoteState>,
}

/// One operator's state as the executors checkpointed it in an epoch.
pub(super) struct RemoteState {
    /// Its state table.
    pub(super) id: String,
    /// Its shards.
    pub(super) shards: usize,
    /// Whether each shard wrote a snapshot.
    pub(super) full: bool,
    /// One report per shard.
    pub(super) reports: Vec<ShardReport>,
}

/// A stateful query's plan cut for the two stages on the executors (see
/// [`crate::remote::RemoteAggregate`]).
pub(super) struct StatefulSplit {
    /// Each input of the operator, in its order.
    inputs: Vec<SplitInput>,
    /// From the operator up, over a stand-in of each input.
    upper: Arc<dyn ExecutionPlan>,
}

/// One input of a [`StatefulSplit`]'s operator.
pub(super) struct SplitInput {
    /// Below the operator's shuffle.
    prefix: Arc<dyn ExecutionPlan>,
    /// The shuffle's partitioning (`None`: one shard).
    shuffle: Option<datafusion::physical_plan::Partitioning>,
    /// The source its scan reads.
    source: String,
}

/// Cuts a plan of one windowed aggregate (`WindowAggregateExec`: TUMBLE,
/// HOP, CUMULATE; `SessionAggregateExec`) over one source's watermark, of
/// one aggregate without a window (`UpdateAggregateExec`, a changelog), of
/// one Top-N or dedup within windows or outside them (over the source's
/// rows, not a changelog), or of one join of two sources' rows on equal
/// keys (regular or interval, both sides split by the keys), with only
/// projections and filters around it, into what each stage runs; or why it
/// cannot be.
pub(super) fn split_stateful(
    plan: &Arc<dyn ExecutionPlan>,
) -> std::result::Result<StatefulSplit, &'static str> {
    use crate::exec::late_filter::LateFilterExec;
    use crate::exec::partial_agg::PartialWindowAggExec;
    use crate::exec::stream_join::StreamJoinExec;
    use crate::exec::{SessionAggregateExec, UpdateAggregateExec, WindowAggregateExec, WindowAssignExec};
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    let passes = |n: &Arc<dyn ExecutionPlan>| {
        n.downcast_ref::<ProjectionExec>().is_some()
            || n.downcast_ref::<FilterExec>().is_some()
            || n.downcast_ref::<CooperativeExec>().is_some()
    };
    // Above the operator: nodes that keep its partitions (its shards) apart.
    let mut above = Vec::new();
    let mut node = Arc::clone(plan);
    let is_operator = |n: &Arc<dyn ExecutionPlan>| {
        n.downcast_ref::<WindowAggregateExec>().is_some()
            || n.downcast_ref::<SessionAggregateExec>().is_some()
            || n.downcast_ref::<UpdateAggregateExec>().is_some()
            || n.downcast_ref::<crate::exec::WindowTopNExec>().is_some()
            || n.downcast_ref::<crate::exec::stream_topn::TopNExec>()
                .is_some_and(|t| !t.state().config().0.retract)
            || n.downcast_ref::<StreamJoinExec>().is_some()
    };
    while !is_operator(&node) {
        if crate::exec::stateful_state(node.as_ref()).is_some() {
            return Err("its stateful step is not an aggregate, a Top-N over its source's rows or a join");
        }
        if !passes(&node) || node.children().len() != 1 || node.fetch().is_some() {
            return Err("its plan has a step above its stateful step other than filters and projections");
        }
        above.push(Arc::clone(&node));
        node = Arc::clone(node.children()[0]);
    }
    let operator = node;
    if let Some(j) = operator.downcast_ref::<StreamJoinExec>() {
        let state = j.state();
        if state.config().0.on.is_empty() {
            return Err("it joins without equal keys");
        }
        if state.broadcasts() {
            return Err("its join reads one side whole in every shard");
        }
    }
    let mut inputs = Vec::new();
    let mut stand_ins: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    for child in operator.children() {
        let child = Arc::clone(child);
        let (prefix, shuffle) = if let Some(r) = child.downcast_ref::<RepartitionExec>() {
            match r.partitioning() {
                // Stage 1 routes rows by the prefix's columns: a key
                // computed in the shuffle (a join `ON lower(a.k) = b.k`, a
                // cast between key types) keeps the query here.
                p @ datafusion::physical_plan::Partitioning::Hash(exprs, _)
                    if exprs.iter().all(|e| {
                        e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                            .is_some()
                    }) =>
                {
                    (Arc::clone(r.input()), Some(p.clone()))
                }
                datafusion::physical_plan::Partitioning::Hash(..) => {
                    return Err("its stateful step's keys are computed, not columns of its input");
                }
                _ => return Err("its stateful step's input is not split by its keys"),
            }
        } else if let Some(c) = child.downcast_ref::<CoalescePartitionsExec>() {
            (Arc::clone(c.input()), None)
        } else {
            (Arc::clone(&child), None)
        };
        // Below: one source's scan, windowed on its watermark column.
        let mut below = Arc::clone(&prefix);
        let source = loop {
            if let Some(scan) = below.downcast_ref::<crate::exec::StreamScanExec>() {
                break scan.source().to_string();
            }
            if let Some(w) = below.downcast_ref::<WindowAssignExec>() {
                let (_, _, origin, _, late_sink) = w.config();
                if !matches!(origin, weir_sql::WatermarkOrigin::Source { .. }) || late_sink.is_some() {
                    return Err("its windows are not over its source's watermark column");
                }
            } else if crate::exec::stateful_state(below.as_ref()).is_some() {
                return Err("it has more than one stateful step");
            } else if !(passes(&below)
                || below.downcast_ref::<LateFilterExec>().is_some()
                || below.downcast_ref::<PartialWindowAggExec>().is_some())
            {
                return Err(
                    "its plan has a step below its stateful step other than filters, projections and window assignment",
                );
            }
            if below.children().len() != 1 || below.fetch().is_some() {
                return Err(
                    "its plan has a step below its stateful step other than filters, projections and window assignment",
                );
            }
            below = Arc::clone(below.children()[0]);
        };
        // A keyed operator's stand-in is its own shuffle over nothing: a
        // shard task declares its rows partitioned as that (the operator
        // checks it).
        let n = child.properties().output_partitioning().partition_count();
        stand_ins.push(match &shuffle {
            Some(p) => Arc::new(
                RepartitionExec::try_new(Arc::new(EmptyExec::new(prefix.schema())), p.clone())
                    .map_err(|_| "its stateful step's shuffle cannot be rebuilt")?,
            ),
            None => Arc::new(EmptyExec::new(prefix.schema()).with_partitions(n)),
        });
        inputs.push(SplitInput {
            prefix,
            shuffle,
            source,
        });
    }
    // The shards of the inputs must be the operator's, alike.
    let shards = |i: &SplitInput| i.shuffle.as_ref().map_or(1, |p| p.partition_count());
    if inputs.windows(2).any(|w| shards(&w[0]) != shards(&w[1])) {
        return Err("its join's two inputs are split into different numbers of shards");
    }
    // The operator over the stand-ins, and the nodes above rebuilt over it.
    let mut upper =
        datafusion::physical_plan::execution_plan::replace_children_if_necessary(operator, stand_ins)
            .map_err(|_| "its stateful step cannot be rebuilt")?;
    for node in above.into_iter().rev() {
        upper = datafusion::physical_plan::execution_plan::replace_children_if_necessary(node, vec![upper])
            .map_err(|_| "its plan cannot be rebuilt")?;
    }
    Ok(StatefulSplit { inputs, upper })
}

/// The id of the side table of a pipeline's one operator (an update
/// aggregate's distinct values), when the pipeline keeps exactly those two
/// tables.
fn side_of(p: &Pipeline) -> Option<&String> {
    let [(id, op), (side_id, _)] = &p.operators[..] else {
        return None;
    };
    let (name, _) = Arc::clone(op).side_table()?;
    (side_id == &format!("{id}-{name}")).then_some(side_id)
}

/// The expressions of an operator's configuration that its node does not
/// show DataFusion (they are not over its input rows): an aggregate's
/// `FILTER`s and `HAVING`, a join's condition and the filter pulled into
/// its unique side. Each crosses to the executors in the operator's
/// wire form.
fn operator_config_exprs(
    node: &Arc<dyn ExecutionPlan>,
) -> Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
    use crate::exec::{SessionAggregateExec, UpdateAggregateExec, WindowAggregateExec};
    let filters = |f: &[Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>]| {
        f.iter().flatten().cloned().collect::<Vec<_>>()
    };
    if let Some(n) = node.downcast_ref::<UpdateAggregateExec>() {
        let state = n.state();
        let (p, _, _) = state.config();
        let mut out = filters(&p.filters);
        out.extend(p.having.iter().cloned());
        return out;
    }
    if let Some(n) = node.downcast_ref::<SessionAggregateExec>() {
        return filters(&n.state().config().0.filters);
    }
    if let Some(n) = node.downcast_ref::<WindowAggregateExec>() {
        return filters(&n.state().config().0.filters);
    }
    if let Some(n) = node.downcast_ref::<crate::exec::stream_join::StreamJoinExec>() {
        let state = n.state();
        let (p, _) = state.config();
        let mut out: Vec<_> = p.filter.iter().map(|f| Arc::clone(f.expression())).collect();
        out.extend(p.unique.iter().filter_map(|u| u.filter.clone()));
        return out;
    }
    Vec::new()
}

/// Whether a pipeline can run on the executors: a stateless plan (filters,
/// projections and functions) over one source's scan, or one with a single
/// stateful step as [`split_stateful`] cuts it, without late-row sinks or
/// bounded tables, into a files sink or a blackhole, and calling none of
/// the functions the job was given (`udfs`; executors do not have them).
pub(super) fn runs_on_executors(p: &Pipeline, udfs: &[String]) -> std::result::Result<(), &'static str> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    match &p.sink {
        PipelineSink::Files(_) | PipelineSink::Blackhole(_) => {}
        PipelineSink::Kafka(_) => return Err("its sink is a Kafka topic"),
        PipelineSink::Live(_) => return Err("its rows go to this shell"),
    }
    if !p.late_sinks.is_empty() {
        return Err("it sends late rows to a sink");
    }
    if !p.lookups.is_empty() {
        return Err("it joins a bounded table");
    }
    if p.operators.is_empty() && p.sources.len() != 1 {
        return Err("it reads more than one source");
    }
    if !p.operators.is_empty() {
        if p.operators.len() > 1 && side_of(p).is_none() {
            return Err("it keeps more than one state table");
        }
        split_stateful(&p.plan)?;
    }
    // Every node down to each scan (a join has two).
    let mut todo = vec![Arc::clone(&p.plan)];
    while let Some(mut plan) = todo.pop() {
        loop {
            let mut calls_udf = false;
            let mut look = |e: &Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
                e.apply(|n| {
                    if let Some(f) = n.downcast_ref::<datafusion::physical_expr::ScalarFunctionExpr>()
                        && udfs.iter().any(|u| u == f.name())
                    {
                        calls_udf = true;
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })
            };
            let walked = plan.apply_expressions(&mut look);
            // What an operator's wire form carries beyond the expressions it
            // shows DataFusion (over its input): `HAVING`, `FILTER`s, a
            // join's condition.
            let mut walked_config = Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue);
            for e in operator_config_exprs(&plan) {
                walked_config = walked_config.and_then(|_| look(&e));
            }
            if walked.is_err() || walked_config.is_err() || calls_udf {
                return Err("it calls a function given to this process, which executors do not have");
            }
            if plan.downcast_ref::<crate::exec::scan::StreamScanExec>().is_some() {
                break;
            }
            // A limit needs the whole epoch's rows, not a part's.
            if plan.fetch().is_some() {
                return Err("its plan has a limit");
            }
            if !p.operators.is_empty() {
                // Its shape was checked above; only the functions are looked at.
                let children: Vec<Arc<dyn ExecutionPlan>> =
                    plan.children().into_iter().map(Arc::clone).collect();
                let Some((first, rest)) = children.split_first() else {
                    return Err("its plan has no scan");
                };
                todo.extend(rest.iter().cloned());
                plan = Arc::clone(first);
                continue;
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
    Ok(())
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

    /// Each part's report of a read of source `name`'s column `column`
    /// alone (its first without one), on the executors: its rows and
    /// greatest event time.
    async fn read_event_times(
        &self,
        remote: &Arc<dyn crate::remote::RemoteReader>,
        epoch: u64,
        entry: &OffsetsEntry,
        name: &str,
        column: Option<&str>,
        parts: &[serde_json::Value],
    ) -> Result<Vec<PartReport>> {
        let Some(slot) = self.sources.get(name) else {
            return Err(self.unknown_source(epoch, name));
        };
        let declared = match column {
            Some(c) => slot.source.schema().index_of(c)?,
            None => 0,
        };
        let field = slot.source.schema().field(declared).clone();
        let scan = crate::exec::StreamScanExec::with_schema(
            name,
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![field])),
            Some(vec![declared]),
        );
        let job = RemotePipeline {
            read: RemoteRead {
                table: slot.decl.clone(),
                columns: vec![declared],
                parts: parts.to_vec(),
            },
            plan: Arc::new(scan),
            epoch,
            processing_time_ms: entry.processing_time_ms,
            time_column: column.is_some().then_some(0),
            sink: RemoteSink::Blackhole,
        };
        let reports = remote.run_pipeline(job).await.map_err(|e| {
            Error::Runtime(format!(
                "epoch {epoch}, reading the event times of source '{name}' (on {}): {e}",
                remote.describe()
            ))
        })?;
        check_reports(&remote.describe(), name, parts.len(), &reports)?;
        Ok(reports)
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
        // A stateful query's parts judge lateness from the watermark as of
        // their first row, so each part's greatest event time is needed
        // first: from the footers, or a read of the watermark column alone.
        // Either records the source's progress.
        let mut part_maxima: BTreeMap<String, Vec<Option<i64>>> = BTreeMap::new();
        let mut recorded: BTreeSet<String> = BTreeSet::new();
        for p in self.pipelines.iter().filter(|p| !p.operators.is_empty()) {
            for name in &p.sources {
                let (Some(slot), Some(parts), Some(offset)) =
                    (self.sources.get(name), cuts.get(name), entry.sources.get(name))
                else {
                    continue;
                };
                if recorded.contains(name) {
                    continue;
                }
                // Without a watermark (an aggregate without windows), the
                // parts' row counts alone, from a read of their first
                // column. Both from the files' footers when they tell them
                // (a Parquet folder): no read before the query's own.
                let column = slot.watermark.as_ref().map(|w| w.column.clone());
                let (rows, maxima): (Vec<u64>, Vec<Option<i64>>) =
                    match slot.source.remote_parts_known(column.as_deref()).await? {
                        Some(known) if known.len() == parts.len() => known.into_iter().unzip(),
                        _ => {
                            let reports = self
                                .read_event_times(&remote, epoch, entry, name, column.as_deref(), parts)
                                .await?;
                            reports.iter().map(|r| (r.rows_in, r.max_time_ms)).unzip()
                        }
                    };
                let Some(slot) = self.sources.get_mut(name) else {
                    continue;
                };
                let known = slot.source.record_remote(offset, &rows)?;
                let greatest = match &column {
                    Some(c) if slot.source.knows_max_time(c) => known,
                    Some(_) => maxima.iter().flatten().copied().max(),
                    None => None,
                };
                max_time.insert(name.clone(), greatest);
                rows_of_parts.insert(name.clone(), rows);
                part_maxima.insert(name.clone(), maxima);
                recorded.insert(name.clone());
            }
        }
        let watermarks_out = self.watermarks_after(entry, &max_time);
        let mut staged = Vec::with_capacity(self.pipelines.len());
        let mut late_by_sink = Vec::with_capacity(self.pipelines.len());
        let mut states = Vec::new();
        for p in &self.pipelines {
            let Some(name) = p.sources.first() else {
                return Err(Error::Runtime(format!(
                    "{}: a query without a source",
                    p.statement
                )));
            };
            let no_parts = Vec::new();
            let (Some(slot), Some(parts)) = (
                self.sources.get(name),
                // A stateful query runs without input too: the watermark
                // may close windows (the drain epoch closes them all).
                cuts.get(name).or((!p.operators.is_empty()).then_some(&no_parts)),
            ) else {
                // The source has nothing this epoch.
                staged.push(Vec::new());
                late_by_sink.push(0);
                continue;
            };
            let sink = match &p.sink {
                PipelineSink::Files(f) => f.remote_target().await?,
                PipelineSink::Blackhole(_) => RemoteSink::Blackhole,
                PipelineSink::Kafka(_) | PipelineSink::Live(_) => {
                    return Err(Error::Runtime(format!(
                        "{}: this sink cannot be written on a cluster",
                        p.statement
                    )));
                }
            };
            let on_cluster = |e: Error| {
                Error::Runtime(weir_sql::preprocess::hide_placeholders(
                    &format!("epoch {epoch}, {} (on {}): {e}", p.statement, remote.describe()),
                    &self.tvfs,
                ))
            };
            let plan = datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(&p.plan))?;
            if let Some((id, op)) = p.operators.first() {
                let split = split_stateful(&plan).map_err(|why| {
                    Error::Runtime(format!("{}: cannot run on the executors: {why}", p.statement))
                })?;
                // Each input's parts, and each part's watermark as of its
                // first row, from its own source.
                let mut inputs = Vec::with_capacity(split.inputs.len());
                for input in split.inputs {
                    let name = &input.source;
                    let Some(slot) = self.sources.get(name) else {
                        return Err(self.unknown_source(epoch, name));
                    };
                    let parts = cuts.get(name).cloned().unwrap_or_default();
                    let delay_ms = slot.watermark.as_ref().map_or(0, |w| w.delay_ms);
                    let mut w = entry.watermarks_in.get(name).copied().unwrap_or(i64::MIN);
                    let mut watermarks_before = Vec::with_capacity(parts.len());
                    for m in part_maxima.get(name).into_iter().flatten() {
                        watermarks_before.push(w);
                        if let Some(m) = m {
                            w = w.max(m.saturating_sub(delay_ms));
                        }
                    }
                    inputs.push(crate::remote::StageInput {
                        read: RemoteRead {
                            table: slot.decl.clone(),
                            columns: slot.columns.to_vec(),
                            parts,
                        },
                        prefix: input.prefix,
                        shuffle: input.shuffle,
                        watermarks_before,
                    });
                }
                let shards = op.state_shards().max(1);
                let chains = self.state_chains.get(id).cloned();
                let mismatched = chains.as_ref().is_none_or(|c| c.shards.len() != shards);
                let full = self.policies.get(id).is_none_or(|pol| pol.full(None)) || mismatched;
                let side = side_of(p).map(|side_id| {
                    let chains = self.state_chains.get(side_id).cloned();
                    let mismatched = chains.as_ref().is_none_or(|c| c.shards.len() != shards);
                    crate::remote::SideTable {
                        operator_id: side_id.clone(),
                        full: self.policies.get(side_id).is_none_or(|pol| pol.full(None)) || mismatched,
                        chains,
                    }
                });
                let job = RemoteAggregate {
                    inputs,
                    upper: split.upper,
                    operator_id: id.clone(),
                    checkpoint: self.checkpoint.location().url().to_string(),
                    chains,
                    watermark_in: self.pipeline_high.get(&p.index).copied().unwrap_or(i64::MIN),
                    full,
                    epoch,
                    processing_time_ms: entry.processing_time_ms,
                    watermark_out: super::epoch::pipeline_watermark(p, entry, &watermarks_out),
                    sink,
                    side: side.clone(),
                };
                let reports = remote.run_aggregate(job).await.map_err(on_cluster)?;
                if reports.len() != shards || reports.iter().enumerate().any(|(k, r)| r.shard != k) {
                    return Err(Error::Runtime(format!(
                        "{}: {} reported {} shards of {shards}",
                        p.statement,
                        remote.describe(),
                        reports.len()
                    )));
                }
                late_by_sink.push(reports.iter().map(|r| r.late_rows).sum());
                staged.push(
                    reports
                        .iter()
                        .map(|r| PartReport {
                            part: r.shard,
                            rows_in: 0,
                            rows_out: r.rows_out,
                            max_time_ms: None,
                            file: r
                                .file
                                .as_ref()
                                .map(|(name, staged, bytes)| weir_storage::ManifestFile {
                                    name: name.clone(),
                                    rows: r.rows_out,
                                    bytes: *bytes,
                                    staged: Some(staged.clone()),
                                }),
                        })
                        .collect(),
                );
                if let Some(side) = side {
                    // The side table's files, reported beside the operator's.
                    let side_reports = reports
                        .iter()
                        .map(|r| ShardReport {
                            state: r.side_state,
                            state_rows: r.side_rows,
                            ..r.clone()
                        })
                        .collect();
                    states.push(RemoteState {
                        id: side.operator_id,
                        shards,
                        full: side.full,
                        reports: side_reports,
                    });
                }
                states.push(RemoteState {
                    id: id.clone(),
                    shards,
                    full,
                    reports,
                });
                continue;
            }
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
                plan,
                epoch,
                processing_time_ms: entry.processing_time_ms,
                time_column,
                sink,
            };
            let reports = remote.run_pipeline(job).await.map_err(on_cluster)?;
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
            late_by_sink.push(0);
        }
        // Progress, as a local read of the same parts advances it (an
        // input error here rolls the epoch back, as a local read's does).
        let mut rows_in = BTreeMap::new();
        for (name, offset) in &entry.sources {
            let rows = rows_of_parts.remove(name).unwrap_or_default();
            rows_in.insert(name.clone(), rows.iter().sum());
            if recorded.contains(name) {
                continue;
            }
            let Some(slot) = self.sources.get_mut(name) else {
                continue;
            };
            let known = slot.source.record_remote(offset, &rows)?;
            if let Some(w) = &slot.watermark
                && slot.source.knows_max_time(&w.column)
            {
                max_time.insert(name.clone(), known);
            }
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
            late_by_sink,
            states,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_planner::PhysicalPlanner;
    use datafusion::prelude::SessionConfig;

    use super::*;
    use crate::exec::{EngineScans, physical_planner};

    /// The plan of the job's one query on `threads`.
    async fn plan(sql: &str, threads: usize) -> Arc<dyn ExecutionPlan> {
        let job = weir_sql::Job::parse(sql).unwrap();
        let config = SessionConfig::new().with_target_partitions(threads);
        let planner =
            weir_sql::StreamPlanner::new(&job, Some(Arc::new(EngineScans { partitions: threads })), config)
                .unwrap();
        let plans = planner.plan().await.unwrap();
        physical_planner()
            .create_physical_plan(&plans[0].plan, &planner.context().state())
            .await
            .unwrap()
    }

    /// The stateful operator of the job's one query, planned on `threads`.
    async fn operator(sql: &str, threads: usize) -> Arc<dyn ExecutionPlan> {
        let plan = plan(sql, threads).await;
        let mut found = None;
        plan.apply(|n| {
            if crate::exec::stateful_state(n.as_ref()).is_some() {
                found = Some(Arc::clone(n));
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        found.expect("a stateful operator")
    }

    /// `HAVING` and `FILTER` cross in an operator's wire form without being
    /// among the expressions its node shows DataFusion: the check for
    /// functions executors lack must see them too.
    #[tokio::test]
    async fn an_operators_having_and_filters_are_checked_for_functions() {
        let ddl = "CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
                   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                   WITH ('connector' = 'files', 'path' = '/nowhere/', 'format' = 'json');\n\
                   CREATE TABLE out WITH ('connector' = 'blackhole');\n";
        let cases = [
            (
                "INSERT INTO out SELECT k, COUNT(*) FILTER (WHERE v > 2) AS n FROM t \
                 GROUP BY k HAVING SUM(v + 7) > 3",
                vec!["v@", "> 2", "> 3"],
            ),
            (
                "INSERT INTO out SELECT window_start, window_end, k, SUM(v) FILTER (WHERE v < 5) AS s \
                 FROM TABLE(SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), INTERVAL '1' SECOND)) \
                 GROUP BY window_start, window_end, k",
                vec!["< 5"],
            ),
            (
                "INSERT INTO out SELECT window_start, window_end, MAX(v) FILTER (WHERE v <> 4) AS m \
                 FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' SECOND)) \
                 GROUP BY window_start, window_end",
                vec!["!= 4"],
            ),
        ];
        for (query, wants) in cases {
            for threads in [1, 2] {
                let op = operator(&format!("{ddl}{query};"), threads).await;
                let shown: Vec<String> = operator_config_exprs(&op).iter().map(|e| e.to_string()).collect();
                let text = shown.join(" | ");
                for want in &wants {
                    assert!(text.contains(want), "{query} on {threads}: {text}");
                }
            }
        }
    }

    /// A join is cut into a stage 1 per side, each reading its own source
    /// and split by its own keys into the same shards; its condition is
    /// among what crosses in its wire form. Keys computed in the shuffle
    /// keep it on the driver (stage 1 deals rows by columns).
    #[tokio::test]
    async fn a_join_is_cut_per_side_unless_its_keys_are_computed() {
        let table = |name: &str| {
            format!(
                "CREATE TABLE {name} (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
                 WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                 WITH ('connector' = 'files', 'path' = '/nowhere/{name}/', 'format' = 'json');\n"
            )
        };
        let ddl = format!(
            "{}{}CREATE TABLE out WITH ('connector' = 'blackhole');\n",
            table("t"),
            table("u")
        );
        let join = "INSERT INTO out SELECT a.k, b.v FROM t a JOIN u b ON a.k = b.k AND a.v < b.v + 3";
        for threads in [1, 2] {
            let sql = format!("{ddl}{join};");
            let split = split_stateful(&plan(&sql, threads).await).unwrap();
            let sources: Vec<&str> = split.inputs.iter().map(|i| i.source.as_str()).collect();
            assert_eq!(sources, ["t", "u"]);
            for input in &split.inputs {
                let shards = input.shuffle.as_ref().map_or(1, |p| p.partition_count());
                assert_eq!(shards, threads);
            }
            let op = operator(&sql, threads).await;
            let shown: Vec<String> = operator_config_exprs(&op).iter().map(|e| e.to_string()).collect();
            assert!(shown.join(" ").contains("+ 3"), "{shown:?}");
        }
        let computed = "INSERT INTO out SELECT a.k, b.v FROM t a JOIN u b ON upper(a.k) = b.k";
        let sql = format!("{ddl}{computed};");
        let shuffled_on_a_function = {
            let mut found = false;
            plan(&sql, 2)
                .await
                .apply(|n| {
                    if let Some(r) =
                        n.downcast_ref::<datafusion::physical_plan::repartition::RepartitionExec>()
                        && r.partitioning().to_string().contains("upper(")
                    {
                        found = true;
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
                .unwrap();
            found
        };
        // DataFusion hashes `upper(k)` in the shuffle itself.
        assert!(shuffled_on_a_function);
        let why = split_stateful(&plan(&sql, 2).await).err().unwrap();
        assert!(why.contains("computed"), "{why}");
    }
}
