//! # reprise-dist — one replay across N load generators, started on one timeline and merged
//!
//! When one machine cannot send the load, N workers (`reprise replay --shard K/N`, or
//! `--shards N` with the index from an Indexed Job's `JOB_COMPLETION_INDEX`) each send
//! their part of the one plan (`reprise_replay::shard`), started together by a
//! coordinator and merged afterwards:
//!
//! - [`coordinator`]: `reprise coordinate` — a small HTTP/JSON API ([`protocol`]): workers
//!   register (shard, digests of trace and arguments, clock offset; a mismatch or a second
//!   registration is refused naming both), and once all N have, the coordinator announces
//!   the start `T0 = now + margin` on its own clock.
//! - [`worker`]: the worker's side — the clock offset measured NTP-style (16 round trips,
//!   the least-delay one: offset = t_coord − (t_local + rtt/2), uncertain by rtt/2), the
//!   registration, the wait, and `T0` turned into this host's monotonic clock, so every
//!   `scheduled` and `sent` of every worker is on the coordinator's clock.
//! - [`merge`]: `reprise merge` — the workers' runs as one: result files side by side
//!   (hard links), `run.json` listing workers, shards, offsets and counts, the summary from
//!   their HDR histograms; a worker that died or is missing makes the run `partial`.
//!
//! [`digest_path`] and [`digest_text`] are the digests workers register with.

pub mod coordinator;
pub mod merge;
pub mod protocol;
pub mod worker;

use std::io::Read;
use std::path::{Path, PathBuf};

/// A distributed replay's error: every message is one line naming the shard, run or URL.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The coordinator cannot be reached (or went away).
    #[error("{0}")]
    Unreachable(String),
    /// The coordinator refused (a mismatch, a second registration, a run that will not
    /// start).
    #[error("the coordinator refused: {0}")]
    Refused(String),
    /// The run did not start (a worker never registered, the skew bound exceeded).
    #[error("{0}")]
    NotStarted(String),
    /// A run directory cannot be merged.
    #[error("{0}")]
    Input(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// The digest of a text (the workload's arguments), 16 hex digits.
pub fn digest_text(text: &str) -> String {
    format!("{:016x}", fnv(FNV_OFFSET, text.as_bytes()))
}

/// The digest of a trace's content: a file, or a directory's part files in order (their
/// names and bytes), 16 hex digits (FNV-1a: for telling traces apart, not for security).
pub fn digest_path(path: &Path) -> Result<String, DistError> {
    let io = |p: &Path, e: std::io::Error| DistError::Io {
        path: p.to_owned(),
        source: e,
    };
    let files = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_owned()]
    };
    let mut h = FNV_OFFSET;
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        if let Some(name) = f.file_name() {
            h = fnv(h, name.to_string_lossy().as_bytes());
        }
        let mut file = std::fs::File::open(&f).map_err(|e| io(&f, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| io(&f, e))?;
            if n == 0 {
                break;
            }
            h = fnv(h, &buf[..n]);
        }
    }
    Ok(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_tell_contents_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        assert_ne!(digest_path(&a).unwrap(), digest_path(&b).unwrap());
        assert_eq!(digest_path(&a).unwrap(), digest_path(&a).unwrap());
        assert_eq!(digest_path(&a).unwrap().len(), 16);
        assert!(digest_path(dir.path()).is_ok());
        assert!(
            digest_path(&dir.path().join("none"))
                .unwrap_err()
                .to_string()
                .contains("none")
        );
        assert_ne!(digest_text("x"), digest_text("y"));
    }
}
