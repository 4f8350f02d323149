//! Wire forms of the nodes of a windowed aggregate's plan: window
//! assignment, the late-row filter, the partial aggregate and the window
//! aggregate operator (issue 16, part B.2, slice 3 in
//! `docs/cluster-operators.md`: "What crosses the wire").
//!
//! A stateful operator crosses as its configuration and shard count, never
//! its state: a decoded operator starts empty, and whoever runs it restores
//! its shard from the checkpoint's store. Each node's form, inside
//! DataFusion's `PhysicalExtensionNode`, is a magic line, a JSON object up
//! to the next `\n`, then the length-prefixed protobufs the JSON says. The
//! expressions and aggregates travel as DataFusion's own protobuf of an
//! `AggregateExec` over an `EmptyExec` of the rows they read: its group
//! expressions (with their names), aggregates and filters are exactly
//! theirs, so no expression of DataFusion's needs a codec of Weir's.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::JoinSide;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use prost::Message;
use serde::{Deserialize, Serialize};
use weir_engine::exec::late_filter::LateFilterExec;
use weir_engine::exec::partial_agg::{PartialSpec, PartialWindowAggExec};
use weir_engine::exec::stream_join::{StreamJoinExec, StreamJoinParams, UniqueSide};
use weir_engine::exec::stream_topn::{StreamTopNParams, TopNExec};
use weir_engine::exec::window_topn::TopNParams;
use weir_engine::exec::{
    SessionAggregateExec, UpdateAggregateExec, UpdateAggregateParams, WindowAggregateExec,
    WindowAggregateParams, WindowAssignExec, WindowTopNExec,
};
use weir_sql::{RankKind, WatermarkOrigin, WindowColumn, WindowSpec};

pub(crate) const ASSIGN_MAGIC: &[u8] = b"WEIR-WINDOW-ASSIGN/1\n";
pub(crate) const LATE_MAGIC: &[u8] = b"WEIR-LATE-FILTER/1\n";
pub(crate) const PARTIAL_MAGIC: &[u8] = b"WEIR-PARTIAL-AGG/1\n";
pub(crate) const WINDOW_AGG_MAGIC: &[u8] = b"WEIR-WINDOW-AGG/1\n";
pub(crate) const UPDATE_AGG_MAGIC: &[u8] = b"WEIR-UPDATE-AGG/1\n";
pub(crate) const SESSION_AGG_MAGIC: &[u8] = b"WEIR-SESSION-AGG/1\n";
pub(crate) const TOP_N_MAGIC: &[u8] = b"WEIR-TOP-N/1\n";
pub(crate) const JOIN_MAGIC: &[u8] = b"WEIR-STREAM-JOIN/1\n";

/// An interval join's time bound (`weir_sql::nodes::JoinTime`).
#[derive(Serialize, Deserialize)]
struct WireJoinTime {
    left: usize,
    right: usize,
    left_until: usize,
    right_until: usize,
    lo_ms: i64,
    hi_ms: i64,
    left_lag_ms: i64,
    right_lag_ms: i64,
}

/// A join of streams but for its expressions: its equal keys, condition,
/// join type and NULL equality cross as DataFusion's `HashJoinExec` over
/// empty inputs of its two sides' rows (the next block), the filter pulled
/// into its unique side as one expression over that side's rows (the block
/// after, when there is one).
#[derive(Serialize, Deserialize)]
struct WireJoin {
    time: Option<WireJoinTime>,
    ttl_ms: Option<i64>,
    signed: bool,
    /// The unique side (`true`: the left), and whether it has a filter.
    unique: Option<(bool, bool)>,
    bound_text: String,
    threads: usize,
    /// Positions in the full output (left, then right) of the projection
    /// taken in.
    projection: Option<Vec<usize>>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "WindowSpec")]
enum WindowSpecDef {
    Tumble {
        size_ms: i64,
        offset_ms: i64,
    },
    Hop {
        slide_ms: i64,
        size_ms: i64,
        offset_ms: i64,
    },
    Cumulate {
        step_ms: i64,
        size_ms: i64,
        offset_ms: i64,
    },
    Session {
        gap_ms: i64,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "WatermarkOrigin")]
enum WatermarkOriginDef {
    Source { source: String, delay_ms: i64 },
    Sources(Vec<String>),
    Upstream { lag_ms: i64 },
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "WindowColumn")]
enum WindowColumnDef {
    Start,
    End,
    Time,
}

#[derive(Serialize, Deserialize)]
struct WireAssign {
    #[serde(with = "WindowSpecDef")]
    spec: WindowSpec,
    time_index: usize,
    #[serde(with = "WatermarkOriginDef")]
    origin: WatermarkOrigin,
    slices: bool,
    late_sink: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireLate {
    source: String,
    time_index: usize,
    delay_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct WirePartial {
    /// The unit's start and end expressions are the last two group
    /// expressions of the encoded aggregate.
    windowed: bool,
}

#[derive(Serialize, Deserialize)]
struct WireWindowColumn(usize, #[serde(with = "WindowColumnDef")] WindowColumn);

#[derive(Serialize, Deserialize)]
struct WireWindowAgg {
    #[serde(with = "WindowSpecDef")]
    spec: WindowSpec,
    window_columns: Vec<WireWindowColumn>,
    slices: bool,
    lag_ms: i64,
    threads: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "RankKind")]
enum RankKindDef {
    RowNumber,
    Rank,
    DenseRank,
}

/// A Top-N, outside windows (`window` `None`) or within them.
#[derive(Serialize, Deserialize)]
struct WireTopN {
    #[serde(with = "RankKindDef")]
    rank: RankKind,
    threads: usize,
    /// `PARTITION BY`: the first this many expressions of the carrier.
    partition_by: usize,
    /// Each `ORDER BY` expression's direction (descending, nulls first),
    /// the carrier's expressions after `PARTITION BY`'s.
    order_by: Vec<(bool, bool)>,
    stream: Option<StreamTopN>,
    window: Option<WindowedTopN>,
}

/// Outside windows: limit, `state.ttl`, keep-first on the event time, over
/// a changelog.
type StreamTopN = (u64, Option<i64>, Option<usize>, bool);
/// Within windows: limit, `window_start` and `window_end` among `PARTITION
/// BY`, lag.
type WindowedTopN = (Option<u64>, usize, usize, i64);

#[derive(Serialize, Deserialize)]
struct WireSessionAgg {
    /// As a window aggregate's (its spec a SESSION).
    window: WireWindowAgg,
    /// The group expressions that partition sessions.
    session_keys: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct WireUpdateAgg {
    ttl_ms: Option<i64>,
    threads: usize,
    signature: String,
    /// Whether a `HAVING` follows the aggregates, as a `FilterExec` over
    /// an `EmptyExec` of the aggregate's output.
    having: bool,
}

fn bad(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("a Weir operator that cannot be decoded: {what}"))
}

pub(crate) fn put_json<T: Serialize>(magic: &[u8], value: &T, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(magic);
    serde_json::to_writer(&mut *buf, value).map_err(|e| DataFusionError::External(Box::new(e)))?;
    buf.push(b'\n');
    Ok(())
}

pub(crate) fn take_json<'a, T: for<'de> Deserialize<'de>>(rest: &'a [u8]) -> DfResult<(T, &'a [u8])> {
    let split = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no end to its description"))?;
    let value = serde_json::from_slice(&rest[..split]).map_err(|e| bad(&format!("its description: {e}")))?;
    Ok((value, &rest[split + 1..]))
}

pub(crate) fn put_block(bytes: &[u8], buf: &mut Vec<u8>) -> DfResult<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| DataFusionError::Internal("a Weir operator too large".into()))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

pub(crate) fn take_block(rest: &[u8]) -> DfResult<(&[u8], &[u8])> {
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("a short block"))?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| bad("a short block"))?) as usize;
    rest.split_at_checked(len).ok_or_else(|| bad("a short block"))
}

fn put_schema(schema: &Schema, buf: &mut Vec<u8>) -> DfResult<()> {
    let proto = datafusion_proto::protobuf::Schema::try_from(schema)
        .map_err(|e| DataFusionError::Internal(format!("encoding a schema: {e}")))?;
    put_block(&proto.encode_to_vec(), buf)
}

fn take_schema(rest: &[u8]) -> DfResult<(SchemaRef, &[u8])> {
    let (block, rest) = take_block(rest)?;
    let proto = datafusion_proto::protobuf::Schema::decode(block).map_err(|e| bad(&e.to_string()))?;
    let schema = Schema::try_from(&proto).map_err(|e| bad(&e.to_string()))?;
    Ok((Arc::new(schema), rest))
}

/// Group expressions, aggregates and filters over rows of `input`.
struct Aggregates {
    group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    aggr: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

/// Encodes `a` as DataFusion's `AggregateExec` over an empty input of
/// `input`'s schema.
fn put_aggregates(
    a: Aggregates,
    input: &SchemaRef,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    buf: &mut Vec<u8>,
) -> DfResult<()> {
    let carrier = AggregateExec::try_new(
        AggregateMode::Single,
        PhysicalGroupBy::new_single(a.group_by),
        a.aggr,
        a.filters,
        Arc::new(EmptyExec::new(Arc::clone(input))),
        Arc::clone(input),
    )?;
    let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
        Arc::new(carrier),
        codec,
        converter,
    )?;
    put_block(&bytes, buf)
}

/// The [`Aggregates`] of [`put_aggregates`], and the schema of the rows
/// they read.
fn take_aggregates<'a>(
    rest: &'a [u8],
    ctx: &TaskContext,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
) -> DfResult<(Aggregates, SchemaRef, &'a [u8])> {
    let (block, rest) = take_block(rest)?;
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(block, ctx, codec, converter)?;
    let carrier = plan
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| bad("its aggregates"))?;
    let a = Aggregates {
        group_by: carrier.group_expr().expr().to_vec(),
        aggr: carrier.aggr_expr().to_vec(),
        filters: carrier.filter_expr().to_vec(),
    };
    Ok((a, carrier.input_schema(), rest))
}

/// Encodes one of this module's nodes; `false` when `node` is none of them.
pub(crate) fn try_encode(
    node: &Arc<dyn ExecutionPlan>,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    buf: &mut Vec<u8>,
) -> DfResult<bool> {
    if let Some(n) = node.downcast_ref::<WindowAssignExec>() {
        let (spec, time_index, origin, slices, late_sink) = n.config();
        let wire = WireAssign {
            spec: spec.clone(),
            time_index,
            origin: origin.clone(),
            slices,
            late_sink: late_sink.map(str::to_string),
        };
        put_json(ASSIGN_MAGIC, &wire, buf)?;
        put_schema(&n.schema(), buf)?;
        return Ok(true);
    }
    if let Some(n) = node.downcast_ref::<LateFilterExec>() {
        let (source, time_index, delay_ms) = n.config();
        let wire = WireLate {
            source: source.to_string(),
            time_index,
            delay_ms,
        };
        put_json(LATE_MAGIC, &wire, buf)?;
        return Ok(true);
    }
    if let Some(n) = node.downcast_ref::<PartialWindowAggExec>() {
        let (agg, unit) = n.spec().config();
        let mut group_by = agg.keys.clone();
        if let Some((start, end)) = unit {
            group_by.push((Arc::clone(start), "__weir_unit_start".into()));
            group_by.push((Arc::clone(end), "__weir_unit_end".into()));
        }
        put_json(
            PARTIAL_MAGIC,
            &WirePartial {
                windowed: unit.is_some(),
            },
            buf,
        )?;
        let [input] = n.children()[..] else {
            return Err(DataFusionError::Internal(
                "a partial aggregate has one input".into(),
            ));
        };
        let a = Aggregates {
            group_by,
            aggr: agg.aggr.clone(),
            filters: agg.filters.clone(),
        };
        put_aggregates(a, &input.schema(), codec, converter, buf)?;
        return Ok(true);
    }
    if let Some(n) = node.downcast_ref::<WindowAggregateExec>() {
        let state = n.state();
        let (p, threads, in_schema) = state.config();
        put_json(WINDOW_AGG_MAGIC, &wire_window(p, threads), buf)?;
        put_schema(&p.schema, buf)?;
        put_aggregates(aggregates_of(p), in_schema, codec, converter, buf)?;
        return Ok(true);
    }
    if let Some(n) = node.downcast_ref::<SessionAggregateExec>() {
        let state = n.state();
        let (p, session_keys, threads) = state.config();
        let wire = WireSessionAgg {
            window: wire_window(p, threads),
            session_keys: session_keys.to_vec(),
        };
        put_json(SESSION_AGG_MAGIC, &wire, buf)?;
        put_schema(&p.schema, buf)?;
        let [input] = n.children()[..] else {
            return Err(DataFusionError::Internal(
                "a session aggregate has one input".into(),
            ));
        };
        put_aggregates(aggregates_of(p), &input.schema(), codec, converter, buf)?;
        return Ok(true);
    }
    // Both Top-Ns: their ranking, and what only one of them has.
    let mut put_top_n = |node: &Arc<dyn ExecutionPlan>,
                         rank: RankKind,
                         threads: usize,
                         partition_by: &[Arc<dyn PhysicalExpr>],
                         order_by: &[PhysicalSortExpr],
                         schema: &SchemaRef,
                         kind: (Option<StreamTopN>, Option<WindowedTopN>)|
     -> DfResult<bool> {
        let exprs: Vec<Arc<dyn PhysicalExpr>> = partition_by
            .iter()
            .cloned()
            .chain(order_by.iter().map(|o| Arc::clone(&o.expr)))
            .collect();
        let wire = WireTopN {
            rank,
            threads,
            partition_by: partition_by.len(),
            order_by: order_by
                .iter()
                .map(|o| (o.options.descending, o.options.nulls_first))
                .collect(),
            stream: kind.0,
            window: kind.1,
        };
        put_json(TOP_N_MAGIC, &wire, buf)?;
        put_schema(schema, buf)?;
        put_exprs(&exprs, &node.children()[0].schema(), codec, converter, buf)?;
        Ok(true)
    };
    if let Some(n) = node.downcast_ref::<TopNExec>() {
        let state = n.state();
        let (p, threads) = state.config();
        let stream = Some((p.limit, p.ttl_ms, p.first_on_time, p.retract));
        return put_top_n(
            node,
            p.rank,
            threads,
            &p.partition_by,
            &p.order_by,
            &p.schema,
            (stream, None),
        );
    }
    if let Some(n) = node.downcast_ref::<WindowTopNExec>() {
        let state = n.state();
        let (p, threads) = state.config();
        let window = Some((p.limit, p.window_start, p.window_end, p.lag_ms));
        return put_top_n(
            node,
            p.rank,
            threads,
            &p.partition_by,
            &p.order_by,
            &p.schema,
            (None, window),
        );
    }
    if let Some(n) = node.downcast_ref::<StreamJoinExec>() {
        let state = n.state();
        let (p, threads) = state.config();
        let [left, right] = &node.children()[..] else {
            return Err(DataFusionError::Internal("a join has two inputs".into()));
        };
        let unique_left = |u: &UniqueSide| u.side == JoinSide::Left;
        let wire = WireJoin {
            time: p.time.map(|t| WireJoinTime {
                left: t.left,
                right: t.right,
                left_until: t.left_until,
                right_until: t.right_until,
                lo_ms: t.lo_ms,
                hi_ms: t.hi_ms,
                left_lag_ms: t.left_lag_ms,
                right_lag_ms: t.right_lag_ms,
            }),
            ttl_ms: p.ttl_ms,
            signed: p.signed,
            unique: p.unique.as_ref().map(|u| (unique_left(u), u.filter.is_some())),
            bound_text: p.bound_text.clone(),
            threads,
            projection: n.projection_indices().map(<[usize]>::to_vec),
        };
        put_json(JOIN_MAGIC, &wire, buf)?;
        put_schema(&p.schema, buf)?;
        let carrier = HashJoinExec::try_new(
            Arc::new(EmptyExec::new(left.schema())),
            Arc::new(EmptyExec::new(right.schema())),
            p.on.clone(),
            p.filter.clone(),
            &p.join_type,
            None,
            PartitionMode::Partitioned,
            p.null_equality,
            false,
        )?;
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
            Arc::new(carrier),
            codec,
            converter,
        )?;
        put_block(&bytes, buf)?;
        if let Some(UniqueSide {
            side,
            filter: Some(filter),
        }) = &p.unique
        {
            let over = if *side == JoinSide::Left { left } else { right };
            put_exprs(&[Arc::clone(filter)], &over.schema(), codec, converter, buf)?;
        }
        return Ok(true);
    }
    if let Some(n) = node.downcast_ref::<UpdateAggregateExec>() {
        let state = n.state();
        let (p, threads, in_schema) = state.config();
        let wire = WireUpdateAgg {
            ttl_ms: p.ttl_ms,
            threads,
            signature: p.signature.clone(),
            having: p.having.is_some(),
        };
        put_json(UPDATE_AGG_MAGIC, &wire, buf)?;
        put_schema(&p.schema, buf)?;
        let a = Aggregates {
            group_by: p.group_by.clone(),
            aggr: p.aggr.clone(),
            filters: p.filters.clone(),
        };
        put_aggregates(a, in_schema, codec, converter, buf)?;
        if let Some(having) = &p.having {
            let carrier = FilterExec::try_new(
                Arc::clone(having),
                Arc::new(EmptyExec::new(aggregate_output(&p.schema))),
            )?;
            let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
                Arc::new(carrier),
                codec,
                converter,
            )?;
            put_block(&bytes, buf)?;
        }
        return Ok(true);
    }
    Ok(false)
}

/// Encodes `exprs` over rows of `input` as DataFusion's `ProjectionExec`
/// of them over an empty input.
fn put_exprs(
    exprs: &[Arc<dyn PhysicalExpr>],
    input: &SchemaRef,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    buf: &mut Vec<u8>,
) -> DfResult<()> {
    let carrier = ProjectionExec::try_new(
        exprs.iter().enumerate().map(|(i, e)| ProjectionExpr {
            expr: Arc::clone(e),
            alias: format!("e{i}"),
        }),
        Arc::new(EmptyExec::new(Arc::clone(input))),
    )?;
    let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
        Arc::new(carrier),
        codec,
        converter,
    )?;
    put_block(&bytes, buf)
}

/// The expressions of [`put_exprs`].
fn take_exprs(
    rest: &[u8],
    ctx: &TaskContext,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
    let (block, _) = take_block(rest)?;
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(block, ctx, codec, converter)?;
    let carrier = plan
        .downcast_ref::<ProjectionExec>()
        .ok_or_else(|| bad("its expressions"))?;
    Ok(carrier.expr().iter().map(|p| Arc::clone(&p.expr)).collect())
}

/// A window or session aggregate's parameters but for its expressions.
fn wire_window(p: &WindowAggregateParams, threads: usize) -> WireWindowAgg {
    WireWindowAgg {
        spec: p.spec.clone(),
        window_columns: p
            .window_columns
            .iter()
            .map(|&(i, c)| WireWindowColumn(i, c))
            .collect(),
        slices: p.slices,
        lag_ms: p.lag_ms,
        threads,
    }
}

/// A window or session aggregate's expressions.
fn aggregates_of(p: &WindowAggregateParams) -> Aggregates {
    Aggregates {
        group_by: p.group_by.clone(),
        aggr: p.aggr.clone(),
        filters: p.filters.clone(),
    }
}

/// The parameters [`wire_window`] and [`aggregates_of`] describe.
fn window_params(w: WireWindowAgg, schema: SchemaRef, a: Aggregates) -> WindowAggregateParams {
    WindowAggregateParams {
        spec: w.spec,
        group_by: a.group_by,
        window_columns: w.window_columns.into_iter().map(|c| (c.0, c.1)).collect(),
        aggr: a.aggr,
        filters: a.filters,
        slices: w.slices,
        lag_ms: w.lag_ms,
        schema,
    }
}

/// An update aggregate's output without its operation column: what its
/// `HAVING` reads.
fn aggregate_output(schema: &SchemaRef) -> SchemaRef {
    let fields = schema.fields();
    Arc::new(Schema::new(fields[..fields.len().saturating_sub(1)].to_vec()))
}

/// Decodes one of this module's nodes; `None` when `buf` is none of them.
pub(crate) fn try_decode(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
    ctx: &TaskContext,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let one_input = || match inputs {
        [input] => Ok(Arc::clone(input)),
        _ => Err(bad("a node with other than one input")),
    };
    if let Some(rest) = buf.strip_prefix(ASSIGN_MAGIC) {
        let (w, rest): (WireAssign, _) = take_json(rest)?;
        let (schema, _) = take_schema(rest)?;
        return Ok(Some(Arc::new(WindowAssignExec::try_new(
            one_input()?,
            w.spec,
            w.time_index,
            w.origin,
            w.slices,
            w.late_sink,
            schema,
        )?)));
    }
    if let Some(rest) = buf.strip_prefix(LATE_MAGIC) {
        let (w, _): (WireLate, _) = take_json(rest)?;
        return Ok(Some(Arc::new(LateFilterExec::new(
            one_input()?,
            w.source,
            w.time_index,
            w.delay_ms,
        ))));
    }
    if let Some(rest) = buf.strip_prefix(PARTIAL_MAGIC) {
        let (w, rest): (WirePartial, _) = take_json(rest)?;
        let (mut a, in_schema, _) = take_aggregates(rest, ctx, codec, converter)?;
        let unit = if w.windowed {
            let end = a
                .group_by
                .pop()
                .ok_or_else(|| bad("a partial aggregate without its unit"))?;
            let start = a
                .group_by
                .pop()
                .ok_or_else(|| bad("a partial aggregate without its unit"))?;
            Some((start.0, end.0))
        } else {
            None
        };
        let spec = PartialSpec::rebuild(a.group_by, a.aggr, a.filters, unit, &in_schema)?;
        return Ok(Some(Arc::new(PartialWindowAggExec::new(
            one_input()?,
            Arc::new(spec),
        ))));
    }
    if let Some(rest) = buf.strip_prefix(WINDOW_AGG_MAGIC) {
        let (w, rest): (WireWindowAgg, _) = take_json(rest)?;
        let (schema, rest) = take_schema(rest)?;
        let (a, in_schema, _) = take_aggregates(rest, ctx, codec, converter)?;
        let threads = w.threads;
        return Ok(Some(Arc::new(WindowAggregateExec::try_new_over(
            one_input()?,
            window_params(w, schema, a),
            threads,
            in_schema,
        )?)));
    }
    if let Some(rest) = buf.strip_prefix(SESSION_AGG_MAGIC) {
        let (w, rest): (WireSessionAgg, _) = take_json(rest)?;
        let (schema, rest) = take_schema(rest)?;
        let (a, _, _) = take_aggregates(rest, ctx, codec, converter)?;
        let threads = w.window.threads;
        // It reads its input's rows as they are: built over the input anew.
        return Ok(Some(Arc::new(SessionAggregateExec::try_new(
            one_input()?,
            window_params(w.window, schema, a),
            &w.session_keys,
            threads,
        )?)));
    }
    if let Some(rest) = buf.strip_prefix(TOP_N_MAGIC) {
        let (w, rest): (WireTopN, _) = take_json(rest)?;
        let (schema, rest) = take_schema(rest)?;
        let mut exprs = take_exprs(rest, ctx, codec, converter)?;
        if exprs.len() != w.partition_by + w.order_by.len() {
            return Err(bad("a Top-N's expressions"));
        }
        let order_by: Vec<PhysicalSortExpr> = exprs
            .split_off(w.partition_by)
            .into_iter()
            .zip(&w.order_by)
            .map(|(expr, &(descending, nulls_first))| PhysicalSortExpr {
                expr,
                options: SortOptions {
                    descending,
                    nulls_first,
                },
            })
            .collect();
        let partition_by = exprs;
        // Indexes a decoded plan holds are checked, not trusted.
        let columns = one_input()?.schema().fields().len();
        let fits = match (&w.stream, &w.window) {
            (Some((_, _, first_on_time, _)), None) => first_on_time.is_none_or(|c| c < columns),
            (None, Some((_, start, end, _))) => *start < partition_by.len() && *end < partition_by.len(),
            _ => true,
        };
        if !fits {
            return Err(bad("a Top-N's columns"));
        }
        return match (w.stream, w.window) {
            (Some((limit, ttl_ms, first_on_time, retract)), None) => {
                let p = StreamTopNParams {
                    partition_by,
                    order_by,
                    rank: w.rank,
                    limit,
                    ttl_ms,
                    first_on_time,
                    retract,
                    schema,
                };
                Ok(Some(Arc::new(TopNExec::try_new_over(
                    one_input()?,
                    p,
                    w.threads,
                )?)))
            }
            (None, Some((limit, window_start, window_end, lag_ms))) => {
                let p = TopNParams {
                    partition_by,
                    order_by,
                    rank: w.rank,
                    limit,
                    window_start,
                    window_end,
                    lag_ms,
                    schema,
                };
                Ok(Some(Arc::new(WindowTopNExec::try_new_over(
                    one_input()?,
                    p,
                    w.threads,
                )?)))
            }
            _ => Err(bad("a Top-N neither in windows nor outside them")),
        };
    }
    if let Some(rest) = buf.strip_prefix(JOIN_MAGIC) {
        let (w, rest): (WireJoin, _) = take_json(rest)?;
        let (schema, rest) = take_schema(rest)?;
        let [left, right] = inputs else {
            return Err(bad("a join with other than two inputs"));
        };
        let (block, rest) = take_block(rest)?;
        let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(
            block, ctx, codec, converter,
        )?;
        let carrier = plan
            .downcast_ref::<HashJoinExec>()
            .ok_or_else(|| bad("a join's keys and condition"))?;
        // Indexes a decoded plan holds are checked, not trusted: the
        // carrier's sides are the inputs' rows, and the condition reads
        // columns of them.
        let (nl, nr) = (left.schema().fields().len(), right.schema().fields().len());
        let types = |schema: &SchemaRef| -> Vec<datafusion::arrow::datatypes::DataType> {
            schema.fields().iter().map(|f| f.data_type().clone()).collect()
        };
        if types(&carrier.left().schema()) != types(&left.schema())
            || types(&carrier.right().schema()) != types(&right.schema())
        {
            return Err(bad("a join's sides"));
        }
        if let Some(f) = carrier.filter() {
            let fits = f.column_indices().len() == f.schema().fields().len()
                && f.column_indices().iter().all(|c| match c.side {
                    JoinSide::Left => c.index < nl,
                    JoinSide::Right => c.index < nr,
                    JoinSide::None => false,
                });
            if !fits {
                return Err(bad("a join's condition"));
            }
        }
        let time = match w.time {
            Some(t) => {
                if t.left.max(t.left_until) >= nl || t.right.max(t.right_until) >= nr {
                    return Err(bad("a join's time columns"));
                }
                Some(weir_sql::nodes::JoinTime {
                    left: t.left,
                    right: t.right,
                    left_until: t.left_until,
                    right_until: t.right_until,
                    lo_ms: t.lo_ms,
                    hi_ms: t.hi_ms,
                    left_lag_ms: t.left_lag_ms,
                    right_lag_ms: t.right_lag_ms,
                })
            }
            None => None,
        };
        let unique = match w.unique {
            Some((is_left, has_filter)) => Some(UniqueSide {
                side: if is_left { JoinSide::Left } else { JoinSide::Right },
                filter: if has_filter {
                    let mut exprs = take_exprs(rest, ctx, codec, converter)?;
                    if exprs.len() != 1 {
                        return Err(bad("a join's unique side's filter"));
                    }
                    exprs.pop()
                } else {
                    None
                },
            }),
            None => None,
        };
        let params = StreamJoinParams {
            on: carrier.on().to_vec(),
            filter: carrier.filter().cloned(),
            join_type: *carrier.join_type(),
            null_equality: carrier.null_equality(),
            time,
            ttl_ms: w.ttl_ms,
            signed: w.signed,
            unique,
            bound_text: w.bound_text,
            schema,
        };
        return Ok(Some(Arc::new(StreamJoinExec::try_new_over(
            Arc::clone(left),
            Arc::clone(right),
            params,
            w.threads,
            w.projection,
        )?)));
    }
    if let Some(rest) = buf.strip_prefix(UPDATE_AGG_MAGIC) {
        let (w, rest): (WireUpdateAgg, _) = take_json(rest)?;
        let (schema, rest) = take_schema(rest)?;
        let (a, in_schema, rest) = take_aggregates(rest, ctx, codec, converter)?;
        let having = if w.having {
            let (block, _) = take_block(rest)?;
            let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(
                block, ctx, codec, converter,
            )?;
            let carrier = plan
                .downcast_ref::<FilterExec>()
                .ok_or_else(|| bad("its HAVING"))?;
            Some(Arc::clone(carrier.predicate()))
        } else {
            None
        };
        let params = UpdateAggregateParams {
            group_by: a.group_by,
            aggr: a.aggr,
            filters: a.filters,
            having,
            ttl_ms: w.ttl_ms,
            schema,
            signature: w.signature,
        };
        return Ok(Some(Arc::new(UpdateAggregateExec::try_new_over(
            one_input()?,
            params,
            w.threads,
            in_schema,
        )?)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

    use std::collections::HashMap;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringViewArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
    use datafusion::physical_plan::displayable;
    use datafusion::physical_planner::PhysicalPlanner;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    use weir_engine::epoch::{EpochInput, SourceRows};
    use weir_engine::exec::{EngineScans, physical_planner};

    use super::*;
    use crate::read::WeirCodec;

    /// The physical plan of the job's one query, on `threads` threads.
    async fn plan(sql: &str, threads: usize) -> Arc<dyn ExecutionPlan> {
        let job = weir_sql::Job::parse(sql).unwrap();
        let config = SessionConfig::new().with_target_partitions(threads);
        let scans = EngineScans { partitions: threads };
        let planner = weir_sql::StreamPlanner::new(&job, Some(Arc::new(scans)), config).unwrap();
        let plans = planner.plan().await.unwrap();
        physical_planner()
            .create_physical_plan(&plans[0].plan, &planner.context().state())
            .await
            .unwrap()
    }

    /// Runs one epoch of `plan` over `rows` of sources `t` and `u` (a
    /// join's other side), every window closed by the end; its output rows,
    /// sorted, as text.
    async fn run(plan: &Arc<dyn ExecutionPlan>, rows: &RecordBatch) -> Vec<String> {
        let source = || SourceRows {
            columns: Arc::new((0..rows.num_columns()).collect()),
            batches: Arc::new(vec![rows.clone()]),
            ..SourceRows::default()
        };
        let input = EpochInput {
            epoch: 1,
            batches: HashMap::from([("t".to_string(), source()), ("u".to_string(), source())]),
            watermark_out: i64::MAX,
            ..EpochInput::default()
        };
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_extension(Arc::new(input)));
        let out = datafusion::physical_plan::collect(Arc::clone(plan), ctx.task_ctx())
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// Rows of `t`: times `ts`, `k` one of `keys` values (NULL now and
    /// then), `v` 0 to 12.
    fn rows_of(ts: Vec<i64>, keys: usize) -> RecordBatch {
        let n = ts.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("k", DataType::Utf8View, true),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ts)),
                Arc::new(StringViewArray::from_iter(
                    (0..n).map(|i| (i % 11 != 0).then(|| format!("k{}", i % keys))),
                )),
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 13))),
            ],
        )
        .unwrap()
    }

    /// Sends the plan of `sql` on `threads` threads through the codec: the
    /// decoded plan shows the same and gives the same rows over `rows`
    /// (some). Returns the plan as shown. A ranking is planned as a job
    /// plans it (`driver::open`): its scans read in one partition.
    async fn crosses_alike(sql: &str, threads: usize, rows: &RecordBatch) -> String {
        let codec = WeirCodec::default();
        let mut plan = plan(sql, threads).await;
        if sql.contains(" OVER (") {
            // As a job plans a ranking: its scans in one partition.
            plan = weir_engine::exec::scan::in_one_partition(plan).unwrap();
        }
        let proto = PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), &codec).unwrap();
        let decoded = proto
            .try_into_physical_plan(&SessionContext::new().task_ctx(), &codec)
            .unwrap();
        let shown = |p: &Arc<dyn ExecutionPlan>| displayable(p.as_ref()).indent(true).to_string();
        assert_eq!(shown(&decoded), shown(&plan), "{sql} on {threads} threads");
        let want = run(&plan, rows).await;
        assert!(!want.is_empty(), "{sql}");
        assert_eq!(run(&decoded, rows).await, want, "{sql} on {threads} threads");
        shown(&plan)
    }

    /// An aggregate without windows (a changelog) crosses the wire with
    /// its `HAVING`, `FILTER`, `state.ttl`, and keys computed or none, on
    /// one thread and on two (its partial aggregate under the shuffle):
    /// the decoded plan shows the same and gives the same changelog.
    #[tokio::test]
    async fn an_update_aggregate_plan_crosses_the_wire_and_runs_alike() {
        let ddl = "SET 'state.ttl' = '1h';\n\
                   CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT) \
                   WITH ('connector' = 'files', 'path' = '/nowhere/', 'format' = 'json');\n\
                   CREATE TABLE out WITH ('connector' = 'blackhole');\n";
        let queries = [
            "INSERT INTO out SELECT k, COUNT(*) AS n, SUM(v) AS s, MAX(v) FILTER (WHERE v > 2) AS m \
             FROM t GROUP BY k HAVING COUNT(*) > 3",
            "INSERT INTO out SELECT COUNT(*) AS n, AVG(v) AS a FROM t WHERE v > 1",
            "INSERT INTO out SELECT upper(k) AS uk, v % 3 AS r, MIN(v) AS lo FROM t GROUP BY upper(k), v % 3",
        ];
        let rows = rows_of((0..300).collect(), 7);
        for query in queries {
            for threads in [1, 2] {
                let text = crosses_alike(&format!("{ddl}{query};"), threads, &rows).await;
                assert!(text.contains("UpdateAggregateExec"), "{text}");
                assert!(text.contains("ttl=3600000ms"), "{text}");
            }
        }
    }

    /// Joins of two streams cross the wire: regular and interval, inner
    /// and outer, with a condition beyond the keys, `state.ttl`, a unique
    /// side with a filter pulled into the join, and the projection taken
    /// in; the decoded plan shows the same and joins alike.
    #[tokio::test]
    async fn a_join_plan_crosses_the_wire_and_runs_alike() {
        let table = |name: &str, extra: &str| {
            format!(
                "CREATE TABLE {name} (ts TIMESTAMP(3), k VARCHAR, v BIGINT{extra}, \
                 WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                 WITH ('connector' = 'files', 'path' = '/nowhere/{name}/', 'format' = 'json');\n"
            )
        };
        let sink = "CREATE TABLE out WITH ('connector' = 'blackhole');\n";
        let plain = format!("{}{}{sink}", table("t", ""), table("u", ""));
        let keyed = format!(
            "{}{}{sink}",
            table("t", ""),
            table("u", ", PRIMARY KEY (k) NOT ENFORCED")
        );
        let ttl = format!("SET 'state.ttl' = '1h';\n{plain}");
        let queries = [
            (
                &plain,
                "INSERT INTO out SELECT a.k, a.v, b.v AS w FROM t a JOIN u b ON a.k = b.k AND a.v < b.v",
                "Inner",
            ),
            (
                &plain,
                "INSERT INTO out SELECT a.k, a.ts, b.ts AS bts, b.v FROM t a LEFT JOIN u b \
                 ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '2' MILLISECOND",
                "Left",
            ),
            (
                &plain,
                "INSERT INTO out SELECT a.k, a.v, b.v AS w FROM t a FULL JOIN u b \
                 ON a.k = b.k AND a.v = b.v AND b.ts BETWEEN a.ts - INTERVAL '3' MILLISECOND AND a.ts",
                "Full",
            ),
            (
                &keyed,
                "INSERT INTO out SELECT a.k, a.v, b.v AS w FROM t a JOIN u b ON a.k = b.k WHERE b.v > 3",
                "unique",
            ),
            (
                &ttl,
                "INSERT INTO out SELECT a.k, b.v FROM t a JOIN u b ON a.k = b.k",
                "Inner",
            ),
        ];
        let rows = rows_of((0..200).collect(), 7);
        for (ddl, query, shows) in queries {
            for threads in [1, 2] {
                let text = crosses_alike(&format!("{ddl}{query};"), threads, &rows).await;
                assert!(text.contains("JoinExec: "), "{text}");
                assert!(text.contains(shows), "{text}");
            }
        }
    }

    /// Top-N and dedup, outside windows (with `state.ttl`, keyless, keep
    /// first and keep last) and within them, cross the wire: `ORDER BY`'s
    /// directions and the ranking kinds survive, and the decoded plan
    /// ranks alike, ties in arrival order.
    #[tokio::test]
    async fn a_ranking_plan_crosses_the_wire_and_runs_alike() {
        let ddl = "SET 'state.ttl' = '1h';\n\
                   CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
                   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                   WITH ('connector' = 'files', 'path' = '/nowhere/', 'format' = 'json');\n\
                   CREATE TABLE out WITH ('connector' = 'blackhole');\n";
        let queries = [
            "INSERT INTO out SELECT * FROM (SELECT k, v, ts, \
             ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC NULLS LAST) AS rn FROM t) WHERE rn <= 2",
            "INSERT INTO out SELECT * FROM (SELECT k, v, \
             DENSE_RANK() OVER (ORDER BY v) AS rn FROM t) WHERE rn <= 3",
            "INSERT INTO out SELECT * FROM (SELECT k, v, ts, \
             ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM t) WHERE rn = 1",
            "INSERT INTO out SELECT * FROM (SELECT k, v, ts, \
             ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts DESC) AS rn FROM t) WHERE rn = 1",
            "INSERT INTO out SELECT * FROM (SELECT window_start, window_end, k, v, \
             RANK() OVER (PARTITION BY window_start, window_end ORDER BY v DESC) AS rn \
             FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '5' SECOND))) WHERE rn <= 2",
        ];
        let rows = rows_of((0..300).map(|i| i * 97 - (i % 7) * 450).collect(), 4);
        for query in queries {
            for threads in [1, 2] {
                let text = crosses_alike(&format!("{ddl}{query};"), threads, &rows).await;
                assert!(text.contains("TopNExec"), "{text}");
            }
        }
    }

    /// A windowed aggregate's plan (TUMBLE, HOP, SESSION) crosses the wire
    /// whole, on one thread and on two (with its partial aggregate, if it
    /// has one, and the shuffle under the operator): the decoded plan shows
    /// the same and, run from empty state, gives the same rows, late rows
    /// dropped alike.
    #[tokio::test]
    async fn a_window_aggregate_plan_crosses_the_wire_and_runs_alike() {
        let ddl = "CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
                   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                   WITH ('connector' = 'files', 'path' = '/nowhere/', 'format' = 'json');\n\
                   CREATE TABLE out WITH ('connector' = 'blackhole');\n";
        let queries = [
            "INSERT INTO out SELECT window_start, window_end, k, COUNT(*) AS n, SUM(v) AS s, \
             MAX(v) FILTER (WHERE v > 2) AS m, AVG(v + 1) AS a \
             FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
             GROUP BY window_start, window_end, k",
            "INSERT INTO out SELECT window_start, window_end, COUNT(DISTINCT k) AS ks, MIN(v) AS lo \
             FROM TABLE(HOP(TABLE t, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)) \
             GROUP BY window_start, window_end",
            "INSERT INTO out SELECT window_start, window_end, k, COUNT(*) AS n, MAX(v) FILTER (WHERE v > 2) AS m \
             FROM TABLE(SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), INTERVAL '300' MILLISECOND)) \
             GROUP BY window_start, window_end, k",
            "INSERT INTO out SELECT window_start, window_end, SUM(v) AS s \
             FROM TABLE(SESSION(TABLE t, DESCRIPTOR(ts), INTERVAL '200' MILLISECOND)) \
             GROUP BY window_start, window_end",
        ];
        // Out of order by up to 3 s, with a 1 s delay: some rows are late.
        let rows = rows_of((0..400).map(|i| i * 97 - (i % 7) * 450).collect(), 5);
        for query in queries {
            for threads in [1, 2] {
                let text = crosses_alike(&format!("{ddl}{query};"), threads, &rows).await;
                if query.contains("SESSION") {
                    assert!(text.contains("SessionAggregateExec"), "{text}");
                } else if threads == 2 {
                    assert!(text.contains("PartialWindowAggregateExec"), "{text}");
                }
            }
        }
    }
}
