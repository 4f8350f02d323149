//! `StreamScanExec`: the leaf of a streaming plan. Yields the rows its source
//! delivered this epoch (from the [`EpochInput`]), projected.
//!
//! With `partitions > 1` (`weir run --threads N`) the epoch's batches are
//! dealt out round-robin (batch `i` to partition `i % N`), so that the
//! stateless operators above run on N threads. Keyed stateful operators ask
//! for their input hash-partitioned on their keys (see `shard`); the others
//! ask for one partition, and DataFusion merges the partitions before them.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};

use crate::epoch::EpochInput;

/// Scans one source's rows of the current epoch.
#[derive(Debug)]
pub struct StreamScanExec {
    source: String,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
    partitions: usize,
}

impl StreamScanExec {
    /// A scan of `source` (declared schema `full`), projected.
    pub fn try_new(source: &str, full: &SchemaRef, projection: Option<&Vec<usize>>) -> Result<Self> {
        let schema = match projection {
            Some(p) => Arc::new(full.project(p)?),
            None => Arc::clone(full),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            // Each execution reads one epoch: bounded, though the stream is not.
            Boundedness::Bounded,
        );
        Ok(Self {
            source: source.to_string(),
            projection: projection.cloned(),
            schema,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
            partitions: 1,
        })
    }

    /// The same scan with `n` output partitions (at least 1).
    pub fn with_partitions(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.partitions = n;
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&self.schema)),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        self.props = Arc::new(props);
        self
    }

    /// A scan of `source` whose output is `schema`, the declared columns
    /// `projection` (all when `None`): the scan as it crosses to a cluster's
    /// executor, which has no declaration to project.
    pub fn with_schema(source: &str, schema: SchemaRef, projection: Option<Vec<usize>>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            source: source.to_string(),
            projection,
            schema,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
            partitions: 1,
        }
    }

    /// Its output partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The declared columns this scan reads (`None`: all).
    pub fn projection(&self) -> Option<&Vec<usize>> {
        self.projection.as_ref()
    }
}

impl DisplayAs for StreamScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StreamScanExec: source={}", self.source)?;
        if self.projection.is_some() {
            let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
            write!(f, ", projection=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StreamScanExec {
    fn name(&self) -> &str {
        "StreamScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = EpochInput::from_task(&context)?;
        let batches = match input.batches.get(&self.source) {
            None => vec![],
            Some(rows) => {
                // Map the declared columns this scan wants to the columns the
                // source read.
                let wanted: Vec<usize> = match &self.projection {
                    Some(p) => p.clone(),
                    None => (0..self.schema.fields().len()).collect(),
                };
                let positions = wanted
                    .iter()
                    .map(|c| {
                        rows.columns.iter().position(|x| x == c).ok_or_else(|| {
                            DataFusionError::Internal(format!(
                                "source '{}' did not read column {c} that a scan needs",
                                self.source
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let n = self.partitions;
                rows.batches
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % n == partition)
                    .map(|(_, b)| b.project(&positions))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let baseline = self.metrics.baseline(partition);
        super::record_batches(&baseline, &batches);
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            Arc::clone(&self.schema),
            None,
        )?))
    }
}

/// Where a partition of a plan over a multi-partition scan stands in the
/// source's order: with `--threads N` a scan deals the epoch's batches
/// round-robin, so the k-th batch partition `p` sees is the source's batch
/// `p + k * N`, and the rows before it in the source were partly in other
/// partitions. A row-by-row watermark kept by one partition alone would
/// miss those rows: a row late in the source's order could pass as on time
/// under two threads and not under one.
///
/// For `input` reading `source` straight from its scan (through projections
/// and cooperative wrappers, which keep batches whole and in order), with
/// column `time_index` of `input` a plain column of the scan: the number of
/// partitions N and, for each of the epoch's batches, the source's
/// watermark from the rows of the batches before it (`max event time -
/// delay`, `i64::MIN` if none). `None` when the scan has one partition (the
/// partition's own watermark is then exact) or the shape is another.
pub fn dealt_watermarks(
    input: &Arc<dyn ExecutionPlan>,
    time_index: usize,
    source: &str,
    delay_ms: i64,
    epoch: &EpochInput,
) -> Result<Option<(usize, Vec<i64>)>> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    let mut plan = Arc::clone(input);
    let mut index = time_index;
    let scan = loop {
        if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
            let Some(c) = p.expr().get(index).and_then(|e| e.expr.downcast_ref::<Column>()) else {
                return Ok(None);
            };
            index = c.index();
            plan = Arc::clone(p.input());
        } else if let Some(c) = plan.downcast_ref::<CooperativeExec>() {
            plan = Arc::clone(c.input());
        } else if let Some(s) = plan.downcast_ref::<StreamScanExec>() {
            break s;
        } else {
            return Ok(None);
        }
    };
    if scan.partitions <= 1 || scan.source != source {
        return Ok(None);
    }
    let Some(rows) = epoch.batches.get(source) else {
        return Ok(Some((scan.partitions, vec![])));
    };
    let declared = match &scan.projection {
        Some(p) => p.get(index).copied(),
        None => Some(index),
    };
    let Some(position) = declared.and_then(|d| rows.columns.iter().position(|c| *c == d)) else {
        return Ok(None);
    };
    let mut before = Vec::with_capacity(rows.batches.len());
    let mut watermark = i64::MIN;
    for max in rows.batch_max(position)?.iter() {
        before.push(watermark);
        if let Some(max) = max {
            watermark = watermark.max(max.saturating_sub(delay_ms));
        }
    }
    Ok(Some((scan.partitions, before)))
}

/// `plan` with every stream scan reading in one partition (the nodes above
/// rebuilt to match): the epoch's rows in the source's order. A partial
/// Top-N or a round-robin split left over one partition is dropped: the
/// first would only copy the rows its Top-N ranks anyway.
pub fn in_one_partition(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    plan.transform_up(|node| {
        if let Some(scan) = node.downcast_ref::<StreamScanExec>()
            && scan.partitions > 1
        {
            let one = StreamScanExec::with_schema(&scan.source, scan.schema(), scan.projection.clone());
            return Ok(Transformed::yes(Arc::new(one) as Arc<dyn ExecutionPlan>));
        }
        let over_one = |node: &Arc<dyn ExecutionPlan>| match node.children()[..] {
            [input] => input.properties().output_partitioning().partition_count() == 1,
            _ => false,
        };
        let round_robin = node
            .downcast_ref::<datafusion::physical_plan::repartition::RepartitionExec>()
            .is_some_and(|r| {
                matches!(
                    r.partitioning(),
                    datafusion::physical_plan::Partitioning::RoundRobinBatch(_)
                )
            });
        // (A round-robin split of one partition, above a ranking of one
        // shard, only spreads the few rows it emits.)
        if (node
            .downcast_ref::<super::window_topn::PartialTopNExec>()
            .is_some()
            || round_robin)
            && over_one(&node)
        {
            return Ok(Transformed::yes(Arc::clone(node.children()[0])));
        }
        Ok(Transformed::no(node))
    })
    .map(|t| t.data)
}

/// Scans a bounded table (the table side of a lookup join): the whole table
/// at the version this epoch's offsets entry names (see
/// `driver::lookup`), projected. One partition: DataFusion's join above it
/// spreads the stream side's rows over the threads.
#[derive(Debug)]
pub struct LookupScanExec {
    table: String,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl LookupScanExec {
    /// The bounded table it reads.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// A scan of bounded table `table` (declared schema `full`), projected.
    pub fn try_new(table: &str, full: &SchemaRef, projection: Option<&Vec<usize>>) -> Result<Self> {
        let schema = match projection {
            Some(p) => Arc::new(full.project(p)?),
            None => Arc::clone(full),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            table: table.to_string(),
            projection: projection.cloned(),
            schema,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
        })
    }
}

impl DisplayAs for LookupScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LookupScanExec: table={} (bounded: read whole, at the version each epoch's offsets entry names)",
            self.table
        )?;
        if self.projection.is_some() {
            let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
            write!(f, ", projection=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LookupScanExec {
    fn name(&self) -> &str {
        "LookupScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = EpochInput::from_task(&context)?;
        let table = input.lookups.get(&self.table).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "epoch {} has no version of the bounded table '{}'",
                input.epoch, self.table
            ))
        })?;
        let batches = match &self.projection {
            Some(p) => table
                .iter()
                .map(|b| b.project(p))
                .collect::<Result<Vec<_>, _>>()?,
            None => table.as_ref().clone(),
        };
        let baseline = self.metrics.baseline(partition);
        super::record_batches(&baseline, &batches);
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            Arc::clone(&self.schema),
            None,
        )?))
    }
}
