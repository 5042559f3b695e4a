//! The named public-trace parsers: Azure, Mooncake, BurstGPT.

use std::io::BufRead;
use std::path::Path;

use reprise_trace::time::parse_datetime;
use reprise_trace::{Timestamp, TraceRecord};
use serde_json::Value;

use crate::{ImportError, ParsedRow, RowResult, request_id};

/// What every parser needs besides its input.
pub(crate) struct Context<'a> {
    pub path: &'a Path,
    pub anchor: Timestamp,
    pub model: String,
}

pub(crate) type Sink<'a> = &'a mut dyn FnMut(ParsedRow) -> Result<bool, ImportError>;

/// Lower-case, without spaces, underscores or dashes: `Request tokens` → `requesttokens`.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// A token count: a non-negative integer (an integral float such as `12.0` is accepted).
pub(crate) fn parse_tokens(text: &str, column: &str) -> Result<u32, String> {
    let t = text.trim();
    if let Ok(v) = t.parse::<u32>() {
        return Ok(v);
    }
    match t.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => Ok(f as u32),
        _ => Err(format!("column `{column}`: `{t}` is not a token count")),
    }
}

/// A relative time in `scale` nanoseconds per unit, added to the anchor.
pub(crate) fn relative_time(
    anchor: Timestamp,
    text: &str,
    column: &str,
    ns_per_unit: f64,
) -> Result<Timestamp, String> {
    let t = text.trim();
    let bad = || format!("column `{column}`: `{t}` is not a number");
    let offset = match t.parse::<i64>() {
        Ok(v) => (v as f64 * ns_per_unit).round(),
        Err(_) => t.parse::<f64>().map_err(|_| bad())? * ns_per_unit,
    };
    if !offset.is_finite() || offset.abs() > 9.0e18 {
        return Err(format!("column `{column}`: `{t}` is out of range"));
    }
    Ok(Timestamp(anchor.0.saturating_add(offset.round() as i64)))
}

/// Header positions of a CSV file, by normalized name.
pub(crate) struct Header {
    names: Vec<String>,
}

impl Header {
    pub fn new(record: &csv::StringRecord) -> Self {
        Header {
            names: record.iter().map(normalize).collect(),
        }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        let n = normalize(name);
        self.names.iter().position(|h| *h == n)
    }

    pub fn require(&self, path: &Path, name: &str) -> Result<usize, ImportError> {
        self.find(name).ok_or_else(|| ImportError::Header {
            path: path.to_owned(),
            reason: format!("no column `{name}` in the header"),
        })
    }
}

/// Runs a CSV file: header, then each record through `parse`.
pub(crate) fn csv_rows<P, F>(
    ctx: &Context<'_>,
    reader: impl BufRead,
    sink: Sink<'_>,
    parse: P,
) -> Result<(), ImportError>
where
    P: FnOnce(&Header) -> Result<F, ImportError>,
    F: FnMut(&csv::StringRecord, u64) -> RowResult,
{
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header = match rdr.headers() {
        Ok(h) if !(h.is_empty() || (h.len() == 1 && h[0].is_empty())) => Header::new(h),
        Ok(_) => {
            return Err(ImportError::Header {
                path: ctx.path.to_owned(),
                reason: "empty file: no header row".into(),
            });
        }
        Err(e) => return Err(csv_error(ctx.path, e)),
    };
    let mut row_fn = parse(&header)?;
    let mut index = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                // A malformed record (wrong field count, bad UTF-8) is a bad row.
                let line = e.position().map_or(0, |p| p.line());
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("expected {expected_len} fields, found {len}"),
                    csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_owned(),
                    _ => return Err(csv_error(ctx.path, e)),
                };
                if !sink(ParsedRow {
                    line,
                    row: Err(reason),
                })? {
                    return Ok(());
                }
                continue;
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        let row = row_fn(&record, index);
        if row.is_ok() {
            index += 1;
        }
        if !sink(ParsedRow { line, row })? {
            return Ok(());
        }
    }
}

fn csv_error(path: &Path, e: csv::Error) -> ImportError {
    match e.into_kind() {
        csv::ErrorKind::Io(source) => ImportError::Io {
            path: path.to_owned(),
            source,
        },
        other => ImportError::Header {
            path: path.to_owned(),
            reason: format!("{other:?}"),
        },
    }
}

/// Runs a JSON-lines file: each non-blank line must be a JSON object.
pub(crate) fn json_rows(
    ctx: &Context<'_>,
    reader: impl BufRead,
    sink: Sink<'_>,
    mut parse: impl FnMut(&serde_json::Map<String, Value>, u64) -> RowResult,
) -> Result<(), ImportError> {
    let mut index = 0u64;
    for (n, line) in reader.lines().enumerate() {
        let line_no = n as u64 + 1;
        let line = line.map_err(|e| ImportError::Io {
            path: ctx.path.to_owned(),
            source: e,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(obj)) => parse(&obj, index),
            Ok(_) => Err("not a JSON object".to_owned()),
            Err(e) => Err(format!("not JSON: {e}")),
        };
        if row.is_ok() {
            index += 1;
        }
        if !sink(ParsedRow { line: line_no, row })? {
            break;
        }
    }
    Ok(())
}

pub(crate) fn json_u32(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<u32>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => parse_tokens(&n.to_string(), key).map(Some),
        Some(Value::String(s)) => parse_tokens(s, key).map(Some),
        Some(other) => Err(format!("field `{key}`: `{other}` is not a token count")),
    }
}

pub(crate) fn json_hashes(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<u64>>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| format!("field `{key}`: `{v}` is not a non-negative integer"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!(
            "field `{key}`: `{other}` is not a list of integers"
        )),
    }
}

fn base_record(ctx: &Context<'_>, index: u64, arrival: Timestamp) -> TraceRecord {
    let mut r = TraceRecord::new(request_id(index), arrival);
    r.model = ctx.model.clone();
    r.input_tokens_source = "dataset".to_owned();
    r
}

/// Azure LLM inference traces (2023 and 2024).
pub(crate) fn azure(
    ctx: &Context<'_>,
    reader: impl BufRead,
    sink: Sink<'_>,
) -> Result<(), ImportError> {
    csv_rows(ctx, reader, sink, |h| {
        let t = h.require(ctx.path, "TIMESTAMP")?;
        let i = h.require(ctx.path, "ContextTokens")?;
        let o = h.require(ctx.path, "GeneratedTokens")?;
        Ok(move |rec: &csv::StringRecord, index: u64| {
            let arrival =
                parse_datetime(&rec[t]).map_err(|e| format!("column `TIMESTAMP`: {e}"))?;
            let mut r = base_record(ctx, index, arrival);
            r.input_tokens = Some(parse_tokens(&rec[i], "ContextTokens")?);
            r.output_tokens = Some(parse_tokens(&rec[o], "GeneratedTokens")?);
            Ok(r)
        })
    })
}

/// Mooncake JSONL traces.
pub(crate) fn mooncake(
    ctx: &Context<'_>,
    reader: impl BufRead,
    sink: Sink<'_>,
) -> Result<(), ImportError> {
    json_rows(ctx, reader, sink, |obj, index| {
        let ts = match obj.get("timestamp") {
            Some(Value::Number(n)) => relative_time(ctx.anchor, &n.to_string(), "timestamp", 1e6)?,
            Some(other) => return Err(format!("field `timestamp`: `{other}` is not a number")),
            None => return Err("field `timestamp` is missing".to_owned()),
        };
        let mut r = base_record(ctx, index, ts);
        r.input_tokens =
            Some(json_u32(obj, "input_length")?.ok_or("field `input_length` is missing")?);
        r.output_tokens = json_u32(obj, "output_length")?;
        r.prefix_hashes = json_hashes(obj, "hash_ids")?;
        Ok(r)
    })
}

/// BurstGPT CSV (v1 columns, and v3 with `Session ID` and `Elapsed time`).
pub(crate) fn burstgpt(
    ctx: &Context<'_>,
    reader: impl BufRead,
    sink: Sink<'_>,
) -> Result<(), ImportError> {
    csv_rows(ctx, reader, sink, |h| {
        let t = h.require(ctx.path, "Timestamp")?;
        let i = h.require(ctx.path, "Request tokens")?;
        let o = h.require(ctx.path, "Response tokens")?;
        let model = h.find("Model");
        let log_type = h.find("Log Type");
        let session = h.find("Session ID");
        let elapsed = h.find("Elapsed time");
        Ok(move |rec: &csv::StringRecord, index: u64| {
            let arrival = relative_time(ctx.anchor, &rec[t], "Timestamp", 1e9)?;
            let mut r = base_record(ctx, index, arrival);
            if let Some(m) = model.filter(|&m| !rec[m].is_empty()) {
                r.model = rec[m].to_owned();
            }
            let input = parse_tokens(&rec[i], "Request tokens")?;
            let output = parse_tokens(&rec[o], "Response tokens")?;
            r.input_tokens = Some(input);
            r.output_tokens = Some(output);
            if output == 0 {
                r.failure = Some("burstgpt: zero response tokens (failed request)".to_owned());
            }
            if let Some(l) = log_type.filter(|&l| !rec[l].is_empty()) {
                r.params = Some(serde_json::json!({ "log_type": &rec[l] }).to_string());
            }
            if let Some(s) = session.filter(|&s| !rec[s].is_empty()) {
                r.session_id = Some(rec[s].to_owned());
            }
            if let Some(e) = elapsed.filter(|&e| !rec[e].is_empty()) {
                let secs: f64 = rec[e]
                    .parse()
                    .map_err(|_| format!("column `Elapsed time`: `{}` is not a number", &rec[e]))?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err(format!(
                        "column `Elapsed time`: `{}` is not a duration",
                        &rec[e]
                    ));
                }
                r.e2e_us = Some((secs * 1e6).round() as u64);
            }
            Ok(r)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_header_names() {
        assert_eq!(normalize("Request tokens"), "requesttokens");
        assert_eq!(normalize("\u{feff}Session_ID"), "sessionid");
    }

    #[test]
    fn token_counts_accept_integral_floats_only() {
        assert_eq!(parse_tokens(" 12 ", "c"), Ok(12));
        assert_eq!(parse_tokens("12.0", "c"), Ok(12));
        assert_eq!(
            parse_tokens("-1", "c"),
            Err("column `c`: `-1` is not a token count".into())
        );
        assert!(parse_tokens("1.5", "c").is_err());
        assert!(parse_tokens("NaN", "c").is_err());
    }

    proptest! {
        #[test]
        fn token_parser_never_panics(s in "\\PC{0,20}") {
            let _ = parse_tokens(&s, "c");
            let _ = relative_time(Timestamp(0), &s, "c", 1e9);
        }

        #[test]
        fn token_parser_reads_every_u32(v in any::<u32>()) {
            prop_assert_eq!(parse_tokens(&v.to_string(), "c"), Ok(v));
        }
    }
}
