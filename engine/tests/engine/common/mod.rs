//! Helpers shared by the engine's integration tests.

use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A sink folder's rows, in the order they were written. A changelog's
/// rows carry `_epoch` and `_seq`: they are checked (each epoch numbered
/// 0, 1, 2, ... without gaps), put in that order, and dropped, so that the
/// rows read are the query's own columns.
pub fn read_sink(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "parquet"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap()).unwrap();
        out.extend(r.build().unwrap().map(|b| b.unwrap()));
    }
    let Some(first) = out.first() else { return out };
    let schema = first.schema();
    let (Ok(e), Ok(s)) = (schema.index_of("_epoch"), schema.index_of("_seq")) else {
        return out;
    };
    let all = concat_batches(&schema, &out).unwrap();
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: all.column(e).clone(),
                options: None,
            },
            SortColumn {
                values: all.column(s).clone(),
                options: None,
            },
        ],
        None,
    )
    .unwrap();
    let all = take_record_batch(&all, &order).unwrap();
    let (epochs, seqs) = (
        all.column(e).as_primitive::<Int64Type>(),
        all.column(s).as_primitive::<Int64Type>(),
    );
    for i in 0..all.num_rows() {
        let expected = if i > 0 && epochs.value(i) == epochs.value(i - 1) {
            seqs.value(i - 1) + 1
        } else {
            0
        };
        assert_eq!(
            seqs.value(i),
            expected,
            "_seq of epoch {} runs 0, 1, 2, ...",
            epochs.value(i)
        );
    }
    let keep: Vec<usize> = (0..all.num_columns()).filter(|&i| i != e && i != s).collect();
    vec![all.project(&keep).unwrap()]
}
