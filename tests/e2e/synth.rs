//! `reprise synth` on the public traces: the fitted model regenerates the Azure trace within
//! the stated tolerances, superposition doubles the load keeping its burstiness, compression
//! behaves as theory says, Mooncake's arrivals fit as Poisson, and generated workloads replay.

use crate::support::*;

fn fit(trace: &str, dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let model = dir.join(format!("{name}.json"));
    let out = ok(&reprise(&["synth", "fit", trace, "-o", s(&model)]));
    (model, out)
}

/// The index of dispersion at `window` seconds from a `synth check` table: the source's
/// (expected) or the generated workload's.
fn idc(check: &str, window: &str, generated: bool) -> f64 {
    check
        .lines()
        .find(|l| l.starts_with(&format!("index of dispersion @{window} s")))
        .and_then(|l| l.split_whitespace().nth(if generated { 6 } else { 5 }))
        .and_then(|v| v.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("{check}"))
}

/// Imports a shared public trace into `dir/<kind>.parquet`.
fn import(dir: &std::path::Path, kind: &str, file: &str, extra: &[&str]) -> std::path::PathBuf {
    let trace = dir.join(format!("{kind}.parquet"));
    let data = public_data(file);
    let mut args = vec!["import", kind, s(&data), "-o", s(&trace)];
    args.extend_from_slice(extra);
    ok(&reprise(&args));
    trace
}

#[test]
fn azure_fit_regenerates_within_tolerance_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    let trace = import(dir.path(), "azure", "AzureLLMInferenceTrace_conv.csv", &[]);
    let (model, fitted) = fit(s(&trace), dir.path(), "azure");
    assert!(fitted.contains("law of rate-normalized gaps"), "{fitted}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(m["format"], "reprise.synth/2");
    assert_eq!(m["arrivals"]["candidates"].as_array().unwrap().len(), 4);
    // The process was chosen on held-back data, and the model says which and why.
    let selection = &m["arrivals"]["selection"];
    assert!(
        ["renewal", "cluster", "on/off", "hawkes"].contains(&selection["chosen"].as_str().unwrap()),
        "{selection}"
    );
    assert!(
        selection["reason"]
            .as_str()
            .unwrap()
            .contains("held-back data"),
        "{selection}"
    );
    assert!(
        selection["scores"].as_array().unwrap().len() >= 2,
        "{selection}"
    );
    // A reprise.synth/1 model (no burst model, no selection) still loads and generates.
    let mut old = m.clone();
    old["format"] = "reprise.synth/1".into();
    let arrivals = old["arrivals"].as_object_mut().unwrap();
    arrivals.remove("clusters");
    arrivals.remove("selection");
    let old_model = dir.path().join("old.json");
    std::fs::write(&old_model, serde_json::to_vec(&old).unwrap()).unwrap();
    let from_old = dir.path().join("old.parquet");
    let out = ok(&reprise(&[
        "synth",
        "gen",
        s(&old_model),
        "-o",
        s(&from_old),
        "--seed",
        "1",
    ]));
    // The asked factor of the model's own rate profile (x1: the source's count within
    // 0.1%, the profile having had its sampling noise taken out).
    let n: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!((n - 19_366.0).abs() <= 19.366, "{out}");

    // Same load: every checked figure within tolerance (rate 2%, IDC 1/10/60 s 20%,
    // length percentiles 5%, KS < 0.03).
    let same = dir.path().join("same.parquet");
    ok(&reprise(&[
        "synth",
        "gen",
        s(&model),
        "-o",
        s(&same),
        "--seed",
        "1",
    ]));
    let report = ok(&reprise(&["synth", "check", s(&trace), s(&same)]));
    assert!(report.contains("fidelity: PASS"), "{report}");
    let json = ok(&reprise(&["synth", "check", s(&trace), s(&same), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pass"], true);
    assert!(v["rows"].as_array().unwrap().len() >= 15);

    // Twice the users: twice the rate, burstiness kept.
    let x2 = dir.path().join("x2.parquet");
    ok(&reprise(&[
        "synth",
        "gen",
        s(&model),
        "-o",
        s(&x2),
        "--seed",
        "1",
        "--scale",
        "2",
    ]));
    let report = ok(&reprise(&[
        "synth",
        "check",
        s(&trace),
        s(&x2),
        "--scale",
        "2",
    ]));
    assert!(report.contains("fidelity: PASS"), "{report}");

    // The same users twice as fast: the index of dispersion at a fixed window rises.
    let c2 = dir.path().join("c2.parquet");
    ok(&reprise(&[
        "synth",
        "gen",
        s(&model),
        "-o",
        s(&c2),
        "--seed",
        "1",
        "--scale",
        "2",
        "--mode",
        "compress",
    ]));
    let out = reprise(&["synth", "check", s(&trace), s(&c2), "--scale", "2"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "compression is not faithful burstiness: {report}"
    );
    assert!(
        idc(&report, "60", true) > 1.5 * idc(&report, "60", false),
        "{report}"
    );
}

#[test]
fn mooncake_arrivals_fit_as_poisson_and_generated_workloads_replay() {
    let dir = tempfile::tempdir().unwrap();
    let trace = import(
        dir.path(),
        "mooncake",
        "synthetic_trace.jsonl",
        &["--anchor", "2025-01-01 00:00:00"],
    );
    let (model, fitted) = fit(s(&trace), dir.path(), "mooncake");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    let best = &m["arrivals"]["candidates"][0];
    let cv = m["arrivals"]["cv"].as_f64().unwrap();
    assert!((cv - 1.0).abs() < 0.05, "{fitted}");
    // Exponential, or a gamma/Weibull indistinguishable from it.
    let law = best["fit"]["law"].as_str().unwrap();
    let shape = best["fit"]["k"].as_f64().unwrap_or(1.0);
    assert!(law != "lognormal" && (shape - 1.0).abs() < 0.05, "{best}");
    assert!(m["prefixes"]["share_ratio"].as_f64().unwrap() > 0.1);

    // A short generated workload replays against the simulator unchanged.
    let workload = dir.path().join("gen.parquet");
    ok(&reprise(&[
        "synth",
        "gen",
        s(&model),
        "-o",
        s(&workload),
        "--duration",
        "5",
        "--length-scale",
        "0.01",
    ]));
    let run = dir.path().join("run");
    let out = ok(&reprise(&[
        "replay",
        s(&workload),
        "--target",
        "sim:instant",
        "--out",
        s(&run),
        "--speed",
        "5",
    ]));
    assert!(
        out.contains("prompt mismatches 0.00%, output mismatches 0.00%"),
        "{out}"
    );

    // Without a trace.
    let plain = dir.path().join("plain.parquet");
    let out = ok(&reprise(&[
        "synth",
        "plain",
        "-o",
        s(&plain),
        "--rate",
        "20",
        "--duration",
        "100",
        "--input",
        "500",
        "--output",
        "lognormal:100,0.5",
    ]));
    assert!(out.contains("written to"), "{out}");
    let bad = reprise(&[
        "synth",
        "plain",
        "-o",
        s(&plain),
        "--rate",
        "20",
        "--input",
        "lognormal:x",
    ]);
    assert!(fails(&bad).contains("--input"));
    let bad = reprise(&["synth", "gen", s(&trace), "-o", s(&plain)]);
    assert!(fails(&bad).contains("not JSON"), "a trace is not a model");
}

/// Conversations through the whole pipeline: a trace of 3-turn conversations (written the
/// way `import` writes BurstGPT v3: turns numbered, think times from `Elapsed time`) is
/// fitted, regenerated with its turns, think times and context growth, checked, and the
/// generated workload replays as closed sessions.
#[test]
fn conversations_are_fitted_regenerated_checked_and_replayed() {
    use reprise_trace::{DatasetWriter, Output, Timestamp, TraceRecord, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("conversations.parquet");
    let mut rows = Vec::new();
    // Conversations start as a Poisson process (exponential gaps, mean 2 s, from a fixed
    // sequence of uniforms).
    let mut start = 0.0;
    let mut state = 12_345u64;
    for s in 0..300u32 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        start += -2.0 * (1.0 - u).max(1e-9).ln();
        let mut input = 200 + (s % 7) * 10;
        for k in 0..3u32 {
            let mut r = TraceRecord::new(
                format!("{s}-{k}"),
                Timestamp::from_secs_f64(start + f64::from(k) * (1.5 + 4.0 + f64::from(s % 3))),
            );
            r.session_id = Some(format!("c{s}"));
            r.input_tokens = Some(input);
            r.output_tokens = Some(40);
            r.e2e_us = Some(1_500_000);
            rows.push(r);
            input += 40 + 60;
        }
    }
    rows.sort_by_key(|r| r.arrival);
    reprise_trace::sessions::derive(&mut rows);
    let mut w =
        DatasetWriter::<TraceRecord>::create(Output::File(trace.clone()), WriterOptions::default())
            .unwrap();
    w.write_all(&rows).unwrap();
    w.close().unwrap();
    let (model, fitted) = fit(s(&trace), dir.path(), "conversations");
    assert!(
        fitted.contains(
            "sessions: 100% of requests, 3.00 turns per session (at most 3), think time p50 5.0 s"
        ),
        "{fitted}"
    );
    let generated = dir.path().join("generated.parquet");
    ok(&reprise(&[
        "synth",
        "gen",
        s(&model),
        "-o",
        s(&generated),
        "--seed",
        "5",
    ]));
    let report = ok(&reprise(&["synth", "check", s(&trace), s(&generated)]));
    for metric in [
        "mean rate (req/s)",
        "share of requests in sessions",
        "turns per session (mean)",
        "think time p50 (s)",
        "think time p90 (s)",
        "new tokens per later turn p50",
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("{metric}: {report}"));
        assert!(line.ends_with("pass"), "{line}");
    }
    // The generated conversations replay as closed sessions (30 s of them, 20x faster).
    let run = dir.path().join("run");
    let out = ok(&reprise(&[
        "replay",
        s(&generated),
        "--target",
        "sim",
        "--sim-speedup",
        "20",
        "--speed",
        "20",
        "--duration",
        "60",
        "--out",
        s(&run),
    ]));
    assert!(out.contains("sessions "), "{out}");
    let json = run_json(&run);
    let sessions = &json["summary"]["sessions"];
    assert!(sessions["started"].as_u64().unwrap() >= 20, "{sessions}");
    assert_eq!(sessions["started"], sessions["completed"], "{sessions}");
}
