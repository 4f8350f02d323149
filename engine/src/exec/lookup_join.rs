//! Which side of a lookup join builds its hash table.
//!
//! DataFusion plans a join of a stream with a bounded table (a lookup join)
//! as any hash join: without statistics on either side it keeps the query's
//! order (the stream on the build side) and, with more than one thread,
//! hash-partitions both sides. So every epoch built a hash table over the
//! stream's rows (Nexmark q13: 920,000 bids) to probe it with the table's
//! 10,000 rows, and sent every stream row through a repartition.
//!
//! [`LookupBuildSide`] runs before DataFusion's join selection and makes the
//! bounded side the build side, collected once per epoch and shared by every
//! thread (`PartitionMode::CollectLeft`), as Flink's lookup join holds the
//! table beside each task: the stream's rows are probed where they are, with
//! no repartition. The table is read whole each epoch anyway (see
//! `driver::lookup`), so the build costs what reading it costs.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};

use super::scan::{LookupScanExec, StreamScanExec};

/// Makes a lookup join's bounded table its broadcast build side.
#[derive(Debug, Default)]
pub struct LookupBuildSide;

/// Whether `plan` reads bounded tables and no stream.
fn bounded_only(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let (mut lookup, mut stream) = (false, false);
    // The closure never fails.
    let _ = plan.apply(|node| {
        if node.downcast_ref::<LookupScanExec>().is_some() {
            lookup = true;
        } else if node.downcast_ref::<StreamScanExec>().is_some() {
            stream = true;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    lookup && !stream
}

impl PhysicalOptimizerRule for LookupBuildSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if join.mode == PartitionMode::CollectLeft {
                return Ok(Transformed::no(node));
            }
            let (left, right) = (bounded_only(&join.left), bounded_only(&join.right));
            if left && !right {
                let built = join
                    .builder()
                    .with_partition_mode(PartitionMode::CollectLeft)
                    .build()?;
                return Ok(Transformed::yes(Arc::new(built) as Arc<dyn ExecutionPlan>));
            }
            if right && !left && join.join_type().supports_swap() && !join.null_aware {
                return Ok(Transformed::yes(join.swap_inputs(PartitionMode::CollectLeft)?));
            }
            Ok(Transformed::no(node))
        })
        .data()
    }

    fn name(&self) -> &str {
        "weir_lookup_build_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
