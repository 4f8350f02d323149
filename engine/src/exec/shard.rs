//! Keyed state split across threads (`weir run --threads N`).
//!
//! A stateful operator with grouping keys runs as N partitions, one per
//! thread. It asks DataFusion for its input hash-partitioned on the key
//! expressions, so the planner puts a `RepartitionExec` (hash) under it, and
//! partition `i` sees exactly the rows whose keys hash to `i`. Each partition
//! keeps its groups in its own *shard*, behind its own lock, so the shards
//! aggregate in parallel without sharing anything.
//!
//! Each shard checkpoints on its own: an epoch writes one state file per
//! shard that changed (`<epoch>.delta.<k>-of-<n>.parquet`), and the commit
//! names every shard's files (`weir_storage::StateChains`), so a shard's
//! state can be written and read where the shard runs. A unit keeps its
//! meaning within a shard's files: a window holding many keys has rows in
//! several shards, and each shard's file holds (and replaces) only its own.
//! A restore reads every shard's files and deals the rows back to shards
//! with the same hash function the repartition uses ([`BatchPartitioner`]
//! with DataFusion's fixed-seed `REPARTITION_RANDOM_STATE`), over the stored
//! key columns, which hold the very values the repartition hashes. So a job
//! can stop under one thread count and resume under another (its next
//! checkpoint is then a snapshot of every new shard).
//!
//! Invariant: the rows of one group are always in one shard. A unit that
//! spans groups may come back in several runs, one per stored shard.

use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::{Distribution, Partitioning};

use crate::compat::signature::strip_column_positions;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;

/// An operator's state, one part per partition.
pub struct Shards<I> {
    shards: Vec<Mutex<I>>,
}

impl<I> Shards<I> {
    /// `n` shards (at least one), each made by `init`.
    pub fn new(n: usize, init: impl Fn() -> I) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(init())).collect(),
        }
    }

    /// How many shards there are (never zero).
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// One shard. A panic while holding a lock aborts the epoch and the job
    /// restarts from its checkpoint, so a poisoned lock carries no risk.
    pub fn lock(&self, shard: usize) -> MutexGuard<'_, I> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every shard, in order (for checkpoints and restores, which run
    /// between epochs).
    pub fn lock_all(&self) -> Vec<MutexGuard<'_, I>> {
        (0..self.shards.len()).map(|i| self.lock(i)).collect()
    }
}

/// How many shards an operator with `keys` grouping keys has under
/// `threads` threads: without keys every row is in one group per window, so
/// there is nothing to split.
pub fn shard_count(threads: usize, keys: usize) -> usize {
    if keys == 0 { 1 } else { threads.max(1) }
}

/// The input distribution an operator with `shards` shards asks for.
pub fn input_distribution(shards: usize, keys: Vec<Arc<dyn PhysicalExpr>>) -> Distribution {
    if shards > 1 {
        Distribution::KeyPartitioned(keys)
    } else {
        Distribution::SinglePartition
    }
}

/// Checks that an operator's input is hash-partitioned on its keys into its
/// shards, as [`route`] assumes (DataFusion could satisfy a key
/// distribution in other ways, such as by a hash on a subset of the keys).
pub fn check_input(
    name: &str,
    input: &Partitioning,
    keys: &[Arc<dyn PhysicalExpr>],
    shards: usize,
) -> Result<()> {
    if shards <= 1 {
        return Ok(());
    }
    let show = |e: &Arc<dyn PhysicalExpr>| strip_column_positions(&e.to_string());
    if let Partitioning::Hash(exprs, n) = input
        && *n == shards
        && exprs.iter().map(show).eq(keys.iter().map(show))
    {
        return Ok(());
    }
    Err(DataFusionError::Internal(format!(
        "{name} keeps {shards} shards by the hash of [{}], but its input is partitioned as {input}",
        keys.iter().map(show).collect::<Vec<_>>().join(", ")
    )))
}

/// Deals state rows to the shards their groups' input rows go to: by the
/// hash of the columns `key_columns` of `batch`, as DataFusion's hash
/// repartition computes it. Row order within each shard is kept.
pub fn route(batch: &RecordBatch, key_columns: &[usize], shards: usize) -> Result<Vec<(usize, RecordBatch)>> {
    if shards <= 1 || batch.num_rows() == 0 {
        return Ok(vec![(0, batch.clone())]);
    }
    let schema = batch.schema();
    let exprs = key_columns
        .iter()
        .map(|&i| Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
        .collect();
    let mut partitioner = BatchPartitioner::new_hash_partitioner(exprs, shards, Time::new())?;
    let mut out = Vec::with_capacity(shards);
    partitioner.partition(batch.clone(), |shard, part| {
        out.push((shard, part));
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::{ExecutionPlan, Partitioning, collect_partitioned};
    use datafusion::prelude::SessionContext;

    /// `route` must send a key where DataFusion's hash repartition sends it:
    /// a mismatch would split one group over two shards after a restore.
    #[tokio::test]
    async fn route_agrees_with_hash_repartition() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let keys: Vec<Option<i64>> = (0..1000)
            .map(|i| if i % 97 == 0 { None } else { Some(i * 7919) })
            .collect();
        let names: Vec<Option<String>> = (0..1000).map(|i| Some(format!("n{}", i % 13))).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap();
        for shards in [2, 3, 4] {
            let input =
                MemorySourceConfig::try_new_exec(&[vec![batch.clone()]], Arc::clone(&schema), None).unwrap();
            let exprs: Vec<Arc<dyn PhysicalExpr>> =
                vec![Arc::new(Column::new("k", 0)), Arc::new(Column::new("s", 1))];
            let repartition = Arc::new(
                RepartitionExec::try_new(input as Arc<dyn ExecutionPlan>, Partitioning::Hash(exprs, shards))
                    .unwrap(),
            );
            let parts = collect_partitioned(repartition, SessionContext::new().task_ctx())
                .await
                .unwrap();
            let routed = route(&batch, &[0, 1], shards).unwrap();
            for (shard, expected) in parts.iter().enumerate() {
                let mut want: Vec<(Option<i64>, String)> = Vec::new();
                for b in expected {
                    let k = b.column(0).as_primitive::<Int64Type>();
                    let s = b.column(1).as_string::<i32>();
                    want.extend(
                        (0..b.num_rows())
                            .map(|i| (k.is_valid(i).then(|| k.value(i)), s.value(i).to_string())),
                    );
                }
                let mut got: Vec<(Option<i64>, String)> = Vec::new();
                for (_, b) in routed.iter().filter(|(s, _)| *s == shard) {
                    let k = b.column(0).as_primitive::<Int64Type>();
                    let s = b.column(1).as_string::<i32>();
                    got.extend(
                        (0..b.num_rows())
                            .map(|i| (k.is_valid(i).then(|| k.value(i)), s.value(i).to_string())),
                    );
                }
                want.sort();
                got.sort();
                assert!(!want.is_empty(), "shard {shard} of {shards} got no rows");
                assert_eq!(got, want, "shard {shard} of {shards}");
            }
        }
    }
}
