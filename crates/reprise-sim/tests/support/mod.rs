//! A small HTTP/1.1 client for the tests: sends one request on a fresh connection and
//! timestamps every body chunk, so SSE events can be parsed and timed.

#![allow(dead_code, reason = "each test binary uses part of the support module")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use reprise_protocol::sse::{SseEvent, SseParser};
use serde_json::Value;

/// One response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// (time since send, event) for every SSE event.
    pub events: Vec<(Duration, SseEvent)>,
    /// The body ended with an error (aborted stream).
    pub body_error: Option<String>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Events parsed as JSON (the [DONE] marker and malformed events skipped).
    pub fn chunks(&self) -> Vec<(Duration, Value)> {
        self.events
            .iter()
            .filter_map(|(t, e)| serde_json::from_str(&e.data).ok().map(|v| (*t, v)))
            .collect()
    }
}

/// Sends a request; `Err` when the connection fails before a response.
pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Reply, String> {
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = resp.into_body();
    let mut all = Vec::new();
    let mut events = Vec::new();
    let mut parser = SseParser::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    let t = start.elapsed();
                    all.extend_from_slice(&data);
                    parser
                        .feed(&data, |e| events.push((t, e)))
                        .expect("valid SSE framing");
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Ok(Reply {
        status,
        content_type,
        body: all,
        events,
        body_error,
    })
}

pub async fn post(base: &str, path: &str, body: Value) -> Reply {
    send(base, "POST", path, Some(body))
        .await
        .expect("request succeeds")
}

pub async fn get(base: &str, path: &str) -> Reply {
    send(base, "GET", path, None)
        .await
        .expect("request succeeds")
}

/// The value of one sample line in a Prometheus exposition (`name{labels} value`).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{name_and_labels}` in:\n{text}"))
}
