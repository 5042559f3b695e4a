//! `reprise import`: public traces and generic tables into trace/1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use reprise_import::{ColumnMap, ImportOptions, Source, TimeUnit, import};
use reprise_trace::sessions::TurnLengths;
use reprise_trace::time::parse_datetime;
use reprise_trace::writer::META_BLOCK_TOKENS;
use reprise_trace::{Output, WriterOptions};

use reprise_trace::human::thousands;

/// The input's layout.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Azure LLM inference traces 2023/2024: TIMESTAMP,ContextTokens,GeneratedTokens.
    Azure,
    /// Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids (512-token blocks).
    Mooncake,
    /// BurstGPT CSV: Timestamp (s), Model, Request/Response tokens, Log Type [, Session ID, Elapsed time].
    Burstgpt,
    /// Any CSV with a header row (map columns with --time-col, --input-col, ...).
    Csv,
    /// Any JSON-lines file (map keys with --time-col, --input-col, ...).
    Jsonl,
}

/// How a generic time column is written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Unit {
    /// Seconds (since --anchor, the Unix epoch by default).
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
    /// Date-times such as 2024-05-10 00:00:00.123+00:00 (no offset = UTC).
    Datetime,
}

/// Convert a public trace or a generic table to trace/1 Parquet.
///
/// Bad rows stop the import with their line number and the reason, unless --skip-bad is
/// given; then they are skipped and counted. Rows a source marks as failed (BurstGPT's
/// zero-token rows) are kept, with the `failure` column set.
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  reprise import azure AzureLLMInferenceTrace_conv.csv -o traces/azure-conv.parquet\n  reprise import mooncake synthetic_trace.jsonl -o traces/mooncake.parquet\n  reprise import csv log.csv --time-col ts --time-unit ms --input-col prompt_tokens --output-col completion_tokens -o traces/mine"
)]
pub struct Args {
    /// Input layout.
    kind: Kind,
    /// Input file.
    input: PathBuf,
    /// Output: a `.parquet` file, or a directory of part files.
    #[arg(short, long)]
    output: PathBuf,
    /// Skip bad rows (counted and reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Import at most this many rows.
    #[arg(long)]
    limit: Option<u64>,
    /// Wall-clock time of time zero for relative timestamps (Mooncake, BurstGPT, numeric columns).
    #[arg(long, value_name = "DATETIME")]
    anchor: Option<String>,
    /// Model name for sources that do not record one.
    #[arg(long)]
    model: Option<String>,
    /// Rows per part file (directory output only).
    #[arg(long)]
    part_rows: Option<u64>,
    /// How the input counts a session turn's prompt tokens: `cumulative` (the whole
    /// conversation sent, as an API's usage reports; every built-in source) or `per-turn`
    /// (only the turn's new message: the conversation so far is added, so the trace's
    /// lengths are what the server received).
    #[arg(long, value_enum, value_name = "HOW")]
    turn_lengths: Option<TurnLengthsArg>,
    /// Generic: column (or JSON key) with the arrival time.
    #[arg(
        long,
        default_value = "timestamp",
        help_heading = "Generic csv/jsonl columns"
    )]
    time_col: String,
    /// Generic: how the time is written.
    #[arg(
        long,
        value_enum,
        default_value = "s",
        help_heading = "Generic csv/jsonl columns"
    )]
    time_unit: Unit,
    /// Generic: prompt tokens column ("" for none).
    #[arg(
        long,
        default_value = "input_tokens",
        help_heading = "Generic csv/jsonl columns"
    )]
    input_col: String,
    /// Generic: output tokens column ("" for none).
    #[arg(
        long,
        default_value = "output_tokens",
        help_heading = "Generic csv/jsonl columns"
    )]
    output_col: String,
    /// Generic: model column.
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    model_col: Option<String>,
    /// Generic: session/conversation column.
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    session_col: Option<String>,
    /// Generic: turn number column (turns are numbered in arrival order without it).
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    turn_col: Option<String>,
    /// Generic: request id column (ids are generated otherwise).
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    id_col: Option<String>,
    /// Generic: max_tokens column.
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    max_tokens_col: Option<String>,
    /// Generic: prefix block hashes column (JSON array, or integers separated by ';').
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    hashes_col: Option<String>,
    /// Generic: prompt tokens per prefix hash block (written as reprise.block_tokens).
    #[arg(long, help_heading = "Generic csv/jsonl columns")]
    block_tokens: Option<u32>,
}

/// `--turn-lengths`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TurnLengthsArg {
    Cumulative,
    PerTurn,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Args {
    fn source(&self) -> Source {
        let map = || ColumnMap {
            time: self.time_col.clone(),
            time_unit: match self.time_unit {
                Unit::S => TimeUnit::Seconds,
                Unit::Ms => TimeUnit::Millis,
                Unit::Us => TimeUnit::Micros,
                Unit::Ns => TimeUnit::Nanos,
                Unit::Datetime => TimeUnit::DateTime,
            },
            input: non_empty(&self.input_col),
            output: non_empty(&self.output_col),
            model: self.model_col.clone(),
            session: self.session_col.clone(),
            turn: self.turn_col.clone(),
            request_id: self.id_col.clone(),
            max_tokens: self.max_tokens_col.clone(),
            prefix_hashes: self.hashes_col.clone(),
        };
        match self.kind {
            Kind::Azure => Source::Azure,
            Kind::Mooncake => Source::Mooncake,
            Kind::Burstgpt => Source::BurstGpt,
            Kind::Csv => Source::Csv(map()),
            Kind::Jsonl => Source::Jsonl(map()),
        }
    }

    fn options(&self) -> Result<ImportOptions> {
        let anchor = match &self.anchor {
            Some(text) => Some(
                parse_datetime(text)
                    .map_err(anyhow::Error::msg)
                    .context("--anchor")?,
            ),
            None => None,
        };
        let mut writer = WriterOptions {
            part_max_rows: self.part_rows,
            ..Default::default()
        };
        if let Some(b) = self.block_tokens {
            if b == 0 {
                bail!("--block-tokens must be positive");
            }
            writer = writer.with_meta(META_BLOCK_TOKENS, b.to_string());
        }
        Ok(ImportOptions {
            skip_bad: self.skip_bad,
            limit: self.limit,
            anchor,
            model: self.model.clone(),
            writer,
            progress: None,
            turn_lengths: self.turn_lengths.map(|t| match t {
                TurnLengthsArg::Cumulative => TurnLengths::Cumulative,
                TurnLengthsArg::PerTurn => TurnLengths::PerTurn,
            }),
        })
    }
}

/// Runs the import with a progress bar on the input bytes.
pub fn run(args: Args) -> Result<ExitCode> {
    let source = args.source();
    let mut options = args.options()?;
    let total = std::fs::metadata(&args.input)
        .with_context(|| format!("{}", args.input.display()))?
        .len();
    let counter = Arc::new(AtomicU64::new(0));
    options.progress = Some(counter.clone());
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing {bytes}/{total_bytes} [{bar:30}] {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = std::thread::scope(|scope| {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (bar, counter, done) = (bar.clone(), counter.clone(), done.clone());
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    bar.set_position(counter.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let result = import(
            &source,
            &args.input,
            Output::from_path(&args.output),
            &options,
        );
        done.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        result
    });
    bar.finish_and_clear();
    let summary = summary?;
    println!(
        "imported {} rows from {} to {} ({} file{}, {:.1} s)",
        thousands(summary.rows),
        args.input.display(),
        args.output.display(),
        summary.files.len(),
        if summary.files.len() == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    );
    if summary.marked_failures > 0 {
        println!(
            "kept {} rows the source marks as failed (column `failure`)",
            thousands(summary.marked_failures)
        );
    }
    if summary.skipped > 0 {
        println!(
            "skipped {} bad rows (--skip-bad); the first:",
            thousands(summary.skipped)
        );
        for example in &summary.skipped_examples {
            println!("  {example}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
