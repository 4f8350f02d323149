//! Reading an epoch's input on the executors (`weir run --cluster`).
//!
//! The driver hands each source's share of an epoch to [`ClusterReader`]
//! (the engine's [`RemoteReader`]), which runs it as one Ballista job: a
//! [`RemoteReadExec`] with one partition per part of the offset (one file of
//! a folder). Each task opens the source from its declaration, with the
//! executor's own store settings, and reads its part from the source's
//! store; the rows come back with the part's number in an extra column, so
//! the driver can put them back in offset order whatever order the tasks
//! finished in. The engine then applies the epoch's row budget and advances
//! the source's progress as a local read would (see `weir_engine::remote`).
//!
//! [`WeirCodec`] carries the node across the wire. Ballista's scheduler and
//! executors must use it too, which [`crate::run_scheduler`] and
//! [`crate::run_executor`] do.
//!
//! Wire form of a `RemoteReadExec` (inside DataFusion's
//! `PhysicalExtensionNode`): the bytes `WEIR-READ/1\n`, then a JSON object
//! (the declaration but for its columns, and the columns read)
//! up to the next `\n`, then the declared schema as DataFusion's protobuf
//! `Schema`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_engine::remote::{PartReport, RemotePipeline, RemoteRead, RemoteReader};
use weir_sql::{Options, TableDecl, Watermark};
use weir_storage::StoreOptions;

use ballista_core::serde::BallistaPhysicalExtensionCodec;

/// The column each row's part number travels in (dropped by the driver).
const PART_COLUMN: &str = "__weir_part";
/// The column naming one run of a part: a random number drawn when a task
/// starts reading it. Ballista may run a part twice (an executor declared
/// lost that had finished it) and hand back both runs' rows; the driver
/// keeps one run per part.
const RUN_COLUMN: &str = "__weir_run";
/// Null on data rows; on the one row closing a run, its number of rows
/// (the data columns null), so the driver knows the run is whole.
const ROWS_COLUMN: &str = "__weir_rows";

/// Reads parts of one source's offset on the executor running the task.
///
/// Its input is a table of the parts, one row and one partition each
/// (`part`, `offset`): an in-memory scan, which Ballista's scheduler knows
/// how to cut into each task's partitions. A leaf node of Weir's own would
/// not be cut: Ballista 55 leaves plan nodes it does not know whole, and
/// each task then ran every part (the rows came back once per task).
pub struct RemoteReadExec {
    /// The source, and the columns read (its parts are in the input).
    read: RemoteRead,
    input: Arc<dyn ExecutionPlan>,
    /// The rows' schema: the declared columns read, then the part number.
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    /// The store settings of the process the node runs in (an executor's
    /// own environment; never the driver's credentials).
    store_options: StoreOptions,
}

impl fmt::Debug for RemoteReadExec {
    // The declaration's options may hold credentials: name the table only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteReadExec")
            .field("table", &self.read.table.name)
            .finish()
    }
}

/// The schema of a remote read's input: one row per part.
fn parts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(PART_COLUMN, DataType::UInt32, false),
        Field::new("offset", DataType::Utf8, false),
    ]))
}

/// The parts in a batch of a [`parts_table`]: each one's number and offset.
pub(crate) fn parts_in(batch: &RecordBatch) -> DfResult<Vec<(u32, Value)>> {
    let index = batch
        .column(0)
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| DataFusionError::Internal("a table of parts lacks their numbers".into()))?;
    let offsets = batch
        .column(1)
        .as_string_opt::<i32>()
        .ok_or_else(|| DataFusionError::Internal("a table of parts lacks their offsets".into()))?;
    (0..batch.num_rows())
        .map(|row| {
            let part: Value = serde_json::from_str(offsets.value(row))
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok((index.value(row), part))
        })
        .collect()
}

/// A table of `parts`, one row and one partition each (`part`, `offset`):
/// an in-memory scan, which Ballista's scheduler knows how to cut into
/// each task's partitions.
pub(crate) fn parts_table(parts: &[Value]) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = parts_schema();
    let partitions = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let index = u32::try_from(i).map_err(|_| DataFusionError::Plan(format!("{i} parts")))?;
            let offset = serde_json::to_string(part).map_err(|e| DataFusionError::External(Box::new(e)))?;
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(UInt32Array::from(vec![index])),
                    Arc::new(StringArray::from(vec![offset])),
                ],
            )?;
            Ok(vec![batch])
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?)
}

impl RemoteReadExec {
    /// A read of `read`'s parts, one partition each.
    pub fn try_new(read: RemoteRead, store_options: StoreOptions) -> Result<Self, DataFusionError> {
        let input = parts_table(&read.parts)?;
        Self::over(read, input, store_options)
    }

    /// The node over `input` (a table of parts, [`parts_schema`]).
    fn over(read: RemoteRead, input: Arc<dyn ExecutionPlan>, store_options: StoreOptions) -> DfResult<Self> {
        let declared = read.table.schema.clone().ok_or_else(|| {
            DataFusionError::Plan(format!("source table '{}' declares no columns", read.table.name))
        })?;
        // Data columns are nullable here: a run's closing row has none.
        let mut fields: Vec<Arc<Field>> = declared
            .project(&read.columns)?
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        fields.push(Arc::new(Field::new(PART_COLUMN, DataType::UInt32, false)));
        fields.push(Arc::new(Field::new(RUN_COLUMN, DataType::UInt64, false)));
        fields.push(Arc::new(Field::new(ROWS_COLUMN, DataType::UInt64, true)));
        let schema = Arc::new(Schema::new(fields));
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(input.properties().output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            read: RemoteRead {
                parts: Vec::new(),
                ..read
            },
            input,
            schema,
            props: Arc::new(props),
            store_options,
        })
    }
}

impl DisplayAs for RemoteReadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RemoteReadExec: source={}", self.read.table.name)
    }
}

impl ExecutionPlan for RemoteReadExec {
    fn name(&self) -> &str {
        "RemoteReadExec"
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
            .map_err(|_| DataFusionError::Internal("RemoteReadExec has one child".into()))?;
        Ok(Arc::new(Self::over(
            self.read.clone(),
            input,
            self.store_options.clone(),
        )?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let parts = self.input.execute(partition, context)?;
        let table = self.read.table.clone();
        let columns = self.read.columns.clone();
        let store_options = self.store_options.clone();
        let schema = Arc::clone(&self.schema);
        let read = async move {
            let parts: Vec<RecordBatch> = parts.try_collect().await?;
            let mut out = Vec::new();
            for batch in parts {
                for (row, (index, part)) in parts_in(&batch)?.into_iter().enumerate() {
                    let run = std::hash::BuildHasher::hash_one(
                        &std::collections::hash_map::RandomState::new(),
                        row,
                    );
                    let rows =
                        weir_engine::source::read_remote_part(&table, &store_options, columns.clone(), &part)
                            .await
                            // The message itself: Ballista returns a task's
                            // error in its debug form (see `task_failure`).
                            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                    let tagged = |b: &RecordBatch, rows: Option<u64>| -> DfResult<RecordBatch> {
                        let n = b.num_rows();
                        let mut cols = b.columns().to_vec();
                        cols.push(Arc::new(UInt32Array::from(vec![index; n])));
                        cols.push(Arc::new(UInt64Array::from(vec![run; n])));
                        cols.push(Arc::new(UInt64Array::from(vec![rows; n])));
                        Ok(RecordBatch::try_new(Arc::clone(&schema), cols)?)
                    };
                    let mut total = 0u64;
                    for b in rows.iter().filter(|b| b.num_rows() > 0) {
                        total += b.num_rows() as u64;
                        out.push(tagged(b, None)?);
                    }
                    // The closing row: the data columns null, the count set.
                    let data_width = schema.fields().len() - 3;
                    let nulls: Vec<ArrayRef> = schema.fields()[..data_width]
                        .iter()
                        .map(|f| new_null_array(f.data_type(), 1))
                        .collect();
                    let closing = RecordBatch::try_new_with_options(
                        Arc::new(Schema::new(schema.fields()[..data_width].to_vec())),
                        nulls,
                        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
                    )?;
                    out.push(tagged(&closing, Some(total))?);
                }
            }
            Ok::<_, DataFusionError>(out)
        };
        let stream = futures::stream::once(read).flat_map(|r| match r {
            Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// The declaration as it crosses the wire (its schema goes separately).
#[derive(Serialize, Deserialize)]
struct WireRead {
    name: String,
    column_types: Vec<String>,
    watermark: Option<(String, i64)>,
    options: Vec<(String, String)>,
    bounded: bool,
    metadata: Vec<(String, String)>,
    columns: Vec<usize>,
}

pub(crate) const MAGIC: &[u8] = b"WEIR-READ/1\n";

/// The wire form of Weir's MIN and MAX (see `try_encode_udaf`).
const TOTAL_ORDER: &[u8] = b"WEIR-TOTAL-ORDER/1";

/// Ballista's codec, plus Weir's nodes.
#[derive(Debug, Default)]
pub struct WeirCodec {
    ballista: BallistaPhysicalExtensionCodec,
    /// Store settings for the nodes this process decodes and runs.
    store_options: StoreOptions,
}

impl WeirCodec {
    /// A codec whose decoded nodes read with `store_options` (the
    /// process's own, from its environment).
    pub fn new(store_options: StoreOptions) -> Self {
        Self {
            ballista: BallistaPhysicalExtensionCodec::default(),
            store_options,
        }
    }
}

pub(crate) fn encode_read(read: &RemoteRead, buf: &mut Vec<u8>) -> DfResult<()> {
    let table = &read.table;
    let schema = table.schema.as_ref().ok_or_else(|| {
        DataFusionError::Internal(format!("source table '{}' declares no columns", table.name))
    })?;
    let wire = WireRead {
        name: table.name.clone(),
        column_types: table.column_types.clone(),
        watermark: table.watermark.as_ref().map(|w| (w.column.clone(), w.delay_ms)),
        options: table
            .options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        bounded: table.bounded,
        metadata: table
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        columns: read.columns.clone(),
    };
    buf.extend_from_slice(MAGIC);
    serde_json::to_writer(&mut *buf, &wire).map_err(|e| DataFusionError::External(Box::new(e)))?;
    buf.push(b'\n');
    let proto = datafusion_proto::protobuf::Schema::try_from(schema.as_ref())
        .map_err(|e| DataFusionError::Internal(format!("encoding the schema of '{}': {e}", table.name)))?;
    proto
        .encode(buf)
        .map_err(|e| DataFusionError::Internal(format!("encoding the schema of '{}': {e}", table.name)))
}

pub(crate) fn decode_read(rest: &[u8]) -> DfResult<RemoteRead> {
    let bad = |what: String| {
        DataFusionError::Internal(format!("a Weir remote read that cannot be decoded: {what}"))
    };
    let split = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no end to its description".into()))?;
    // Serde's message may quote a value, and values may be credentials.
    let wire: WireRead = serde_json::from_slice(&rest[..split])
        .map_err(|_| bad("its description is not the JSON expected".into()))?;
    let proto =
        datafusion_proto::protobuf::Schema::decode(&rest[split + 1..]).map_err(|e| bad(e.to_string()))?;
    let schema = Schema::try_from(&proto).map_err(|e| bad(e.to_string()))?;
    Ok(RemoteRead {
        table: TableDecl {
            name: wire.name,
            schema: Some(Arc::new(schema)),
            column_types: wire.column_types,
            watermark: wire
                .watermark
                .map(|(column, delay_ms)| Watermark { column, delay_ms }),
            options: Options::new(wire.options),
            bounded: wire.bounded,
            metadata: wire.metadata.into_iter().collect(),
            // Only the driver's planner uses keys; an executor reads rows.
            primary_key: Vec::new(),
        },
        columns: wire.columns,
        parts: Vec::new(),
    })
}

impl PhysicalExtensionCodec for WeirCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(rest) = buf.strip_prefix(MAGIC) {
            let [input] = inputs else {
                return Err(DataFusionError::Internal(
                    "a Weir remote read has one input".into(),
                ));
            };
            return Ok(Arc::new(RemoteReadExec::over(
                decode_read(rest)?,
                Arc::clone(input),
                self.store_options.clone(),
            )?));
        }
        if let Some(rest) = buf.strip_prefix(crate::pipeline::PIPE_MAGIC) {
            let [input] = inputs else {
                return Err(DataFusionError::Internal("a Weir query has one input".into()));
            };
            return Ok(Arc::new(crate::pipeline::decode_pipeline(
                rest,
                Arc::clone(input),
                ctx,
                self,
                proto_converter,
                self.store_options.clone(),
            )?));
        }
        if let Some(rest) = buf.strip_prefix(crate::pipeline::SCAN_MAGIC) {
            return Ok(Arc::new(crate::pipeline::decode_scan(rest)?));
        }
        if let Some(node) = crate::operators::try_decode(buf, inputs, ctx, self, proto_converter)? {
            return Ok(node);
        }
        if let Some(node) =
            crate::stages::try_decode(buf, inputs, ctx, self, proto_converter, &self.store_options)?
        {
            return Ok(node);
        }
        self.ballista.try_decode(buf, inputs, ctx, proto_converter)
    }

    /// Weir's MIN and MAX (`weir_sql::functions::min_max`) cross the wire
    /// as themselves: by name alone, the other side would find
    /// DataFusion's, whose grouped float form orders NaN by arrival.
    fn try_encode_udaf(
        &self,
        node: &datafusion::logical_expr::AggregateUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        if weir_sql::functions::is_total_order(node) {
            buf.extend_from_slice(TOTAL_ORDER);
            return Ok(());
        }
        self.ballista.try_encode_udaf(node, buf)
    }

    fn try_decode_udaf(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<datafusion::logical_expr::AggregateUDF>> {
        if buf == TOTAL_ORDER {
            return weir_sql::functions::min_max()
                .into_iter()
                .find(|f| f.name() == name)
                .map(Arc::new)
                .ok_or_else(|| DataFusionError::Internal(format!("no Weir aggregate named '{name}'")));
        }
        self.ballista.try_decode_udaf(name, buf)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(read) = node.downcast_ref::<RemoteReadExec>() {
            return encode_read(&read.read, buf);
        }
        if let Some(p) = node.downcast_ref::<crate::pipeline::PipelineExec>() {
            return crate::pipeline::encode_pipeline(p, self, proto_converter, buf);
        }
        if let Some(scan) = node.downcast_ref::<weir_engine::exec::StreamScanExec>() {
            return crate::pipeline::encode_scan(scan, buf);
        }
        if crate::operators::try_encode(&node, self, proto_converter, buf)? {
            return Ok(());
        }
        if crate::stages::try_encode(&node, self, proto_converter, buf)? {
            return Ok(());
        }
        self.ballista.try_encode(node, buf, proto_converter)
    }
}

/// The engine's [`RemoteReader`] on a Ballista cluster.
pub struct ClusterReader {
    url: String,
    session: SessionConfig,
    connect_timeout: Duration,
}

impl ClusterReader {
    /// Reads on the cluster whose scheduler is at `url` (`http://host:port`),
    /// waiting up to `connect_timeout` for it to answer.
    pub fn new(url: &str, connect_timeout: Duration) -> Self {
        Self {
            url: url.to_string(),
            session: crate::session_config(1),
            connect_timeout,
        }
    }
}

#[async_trait]
impl RemoteReader for ClusterReader {
    async fn read(&self, mut read: RemoteRead) -> weir_engine::Result<Vec<Vec<RecordBatch>>> {
        absolutize(&mut read.table)?;
        let parts = read.parts.len();
        let table = read.table.name.clone();
        let declared = read.table.schema.clone();
        let columns = read.columns.clone();
        let node = RemoteReadExec::try_new(read, StoreOptions::default())
            .map_err(|e| weir_engine::Error::Runtime(format!("source '{table}': {e}")))?;
        // One stage of one task per part; the client fetches each task's
        // output from its executor.
        let plan: Arc<dyn ExecutionPlan> = Arc::new(node);
        let batches = crate::execute(&self.url, plan, &self.session, self.connect_timeout)
            .await
            .map_err(|e| weir_engine::Error::Runtime(format!("reading source '{table}': {e}")))?;
        let schema = match declared {
            Some(d) => Arc::new(
                d.project(&columns)
                    .map_err(|e| weir_engine::Error::Runtime(format!("source '{table}': {e}")))?,
            ),
            None => {
                return Err(weir_engine::Error::Runtime(format!(
                    "source '{table}' declares no columns"
                )));
            }
        };
        gather(&table, parts, &schema, batches)
    }

    fn describe(&self) -> String {
        format!("the cluster at {}", self.url)
    }

    fn runs_pipelines(&self) -> bool {
        true
    }

    async fn run_aggregate(
        &self,
        job: weir_engine::remote::RemoteAggregate,
    ) -> weir_engine::Result<Vec<weir_engine::remote::ShardReport>> {
        self.aggregate(job).await
    }

    async fn run_pipeline(&self, mut job: RemotePipeline) -> weir_engine::Result<Vec<PartReport>> {
        absolutize(&mut job.read.table)?;
        let parts = job.read.parts.len();
        let table = job.read.table.name.clone();
        let node = crate::pipeline::PipelineExec::try_new(job, StoreOptions::default())
            .map_err(|e| weir_engine::Error::Runtime(format!("source '{table}': {e}")))?;
        let plan: Arc<dyn ExecutionPlan> = Arc::new(node);
        let batches = crate::execute(&self.url, plan, &self.session, self.connect_timeout)
            .await
            .map_err(|e| weir_engine::Error::Runtime(e.to_string()))?;
        crate::pipeline::gather_reports(parts, &batches).map_err(|e| {
            weir_engine::Error::Runtime(format!("source '{table}' on the cluster at {}: {e}", self.url))
        })
    }
}

/// The rest of [`ClusterReader`]'s [`RemoteReader`] methods.
impl ClusterReader {
    async fn aggregate(
        &self,
        mut job: weir_engine::remote::RemoteAggregate,
    ) -> weir_engine::Result<Vec<weir_engine::remote::ShardReport>> {
        for input in &mut job.inputs {
            absolutize(&mut input.read.table)?;
        }
        let table = job
            .inputs
            .iter()
            .map(|i| i.read.table.name.as_str())
            .collect::<Vec<_>>()
            .join("' and '");
        let shards = crate::stages::stage_plan(job, StoreOptions::default())?;
        let count = shards.properties().output_partitioning().partition_count();
        let plan: Arc<dyn ExecutionPlan> = Arc::new(shards);
        let batches = crate::execute(&self.url, plan, &self.session, self.connect_timeout)
            .await
            .map_err(|e| weir_engine::Error::Runtime(e.to_string()))?;
        crate::stages::gather_shard_reports(count, &batches).map_err(|e| {
            weir_engine::Error::Runtime(format!("source '{table}' on the cluster at {}: {e}", self.url))
        })
    }
}

/// A relative folder is the driver's: executors run elsewhere, so it is
/// made absolute before it travels.
fn absolutize(table: &mut TableDecl) -> weir_engine::Result<()> {
    if let Some(path) = table.options.get("path")
        && !path.contains("://")
        && std::path::Path::new(path).is_relative()
    {
        let absolute = std::env::current_dir()
            .map_err(|e| weir_engine::Error::Config(format!("the current folder: {e}")))?
            .join(path);
        let absolute = absolute.to_string_lossy().into_owned();
        table.options = Options::new(table.options.iter().map(|(k, v)| {
            let v = if k == "path" {
                absolute.clone()
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        }));
    }
    Ok(())
}

/// Each part's rows, in part order, from what a remote read's job gave:
/// for each part, the batches of one run that came back whole (its closing
/// row counts its rows), in the order the run produced them, with the
/// `schema` they were read with. A part without a whole run is an error:
/// a part missing must not read as an empty file.
fn gather(
    table: &str,
    parts: usize,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> weir_engine::Result<Vec<Vec<RecordBatch>>> {
    let bad = |what: String| {
        weir_engine::Error::Runtime(format!("reading source '{table}' on the cluster: {what}"))
    };
    let width = schema.fields().len();
    // Per part, its runs in the order they first came: the run's id, its
    // data batches, their rows, and the count its closing row gave.
    type Run = (u64, Vec<RecordBatch>, u64, Option<u64>);
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); parts];
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        if batch.num_columns() != width + 3 {
            return Err(bad(format!(
                "{} columns where {} were expected",
                batch.num_columns(),
                width + 3
            )));
        }
        let index = batch.column(width).as_primitive_opt::<UInt32Type>();
        let run = batch.column(width + 1).as_primitive_opt::<UInt64Type>();
        let count = batch.column(width + 2).as_primitive_opt::<UInt64Type>();
        let (Some(index), Some(run), Some(count)) = (index, run, count) else {
            return Err(bad("its part columns have the wrong types".into()));
        };
        let mut start = 0;
        while start < batch.num_rows() {
            let (part, id) = (index.value(start), run.value(start));
            let mut end = start + 1;
            while end < batch.num_rows() && index.value(end) == part && run.value(end) == id {
                end += 1;
            }
            let slot = runs
                .get_mut(part as usize)
                .ok_or_else(|| bad(format!("rows of part {part} of {parts}")))?;
            let i = match slot.iter().position(|r| r.0 == id) {
                Some(i) => i,
                None => {
                    slot.push((id, Vec::new(), 0, None));
                    slot.len() - 1
                }
            };
            // Data rows, then (in a batch of its own) the closing row.
            let mut row = start;
            while row < end {
                if count.is_valid(row) {
                    slot[i].3 = Some(count.value(row));
                    row += 1;
                    continue;
                }
                let mut data_end = row + 1;
                while data_end < end && count.is_null(data_end) {
                    data_end += 1;
                }
                let data = RecordBatch::try_new_with_options(
                    Arc::clone(schema),
                    batch.columns()[..width]
                        .iter()
                        .map(|c| c.slice(row, data_end - row))
                        .collect(),
                    // A read of no columns (COUNT(*)) still has rows.
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(data_end - row)),
                )
                .map_err(|e| bad(e.to_string()))?;
                slot[i].2 += data.num_rows() as u64;
                slot[i].1.push(data);
                row = data_end;
            }
            start = end;
        }
    }
    runs.into_iter()
        .enumerate()
        .map(|(part, runs)| {
            runs.into_iter()
                .find(|(_, _, rows, closed)| *closed == Some(*rows))
                .map(|(_, batches, _, _)| batches)
                .ok_or_else(|| bad(format!("no whole read of part {part} of {parts} came back")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

    use super::*;

    /// Weir's MIN and MAX cross the wire as themselves, DataFusion's as
    /// before (by name).
    #[test]
    fn weirs_min_and_max_cross_the_wire() {
        let codec = WeirCodec::default();
        for f in weir_sql::functions::min_max() {
            let mut buf = Vec::new();
            codec.try_encode_udaf(&f, &mut buf).unwrap();
            let back = codec.try_decode_udaf(f.name(), &buf).unwrap();
            assert!(weir_sql::functions::is_total_order(&back) && back.name() == f.name());
        }
        let theirs = datafusion::functions_aggregate::min_max::max_udaf();
        let mut buf = Vec::new();
        codec.try_encode_udaf(&theirs, &mut buf).unwrap();
        assert!(buf.is_empty());
    }
    use datafusion::arrow::array::Int64Array;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;

    /// A remote read crosses the wire whole (the declaration, its secret
    /// options included, the columns, one partition per part), prints no
    /// secret, and its partition `i` reads part `i` alone: Ballista runs
    /// each partition in its own task.
    #[tokio::test]
    async fn a_remote_read_crosses_the_wire_and_reads_its_own_part() {
        let dir = tempfile::tempdir().unwrap();
        for (name, rows) in [("a.json", 0..3), ("b.json", 3..5)] {
            let text: String = rows
                .map(|n| format!("{{\"n\": {n}, \"m\": {}}}\n", n * 10))
                .collect();
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT, m BIGINT) WITH ('connector' = 'files', 'path' = '{}', \
             'format' = 'json', 's3.secret_access_key' = 'very-secret-value')",
            dir.path().display()
        ))
        .unwrap();
        let mut source = weir_engine::source::open_source(&decl, &StoreOptions::default()).unwrap();
        let offset = source.plan_batch().await.unwrap().unwrap();
        let read = RemoteRead {
            table: decl,
            columns: vec![1],
            parts: source.remote_parts(&offset).unwrap(),
        };
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(RemoteReadExec::try_new(read, StoreOptions::default()).unwrap());
        let codec = WeirCodec::default();
        let proto = PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), &codec).unwrap();
        let ctx = SessionContext::new().task_ctx();
        let decoded = proto.try_into_physical_plan(&ctx, &codec).unwrap();
        assert_eq!(decoded.schema(), plan.schema());
        assert_eq!(decoded.properties().output_partitioning().partition_count(), 2);
        let shown = format!(
            "{decoded:?} {}",
            datafusion::physical_plan::displayable(decoded.as_ref()).indent(true)
        );
        assert!(!shown.contains("very-secret-value"), "{shown}");
        let node = decoded.downcast_ref::<RemoteReadExec>().unwrap();
        assert_eq!(
            node.read.table.options.get("s3.secret_access_key"),
            Some("very-secret-value")
        );
        let run = |partition: usize| {
            let stream = decoded.execute(partition, Arc::clone(&ctx)).unwrap();
            async move {
                let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
                batches
            }
        };
        let m = |parts: Vec<Vec<RecordBatch>>| -> Vec<Vec<i64>> {
            parts
                .iter()
                .map(|p| {
                    p.iter()
                        .flat_map(|b| {
                            b.column(0)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap()
                                .values()
                                .to_vec()
                        })
                        .collect()
                })
                .collect()
        };
        let schema = Arc::new(Schema::new(vec![Field::new("m", DataType::Int64, true)]));
        // Partition 1 reads part 1 alone.
        let second = run(1).await;
        let err = gather("t", 2, &schema, second.clone()).unwrap_err().to_string();
        assert!(err.contains("no whole read of part 0 of 2 came back"), "{err}");
        // Both parts, part 1 read twice (a task Ballista ran again): each
        // part's rows once, in order.
        let mut all = second;
        all.extend(run(0).await);
        all.extend(run(1).await);
        assert_eq!(
            m(gather("t", 2, &schema, all.clone()).unwrap()),
            vec![vec![0, 10, 20], vec![30, 40]]
        );
        // A run cut short (its closing row lost) is not taken for whole.
        let cut: Vec<RecordBatch> = run(0).await.into_iter().take(1).collect();
        let whole1 = run(1).await;
        let mut partial = cut;
        partial.extend(whole1);
        let err = gather("t", 2, &schema, partial).unwrap_err().to_string();
        assert!(err.contains("no whole read of part 0"), "{err}");
    }
}
