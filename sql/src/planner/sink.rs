//! Sink conformance: a pipeline's output fitted to its sink (the changelog's
//! `op` column first, a sink's declared columns cast to by position).

use super::*;

/// The output's final shape: a changelog's operation column becomes the
/// first column, named `op` (as Flink's SQL client shows it).
pub(super) fn finish_output(plan: LogicalPlan, changelog: bool) -> Result<LogicalPlan> {
    if !changelog {
        return Ok(plan);
    }
    let schema = Arc::clone(plan.schema());
    let n = schema.fields().len();
    let mut exprs = vec![Expr::Column(Column::from(schema.qualified_field(n - 1))).alias(OP_COLUMN)];
    for i in 0..n - 1 {
        let (q, f) = schema.qualified_field(i);
        let column = Expr::Column(Column::from((q, f)));
        // Unqualified, unless two columns share the name (`a.price,
        // b.price`): they keep their qualifiers, as an append-only
        // output does.
        let shared = (0..n - 1).filter(|&j| schema.field(j).name() == f.name()).count() > 1;
        exprs.push(if shared { column } else { column.alias(f.name()) });
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Whether a sink is declared `'mode' = 'changelog'` (a blackhole takes
/// anything as it is).
pub(super) fn takes_changelog(sink: &TableDecl) -> bool {
    sink.options.get("connector") != Some("blackhole")
        && sink
            .options
            .get("mode")
            .is_some_and(|m| m.eq_ignore_ascii_case("changelog"))
}

/// An append-only output as a changelog of inserts: `op` = `+I` first.
pub(super) fn as_inserts(plan: LogicalPlan) -> Result<LogicalPlan> {
    let schema = Arc::clone(plan.schema());
    let mut exprs = vec![datafusion::logical_expr::lit("+I").alias(OP_COLUMN)];
    exprs.extend(schema.iter().map(|(q, f)| Expr::Column(Column::from((q, f)))));
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// A changelog can only go to a sink that accepts one. The `blackhole`
/// sink takes either, as Flink's does: it keeps nothing, so there is no
/// table whose meaning an `op` column would change (the benchmarks measure
/// updating queries through it).
pub(super) fn check_sink(sink: &TableDecl, changelog: bool) -> Result<()> {
    if !sink.primary_key.is_empty() {
        return Err(Error::Unsupported(format!(
            "sink '{}' declares a PRIMARY KEY: Weir's sinks do not upsert by key (a changelog sink writes every \
             change with its op); a PRIMARY KEY belongs on a source, where it lets a join on it hold fewer rows",
            sink.name
        )));
    }
    if sink.options.get("connector") == Some("blackhole") {
        return Ok(());
    }
    let mode = sink.options.get("mode").unwrap_or("append").to_ascii_lowercase();
    let kafka = sink.options.get("connector") == Some("kafka");
    match (mode.as_str(), changelog) {
        ("append", false) | ("changelog", _) => Ok(()),
        // Flink's upsert-kafka: a changelog keyed by 'key.fields'.
        ("upsert", _) if kafka => Ok(()),
        ("append", true) => Err(Error::Unsupported(format!(
            "the query produces a changelog (rows it emits are updated or taken back later, as an aggregate \
             without a window, a Top-N outside windows, or an outer or anti join without a time bound does), but \
             sink '{}' is append-only: declare it with 'mode' = 'changelog' to receive op/+I/-U/+U/-D rows, or \
             aggregate over a window (TUMBLE, HOP, CUMULATE, SESSION), or bound the join in time, to emit final rows",
            sink.name
        ))),
        (other, _) => Err(Error::Plan(format!(
            "sink '{}': unknown mode '{other}' (append or changelog)",
            sink.name
        ))),
    }
}

/// When the sink declares columns, the query's output is cast to them by
/// position (as Flink does); otherwise the sink takes the query's schema.
pub(super) fn conform_to_sink(plan: LogicalPlan, sink: &TableDecl, changelog: bool) -> Result<LogicalPlan> {
    let Some(declared) = &sink.schema else {
        return Ok(plan);
    };
    let out = plan.schema();
    let skip = usize::from(changelog);
    let n = out.fields().len() - skip;
    if n != declared.fields().len() {
        return Err(Error::Plan(format!(
            "the query produces {n} columns but sink '{}' declares {}",
            sink.name,
            declared.fields().len()
        )));
    }
    let mut exprs = Vec::with_capacity(out.fields().len());
    if changelog {
        exprs.push(col(Column::from(out.qualified_field(0))));
    }
    for i in 0..n {
        let column = Expr::Column(Column::from(out.qualified_field(i + skip)));
        let target = declared.field(i);
        let given = out.field(i + skip);
        let e = if given.data_type() == target.data_type() {
            column
        } else if sink_cast_allowed(given.data_type(), target.data_type()) {
            cast(column, target.data_type().clone())
        } else {
            let declared_type = sink
                .column_types
                .get(i)
                .cloned()
                .unwrap_or_else(|| crate::catalog::sql_type_name(target.data_type()));
            return Err(Error::Plan(format!(
                "sink table '{}': column '{}' (column {} of {n}) is declared {declared_type}, but the query gives \
                 '{}' of type {}, which does not convert to it; CAST it in the query if that is meant",
                sink.name,
                target.name(),
                i + 1,
                given.name(),
                crate::catalog::sql_type_name(given.data_type())
            )));
        };
        exprs.push(e.alias(target.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// A `files` sink writes Parquet: a column of a type Parquet cannot store
/// (an `INTERVAL`, whose Arrow form is month-day-nanosecond) is refused at
/// planning, by name. Found only at the first write, it failed the epoch,
/// and every rerun replayed that epoch into the same error.
pub(super) fn check_parquet_types(plan: &LogicalPlan, sink: &TableDecl) -> Result<()> {
    if sink.options.get("connector").unwrap_or("files") != "files" {
        return Ok(());
    }
    for field in plan.schema().fields() {
        if let Some(bad) = parquet_cannot_store(field.data_type()) {
            let name = crate::catalog::sql_type_name;
            let what = if bad == field.data_type() {
                name(bad)
            } else {
                format!("{}, holding {}", name(field.data_type()), name(bad))
            };
            return Err(Error::Plan(format!(
                "sink table '{}': column '{}' is {what}, which Parquet cannot store; CAST it in the query (an \
                 INTERVAL to VARCHAR, say, or take its parts as numbers)",
                sink.name,
                field.name(),
            )));
        }
    }
    Ok(())
}

/// The part of `data_type` that the Parquet writer (arrow-rs 59) refuses
/// to write, at any depth: an interval with nanoseconds (the only interval
/// DataFusion makes), a union, a list view.
fn parquet_cannot_store(data_type: &DataType) -> Option<&DataType> {
    use datafusion::arrow::datatypes::IntervalUnit;
    match data_type {
        DataType::Interval(IntervalUnit::MonthDayNano)
        | DataType::Union(..)
        | DataType::ListView(_)
        | DataType::LargeListView(_) => Some(data_type),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => {
            parquet_cannot_store(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().find_map(|f| parquet_cannot_store(f.data_type())),
        DataType::Dictionary(_, v) => parquet_cannot_store(v),
        DataType::RunEndEncoded(_, v) => parquet_cannot_store(v.data_type()),
        _ => None,
    }
}

/// Whether a query's column of type `given` is cast to a sink's declared
/// `target` without asking: numbers to numbers, text to text, times to
/// times, anything to text. Others (text to a number or a boolean) are
/// refused at planning rather than failing on the first row that does not
/// parse.
pub(super) fn sink_cast_allowed(given: &DataType, target: &DataType) -> bool {
    use DataType::*;
    let text = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let time = |t: &DataType| matches!(t, Timestamp(_, _) | Date32 | Date64);
    (given.is_numeric() && target.is_numeric())
        || text(target)
        || (time(given) && time(target))
        || matches!(given, Null)
        || (matches!(given, Boolean) && matches!(target, Boolean))
        || (matches!(given, Binary | LargeBinary | BinaryView)
            && matches!(target, Binary | LargeBinary | BinaryView))
}
