//! # reprise-import — public LLM-serving traces into trace/1
//!
//! Each source is a parser that turns one input file into [`TraceRecord`]s:
//!
//! - [`Source::Azure`] — Azure LLM inference traces 2023/2024 (`TIMESTAMP`, `ContextTokens`,
//!   `GeneratedTokens`; naive timestamps read as UTC, or with `+00:00`);
//! - [`Source::Mooncake`] — Mooncake JSONL (`timestamp` ms, `input_length`,
//!   `output_length`, `hash_ids` of 512-token blocks, kept as `prefix_hashes`);
//! - [`Source::BurstGpt`] — BurstGPT CSV (v1 and the v3 form with `Session ID` and
//!   `Elapsed time`); zero-token failure rows are kept and marked in `failure`;
//! - [`Source::Csv`] / [`Source::Jsonl`] — any other table, through a [`ColumnMap`].
//!
//! Rows of a session (a `session_id`) are numbered and get their think time as they are
//! read ([`reprise_trace::sessions::SessionTracker`]); each source declares whether its
//! prompt lengths are cumulative or per turn ([`Source::turn_lengths`]; per-turn lengths
//! are made cumulative, the trace's convention).
//!
//! [`import`] runs a source into a [`DatasetWriter`]. A bad row stops the import with its
//! line number and the reason ([`ImportError::Row`]), or, with
//! [`ImportOptions::skip_bad`], is skipped and counted in the [`ImportSummary`]. Nothing is
//! dropped silently.

mod generic;
mod sources;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reprise_trace::sessions::{SessionTracker, TurnLengths};
use reprise_trace::writer::{META_BLOCK_TOKENS, META_SOURCE};
use reprise_trace::{
    DatasetWriter, Output, Timestamp, TraceError, TraceRecord, WriteSummary, WriterOptions,
};

pub use generic::{ColumnMap, TimeUnit};

/// Which parser reads the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Azure LLM inference trace CSV.
    Azure,
    /// Mooncake JSONL.
    Mooncake,
    /// BurstGPT CSV.
    BurstGpt,
    /// Any CSV with a header row.
    Csv(ColumnMap),
    /// Any JSON-lines file.
    Jsonl(ColumnMap),
}

impl Source {
    /// The short name written to `reprise.source`.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Azure => "azure",
            Source::Mooncake => "mooncake",
            Source::BurstGpt => "burstgpt",
            Source::Csv(_) => "csv",
            Source::Jsonl(_) => "jsonl",
        }
    }

    /// How the source counts a turn's prompt tokens. BurstGPT's `Request tokens` are the
    /// API's prompt tokens (Azure OpenAI's `usage`), which hold the whole conversation sent:
    /// cumulative. Azure and Mooncake have no sessions. Generic tables say so with
    /// [`ImportOptions::turn_lengths`] (cumulative unless told).
    pub fn turn_lengths(&self) -> TurnLengths {
        TurnLengths::Cumulative
    }
}

/// Options common to every source.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Skip bad rows (counted and reported) instead of failing on the first one.
    pub skip_bad: bool,
    /// Stop after this many imported rows.
    pub limit: Option<u64>,
    /// Wall-clock instant of time zero for sources with relative times (Mooncake,
    /// BurstGPT, numeric generic columns); default the Unix epoch.
    pub anchor: Option<Timestamp>,
    /// Model name for sources that do not give one.
    pub model: Option<String>,
    /// Options of the output writer (metadata is added to them).
    pub writer: WriterOptions,
    /// Bytes of input read so far, updated as the import goes (for progress bars).
    pub progress: Option<Arc<AtomicU64>>,
    /// How the input counts a session turn's prompt tokens, when it differs from the
    /// source's own ([`Source::turn_lengths`]).
    pub turn_lengths: Option<TurnLengths>,
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    counter: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &self.counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportSummary {
    /// Rows written.
    pub rows: u64,
    /// Bad rows skipped (only with `skip_bad`).
    pub skipped: u64,
    /// The first few skipped rows' messages.
    pub skipped_examples: Vec<String>,
    /// Rows kept but marked as failures by the source (e.g. BurstGPT zero-token rows).
    pub marked_failures: u64,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// An import error: every message names the file, and the line where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The input file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header lacks a column the source needs, or the file is empty.
    #[error("{}: {reason}", path.display())]
    Header {
        /// The input file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// One row is bad.
    #[error("{}:{line}: {reason}", path.display())]
    Row {
        /// The input file.
        path: PathBuf,
        /// Line number, counted from 1 (the header is line 1 in CSV files).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Output(#[from] TraceError),
}

/// One parsed row, or why it is bad.
pub(crate) type RowResult = Result<TraceRecord, String>;

/// A parsed input row: its line number and the record or the reason it is bad.
pub(crate) struct ParsedRow {
    pub line: u64,
    pub row: RowResult,
}

/// Reads `input` with `source` and writes trace/1 to `output`.
pub fn import(
    source: &Source,
    input: &Path,
    output: Output,
    options: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let file = File::open(input).map_err(|e| ImportError::Io {
        path: input.to_owned(),
        source: e,
    })?;
    let reader = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            counter: options.progress.clone(),
        },
    );
    let mut writer_options = options
        .writer
        .clone()
        .with_meta(META_SOURCE, source.name())
        .with_meta(
            "reprise.source_file",
            input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    if matches!(source, Source::Mooncake) {
        writer_options = writer_options.with_meta(META_BLOCK_TOKENS, "512");
    }
    let mut writer = DatasetWriter::<TraceRecord>::create(output, writer_options)?;
    let mut summary = ImportSummary::default();
    let result = run_rows(source, input, reader, options, &mut |parsed| {
        let record = match parsed.row {
            Ok(r) => r,
            Err(reason) if options.skip_bad => {
                summary.skipped += 1;
                if summary.skipped_examples.len() < 5 {
                    summary.skipped_examples.push(format!(
                        "{}:{}: {reason}",
                        input.display(),
                        parsed.line
                    ));
                }
                return Ok(true);
            }
            Err(reason) => {
                return Err(ImportError::Row {
                    path: input.to_owned(),
                    line: parsed.line,
                    reason,
                });
            }
        };
        if record.failure.is_some() {
            summary.marked_failures += 1;
        }
        writer.write(&record)?;
        summary.rows += 1;
        Ok(options.limit.is_none_or(|l| summary.rows < l))
    });
    match result {
        Ok(()) => {
            let WriteSummary { files, .. } = writer.close()?;
            summary.files = files;
            Ok(summary)
        }
        Err(e) => {
            writer.abort();
            Err(e)
        }
    }
}

/// Parses every row of `reader` and hands it to `sink`, which returns whether to go on.
fn run_rows(
    source: &Source,
    path: &Path,
    reader: impl std::io::BufRead,
    options: &ImportOptions,
    sink: &mut dyn FnMut(ParsedRow) -> Result<bool, ImportError>,
) -> Result<(), ImportError> {
    let ctx = sources::Context {
        path,
        anchor: options.anchor.unwrap_or_default(),
        model: options.model.clone().unwrap_or_default(),
    };
    // Every good row is numbered within its session before the sink sees it.
    let mut sessions = SessionTracker::new(
        options
            .turn_lengths
            .unwrap_or_else(|| source.turn_lengths()),
    );
    let sink = &mut |mut parsed: ParsedRow| {
        if let Ok(r) = &mut parsed.row {
            sessions.observe(r);
        }
        sink(parsed)
    };
    match source {
        Source::Azure => sources::azure(&ctx, reader, sink),
        Source::Mooncake => sources::mooncake(&ctx, reader, sink),
        Source::BurstGpt => sources::burstgpt(&ctx, reader, sink),
        Source::Csv(map) => generic::csv(&ctx, map, reader, sink),
        Source::Jsonl(map) => generic::jsonl(&ctx, map, reader, sink),
    }
}

/// Parses rows from any reader into memory (for tests and small inputs).
pub fn parse_all(
    source: &Source,
    path: &Path,
    reader: impl std::io::BufRead,
    options: &ImportOptions,
) -> Result<Vec<TraceRecord>, ImportError> {
    let mut out = Vec::new();
    run_rows(
        source,
        path,
        reader,
        options,
        &mut |parsed| match parsed.row {
            Ok(r) => {
                out.push(r);
                Ok(true)
            }
            Err(reason) => Err(ImportError::Row {
                path: path.to_owned(),
                line: parsed.line,
                reason,
            }),
        },
    )?;
    Ok(out)
}

/// The id of the `index`-th imported row.
pub(crate) fn request_id(index: u64) -> String {
    format!("{index:08}")
}
