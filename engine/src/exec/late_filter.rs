//! `LateFilterExec`: drops a source's late rows where the source is read
//! (see `weir_sql::LateFilterNode` for when the planner puts it there).
//!
//! Row *i* of the source is late when its event time is older than the
//! source's watermark just before it, `max(event time of rows before i) -
//! delay`, starting from the source's watermark at the start of the epoch
//! (made of every row of earlier epochs); or when it has no event time. As
//! in `WindowAssignExec` over an unfiltered source, this depends only on
//! the order of the rows, not on where epochs begin, nor on how many threads
//! share the source's batches (see `scan::dealt_watermarks`). Late rows are
//! counted with the epoch's.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;

use super::window_assign::to_millis;
use crate::epoch::EpochInput;

/// Drops a source's late rows.
#[derive(Debug)]
pub struct LateFilterExec {
    input: Arc<dyn ExecutionPlan>,
    source: String,
    time_index: usize,
    delay_ms: i64,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl LateFilterExec {
    /// Whether `plan` judges the lateness of `source`'s rows somewhere
    /// under it (a `LateFilterExec` of that source).
    pub fn judges_below(plan: &Arc<dyn ExecutionPlan>, source: &str) -> bool {
        plan.downcast_ref::<LateFilterExec>()
            .is_some_and(|l| l.source == source)
            || plan.children().into_iter().any(|c| Self::judges_below(c, source))
    }

    /// The source, the position of its time column and its watermark
    /// delay (how the node crosses to a cluster).
    pub fn config(&self) -> (&str, usize, i64) {
        (&self.source, self.time_index, self.delay_ms)
    }

    /// Filters `input` (a scan of `source`) by its column `time_index`.
    pub fn new(input: Arc<dyn ExecutionPlan>, source: String, time_index: usize, delay_ms: i64) -> Self {
        let schema = input.schema();
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            source,
            time_index,
            delay_ms,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
        }
    }
}

impl DisplayAs for LateFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LateFilterExec: rows of {} older than its watermark ({} - {}ms)",
            self.source,
            self.input.schema().field(self.time_index).name(),
            self.delay_ms
        )
    }
}

impl ExecutionPlan for LateFilterExec {
    fn name(&self) -> &str {
        "LateFilterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut copy = Self::new(
            children.swap_remove(0),
            self.source.clone(),
            self.time_index,
            self.delay_ms,
        );
        copy.metrics = self.metrics.clone();
        Ok(Arc::new(copy))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let epoch = EpochInput::from_task(&context)?;
        // Under several threads, the rows of the source before each batch
        // that other partitions received (see `dealt_watermarks`).
        let dealt =
            super::scan::dealt_watermarks(&self.input, self.time_index, &self.source, self.delay_ms, &epoch)?;
        let mut next_batch = partition;
        let input = self.input.execute(partition, context)?;
        let mut watermark = epoch.source_watermark_in(&self.source);
        let (time_index, delay) = (self.time_index, self.delay_ms);
        let baseline = self.metrics.baseline(partition);
        let late = self.metrics.counter("late_rows", partition);
        let schema: SchemaRef = self.input.schema();
        let stream = input.map(move |batch| {
            let batch = batch?;
            let timer = baseline.elapsed_compute().timer();
            if let Some((n, before)) = &dealt {
                watermark = watermark.max(before.get(next_batch).copied().unwrap_or(i64::MIN));
                next_batch += n;
            }
            let ms = to_millis(batch.column(time_index))?;
            let ms = ms.as_primitive::<TimestampMillisecondType>();
            let (values, nulls) = (ms.values(), ms.nulls());
            let mut dropped = 0u64;
            let keep = BooleanBuffer::collect_bool(values.len(), |i| {
                let t = values[i];
                // No event time: NULL, or outside years 0000-9999.
                if nulls.is_some_and(|n| n.is_null(i)) || !super::window_assign::in_event_range(t) {
                    dropped += 1;
                    return false;
                }
                let on_time = t >= watermark;
                watermark = watermark.max(t.saturating_sub(delay));
                dropped += u64::from(!on_time);
                on_time
            });
            let out = if dropped == 0 {
                batch
            } else {
                filter_record_batch(&batch, &BooleanArray::new(keep, None))?
            };
            timer.done();
            epoch.add_late(dropped);
            late.add(dropped as usize);
            super::record_batches(&baseline, [&out]);
            Ok::<RecordBatch, datafusion::error::DataFusionError>(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
