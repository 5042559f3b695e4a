//! Distributed replay end to end: a coordinator, three workers and the simulator, each on a
//! host of its own (network namespaces joined by a bridge, where this machine allows them;
//! loopback otherwise, and the test says so). One worker's wall clock is shifted by +250 ms
//! (the test-only `REPRISE_TEST_CLOCK_OFFSET_MS`): after correction the merged run's
//! scheduled times equal a single-host replay of the same window, and its per-second
//! achieved rate matches. A worker killed mid-run gives a partial merge with the right
//! count; a coordinator that dies before the start makes every worker exit 2; bad input is
//! one line and exit 2.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reprise_trace::{DatasetReader, ResultRecord};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_reprise");
const TRACE: &str = "traces/azure-conv-2023.parquet";

/// Where each process runs: its own network namespace (and address), or loopback.
#[derive(Debug)]
struct Hosts {
    /// Namespace names, or none on loopback.
    names: Vec<String>,
}

impl Hosts {
    /// Five hosts (`10.77.0.1` to `.5`) on one bridge, or `None` where namespaces are
    /// refused (not root, no iproute2).
    fn namespaces() -> Option<Hosts> {
        let tag = format!("rp{}", std::process::id() % 100_000);
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let hub = format!("{tag}hub");
        let mut hosts = Hosts { names: Vec::new() };
        if !run(&["netns", "add", &hub]) {
            return None;
        }
        hosts.names.push(hub.clone());
        let ok = run(&["-n", &hub, "link", "add", "br0", "type", "bridge"])
            && run(&["-n", &hub, "link", "set", "br0", "up"]);
        if !ok {
            return None;
        }
        for i in 1..=5 {
            let ns = format!("{tag}h{i}");
            let (a, b) = (format!("{tag}v{i}"), format!("{tag}e{i}"));
            let ok = run(&["netns", "add", &ns])
                && {
                    hosts.names.push(ns.clone());
                    true
                }
                && run(&["link", "add", &a, "type", "veth", "peer", "name", &b])
                && run(&["link", "set", &a, "netns", &hub])
                && run(&["link", "set", &b, "netns", &ns])
                && run(&["-n", &hub, "link", "set", &a, "master", "br0"])
                && run(&["-n", &hub, "link", "set", &a, "up"])
                && run(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("10.77.0.{i}/24"),
                    "dev",
                    &b,
                ])
                && run(&["-n", &ns, "link", "set", &b, "up"])
                && run(&["-n", &ns, "link", "set", "lo", "up"]);
            if !ok {
                return None;
            }
        }
        Some(hosts)
    }

    fn loopback() -> Hosts {
        Hosts { names: Vec::new() }
    }

    /// The address host `i` (1 to 5) listens on.
    fn ip(&self, i: usize) -> String {
        if self.names.is_empty() {
            "127.0.0.1".into()
        } else {
            format!("10.77.0.{i}")
        }
    }

    /// A command for `reprise` on host `i`.
    fn reprise(&self, i: usize, args: &[&str]) -> Command {
        let mut c = if self.names.is_empty() {
            Command::new(BIN)
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.names[i], BIN]);
            c
        };
        c.args(args).current_dir(repo());
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child process, killed when dropped, whose stderr lines are collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut c: Command) -> Proc {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("reprise starts");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Proc { child, lines }
    }

    /// The first stderr line containing `what` (within 30 s).
    fn line(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line with `{what}`");
    }

    /// Waits for the exit (within 120 s): code, stdout, and stderr lines not yet read.
    fn wait(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut out = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
                std::thread::sleep(Duration::from_millis(50));
                let err: Vec<String> = self.lines.try_iter().collect();
                return (status.code(), out, err.join("\n"));
            }
            assert!(Instant::now() < deadline, "still running after 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `reprise coordinate` on loopback with these flags, and its URL.
fn local_coordinator(workers: &str, flags: &[&str]) -> (Proc, String) {
    let mut c = Command::new(BIN);
    c.args([
        "coordinate",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        workers,
    ])
    .args(flags);
    let p = Proc::spawn(c);
    let url = url_in(&p.line(&format!("coordinating {workers} workers")));
    (p, url)
}

/// A worker on loopback: shard `shard` of `trace` against `target`, into `out`.
fn local_worker(
    trace: &str,
    target: &str,
    shard: &str,
    coordinator: &str,
    out: &Path,
    window: &[&str],
) -> Proc {
    let mut c = Command::new(BIN);
    c.args([
        "replay",
        trace,
        "--target",
        target,
        "--shard",
        shard,
        "--coordinator",
        coordinator,
        "--out",
        s(out),
        "--no-tui",
    ])
    .args(window)
    .current_dir(repo());
    Proc::spawn(c)
}

fn url_in(line: &str) -> String {
    let at = line.find("http://").unwrap_or_else(|| panic!("{line}"));
    line[at..].split_whitespace().next().unwrap().to_owned()
}

fn rows(run: &Path) -> Vec<ResultRecord> {
    DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap()
}

fn run_merge(args: &[&str]) -> Output {
    reprise(&[&["merge"], args].concat())
}

/// (request id → scheduled ns from the run's start).
fn schedule(rows: &[ResultRecord], t0: i64) -> BTreeMap<String, i64> {
    rows.iter()
        .map(|r| (r.request.request_id.clone(), r.scheduled.0 - t0))
        .collect()
}

#[test]
fn three_workers_on_three_hosts_replay_one_trace_on_one_timeline_and_merge_exactly() {
    let hosts = match Hosts::namespaces() {
        Some(h) => {
            eprintln!(
                "coordinator, 3 workers and the simulator in network namespaces of their own"
            );
            h
        }
        None => {
            eprintln!(
                "network namespaces refused here (not root?): the same test on loopback ports"
            );
            Hosts::loopback()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let window = ["--duration", "60", "--speed", "10", "--no-tui"];
    // The simulator on host 5, the coordinator on host 4.
    let sim = Proc::spawn(hosts.reprise(
        5,
        &[
            "sim",
            "--listen",
            &format!("{}:0", hosts.ip(5)),
            "--speedup",
            "20",
        ],
    ));
    let sim_url = url_in(&sim.line("http://"));
    let coordinator = Proc::spawn(hosts.reprise(
        4,
        &[
            "coordinate",
            "--listen",
            &format!("{}:0", hosts.ip(4)),
            "--workers",
            "3",
            "--margin",
            "1",
        ],
    ));
    let coord_url = url_in(&coordinator.line("coordinating 3 workers"));
    let runs: Vec<PathBuf> = (0..3).map(|k| dir.path().join(format!("s{k}"))).collect();
    let workers: Vec<Proc> = (0..3)
        .map(|k| {
            let shard = format!("{k}/3");
            let mut args = vec![
                "replay",
                TRACE,
                "--target",
                &sim_url,
                "--shard",
                &shard,
                "--coordinator",
                &coord_url,
                "--out",
                s(&runs[k]),
            ];
            args.extend_from_slice(&window);
            let mut c = hosts.reprise(k + 1, &args);
            if k == 1 {
                // This host's clock is 250 ms ahead.
                c.env("REPRISE_TEST_CLOCK_OFFSET_MS", "250");
            }
            Proc::spawn(c)
        })
        .collect();
    for (k, w) in workers.into_iter().enumerate() {
        let (code, out, err) = w.wait();
        assert_eq!(code, Some(0), "worker {k}:\n{out}\n{err}");
    }
    let (code, out, err) = coordinator.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("3 of 3 workers reported their end, 3 complete"),
        "{out}"
    );

    // The shifted worker measured its offset: −250 ms, within its uncertainty.
    let shard1 = run_json(&runs[1]);
    let d = &shard1["distributed"];
    let offset_ms = d["offset_ns"].as_i64().unwrap() as f64 / 1e6;
    let uncertainty_ms = d["uncertainty_ns"].as_i64().unwrap() as f64 / 1e6;
    eprintln!("shard 1 offset {offset_ms:.3} ms ± {uncertainty_ms:.3} ms");
    assert!((offset_ms + 250.0).abs() < 2.0 + uncertainty_ms, "{d}");
    assert!(uncertainty_ms < 5.0, "{d}");

    // A single host replays the same window (host 1, the simulator restarted fresh is not
    // needed: only the schedule is compared).
    let single = dir.path().join("single");
    let mut args = vec!["replay", TRACE, "--target", &sim_url, "--out", s(&single)];
    args.extend_from_slice(&window);
    let (code, out, err) = Proc::spawn(hosts.reprise(1, &args)).wait();
    assert_eq!(code, Some(0), "{out}\n{err}");

    // Merge: one run, every row on the coordinator's clock.
    let merged = dir.path().join("merged");
    let out = run_merge(&[s(&runs[0]), s(&runs[1]), s(&runs[2]), "-o", s(&merged)]);
    let text = ok(&out);
    assert!(text.contains("3 shards of coordinator run"), "{text}");
    let all = rows(&merged);
    // The analyzer reads the merged run as one: every worker's rows, exact percentiles.
    let report =
        reprise_report::analyze(&merged, &reprise_report::Options::default()).expect("analyzed");
    assert_eq!(report.overall.requests, all.len() as u64);
    let one = rows(&single);
    assert_eq!(all.len(), one.len());
    let info = run_json(&merged);
    let t0 = info["distributed"]["t0_ns"].as_i64().unwrap();
    let single_t0 = run_json(&single)["clock"]["anchor_wall_ns"]
        .as_i64()
        .unwrap();
    // Scheduled times: exactly the single host's (the plan is the same; the clock is the
    // coordinator's for all three workers, the shifted one included).
    assert_eq!(schedule(&all, t0), schedule(&one, single_t0));
    // Per-second achieved rate (by `sent`) within 1% (or one request of a second).
    let per_second = |rows: &[ResultRecord], t0: i64| {
        let mut m: BTreeMap<i64, u64> = BTreeMap::new();
        for r in rows {
            *m.entry((r.sent.unwrap().0 - t0).div_euclid(1_000_000_000))
                .or_default() += 1;
        }
        m
    };
    let (a, b) = (per_second(&all, t0), per_second(&one, single_t0));
    for (sec, n) in &b {
        let got = a.get(sec).copied().unwrap_or(0);
        assert!(
            got.abs_diff(*n) <= 1.max(n / 100),
            "second {sec}: {got} merged, {n} single"
        );
    }
    // Each worker's first request went within its queue of its scheduled time, on the
    // common clock: the start skew is bounded by the offsets' uncertainties.
    let mut starts = Vec::new();
    for k in 0..3u32 {
        let first = all
            .iter()
            .filter(|r| r.shard == k)
            .min_by_key(|r| r.scheduled)
            .unwrap();
        starts.push((first.sent.unwrap().0 - first.scheduled.0) as f64 / 1e6);
    }
    eprintln!("first requests sent after their scheduled time: {starts:?} ms");
    assert!(starts.iter().all(|s| (0.0..5.0).contains(s)), "{starts:?}");

    // The summary from the histograms alone agrees with the rows' exact p99 TTFT within
    // the histograms' precision (3 significant digits).
    let summary = ok(&run_merge(&[
        s(&runs[0]),
        s(&runs[1]),
        s(&runs[2]),
        "--summary-only",
    ]));
    let p99 = summary
        .lines()
        .find(|l| l.starts_with("TTFT "))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    let mut ttft: Vec<u64> = all.iter().filter_map(|r| r.ttft_us).collect();
    ttft.sort_unstable();
    let rank = ((0.99 * ttft.len() as f64).ceil() as usize).max(1) - 1;
    let exact = ttft[rank] as f64 / 1e3;
    eprintln!("p99 TTFT: {p99} ms from the merged histograms, {exact:.3} ms exact");
    assert!(
        (p99 - exact).abs() <= exact * 0.001 + 0.05,
        "{p99} vs {exact}"
    );
    drop(sim);
}

#[test]
fn a_worker_killed_mid_run_leaves_a_partial_merge_and_a_dead_coordinator_stops_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start(&["--speedup", "20"]);
    let (coordinator, coord_url) = local_coordinator("2", &["--margin", "0.5", "--grace", "3"]);
    let runs: Vec<PathBuf> = (0..2).map(|k| dir.path().join(format!("s{k}"))).collect();
    let worker = |k: usize| {
        let shard = format!("{k}/2");
        let window = ["--duration", "300", "--speed", "20"];
        local_worker(TRACE, &sim.url, &shard, &coord_url, &runs[k], &window)
    };
    let w0 = worker(0);
    let mut w1 = worker(1);
    w1.line("starting in");
    std::thread::sleep(Duration::from_millis(2500));
    let _ = w1.child.kill();
    let _ = w1.child.wait();
    let (code, out, err) = w0.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, _) = coordinator.wait();
    // The killed worker never reported its end.
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("shard 1") && out.contains("never reported its end"),
        "{out}"
    );
    let planned = run_json(&runs[0])["distributed"]["planned"]
        .as_u64()
        .unwrap();
    let shard1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[1].join("shard.json")).unwrap()).unwrap();
    let planned1 = shard1["planned"].as_u64().unwrap();
    assert!(planned > 0 && planned1 > 0);
    let merged = dir.path().join("merged");
    let out = run_merge(&[s(&runs[0]), s(&runs[1]), "-o", s(&merged)]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Killed before its results were closed: none of its rows readable, all counted.
    let want = format!(
        "run PARTIAL: shard 1 died: {} of its {} requests were never sent",
        reprise_trace::human::thousands(planned1),
        reprise_trace::human::thousands(planned1)
    );
    assert!(text.contains(&want), "{text}");
    let info = run_json(&merged);
    assert_eq!(info["complete"], false);
    assert_eq!(info["distributed"]["workers"][1]["state"], "died");
    assert!(
        info["distributed"]["partial"]
            .as_str()
            .unwrap()
            .contains("shard 1 died")
    );

    // A coordinator that dies before the start: every waiting worker exits 2, saying so.
    let (coordinator, coord_url) = local_coordinator("3", &[]);
    let waiting: Vec<Proc> = (0..2)
        .map(|k| {
            let shard = format!("{k}/3");
            let out = dir.path().join(format!("w{k}"));
            local_worker(
                TRACE,
                &sim.url,
                &shard,
                &coord_url,
                &out,
                &["--duration", "10"],
            )
        })
        .collect();
    for w in &waiting {
        w.line("joining the coordinator");
    }
    std::thread::sleep(Duration::from_millis(1500));
    drop(coordinator);
    for w in waiting {
        let (code, _, err) = w.wait();
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("went away before the start"), "{err}");
    }
}

#[test]
fn bad_shards_coordinators_and_merges_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start(&["--speedup", "20"]);
    // --shard 3/3, and --shards without JOB_COMPLETION_INDEX.
    let out = reprise(&[
        "replay",
        TRACE,
        "--target",
        &sim.url,
        "--shard",
        "3/3",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        show(&out).contains("--shard: shard 3/3: shards are numbered 0 to 2"),
        "{}",
        show(&out)
    );
    let out = reprise_with(&["replay", TRACE, "--shards", "3", "--dry-run"], |c| {
        c.env_remove("JOB_COMPLETION_INDEX");
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(
        show(&out).contains("JOB_COMPLETION_INDEX is not set"),
        "{}",
        show(&out)
    );
    // An unreachable coordinator.
    let out = reprise(&[
        "replay",
        TRACE,
        "--target",
        &sim.url,
        "--shard",
        "0/2",
        "--coordinator",
        "http://127.0.0.1:9",
        "--coordinator-wait",
        "0.5",
        "--out",
        s(&dir.path().join("u")),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        show(&out).contains("coordinator http://127.0.0.1:9"),
        "{}",
        show(&out)
    );
    assert!(show(&out).contains("still unreachable"), "{}", show(&out));

    // A coordinator of 2: a worker saying 3 shards, one registering twice, and one with
    // another trace are refused, naming both sides; the run never starts.
    let (coordinator, coord_url) = local_coordinator("2", &["--register-timeout", "4"]);
    let join = |trace: &str, shard: &str, name: &str| {
        let out = dir.path().join(name);
        local_worker(
            trace,
            &sim.url,
            shard,
            &coord_url,
            &out,
            &["--duration", "5"],
        )
    };
    let first = join(TRACE, "0/2", "a");
    first.line("joining the coordinator");
    std::thread::sleep(Duration::from_millis(800));
    let (code, _, err) = join(TRACE, "1/3", "b").wait();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("shard 1 says there are 3 shards; this coordinator runs 2"),
        "{err}"
    );
    let (code, _, err) = join(TRACE, "0/2", "c").wait();
    assert_eq!(code, Some(2));
    assert!(err.contains("shard 0 registered twice"), "{err}");
    let other = dir.path().join("other.parquet");
    ok(&reprise(&[
        "import",
        "burstgpt",
        s(&fixture("burstgpt-v3.csv")),
        "-o",
        s(&other),
    ]));
    let (code, _, err) = join(s(&other), "1/2", "d").wait();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("shard 1's trace (digest") && err.contains("differs from shard 0's"),
        "{err}"
    );
    // Nobody else registers: the coordinator gives up, naming the missing shard, and the
    // waiting worker exits 2 with the reason.
    let (code, _, err) = coordinator.wait();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("shard 1 of 2 never registered within 4 s"),
        "{err}"
    );
    let (code, _, err) = first.wait();
    assert_eq!(code, Some(2));
    assert!(err.contains("never registered"), "{err}");

    // Merges: a run with itself, runs of different coordinators, a directory that is no
    // worker's run.
    let fake = |name: &str, coordinator: &str, shard: u32| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("shard.json"),
            format!(
                r#"{{"coordinator_id":"{coordinator}","shards":2,"shard":{shard},"planned":5}}"#
            ),
        )
        .unwrap();
        d
    };
    let (x, y) = (fake("x", "coord-1", 0), fake("y", "coord-2", 1));
    let out = run_merge(&[s(&x), s(&x), "--summary-only"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(show(&out).contains("is given twice"), "{}", show(&out));
    let out = run_merge(&[s(&x), s(&y), "--summary-only"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        show(&out).contains("runs of different coordinators cannot be merged"),
        "{}",
        show(&out)
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run_merge(&[s(&empty), "--summary-only"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        show(&out).contains("not a worker's run of a distributed replay"),
        "{}",
        show(&out)
    );
}
