//! How a recorder runs ([`RecordConfig`]) and the checks made before it starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::RecordError;
use crate::observe::ObserveOptions;
use crate::salt;

/// How a recorder runs.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin port (`/metrics`, `/health`), if any.
    pub admin: Option<SocketAddr>,
    /// The server requests go to (`http(s)://host:port`, optionally with a path prefix).
    pub upstream: String,
    /// Output directory of part files.
    pub out: PathBuf,
    /// What is derived from each exchange.
    pub observe: ObserveOptions,
    /// Header whose value (salted and hashed) becomes `session_id`; else the `user` field.
    pub session_header: Option<String>,
    /// Fraction of requests recorded (all are forwarded).
    pub sample: f64,
    /// Record only paths starting with one of these (all when empty).
    pub paths: Vec<String>,
    /// Record only these models (all when empty).
    pub models: Vec<String>,
    /// A part file is finished (made valid) this often when rows arrived.
    pub flush_interval: Duration,
    /// A part file holds at most this many rows.
    pub part_max_rows: u64,
    /// Request and response bodies up to this size are kept for observation; bigger ones
    /// pass through and are recorded with what is known.
    pub max_observed_body: usize,
    /// Time to connect to the upstream and get its response head.
    pub upstream_timeout: Duration,
    /// Observation worker threads.
    pub workers: usize,
    /// How the observation workers step aside for forwarding.
    /// `Priority::Nice(RECORDING_NICE)` (the default): a share of a busy CPU, with the
    /// shortest time slice. [`Priority::Idle`](crate::Priority::Idle): they run only on CPU
    /// time nothing else wants (Linux `SCHED_IDLE`), which gave the lowest added TTFT p99 on
    /// a machine with CPU to spare; on CPUs kept busy by other work they barely run, so rows
    /// wait in memory (a crash loses them, past `flush_interval`) and past `queue` are
    /// written without tokenizing (counted). The writer runs at nice 0 either way (with the
    /// shortest slice), so that its part every flush interval is never starved.
    pub worker_priority: crate::Priority,
    /// Exchanges waiting for a worker before rows are written without tokenizing.
    pub queue: usize,
    /// How long `shutdown` waits for exchanges in flight.
    pub drain: Duration,
    /// Limits that keep hostile or broken clients from hurting the others.
    pub limits: Limits,
}

/// What one client may take from the proxy. Past a limit the client gets an HTTP error or
/// its connection closed; the others are served as before.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of a request head (request line and headers): a bigger one is answered 431.
    pub max_header_bytes: usize,
    /// Time to send a whole request head, idle keep-alive time included: a slower client
    /// (slowloris, or idle) is disconnected.
    pub header_timeout: Duration,
    /// Client connections open at once. Past it a new client makes the connection idle
    /// longest close (as nginx does with keep-alive connections); when every one is busy
    /// with an exchange, the new client waits for one to end.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 64 KiB of head, 30 s to send it, 10,000 connections.
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 << 10,
            header_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

impl RecordConfig {
    /// Defaults for the given addresses and output.
    pub fn new(
        listen: SocketAddr,
        upstream: impl Into<String>,
        out: PathBuf,
        salt: salt::Salt,
    ) -> Self {
        RecordConfig {
            listen,
            admin: None,
            upstream: upstream.into(),
            out,
            observe: ObserveOptions {
                block_tokens: 16,
                record_content: false,
                salt,
            },
            session_header: None,
            sample: 1.0,
            paths: Vec::new(),
            models: Vec::new(),
            flush_interval: Duration::from_secs(1),
            part_max_rows: 1_000_000,
            max_observed_body: 16 << 20,
            upstream_timeout: Duration::from_secs(600),
            workers: 2,
            worker_priority: crate::Priority::Nice(crate::RECORDING_NICE),
            queue: 10_000,
            drain: Duration::from_secs(30),
            limits: Limits::default(),
        }
    }
}

impl RecordConfig {
    /// Checks the settings and parses the upstream URL.
    pub fn check(&self) -> Result<reqwest::Url, RecordError> {
        let upstream = reqwest::Url::parse(&self.upstream).map_err(|e| RecordError::Setting {
            setting: "upstream",
            message: format!("`{}`: {e}", self.upstream),
        })?;
        if !matches!(upstream.scheme(), "http" | "https") {
            return Err(RecordError::Setting {
                setting: "upstream",
                message: format!("`{}`: must be http:// or https://", self.upstream),
            });
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(RecordError::Setting {
                setting: "max-header-bytes",
                message: format!(
                    "{}: the request head limit must be at least 8192 bytes",
                    self.limits.max_header_bytes
                ),
            });
        }
        if self.limits.max_connections == 0 {
            return Err(RecordError::Setting {
                setting: "max-connections",
                message: "0: the connection limit must be positive".into(),
            });
        }
        if self.limits.header_timeout.is_zero() {
            return Err(RecordError::Setting {
                setting: "header-timeout",
                message: "0: the header timeout must be positive".into(),
            });
        }
        if !(self.sample > 0.0 && self.sample <= 1.0) {
            return Err(RecordError::Setting {
                setting: "sample",
                message: format!("{}: the sampled fraction must be in (0, 1]", self.sample),
            });
        }
        Ok(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstream: &str, sample: f64) -> RecordConfig {
        let mut c = RecordConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            PathBuf::from("/tmp/x"),
            salt::Salt::from_bytes(&[7; 32]),
        );
        c.sample = sample;
        c
    }

    #[test]
    fn upstreams_and_samples_are_checked() {
        assert_eq!(
            config("http://h:8000/llm", 1.0).check().unwrap().as_str(),
            "http://h:8000/llm"
        );
        let e = config("ftp://h", 1.0).check().unwrap_err().to_string();
        assert_eq!(e, "upstream `ftp://h`: must be http:// or https://");
        assert!(config("not a url", 1.0).check().is_err());
        assert!(config("http://h", 0.0).check().is_err());
        assert!(config("http://h", 1.5).check().is_err());
        assert!(config("http://h", 0.25).check().is_ok());
    }
}
