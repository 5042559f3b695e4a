//! `reprise trace`: inspect, validate and export trace/1 datasets.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use reprise_trace::export::{ExportFormat, export};
use reprise_trace::human::thousands;
use reprise_trace::inspect::{Severity, summarize, validate};

/// Inspect, validate or export a trace/1 dataset (a file or a directory of parts).
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Figures of a trace: rows, span, mean rate, inter-arrival CV, index of dispersion of
    /// counts at 1/10/60 s, token percentiles, models, endpoints.
    Inspect {
        /// Dataset path.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read every row and check what types cannot: unique ids, ordered arrivals, known sizes,
    /// prefix hashes consistent with prompt lengths. Exits 1 on errors.
    Validate {
        /// Dataset path.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the trace as CSV or JSON lines (times as RFC 3339 UTC, lists as JSON arrays).
    Export {
        /// Dataset path.
        path: PathBuf,
        /// Output table format.
        #[arg(long, value_enum)]
        to: Format,
        /// Output file (standard output when absent or `-`).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Export table format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Runs a `trace` subcommand.
pub fn run(command: TraceCommand) -> Result<ExitCode> {
    match command {
        TraceCommand::Inspect { path, json } => {
            let summary = summarize(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", path.display());
                print!("{}", summary.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        TraceCommand::Validate { path, json } => {
            let v = validate(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for f in &v.findings {
                    let sev = match f.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    };
                    println!(
                        "{sev}: {}: {} ({} rows; first at row {}, request `{}`)",
                        path.display(),
                        f.message,
                        thousands(f.rows),
                        thousands(f.first.0),
                        f.first.1
                    );
                }
                let errors = v
                    .findings
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .count();
                println!(
                    "{}: {} rows checked, {} error kinds, {} warning kinds",
                    path.display(),
                    thousands(v.rows),
                    errors,
                    v.findings.len() - errors
                );
            }
            Ok(if v.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        TraceCommand::Export { path, to, output } => {
            let format = match to {
                Format::Csv => ExportFormat::Csv,
                Format::Jsonl => ExportFormat::Jsonl,
            };
            let mut out: Box<dyn Write> = match output.as_deref() {
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                Some(p) if p.as_os_str() == "-" => {
                    Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
                }
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
                )),
            };
            let rows = export(&path, format, &mut out)?;
            if let Some(p) = output.filter(|p| p.as_os_str() != "-") {
                eprintln!("exported {} rows to {}", thousands(rows), p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
