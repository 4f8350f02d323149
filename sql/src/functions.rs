//! Functions Weir adds to DataFusion's.

use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
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
