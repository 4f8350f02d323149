//! The engine's error type.

use datafusion::error::DataFusionError;

/// Errors from running a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the checkpoint, a source or a sink failed.
    #[error(transparent)]
    Storage(#[from] weir_storage::Error),
    /// The SQL cannot be planned.
    #[error(transparent)]
    Sql(#[from] weir_sql::Error),
    /// Bad input data: names the file and the column or line.
    #[error("{0}")]
    Input(String),
    /// A table's options or the job's settings are wrong.
    #[error("{0}")]
    Config(String),
    /// The checkpoint cannot be used by this job.
    #[error("{0}")]
    Checkpoint(String),
    /// Running an epoch's plan failed (a division by zero, a cast, an
    /// internal error): names the epoch and the statement.
    #[error("{0}")]
    Runtime(String),
    /// An error while executing a plan.
    #[error("{}", weir_sql::strip_df(.0))]
    DataFusion(DataFusionError),
}

impl From<DataFusionError> for Error {
    /// Our own errors travel through DataFusion wrapped as `External`; unwrap
    /// them so their messages are not buried.
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(DataFusionError::External(other)),
            },
            DataFusionError::Context(ctx, inner) => match Error::from(*inner) {
                Error::DataFusion(e) => Error::DataFusion(DataFusionError::Context(ctx, Box::new(e))),
                ours => ours,
            },
            e => Error::DataFusion(e),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
