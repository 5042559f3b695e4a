//! Multi-turn sessions end to end: a hand-made trace of three conversations with known think
//! times replayed closed-loop against the simulator (each next turn after the previous
//! response's end plus its think time, prompts that repeat the conversation, exact prompt
//! counts, cache hits where the history is shared), and closed against open sessions on a
//! saturated simulator (closed sessions slow down with the server, open ones do not).

use std::collections::HashMap;
use std::path::Path;

use reprise_trace::{
    DatasetReader, DatasetWriter, Output, ResultRecord, Timestamp, TraceRecord, WriterOptions,
};

use crate::support::*;

/// One turn: (session, turn, recorded arrival s, think ms, input, output, recorded e2e ms).
type Turn = (&'static str, u32, f64, Option<u64>, u32, u32, u64);

fn write_trace(path: &Path, turns: &[Turn]) {
    let mut w = DatasetWriter::<TraceRecord>::create(
        Output::File(path.to_owned()),
        WriterOptions::default(),
    )
    .unwrap();
    for (i, &(session, turn, at, think_ms, input, output, e2e_ms)) in turns.iter().enumerate() {
        let mut r = TraceRecord::new(
            format!("{session}{turn}-{i}"),
            Timestamp::from_secs_f64(1_000.0 + at),
        );
        r.session_id = (!session.is_empty()).then(|| session.to_owned());
        r.turn = (!session.is_empty()).then_some(turn);
        r.think_us = think_ms.map(|t| t * 1000);
        r.input_tokens = Some(input);
        r.output_tokens = Some(output);
        r.e2e_us = Some(e2e_ms * 1000);
        w.write(&r).unwrap();
    }
    w.close().unwrap();
}

fn rows(run: &Path) -> Vec<ResultRecord> {
    DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap()
}

fn ms(a: Timestamp, b: Timestamp) -> f64 {
    (a.0 - b.0) as f64 / 1e6
}

#[test]
fn closed_sessions_keep_think_times_after_each_response_with_exact_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("sessions.parquet");
    // Cumulative prompts: each turn holds the one before, its 8-token answer and more.
    write_trace(
        &trace,
        &[
            ("a", 1, 0.0, None, 100, 8, 500),
            ("b", 1, 0.1, None, 60, 8, 300),
            ("c", 1, 0.2, None, 40, 8, 300),
            ("", 0, 0.3, None, 30, 8, 300),
            ("b", 2, 0.8, Some(400), 98, 8, 300),
            ("a", 2, 0.8, Some(300), 158, 8, 500),
            ("a", 3, 1.6, Some(200), 186, 8, 500),
        ],
    );
    let run = dir.path().join("run");
    let out = ok(&reprise(&[
        "replay",
        s(&trace),
        "--target",
        "sim",
        "--sim-speedup",
        "10",
        "--out",
        s(&run),
    ]));
    assert!(
        out.contains("sessions 3 started, 3 completed; 6 turns (3 after a first)"),
        "{out}"
    );
    let rows = rows(&run);
    assert_eq!(rows.len(), 7);
    let by_id: HashMap<&str, &ResultRecord> = rows
        .iter()
        .map(|r| (r.request.request_id.as_str(), r))
        .collect();
    for r in &rows {
        // Every prompt has exactly the trace's tokens, as the server counts them.
        assert_eq!(
            r.n_in_usage, r.request.input_tokens,
            "{}",
            r.request.request_id
        );
        assert_eq!(r.status, Some(200));
    }
    // Each later turn went its think time after the previous turn's last token (the
    // stream's end follows within microseconds), never before.
    for (turn, previous, think_ms) in [
        ("b2-4", "b1-1", 400.0),
        ("a2-5", "a1-0", 300.0),
        ("a3-6", "a2-5", 200.0),
    ] {
        let (t, p) = (by_id[turn], by_id[previous]);
        let gap = ms(t.sent.unwrap(), p.done.unwrap());
        assert!(
            gap >= think_ms && gap < think_ms + 40.0,
            "{turn}: sent {gap:.2} ms after {previous} ended, think {think_ms} ms"
        );
        // Scheduled at the previous end + think: the queue is the client's alone.
        assert!(
            t.queue_us.unwrap() < 5_000,
            "{turn}: queue {:?}",
            t.queue_us
        );
        // The history is in the server's prefix cache: the previous turn's prompt.
        let cached = t.n_cached_usage.unwrap();
        let before = p.request.input_tokens.unwrap();
        assert!(
            cached > 0 && cached <= before + 8,
            "{turn}: {cached} cached of {before} shared"
        );
    }
    // First turns and the request without a session go at their recorded times.
    for id in ["a1-0", "b1-1", "c1-2", "0-3"] {
        let r = by_id[id];
        assert_eq!(
            ms(r.scheduled, by_id["a1-0"].scheduled).round(),
            ms(r.request.arrival, by_id["a1-0"].request.arrival).round(),
            "{id}"
        );
    }
    let run = run_json(&run);
    let s = &run["summary"]["sessions"];
    assert_eq!(s["mode"], "closed");
    assert_eq!(
        (s["started"].as_u64(), s["completed"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(s["later_turns"].as_u64(), Some(3));
    assert!(s["think_error_ms"]["p99"].as_f64().unwrap() < 5.0, "{s}");
}

/// `sessions` conversations of `turns` turns, a second apart in the trace, each turn's
/// response recorded as taking 100 ms and the think time 0.9 s: production's server was fast.
fn busy_trace(path: &Path, sessions: usize, turns: u32) {
    let mut list: Vec<Turn> = Vec::new();
    let names: Vec<&'static str> = (0..sessions)
        .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        for k in 1..=turns {
            let input = 200 + (k - 1) * 264;
            list.push((
                name,
                k,
                i as f64 * 0.02 + f64::from(k - 1),
                (k > 1).then_some(900),
                input,
                64,
                100,
            ));
        }
    }
    list.sort_by(|a, b| a.2.total_cmp(&b.2));
    write_trace(path, &list);
}

#[test]
fn closed_sessions_slow_down_with_a_saturated_server_and_open_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("busy.parquet");
    busy_trace(&trace, 24, 4);
    // A KV cache of 2,000 tokens holds a few conversations at a time: the rest queue, and
    // each response takes up to seconds.
    let sim = SimProcess::start(&["--kv-capacity", "2000", "--speedup", "2"]);
    let replay = |mode: &str| {
        let run = dir.path().join(mode);
        let out = reprise(&[
            "replay",
            s(&trace),
            "--target",
            &sim.url,
            "--sessions",
            mode,
            "--out",
            s(&run),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        (
            rows(&run),
            run_json(&run),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (open, open_json, _) = replay("open");
    let (closed, closed_json, closed_out) = replay("closed");
    assert_eq!(open.len(), 96);
    assert_eq!(closed.len(), 96);
    // Open: every turn was scheduled at its recorded time, whatever the server did.
    let first = |rows: &[ResultRecord]| rows.iter().map(|r| r.scheduled).min().unwrap();
    let t0 = first(&open);
    let a0 = open.iter().map(|r| r.request.arrival).min().unwrap();
    for r in &open {
        assert!(
            (ms(r.scheduled, t0) - ms(r.request.arrival, a0)).abs() < 1.0,
            "{}: open turns go at their recorded time",
            r.request.request_id
        );
    }
    assert!(open_json["summary"]["sessions"].is_null());
    // Closed: later turns waited for their answers: most were sent later than recorded.
    let s = &closed_json["summary"]["sessions"];
    let (later, delayed) = (
        s["later_turns"].as_u64().unwrap(),
        s["delayed"].as_u64().unwrap(),
    );
    assert_eq!(later, 72);
    let p50 = s["delay_ms"]["p50"].as_f64().unwrap();
    eprintln!(
        "closed sessions: {delayed} of {later} later turns delayed, p50 {p50:.0} ms, p99 {:.0} ms",
        s["delay_ms"]["p99"].as_f64().unwrap()
    );
    assert!(delayed * 10 >= later * 8, "{s}");
    assert!(p50 > 500.0, "{s}");
    assert!(
        closed_out.contains("turns delayed by the target"),
        "{closed_out}"
    );
    // And so the closed run lasted longer than the trace's 3 s; the open one did not send later.
    let span = |rows: &[ResultRecord]| {
        let last = rows.iter().map(|r| r.scheduled).max().unwrap();
        ms(last, first(rows)) / 1000.0
    };
    let (open_span, closed_span) = (span(&open), span(&closed));
    let recorded = ms(open.iter().map(|r| r.request.arrival).max().unwrap(), a0) / 1000.0;
    eprintln!(
        "last send after {open_span:.2} s open, {closed_span:.2} s closed (trace {recorded:.2} s)"
    );
    assert!(
        (open_span - recorded).abs() < 0.01,
        "{open_span} vs {recorded}"
    );
    assert!(
        closed_span > open_span + 1.0,
        "{closed_span} vs {open_span}"
    );
    // No closed turn went before its predecessor's response ended.
    let mut by_session: HashMap<&str, Vec<&ResultRecord>> = HashMap::new();
    for r in &closed {
        by_session
            .entry(r.request.session_id.as_deref().unwrap())
            .or_default()
            .push(r);
    }
    for turns in by_session.values_mut() {
        turns.sort_by_key(|r| r.request.turn);
        for w in turns.windows(2) {
            assert!(w[1].sent.unwrap() >= w[0].done.unwrap());
        }
    }
}

/// A stop is not held up by a long think time: a conversation whose second turn comes two
/// minutes after the first answer stops at once on SIGINT, its run marked incomplete.
#[test]
fn a_stop_during_a_long_think_time_ends_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("slow-user.parquet");
    write_trace(
        &trace,
        &[
            ("u", 1, 0.0, None, 50, 4, 100),
            ("u", 2, 120.0, Some(120_000), 104, 4, 100),
        ],
    );
    let run = dir.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args([
            "replay",
            s(&trace),
            "--target",
            "sim",
            "--sim-speedup",
            "10",
            "--out",
            s(&run),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    crate::record::signal(&child, "-INT");
    let stopped = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = stopped.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", show(&out));
    let info = run_json(&run);
    assert_eq!(info["complete"], false);
    let sessions = &info["summary"]["sessions"];
    assert_eq!(
        (sessions["started"].as_u64(), sessions["completed"].as_u64()),
        (Some(1), Some(0)),
        "{sessions}"
    );
    assert_eq!(rows(&run).len(), 1);
}
