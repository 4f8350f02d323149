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
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
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

/// A float key column with every -0.0 made 0.0 (others as they are): the
/// row format tells the two apart by their sign bit, where DataFusion's
/// grouping and hashing take them as one key (as IEEE 754 compares them).
/// A SESSION partitioned by a float split a partition's rows at 0.0 and
/// -0.0 into two sessions, where a batch GROUP BY has one group.
pub fn positive_zero(col: &ArrayRef) -> ArrayRef {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float16Type, Float32Type, Float64Type};
    match col.data_type() {
        DataType::Float64 => Arc::new(
            col.as_primitive::<Float64Type>()
                .unary::<_, Float64Type>(|v| v + 0.0),
        ),
        DataType::Float32 => Arc::new(
            col.as_primitive::<Float32Type>()
                .unary::<_, Float32Type>(|v| v + 0.0),
        ),
        DataType::Float16 => {
            use datafusion::arrow::datatypes::ArrowPrimitiveType;
            let zero = Float16Type::default_value();
            Arc::new(
                col.as_primitive::<Float16Type>()
                    .unary::<_, Float16Type>(|v| v + zero),
            )
        }
        _ => Arc::clone(col),
    }
}

/// Row-format keys to a value (where a group's state is), each key hashed
/// once: an update aggregate looks an epoch's groups up, then moves each to
/// its new place, and a `HashMap<Vec<u8>, _>` hashed every key for both
/// (and all of them again whenever it grew). Here the caller hashes a key
/// once ([`GroupIndex::hash`]) and passes the hash to both steps, and each
/// entry keeps its hash for growing.
#[derive(Default)]
pub struct GroupIndex<V, S = DefaultHashBuilder> {
    table: HashTable<(u64, Box<[u8]>, V)>,
    hasher: S,
}

impl<V: Copy, S: BuildHasher> GroupIndex<V, S> {
    /// The hash of `key`, for the other methods.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The value of `key` (whose hash is `hash`).
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<V> {
        self.table
            .find(hash, |e| e.0 == hash && *e.1 == *key)
            .map(|e| e.2)
    }

    /// Sets the value of `key`, adding the key if new.
    pub fn set(&mut self, hash: u64, key: &[u8], value: V) {
        match self.table.find_mut(hash, |e| e.0 == hash && *e.1 == *key) {
            Some(e) => e.2 = value,
            None => {
                self.table.insert_unique(hash, (hash, key.into(), value), |e| e.0);
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, hash: u64, key: &[u8]) -> Option<V> {
        match self.table.find_entry(hash, |e| e.0 == hash && *e.1 == *key) {
            Ok(e) => Some(e.remove().0.2),
            Err(_) => None,
        }
    }

    /// Room for `more` keys beyond those held.
    pub fn reserve(&mut self, more: usize) {
        self.table.reserve(more, |e| e.0);
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.table.clear();
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
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

    /// Against a `HashMap`, through growth, updates and removals: every
    /// key finds its last value, removed keys find nothing. Also with a
    /// hash of the key's length only, so that keys collide.
    #[test]
    fn a_group_index_keeps_each_keys_last_value() {
        check_group_index(GroupIndex::<(usize, usize)>::default());
        check_group_index(GroupIndex::<(usize, usize), ByLength>::default());
    }

    /// Hashes a key by its length alone.
    #[derive(Default)]
    struct ByLength;

    impl BuildHasher for ByLength {
        type Hasher = LengthHasher;
        fn build_hasher(&self) -> LengthHasher {
            LengthHasher(0)
        }
    }

    struct LengthHasher(u64);

    impl std::hash::Hasher for LengthHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0 = self.0.wrapping_add(bytes.len() as u64);
        }
    }

    fn check_group_index<S: BuildHasher>(mut index: GroupIndex<(usize, usize), S>) {
        let mut model = std::collections::HashMap::new();
        let key = |k: u64| k.to_le_bytes().repeat(1 + (k % 3) as usize);
        for round in 0..4usize {
            for k in 0..2_000u64 {
                if (k + round as u64).is_multiple_of(7) {
                    let h = index.hash(&key(k));
                    assert_eq!(index.remove(h, &key(k)), model.remove(&key(k)));
                } else {
                    let h = index.hash(&key(k));
                    index.set(h, &key(k), (round, k as usize));
                    model.insert(key(k), (round, k as usize));
                }
            }
            assert_eq!(index.len(), model.len());
            for k in 0..2_000u64 {
                let h = index.hash(&key(k));
                assert_eq!(
                    index.get(h, &key(k)),
                    model.get(&key(k)).copied(),
                    "key {k}, round {round}"
                );
            }
        }
        index.clear();
        assert!(index.is_empty());
        let h = index.hash(&key(1));
        assert_eq!(index.get(h, &key(1)), None);
    }
}
