//! The logical nodes of the incremental plan that DataFusion does not have.
//!
//! * [`WindowAssignNode`]: a window table function. Passes its input's rows
//!   through (under the call's placeholder name) and adds `window_start`,
//!   `window_end` and `window_time` (`window_end` - 1 ms, Flink's time
//!   attribute of a window). Rows older than the watermark are late and
//!   dropped here.
//! * [`WindowAggregateNode`]: an `Aggregate` whose `GROUP BY` holds a window's
//!   `window_start` and `window_end`. Keeps per-window partial aggregates as
//!   state and emits a window's rows once, when the watermark passes its end.
//! * [`LateFilterNode`]: drops a source's late rows where it is read, for a
//!   window whose input drops rows before it (see there).
//! * [`UpdateAggregateNode`]: an `Aggregate` without a window. Keeps one
//!   partial aggregate per group and emits, each epoch, the groups that
//!   changed as a changelog (`op` = `+I`, `-U`, `+U`, `-D`).
//! * [`WindowTopNNode`]: `ROW_NUMBER()`, `RANK()` or `DENSE_RANK() OVER
//!   (PARTITION BY window_start, window_end, ... ORDER BY ...)`, usually
//!   with `rn <= N` above. Keeps each open window's rows (the top N per
//!   partition when N is known) and emits them ranked when it closes.
//! * [`StreamTopNNode`]: the same ranking over a stream without windows
//!   (Top-N and deduplication), with `rn <= N` above: keeps each
//!   partition's top N rows and emits their changes as a changelog.
//! * [`StreamJoinNode`]: a join of two streams on keys and a time bound
//!   between their watermarked time columns. Keeps each side's rows until
//!   the watermark shows that no later row of the other side can match them.
//! * [`ChangelogNetNode`]: an epoch's signed rows (a join whose input is a
//!   changelog) netted and emitted as `-D`/`+I` rows.
//!
//! # Slices
//!
//! HOP and CUMULATE windows overlap. Rather than copying a row into every
//! window it belongs to, a window aggregate over them keeps partial
//! aggregates per *slice* (Flink's name; a "pane" in the literature) and
//! merges a window's slices when it closes:
//!
//! ```text
//!  HOP(slide 2s, size 6s)   slices: |0-2|2-4|4-6|6-8|8-10|
//!                           window [0,6)  = |0-2|2-4|4-6|
//!                           window [2,8)  =     |2-4|4-6|6-8|
//!  CUMULATE(step 2s, size 6s): [0,2) = |0-2|, [0,4) = |0-2|2-4|, [0,6) = |0-2|2-4|4-6|
//! ```
//!
//! State then grows with the number of slices, not windows × size/slide.

mod assign;
mod join;
mod net;
mod spec;
mod topn;
mod update_aggregate;
mod window_aggregate;

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::{DFSchema, DFSchemaRef, Result, TableReference, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

pub use assign::*;
pub use join::*;
pub use net::*;
pub use spec::*;
pub use topn::*;
pub use update_aggregate::*;
pub use window_aggregate::*;

/// Expressions as a comma-separated list, for EXPLAIN.
fn list(v: &[Expr]) -> String {
    v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_start_handles_offsets_and_negative_times() {
        assert_eq!(WindowSpec::tumble_start(12_345, 10_000, 0), 10_000);
        assert_eq!(WindowSpec::tumble_start(10_000, 10_000, 0), 10_000);
        assert_eq!(WindowSpec::tumble_start(9_999, 10_000, 0), 0);
        assert_eq!(WindowSpec::tumble_start(-1, 10_000, 0), -10_000);
        assert_eq!(WindowSpec::tumble_start(12_345, 10_000, 3_000), 3_000);
        assert_eq!(WindowSpec::tumble_start(13_000, 10_000, 3_000), 13_000);
    }

    #[test]
    fn hop_windows_and_slices() {
        let hop = WindowSpec::Hop {
            slide_ms: 2,
            size_ms: 6,
            offset_ms: 0,
        };
        assert_eq!(hop.windows_of(5), vec![(0, 6), (2, 8), (4, 10)]);
        assert_eq!(hop.slice_start(5), 4);
        assert_eq!(hop.slices_of_window(2, 8), vec![2, 4, 6]);
        assert_eq!(hop.slice_retires_at(4), 10);
        let off = WindowSpec::Hop {
            slide_ms: 2,
            size_ms: 4,
            offset_ms: 1,
        };
        assert_eq!(off.windows_of(4), vec![(1, 5), (3, 7)]);
    }

    #[test]
    fn cumulate_windows_and_slices() {
        let c = WindowSpec::Cumulate {
            step_ms: 2,
            size_ms: 6,
            offset_ms: 0,
        };
        assert_eq!(c.windows_of(3), vec![(0, 4), (0, 6)]);
        assert_eq!(c.windows_of(6), vec![(6, 8), (6, 10), (6, 12)]);
        assert_eq!(c.slices_of_window(0, 6), vec![0, 2, 4]);
        assert_eq!(c.slice_retires_at(2), 6);
    }

    #[test]
    fn every_window_of_a_time_contains_it() {
        for spec in [
            WindowSpec::Tumble {
                size_ms: 10,
                offset_ms: 3,
            },
            WindowSpec::Hop {
                slide_ms: 5,
                size_ms: 15,
                offset_ms: 2,
            },
            WindowSpec::Cumulate {
                step_ms: 5,
                size_ms: 20,
                offset_ms: 1,
            },
        ] {
            for t in -40..40 {
                for (s, e) in spec.windows_of(t) {
                    assert!(s <= t && t < e, "{spec} {t} in [{s},{e})");
                    let slices = spec.slices_of_window(s, e);
                    assert!(slices.contains(&spec.slice_start(t)), "{spec} {t}");
                }
            }
        }
    }

    #[test]
    fn durations_print_as_people_write_them() {
        assert_eq!(fmt_ms(10_000), "10s");
        assert_eq!(fmt_ms(120_000), "2m");
        assert_eq!(fmt_ms(1_500), "1500ms");
    }
}
