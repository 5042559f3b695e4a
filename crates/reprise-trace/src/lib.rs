//! # reprise-trace — the reprise data contract
//!
//! The four Parquet formats every reprise tool reads and writes (see
//! `docs/formats.md` in the repository):
//!
//! - [`TraceRecord`] — `trace/1.1`, one request of a captured, imported or synthesized trace;
//! - [`ResultRecord`] — `result/1.1`, one replayed request joined to its trace row;
//! - [`GpuSample`] — `gpu/1`, one sample of one GPU;
//! - [`ServerSample`] — `server/1`, one Prometheus sample.
//!
//! Beside them, the JSON files of a run directory as typed structs ([`run`]): `run.json`
//! ([`run::RunInfo`], `run/1`), `events.json` and `monitor.json`.
//!
//! Each record type implements [`Row`], which ties the Rust struct to its Arrow schema
//! (defined once, by the [`record!`] macro). [`DatasetWriter`] streams records to zstd
//! Parquet with part rotation and atomic `*.tmp` → final renames; [`DatasetReader`] opens a
//! file or a directory of parts, checks `reprise.format` and every column's type, and
//! yields batches. [`sessions`] numbers a conversation's turns and derives think times.
//! Errors ([`TraceError`]) name the file and the column or row.
//!
//! This crate depends on no other reprise crate and never on polars.

pub mod column;
pub mod error;
pub mod export;
pub mod formats;
mod guard;
pub mod human;
pub mod inspect;
pub mod reader;
pub mod record;
pub mod run;
pub mod sessions;
pub mod stats;
pub mod time;
pub mod widen;
pub mod writer;

pub use column::{ColumnType, Timestamp};
pub use error::{Result, TraceError};
pub use formats::{GpuSample, ResultRecord, ServerSample, TraceRecord};
pub use reader::{Batches, DatasetInfo, DatasetReader, probe};
pub use record::{ColumnSpec, Row};
pub use writer::{DatasetWriter, Output, WriteSummary, WriterOptions};

#[doc(hidden)]
pub mod __private {
    pub use arrow_array;
}
