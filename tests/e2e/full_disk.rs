//! A full disk under `reprise record` and `reprise replay`, on a small tmpfs the test mounts
//! (root only; elsewhere each test says SKIPPED and passes).
//!
//! Decided behaviour: the proxy keeps forwarding every request, counts the rows it could not
//! write, writes again once space comes back, and exits 1 with the losses in its closing
//! line; the replayer stops sending at the first write failure (a run whose results cannot
//! be kept is not worth continuing), removes its unfinished file and exits 2 with one line
//! saying how many results were not written. Either way every file left is valid.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::record::{Kill, signal, sim};
use crate::support::*;
use crate::torture::{Load, read_parts, recorder};

/// A tmpfs of a given size, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills `dir` with a file until at most `leave` bytes are free; returns the file.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        let stat = rustix::fs::statvfs(dir).unwrap();
        if stat.f_bavail * stat.f_frsize <= leave || f.write_all(&chunk).is_err() {
            break;
        }
    }
    filler
}

#[test]
fn record_on_a_full_disk_keeps_forwarding_counts_its_losses_and_recovers() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let (sim, upstream) = sim();
    let _sim = Kill(sim);
    let out = disk.path.join("capture");
    std::fs::create_dir_all(&out).unwrap();
    let salt_dir = tempfile::tempdir().unwrap();
    let (proxy, addr, lines) = recorder(&upstream, &out, salt_dir.path(), &[]);
    let mut proxy = Kill(proxy);
    let drive = |seconds: f64| -> (u64, u64) {
        let load = Load::start(&addr, 4);
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let (sent, answered) = load.finish();
        (sent, answered.len() as u64)
    };
    // The disk fills: every request is still answered.
    let filler = fill(&disk.path, 48 << 10);
    let (sent, answered) = drive(2.5);
    assert_eq!(sent, answered, "forwarding broke on a full disk");
    let failed_rows = read_parts(&out).len();
    // Space comes back: recording resumes.
    std::fs::remove_file(&filler).unwrap();
    let (sent2, answered2) = drive(1.0);
    assert_eq!(sent2, answered2);
    std::thread::sleep(Duration::from_millis(500));
    let after = read_parts(&out).len();
    assert!(
        after > failed_rows,
        "nothing recorded once space came back ({after} rows)"
    );
    signal(&proxy.0, "-TERM");
    let status = proxy.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let lines = lines.lock().unwrap().join("\n");
    // Rows were lost, and the exit status says so.
    assert_eq!(status.code(), Some(1), "{lines}");
    let closing = lines
        .lines()
        .find(|l| l.contains("requests forwarded"))
        .unwrap_or_else(|| panic!("{lines}"));
    let number = |after: &str| -> u64 {
        closing
            .split(after)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap()
    };
    let forwarded: u64 = closing
        .trim_start_matches("reprise record: ")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(forwarded, sent + sent2, "{closing}");
    let (recorded, lost, write_errors) = (
        number("forwarded: "),
        number("skipped (filters, sampling), "),
        number("writer behind, "),
    );
    eprintln!("{closing}");
    assert!(write_errors > 0, "{closing}");
    assert_eq!(recorded + lost, forwarded, "{closing}");
    assert_eq!(read_parts(&out).len() as u64, recorded, "{closing}");
    assert!(!lines.contains("panicked"), "{lines}");
}

#[test]
fn replay_on_a_full_disk_stops_cleanly_and_says_what_was_not_written() {
    let Some(disk) = SmallDisk::mount("128k") else {
        return;
    };
    let run = disk.path.join("run");
    let out = reprise(&[
        "replay",
        "--target",
        "sim:instant",
        "--rate",
        "2000",
        "--requests",
        "6000",
        "--input-tokens",
        "16",
        "--output-tokens",
        "2",
        "--no-host-metrics",
        "--out",
        s(&run),
    ]);
    let err = fails(&out);
    assert!(
        err.contains("No space left on device")
            && err.contains("(run stopped; the results of 6000 requests were not written)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("{}", err.trim());
    // Nothing partial is left behind.
    for e in std::fs::read_dir(&run).unwrap() {
        let p = e.unwrap().path();
        assert!(
            !p.to_string_lossy().ends_with(".tmp"),
            "{} left behind",
            p.display()
        );
    }
}
