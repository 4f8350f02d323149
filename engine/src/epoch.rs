//! What one execution of a pipeline's plan sees: this epoch's input rows and
//! watermarks. The driver puts an [`EpochInput`] into the `TaskContext`'s
//! session config; scans and stateful operators read it from there, so the
//! physical plan is built once and executed once per epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;

/// A source's rows of one epoch. Sources read only the columns some plan
/// needs: `columns` are the declared columns present, in order.
#[derive(Clone, Debug, Default)]
pub struct SourceRows {
    /// Indices into the declared schema of the batches' columns.
    pub columns: Arc<Vec<usize>>,
    /// The rows.
    pub batches: Arc<Vec<RecordBatch>>,
    /// The source's [`crate::source::SourceBatch::max_time_ms`].
    pub max_time_ms: Option<i64>,
    /// Each batch's greatest value of a timestamp column, by the column's
    /// position in `batches`, computed once per epoch ([`Self::batch_max`]):
    /// the driver's watermark and every partition of a scan ask for it.
    pub maxima: Arc<Mutex<HashMap<usize, BatchMaxima>>>,
}

/// Each batch's greatest timestamp (ms), `None` for a batch without one.
pub type BatchMaxima = Arc<Vec<Option<i64>>>;

impl SourceRows {
    /// Each batch's greatest value (in ms) of the timestamp column at
    /// `position`; `None` for a batch with no value.
    pub fn batch_max(&self, position: usize) -> Result<BatchMaxima> {
        // Held while computing: another partition asking meanwhile waits
        // for the answer instead of computing it again.
        let mut cache = self.maxima.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(&position) {
            return Ok(Arc::clone(m));
        }
        let maxima: Vec<Option<i64>> = self
            .batches
            .iter()
            .map(|b| max_millis(b.column(position)))
            .collect::<Result<_>>()?;
        let maxima = Arc::new(maxima);
        cache.insert(position, Arc::clone(&maxima));
        Ok(maxima)
    }
}

/// The greatest value of a timestamp column, in ms (`None` when it has no
/// value). Sources that decode batch by batch call it on each batch as it is
/// decoded, while its values are still in the CPU's cache (see
/// [`crate::source::SourceBatch::time_maxima`]).
pub fn max_millis(column: &datafusion::arrow::array::ArrayRef) -> Result<Option<i64>> {
    use crate::exec::window_assign::{MAX_EVENT_MS, in_event_range};
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMillisecondType;
    let ms = crate::exec::window_assign::to_millis(column)?;
    let ms = ms.as_primitive::<TimestampMillisecondType>();
    match datafusion::arrow::compute::max(ms) {
        // A time beyond year 9999 is no event time: it does not move the
        // watermark (rare: the values are gone over again without it).
        Some(m) if m > MAX_EVENT_MS => Ok(ms.iter().flatten().filter(|&t| in_event_range(t)).max()),
        m => Ok(m),
    }
}

/// The input of one epoch, for one pipeline.
#[derive(Debug, Default)]
pub struct EpochInput {
    /// The epoch number.
    pub epoch: u64,
    /// Rows read from each source this epoch.
    pub batches: HashMap<String, SourceRows>,
    /// Each bounded table's rows (all columns) at the version this epoch
    /// joins with (lookup joins).
    pub lookups: HashMap<String, Arc<Vec<RecordBatch>>>,
    /// Each watermarked source's watermark before this epoch (ms).
    pub source_watermarks_in: HashMap<String, i64>,
    /// The pipeline's watermark after this epoch's rows (ms): windows ending
    /// at or before it are complete.
    pub watermark_out: i64,
    /// Late rows dropped this epoch.
    pub late_rows: AtomicU64,
    /// Late rows kept for a late sink, by sink table.
    pub late_batches: Mutex<Vec<(String, RecordBatch)>>,
    /// Processing time of the epoch (ms since the Unix epoch), as recorded in
    /// the offsets log: a replay sees the same time.
    pub processing_time_ms: i64,
}

impl EpochInput {
    /// The epoch input in a task context, or an internal error if the plan
    /// runs outside the driver.
    pub fn from_task(ctx: &TaskContext) -> Result<Arc<EpochInput>> {
        ctx.session_config()
            .get_extension::<EpochInput>()
            .ok_or_else(|| DataFusionError::Internal("a streaming plan ran without its epoch input".into()))
    }

    /// A source's watermark before this epoch (`i64::MIN` before any row).
    pub fn source_watermark_in(&self, source: &str) -> i64 {
        self.source_watermarks_in.get(source).copied().unwrap_or(i64::MIN)
    }

    /// The lowest watermark before this epoch among the pipeline's sources
    /// other than `source` (`i64::MAX` when there are none).
    pub fn others_watermark_in(&self, source: &str) -> i64 {
        self.source_watermarks_in
            .iter()
            .filter(|(s, _)| s.as_str() != source)
            .map(|(_, &w)| w)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Keeps late rows for a late sink.
    pub fn add_late_rows(&self, sink: &str, rows: RecordBatch) {
        if rows.num_rows() > 0 {
            self.late_batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((sink.to_string(), rows));
        }
    }

    /// Counts late rows.
    pub fn add_late(&self, n: u64) {
        self.late_rows.fetch_add(n, Ordering::Relaxed);
    }
}
