//! `SessionAggregateExec`: `GROUP BY window_start, window_end, keys` over
//! `SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), gap)`.
//!
//! Per partition key, sessions are kept as non-overlapping intervals
//! `[first row, last row + gap)`. A row joins every session its interval
//! `[ts, ts + gap)` overlaps; when a row bridges two sessions (an
//! out-of-order row that is not late), they merge, their partial states
//! merged with `merge_batch`. A session is emitted once, when the watermark
//! passes its end.
//!
//! How a session holds its aggregates depends on the GROUP BY. When every
//! key partitions sessions (`PARTITION BY k ... GROUP BY window_start,
//! window_end, k`, the usual form, Nexmark q11), a session has exactly one
//! group, and when its aggregates' states are of a fixed width (COUNT, SUM,
//! AVG, MIN and MAX of numbers, ...) it keeps only that group's partial
//! state as scalars ([`Body::Row`]); an epoch folds all its sessions' rows
//! with one grouped accumulator per aggregate ([`fold_units`]). A [`Groups`] per session (a
//! hash table and grouped accumulators, sized for many groups) cost about
//! 11 KB per open session: a million open sessions needed 11 GB. Keys
//! beyond the partition (several groups in a session), and states that
//! grow with the rows (COUNT DISTINCT, ARRAY_AGG, STRING_AGG, MIN of text),
//! keep a [`Groups`] per session ([`Body::Groups`]), which adds a batch's
//! rows without reading the state out.
//!
//! Rows belong to one session when they are *less* than `gap` apart
//! (intervals overlap strictly). With that rule a row that is not late can
//! never touch a session that was already emitted, so the result does not
//! depend on how the input was cut into epochs.
//!
//! State rows (one per group of a session; a session is the unit
//! `(start, end, partition)`):
//! `__window_start, __window_end: Int64, __partition: Binary (the partition
//! key in Arrow row format), <key columns>, a<i>.<state field>...`

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use weir_sql::{WindowColumn, WindowSpec};

use super::groups::{AggregateSpec, Evaluated, Groups, column_of, fold_units, keyless_values};
use super::keys::KeyRows;
use super::operator::{EpochOperator, OperatorExec};
use super::shard::{Shards, route, shard_count};
use super::units::{GroupColumn, WindowAggregateParams, constant_time, take_batch, time_column};
use crate::epoch::EpochInput;
use crate::exec::{StateChange, StateTable, StatefulOperator};

/// A session aggregate over its input.
pub type SessionAggregateExec = OperatorExec<SessionState>;

/// Configuration and state, shared by every copy of the plan node.
pub struct SessionState {
    gap_ms: i64,
    agg: AggregateSpec,
    layout: Vec<GroupColumn>,
    /// The row's event time (the window call puts it in `window_start`).
    time: Arc<dyn PhysicalExpr>,
    /// Which keys partition sessions.
    partition_keys: Vec<usize>,
    /// Every key partitions sessions, so a session has one group, and its
    /// states are of a fixed width: it keeps a [`Body::Row`]. The partition
    /// keys are then the keys, in order.
    one_group: bool,
    converter: KeyRows,
    state_schema: SchemaRef,
    schema: SchemaRef,
    /// One part of the state per partition, split by the partition keys'
    /// hash (a session's rows are all in one shard).
    shards: Shards<Inner>,
    /// What it was built from: its parameters, session keys and threads.
    config: (WindowAggregateParams, Vec<usize>, usize),
}

struct Session {
    end: i64,
    body: Body,
}

/// A one-group session's partial state, aggregate after aggregate (the
/// state columns of its state row).
type State = Box<[ScalarValue]>;

/// A session's aggregates (see the module's comment).
enum Body {
    /// The one group's partial state.
    Row(State),
    /// The session's groups, and its state rows as last written (kept for
    /// a full checkpoint; dropped when the groups change).
    Groups(Box<(Groups, Option<RecordBatch>)>),
    /// Made by the running `update`, its state still to be folded: job `i`
    /// of that call. No session is pending outside `update`.
    Pending(usize),
}

/// A partition's sessions, by start. Most partitions have one or two open
/// sessions: a sorted deque is a tenth of the memory of a `BTreeMap`
/// (whose every map allocates a node for eleven entries). A deque, since
/// sessions close oldest first (from the front) and new ones mostly come
/// last: with a `Vec`, each close shifted all of a partition's sessions,
/// quadratic in a SESSION without PARTITION BY (200,000 open sessions
/// took 10 s to close rather than 0.6 s, by the review's measure).
///
/// Sessions never overlap, so their ends are in order as their starts are.
#[derive(Default)]
struct Sessions(VecDeque<(i64, Session)>);

impl Sessions {
    fn position(&self, start: i64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&start, |(s, _)| *s)
    }

    /// Starts of the sessions that overlap `[start, end)`, in order: those
    /// that end after `start` and start before `end` (two binary searches;
    /// a scan of every session before `end` made placing rows quadratic
    /// in a partition with many open sessions).
    fn overlapping(&self, start: i64, end: i64) -> Vec<i64> {
        let from = self.0.partition_point(|(_, x)| x.end <= start);
        let upto = self.0.partition_point(|(s, _)| *s < end);
        (from..upto.max(from)).map(|i| self.0[i].0).collect()
    }

    fn get(&self, start: i64) -> Option<&Session> {
        let i = self.position(start).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut(&mut self, start: i64) -> Option<&mut Session> {
        let i = self.position(start).ok()?;
        Some(&mut self.0[i].1)
    }

    fn remove(&mut self, start: i64) -> Option<Session> {
        let i = self.position(start).ok()?;
        self.0.remove(i).map(|(_, s)| s)
    }

    fn insert(&mut self, start: i64, session: Session) {
        match self.position(start) {
            Ok(i) => self.0[i].1 = session,
            Err(i) => self.0.insert(i, (start, session)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &Session)> {
        self.0.iter().map(|(s, x)| (*s, x))
    }
}

/// A session being made by one `update` call: the partial states of the
/// sessions it merged and its new rows, folded at the end of the call.
#[derive(Default)]
struct Job {
    start: i64,
    part: Vec<u8>,
    states: Vec<State>,
    /// Row indices in the call's batch, in the order they are folded.
    members: Vec<u32>,
}

#[derive(Default)]
struct Inner {
    /// Per partition key (row-encoded), sessions by start.
    sessions: BTreeMap<Vec<u8>, Sessions>,
    /// Every session by (end, start, partition): the first close first.
    by_end: BTreeSet<(i64, i64, Vec<u8>)>,
    /// Sessions (start, end, partition) changed since the last checkpoint.
    changed: BTreeSet<(i64, i64, Vec<u8>)>,
    /// Sessions removed (merged or emitted) since the last checkpoint.
    removed: BTreeSet<(i64, i64, Vec<u8>)>,
}

impl OperatorExec<SessionState> {
    /// Builds the operator; `session_keys` are group expression indices.
    /// With partition keys, its state is split into `threads` shards.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        p: WindowAggregateParams,
        session_keys: &[usize],
        threads: usize,
    ) -> Result<Self> {
        let config = (p.clone(), session_keys.to_vec(), threads);
        let WindowSpec::Session { gap_ms } = p.spec else {
            return Err(DataFusionError::Internal(
                "a session aggregate needs a SESSION window".into(),
            ));
        };
        let in_schema = input.schema();
        let mut keys = Vec::new();
        let mut layout = Vec::new();
        let mut time = None;
        let mut partition_keys = Vec::new();
        for (i, (expr, name)) in p.group_by.iter().enumerate() {
            match p.window_columns.iter().find(|(j, _)| *j == i) {
                Some((_, c)) => {
                    layout.push(GroupColumn::Window(*c));
                    if *c == WindowColumn::Start {
                        time = Some(Arc::clone(expr));
                    }
                }
                None => {
                    if session_keys.contains(&i) {
                        partition_keys.push(keys.len());
                    }
                    layout.push(GroupColumn::Key(keys.len()));
                    keys.push((Arc::clone(expr), name.clone()));
                }
            }
        }
        let time =
            time.ok_or_else(|| DataFusionError::Internal("a session aggregate needs window_start".into()))?;
        let agg = AggregateSpec::try_new(keys, p.aggr, p.filters, &in_schema)?;
        let converter = KeyRows::new(
            partition_keys
                .iter()
                .map(|&k| agg.key_schema.field(k).data_type().clone()),
        )?;
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
            Field::new("__partition", DataType::Binary, false),
        ];
        fields.extend(agg.key_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.extend(agg.state_file_fields());
        let shards = Shards::new(shard_count(threads, partition_keys.len()), Inner::default);
        // Row needs every state of a fixed width (COUNT, SUM, AVG, MIN and
        // MAX of numbers, ...): a state that grows with the rows (COUNT
        // DISTINCT's and ARRAY_AGG's lists, STRING_AGG's text) would be
        // merged whole into a fresh accumulator and read back out for
        // every batch, where live groups only add the new rows (one
        // session of 2M rows: 0.6 s became 19 s).
        let fixed_width = agg.state_fields.iter().flatten().all(|f| {
            f.data_type().is_primitive() || matches!(f.data_type(), DataType::Boolean | DataType::Null)
        });
        let one_group = partition_keys.len() == agg.keys.len() && fixed_width;
        let state = SessionState {
            gap_ms,
            one_group,
            agg,
            layout,
            time,
            partition_keys,
            converter,
            state_schema: Arc::new(Schema::new(fields)),
            schema: p.schema,
            shards,
            config,
        };
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl SessionState {
    /// What the operator was built from (how it crosses to a cluster; never
    /// its state): its parameters, the group expressions that partition
    /// sessions, and its thread count. [`SessionAggregateExec::try_new`]
    /// over an input of the same schema builds it again.
    pub fn config(&self) -> (&WindowAggregateParams, &[usize], usize) {
        (&self.config.0, &self.config.1, self.config.2)
    }
}

impl EpochOperator for SessionState {
    const NAME: &'static str = "SessionAggregateExec";
    type Acc = ();

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn partitions(&self) -> usize {
        self.shards.count()
    }

    /// The partition keys: a session's rows all land in one shard.
    fn shard_keys(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.partition_keys
            .iter()
            .map(|&k| Arc::clone(&self.agg.keys[k].0))
            .collect()
    }

    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        std::iter::once(&self.time)
            .chain(self.agg.keys.iter().map(|(e, _)| e))
            .chain(self.agg.args.iter().flatten())
            .cloned()
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = (0..self.layout.len())
            .map(|i| self.schema.field(i).name().as_str())
            .collect();
        let parts: Vec<&str> = self
            .partition_keys
            .iter()
            .map(|&k| self.agg.keys[k].1.as_str())
            .collect();
        let aggs: Vec<&str> = self.agg.aggr.iter().map(|a| a.name()).collect();
        write!(
            f,
            "gap={}ms partition=[{}] gby=[{}], aggr=[{}], emit=on window close",
            self.gap_ms,
            parts.join(", "),
            keys.join(", "),
            aggs.join(", ")
        )
    }

    fn start(&self, _partition: usize, _epoch: &EpochInput) -> Result<()> {
        Ok(())
    }

    fn fold(&self, partition: usize, _acc: &mut (), batch: &RecordBatch) -> Result<()> {
        self.update(partition, batch)
    }

    fn finish(&self, partition: usize, _acc: (), epoch: &EpochInput) -> Result<RecordBatch> {
        self.emit_closed(partition, epoch.watermark_out)
    }
}

impl SessionState {
    fn partition_rows(&self, keys: &[ArrayRef], n: usize) -> Result<datafusion::arrow::row::Rows> {
        let cols: Vec<ArrayRef> = self
            .partition_keys
            .iter()
            .map(|&k| super::keys::positive_zero(&keys[k]))
            .collect();
        self.converter.convert(&cols, n)
    }

    fn update(&self, shard: usize, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let times = cast(&self.time.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>().values();
        let evaluated = self.agg.evaluate(batch)?;
        let rows = self.partition_rows(&evaluated.keys, n)?;
        // Rows by partition, partitions in first-seen order. The keys borrow
        // the row-format bytes: no allocation per row (this loop was the
        // top cost of Nexmark q11, a malloc and a copy of the key per bid).
        let mut order: Vec<&[u8]> = Vec::new();
        let mut by_part: std::collections::HashMap<&[u8], Vec<u32>> = std::collections::HashMap::new();
        for i in 0..n {
            let key = rows.row(i).data();
            by_part
                .entry(key)
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(i as u32);
        }
        let mut inner = self.shards.lock(shard);
        let mut jobs: Vec<Job> = Vec::new();
        let Inner {
            sessions: all,
            by_end,
            changed,
            removed,
        } = &mut *inner;
        for part in order {
            let mut idx = by_part.remove(part).ok_or_else(|| lost("a partition's rows"))?;
            let part = part.to_vec();
            idx.sort_by_key(|&i| (times[i as usize], i));
            // New rows' intervals, clustered: [first, last + gap).
            let mut clusters: Vec<(i64, i64, Vec<u32>)> = Vec::new();
            for i in idx {
                let t = times[i as usize];
                match clusters.last_mut() {
                    Some((_, end, members)) if t < *end => {
                        *end = (*end).max(t + self.gap_ms);
                        members.push(i);
                    }
                    _ => clusters.push((t, t + self.gap_ms, vec![i])),
                }
            }
            let sessions = all.entry(part.clone()).or_default();
            for (start, end, members) in clusters {
                // Every existing session this cluster overlaps merges into it.
                // With groups, the earliest overlapping session's groups are
                // the base (the common case, a session extended by new rows,
                // then costs no new hash table and no merge); later ones
                // merge into it, in start order. With one group, the
                // sessions' states are gathered for the fold at the end.
                let mut base: Option<Box<(Groups, Option<RecordBatch>)>> = None;
                let mut job = Job::default();
                let (mut lo, mut hi) = (start, end);
                for s in sessions.overlapping(start, end) {
                    let old = sessions.remove(s).ok_or_else(|| lost("an overlapping session"))?;
                    by_end.remove(&(old.end, s, part.clone()));
                    changed.remove(&(s, old.end, part.clone()));
                    removed.insert((s, old.end, part.clone()));
                    lo = lo.min(s);
                    hi = hi.max(old.end);
                    match old.body {
                        Body::Groups(mut old) => match base.as_mut() {
                            None => base = Some(old),
                            Some(b) => {
                                let n = old.0.len();
                                let (k, st) = old.0.take_state()?;
                                b.0.merge(&k, &st, n)?;
                            }
                        },
                        Body::Row(state) => job.states.push(state),
                        // Made earlier in this call (this cluster bridges
                        // it with another session): its job joins this one.
                        Body::Pending(j) => {
                            let earlier = std::mem::take(&mut jobs[j]);
                            job.states.extend(earlier.states);
                            job.members.extend(earlier.members);
                        }
                    }
                }
                let body = if self.one_group {
                    job.start = lo;
                    job.part = part.clone();
                    job.members.extend(members);
                    jobs.push(job);
                    Body::Pending(jobs.len() - 1)
                } else {
                    let mut groups = match base {
                        Some(g) => g,
                        None => Box::new((Groups::new(&self.agg)?, None)),
                    };
                    groups.0.update(&evaluated.take(&UInt32Array::from(members))?)?;
                    groups.1 = None;
                    Body::Groups(groups)
                };
                sessions.insert(lo, Session { end: hi, body });
                by_end.insert((hi, lo, part.clone()));
                removed.remove(&(lo, hi, part.clone()));
                changed.insert((lo, hi, part.clone()));
            }
        }
        self.fold_jobs(&mut inner.sessions, jobs, &evaluated)
    }

    /// Folds one `update` call's one-group sessions: each pending
    /// session's earlier states and new rows, all sessions at once.
    fn fold_jobs(
        &self,
        all: &mut BTreeMap<Vec<u8>, Sessions>,
        jobs: Vec<Job>,
        evaluated: &Evaluated,
    ) -> Result<()> {
        // A job another joined is left empty; every other has its rows.
        // Those with earlier states first, as `fold_units` needs.
        let mut jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.members.is_empty()).collect();
        jobs.sort_by_key(|j| j.states.is_empty());
        if jobs.is_empty() {
            return Ok(());
        }
        let mut state_groups = Vec::new();
        let mut row_groups = Vec::new();
        let mut rows = Vec::new();
        for (g, job) in jobs.iter().enumerate() {
            state_groups.extend(std::iter::repeat_n(g, job.states.len()));
            row_groups.extend(std::iter::repeat_n(g, job.members.len()));
            rows.extend_from_slice(&job.members);
        }
        let states = self.state_columns(jobs.iter().flat_map(|j| &j.states), state_groups.len())?;
        let input = evaluated.take(&UInt32Array::from(rows))?;
        let folded = fold_units(
            &self.agg,
            &self.agg.split_states(&states),
            &state_groups,
            &input,
            &row_groups,
            jobs.len(),
        )?;
        for (g, job) in jobs.into_iter().enumerate() {
            let state = folded
                .iter()
                .map(|a| ScalarValue::try_from_array(a, g))
                .collect::<Result<State>>()?;
            let session = all
                .get_mut(&job.part)
                .and_then(|ss| ss.get_mut(job.start))
                .ok_or_else(|| lost("a new session"))?;
            session.body = Body::Row(state);
        }
        Ok(())
    }

    fn emit_closed(&self, shard: usize, watermark: i64) -> Result<RecordBatch> {
        let mut inner = self.shards.lock(shard);
        let mut out = Vec::new();
        // One-group sessions' states, gathered into one batch.
        let mut rows: Vec<(i64, i64, Vec<u8>, State)> = Vec::new();
        while let Some((end, start, part)) = inner.by_end.first().cloned() {
            if end > watermark {
                break;
            }
            inner.by_end.pop_first();
            let sessions = inner
                .sessions
                .get_mut(&part)
                .ok_or_else(|| lost("a closing session's partition"))?;
            let session = sessions.remove(start).ok_or_else(|| lost("a closing session"))?;
            if sessions.is_empty() {
                inner.sessions.remove(&part);
            }
            inner.changed.remove(&(start, end, part.clone()));
            inner.removed.insert((start, end, part.clone()));
            match session.body {
                Body::Groups(g) => out.push(self.session_output(start, end, g.0)?),
                Body::Row(state) => rows.push((start, end, part, state)),
                Body::Pending(_) => return Err(lost("a session's state")),
            }
        }
        if !rows.is_empty() {
            out.push(self.rows_output(rows)?);
        }
        Ok(concat_batches(&self.schema, &out)?)
    }

    /// A closed session's output rows.
    fn session_output(&self, start: i64, end: i64, groups: Groups) -> Result<RecordBatch> {
        let n = groups.len();
        let (keys, values) = groups.evaluate()?;
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, c) in self.layout.iter().enumerate() {
            columns.push(match c {
                GroupColumn::Window(w) => constant_time(self.schema.field(i), w.value(start, end), n)?,
                GroupColumn::Key(k) => Arc::clone(&keys[*k]),
            });
        }
        columns.extend(values);
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// Closed one-group sessions' output rows, one per session.
    fn rows_output(&self, rows: Vec<(i64, i64, Vec<u8>, State)>) -> Result<RecordBatch> {
        let n = rows.len();
        let keys = self.one_group_keys(rows.iter().map(|r| r.2.as_slice()))?;
        let states = self.state_columns(rows.iter().map(|r| &r.3), n)?;
        let all: Vec<usize> = (0..n).collect();
        let values = keyless_values(&self.agg, &self.agg.split_states(&states), &all, n)?;
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, c) in self.layout.iter().enumerate() {
            columns.push(match c {
                GroupColumn::Window(w) => time_column(
                    self.schema.field(i),
                    rows.iter()
                        .map(|(start, end, ..)| w.value(*start, *end))
                        .collect(),
                )?,
                GroupColumn::Key(k) => Arc::clone(&keys[*k]),
            });
        }
        columns.extend(values);
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// A one-group session's keys are its partition's: the key columns of
    /// these partitions (row-format bytes), typed as the keys are.
    fn one_group_keys<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        self.converter
            .columns_of(parts)?
            .into_iter()
            .zip(self.agg.key_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    Ok(cast(&c, f.data_type())?)
                }
            })
            .collect()
    }

    /// One-group sessions' states as state columns (as a state file lays
    /// them out), one row per session.
    fn state_columns<'a>(
        &self,
        states: impl IntoIterator<Item = &'a State>,
        n: usize,
    ) -> Result<Vec<ArrayRef>> {
        let fields = self.agg.state_file_fields();
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(n); fields.len()];
        for state in states {
            for (c, v) in columns.iter_mut().zip(state.iter()) {
                c.push(v.clone());
            }
        }
        columns
            .into_iter()
            .zip(&fields)
            .map(|(values, f)| column_of(values, f.data_type()))
            .collect()
    }
}

impl StatefulOperator for SessionState {
    fn signature(&self) -> String {
        format!(
            "session-aggregate gap={}ms partition{:?} {}",
            self.gap_ms,
            self.partition_keys,
            crate::compat::signature::aggregate_signature(&self.agg)
        )
    }

    fn kind(&self) -> &'static str {
        "session-aggregate"
    }

    fn state_rows(&self) -> usize {
        self.shards
            .lock_all()
            .iter()
            .flat_map(|inner| inner.sessions.values())
            .flat_map(|s| s.iter())
            .map(|(_, s)| match &s.body {
                Body::Groups(g) => g.0.len(),
                Body::Row(_) | Body::Pending(_) => 1,
            })
            .sum()
    }

    fn describe(&self) -> StateTable {
        StateTable {
            name: "sessions".into(),
            keys: ["window_start", "window_end"]
                .into_iter()
                .map(String::from)
                .chain(self.agg.key_schema.fields().iter().map(|f| f.name().clone()))
                .collect(),
            values: self.agg.state_file_fields().iter().map(|f| f.name().clone()).collect(),
            evicted_by: "window_end (last row + gap) at or before the watermark (the session is emitted, then dropped)"
                .into(),
        }
    }

    fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.state_schema)
    }

    fn unit_key_len(&self) -> usize {
        3
    }

    fn state_shards(&self) -> usize {
        self.shards.count()
    }

    fn checkpoint(&self, full: bool) -> Result<Vec<Option<StateChange>>> {
        // Sessions never span shards: each shard's change is its own.
        let mut shards = self.shards.lock_all();
        let mut parts = Vec::with_capacity(shards.len());
        for inner in shards.iter_mut() {
            parts.push(self.checkpoint_shard(inner, full)?.part(full));
        }
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, _watermark: i64) -> Result<()> {
        let mut shards = self.shards.lock_all();
        for inner in shards.iter_mut() {
            **inner = Inner::default();
        }
        let key_columns: Vec<usize> = self.partition_keys.iter().map(|k| 3 + k).collect();
        for batch in batches {
            let batch = batch.with_schema(Arc::clone(&self.state_schema))?;
            for (shard, batch) in route(&batch, &key_columns, shards.len())? {
                self.restore_rows(&mut shards[shard], &batch)?;
            }
        }
        Ok(())
    }
}

impl SessionState {
    /// A shard's change since the last checkpoint, or all its rows.
    fn checkpoint_shard(&self, inner: &mut Inner, full: bool) -> Result<StateChange> {
        let units: Vec<(i64, i64, Vec<u8>)> = if full {
            inner
                .sessions
                .iter()
                .flat_map(|(p, ss)| ss.iter().map(move |(start, s)| (start, s.end, p.clone())))
                .collect()
        } else {
            inner.changed.iter().cloned().collect()
        };
        let mut upserts = Vec::new();
        // One-group sessions' rows, gathered into one batch.
        let mut rows: Vec<(i64, i64, &[u8], &State)> = Vec::new();
        for (start, end, part) in &units {
            let Some(s) = inner.sessions.get_mut(part).and_then(|ss| ss.get_mut(*start)) else {
                continue;
            };
            if s.end != *end {
                continue;
            }
            let Body::Groups(g) = &mut s.body else {
                continue;
            };
            let (groups, snapshot) = &mut **g;
            if snapshot.is_none() {
                let n = groups.len();
                let (keys, states) = groups.snapshot(&self.agg)?;
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(vec![*start; n])),
                    Arc::new(Int64Array::from(vec![*end; n])),
                    Arc::new(BinaryArray::from(vec![part.as_slice(); n])),
                ];
                columns.extend(keys);
                columns.extend(states.into_iter().flatten());
                *snapshot = Some(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?);
            }
            upserts.extend(snapshot.clone());
        }
        for (start, end, part) in &units {
            let Some(s) = inner.sessions.get(part).and_then(|ss| ss.get(*start)) else {
                continue;
            };
            if let (true, Body::Row(state)) = (s.end == *end, &s.body) {
                rows.push((*start, *end, part.as_slice(), state));
            }
        }
        if !rows.is_empty() {
            let n = rows.len();
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.2))),
            ];
            columns.extend(self.one_group_keys(rows.iter().map(|r| r.2))?);
            columns.extend(self.state_columns(rows.iter().map(|r| r.3), n)?);
            upserts.push(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?);
        }
        let deletes = if full || inner.removed.is_empty() {
            vec![]
        } else {
            let starts: Vec<i64> = inner.removed.iter().map(|u| u.0).collect();
            let ends: Vec<i64> = inner.removed.iter().map(|u| u.1).collect();
            let parts: Vec<&[u8]> = inner.removed.iter().map(|u| u.2.as_slice()).collect();
            vec![RecordBatch::try_new(
                Arc::new(self.state_schema.project(&[0, 1, 2])?),
                vec![
                    Arc::new(Int64Array::from(starts)),
                    Arc::new(Int64Array::from(ends)),
                    Arc::new(BinaryArray::from(parts)),
                ],
            )?]
        };
        inner.changed.clear();
        inner.removed.clear();
        Ok(StateChange { upserts, deletes })
    }

    /// Adds restored state rows to a shard.
    fn restore_rows(&self, inner: &mut Inner, batch: &RecordBatch) -> Result<()> {
        let n_keys = self.agg.key_schema.fields().len();
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let starts = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        let ends = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
        let parts = batch.column(2).as_binary::<i32>().clone();
        if self.one_group {
            // One row per session.
            let states = &batch.columns()[3 + n_keys..];
            for i in 0..batch.num_rows() {
                let part = parts.value(i);
                let sessions = inner.sessions.entry(part.to_vec()).or_default();
                if sessions.get(starts[i]).is_some() {
                    return Err(DataFusionError::Internal(format!(
                        "SessionAggregateExec: two state rows for the session starting at {} ms",
                        starts[i]
                    )));
                }
                let state = states
                    .iter()
                    .map(|a| ScalarValue::try_from_array(a, i))
                    .collect::<Result<State>>()?;
                sessions.insert(
                    starts[i],
                    Session {
                        end: ends[i],
                        body: Body::Row(state),
                    },
                );
                inner.by_end.insert((ends[i], starts[i], part.to_vec()));
            }
            return Ok(());
        }
        // Rows of one session are contiguous.
        let mut i = 0;
        while i < batch.num_rows() {
            let mut j = i + 1;
            while j < batch.num_rows()
                && starts[j] == starts[i]
                && ends[j] == ends[i]
                && parts.value(j) == parts.value(i)
            {
                j += 1;
            }
            let part = parts.value(i).to_vec();
            let idx = UInt32Array::from((i as u32..j as u32).collect::<Vec<_>>());
            let piece = take_batch(batch, &idx)?;
            let states = self.agg.split_states(&piece.columns()[3 + n_keys..]);
            let keys = &piece.columns()[3..3 + n_keys];
            // A session's rows may come in more than one batch (state
            // files are read back a few thousand rows at a time): add
            // them to what earlier batches restored.
            if let Some(s) = inner.sessions.get_mut(&part).and_then(|ss| ss.get_mut(starts[i]))
                && s.end == ends[i]
                && let Body::Groups(g) = &mut s.body
            {
                let (groups, snapshot) = &mut **g;
                groups.merge(keys, &states, piece.num_rows())?;
                *snapshot = match snapshot.take() {
                    Some(prev) => Some(concat_batches(&prev.schema(), [&prev, &piece])?),
                    None => Some(piece),
                };
                i = j;
                continue;
            }
            let mut groups = Groups::new(&self.agg)?;
            groups.merge(keys, &states, piece.num_rows())?;
            inner.by_end.insert((ends[i], starts[i], part.clone()));
            inner.sessions.entry(part).or_default().insert(
                starts[i],
                Session {
                    end: ends[i],
                    body: Body::Groups(Box::new((groups, Some(piece)))),
                },
            );
            i = j;
        }
        Ok(())
    }
}

/// The error for an index that disagrees with the sessions it indexes (a
/// bug, never bad input): named, rather than a panic.
fn lost(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("SessionAggregateExec lost track of {what}"))
}
