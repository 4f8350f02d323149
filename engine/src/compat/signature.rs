//! Operators' signatures: what a stateful operator computes, as text, so
//! that a changed query can be compared with the one that made a
//! checkpoint's state (see the module above). Two operators with the same
//! signature read and write the same state rows the same way.
//!
//! A signature names expressions and state columns by name and type, never
//! by position (`price@3` is written `price`), so reordering a projection
//! below an operator does not change it.

use std::sync::Arc;

use crate::exec::groups::AggregateSpec;

/// The shared part of aggregate operators' signatures: keys, aggregates with
/// their arguments and filters, and the state columns with their types.
pub fn aggregate_signature(agg: &AggregateSpec) -> String {
    let mut s = String::from("keys[");
    for (expr, name) in &agg.keys {
        s.push_str(&format!("{name}={expr};"));
    }
    s.push_str("] aggregates[");
    for (i, a) in agg.aggr.iter().enumerate() {
        s.push_str(a.name());
        s.push('(');
        for arg in &agg.args[i] {
            s.push_str(&format!("{arg},"));
        }
        s.push(')');
        if let Some(f) = &agg.filters[i] {
            s.push_str(&format!(" FILTER({f})"));
        }
        s.push(';');
    }
    s.push_str("] state[");
    for f in agg
        .key_schema
        .fields()
        .iter()
        .cloned()
        .chain(agg.state_file_fields().into_iter().map(Arc::new))
    {
        s.push_str(&format!("{}:{};", f.name(), f.data_type()));
    }
    s.push(']');
    strip_column_positions(&s)
}

/// `price@3` -> `price`: physical expressions print their input position,
/// which says nothing about what they compute.
pub fn strip_column_positions(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '@' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}
