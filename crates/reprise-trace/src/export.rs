//! `trace export`: a trace/1 dataset as CSV or JSON lines, for people who want no Parquet.
//!
//! Times are RFC 3339 UTC with nanoseconds; lists are JSON arrays (also inside CSV cells);
//! nulls are empty CSV cells and JSON `null`.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::TraceRecord;
use crate::error::{Result, TraceError};
use crate::reader::DatasetReader;
use crate::record::Row;
use crate::time::format_rfc3339;

/// Output table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

fn to_json(r: &TraceRecord) -> Vec<(&'static str, Value)> {
    vec![
        ("request_id", json!(r.request_id)),
        ("arrival", json!(format_rfc3339(r.arrival))),
        ("session_id", json!(r.session_id)),
        ("model", json!(r.model)),
        ("endpoint", json!(r.endpoint)),
        ("stream", json!(r.stream)),
        ("input_tokens", json!(r.input_tokens)),
        ("input_tokens_source", json!(r.input_tokens_source)),
        ("output_tokens", json!(r.output_tokens)),
        ("max_tokens", json!(r.max_tokens)),
        ("prefix_hashes", json!(r.prefix_hashes)),
        ("params", json!(r.params)),
        ("status", json!(r.status)),
        ("ttft_us", json!(r.ttft_us)),
        ("e2e_us", json!(r.e2e_us)),
        ("itl_us", json!(r.itl_us)),
        ("failure", json!(r.failure)),
        ("prompt", json!(r.prompt)),
        ("completion", json!(r.completion)),
        ("turn", json!(r.turn)),
        ("think_us", json!(r.think_us)),
    ]
}

fn csv_cell(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Writes every row of the dataset at `path` to `out`; returns the number of rows.
pub fn export(path: &Path, format: ExportFormat, out: &mut dyn Write) -> Result<u64> {
    let reader = DatasetReader::<TraceRecord>::open(path)?;
    let io = |e| TraceError::io("<output>", e);
    if format == ExportFormat::Csv {
        let names: Vec<String> = TraceRecord::columns().into_iter().map(|c| c.name).collect();
        writeln!(out, "{}", names.join(",")).map_err(io)?;
    }
    let mut rows = 0;
    for batch in reader.batches() {
        for r in batch? {
            let fields = to_json(&r);
            match format {
                ExportFormat::Csv => {
                    let cells: Vec<String> = fields.iter().map(|(_, v)| csv_cell(v)).collect();
                    writeln!(out, "{}", cells.join(",")).map_err(io)?;
                }
                ExportFormat::Jsonl => {
                    let obj: serde_json::Map<String, Value> =
                        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    writeln!(out, "{}", Value::Object(obj)).map_err(io)?;
                }
            }
            rows += 1;
        }
    }
    out.flush().map_err(io)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        assert_eq!(csv_cell(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_cell(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell(&json!([1, 2])), "\"[1,2]\"");
        assert_eq!(csv_cell(&Value::Null), "");
        assert_eq!(csv_cell(&json!(12)), "12");
    }

    #[test]
    fn export_columns_follow_the_schema() {
        let r = TraceRecord::new("x", crate::Timestamp(0));
        let names: Vec<_> = to_json(&r).into_iter().map(|(k, _)| k.to_owned()).collect();
        let schema: Vec<_> = TraceRecord::columns().into_iter().map(|c| c.name).collect();
        assert_eq!(names, schema);
    }
}
