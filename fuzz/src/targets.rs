//! What each fuzz target does with its input, in one place: the cargo-fuzz binaries in
//! `fuzz_targets/` call these, and the workspace's test suite runs them over every file of
//! the committed seeds (`fuzz/seeds/<target>/`), crashes found earlier included, so a
//! parser that regresses fails the README's test command, not only a fuzzing session.
//!
//! Every function must return normally on any input: errors are values, never panics.

use std::io::Cursor;
use std::path::Path;

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by name (the seed folder's name).
pub const TARGETS: [(&str, Target); 8] = [
    ("parse_datetime", parse_datetime),
    ("import_rows", import_rows),
    ("read_parquet", read_parquet),
    ("prom_text", prom_text),
    ("sse_chunks", sse_chunks),
    ("request_json", request_json),
    ("h1_response", h1_response),
    ("h1_request", h1_request),
];

/// The UTC date-time parser (importers, `--anchor`): accepted input round-trips.
pub fn parse_datetime(data: &[u8]) {
    use reprise_trace::time::{format_rfc3339, parse_datetime};
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = parse_datetime(text)
    {
        assert_eq!(parse_datetime(&format_rfc3339(t)), Ok(t));
    }
}

/// Every importer (Azure, Mooncake, BurstGPT, generic CSV and JSONL) on the same bytes.
pub fn import_rows(data: &[u8]) {
    use reprise_import::{ColumnMap, ImportOptions, Source, TimeUnit, parse_all};
    let map = ColumnMap {
        time_unit: TimeUnit::DateTime,
        ..ColumnMap::default()
    };
    for source in [
        Source::Azure,
        Source::Mooncake,
        Source::BurstGpt,
        Source::Csv(ColumnMap::default()),
        Source::Jsonl(map),
    ] {
        let _ = parse_all(
            &source,
            Path::new("fuzz"),
            Cursor::new(data),
            &ImportOptions::default(),
        );
    }
}

/// The checked trace/1 reader on a file of these bytes.
pub fn read_parquet(data: &[u8]) {
    use reprise_trace::{DatasetReader, TraceRecord};
    let dir = std::env::temp_dir().join(format!(
        "reprise-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("x.parquet");
    if std::fs::write(&path, data).is_ok()
        && let Ok(reader) = DatasetReader::<TraceRecord>::open(&path)
    {
        let _ = reader.read_all();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the monitor reads from scraped endpoints: the Prometheus text format, and the
/// DCGM series turned into gpu/1 rows.
pub fn prom_text(data: &[u8]) {
    use reprise_monitor::gpu::from_dcgm;
    use reprise_monitor::prom::parse;
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(samples) = parse(text)
    {
        for s in &samples {
            let _ = s.labels_json();
        }
        let _ = from_dcgm(&samples, reprise_trace::Timestamp(0), "h");
    }
}

/// What the replayer and the proxy read from servers: the SSE parser (input split at the
/// point its first byte names) and `chunk_facts` on every event.
pub fn sse_chunks(data: &[u8]) {
    use reprise_protocol::openai::{ChunkReader, chunk_facts, chunk_facts_serde};
    use reprise_protocol::sse::SseParser;
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut parser = SseParser::new();
    let mut reader = ChunkReader::new();
    for part in [&data[..split], &data[split..]] {
        let _ = parser.feed(part, |event| {
            // The fast paths must answer exactly as serde does: one chunk alone, and a
            // stream's reader comparing each chunk with the one before.
            let serde = chunk_facts_serde(&event.data).ok();
            assert_eq!(chunk_facts(&event.data).ok(), serde, "{:?}", event.data);
            assert_eq!(reader.facts(&event.data).ok(), serde, "{:?}", event.data);
        });
    }
}

/// What the capture proxy reads from clients: a request body, parsed for both APIs and
/// turned into a trace/1 row (prompt tokenized, prefix blocks hashed).
pub fn request_json(data: &[u8]) {
    use reprise_protocol::openai::{Api, GenerationRequest};
    use reprise_record::observe::{Exchange, ObserveOptions, to_record};
    for api in [Api::Chat, Api::Completions] {
        let _ = GenerationRequest::parse(api, data);
    }
    let options = ObserveOptions {
        block_tokens: 16,
        record_content: false,
        salt: reprise_record::salt::Salt::from_bytes(b"fuzz"),
    };
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let x = Exchange {
            request_id: "fuzz".into(),
            path: path.into(),
            body: Some(bytes::Bytes::copy_from_slice(data)),
            status: 200,
            ..Exchange::default()
        };
        let _ = to_record(x, &options, false);
    }
}

/// What the replayer's lean HTTP/1.1 client reads from servers: a response head and its
/// body (content-length, chunked or until close), arriving in two reads split at the point
/// the first byte names.
pub fn h1_response(data: &[u8]) {
    let split = data.first().map_or(0, |&b| b as usize);
    let rest = data.get(1..).unwrap_or_default();
    let _ = reprise_replay::h1::parse_response(rest, split);
}

/// What the capture proxy's own server reads from clients: a request head, with a head
/// limit the first byte names. A head it serves lies within the input and within the
/// limit, and parses the same on its own.
pub fn h1_request(data: &[u8]) {
    let max = data.first().map_or(64, |&b| 64 + 16 * b as usize);
    let rest = data.get(1..).unwrap_or_default();
    if let Some(len) = reprise_record::parse_request_head(rest, max) {
        assert!(len <= rest.len() && len <= max, "{len} of {}", rest.len());
        assert_eq!(
            reprise_record::parse_request_head(&rest[..len], max),
            Some(len)
        );
    }
}
