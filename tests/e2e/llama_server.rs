//! Against a real server none of us wrote: llama.cpp's `llama-server` with a tiny random
//! model (built by `scripts/setup-llama-server` into `$LLMSRV_DIR`, default
//! `~/.cache/llmsrv`). Without it the test says so and passes, unless
//! `REPRISE_REQUIRE_LLAMA_SERVER=1` (set by `.ci/run` once the setup succeeded).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reprise_trace::{DatasetReader, ResultRecord};

use crate::support::*;

struct LlamaServer {
    child: Child,
    base: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn llama_dir() -> PathBuf {
    std::env::var_os("LLMSRV_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/llmsrv")))
        .unwrap_or_default()
}

/// Starts llama-server on a free port; `None` when it is not built here.
fn start() -> Option<LlamaServer> {
    let dir = llama_dir();
    let (bin, model) = (
        dir.join("build/bin/llama-server"),
        dir.join("tiny-spm-16k.gguf"),
    );
    if !bin.is_file() || !model.is_file() {
        let required = std::env::var("REPRISE_REQUIRE_LLAMA_SERVER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{} or {} is missing: run scripts/setup-llama-server",
            bin.display(),
            model.display()
        );
        eprintln!(
            "SKIPPED: no llama-server under {} (run scripts/setup-llama-server)",
            dir.display()
        );
        return None;
    }
    // -t 1: with two threads its throughput collapses whenever the other core is busy.
    let mut child = Command::new(&bin)
        .args(["-m", model.to_str().expect("utf-8 path"), "-a", "tiny"])
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["-np", "8", "-c", "131072", "-t", "1", "--metrics"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llama-server starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("llama-server listens within a minute");
    Some(LlamaServer { child, base })
}

fn replay(server: &LlamaServer, out: &std::path::Path, extra: &[&str]) -> Vec<ResultRecord> {
    let mut args = vec![
        "replay",
        "traces/azure-conv-2023.parquet",
        "--target",
        &server.base,
        "--backend",
        "llamacpp",
        "--tokenizer",
        "server",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    let stdout = ok(&reprise(&args));
    assert!(
        stdout.contains("prompt mismatches 0.00%, output mismatches 0.00%"),
        "{stdout}"
    );
    DatasetReader::<ResultRecord>::open(out.join("requests.parquet"))
        .expect("results")
        .read_all()
        .expect("rows")
}

#[test]
fn replays_the_sample_trace_against_llama_server_with_exact_token_counts() {
    let Some(server) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 300 requests, lengths at a tenth (the tiny server on one thread makes ~2,000 tokens/s),
    // arrivals 8x faster than the trace's: about 15 s.
    let rows = replay(
        &server,
        &dir.path().join("completions"),
        &[
            "--api",
            "completions",
            "--limit",
            "300",
            "--speed",
            "8",
            "--length-scale",
            "0.1",
        ],
    );
    assert_eq!(rows.len(), 300);
    for r in &rows {
        let id = &r.request.request_id;
        assert_eq!(
            (r.status, r.error_kind.as_deref()),
            (Some(200), None),
            "{id}: {:?}",
            r.error
        );
        assert_eq!(r.n_in_usage, r.request.input_tokens, "{id}: prompt tokens");
        assert_eq!(
            r.n_out_usage, r.request.output_tokens,
            "{id}: output tokens"
        );
        assert_eq!(
            r.n_out_counted, r.request.output_tokens,
            "{id}: one token per chunk"
        );
        assert!(r.ttft_us.is_some_and(|t| t > 0), "{id}: TTFT");
        let gaps = r.itl_us.as_ref().map_or(0, Vec::len) as u32;
        assert_eq!(gaps + 1, r.request.output_tokens.unwrap(), "{id}: ITL gaps");
        assert!(
            r.tpot_us.is_some() || r.request.output_tokens == Some(1),
            "{id}: TPOT"
        );
    }
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("completions/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["config"]["tokenizer"], "server");

    // Chat: the server's template (through /apply-template, 28 tokens here) counts in the
    // prompt; lengths at a half keep every prompt longer than the template.
    let rows = replay(
        &server,
        &dir.path().join("chat"),
        &[
            "--api",
            "chat",
            "--limit",
            "20",
            "--speed",
            "8",
            "--length-scale",
            "0.5",
        ],
    );
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.status == Some(200)
        && r.n_in_usage == r.request.input_tokens
        && r.n_out_usage == r.request.output_tokens));
}

/// Conversations against llama-server: every turn's prompt has exactly the trace's tokens
/// as the server counts them, and the server's prefix cache holds each conversation's
/// history: a first turn finds nothing cached, a later turn finds its predecessor's prompt
/// (the stand-in answer differs from what the model generated, so the sharing ends there).
#[test]
fn conversations_hit_llama_servers_prefix_cache_where_the_history_is_shared() {
    use reprise_trace::{DatasetWriter, Output, Timestamp, TraceRecord, WriterOptions};
    let Some(server) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("conversations.parquet");
    let mut w =
        DatasetWriter::<TraceRecord>::create(Output::File(trace.clone()), WriterOptions::default())
            .unwrap();
    // Four conversations of three turns: each turn's prompt is the one before, its answer
    // of 6 tokens and a new message.
    for s in 0..4u32 {
        let mut input = 120 + 10 * s;
        for turn in 1..=3u32 {
            let mut r = TraceRecord::new(
                format!("s{s}-t{turn}"),
                Timestamp::from_secs_f64(f64::from(s) * 0.1 + f64::from(turn - 1) * 0.5),
            );
            r.session_id = Some(format!("s{s}"));
            r.turn = Some(turn);
            r.think_us = (turn > 1).then_some(50_000);
            r.input_tokens = Some(input);
            r.output_tokens = Some(6);
            w.write(&r).unwrap();
            input += 6 + 40;
        }
    }
    w.close().unwrap();
    let out = dir.path().join("sessions");
    let stdout = ok(&reprise(&[
        "replay",
        s(&trace),
        "--target",
        &server.base,
        "--backend",
        "llamacpp",
        "--api",
        "completions",
        "--tokenizer",
        "server",
        "--out",
        s(&out),
    ]));
    assert!(
        stdout.contains("sessions 4 started, 4 completed; 12 turns (8 after a first)"),
        "{stdout}"
    );
    let rows = DatasetReader::<ResultRecord>::open(out.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(rows.len(), 12);
    let input_of = |id: &str| {
        rows.iter()
            .find(|r| r.request.request_id == id)
            .and_then(|r| r.request.input_tokens)
            .unwrap()
    };
    for r in &rows {
        let id = &r.request.request_id;
        assert_eq!(r.status, Some(200), "{id}: {:?}", r.error);
        assert_eq!(r.n_in_usage, r.request.input_tokens, "{id}: prompt tokens");
        let cached = r
            .n_cached_usage
            .expect("llama-server says what it had cached");
        let turn = r.request.turn.unwrap();
        if turn == 1 {
            assert!(cached <= 1, "{id}: a first turn shares nothing ({cached})");
        } else {
            // The trace implies the previous turn's prompt is shared.
            let session = r.request.session_id.as_deref().unwrap();
            let implied = input_of(&format!("{session}-t{}", turn - 1));
            eprintln!(
                "{id}: cached {cached} of {}, implied {implied}",
                r.request.input_tokens.unwrap()
            );
            assert!(
                cached.abs_diff(implied) <= 2,
                "{id}: {cached} cached, {implied} implied"
            );
        }
    }
}
