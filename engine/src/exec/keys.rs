//! Row-format keys (Arrow's `RowConverter`) that also work with no columns.
//!
//! Operators compare and index rows by the bytes of Arrow's row format. A
//! `RowConverter` over zero columns cannot tell how many rows it was given
//! (it counts the rows of the first column), so it returns no rows at all,
//! and `rows.row(i)` panics. Zero key columns is an ordinary case: an
//! aggregate without `GROUP BY` keys (`SELECT COUNT(*) FROM t`), a SESSION
//! without `PARTITION BY`, `SELECT DISTINCT` (no aggregate values). Here
//! every row of a zero-column key is the same empty key.

use datafusion::arrow::array::{ArrayRef, NullArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::error::Result;
use std::sync::Arc;

/// Converts key columns to row format; with no columns, every row gets the
/// same (empty) key.
#[derive(Debug)]
pub struct KeyRows {
    converter: RowConverter,
    /// No key columns: one `Null` column stands in for them.
    empty: bool,
}

impl KeyRows {
    /// A converter for columns of these types.
    pub fn new(types: impl IntoIterator<Item = DataType>) -> Result<Self> {
        let mut fields: Vec<SortField> = types.into_iter().map(SortField::new).collect();
        let empty = fields.is_empty();
        if empty {
            fields.push(SortField::new(DataType::Null));
        }
        Ok(Self {
            converter: RowConverter::new(fields)?,
            empty,
        })
    }

    /// The keys of `rows` rows (`columns` must each have `rows` values).
    pub fn convert(&self, columns: &[ArrayRef], rows: usize) -> Result<Rows> {
        if self.empty {
            let nulls: ArrayRef = Arc::new(NullArray::new(rows));
            return Ok(self.converter.convert_columns(&[nulls])?);
        }
        Ok(self.converter.convert_columns(columns)?)
    }

    /// The columns back from row-format keys (bytes that `convert` made);
    /// none for zero key columns.
    pub fn columns_of<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        if self.empty {
            return Ok(vec![]);
        }
        let parser = self.converter.parser();
        let rows: Vec<_> = rows.into_iter().map(|r| parser.parse(r)).collect();
        Ok(self.converter.convert_rows(rows)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn zero_columns_give_one_equal_key_per_row() {
        let k = KeyRows::new([]).unwrap();
        let rows = k.convert(&[], 3).unwrap();
        assert_eq!(rows.num_rows(), 3);
        assert_eq!(rows.row(0), rows.row(2));
        let k = KeyRows::new([DataType::Int64]).unwrap();
        let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 1]));
        let rows = k.convert(&[col], 3).unwrap();
        assert_eq!(rows.row(0), rows.row(2));
        assert_ne!(rows.row(0), rows.row(1));
        let back = k
            .columns_of([rows.row(1).as_ref(), rows.row(0).as_ref()])
            .unwrap();
        assert_eq!(
            back[0].as_ref(),
            &Int64Array::from(vec![2, 1]) as &dyn datafusion::arrow::array::Array
        );
    }
}
