//! A worker's side of a coordinated start: measure the clock offset to the coordinator
//! NTP-style, register, wait for the start, and turn it into this host's monotonic clock;
//! at the end, measure the offset again (the residual) and report.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::DistError;
use crate::protocol::{DoneReport, ErrorReply, Registered, Registration, StartReply, TimeReply};

/// Round trips of an offset measurement (the least-delay one is used).
pub const SAMPLES: usize = 16;

/// Test-only: shifts this process's wall clock by this many milliseconds (a host whose
/// clock is off), so that tests can check the offset correction. Never set it otherwise.
pub const TEST_CLOCK_OFFSET_ENV: &str = "REPRISE_TEST_CLOCK_OFFSET_MS";

/// This host's wall clock, ns since the epoch (shifted by [`TEST_CLOCK_OFFSET_ENV`]).
pub fn local_wall_ns() -> i64 {
    let shift_ms: i64 = std::env::var(TEST_CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
        + shift_ms * 1_000_000
}

/// A clock offset: the coordinator's clock minus this host's, with its uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    /// Coordinator − local, ns.
    pub offset_ns: i64,
    /// Half the least round trip, ns.
    pub uncertainty_ns: i64,
}

/// The offset from one exchange: sent at `t1`, answered with `server`, received at `t4`
/// (local ns): `server − (t1 + rtt/2)`, uncertain by `rtt/2`.
pub fn offset_of(t1: i64, server: i64, t4: i64) -> Offset {
    let rtt = (t4 - t1).max(0);
    Offset {
        offset_ns: server - (t1 + rtt / 2),
        uncertainty_ns: rtt / 2,
    }
}

/// The coordinator as a worker sees it.
#[derive(Debug, Clone)]
pub struct Coordinator {
    url: String,
    client: reqwest::Client,
}

impl Coordinator {
    /// The coordinator at `url` (e.g. `http://coordinator:7070`).
    pub fn new(url: &str) -> Result<Coordinator, DistError> {
        let client = reprise_net::client_builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| DistError::Config(format!("HTTP client: {e}")))?;
        Ok(Coordinator {
            url: url.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> DistError {
        DistError::Unreachable(format!("coordinator {}: {e}", self.url))
    }

    async fn answer<T: for<'de> serde::Deserialize<'de>>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, DistError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            let why = serde_json::from_slice::<ErrorReply>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(DistError::Refused(why));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| self.unreachable(format!("an answer that is not the API's: {e}")))
    }

    /// Measures the clock offset over [`SAMPLES`] round trips, keeping the one of least
    /// delay (its offset is the least disturbed by queueing on the way).
    pub async fn measure_offset(&self) -> Result<Offset, DistError> {
        let url = format!("{}/v1/time", self.url);
        let mut best: Option<Offset> = None;
        for _ in 0..SAMPLES {
            let t1 = local_wall_ns();
            let resp = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let reply: TimeReply = self.answer(resp).await?;
            let t4 = local_wall_ns();
            let o = offset_of(t1, reply.now_ns, t4);
            if best.is_none_or(|b| o.uncertainty_ns < b.uncertainty_ns) {
                best = Some(o);
            }
        }
        Ok(best.expect("at least one sample"))
    }

    /// Registers this worker; a refusal (a mismatch, a second registration) is an error
    /// carrying the coordinator's message.
    pub async fn register(&self, r: &Registration) -> Result<Registered, DistError> {
        let resp = self
            .client
            .post(format!("{}/v1/register", self.url))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(r).unwrap_or_default())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.answer(resp).await
    }

    /// Waits for the common start (until every shard has registered).
    pub async fn wait_start(&self, shard: u32) -> Result<StartReply, DistError> {
        let resp = self
            .client
            .get(format!("{}/v1/start?shard={shard}", self.url))
            .send()
            .await
            .map_err(|e| {
                DistError::Unreachable(format!(
                    "coordinator {} went away before the start: {e}",
                    self.url
                ))
            })?;
        let status = resp.status();
        match self.answer(resp).await {
            Err(DistError::Unreachable(e)) if status.is_success() => Err(DistError::Unreachable(
                format!("coordinator went away before the start: {e}"),
            )),
            other => other,
        }
    }

    /// Reports this worker's end (best effort: the coordinator may be gone).
    pub async fn done(&self, report: &DoneReport) -> Result<(), DistError> {
        let resp = self
            .client
            .post(format!("{}/v1/done", self.url))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(report).unwrap_or_default())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.answer::<serde_json::Value>(resp).await.map(|_| ())
    }
}

/// The run's start on this host: the monotonic instant when the coordinator's clock reads
/// `t0_ns`, given the offset (coordinator − local).
pub fn local_start(t0_ns: i64, offset: Offset) -> Instant {
    let (now, wall) = (Instant::now(), local_wall_ns());
    // On this host's clock the start is at t0 − offset.
    let ahead = t0_ns - offset.offset_ns - wall;
    if ahead >= 0 {
        now + Duration::from_nanos(ahead as u64)
    } else {
        now.checked_sub(Duration::from_nanos((-ahead) as u64))
            .unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_gives_the_midpoint_offset_and_half_the_round_trip() {
        // Sent at 1,000, the coordinator read 1,250 + 4 (its clock 250 ahead, 4 of the
        // way), received at 1,010.
        let o = offset_of(1_000, 1_254, 1_010);
        assert_eq!(
            o,
            Offset {
                offset_ns: 249,
                uncertainty_ns: 5
            }
        );
        // A clock behind gives a negative offset.
        assert_eq!(offset_of(1_000, 700, 1_000).offset_ns, -300);
    }

    #[test]
    fn the_start_lands_where_the_coordinators_clock_says() {
        let offset = Offset {
            offset_ns: 250_000_000,
            uncertainty_ns: 0,
        };
        // The coordinator's clock reads local + 250 ms; a start 1 s ahead of it is 1 s
        // ahead here.
        let t0 = local_wall_ns() + 250_000_000 + 1_000_000_000;
        let start = local_start(t0, offset);
        let ahead = start.saturating_duration_since(Instant::now());
        assert!(
            ahead > Duration::from_millis(990) && ahead <= Duration::from_secs(1),
            "{ahead:?}"
        );
    }
}

/// A worker that has joined a coordinated run: the coordinator, when to start on this
/// host's monotonic clock, and what `run.json` says of the shard.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The coordinator.
    pub coordinator: Coordinator,
    /// The start, on this host's monotonic clock.
    pub start: Instant,
    /// The shard's description (also written to `shard.json` in the run directory).
    pub distributed: reprise_trace::run::Distributed,
    /// The coordinator's warning about the start skew, if any.
    pub warning: Option<String>,
    offset: Offset,
}

/// This host's name (for the coordinator's messages).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Joins the coordinated run at `url`: measures the clock offset, registers (`r` without
/// its offset, which is filled in), waits for the start and writes `shard.json` into
/// `run_dir` (created), so that even a worker that dies leaves its shard's description.
pub async fn join(
    url: &str,
    mut r: Registration,
    run_dir: &std::path::Path,
    reach_within: Duration,
) -> Result<Joined, DistError> {
    let coordinator = Coordinator::new(url)?;
    // The coordinator may come up after the workers (pods start in any order).
    let deadline = Instant::now() + reach_within;
    let offset = loop {
        match coordinator.measure_offset().await {
            Ok(o) => break o,
            Err(DistError::Unreachable(e)) if Instant::now() < deadline => {
                tracing::info!("{e}: trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(DistError::Unreachable(e)) => {
                return Err(DistError::Unreachable(format!(
                    "{e} (still unreachable after {:.0} s)",
                    reach_within.as_secs_f64()
                )));
            }
            Err(e) => return Err(e),
        }
    };
    r.offset_ns = offset.offset_ns;
    r.uncertainty_ns = offset.uncertainty_ns;
    coordinator.register(&r).await?;
    let start = coordinator.wait_start(r.shard).await?;
    let distributed = reprise_trace::run::Distributed {
        coordinator_id: start.coordinator_id.clone(),
        coordinator: coordinator.url().to_owned(),
        shards: r.shards,
        shard: Some(r.shard),
        t0_ns: start.t0_ns,
        offset_ns: offset.offset_ns,
        uncertainty_ns: offset.uncertainty_ns,
        planned: r.planned,
        ..reprise_trace::run::Distributed::default()
    };
    std::fs::create_dir_all(run_dir).map_err(|e| DistError::Io {
        path: run_dir.to_owned(),
        source: e,
    })?;
    reprise_trace::run::write_json(&run_dir.join(crate::merge::SHARD_FILE), &distributed)
        .map_err(|e| DistError::Input(e.to_string()))?;
    Ok(Joined {
        coordinator,
        start: local_start(start.t0_ns, offset),
        distributed,
        warning: start.warning,
        offset,
    })
}

/// After the run: the offset measured again (its change is the residual, written to
/// `run.json`), and the end reported. Best effort: the coordinator may be gone; returns
/// the residual when it could be measured.
pub async fn finish(
    joined: &Joined,
    sent: u64,
    complete: bool,
    run_dir: &std::path::Path,
) -> Option<i64> {
    let residual = match joined.coordinator.measure_offset().await {
        Ok(o) => Some(o.offset_ns - joined.offset.offset_ns),
        Err(e) => {
            tracing::warn!("{e}: the clock offset's drift during the run is unknown");
            None
        }
    };
    if let Some(res) = residual
        && let Ok(Some(mut info)) = reprise_trace::run::RunInfo::read(run_dir)
        && let Some(d) = info.distributed.as_mut()
    {
        d.residual_ns = Some(res);
        let _ = reprise_trace::run::write_json(&run_dir.join("run.json"), &info);
    }
    let report = DoneReport {
        shard: joined.distributed.shard.unwrap_or(0),
        sent,
        planned: joined.distributed.planned,
        complete,
    };
    if let Err(e) = joined.coordinator.done(&report).await {
        tracing::warn!("reporting the end: {e}");
    }
    residual
}
