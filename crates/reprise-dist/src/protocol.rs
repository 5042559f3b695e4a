//! The coordinator's HTTP/JSON API (documented in `docs/replay.md`, "Replaying across
//! hosts"). Every answer is JSON; an error is `{"error": "..."}` with a 4xx/5xx status.
//!
//! | call | body | answer |
//! |---|---|---|
//! | `GET /v1/time` | — | [`TimeReply`]: the coordinator's clock, for offset measurement |
//! | `POST /v1/register` | [`Registration`] | [`Registered`], or 409 naming the conflict |
//! | `GET /v1/start?shard=K` | — | [`StartReply`] once every shard has registered (held open until then), or 503 with why the run will not start |
//! | `POST /v1/done` | [`DoneReport`] | `{}` |
//! | `GET /v1/status` | — | [`Status`] |

use serde::{Deserialize, Serialize};

/// `GET /v1/time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeReply {
    /// The coordinator's clock, ns since the epoch (its one wall-clock anchor plus a
    /// monotonic offset, so it never steps).
    pub now_ns: i64,
}

/// `POST /v1/register`: a worker, its shard and what it will send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Registration {
    /// Its shard.
    pub shard: u32,
    /// Shards in all, as the worker was told.
    pub shards: u32,
    /// Digest of the trace's content (`none` without a trace).
    pub trace_digest: String,
    /// Digest of the workload's arguments (load, window, seed, model, API).
    pub args_digest: String,
    /// The worker's host name.
    pub host: String,
    /// Requests its shard plans.
    pub planned: u64,
    /// How long its workload is meant to last, ns (0 when unknown: a counted closed loop).
    pub intended_ns: u64,
    /// Its clock offset (coordinator − worker), ns.
    pub offset_ns: i64,
    /// Half its least round trip, ns.
    pub uncertainty_ns: i64,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The coordinator run's id.
    pub coordinator_id: String,
}

/// `GET /v1/start`: the common start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartReply {
    /// The coordinator run's id.
    pub coordinator_id: String,
    /// The start, ns since the epoch on the coordinator's clock.
    pub t0_ns: i64,
    /// Bound on the spread of the workers' starts: the two largest offset
    /// uncertainties added, ns.
    pub skew_bound_ns: i64,
    /// A warning for the run (the skew bound above the warning limit).
    pub warning: Option<String>,
}

/// `POST /v1/done`: a worker's end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DoneReport {
    /// Its shard.
    pub shard: u32,
    /// Requests it sent.
    pub sent: u64,
    /// Requests it planned.
    pub planned: u64,
    /// Whether it sent and finished its whole plan.
    pub complete: bool,
}

/// `GET /v1/status`, and what the coordinator writes to `coordinator.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The coordinator run's id.
    pub coordinator_id: String,
    /// Workers expected.
    pub workers: u32,
    /// Registered workers, by shard.
    pub registered: Vec<Registration>,
    /// The start, once announced.
    pub t0_ns: Option<i64>,
    /// Why the run did not start (or failed).
    pub failure: Option<String>,
    /// Workers that reported their end.
    pub done: Vec<DoneReport>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, one line.
    pub error: String,
}
