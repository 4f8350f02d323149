//! The plan-node wiring every stateful operator shares, written once.
//!
//! A stateful operator is two things: its own logic and state (an
//! [`EpochOperator`]: what it keys its shards by, and how a partition folds
//! an epoch's input into an accumulator and turns that into the epoch's
//! output), and a DataFusion plan node around it ([`OperatorExec`]: plan
//! properties, children, metrics, copies, execution). A new operator writes
//! the first; the second is this module's.
//!
//! ```text
//!   OperatorExec<O> ── properties, children, metrics, with_new_children
//!        │  execute(partition) = drain_then_emit:
//!        │     acc = O::start(p); for batch: O::fold(p, acc, batch);
//!        ▼     O::finish(p, acc, epoch) → the epoch's output
//!   O: EpochOperator + StatefulOperator (checkpoint, restore)
//! ```
//!
//! The node's copies (DataFusion's optimizer rebuilds nodes, and the driver
//! runs a fresh copy of a plan that holds a hash repartition each epoch)
//! share the operator's state and metrics.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};

use super::StatefulOperator;
use super::shard::{check_input, input_distribution};
use crate::epoch::EpochInput;

/// A stateful operator's own logic: what [`OperatorExec`] runs.
pub trait EpochOperator: StatefulOperator + 'static {
    /// The plan node's name, in EXPLAIN and in errors (`WindowAggregateExec`).
    const NAME: &'static str;
    /// What a partition folds one epoch's input into.
    type Acc: Send + 'static;
    /// The output's schema.
    fn output_schema(&self) -> SchemaRef;
    /// How many partitions (shards) it runs as.
    fn partitions(&self) -> usize;
    /// The expressions whose hash picks a row's partition (with more than
    /// one partition).
    fn shard_keys(&self) -> Vec<Arc<dyn PhysicalExpr>>;
    /// Every expression it evaluates, for DataFusion's walks of the plan.
    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>>;
    /// Its line in EXPLAIN (after the name).
    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result;
    /// An empty accumulator for partition `partition` of an epoch.
    fn start(&self, partition: usize, epoch: &EpochInput) -> Result<Self::Acc>;
    /// Folds one input batch in.
    fn fold(&self, partition: usize, acc: &mut Self::Acc, batch: &RecordBatch) -> Result<()>;
    /// The epoch's output of the partition, its input all folded in.
    fn finish(&self, partition: usize, acc: Self::Acc, epoch: &EpochInput) -> Result<RecordBatch>;
}

/// The plan node of a stateful operator `O`.
pub struct OperatorExec<O: EpochOperator> {
    input: Arc<dyn ExecutionPlan>,
    state: Arc<O>,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl<O: EpochOperator> OperatorExec<O> {
    /// The node over `input`, with the operator (its configuration and
    /// state) `state`.
    pub fn new(input: Arc<dyn ExecutionPlan>, state: Arc<O>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(state.output_schema()),
            Partitioning::UnknownPartitioning(state.partitions()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            state,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
        }
    }

    /// The operator's state (for checkpoints).
    pub fn state(&self) -> Arc<O> {
        Arc::clone(&self.state)
    }
}

impl<O: EpochOperator> fmt::Debug for OperatorExec<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(O::NAME).finish()
    }
}

impl<O: EpochOperator> DisplayAs for OperatorExec<O> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: ", O::NAME)?;
        self.state.fmt_node(f)
    }
}

impl<O: EpochOperator> ExecutionPlan for OperatorExec<O> {
    fn name(&self) -> &str {
        O::NAME
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![input_distribution(
            self.state.partitions(),
            self.state.shard_keys(),
        )]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        super::visit_each(&self.state.expressions(), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // A copy shares the state and the metrics.
        let mut copy = Self::new(children.swap_remove(0), Arc::clone(&self.state));
        copy.metrics = self.metrics.clone();
        Ok(Arc::new(copy))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let partitions = self.state.partitions();
        check_input(
            O::NAME,
            self.input.output_partitioning(),
            &self.state.shard_keys(),
            partitions,
        )?;
        let (start, fold, finish) = (
            Arc::clone(&self.state),
            Arc::clone(&self.state),
            Arc::clone(&self.state),
        );
        super::drain_then_emit(
            O::NAME,
            partition,
            partitions,
            &self.input,
            context,
            &self.metrics,
            self.state.output_schema(),
            move |epoch| start.start(partition, epoch),
            move |acc, batch| fold.fold(partition, acc, batch),
            move |acc, epoch| finish.finish(partition, acc, epoch),
        )
    }
}
