//! EXPLAIN: a job's incremental plan, its state tables and its physical
//! plan as text (with each operator's metrics for EXPLAIN ANALYZE).

use super::*;

impl StreamingJob {
    /// Each pipeline's physical plan, as text.
    pub fn explain(&self) -> String {
        let text = self
            .pipelines
            .iter()
            .map(|p| self.explain_pipeline(p, false))
            .collect::<Vec<_>>()
            .join("\n");
        weir_sql::preprocess::hide_placeholders(&text, &self.tvfs)
    }

    /// Each pipeline's physical plan with the rows and time each operator
    /// spent over the epochs this process ran (EXPLAIN ANALYZE).
    pub fn explain_analyze(&self) -> String {
        let text = self
            .pipelines
            .iter()
            .map(|p| self.explain_pipeline(p, true))
            .collect::<Vec<_>>()
            .join("\n");
        weir_sql::preprocess::hide_placeholders(&text, &self.tvfs)
    }

    pub(super) fn explain_pipeline(&self, p: &Pipeline, analyze: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mode = if p.changelog {
            "changelog (op, then the columns)"
        } else {
            "append"
        };
        let _ = writeln!(out, "== {} (pipeline {}): {mode}", p.sink.describe(), p.index);
        if !analyze {
            let _ = writeln!(out, "-- incremental plan");
            let _ = writeln!(out, "{}", p.logical.display_indent());
            let _ = writeln!(out, "-- stateless prefix: {}", stateless_prefix(&p.logical));
            let origins = watermark_origins(&p.logical);
            if !origins.is_empty() {
                let _ = writeln!(out, "-- watermark: {}", origins.join("; "));
            }
            for name in &p.sources {
                if let Some(rule) = self.sources.get(name).and_then(|s| s.source.max_time_rule()) {
                    let _ = writeln!(out, "-- source {name}: {rule}");
                }
            }
            if self.remote.is_some() {
                let place = match self.why_not_on_executors() {
                    None if !p.operators.is_empty() => {
                        let shards = p
                            .operators
                            .iter()
                            .map(|(_, op)| op.state_shards().max(1))
                            .max()
                            .unwrap_or(1);
                        let tasks = if shards == 1 {
                            "one task restores its state".to_string()
                        } else {
                            format!("a task per shard of its state ({shards} shards) restores its shard")
                        };
                        format!(
                            "runs on the executors: each part of an epoch is read there (and windowed, and \
                             aggregated partially, where the query does), then {tasks} from the checkpoint, \
                             folds, and writes its output and state change there"
                        )
                    }
                    None => "runs on the executors: each part of an epoch is read, queried and written there"
                        .to_string(),
                    Some(why) => format!("input read on the executors, the query runs here ({why})"),
                };
                let _ = writeln!(out, "-- on the cluster: {place}");
            }
        }
        for (id, op) in &p.operators {
            let t = op.describe();
            let _ = writeln!(
                out,
                "-- state {id}: {} table '{}', {} rows",
                op.kind(),
                t.name,
                op.state_rows()
            );
            let _ = writeln!(out, "     keys:    {}", t.keys.join(", "));
            let _ = writeln!(out, "     values:  {}", t.values.join(", "));
            let _ = writeln!(out, "     evicted: {}", t.evicted_by);
            let _ = writeln!(out, "     emits:   {}", op.emits());
        }
        for l in &p.late_sinks {
            let _ = writeln!(out, "-- late rows: to sink {}", l.table());
        }
        for (source, table) in self.dead_letters.routes() {
            if p.sources.contains(source) {
                let _ = writeln!(out, "-- bad records of {source}: to sink {table}");
            }
        }
        let _ = writeln!(
            out,
            "-- physical plan{}",
            if analyze {
                " (Weir's operators: totals over the epochs run; DataFusion's nodes: the last epoch's)"
            } else {
                ""
            }
        );
        let shown = if analyze {
            datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(p.plan.as_ref())
                .indent(true)
                .to_string()
        } else {
            displayable(p.plan.as_ref()).indent(true).to_string()
        };
        out.push_str(&shown);
        out
    }
}

/// The names of the stateless nodes under the lowest stateful one (the
/// part of the plan that runs as a DataFusion plan over each epoch's rows).
fn stateless_prefix(plan: &datafusion::logical_expr::LogicalPlan) -> String {
    use datafusion::logical_expr::LogicalPlan;
    fn is_stateful(p: &LogicalPlan) -> bool {
        matches!(p, LogicalPlan::Extension(e) if matches!(e.node.name(), "WindowAggregate" | "UpdateAggregate" | "WindowTopN" | "TopN" | "IntervalJoin" | "RegularJoin"))
    }
    fn lowest(p: &LogicalPlan) -> &LogicalPlan {
        for input in p.inputs() {
            let mut found = None;
            let _ = input.apply(|n| {
                if is_stateful(n) {
                    found = Some(n);
                    return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            });
            if let Some(n) = found {
                return lowest(n);
            }
        }
        p
    }
    use datafusion::common::tree_node::TreeNode;
    let start = lowest(plan);
    let below: Vec<&LogicalPlan> = if is_stateful(start) {
        start.inputs()
    } else {
        vec![start]
    };
    let mut names = Vec::new();
    for b in below {
        let _ = b.apply(|n| {
            let name = match n {
                LogicalPlan::TableScan(s) => format!("scan {}", s.table_name),
                LogicalPlan::Extension(e) => e.node.name().to_string(),
                other => other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            names.push(name);
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
    }
    names.join(" <- ")
}

/// Where the plan's window calls take their watermarks from.
fn watermark_origins(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNode;
    let mut out = Vec::new();
    let _ = plan.apply(|n| {
        if let datafusion::logical_expr::LogicalPlan::Extension(e) = n
            && let Some(w) = e.node.as_any().downcast_ref::<weir_sql::WindowAssignNode>()
        {
            out.push(format!("{} on {}: {}", w.spec, w.time_column, w.watermark));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    out
}
