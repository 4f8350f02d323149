//! Functions Weir adds to DataFusion's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Array, ArrayRef, ArrowNativeTypeOp, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{ArrowNativeType, Decimal128Type, Decimal256Type, DecimalType};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, TimeUnit};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

/// `PROCTIME()`: the processing time, as Flink's processing-time attribute
/// (`TIMESTAMP(3)`, UTC). Its use is as the time of a lookup join
/// (`JOIN t FOR SYSTEM_TIME AS OF o.proc_time`), where what it stands for
/// is "the table as it is when the epoch runs"; the version that was is
/// written in the epoch's offsets entry, so a replay joins the same one. A
/// selected `PROCTIME()` column holds the wall-clock time when the row was
/// processed, which a replayed epoch computes anew (as in Flink, it is not
/// deterministic).
pub fn proctime() -> ScalarUDF {
    ScalarUDF::new_from_impl(ProcTime {
        signature: Signature::nullary(Volatility::Volatile),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ProcTime {
    signature: Signature,
}

impl ScalarUDFImpl for ProcTime {
    fn name(&self) -> &str {
        "proctime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Millisecond, None))
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
            Some(now),
            None,
        )))
    }
}

/// `AVG` of a DECIMAL over a changelog: Weir's rewrite keeps the signed
/// SUM and COUNT (see `planner::retract`) and divides them here, exactly as
/// DataFusion's own decimal AVG does (the sum scaled up to the result's
/// scale, then divided by the count, truncating toward zero), so that the
/// streaming answer is the batch answer to the last digit; Float64 would
/// round it. Called as `__weir_decimal_avg(sum, count, NULL::result_type)`:
/// the third argument only carries the result type, so that the call is
/// complete by its name and arguments (it crosses the wire to a cluster's
/// executors that way).
pub fn decimal_avg() -> ScalarUDF {
    ScalarUDF::new_from_impl(DecimalAvg {
        signature: Signature::any(3, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DecimalAvg {
    signature: Signature,
}

impl DecimalAvg {
    fn average<T: DecimalType>(sum: &ArrayRef, count: &ArrayRef, target: &DataType) -> Result<ArrayRef> {
        let sum_scale = match sum.data_type() {
            DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => *s,
            other => {
                return Err(DataFusionError::Plan(format!(
                    "AVG of a DECIMAL: a sum of type {other}"
                )));
            }
        };
        let (precision, scale) = match target {
            DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (*p, *s),
            other => return Err(DataFusionError::Plan(format!("AVG of a DECIMAL into {other}"))),
        };
        let sum = sum.as_primitive_opt::<T>().ok_or_else(|| {
            DataFusionError::Plan(format!("AVG of a DECIMAL: a sum of type {}", sum.data_type()))
        })?;
        let count = datafusion::arrow::compute::cast(count, &DataType::Int64)?;
        let count = count.as_primitive::<Int64Type>();
        let up = u32::try_from(i16::from(scale) - i16::from(sum_scale)).map_err(|_| {
            DataFusionError::Plan(format!("AVG of a DECIMAL: scale {sum_scale} down to {scale}"))
        })?;
        let ten = T::Native::usize_as(10);
        let factor = ten.pow_checked(up)?;
        let overflow = || DataFusionError::Execution(format!("AVG overflows {target}"));
        let out: PrimitiveArray<T> = sum
            .iter()
            .zip(count.iter())
            .map(|(s, n)| match (s, n) {
                (Some(s), Some(n)) if n > 0 => {
                    let v = s.mul_checked(factor).map_err(|_| overflow())?;
                    let v = v.div_wrapping(T::Native::usize_as(n as usize));
                    T::validate_decimal_precision(v, precision, scale).map_err(|_| overflow())?;
                    Ok(Some(v))
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Arc::new(out.with_data_type(target.clone())))
    }
}

impl ScalarUDFImpl for DecimalAvg {
    fn name(&self) -> &str {
        "__weir_decimal_avg"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [_, _, t @ (DataType::Decimal128(..) | DataType::Decimal256(..))] => Ok(t.clone()),
            _ => Err(DataFusionError::Plan(
                "__weir_decimal_avg takes (sum, count, NULL of the result's DECIMAL type)".into(),
            )),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let target = args.return_field.data_type().clone();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [sum, count, _] = arrays.as_slice() else {
            return Err(DataFusionError::Plan(
                "__weir_decimal_avg takes three arguments".into(),
            ));
        };
        let out = match &target {
            DataType::Decimal128(..) => Self::average::<Decimal128Type>(sum, count, &target)?,
            _ => Self::average::<Decimal256Type>(sum, count, &target)?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `MIN`/`MAX` over a changelog: Weir's rewrite of `MIN(x)`/`MAX(x)` whose
/// input retracts rows (see `planner::retract`), called as
/// `__weir_retract_max(x, sign)` with `sign` +1 for an added row and -1 for
/// a retracted one. Each group keeps its values with their net counts (a
/// multiset, as Flink's retracting MIN/MAX keep theirs), so that retracting
/// the extreme value gives back the next one. State: the distinct values
/// and their counts, as two lists.
pub fn retracting_extreme(max: bool) -> AggregateUDF {
    AggregateUDF::new_from_impl(RetractingExtreme {
        max,
        signature: Signature::any(2, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RetractingExtreme {
    max: bool,
    signature: Signature,
}

impl AggregateUDFImpl for RetractingExtreme {
    fn name(&self) -> &str {
        if self.max {
            "__weir_retract_max"
        } else {
            "__weir_retract_min"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        args.first()
            .cloned()
            .ok_or_else(|| DataFusionError::Plan(format!("{} takes (value, sign)", self.name())))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ExtremeAccumulator {
            max: self.max,
            data_type: args.return_field.data_type().clone(),
            counts: HashMap::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let t = args.return_field.data_type().clone();
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "values"),
                DataType::List(Arc::new(Field::new_list_field(t, true))),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "counts"),
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
                true,
            )),
        ])
    }
}

/// One group's values and their net counts (rows added less rows taken
/// back); a value whose count is not positive is not in the group.
#[derive(Debug)]
struct ExtremeAccumulator {
    max: bool,
    data_type: DataType,
    counts: HashMap<ScalarValue, i64>,
}

impl ExtremeAccumulator {
    fn add(&mut self, value: ScalarValue, n: i64) {
        let c = self.counts.entry(value).or_default();
        *c += n;
        if *c == 0 {
            self.counts.retain(|_, c| *c != 0);
        }
    }
}

impl Accumulator for ExtremeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [v, sign] = values else {
            return Err(DataFusionError::Internal(
                "retracting MIN/MAX takes (value, sign)".into(),
            ));
        };
        let sign = sign.as_primitive::<Int64Type>();
        for i in 0..v.len() {
            if v.is_null(i) || sign.is_null(i) {
                continue;
            }
            self.add(ScalarValue::try_from_array(v, i)?, sign.value(i));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut best: Option<&ScalarValue> = None;
        for (v, _) in self.counts.iter().filter(|(_, c)| **c > 0) {
            best = match best {
                Some(b) if (self.max && v <= b) || (!self.max && v >= b) => Some(b),
                _ => Some(v),
            };
        }
        match best {
            Some(v) => Ok(v.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.counts.keys().map(|k| k.size() + 8).sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (values, counts): (Vec<ScalarValue>, Vec<ScalarValue>) = self
            .counts
            .iter()
            .map(|(v, c)| (v.clone(), ScalarValue::Int64(Some(*c))))
            .unzip();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.data_type)),
            ScalarValue::List(ScalarValue::new_list_nullable(&counts, &DataType::Int64)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [values, counts] = states else {
            return Err(DataFusionError::Internal(
                "retracting MIN/MAX state is (values, counts)".into(),
            ));
        };
        let (values, counts) = (values.as_list::<i32>(), counts.as_list::<i32>());
        for row in 0..values.len() {
            if values.is_null(row) || counts.is_null(row) {
                continue;
            }
            let (v, c) = (values.value(row), counts.value(row));
            let c = c.as_primitive::<Int64Type>();
            for i in 0..v.len() {
                self.add(ScalarValue::try_from_array(&v, i)?, c.value(i));
            }
        }
        Ok(())
    }
}

/// `MIN` and `MAX` as DataFusion's, but for the grouped form over floats,
/// which orders them totally (`f64::total_cmp`: NaN above +inf, -0.0
/// below 0.0), as their ungrouped form and Flink (`Double.compare`) do.
/// DataFusion 55's grouped float MIN/MAX compare with `partial_cmp` and
/// let a NaN replace or be replaced by whatever comes after it
/// (apache/datafusion#24432): `MAX` of 1.0 then NaN was NaN, of NaN then
/// 1.0 was 1.0, so a stream's answer depended on where its epochs cut the
/// input. Registered under DataFusion's names, so every plan (jobs, the
/// shell, `weir query`, a cluster's executors) uses them.
pub fn min_max() -> [AggregateUDF; 2] {
    use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
    [
        AggregateUDF::new_from_impl(TotalOrder {
            inner: min_udaf(),
            max: false,
        }),
        AggregateUDF::new_from_impl(TotalOrder {
            inner: max_udaf(),
            max: true,
        }),
    ]
}

/// Whether `f` is one of [`min_max`].
pub fn is_total_order(f: &AggregateUDF) -> bool {
    let inner: &dyn std::any::Any = f.inner().as_ref();
    inner.is::<TotalOrder>()
}

#[derive(Debug)]
struct TotalOrder {
    inner: Arc<AggregateUDF>,
    max: bool,
}

impl PartialEq for TotalOrder {
    fn eq(&self, other: &Self) -> bool {
        self.max == other.max
    }
}

impl Eq for TotalOrder {}

impl std::hash::Hash for TotalOrder {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.max.hash(state);
    }
}

/// A grouped MIN (or MAX) of one float type, in a total order: a group
/// starts at the greatest (least) value of that order, a NaN with every
/// payload bit set, which any value replaces.
macro_rules! total_order_accumulator {
    ($data_type:expr, $max:expr, $native:ty, $arrow:ty) => {{
        use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;
        let acc: Box<dyn datafusion::logical_expr::GroupsAccumulator> = if $max {
            Box::new(
                PrimitiveGroupsAccumulator::<$arrow, _>::new($data_type, |cur: &mut $native, new: $native| {
                    if new.total_cmp(cur).is_gt() {
                        *cur = new
                    }
                })
                .with_starting_value(<$native>::from_bits(!0)),
            )
        } else {
            Box::new(
                PrimitiveGroupsAccumulator::<$arrow, _>::new($data_type, |cur: &mut $native, new: $native| {
                    if new.total_cmp(cur).is_lt() {
                        *cur = new
                    }
                })
                .with_starting_value(<$native>::from_bits(!0 >> 1)),
            )
        };
        Ok(acc)
    }};
}

impl AggregateUDFImpl for TotalOrder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(acc_args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn datafusion::logical_expr::GroupsAccumulator>> {
        use datafusion::arrow::datatypes::{Float32Type, Float64Type};
        let data_type = args.return_field.data_type().clone();
        match data_type {
            DataType::Float64 => total_order_accumulator!(&data_type, self.max, f64, Float64Type),
            DataType::Float32 => total_order_accumulator!(&data_type, self.max, f32, Float32Type),
            DataType::Float16 => total_order_accumulator!(
                &data_type,
                self.max,
                <datafusion::arrow::datatypes::Float16Type as datafusion::arrow::datatypes::ArrowPrimitiveType>::Native,
                datafusion::arrow::datatypes::Float16Type
            ),
            _ => self.inner.create_groups_accumulator(args),
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }

    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
        self.inner.reverse_udf()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner.is_descending()
    }

    fn value_from_stats(
        &self,
        statistics_args: &datafusion::logical_expr::StatisticsArgs,
    ) -> Option<ScalarValue> {
        // A file's float min/max leave NaN out (apache/datafusion#24804).
        if statistics_args.return_type.is_floating() {
            return None;
        }
        self.inner.value_from_stats(statistics_args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> datafusion::logical_expr::SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }
}
