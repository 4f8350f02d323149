//! `ChangelogNetExec`: an epoch's signed rows into changelog rows (see
//! `weir_sql::nodes::ChangelogNetNode`).
//!
//! Equal rows (all columns but the sign) are netted within the epoch and
//! the partition; a row whose net is `-n` is emitted `n` times as `-D`, one
//! whose net is `+n` `n` times as `+I`, every `-D` first. Netting is what
//! keeps the changelog consistent: a row taken back and added again in one
//! epoch (an aggregate's `-U`/`+U` with the same visible values) emits
//! nothing, and a row added then taken back emits nothing, so no row is
//! retracted before it was added.

use datafusion::common::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::TryStreamExt;

use super::units::take_batch;
use super::update_agg::{DELETE, INSERT};

/// Nets signed rows into `-D`/`+I` rows.
#[derive(Debug)]
pub struct ChangelogNetExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl ChangelogNetExec {
    /// The net of `input` (values, then an Int64 sign); `schema` is the
    /// output (values, then the operation).
    pub fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            schema,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
        }
    }
}

impl DisplayAs for ChangelogNetExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ChangelogNetExec: signed rows netted per epoch, -D then +I")
    }
}

/// The epoch's changelog rows of one partition's signed rows.
fn net(input: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = input.num_columns();
    if n == 0 {
        return Err(DataFusionError::Internal(
            "a changelog net without a sign column".into(),
        ));
    }
    let values = input.project(&(0..n - 1).collect::<Vec<_>>())?;
    let signs = input.column(n - 1).as_primitive::<Int64Type>();
    let fields: Vec<SortField> = values
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let rows = RowConverter::new(fields)?.convert_columns(values.columns())?;
    // Each distinct row: its first position and its net sign, in order of
    // first appearance.
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut nets: Vec<(u32, i64)> = Vec::new();
    for i in 0..values.num_rows() {
        let s = if signs.is_null(i) { 0 } else { signs.value(i) };
        match seen.get(rows.row(i).data()) {
            Some(&k) => nets[k].1 += s,
            None => {
                seen.insert(rows.row(i).data(), nets.len());
                nets.push((i as u32, s));
            }
        }
    }
    let mut take = Vec::new();
    let mut ops = Vec::new();
    for (want_negative, op) in [(true, DELETE), (false, INSERT)] {
        for &(i, s) in &nets {
            if s != 0 && (s < 0) == want_negative {
                for _ in 0..s.unsigned_abs() {
                    take.push(i);
                    ops.push(op);
                }
            }
        }
    }
    let out = take_batch(&values, &UInt32Array::from(take))?;
    let mut columns = out.columns().to_vec();
    columns.push(Arc::new(StringArray::from(ops)));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

impl ExecutionPlan for ChangelogNetExec {
    fn name(&self) -> &str {
        "ChangelogNetExec"
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

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("ChangelogNetExec takes one input".into()))?;
        let mut copy = Self::new(input, Arc::clone(&self.schema));
        copy.metrics = self.metrics.clone();
        Ok(Arc::new(copy))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let in_schema = self.input.schema();
        let schema = Arc::clone(&self.schema);
        let baseline = self.metrics.baseline(partition);
        let out = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let all = concat_batches(&in_schema, &batches)?;
            let out = net(&all, &schema)?;
            super::record_batches(&baseline, [&out]);
            Ok(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            out,
        )))
    }
}
