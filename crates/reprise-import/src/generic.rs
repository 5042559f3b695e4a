//! Generic CSV and JSON-lines tables, mapped to trace/1 by column names.

use std::io::BufRead;

use reprise_trace::time::parse_datetime;
use reprise_trace::{Timestamp, TraceRecord};
use serde_json::Value;

use crate::sources::{
    Context, Sink, csv_rows, json_hashes, json_rows, json_u32, parse_tokens, relative_time,
};
use crate::{ImportError, request_id};

/// How the time column is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeUnit {
    /// Numbers of seconds (since the anchor, the epoch by default).
    #[default]
    Seconds,
    /// Numbers of milliseconds.
    Millis,
    /// Numbers of microseconds.
    Micros,
    /// Numbers of nanoseconds.
    Nanos,
    /// Date-times such as `2024-05-10 00:00:00.123+00:00` (naive = UTC).
    DateTime,
}

impl TimeUnit {
    fn ns_per_unit(self) -> f64 {
        match self {
            TimeUnit::Seconds => 1e9,
            TimeUnit::Millis => 1e6,
            TimeUnit::Micros => 1e3,
            TimeUnit::Nanos => 1.0,
            TimeUnit::DateTime => 0.0,
        }
    }
}

/// Which input columns (CSV header names or JSON keys) hold which trace/1 fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMap {
    /// Arrival time (required).
    pub time: String,
    /// How the time is written.
    pub time_unit: TimeUnit,
    /// Prompt tokens.
    pub input: Option<String>,
    /// Output tokens.
    pub output: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// Session or conversation key.
    pub session: Option<String>,
    /// Turn number within the session (rows are numbered in arrival order without it).
    pub turn: Option<String>,
    /// Request id (generated when absent).
    pub request_id: Option<String>,
    /// Requested `max_tokens`.
    pub max_tokens: Option<String>,
    /// Prefix block hashes: a JSON array, or integers separated by `;` or spaces in CSV.
    pub prefix_hashes: Option<String>,
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap {
            time: "timestamp".into(),
            time_unit: TimeUnit::Seconds,
            input: Some("input_tokens".into()),
            output: Some("output_tokens".into()),
            model: None,
            session: None,
            turn: None,
            request_id: None,
            max_tokens: None,
            prefix_hashes: None,
        }
    }
}

fn parse_time(ctx: &Context<'_>, map: &ColumnMap, text: &str) -> Result<Timestamp, String> {
    match map.time_unit {
        TimeUnit::DateTime => {
            parse_datetime(text).map_err(|e| format!("column `{}`: {e}", map.time))
        }
        unit => relative_time(ctx.anchor, text, &map.time, unit.ns_per_unit()),
    }
}

fn parse_turn(text: &str, column: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err(format!("column `{column}`: turns are counted from 1")),
        Ok(t) => Ok(t),
        Err(_) => Err(format!("column `{column}`: `{text}` is not a turn number")),
    }
}

fn parse_hash_list(text: &str, column: &str) -> Result<Vec<u64>, String> {
    let t = text.trim();
    if t.starts_with('[') {
        let v: Vec<u64> = serde_json::from_str(t)
            .map_err(|_| format!("column `{column}`: `{t}` is not a list of integers"))?;
        return Ok(v);
    }
    t.split([';', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("column `{column}`: `{s}` is not a non-negative integer"))
        })
        .collect()
}

/// The value and column name of a mapped column, when it is mapped and not empty.
fn present<'r>(
    rec: &'r csv::StringRecord,
    column: &'r Option<(usize, String)>,
) -> Option<(&'r str, &'r str)> {
    column
        .as_ref()
        .filter(|(i, _)| !rec[*i].is_empty())
        .map(|(i, n)| (&rec[*i], n.as_str()))
}

/// A generic CSV table.
pub(crate) fn csv(
    ctx: &Context<'_>,
    map: &ColumnMap,
    reader: impl BufRead,
    sink: Sink<'_>,
) -> Result<(), ImportError> {
    csv_rows(ctx, reader, sink, |h| {
        let opt = |name: &Option<String>| -> Result<Option<(usize, String)>, ImportError> {
            name.as_ref()
                .map(|n| h.require(ctx.path, n).map(|i| (i, n.clone())))
                .transpose()
        };
        let t = h.require(ctx.path, &map.time)?;
        let input = opt(&map.input)?;
        let output = opt(&map.output)?;
        let model = opt(&map.model)?;
        let session = opt(&map.session)?;
        let turn = opt(&map.turn)?;
        let id = opt(&map.request_id)?;
        let max_tokens = opt(&map.max_tokens)?;
        let hashes = opt(&map.prefix_hashes)?;
        Ok(move |rec: &csv::StringRecord, index: u64| {
            let arrival = parse_time(ctx, map, &rec[t])?;
            let mut r = TraceRecord::new(request_id(index), arrival);
            r.model = ctx.model.clone();
            r.input_tokens_source = "dataset".to_owned();
            let present = |c| present(rec, c);
            if let Some((v, _)) = present(&id) {
                r.request_id = v.to_owned();
            }
            if let Some((v, n)) = present(&input) {
                r.input_tokens = Some(parse_tokens(v, n)?);
            }
            if let Some((v, n)) = present(&output) {
                r.output_tokens = Some(parse_tokens(v, n)?);
            }
            if let Some((v, n)) = present(&max_tokens) {
                r.max_tokens = Some(parse_tokens(v, n)?);
            }
            if let Some((v, _)) = present(&model) {
                r.model = v.to_owned();
            }
            if let Some((v, _)) = present(&session) {
                r.session_id = Some(v.to_owned());
            }
            if let Some((v, n)) = present(&turn) {
                r.turn = Some(parse_turn(v, n)?);
            }
            if let Some((v, n)) = present(&hashes) {
                r.prefix_hashes = Some(parse_hash_list(v, n)?);
            }
            Ok(r)
        })
    })
}

fn json_string(obj: &serde_json::Map<String, Value>, key: &Option<String>) -> Option<String> {
    match obj.get(key.as_deref()?)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A generic JSON-lines table.
pub(crate) fn jsonl(
    ctx: &Context<'_>,
    map: &ColumnMap,
    reader: impl BufRead,
    sink: Sink<'_>,
) -> Result<(), ImportError> {
    json_rows(ctx, reader, sink, |obj, index| {
        let time_text = match obj.get(&map.time) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => return Err(format!("field `{}`: `{other}` is not a time", map.time)),
            None => return Err(format!("field `{}` is missing", map.time)),
        };
        let arrival = parse_time(ctx, map, &time_text)?;
        let mut r = TraceRecord::new(request_id(index), arrival);
        r.model = ctx.model.clone();
        r.input_tokens_source = "dataset".to_owned();
        if let Some(id) = json_string(obj, &map.request_id) {
            r.request_id = id;
        }
        if let Some(k) = &map.input {
            r.input_tokens = json_u32(obj, k)?;
        }
        if let Some(k) = &map.output {
            r.output_tokens = json_u32(obj, k)?;
        }
        if let Some(k) = &map.max_tokens {
            r.max_tokens = json_u32(obj, k)?;
        }
        if let Some(m) = json_string(obj, &map.model) {
            r.model = m;
        }
        r.session_id = json_string(obj, &map.session);
        if let Some(k) = &map.turn {
            r.turn = json_u32(obj, k)?;
            if r.turn == Some(0) {
                return Err(format!("field `{k}`: turns are counted from 1"));
            }
        }
        if let Some(k) = &map.prefix_hashes {
            r.prefix_hashes = json_hashes(obj, k)?;
        }
        Ok(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_lists_in_csv_cells() {
        assert_eq!(parse_hash_list("[1, 2, 3]", "h"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_hash_list("1;2 3", "h"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_hash_list("", "h"), Ok(vec![]));
        assert_eq!(
            parse_hash_list("1;x", "h"),
            Err("column `h`: `x` is not a non-negative integer".into())
        );
    }
}
