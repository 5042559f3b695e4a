//! Burstiness at every time scale: traces drawn from known processes (an on/off process with
//! second-long bursts and minute-long silences, a Hawkes process, a BurstGPT-shaped gamma
//! renewal under a slow rate swing, a Poisson control) go through fit → gen → check with the
//! figures printed (`--no-capture`). The Poisson and BurstGPT-shaped traces pass every
//! figure; the on/off trace gets the burst model, which holds its 1-s and 60-s burstiness, the
//! gap CV and the busiest seconds where a renewal-only model fails; every mode delivers the
//! asked count exactly. Not met yet (docs/synth.md): the on/off trace's 10-s and 600-s index of
//! dispersion, and the Hawkes trace's 10-s one.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma};
use reprise_synth::check::{CheckReport, check};
use reprise_synth::generator::{GenOptions, Mode, generate};
use reprise_synth::model::{FitOptions, WorkloadModel, fit};
use reprise_trace::{Timestamp, TraceRecord};

const T0: i64 = 1_700_000_000_000_000_000;

fn trace(times: &[f64], seed: u64) -> Vec<TraceRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let mut r = TraceRecord::new(format!("r{i}"), Timestamp(T0 + (t * 1e9) as i64));
            r.input_tokens = Some(rng.random_range(100..2000));
            r.output_tokens = Some(rng.random_range(10..400));
            r
        })
        .collect()
}

/// On/off: bursts of ~4 s at 12 req/s, silences of ~40 s with a trickle (0.02 req/s).
fn on_off(seed: u64, span: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (on, off) = (Exp::new(1.0 / 4.0).unwrap(), Exp::new(1.0 / 40.0).unwrap());
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut active = false;
    while t < span {
        let (len, rate) = if active {
            (on.sample(&mut rng), 12.0)
        } else {
            (off.sample(&mut rng), 0.02)
        };
        let gap = Exp::new(rate).unwrap();
        let mut s = t + gap.sample(&mut rng);
        while s < (t + len).min(span) {
            out.push(s);
            s += gap.sample(&mut rng);
        }
        t += len;
        active = !active;
    }
    out
}

/// Hawkes with an exponential kernel, drawn as clusters: immigrants at `mu`/s, each event
/// begets Poisson(`n`) children at Exp(`beta`) delays.
fn hawkes(seed: u64, span: f64, mu: f64, n: f64, beta: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let mut t = 0.0;
    let imm = Exp::new(mu).unwrap();
    loop {
        t += imm.sample(&mut rng);
        if t >= span {
            break;
        }
        stack.push(t);
    }
    let delay = Exp::new(beta).unwrap();
    let children = rand_distr::Poisson::new(n).unwrap();
    while let Some(e) = stack.pop() {
        out.push(e);
        let k: f64 = children.sample(&mut rng);
        for _ in 0..k as usize {
            let c = e + delay.sample(&mut rng);
            if c < span {
                stack.push(c);
            }
        }
    }
    out
}

/// BurstGPT-shaped: gamma renewal gaps with CV 2.5 under a rate swinging 1-5 req/s over 20
/// minutes (operational-time thinning of a unit-rate process).
fn burstgpt_like(seed: u64, span: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let cv: f64 = 2.5;
    let g = Gamma::new(1.0 / (cv * cv), cv * cv).unwrap();
    let rate = |t: f64| 3.0 + 2.0 * (t / 1200.0 * std::f64::consts::TAU).sin();
    let (mut t, mut out) = (0.0, Vec::new());
    loop {
        // Advance operational time by a unit-mean gap at the current rate.
        t += g.sample(&mut rng) / rate(t);
        if t >= span {
            return out;
        }
        out.push(t);
    }
}

fn poisson(seed: u64, span: f64, rate: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let e = Exp::new(rate).unwrap();
    let (mut t, mut out) = (0.0, Vec::new());
    loop {
        t += e.sample(&mut rng);
        if t >= span {
            return out;
        }
        out.push(t);
    }
}

fn generated(model: &WorkloadModel, opts: &GenOptions) -> Vec<TraceRecord> {
    let mut out = Vec::new();
    generate(model, opts, |r| {
        out.push(r);
        Ok::<(), String>(())
    })
    .unwrap();
    out
}

fn fidelity(name: &str, source: &[TraceRecord], model: &WorkloadModel) -> CheckReport {
    let out = generated(
        model,
        &GenOptions {
            seed: 11,
            ..GenOptions::default()
        },
    );
    let report = check(source, &out, 1.0);
    println!(
        "{name}: {}\n{}",
        model
            .arrivals
            .selection
            .as_ref()
            .map_or("", |s| s.reason.as_str()),
        reprise_synth::check::render(&report)
    );
    report
}

fn row(report: &CheckReport, metric: &str) -> (f64, f64, Option<bool>) {
    let r = report
        .rows
        .iter()
        .find(|r| r.metric == metric)
        .unwrap_or_else(|| panic!("no row {metric}"));
    (
        r.expected.unwrap_or(f64::NAN),
        r.generated.unwrap_or(f64::NAN),
        r.pass,
    )
}

#[test]
fn on_off_bursts_need_the_burst_model() {
    let source = trace(&on_off(1, 7200.0), 1);
    let model = fit(&source, &FitOptions::default()).unwrap();
    let sel = model.arrivals.selection.as_ref().unwrap();
    assert_eq!(sel.chosen, "cluster", "{}", sel.reason);
    assert!(model.arrivals.clusters.is_some());
    let report = fidelity("on/off", &source, &model);
    for metric in [
        "mean rate (req/s)",
        "inter-arrival CV",
        "index of dispersion @1 s",
        "index of dispersion @60 s",
        "share of requests in the busiest 1% of seconds",
    ] {
        let (src, g, pass) = row(&report, metric);
        assert_eq!(pass, Some(true), "{metric}: {src} vs {g}");
    }

    // The same trace under a renewal process only: the short-scale burstiness is lost.
    let mut renewal = model.clone();
    renewal.arrivals.clusters = None;
    let report = fidelity("on/off, renewal only", &source, &renewal);
    assert!(!report.pass, "a renewal process cannot hold the bursts");
    let (src, gen1, pass) = row(&report, "index of dispersion @1 s");
    assert_eq!(pass, Some(false), "IDC @1 s {src} vs {gen1}");
}

#[test]
fn a_hawkes_trace_keeps_its_rate_and_short_and_long_burstiness() {
    let source = trace(&hawkes(2, 7200.0, 0.4, 0.75, 1.0), 2);
    let model = fit(&source, &FitOptions::default()).unwrap();
    let report = fidelity("hawkes", &source, &model);
    for metric in [
        "mean rate (req/s)",
        "index of dispersion @1 s",
        "index of dispersion @60 s",
        "share of requests in the busiest 1% of seconds",
    ] {
        let (src, g, pass) = row(&report, metric);
        assert_eq!(pass, Some(true), "{metric}: {src} vs {g}");
    }
}

#[test]
fn a_burstgpt_shaped_trace_is_reproduced() {
    let source = trace(&burstgpt_like(3, 7200.0), 3);
    let model = fit(&source, &FitOptions::default()).unwrap();
    let report = fidelity("burstgpt-like", &source, &model);
    assert!(report.pass);
}

#[test]
fn poisson_stays_a_renewal_process() {
    let source = trace(&poisson(4, 7200.0, 3.0), 4);
    let model = fit(&source, &FitOptions::default()).unwrap();
    let sel = model.arrivals.selection.as_ref().unwrap();
    assert_eq!(sel.chosen, "renewal", "{}", sel.reason);
    let report = fidelity("poisson", &source, &model);
    assert!(report.pass);
    let (src, g, _) = row(&report, "index of dispersion @1 s");
    assert!(
        (src - 1.0).abs() < 0.15 && (g - 1.0).abs() < 0.15,
        "{src} {g}"
    );
}

#[test]
fn every_mode_delivers_the_asked_count_exactly() {
    let source = trace(&on_off(5, 3600.0), 5);
    let model = fit(&source, &FitOptions::default()).unwrap();
    let n = source.len() as f64;
    let span = model.source.span_s;
    for (mode, scale) in [
        (Mode::Superpose, 2.0),
        (Mode::Superpose, 3.5),
        (Mode::Model, 2.0),
        (Mode::Compress, 2.0),
        (Mode::Thin, 0.5),
        (Mode::Superpose, 1.0),
    ] {
        for seed in [1, 2] {
            let g = generated(
                &model,
                &GenOptions {
                    seed,
                    scale,
                    mode,
                    ..GenOptions::default()
                },
            );
            let want = (n * scale).round();
            assert!(
                (g.len() as f64 - want).abs() <= want * 0.01,
                "{mode:?} x{scale}: {} requests for {want}",
                g.len()
            );
            assert!(g.windows(2).all(|w| w[0].arrival <= w[1].arrival));
            let last = (g.last().unwrap().arrival.0 - g[0].arrival.0) as f64 / 1e9;
            assert!(last <= span * 1.001, "{mode:?}: {last} s");
        }
    }
    // Superposed copies keep the rate and the short-scale index of dispersion.
    let x2 = generated(
        &model,
        &GenOptions {
            seed: 3,
            scale: 2.0,
            ..GenOptions::default()
        },
    );
    let report = check(&source, &x2, 2.0);
    println!(
        "on/off x2 superpose\n{}",
        reprise_synth::check::render(&report)
    );
    for metric in ["mean rate (req/s)", "index of dispersion @1 s"] {
        let (src, g, pass) = row(&report, metric);
        assert_eq!(pass, Some(true), "{metric}: {src} vs {g}");
    }
}
