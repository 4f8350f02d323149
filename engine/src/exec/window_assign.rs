//! `WindowAssignExec`: a window table function. Drops late rows and counts
//! them, and appends `window_start`, `window_end` and `window_time` to the
//! rest.
//!
//! Lateness depends on where the time column's watermark comes from
//! ([`WatermarkOrigin`]):
//!
//! * one source: decided row by row, in the order the source delivered
//!   them: row *i* is late when its event time is older than the watermark
//!   just before it, `max(event time of rows before i) - delay` (rows of
//!   earlier epochs included, through the epoch's starting watermark), or
//!   when it has no event time. This depends only on the order of rows, not
//!   on where epochs begin and end nor on how many threads share the batches
//!   (`scan::dealt_watermarks`), so the query's result does not either;
//! * several sources (a union): late when older than the lowest of their
//!   watermarks at the start of the epoch;
//! * an upstream window's results: never late (each is emitted once, final).
//!
//! Each row gets its windows: one for TUMBLE; for HOP and CUMULATE, one
//! output row per window containing it, unless the consumer merges slices
//! itself (`slices`), in which case the row gets its slice. For SESSION the
//! row's interval `[ts, ts + gap)` is output; the session aggregate above
//! merges intervals into sessions.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{cast, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;
use weir_sql::{WatermarkOrigin, WindowSpec};

use crate::epoch::EpochInput;

/// Assigns rows to windows.
#[derive(Debug)]
pub struct WindowAssignExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WindowSpec,
    time_index: usize,
    origin: WatermarkOrigin,
    slices: bool,
    late_sink: Option<String>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl WindowAssignExec {
    /// What it was built from, but its input: the window, the position of
    /// the time column, where the watermark comes from, whether rows carry
    /// slices, and the late sink (how the node crosses to a cluster).
    pub fn config(&self) -> (&WindowSpec, usize, &WatermarkOrigin, bool, Option<&str>) {
        (
            &self.spec,
            self.time_index,
            &self.origin,
            self.slices,
            self.late_sink.as_deref(),
        )
    }

    /// The late sink and the schema of the rows it receives.
    pub fn late_sink(&self) -> Option<(&str, SchemaRef)> {
        self.late_sink.as_deref().map(|s| (s, self.input.schema()))
    }

    /// Windows `input` by its column `time_index`; `schema` is the input's
    /// columns followed by `window_start`, `window_end` and `window_time`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: WindowSpec,
        time_index: usize,
        origin: WatermarkOrigin,
        slices: bool,
        late_sink: Option<String>,
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
            origin,
            slices,
            late_sink,
            schema,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
        })
    }
}

impl DisplayAs for WindowAssignExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let time = self.input.schema().field(self.time_index).name().clone();
        write!(
            f,
            "WindowAssignExec: {} on {time}{}, watermark from {}",
            self.spec,
            if self.slices { " (slices)" } else { "" },
            self.origin
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
        let mut copy = Self::try_new(
            children.swap_remove(0),
            self.spec.clone(),
            self.time_index,
            self.origin.clone(),
            self.slices,
            self.late_sink.clone(),
            Arc::clone(&self.schema),
        )?;
        // Copies share metrics (see the stateful operators' copies).
        copy.metrics = self.metrics.clone();
        Ok(Arc::new(copy))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let epoch = EpochInput::from_task(&context)?;
        // Under several threads, the rows of the source before each batch
        // that other partitions received (see `scan::dealt_watermarks`).
        // A window over a view that filters or joins its source's rows has
        // their lateness judged where the source is read (a
        // `LateFilterExec` below), in the source's order. The rows that
        // reach this node may come in another order (a join's output
        // follows whichever side it probes with, which differs with the
        // thread count): judging them again row by row would drop on-time
        // rows. Every row the filter kept is at or above the epoch's
        // starting watermark, which is the rule used here then.
        let judged_below = match &self.origin {
            WatermarkOrigin::Source { source, .. } => {
                super::late_filter::LateFilterExec::judges_below(&self.input, source)
            }
            _ => false,
        };
        let dealt = match &self.origin {
            WatermarkOrigin::Source { source, delay_ms } if !judged_below => {
                super::scan::dealt_watermarks(&self.input, self.time_index, source, *delay_ms, &epoch)?
            }
            _ => None,
        };
        let mut next_batch = partition;
        let input = self.input.execute(partition, context)?;
        let (watermark, cap, delay_ms) = match &self.origin {
            WatermarkOrigin::Source { source, .. } if judged_below => {
                (epoch.source_watermark_in(source), i64::MAX, None)
            }
            WatermarkOrigin::Source { source, delay_ms } => {
                (epoch.source_watermark_in(source), i64::MAX, Some(*delay_ms))
            }
            WatermarkOrigin::Sources(sources) => {
                let low = sources
                    .iter()
                    .map(|s| epoch.source_watermark_in(s))
                    .min()
                    .unwrap_or(i64::MIN);
                (low, i64::MAX, None)
            }
            WatermarkOrigin::Upstream { .. } => (i64::MIN, i64::MAX, None),
        };
        let mut assign = Assign {
            spec: self.spec.clone(),
            time_index: self.time_index,
            schema: Arc::clone(&self.schema),
            slices: self.slices,
            delay_ms,
            watermark,
            cap,
            keep_late: self.late_sink.is_some(),
        };
        let late_sink = self.late_sink.clone();
        let baseline = self.metrics.baseline(partition);
        let late: Count = self.metrics.counter("late_rows", partition);
        let stream = input.map(move |batch| {
            let batch = batch?;
            let timer = baseline.elapsed_compute().timer();
            if let Some((n, before)) = &dealt {
                assign.watermark = assign
                    .watermark
                    .max(before.get(next_batch).copied().unwrap_or(i64::MIN));
                next_batch += n;
            }
            let (out, dropped, late_rows) =
                super::guarded("WindowAssignExec", epoch.epoch, || assign.apply(&batch))?;
            timer.done();
            epoch.add_late(dropped);
            if let (Some(sink), Some(rows)) = (&late_sink, late_rows) {
                epoch.add_late_rows(sink, rows);
            }
            late.add(dropped as usize);
            super::record_batches(&baseline, [&out]);
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
    slices: bool,
    /// `Some(delay)`: the watermark advances row by row (one source).
    delay_ms: Option<i64>,
    /// The watermark as of the next row.
    watermark: i64,
    /// A bound the watermark does not pass.
    cap: i64,
    /// Return the late rows (for a late sink) rather than only counting them.
    keep_late: bool,
}

impl Assign {
    /// Returns the windowed rows, the number of late rows dropped, and those
    /// rows when asked to keep them.
    fn apply(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, u64, Option<RecordBatch>)> {
        let time = batch.column(self.time_index);
        let ms = to_millis(time)?;
        let ms = ms.as_primitive::<TimestampMillisecondType>();
        let (keep, watermark, all_on_time) =
            on_time_rows(ms.values(), ms.nulls(), self.watermark, self.cap, self.delay_ms);
        self.watermark = watermark;
        let keep = BooleanArray::new(keep, None);
        let late_rows = if self.keep_late && !all_on_time {
            Some(filter_record_batch(
                batch,
                &datafusion::arrow::compute::not(&keep)?,
            )?)
        } else {
            None
        };
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
        let one_per_row =
            self.slices || matches!(self.spec, WindowSpec::Tumble { .. } | WindowSpec::Session { .. });
        let (rows, starts, ends): (Option<Vec<u32>>, Vec<i64>, Vec<i64>) = if one_per_row {
            let times = ms.values();
            let (starts, length) = match &self.spec {
                WindowSpec::Session { gap_ms } => (times.to_vec(), *gap_ms),
                spec => {
                    let slice = spec.slice_ms().ok_or_else(|| {
                        DataFusionError::Internal(format!("WindowAssignExec: {spec} has no slices"))
                    })?;
                    // Rows mostly come in time order, so most fall in the
                    // slice of the row before: a comparison instead of a
                    // division (`slice_start`) per row.
                    let (mut lo, mut hi) = (1, 0);
                    let starts = times
                        .iter()
                        .map(|&t| {
                            if !(lo <= t && t < hi) {
                                lo = spec.slice_start(t);
                                hi = lo.saturating_add(slice);
                            }
                            lo
                        })
                        .collect();
                    (starts, slice)
                }
            };
            let ends = starts.iter().map(|s| s + length).collect();
            (None, starts, ends)
        } else {
            // One output row per window containing the row.
            let mut rows = Vec::new();
            let mut starts = Vec::new();
            let mut ends = Vec::new();
            for (i, &t) in ms.values().iter().enumerate() {
                for (s, e) in self.spec.windows_of(t) {
                    rows.push(i as u32);
                    starts.push(s);
                    ends.push(e);
                }
            }
            (Some(rows), starts, ends)
        };
        let mut columns: Vec<ArrayRef> = match rows {
            None => batch.columns().to_vec(),
            Some(rows) => {
                let idx = UInt32Array::from(rows);
                batch
                    .columns()
                    .iter()
                    .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                    .collect::<Result<_>>()?
            }
        };
        let times: Vec<i64> = ends.iter().map(|e| e - 1).collect();
        for values in [starts, ends, times] {
            columns.push(Arc::new(
                TimestampMillisecondArray::from(values).with_timezone_opt(tz.clone()),
            ));
        }
        Ok((
            RecordBatch::try_new(Arc::clone(&self.schema), columns)?,
            dropped,
            late_rows,
        ))
    }
}

/// The earliest event time a row may have (0000-01-01 00:00:00, ms):
/// SQL's TIMESTAMP, and Flink's, span the years 0000 to 9999.
pub const MIN_EVENT_MS: i64 = -62_167_219_200_000;
/// The latest event time a row may have (9999-12-31 23:59:59.999, ms). A
/// time beyond (a corrupt value, DuckDB's `'infinity'`) would push the
/// watermark past every window and overflow a window's end: such a row has
/// no event time, as a NULL one, and is late.
pub const MAX_EVENT_MS: i64 = 253_402_300_799_999;

/// Whether an event time (ms) is within SQL's TIMESTAMP range.
#[inline]
pub fn in_event_range(t: i64) -> bool {
    (MIN_EVENT_MS..=MAX_EVENT_MS).contains(&t)
}

/// Which rows are on time: a row is late when its time is below the
/// watermark, capped at `cap`. With a `delay`, the watermark advances row by
/// row (to the greatest time seen so far minus the delay), so each row is
/// judged against the rows before it; without one it stays at `watermark`.
/// Null times are late, and so are times outside years 0000-9999
/// ([`MAX_EVENT_MS`]), which do not move the watermark. Returns the mask, the watermark after the rows, and
/// whether every row is on time.
///
/// This runs for every row of every windowed query. Rows are taken 64 at a
/// time: when the chunk's least time is at or above the highest bar any of
/// its rows could face (the watermark after the whole chunk), all 64 are on
/// time, found with two vectorised reductions instead of 64 dependent steps.
/// Only chunks that straddle the watermark are judged row by row.
pub fn on_time_rows(
    values: &[i64],
    nulls: Option<&datafusion::arrow::buffer::NullBuffer>,
    mut watermark: i64,
    cap: i64,
    delay: Option<i64>,
) -> (BooleanBuffer, i64, bool) {
    let n = values.len();
    let mut words: Vec<u64> = Vec::with_capacity(n.div_ceil(64));
    let mut all_on_time = true;
    for (c, chunk) in values.chunks(64).enumerate() {
        let base = c * 64;
        let has_null = nulls.is_some_and(|b| b.slice(base, chunk.len()).null_count() > 0);
        if !has_null {
            let (least, most) = min_max(chunk);
            let after = match delay {
                Some(d) => watermark.max(most.saturating_sub(d)),
                None => watermark,
            };
            if least >= after.min(cap) && least >= MIN_EVENT_MS && most <= MAX_EVENT_MS {
                watermark = after;
                words.push(if chunk.len() == 64 {
                    u64::MAX
                } else {
                    (1u64 << chunk.len()) - 1
                });
                continue;
            }
        }
        let mut word = 0u64;
        for (i, &t) in chunk.iter().enumerate() {
            if nulls.is_some_and(|b| b.is_null(base + i)) || !in_event_range(t) {
                all_on_time = false;
                continue;
            }
            if t >= watermark.min(cap) {
                word |= 1 << i;
            } else {
                all_on_time = false;
            }
            if let Some(d) = delay {
                watermark = watermark.max(t.saturating_sub(d));
            }
        }
        words.push(word);
    }
    let keep = BooleanBuffer::new(datafusion::arrow::buffer::Buffer::from_vec(words), 0, n);
    (keep, watermark, all_on_time)
}

/// The least and greatest of `values` (`i64::MAX`, `i64::MIN` when empty),
/// in one pass over four independent lanes: the portable x86-64 target has
/// no vector min/max of 64-bit integers, and two plain `min()`/`max()`
/// folds are each one chain of dependent compares (measured: 7% of a
/// tumbling COUNT/MAX/SUM over Parquet, `benches/tumble.sh`).
#[inline]
fn min_max(values: &[i64]) -> (i64, i64) {
    let mut lo = [i64::MAX; 4];
    let mut hi = [i64::MIN; 4];
    let mut quads = values.chunks_exact(4);
    for q in &mut quads {
        for k in 0..4 {
            lo[k] = lo[k].min(q[k]);
            hi[k] = hi[k].max(q[k]);
        }
    }
    for &v in quads.remainder() {
        lo[0] = lo[0].min(v);
        hi[0] = hi[0].max(v);
    }
    (
        lo[0].min(lo[1]).min(lo[2].min(lo[3])),
        hi[0].max(hi[1]).max(hi[2].max(hi[3])),
    )
}

/// Each time in `col` (a timestamp column of any unit) rounded up to its
/// millisecond (0 where NULL): the last millisecond watermark at which a
/// row of that time is not yet passed. A watermark `w` is passed by a time
/// `t` when `t <= w` at full precision, which for a time between two
/// milliseconds is `ceil(t) <= w`, not `floor(t) <= w` (a row 0.3 ms
/// after `w` still arrives on time, after one 0.7 ms after it).
pub fn ceil_millis(col: &ArrayRef) -> Result<Vec<i64>> {
    use datafusion::arrow::datatypes::Int64Type;
    let per_ms: i64 = match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            let raw = cast(col, &DataType::Int64)?;
            return Ok(raw
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|v| v.saturating_mul(1_000))
                .collect());
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000,
        _ => 1,
    };
    let raw = cast(col, &DataType::Int64)?;
    let raw = raw.as_primitive::<Int64Type>();
    Ok(raw
        .values()
        .iter()
        .map(|&v| v.div_euclid(per_ms) + i64::from(v.rem_euclid(per_ms) != 0))
        .collect())
}

/// An event-time column as milliseconds, whatever its unit: a finer time
/// is cut down to its millisecond (floor, so 1969-12-31 23:59:59.9995 is
/// 23:59:59.999, where Arrow's cast, dividing toward zero, gives 1970-01-01
/// 00:00:00 and the row would land in a window that starts after it).
pub fn to_millis(col: &ArrayRef) -> Result<ArrayRef> {
    use datafusion::arrow::datatypes::Int64Type;
    let per_ms: i64 = match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, None) => return Ok(Arc::clone(col)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000,
        _ => 1,
    };
    let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    if per_ms == 1 {
        return Ok(ms);
    }
    let raw = cast(col, &DataType::Int64)?;
    let raw = raw.as_primitive::<Int64Type>();
    // Only a time before 1970 between two milliseconds was rounded up.
    if !raw.values().iter().any(|&v| v < 0 && v % per_ms != 0) {
        return Ok(ms);
    }
    let ms = ms.as_primitive::<TimestampMillisecondType>();
    let floored: TimestampMillisecondArray = ms
        .iter()
        .zip(raw.values())
        .map(|(m, &v)| m.map(|m| if v < 0 && v % per_ms != 0 { m - 1 } else { m }))
        .collect();
    Ok(Arc::new(floored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn finer_times_are_floored_to_the_millisecond() {
        use datafusion::arrow::array::{TimestampMicrosecondArray, TimestampNanosecondArray};
        let us: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(-500),
            Some(-1_000),
            Some(-1_500),
            Some(1_500),
            None,
            Some(0),
        ]));
        let ns: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![
            Some(-1),
            Some(-2_000_000),
            Some(2_999_999),
            None,
            Some(-2_000_001),
            Some(5),
        ]));
        let want = [
            vec![Some(-1), Some(-1), Some(-2), Some(1), None, Some(0)],
            vec![Some(-1), Some(-2), Some(2), None, Some(-3), Some(0)],
        ];
        for (col, want) in [us, ns].iter().zip(want) {
            let ms = to_millis(col).unwrap();
            let got: Vec<Option<i64>> = ms.as_primitive::<TimestampMillisecondType>().iter().collect();
            assert_eq!(got, want, "{:?}", col.data_type());
        }
        // Without a time before 1970 between milliseconds: Arrow's cast.
        let after: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![1_999, 2_000]));
        let got: Vec<Option<i64>> = to_millis(&after)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .iter()
            .collect();
        assert_eq!(got, [Some(1), Some(2)]);
    }

    #[test]
    fn min_max_is_the_least_and_greatest() {
        assert_eq!(min_max(&[]), (i64::MAX, i64::MIN));
        let mut x = 3u64;
        for n in 0..70 {
            let v: Vec<i64> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    x as i64 >> 3
                })
                .collect();
            let want = (
                v.iter().copied().min().unwrap_or(i64::MAX),
                v.iter().copied().max().unwrap_or(i64::MIN),
            );
            assert_eq!(min_max(&v), want, "{v:?}");
        }
    }
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schemas() -> (SchemaRef, SchemaRef) {
        let in_schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let wtype = DataType::Timestamp(TimeUnit::Millisecond, None);
        let out_schema = Arc::new(Schema::new(vec![
            in_schema.field(0).clone(),
            in_schema.field(1).clone(),
            Field::new("window_start", wtype.clone(), false),
            Field::new("window_end", wtype.clone(), false),
            Field::new("window_time", wtype, false),
        ]));
        (in_schema, out_schema)
    }

    fn batch(in_schema: &SchemaRef, ts: Vec<Option<i64>>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(in_schema),
            vec![
                Arc::new(Int64Array::from((0..ts.len() as i64).collect::<Vec<_>>())),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
        )
        .unwrap()
    }

    fn assign(spec: WindowSpec, schema: &SchemaRef, slices: bool) -> Assign {
        Assign {
            spec,
            time_index: 1,
            schema: Arc::clone(schema),
            slices,
            delay_ms: Some(5_000),
            watermark: i64::MIN,
            cap: i64::MAX,
            keep_late: true,
        }
    }

    #[test]
    fn late_and_timeless_rows_are_dropped_row_by_row() {
        let (in_schema, out_schema) = schemas();
        let b = batch(&in_schema, vec![Some(12_000), Some(4_000), None, Some(25_000)]);
        let tumble = WindowSpec::Tumble {
            size_ms: 10_000,
            offset_ms: 0,
        };
        // Rows at 12s, 4s, none, 25s: 12s moves the watermark to 7s, so 4s
        // is late; the row without a time is dropped.
        let mut a = assign(tumble.clone(), &out_schema, false);
        let (out, late, rows) = a.apply(&b).unwrap();
        assert_eq!(late, 2);
        assert_eq!(rows.unwrap().num_rows(), 2);
        let starts = out.column(2).as_primitive::<TimestampMillisecondType>();
        assert_eq!(starts.values().to_vec(), vec![10_000, 20_000]);
        let times = out.column(4).as_primitive::<TimestampMillisecondType>();
        assert_eq!(times.values().to_vec(), vec![19_999, 29_999]);
        assert_eq!(a.watermark, 20_000);
        // The same rows cut into two batches: the same rows are late.
        let mut b2 = assign(tumble, &out_schema, false);
        let (first, l1, _) = b2.apply(&b.slice(0, 1)).unwrap();
        let (rest, l2, _) = b2.apply(&b.slice(1, 3)).unwrap();
        assert_eq!((first.num_rows() + rest.num_rows(), l1 + l2), (2, 2));
    }

    #[test]
    fn hop_rows_go_to_every_window_or_to_their_slice() {
        let (in_schema, out_schema) = schemas();
        let b = batch(&in_schema, vec![Some(5_000)]);
        let hop = WindowSpec::Hop {
            slide_ms: 2_000,
            size_ms: 6_000,
            offset_ms: 0,
        };
        let (out, _, _) = assign(hop.clone(), &out_schema, false).apply(&b).unwrap();
        let starts = out
            .column(2)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        assert_eq!(starts, vec![0, 2_000, 4_000]);
        assert_eq!(
            out.column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values()
                .to_vec(),
            vec![0, 0, 0]
        );
        let (out, _, _) = assign(hop, &out_schema, true).apply(&b).unwrap();
        let ends = out
            .column(3)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        assert_eq!((out.num_rows(), ends), (1, vec![6_000]));
    }

    proptest::proptest! {
        /// The chunked judgement equals the row-by-row definition, on
        /// times that drift up with jitter (some chunks straddle the
        /// watermark, most do not), with nulls, caps and both kinds of
        /// watermark.
        #[test]
        fn on_time_rows_is_the_row_by_row_rule(
            steps in proptest::collection::vec((0i64..40, proptest::bool::weighted(0.03)), 0..400),
            jitter in 0i64..200,
            start_wm in -50i64..50,
            cap in proptest::option::of(0i64..4_000),
            delay in proptest::option::of(0i64..150),
        ) {
            let mut t = 0i64;
            let mut times = Vec::new();
            for (i, (step, null)) in steps.iter().enumerate() {
                t += step;
                let wobble = (i as i64 * 7919) % (jitter + 1);
                times.push((!null).then_some(t - wobble));
            }
            let array = TimestampMillisecondArray::from(times.clone());
            let cap = cap.unwrap_or(i64::MAX);
            let (keep, after, all) = on_time_rows(array.values(), array.nulls(), start_wm, cap, delay);
            let mut wm = start_wm;
            let mut expected = Vec::new();
            for v in &times {
                match v {
                    None => expected.push(false),
                    Some(t) => {
                        expected.push(*t >= wm.min(cap));
                        if let Some(d) = delay {
                            wm = wm.max(t - d);
                        }
                    }
                }
            }
            proptest::prop_assert_eq!(keep.iter().collect::<Vec<_>>(), expected.clone());
            proptest::prop_assert_eq!(after, wm);
            proptest::prop_assert_eq!(all, expected.iter().all(|k| *k));
        }
    }

    /// A time outside years 0000-9999 has no window: late, as a NULL, and
    /// the watermark does not move to it (a row at DuckDB's 'infinity' got
    /// a window whose end wrapped to before 1970, and made every later
    /// row late).
    #[test]
    fn a_time_beyond_year_9999_is_late_and_leaves_the_watermark() {
        for n in [3usize, 100] {
            let mut times: Vec<i64> = (0..n as i64).map(|i| 1_000 + i).collect();
            times[1] = i64::MAX - 5_000;
            times[2] = MIN_EVENT_MS - 1;
            let array = TimestampMillisecondArray::from(times.clone());
            let (keep, after, all) =
                on_time_rows(array.values(), array.nulls(), i64::MIN, i64::MAX, Some(10));
            let kept: Vec<bool> = keep.iter().collect();
            assert!(!kept[1] && !kept[2] && kept[0], "{kept:?}");
            assert_eq!(kept.iter().filter(|k| **k).count(), n - 2);
            assert!(!all);
            assert_eq!(after, times[n - 1].max(1_000) - 10);
            let col: ArrayRef = Arc::new(array);
            assert_eq!(
                crate::epoch::max_millis(&col).unwrap(),
                Some(*times.iter().filter(|t| in_event_range(**t)).max().unwrap())
            );
        }
    }
}
