//! Aggregates over a changelog (an aggregate whose input retracts rows).
//!
//! The input of such an aggregate is the output of an update aggregate (or
//! anything over one): rows tagged `+I`, `-U`, `+U`, `-D`. Its result is the
//! aggregate of the table that the changelog describes, so a `-U`/`-D` row
//! must take back what its `+I`/`+U` added.
//!
//! COUNT, SUM and AVG can be taken back exactly by adding signed values, so
//! the aggregate is rewritten into one over a *signed* input, with
//! DataFusion's own SUM doing the work (as Flink's retracting COUNT/SUM/AVG
//! keep a sum and a count):
//!
//! ```text
//!   input:   ..., op                  ->  ..., __weir_sign  (+1 for +I/+U, -1 for -U/-D)
//!   COUNT(*)                          ->  SUM(sign)
//!   COUNT(x)                          ->  SUM(CASE WHEN x IS NOT NULL THEN sign ELSE 0 END)
//!   SUM(x)                            ->  s = SUM(sign * x), n = COUNT(x) as above;
//!                                         CASE WHEN n > 0 THEN s END
//!   AVG(x)                            ->  CASE WHEN n > 0 THEN s / n END (a
//!                                         DECIMAL: __weir_decimal_avg(s, n), exact)
//!   MIN(x), MAX(x)                    ->  __weir_retract_min/max(x, sign): each
//!                                         group's values with their net counts
//!   (each group)                      ->  __weir_rows = SUM(sign); HAVING __weir_rows > 0
//! ```
//!
//! The hidden `HAVING` deletes (`-D`) a group whose last row was retracted,
//! as the batch aggregate of the table would no longer have it. MIN and MAX
//! keep every value of the group (a multiset), as Flink's retracting
//! MIN/MAX do. Other aggregate functions (COUNT(DISTINCT), MEDIAN, ...) are
//! refused, naming the function.

use datafusion::common::DFSchemaRef;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::{Aggregate, BinaryExpr, ExprSchemable, Operator, lit, when};
use datafusion::scalar::ScalarValue;

use super::*;

/// The sign of a changelog row, in the rewritten aggregate's input.
const SIGN: &str = "__weir_sign";
/// The net number of rows in a group.
const ROWS: &str = "__weir_rows";

/// The rewrite of `agg` (whose input is a changelog) into an update
/// aggregate over the signed rows, and a projection restoring the original
/// output columns (then the operation column).
pub(super) fn changelog_aggregate(agg: &Aggregate, ttl_ms: Option<i64>) -> Result<LogicalPlan> {
    let input = agg.input.as_ref();
    let in_schema = input.schema();
    let n_in = in_schema.fields().len();
    let op = Expr::Column(Column::from(in_schema.qualified_field(n_in - 1)));
    let positive = op.in_list(vec![lit("+I"), lit("+U")], false);
    let mut proj: Vec<Expr> = (0..n_in - 1)
        .map(|i| Expr::Column(Column::from(in_schema.qualified_field(i))))
        .collect();
    proj.push(when(positive, lit(1i64)).otherwise(lit(-1i64))?.alias(SIGN));
    let signed = LogicalPlan::Projection(Projection::try_new(proj, Arc::new(input.clone()))?);
    let signed_schema = Arc::clone(signed.schema());
    let sign = || col(SIGN);

    let n_groups = agg.group_expr.len();
    let mut hidden: Vec<Expr> = vec![sum(sign(), None).alias(ROWS)];
    // The output expressions of the aggregates, over the hidden aggregate's
    // schema (each a function of hidden sums).
    let mut outputs: Vec<Expr> = Vec::new();
    for (j, e) in agg.aggr_expr.iter().enumerate() {
        let (_, field) = agg.schema.qualified_field(n_groups + j);
        let out_type = field.data_type().clone();
        let refuse = |why: &str| {
            Error::Unsupported(format!(
                "{} over a changelog (the rows of an aggregate without a window, which retract) is not supported: \
                 {why}; only COUNT, SUM, AVG, MIN and MAX can take back a retracted row",
                field.name()
            ))
        };
        let Expr::AggregateFunction(af) = unalias(e) else {
            return Err(refuse("not an aggregate function"));
        };
        let p = &af.params;
        if p.distinct {
            return Err(refuse("DISTINCT would need every value kept"));
        }
        if !p.order_by.is_empty() {
            return Err(refuse("an ordered aggregate"));
        }
        let filter = p.filter.as_deref().cloned();
        let name = af.func.name().to_ascii_lowercase();
        let (s_name, n_name) = (format!("__weir_s{j}"), format!("__weir_n{j}"));
        // Signed count of the non-null values of `arg`.
        let count_of = |arg: &Expr| -> Result<Expr> {
            Ok(match arg {
                Expr::Literal(v, _) if !v.is_null() => sign(),
                _ => when(arg.clone().is_not_null(), sign()).otherwise(lit(0i64))?,
            })
        };
        match (name.as_str(), p.args.as_slice()) {
            ("count", [arg]) => {
                hidden.push(sum(count_of(arg)?, filter).alias(&n_name));
                // (A CASE: the optimizer that turns COALESCE into one has run.)
                outputs.push(cast(
                    when(col(&n_name).is_not_null(), col(&n_name)).otherwise(lit(0i64))?,
                    out_type,
                ));
            }
            ("sum" | "avg", [arg]) => {
                let t = arg.get_type(&signed_schema)?;
                let acc = match &t {
                    t if t.is_integer() => DataType::Int64,
                    DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
                    DataType::Decimal128(..) | DataType::Decimal256(..) => t.clone(),
                    other => {
                        return Err(refuse(&format!(
                            "values of type {other} cannot be summed with signs"
                        )));
                    }
                };
                let value = cast(arg.clone(), acc);
                let signed_value =
                    when(sign().gt(lit(0i64)), value.clone()).otherwise(Expr::Negative(Box::new(value)))?;
                hidden.push(sum(signed_value, filter.clone()).alias(&s_name));
                hidden.push(sum(count_of(arg)?, filter).alias(&n_name));
                let present = col(&n_name).gt(lit(0i64));
                let result = if name == "sum" {
                    cast(col(&s_name), out_type.clone())
                } else if matches!(out_type, DataType::Decimal128(..) | DataType::Decimal256(..)) {
                    // Exactly as DataFusion's decimal AVG, to the last digit.
                    Expr::ScalarFunction(ScalarFunction::new_udf(
                        Arc::new(crate::functions::decimal_avg()),
                        vec![col(&s_name), col(&n_name), lit(ScalarValue::try_from(&out_type)?)],
                    ))
                } else {
                    cast(
                        Expr::BinaryExpr(BinaryExpr::new(
                            Box::new(cast(col(&s_name), DataType::Float64)),
                            Operator::Divide,
                            Box::new(cast(col(&n_name), DataType::Float64)),
                        )),
                        out_type.clone(),
                    )
                };
                outputs.push(when(present, result).otherwise(lit(ScalarValue::try_from(&out_type)?))?);
            }
            ("min" | "max", [arg]) => {
                // A multiset of values per group (see `functions`).
                let f = crate::functions::retracting_extreme(name == "max");
                let m_name = format!("__weir_m{j}");
                hidden.push(
                    Expr::AggregateFunction(AggregateFunction::new_udf(
                        Arc::new(f),
                        vec![arg.clone(), sign()],
                        false,
                        filter.map(Box::new),
                        vec![],
                        None,
                    ))
                    .alias(&m_name),
                );
                outputs.push(cast(col(&m_name), out_type));
            }
            _ => {
                return Err(refuse(&format!(
                    "{} cannot take a row back",
                    af.func.name().to_uppercase()
                )));
            }
        }
    }

    let inner = Aggregate::try_new(Arc::new(signed), agg.group_expr.clone(), hidden.clone())?;
    let having = (n_groups > 0).then(|| col(ROWS).gt(lit(0i64)));
    let node = UpdateAggregateNode::try_new(
        inner.input.as_ref().clone(),
        agg.group_expr.clone(),
        hidden,
        Arc::clone(&inner.schema),
        having,
        ttl_ms,
    )?;
    restore_columns(
        LogicalPlan::Extension(Extension { node: Arc::new(node) }),
        &agg.schema,
        outputs,
    )
}

/// The projection over the hidden aggregate that gives back the original
/// aggregate's columns (same qualifiers and names), then `op`.
fn restore_columns(plan: LogicalPlan, original: &DFSchemaRef, outputs: Vec<Expr>) -> Result<LogicalPlan> {
    let schema = Arc::clone(plan.schema());
    let n_groups = original.fields().len() - outputs.len();
    let mut expr: Vec<Expr> = Vec::new();
    for i in 0..n_groups {
        let (q, f) = original.qualified_field(i);
        expr.push(
            Expr::Column(Column::from(schema.qualified_field(i))).alias_qualified(q.cloned(), f.name()),
        );
    }
    for (j, e) in outputs.into_iter().enumerate() {
        let (q, f) = original.qualified_field(n_groups + j);
        expr.push(e.alias_qualified(q.cloned(), f.name()));
    }
    expr.push(col(PLAN_OP_COLUMN));
    Ok(LogicalPlan::Projection(Projection::try_new(
        expr,
        Arc::new(plan),
    )?))
}

fn sum(arg: Expr, filter: Option<Expr>) -> Expr {
    Expr::AggregateFunction(AggregateFunction::new_udf(
        sum_udaf(),
        vec![arg],
        false,
        filter.map(Box::new),
        vec![],
        None,
    ))
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        e => e,
    }
}
