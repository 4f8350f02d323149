//! Running a stateless query on the executors (`weir run --cluster`; see
//! `weir_engine::remote`, "A job whose every query is stateless").
//!
//! Each epoch of such a query is one Ballista job: a [`PipelineExec`] with
//! one partition per part of the source's offset, over the same table of
//! parts a [`crate::read::RemoteReadExec`] reads (so the scheduler cuts it
//! into a task per part). A task reads its part, runs the query's own plan
//! over the part's rows (the plan's `StreamScanExec` finds them in an
//! `EpochInput`, as on the driver), and stages the output in the sink
//! folder as one Parquet file named after the part and a random attempt id
//! drawn when the task starts. It returns one row: the part, the attempt,
//! rows in and out, the part's greatest event time, the file and its
//! bytes. The driver keeps one row per part (the first of a part that ran
//! twice), and names those files in the epoch's manifest: another
//! attempt's file, even one written late by an executor thought dead, is
//! never published.
//!
//! Wire form (inside DataFusion's `PhysicalExtensionNode`): `WEIR-PIPE/1\n`,
//! the length of the read's own wire form (4 bytes, little-endian) and that
//! form (see `read`), a JSON object (epoch, processing time, time column,
//! sink) up to the next `\n`, then the query's plan as DataFusion's
//! protobuf `PhysicalPlanNode`, its scan as `WEIR-SCAN/1\n`, a JSON object
//! (source, declared columns) up to `\n`, then its schema as protobuf.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_engine::epoch::{EpochInput, SourceRows};
use weir_engine::exec::StreamScanExec;
use weir_engine::remote::{PartReport, RemotePipeline, RemoteSink};
use weir_storage::location::Create;
use weir_storage::{Location, ManifestFile, SinkLayout, StoreOptions, codec};

use crate::read::{decode_read, encode_read, parts_table};

pub(crate) const PIPE_MAGIC: &[u8] = b"WEIR-PIPE/1\n";
pub(crate) const SCAN_MAGIC: &[u8] = b"WEIR-SCAN/1\n";

/// Runs a stateless query over each part of an epoch, where it is read.
pub struct PipelineExec {
    /// The job; its parts are in the input.
    job: RemotePipeline,
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
    /// The store settings of the process the node runs in.
    store_options: StoreOptions,
}

impl fmt::Debug for PipelineExec {
    // The declaration's options may hold credentials: name the table only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineExec")
            .field("table", &self.job.read.table.name)
            .field("epoch", &self.job.epoch)
            .finish()
    }
}

/// The rows a [`PipelineExec`] returns: one per part run.
fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("attempt", DataType::Utf8, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("max_time_ms", DataType::Int64, true),
        Field::new("file", DataType::Utf8, true),
        Field::new("staged", DataType::Utf8, true),
        Field::new("bytes", DataType::UInt64, false),
    ]))
}

impl PipelineExec {
    /// The job's query over its parts, a partition each.
    pub fn try_new(job: RemotePipeline, store_options: StoreOptions) -> DfResult<Self> {
        let input = parts_table(&job.read.parts)?;
        Ok(Self::over(job, input, store_options))
    }

    fn over(mut job: RemotePipeline, input: Arc<dyn ExecutionPlan>, store_options: StoreOptions) -> Self {
        job.read.parts = Vec::new();
        let props = PlanProperties::new(
            EquivalenceProperties::new(report_schema()),
            Partitioning::UnknownPartitioning(input.properties().output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            job,
            input,
            props: Arc::new(props),
            store_options,
        }
    }
}

impl DisplayAs for PipelineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PipelineExec: source={}, epoch={}",
            self.job.read.table.name, self.job.epoch
        )
    }
}

impl ExecutionPlan for PipelineExec {
    fn name(&self) -> &str {
        "PipelineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("PipelineExec has one child".into()))?;
        Ok(Arc::new(Self::over(
            self.job.clone(),
            input,
            self.store_options.clone(),
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let parts = self.input.execute(partition, Arc::clone(&context))?;
        let job = self.job.clone();
        let store_options = self.store_options.clone();
        let run = async move {
            let parts: Vec<RecordBatch> = parts.try_collect().await?;
            let mut out = Vec::new();
            for batch in parts {
                for (index, part) in crate::read::parts_in(&batch)? {
                    out.push(run_part(&job, &store_options, &context, index, &part).await?);
                }
            }
            Ok::<_, DataFusionError>(out)
        };
        let stream = futures::stream::once(run).flat_map(|r| match r {
            Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(report_schema(), stream)))
    }
}

/// `ctx` with another configuration and scalar functions.
pub(crate) fn task_context(
    ctx: &TaskContext,
    config: datafusion::prelude::SessionConfig,
    functions: HashMap<String, Arc<datafusion::logical_expr::ScalarUDF>>,
) -> TaskContext {
    TaskContext::new(
        ctx.task_id(),
        ctx.session_id(),
        config,
        functions,
        ctx.higher_order_functions().clone(),
        ctx.aggregate_functions().clone(),
        ctx.window_functions().clone(),
        ctx.runtime_env(),
    )
}

/// A random attempt id: letters and digits, unique per task run.
pub(crate) fn attempt_id() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = std::collections::hash_map::RandomState::new().hash_one(nanos);
    format!("{random:016x}")
}

/// Reads one part, runs the query over it, stages its output; its report.
async fn run_part(
    job: &RemotePipeline,
    store_options: &StoreOptions,
    context: &Arc<TaskContext>,
    index: u32,
    part: &Value,
) -> DfResult<RecordBatch> {
    // Ballista sends a task's error back in its debug form: the message
    // itself, as `Execution("...")`, reads best there (see `task_failure`).
    let external = |e: weir_engine::Error| DataFusionError::Execution(e.to_string());
    let attempt = attempt_id();
    let table = &job.read.table;
    let batches = weir_engine::source::read_whole_part(table, store_options, job.read.columns.clone(), part)
        .await
        .map_err(external)?;
    let rows_in: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let mut max_time: Option<i64> = None;
    if let Some(c) = job.time_column {
        for b in &batches {
            if let Some(m) = weir_engine::epoch::max_millis(b.column(c))? {
                max_time = Some(max_time.map_or(m, |x: i64| x.max(m)));
            }
        }
    }
    // The part is this task's whole epoch input.
    let input = EpochInput {
        epoch: job.epoch,
        batches: HashMap::from([(
            table.name.clone(),
            SourceRows {
                columns: Arc::new(job.read.columns.clone()),
                batches: Arc::new(batches),
                max_time_ms: None,
                maxima: Default::default(),
            },
        )]),
        processing_time_ms: job.processing_time_ms,
        watermark_out: i64::MIN,
        ..EpochInput::default()
    };
    let config = context.session_config().clone().with_extension(Arc::new(input));
    let ctx = Arc::new(task_context(context, config, context.scalar_functions().clone()));
    let mut output = Vec::new();
    for p in 0..job.plan.properties().output_partitioning().partition_count() {
        let stream = job.plan.execute(p, Arc::clone(&ctx))?;
        output.extend(datafusion::physical_plan::common::collect(stream).await?);
    }
    let rows_out: u64 = output.iter().map(|b| b.num_rows() as u64).sum();
    let (file, staged, bytes) = stage_output(
        &job.sink,
        store_options,
        job.epoch,
        index as usize,
        &attempt,
        &job.plan.schema(),
        &output,
    )
    .await?;
    Ok(RecordBatch::try_new(
        report_schema(),
        vec![
            Arc::new(UInt32Array::from(vec![index])),
            Arc::new(StringArray::from(vec![attempt])),
            Arc::new(UInt64Array::from(vec![rows_in])),
            Arc::new(UInt64Array::from(vec![rows_out])),
            Arc::new(Int64Array::from(vec![max_time])),
            Arc::new(StringArray::from(vec![file])),
            Arc::new(StringArray::from(vec![staged])),
            Arc::new(UInt64Array::from(vec![bytes])),
        ],
    )?)
}

/// Stages `output` (part or shard `index` of an epoch, run by `attempt`)
/// in a files sink as one Parquet file under its attempt's name; nothing
/// for a blackhole or no rows. The file's final name, its staged name and
/// its bytes.
///
/// `index` is the part (or shard) whose output this is: its file's name,
/// and in a changelog the numbering of its rows.
pub(crate) async fn stage_output(
    sink: &RemoteSink,
    store_options: &StoreOptions,
    epoch: u64,
    index: usize,
    attempt: &str,
    schema: &SchemaRef,
    output: &[RecordBatch],
) -> DfResult<(Option<String>, Option<String>, u64)> {
    let rows: usize = output.iter().map(RecordBatch::num_rows).sum();
    let RemoteSink::Files {
        folder,
        writer,
        options,
        table,
        changelog,
        not_null,
    } = sink
    else {
        return Ok((None, None, 0));
    };
    let engine = |e: weir_engine::Error| DataFusionError::Execution(e.to_string());
    // As the driver's sink checks before it stages anything.
    weir_engine::sink::check_not_null(table, not_null, epoch, schema, output).map_err(engine)?;
    if rows == 0 {
        return Ok((None, None, 0));
    }
    let numbered;
    let (schema, output) = if *changelog {
        numbered = weir_engine::sink::with_changelog_order(epoch, schema, output, index).map_err(engine)?;
        (&numbered.0, &numbered.1[..])
    } else {
        (schema, output)
    };
    let store = |e: weir_storage::Error| DataFusionError::Execution(e.to_string());
    // The table's own settings over the executor's, as on the driver.
    let settings = store_options.merged(&StoreOptions::new(options.iter().cloned()));
    let loc = Location::open(folder, &settings, Create::No).map_err(store)?;
    let layout = SinkLayout::new(loc.clone(), writer.clone());
    let name = layout.final_part_name(epoch, index);
    let staged_name = layout.staged_part_name(epoch, index, attempt);
    let meta = BTreeMap::from([("weir.epoch".to_string(), epoch.to_string())]);
    let payload = codec::encode_sink_parallel(&loc.url_of(&name), schema, output, &meta, 1).map_err(store)?;
    let bytes = payload.content_length() as u64;
    loc.put(&staged_name, payload).await.map_err(store)?;
    // On the disk before the report goes back: the driver commits what
    // the reports name (a local folder; an object store keeps it already).
    loc.sync().await.map_err(store)?;
    Ok((Some(name), Some(staged_name), bytes))
}

/// One report per part from a job's rows: the first whole report of each
/// part (a part that ran twice reports twice; either attempt's file holds
/// the same rows, and only the one kept is named by the manifest).
pub(crate) fn gather_reports(parts: usize, batches: &[RecordBatch]) -> Result<Vec<PartReport>, String> {
    let mut out: Vec<Option<PartReport>> = vec![None; parts];
    for b in batches {
        if b.num_columns() != 8 {
            return Err(format!("a report of {} columns", b.num_columns()));
        }
        let cols = (
            b.column(0).as_primitive_opt::<UInt32Type>(),
            b.column(2).as_primitive_opt::<UInt64Type>(),
            b.column(3).as_primitive_opt::<UInt64Type>(),
            b.column(4)
                .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>(),
            b.column(5).as_string_opt::<i32>(),
            b.column(6).as_string_opt::<i32>(),
            b.column(7).as_primitive_opt::<UInt64Type>(),
        );
        let (Some(part), Some(rows_in), Some(rows_out), Some(max), Some(file), Some(staged), Some(bytes)) =
            cols
        else {
            return Err("a report whose columns have the wrong types".into());
        };
        for row in 0..b.num_rows() {
            let i = part.value(row) as usize;
            let slot = out
                .get_mut(i)
                .ok_or_else(|| format!("a report of part {i} of {parts}"))?;
            if slot.is_some() {
                continue;
            }
            let file = (file.is_valid(row) && staged.is_valid(row)).then(|| ManifestFile {
                name: file.value(row).to_string(),
                rows: rows_out.value(row),
                bytes: bytes.value(row),
                staged: Some(staged.value(row).to_string()),
            });
            *slot = Some(PartReport {
                part: i,
                rows_in: rows_in.value(row),
                rows_out: rows_out.value(row),
                max_time_ms: max.is_valid(row).then(|| max.value(row)),
                file,
            });
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| format!("no report of part {i} of {parts} came back")))
        .collect()
}

/// The parts of a [`PipelineExec`]'s wire form after its read.
#[derive(Serialize, Deserialize)]
struct WireJob {
    epoch: u64,
    processing_time_ms: i64,
    time_column: Option<usize>,
    /// `None`: a blackhole; else the folder, the writer and the table's
    /// store settings.
    files: Option<WireFiles>,
}

/// A files sink on the wire (see [`RemoteSink::Files`]).
#[derive(Serialize, Deserialize)]
pub(crate) struct WireFiles {
    folder: String,
    writer: String,
    options: Vec<(String, String)>,
    table: String,
    changelog: bool,
    not_null: Vec<String>,
}

/// A sink's wire form (`None`: a blackhole).
pub(crate) fn wire_files(sink: &RemoteSink) -> Option<WireFiles> {
    match sink {
        RemoteSink::Blackhole => None,
        RemoteSink::Files {
            folder,
            writer,
            options,
            table,
            changelog,
            not_null,
        } => Some(WireFiles {
            folder: folder.clone(),
            writer: writer.clone(),
            options: options.clone(),
            table: table.clone(),
            changelog: *changelog,
            not_null: not_null.clone(),
        }),
    }
}

/// The sink [`wire_files`] describes.
pub(crate) fn sink_of(files: Option<WireFiles>) -> RemoteSink {
    match files {
        None => RemoteSink::Blackhole,
        Some(w) => RemoteSink::Files {
            folder: w.folder,
            writer: w.writer,
            options: w.options,
            table: w.table,
            changelog: w.changelog,
            not_null: w.not_null,
        },
    }
}

/// `ctx` with Weir's own functions added: a plan decoded on an executor
/// may call them, and the executor's registry does not hold them.
pub(crate) fn with_weir_functions(ctx: &TaskContext) -> TaskContext {
    let mut functions = ctx.scalar_functions().clone();
    for f in [
        weir_sql::functions::proctime(),
        weir_sql::functions::decimal_avg(),
    ] {
        functions.insert(f.name().to_string(), Arc::new(f));
    }
    let mut aggregates = ctx.aggregate_functions().clone();
    for f in weir_sql::functions::min_max() {
        aggregates.insert(f.name().to_string(), Arc::new(f));
    }
    TaskContext::new(
        ctx.task_id(),
        ctx.session_id(),
        ctx.session_config().clone(),
        functions,
        ctx.higher_order_functions().clone(),
        aggregates,
        ctx.window_functions().clone(),
        ctx.runtime_env(),
    )
}

/// A `StreamScanExec`'s wire form, but for its schema.
#[derive(Serialize, Deserialize)]
struct WireScan {
    source: String,
    projection: Option<Vec<usize>>,
    partitions: usize,
}

pub(crate) fn encode_pipeline(
    node: &PipelineExec,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    buf: &mut Vec<u8>,
) -> DfResult<()> {
    let job = &node.job;
    let mut read = Vec::new();
    encode_read(&job.read, &mut read)?;
    buf.extend_from_slice(PIPE_MAGIC);
    let len = u32::try_from(read.len()).map_err(|_| DataFusionError::Internal("a read too large".into()))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&read);
    let wire = WireJob {
        epoch: job.epoch,
        processing_time_ms: job.processing_time_ms,
        time_column: job.time_column,
        files: wire_files(&job.sink),
    };
    serde_json::to_writer(&mut *buf, &wire).map_err(|e| DataFusionError::External(Box::new(e)))?;
    buf.push(b'\n');
    let plan = datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
        Arc::clone(&job.plan),
        codec,
        converter,
    )?;
    buf.extend_from_slice(&plan);
    Ok(())
}

pub(crate) fn decode_pipeline(
    rest: &[u8],
    input: Arc<dyn ExecutionPlan>,
    ctx: &TaskContext,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    store_options: StoreOptions,
) -> DfResult<PipelineExec> {
    let bad = |what: &str| DataFusionError::Internal(format!("a Weir query that cannot be decoded: {what}"));
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("no read"))?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| bad("no read"))?) as usize;
    let (read, rest) = rest.split_at_checked(len).ok_or_else(|| bad("a short read"))?;
    let read = decode_read(
        read.strip_prefix(crate::read::MAGIC)
            .ok_or_else(|| bad("no read"))?,
    )?;
    let split = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no end to its description"))?;
    let wire: WireJob = serde_json::from_slice(&rest[..split]).map_err(|_| bad("its description"))?;
    let with_weir = with_weir_functions(ctx);
    let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(
        &rest[split + 1..],
        &with_weir,
        codec,
        converter,
    )?;
    let job = RemotePipeline {
        read,
        plan,
        epoch: wire.epoch,
        processing_time_ms: wire.processing_time_ms,
        time_column: wire.time_column,
        sink: sink_of(wire.files),
    };
    Ok(PipelineExec::over(job, input, store_options))
}

pub(crate) fn encode_scan(scan: &StreamScanExec, buf: &mut Vec<u8>) -> DfResult<()> {
    let wire = WireScan {
        source: scan.source().to_string(),
        projection: scan.projection().cloned(),
        partitions: scan.partitions(),
    };
    buf.extend_from_slice(SCAN_MAGIC);
    serde_json::to_writer(&mut *buf, &wire).map_err(|e| DataFusionError::External(Box::new(e)))?;
    buf.push(b'\n');
    let proto = datafusion_proto::protobuf::Schema::try_from(scan.schema().as_ref())
        .map_err(|e| DataFusionError::Internal(format!("encoding a scan's schema: {e}")))?;
    proto
        .encode(buf)
        .map_err(|e| DataFusionError::Internal(format!("encoding a scan's schema: {e}")))
}

pub(crate) fn decode_scan(rest: &[u8]) -> DfResult<StreamScanExec> {
    let bad = |what: String| DataFusionError::Internal(format!("a Weir scan that cannot be decoded: {what}"));
    let split = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no end to its description".into()))?;
    let wire: WireScan = serde_json::from_slice(&rest[..split]).map_err(|e| bad(e.to_string()))?;
    let proto =
        datafusion_proto::protobuf::Schema::decode(&rest[split + 1..]).map_err(|e| bad(e.to_string()))?;
    let schema = Schema::try_from(&proto).map_err(|e| bad(e.to_string()))?;
    Ok(
        StreamScanExec::with_schema(&wire.source, Arc::new(schema), wire.projection)
            .with_partitions(wire.partitions),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(part: u32, attempt: &str, rows: u64, file: Option<&str>) -> RecordBatch {
        RecordBatch::try_new(
            report_schema(),
            vec![
                Arc::new(UInt32Array::from(vec![part])),
                Arc::new(StringArray::from(vec![attempt])),
                Arc::new(UInt64Array::from(vec![rows])),
                Arc::new(UInt64Array::from(vec![rows / 2])),
                Arc::new(Int64Array::from(vec![Some(1_000 + part as i64)])),
                Arc::new(StringArray::from(vec![
                    file.map(|_| format!("part-{part}.parquet")),
                ])),
                Arc::new(StringArray::from(vec![file])),
                Arc::new(UInt64Array::from(vec![7])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_part_that_ran_twice_is_kept_once_and_a_missing_part_is_an_error() {
        // Part 1 came back from two attempts: the first is kept, its file
        // named; part 2 had no output.
        let batches = [
            report(1, "a", 10, Some("staged-a")),
            report(0, "c", 4, Some("staged-c")),
            report(1, "b", 10, Some("staged-b")),
            report(2, "d", 0, None),
        ];
        let got = gather_reports(3, &batches).unwrap();
        assert_eq!(got.iter().map(|r| r.part).collect::<Vec<_>>(), vec![0, 1, 2]);
        let staged: Vec<Option<String>> = got
            .iter()
            .map(|r| r.file.as_ref().and_then(|f| f.staged.clone()))
            .collect();
        assert_eq!(
            staged,
            vec![Some("staged-c".into()), Some("staged-a".into()), None]
        );
        assert_eq!(got[1].rows_in, 10);
        assert_eq!(got[1].rows_out, 5);
        assert_eq!(got[1].max_time_ms, Some(1_001));
        assert_eq!(got[1].file.as_ref().unwrap().name, "part-1.parquet");
        // A part with no report must not read as a part without rows.
        let err = gather_reports(3, &batches[..2]).unwrap_err();
        assert!(err.contains("no report of part 2 of 3"), "{err}");
        let err = gather_reports(1, &batches[..1]).unwrap_err();
        assert!(err.contains("part 1 of 1"), "{err}");
    }
}
