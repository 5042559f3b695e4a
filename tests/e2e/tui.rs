//! `reprise replay --tui` in a real terminal: tmux runs the replay in a detached session,
//! `capture-pane` reads the screen and `send-keys` presses `q`. The last frame must show the
//! request count and P99s that the final summary prints; `q` during a run must stop it and
//! leave a valid run directory marked incomplete.
//!
//! Without tmux the test says SKIPPED, unless `REPRISE_REQUIRE_TMUX=1` (CI sets it once the
//! package is installed) makes it fail.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reprise_trace::{DatasetReader, ResultRecord};

use crate::support::*;

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Option<Tmux> {
        let socket = format!("reprise-test-{name}-{}", std::process::id());
        let ok = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "120", "-y", "45"])
            .arg(command)
            .status()
            .ok()?
            .success();
        assert!(ok, "tmux new-session failed");
        Some(Tmux { socket })
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn press(&self, key: &str) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", key])
            .status();
    }

    /// Polls the screen until `want` holds (or panics after `limit`).
    fn wait_for(&self, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if want(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < limit,
                "the screen never showed what was awaited:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("REPRISE_REQUIRE_TMUX").as_deref() != Ok("1"),
            "REPRISE_REQUIRE_TMUX=1 but no tmux"
        );
        eprintln!("SKIPPED: no tmux (apt-get install tmux)");
    }
    ok
}

/// The replay in a shell line: stdout (the summary) to `out`, the exit code to `rc`; the
/// view draws on stderr, the terminal.
fn replay_line(dir: &Path, duration: &str) -> String {
    format!(
        "cd {} && {} replay traces/azure-conv-2023.parquet --target sim:llama-8b-h100 --sim-speedup 10 --speed 10 --duration {duration} --out {} --tui > {} ; echo $? > {}; sleep 60",
        s(&repo()),
        env!("CARGO_BIN_EXE_reprise"),
        s(&dir.join("run")),
        s(&dir.join("out")),
        s(&dir.join("rc")),
    )
}

fn wait_file(path: &Path, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The p99 column of a row of the summary's latency table.
fn summary_p99(summary: &str, row: &str) -> String {
    let line = summary
        .lines()
        .find(|l| l.starts_with(row) && l[row.len()..].starts_with(' ') && !l.contains('('))
        .unwrap_or_else(|| panic!("no {row} row in\n{summary}"));
    line[row.len()..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned()
}

#[test]
fn the_live_view_ends_on_the_figures_the_summary_prints() {
    if !have_tmux() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start("final", &replay_line(dir.path(), "60")).unwrap();
    // While it runs: the view's panels.
    let running = tmux.wait_for(Duration::from_secs(60), |s| {
        s.contains("request rate") && s.contains("in flight")
    });
    assert!(running.contains("TTFT"), "{running}");
    assert!(running.contains("schedule lag"), "{running}");
    let last = tmux.wait_for(Duration::from_secs(90), |s| s.contains("press any key"));
    tmux.press("q");
    let rc = wait_file(&dir.path().join("rc"), Duration::from_secs(30));
    assert_eq!(rc.trim(), "0");
    let summary = std::fs::read_to_string(dir.path().join("out")).unwrap();
    let requests = summary
        .lines()
        .find(|l| l.starts_with("requests "))
        .unwrap()
        .split(" (")
        .next()
        .unwrap()
        .to_owned();
    assert!(last.contains(&requests), "{requests:?} not on\n{last}");
    for row in ["TTFT", "E2E", "queue"] {
        let p99 = summary_p99(&summary, row);
        assert!(
            last.contains(&format!("{row} p50 ")) && last.contains(&format!("p99 {p99} ms")),
            "{row} p99 {p99} not on\n{last}"
        );
    }
}

#[test]
fn q_stops_the_run_and_leaves_a_valid_run_directory() {
    if !have_tmux() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start("q", &replay_line(dir.path(), "3600")).unwrap();
    // Some requests sent (the count before the slash, or alone while the plan's size is
    // not yet shown).
    tmux.wait_for(Duration::from_secs(60), |s| {
        s.split("requests ").nth(1).is_some_and(|rest| {
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            n.parse::<u64>().is_ok_and(|n| n > 0)
        }) && s.contains("in flight")
    });
    tmux.press("q");
    tmux.wait_for(Duration::from_secs(60), |s| {
        s.contains("stopping") || s.contains("final")
    });
    let last = tmux.wait_for(Duration::from_secs(90), |s| s.contains("press any key"));
    assert!(last.contains("INCOMPLETE"), "{last}");
    tmux.press("q");
    let rc = wait_file(&dir.path().join("rc"), Duration::from_secs(30));
    assert!(["0", "1"].contains(&rc.trim()), "exit code {rc}");
    let summary = std::fs::read_to_string(dir.path().join("out")).unwrap();
    assert!(summary.contains("run INCOMPLETE"), "{summary}");
    let run = dir.path().join("run");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["summary"]["complete"], false, "{info}");
    let rows = DatasetReader::<ResultRecord>::open(run.join("requests.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    assert!(!rows.is_empty());
    // Far fewer than the hour's requests.
    assert!(rows.len() < 5_000, "{} rows", rows.len());
}
