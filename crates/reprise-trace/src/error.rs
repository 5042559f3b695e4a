//! The crate's error type: every message names the file and, where known, the column or row.

use std::path::PathBuf;

/// An error reading or writing a reprise dataset.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// An operating-system error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is too short or lacks the Parquet footer.
    #[error("{}: truncated or not a Parquet file ({detail})", path.display())]
    NotParquet {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The Parquet library failed to decode or encode the file.
    #[error("{}: {message}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// `reprise.format` names another kind of data or a version this build does not read.
    #[error("{}: format `{found}` is not supported (this reprise reads {expected})", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The `reprise.format` value found.
        found: String,
        /// The format that was expected.
        expected: String,
    },
    /// A required column is absent.
    #[error("{}: required column `{column}` is missing", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// A column has a type that cannot be read as the format's type.
    #[error("{}: column `{column}` has type {found}, expected {expected}", path.display())]
    ColumnType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// The type found.
        found: String,
        /// The format's type.
        expected: String,
    },
    /// A value could not be used (null in a required column, overflow in a cast).
    #[error("{}: row {row}: column `{column}`: {reason}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// Row number within the file, counted from 1.
        row: u64,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A directory dataset with no part files.
    #[error("{}: no part files (*.parquet) in this directory", path.display())]
    EmptyDataset {
        /// The directory.
        path: PathBuf,
    },
    /// A JSON file of a run directory (run.json, events.json, monitor.json) that cannot
    /// be written or read as its type.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The writer was used after an earlier failure.
    #[error("{}: writer is closed after an earlier error", path.display())]
    WriterClosed {
        /// The file or directory.
        path: PathBuf,
    },
}

impl TraceError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TraceError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        TraceError::Parquet {
            path: path.into(),
            message: err.to_string(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = TraceError> = std::result::Result<T, E>;
