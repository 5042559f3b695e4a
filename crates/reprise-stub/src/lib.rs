//! # reprise-stub — stub servers for tests and benches (dev-only)
//!
//! The servers reprise's benches and tests measure against, defined once:
//!
//! - [`sse`]: a no-op OpenAI-style streaming server (16 content events, usage, `[DONE]`),
//!   with paths that pace or hold the stream — the upstream of the proxy bench and the
//!   target of the pacing bench, run in a child process ([`sse::serve_forever`]) or on a
//!   runtime in this one;
//! - [`fixed`]: a raw HTTP/1.1 endpoint answering every request with one body (a Prometheus
//!   exposition, garbage), or never answering;
//! - [`dead_url`]: an address nothing listens on.
//!
//! No crate depends on this one outside `[dev-dependencies]` (`scripts/check-invariants`
//! checks).

pub mod fixed;
pub mod sse;

/// `http://127.0.0.1:PORT` where nothing listens (a port just bound and released).
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dead_url_refuses_connections() {
        let url = super::dead_url();
        let addr = url.trim_start_matches("http://");
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
