//! A replay with monitoring against the simulator: an open-loop rate ramp while the monitor
//! scrapes the sim's `/metrics` (vLLM names and its simulated DCGM GPU) and three broken
//! endpoints — one refusing connections, one that never answers, one serving garbage. The
//! run must complete, the broken endpoints' failures be classed with their gaps marked, the
//! report say so, and the correlation find the simulated GPU's utilisation tracking the
//! throughput as the rate rises.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reprise_replay::workload::{Process, RatePlan, RateStep, Sizes};
use reprise_replay::{Pacing, Progress, ReplayConfig, run};
use reprise_report::{Options, analyze, render};
use reprise_sim::{Profile, SimConfig, SimServer};
use reprise_stub::{dead_url, fixed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_a_ramp_correlates_gpu_with_throughput_and_marks_broken_endpoints() {
    let mut profile = Profile::named("llama-8b-h100").unwrap();
    profile.model = "m".into();
    let mut sim = SimConfig::new(profile);
    sim.speedup = 5.0;
    let sim = SimServer::start(sim).await.unwrap();
    let dead = format!("{}/metrics", dead_url());
    let slow = format!("{}/metrics", fixed::spawn_silent());
    let garbage = format!(
        "{}/metrics",
        fixed::spawn("this is { not prometheus\n".into())
    );
    let good = format!("{}/metrics", sim.base_url());

    let dir = tempfile::tempdir().unwrap();
    let mut monitor = reprise_monitor::MonitorConfig::new(dir.path());
    monitor.scrape = vec![good.clone(), dead.clone(), slow.clone(), garbage.clone()];
    monitor.interval = Duration::from_millis(100);
    monitor.scrape_timeout = Duration::from_millis(300);
    let config = ReplayConfig {
        run_id: "monitor".into(),
        queue_limit_ms: 5.0,
        monitor: Some(monitor),
        ..ReplayConfig::new(vec![sim.base_url()], "m", dir.path())
    };
    let steps = [1.0, 3.0, 9.0, 27.0]
        .into_iter()
        .map(|rate| RateStep {
            rate,
            duration: Duration::from_secs(2),
            label: format!("rate={rate}"),
        })
        .collect();
    let plan = RatePlan::new(
        steps,
        Process::Poisson,
        Sizes::Fixed {
            input: 256,
            output: 64,
        },
        7,
    )
    .unwrap();
    let summary = run(
        config,
        Pacing::Open(plan.into()),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert!(summary.complete);
    let m = summary.monitor.as_ref().expect("the monitor's summary");
    let src = |u: &str| m.sources.iter().find(|s| s.source == u).unwrap();
    assert!(
        src(&good).ok >= 40 && src(&good).failed == 0,
        "{:?}",
        src(&good)
    );
    assert_eq!(src(&dead).errors.keys().collect::<Vec<_>>(), ["connect"]);
    assert_eq!(src(&slow).errors.keys().collect::<Vec<_>>(), ["timeout"]);
    assert_eq!(src(&garbage).errors.keys().collect::<Vec<_>>(), ["parse"]);
    for u in [&dead, &slow, &garbage] {
        assert_eq!(src(u).ok, 0);
        assert_eq!(src(u).gaps.len(), 1, "{:?}", src(u));
    }
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(
        run_json["summary"]["monitor"]["format"],
        "reprise.monitor/1"
    );

    let report = analyze(
        dir.path(),
        &Options {
            corr_bin_s: 0.5,
            ..Options::default()
        },
    )
    .unwrap();
    let c = report.correlation.as_ref().unwrap();
    let health = |u: &str| c.sources.iter().find(|s| s.source == u).unwrap();
    assert_eq!(health(&good).failed, 0);
    for (u, kind) in [(&dead, "connect"), (&slow, "timeout"), (&garbage, "parse")] {
        let h = health(u);
        assert!(h.failed >= 3 && h.failed == h.scrapes, "{h:?}");
        assert_eq!(h.errors.keys().collect::<Vec<_>>(), [kind]);
        assert_eq!(h.gaps, 1);
        assert!(h.longest_gap_s > 3.0, "{h:?}");
    }
    let gpu = c
        .get("gpu_util_pct", "output_tokens_per_s")
        .expect("GPU vs throughput");
    eprintln!("GPU util ~ output tok/s: {gpu:?}");
    for p in c.pairs.iter().take(8) {
        eprintln!(
            "  {} ~ {}: r {:.2} rho {:.2} n {}",
            p.x, p.y, p.pearson, p.spearman, p.n
        );
    }
    // Utilisation saturates while throughput keeps rising: monotone (rank) more than
    // linear. Seen here: rho 0.79-0.91, r 0.64-0.84 over 17 half-second bins; the bounds
    // leave room for a loaded CI machine (the sim's busy share is measured in real time).
    assert!(gpu.spearman > 0.5 && gpu.pearson > 0.4, "{gpu:?}");
    // The achieved batch (running requests) tracks throughput closely.
    let batch = c.get("running", "throughput_rps").unwrap();
    assert!(batch.pearson > 0.8, "{batch:?}");
    // The host was sampled too.
    assert!(c.bins.iter().any(|b| b.values.contains_key("host_cpu_pct")));
    // The steps carry the GPU figures, rising with the rate.
    let util: Vec<f64> = report
        .side
        .iter()
        .map(|s| s.gpu_util_pct.unwrap())
        .collect();
    assert!(util[3] > util[0] + 20.0, "{util:?}");

    render::write(&report, dir.path()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("### Resources and correlation"), "{md}");
    for u in [&dead, &slow, &garbage] {
        assert!(md.contains(&format!("Scrapes of {u} failed")), "{md}");
    }
    assert!(
        md.contains("| resource | request figure | Pearson r |"),
        "{md}"
    );
    assert!(md.contains("| running | throughput_rps |"), "{md}");
}
