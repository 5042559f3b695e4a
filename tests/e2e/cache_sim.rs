//! Prefix-cache fidelity end to end: a trace whose requests share their first three
//! 512-token blocks is replayed against the simulator (which reports
//! `usage.prompt_tokens_details.cached_tokens` as vLLM does); the result rows carry the
//! counts, and the analyzer's observed hit rate matches what the trace's hashes imply. With
//! a cache said to hold one block, the implied rate falls and the report warns.

use std::path::Path;

use reprise_report::{Options, analyze};
use reprise_trace::writer::META_BLOCK_TOKENS;
use reprise_trace::{
    DatasetReader, DatasetWriter, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions,
};

use crate::support::*;

/// 40 requests, 0.5 s apart, of 4 blocks of 512 tokens: the first three blocks shared by
/// all, the last one each request's own.
fn shared_prefix_trace(path: &Path) {
    let opts = WriterOptions::default().with_meta(META_BLOCK_TOKENS, "512");
    let mut w = DatasetWriter::<TraceRecord>::create(Output::File(path.to_owned()), opts).unwrap();
    for i in 0..40u64 {
        let mut r = TraceRecord::new(
            format!("r{i}"),
            Timestamp::from_secs_f64(1_000.0 + i as f64 * 0.5),
        );
        r.input_tokens = Some(2048);
        r.output_tokens = Some(8);
        r.prefix_hashes = Some(vec![11, 12, 13, 1_000 + i]);
        w.write(&r).unwrap();
    }
    w.close().unwrap();
}

#[test]
fn the_servers_cache_hits_match_what_the_trace_implies() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("shared.parquet");
    shared_prefix_trace(&trace);
    let run = dir.path().join("run");
    ok(&reprise(&[
        "replay",
        s(&trace),
        "--target",
        "sim:llama-8b-h100",
        "--sim-speedup",
        "10",
        "--speed",
        "10",
        "--out",
        s(&run),
    ]));
    let rows = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(rows.len(), 40);
    // Every row carries the server's count; the first request found nothing cached.
    let mut sorted = rows.clone();
    sorted.sort_by_key(|r| r.sent);
    assert!(
        sorted.iter().all(|r| r.n_cached_usage.is_some()),
        "{sorted:?}"
    );
    assert_eq!(sorted[0].n_cached_usage, Some(0));
    let report = analyze(&run, &Options::default()).unwrap();
    let cache = report.cache.clone().expect("cache figures");
    // 39 requests of 40 hit 1,536 of their 2,048 tokens: 73.1%.
    let implied = cache.implied_unbounded.unwrap();
    assert!(
        (implied - 39.0 * 1536.0 / (40.0 * 2048.0)).abs() < 1e-9,
        "{cache:?}"
    );
    let observed = cache.observed.unwrap();
    eprintln!("prefix cache: observed {observed:.4}, implied {implied:.4}");
    assert!((observed - implied).abs() < 0.02, "{cache:?}");
    assert!(cache.warning.is_none(), "{cache:?}");
    assert_eq!(cache.block_tokens, Some(512));
    // The simulator's profile gave the server's cache size (no --cache-blocks): its KV
    // capacity in the trace's 512-token blocks, which holds the whole shared prefix.
    let profile = ok(&reprise(&[
        "sim",
        "--profile",
        "llama-8b-h100",
        "--print-profile",
    ]));
    let profile: serde_json::Value = serde_json::from_str(&profile).unwrap();
    let kv = profile["kv_capacity_tokens"].as_u64().unwrap();
    assert_eq!(cache.cache_blocks, Some(kv / 512), "{cache:?}");
    assert_eq!(cache.implied_lru, cache.implied_unbounded, "{cache:?}");
    // A cache of one block would hold almost nothing of this trace: the report says the
    // replay's hit rate is not what the trace implies.
    let small = analyze(
        &run,
        &Options {
            cache_blocks: Some(1),
            ..Options::default()
        },
    )
    .unwrap();
    let c = small.cache.clone().unwrap();
    assert_eq!(c.implied_lru, Some(0.0), "{c:?}");
    let warning = c.warning.expect("a warning");
    assert!(warning.contains("differs from the trace's"), "{warning}");
    let text = reprise_report::render::terminal(&small, false);
    assert!(text.contains("Prefix cache: server hit rate"), "{text}");
    assert!(text.contains("WARNING"), "{text}");
}
