//! `WindowTopNExec`: `ROW_NUMBER() / RANK() / DENSE_RANK() OVER (PARTITION BY
//! window_start, window_end, ... ORDER BY ...)` over a window, usually with
//! `rn <= N`.
//!
//! Each open window keeps its rows; when N is known, after every epoch only
//! the rows that can still rank within N are kept, so state is at most N
//! rows per partition and window (more only for ties under RANK). When the
//! watermark passes a window's end its rows are sorted, ranked and emitted
//! in (partition, rank) order. Ties keep arrival order, so a restored
//! operator (whose rows come back in the same order) ranks the same way.
//!
//! State file: `__window_start, __window_end: Int64`, then the input columns.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::keys::KeyRows;
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{SortColumn, SortOptions, cast, concat_batches, lexsort_to_indices};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use weir_sql::RankKind;

use super::operator::{EpochOperator, OperatorExec};
use super::units::{split_by_unit, take_batch};
use crate::epoch::EpochInput;
use crate::exec::{StateChange, StateTable, StatefulOperator};

/// A window Top-N over its input.
pub type WindowTopNExec = OperatorExec<TopNState>;

/// The Top-N's parameters, from the logical node.
pub struct TopNParams {
    /// `PARTITION BY` (window start and end among them).
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY`.
    pub order_by: Vec<PhysicalSortExpr>,
    /// The ranking function.
    pub rank: RankKind,
    /// Keep ranks up to this.
    pub limit: Option<u64>,
    /// Index of `window_start` in `partition_by`.
    pub window_start: usize,
    /// Index of `window_end` in `partition_by`.
    pub window_end: usize,
    /// How far this operator's watermark trails the pipeline's, ms.
    pub lag_ms: i64,
    /// Output: the input's columns and the rank.
    pub schema: SchemaRef,
}

/// Configuration and state, shared by every copy of the plan node.
pub struct TopNState {
    p: TopNParams,
    input_schema: SchemaRef,
    state_schema: SchemaRef,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Open windows' rows, by (end, start).
    windows: BTreeMap<(i64, i64), Vec<RecordBatch>>,
    /// Windows changed since the last checkpoint.
    changed: std::collections::BTreeSet<(i64, i64)>,
    /// Windows emitted since the last checkpoint.
    removed: std::collections::BTreeSet<(i64, i64)>,
}

impl OperatorExec<TopNState> {
    /// Builds the operator.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, p: TopNParams) -> Result<Self> {
        let input_schema = input.schema();
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        fields.extend(input_schema.fields().iter().map(|f| f.as_ref().clone()));
        let state = TopNState {
            p,
            input_schema,
            state_schema: Arc::new(Schema::new(fields)),
            inner: Mutex::new(Inner::default()),
        };
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl EpochOperator for TopNState {
    const NAME: &'static str = "WindowTopNExec";
    /// The windows the epoch's rows went to.
    type Acc = Vec<(i64, i64)>;

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.p.schema)
    }

    /// One: ranking needs all of a window's rows together.
    fn partitions(&self) -> usize {
        1
    }

    fn shard_keys(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        vec![]
    }

    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let p = &self.p;
        p.partition_by
            .iter()
            .chain(p.order_by.iter().map(|s| &s.expr))
            .cloned()
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.p;
        let parts: Vec<String> = p.partition_by.iter().map(|e| e.to_string()).collect();
        let order: Vec<String> = p.order_by.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "{:?} partition=[{}] order=[{}]{}, emit=on window close",
            p.rank,
            parts.join(", "),
            order.join(", "),
            p.limit.map(|l| format!(" limit={l}")).unwrap_or_default()
        )
    }

    fn start(&self, _partition: usize) -> Result<Self::Acc> {
        Ok(Vec::new())
    }

    fn fold(&self, _partition: usize, touched: &mut Self::Acc, batch: &RecordBatch) -> Result<()> {
        touched.extend(self.update(batch)?);
        Ok(())
    }

    fn finish(&self, _partition: usize, touched: Self::Acc, epoch: &EpochInput) -> Result<RecordBatch> {
        self.prune(&touched)?;
        self.emit_closed(epoch.watermark_out.saturating_sub(self.p.lag_ms))
    }
}

impl TopNState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn window_bounds(&self, batch: &RecordBatch) -> Result<(ArrayRef, ArrayRef)> {
        let n = batch.num_rows();
        let s = cast(
            &self.p.partition_by[self.p.window_start]
                .evaluate(batch)?
                .into_array(n)?,
            &DataType::Int64,
        )?;
        let e = cast(
            &self.p.partition_by[self.p.window_end]
                .evaluate(batch)?
                .into_array(n)?,
            &DataType::Int64,
        )?;
        Ok((s, e))
    }

    /// Adds rows to their windows; returns the windows touched.
    fn update(&self, batch: &RecordBatch) -> Result<Vec<(i64, i64)>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let (s, e) = self.window_bounds(batch)?;
        let parts = split_by_unit(
            s.as_primitive::<Int64Type>().values(),
            e.as_primitive::<Int64Type>().values(),
        );
        let mut inner = self.lock();
        let mut touched = Vec::new();
        for (window, rows) in parts {
            inner.changed.insert(window);
            let rows = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_batch(batch, &UInt32Array::from(rows))?
            };
            inner.windows.entry(window).or_default().push(rows);
            touched.push(window);
        }
        Ok(touched)
    }

    /// Keeps only rows that can still rank within the limit.
    fn prune(&self, touched: &[(i64, i64)]) -> Result<()> {
        let Some(limit) = self.p.limit else { return Ok(()) };
        let mut inner = self.lock();
        for w in touched {
            if let Some(batches) = inner.windows.get_mut(w) {
                let all = concat_batches(&self.input_schema, batches.iter())?;
                let (order, ranks) = self.rank(&all)?;
                let keep: Vec<u32> = order
                    .iter()
                    .zip(&ranks)
                    .filter(|(_, r)| **r <= limit)
                    .map(|(i, _)| *i)
                    .collect();
                if keep.len() < all.num_rows() {
                    // Keep arrival order among the survivors.
                    let mut keep = keep;
                    keep.sort_unstable();
                    *batches = vec![take_batch(&all, &UInt32Array::from(keep))?];
                }
            }
        }
        Ok(())
    }

    /// Row indices in (partition, order, arrival) order, and their ranks.
    fn rank(&self, batch: &RecordBatch) -> Result<(Vec<u32>, Vec<u64>)> {
        rank_rows(&self.p.partition_by, &self.p.order_by, self.p.rank, batch)
    }

    fn emit_closed(&self, watermark: i64) -> Result<RecordBatch> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while let Some(entry) = inner.windows.first_entry() {
            if entry.key().0 > watermark {
                break;
            }
            let window = *entry.key();
            let batches = entry.remove();
            inner.changed.remove(&window);
            inner.removed.insert(window);
            let all = concat_batches(&self.input_schema, batches.iter())?;
            let (order, ranks) = self.rank(&all)?;
            let keep: Vec<(u32, u64)> = order
                .into_iter()
                .zip(ranks)
                .filter(|(_, r)| self.p.limit.is_none_or(|l| *r <= l))
                .collect();
            let rows = take_batch(
                &all,
                &UInt32Array::from(keep.iter().map(|(i, _)| *i).collect::<Vec<_>>()),
            )?;
            let rank_field = self.p.schema.field(self.p.schema.fields().len() - 1);
            let rank: ArrayRef = Arc::new(UInt64Array::from(
                keep.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            ));
            let mut columns = rows.columns().to_vec();
            columns.push(cast(&rank, rank_field.data_type())?);
            out.push(RecordBatch::try_new(Arc::clone(&self.p.schema), columns)?);
        }
        Ok(concat_batches(&self.p.schema, &out)?)
    }
}

impl StatefulOperator for TopNState {
    fn signature(&self) -> String {
        ranking_signature(
            &format!("window-top-n {:?} limit={:?}", self.p.rank, self.p.limit),
            &self.p.partition_by,
            &self.p.order_by,
            &self.state_schema,
        )
    }

    fn kind(&self) -> &'static str {
        "window-top-n"
    }

    fn state_rows(&self) -> usize {
        self.lock()
            .windows
            .values()
            .flatten()
            .map(RecordBatch::num_rows)
            .sum()
    }

    fn describe(&self) -> StateTable {
        StateTable {
            name: "window_rows".into(),
            keys: vec!["window_start".into(), "window_end".into()],
            values: self
                .input_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            evicted_by: format!(
                "window_end at or before the watermark (ranked and emitted, then dropped){}",
                match self.p.limit {
                    Some(l) => format!("; rows ranked beyond {l} in their partition, each epoch"),
                    None => String::new(),
                }
            ),
        }
    }

    fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.state_schema)
    }

    fn unit_key_len(&self) -> usize {
        2
    }

    fn checkpoint(&self, full: bool) -> Result<Option<StateChange>> {
        let mut inner = self.lock();
        if !full && inner.changed.is_empty() && inner.removed.is_empty() {
            return Ok(None);
        }
        let windows: Vec<(i64, i64)> = if full {
            inner.windows.keys().copied().collect()
        } else {
            inner
                .changed
                .iter()
                .copied()
                .filter(|w| inner.windows.contains_key(w))
                .collect()
        };
        let mut upserts = Vec::new();
        for (end, start) in windows {
            let batches = &inner.windows[&(end, start)];
            let rows = concat_batches(&self.input_schema, batches.iter())?;
            let n = rows.num_rows();
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(vec![start; n])),
                Arc::new(Int64Array::from(vec![end; n])),
            ];
            columns.extend(rows.columns().iter().cloned());
            upserts.push(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?);
        }
        let deletes = if full || inner.removed.is_empty() {
            vec![]
        } else {
            let (ends, starts): (Vec<i64>, Vec<i64>) = inner.removed.iter().copied().unzip();
            vec![RecordBatch::try_new(
                Arc::new(self.state_schema.project(&[0, 1])?),
                vec![
                    Arc::new(Int64Array::from(starts)),
                    Arc::new(Int64Array::from(ends)),
                ],
            )?]
        };
        inner.changed.clear();
        inner.removed.clear();
        Ok(Some(StateChange { upserts, deletes }))
    }

    fn restore(&self, batches: Vec<RecordBatch>, _watermark: i64) -> Result<()> {
        let mut inner = self.lock();
        *inner = Inner::default();
        for batch in batches {
            let batch = batch.with_schema(Arc::clone(&self.state_schema))?;
            let starts = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
            let ends = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
            for (window, rows) in split_by_unit(&starts, &ends) {
                let part = take_batch(&batch, &UInt32Array::from(rows))?;
                let rows =
                    RecordBatch::try_new(Arc::clone(&self.input_schema), part.columns()[2..].to_vec())?;
                inner.windows.entry(window).or_default().push(rows);
            }
        }
        Ok(())
    }
}

/// Row indices of `batch` in (partition, order, arrival) order, and their
/// ranks within their partitions. Ties keep arrival (row) order.
pub(super) fn rank_rows(
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    kind: RankKind,
    batch: &RecordBatch,
) -> Result<(Vec<u32>, Vec<u64>)> {
    let n = batch.num_rows();
    let parts: Vec<ArrayRef> = partition_by
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(n))
        .collect::<Result<_>>()?;
    let orders: Vec<ArrayRef> = order_by
        .iter()
        .map(|s| s.expr.evaluate(batch)?.into_array(n))
        .collect::<Result<_>>()?;
    let mut columns: Vec<SortColumn> = parts
        .iter()
        .map(|a| SortColumn {
            values: Arc::clone(a),
            options: Some(SortOptions::default()),
        })
        .collect();
    columns.extend(orders.iter().zip(order_by).map(|(a, s)| SortColumn {
        values: Arc::clone(a),
        options: Some(s.options),
    }));
    // Arrival order breaks ties.
    columns.push(SortColumn {
        values: Arc::new(UInt64Array::from((0..n as u64).collect::<Vec<_>>())),
        options: Some(SortOptions::default()),
    });
    let order = lexsort_to_indices(&columns, None)?;
    let order: Vec<u32> = order.values().to_vec();
    let to_rows = |cols: &[ArrayRef]| -> Result<datafusion::arrow::row::Rows> {
        KeyRows::new(cols.iter().map(|c| c.data_type().clone()))?.convert(cols, n)
    };
    let part_rows = to_rows(&parts)?;
    let order_rows = to_rows(&orders)?;
    let mut ranks = Vec::with_capacity(n);
    let (mut number, mut rank, mut dense) = (0u64, 0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        let i = i as usize;
        let new_partition = k == 0 || part_rows.row(i) != part_rows.row(order[k - 1] as usize);
        if new_partition {
            number = 0;
            rank = 0;
            dense = 0;
        }
        number += 1;
        let tie = !new_partition && order_rows.row(i) == order_rows.row(order[k - 1] as usize);
        if !tie {
            rank = number;
            dense += 1;
        }
        ranks.push(match kind {
            RankKind::RowNumber => number,
            RankKind::Rank => rank,
            RankKind::DenseRank => dense,
        });
    }
    Ok((order, ranks))
}

/// A ranking operator's signature (see [`StatefulOperator::signature`]):
/// `head`, then its partition and order expressions and state columns.
pub(super) fn ranking_signature(
    head: &str,
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    state_schema: &Schema,
) -> String {
    let mut s = format!("{head} partition[");
    for e in partition_by {
        s.push_str(&format!("{e};"));
    }
    s.push_str("] order[");
    for e in order_by {
        s.push_str(&format!("{e};"));
    }
    s.push_str("] state[");
    for f in state_schema.fields() {
        s.push_str(&format!("{}:{};", f.name(), f.data_type()));
    }
    s.push(']');
    crate::compat::signature::strip_column_positions(&s)
}
