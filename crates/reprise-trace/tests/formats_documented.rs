//! `docs/formats.md` documents every column of every Parquet format and every field of the
//! run directory's JSON files: a column or field added without its line in the docs fails
//! here, naming it.

use std::collections::BTreeSet;

use reprise_trace::run::{EventRecord, RunInfo};
use reprise_trace::{GpuSample, ResultRecord, Row, ServerSample, TraceRecord};
use serde_json::Value;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/formats.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the section whose heading starts with `## {title}`, to the next `## `.
fn section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n## {title}"))
        .unwrap_or_else(|| panic!("docs/formats.md has no section `## {title}`"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

fn undocumented(names: impl IntoIterator<Item = String>, text: &str) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !text.contains(&format!("`{n}`")))
        .collect()
}

fn columns<R: Row>() -> Vec<String> {
    R::columns()
        .into_iter()
        .map(|c| c.name.to_owned())
        .collect()
}

#[test]
fn every_column_of_every_format_is_documented() {
    let doc = doc();
    let trace = section(&doc, "trace/1");
    assert_eq!(
        undocumented(columns::<TraceRecord>(), &trace),
        Vec::<String>::new(),
        "trace/1"
    );
    // result/1 repeats trace/1's columns (documented there) and adds its own.
    let result = section(&doc, "result/1");
    let own: Vec<String> = columns::<ResultRecord>()
        .into_iter()
        .filter(|c| !columns::<TraceRecord>().contains(c) || result.contains(&format!("`{c}`")))
        .collect();
    assert_eq!(undocumented(own, &result), Vec::<String>::new(), "result/1");
    let gpu = section(&doc, "gpu/1");
    assert_eq!(
        undocumented(columns::<GpuSample>(), &gpu),
        Vec::<String>::new(),
        "gpu/1"
    );
    let server = section(&doc, "server/1");
    assert_eq!(
        undocumented(columns::<ServerSample>(), &server),
        Vec::<String>::new(),
        "server/1"
    );
}

/// Every key of a JSON value, objects and arrays of objects walked.
fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                // Keys that are data (error classes), not fields.
                if k != "timeout" {
                    out.insert(k.clone());
                }
                keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| keys(i, out)),
        _ => {}
    }
}

fn fields_of<T: serde::Serialize>(value: &T) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    keys(&serde_json::to_value(value).unwrap(), &mut out);
    out
}

#[test]
fn every_field_of_the_json_files_is_documented() {
    let doc = doc();
    let run = section(&doc, "run.json");
    // `summary.events` and `summary.monitor` are documented in their files' sections.
    let mut info = RunInfo::example();
    info.summary.events.clear();
    info.summary.monitor = None;
    assert_eq!(
        undocumented(fields_of(&info), &run),
        Vec::<String>::new(),
        "run.json (run/1)"
    );
    let events = section(&doc, "events.json");
    assert_eq!(
        undocumented(fields_of(&vec![EventRecord::default()]), &events),
        Vec::<String>::new(),
        "events.json"
    );
    let monitor = section(&doc, "monitor.json");
    let example = RunInfo::example().summary.monitor.unwrap_or_default();
    assert_eq!(
        undocumented(fields_of(&example), &monitor),
        Vec::<String>::new(),
        "monitor.json"
    );
}

#[test]
fn the_checker_sees_a_missing_name() {
    let text = "| `a` | x |";
    assert_eq!(undocumented(["a".to_owned(), "b".to_owned()], text), ["b"]);
    assert_eq!(section("x\n## one\nA\n## two\nB", "one"), "## one\nA");
}
