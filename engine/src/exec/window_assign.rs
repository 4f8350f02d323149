//! `WindowAssignExec`: a window table function. Drops late rows and counts
//! them, and appends `window_start` and `window_end` to the rest.
//!
//! Lateness is decided row by row, in the order the source delivered them:
//! row *i* is late when its event time is older than the watermark just
//! before it, `max(event time of rows before i) - delay` (rows of earlier
//! epochs included, through the epoch's starting watermark), or when it has
//! no event time. Because this depends only on the order of rows and not on
//! where epochs begin and end, a query's result does not depend on how its
//! input was cut into batches.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;
use weir_sql::WindowSpec;

use crate::epoch::EpochInput;

/// Assigns rows to windows.
#[derive(Debug)]
pub struct WindowAssignExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WindowSpec,
    time_index: usize,
    source: String,
    delay_ms: i64,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl WindowAssignExec {
    /// Windows `input` by its column `time_index`; `schema` is the input's
    /// columns followed by `window_start` and `window_end`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: WindowSpec,
        time_index: usize,
        source: String,
        delay_ms: i64,
        schema: SchemaRef,
    ) -> Result<Self> {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            spec,
            time_index,
            source,
            delay_ms,
            schema,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for WindowAssignExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let time = self.input.schema().field(self.time_index).name().clone();
        write!(
            f,
            "WindowAssignExec: {} on {time}, drops rows older than the watermark",
            self.spec
        )
    }
}

impl ExecutionPlan for WindowAssignExec {
    fn name(&self) -> &str {
        "WindowAssignExec"
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
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.spec.clone(),
            self.time_index,
            self.source.clone(),
            self.delay_ms,
            Arc::clone(&self.schema),
        )?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let epoch = EpochInput::from_task(&context)?;
        let input = self.input.execute(partition, context)?;
        let mut assign = Assign {
            spec: self.spec.clone(),
            time_index: self.time_index,
            schema: Arc::clone(&self.schema),
            delay_ms: self.delay_ms,
            watermark: epoch.source_watermark_in(&self.source),
            cap: epoch.others_watermark_in(&self.source),
        };
        let stream = input.map(move |batch| {
            let batch = batch?;
            let (out, late) = assign.apply(&batch)?;
            epoch.add_late(late);
            Ok(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// The per-batch work of [`WindowAssignExec`], with the running watermark.
struct Assign {
    spec: WindowSpec,
    time_index: usize,
    schema: SchemaRef,
    delay_ms: i64,
    /// The source's watermark as of the next row.
    watermark: i64,
    /// The lowest watermark of the pipeline's other sources (a union's
    /// inputs): the effective watermark never passes it.
    cap: i64,
}

impl Assign {
    /// Returns the windowed rows and the number of late rows dropped.
    fn apply(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, u64)> {
        let time = batch.column(self.time_index);
        let ms = to_millis(time)?;
        let ms = ms.as_primitive::<TimestampMillisecondType>();
        let mut all_on_time = ms.null_count() == 0;
        let keep: BooleanArray = ms
            .iter()
            .map(|t| {
                let on_time = t.is_some_and(|t| t >= self.watermark.min(self.cap));
                if let Some(t) = t {
                    self.watermark = self.watermark.max(t.saturating_sub(self.delay_ms));
                }
                all_on_time &= on_time;
                Some(on_time)
            })
            .collect();
        let (batch, ms) = if all_on_time {
            (batch.clone(), ms.clone())
        } else {
            let kept = filter_record_batch(batch, &keep)?;
            let kept_ms = to_millis(kept.column(self.time_index))?;
            (kept, kept_ms.as_primitive::<TimestampMillisecondType>().clone())
        };
        let dropped = (time.len() - batch.num_rows()) as u64;
        let tz = match self.schema.field(self.schema.fields().len() - 1).data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let (starts, ends): (Vec<i64>, Vec<i64>) = match &self.spec {
            WindowSpec::Tumble { size_ms, offset_ms } => ms
                .values()
                .iter()
                .map(|&t| {
                    let s = WindowSpec::tumble_start(t, *size_ms, *offset_ms);
                    (s, s + size_ms)
                })
                .unzip(),
        };
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(
            TimestampMillisecondArray::from(starts).with_timezone_opt(tz.clone()),
        ));
        columns.push(Arc::new(
            TimestampMillisecondArray::from(ends).with_timezone_opt(tz),
        ));
        Ok((RecordBatch::try_new(Arc::clone(&self.schema), columns)?, dropped))
    }
}

/// An event-time column as milliseconds (floor), whatever its unit.
pub fn to_millis(col: &ArrayRef) -> Result<ArrayRef> {
    Ok(match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, None) => Arc::clone(col),
        _ => cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn late_and_timeless_rows_are_dropped_and_windows_appended() {
        let in_schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&in_schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(12_000),
                    Some(4_000),
                    None,
                    Some(25_000),
                ])),
            ],
        )
        .unwrap();
        let wtype = DataType::Timestamp(TimeUnit::Millisecond, None);
        let out_schema = Arc::new(Schema::new(vec![
            in_schema.field(0).clone(),
            in_schema.field(1).clone(),
            Field::new("window_start", wtype.clone(), false),
            Field::new("window_end", wtype, false),
        ]));
        let assign = |watermark| Assign {
            spec: WindowSpec::Tumble {
                size_ms: 10_000,
                offset_ms: 0,
            },
            time_index: 1,
            schema: Arc::clone(&out_schema),
            delay_ms: 5_000,
            watermark,
            cap: i64::MAX,
        };
        // Rows at 12s, 4s, none, 25s: 12s moves the watermark to 7s, so 4s
        // is late; the row without a time is dropped.
        let mut a = assign(i64::MIN);
        let (out, late) = a.apply(&batch).unwrap();
        assert_eq!(late, 2);
        assert_eq!(out.num_rows(), 2);
        let starts = out.column(2).as_primitive::<TimestampMillisecondType>();
        assert_eq!(starts.values().to_vec(), vec![10_000, 20_000]);
        assert_eq!(a.watermark, 20_000);
        // The same rows cut into two batches: the same rows are late.
        let mut b = assign(i64::MIN);
        let (first, l1) = b.apply(&batch.slice(0, 1)).unwrap();
        let (rest, l2) = b.apply(&batch.slice(1, 3)).unwrap();
        assert_eq!((first.num_rows() + rest.num_rows(), l1 + l2), (2, 2));
    }
}
