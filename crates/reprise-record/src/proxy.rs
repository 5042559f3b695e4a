//! The forwarding path: one exchange from the client's request to the upstream's response
//! head ([`handle`]), with the decisions made on the way — whether the exchange is recorded
//! (path and model filters, sampling), which headers pass (hop-by-hop ones do not), where
//! it goes upstream, and how a failure is answered and classed. The response body is then
//! streamed through a [`Tap`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use rand::RngExt;
use reprise_protocol::openai::error_body;
use reprise_trace::Timestamp;

use crate::body::{ProxyBody, Tap};
use crate::config::RecordConfig;
use crate::observe::Exchange;
use crate::sink::{Pending, Sink};
use crate::upstream::{UpstreamBody, UpstreamClient, chain, upstream_url, wire_request};

/// What every exchange shares.
pub(crate) struct Shared {
    pub(crate) config: RecordConfig,
    pub(crate) client: UpstreamClient,
    pub(crate) upstream: reqwest::Url,
    /// The upstream's path prefix, without its trailing slash.
    pub(crate) base_path: String,
    pub(crate) sink: Arc<Sink>,
    pub(crate) next_id: AtomicU64,
    /// Prefix of this recorder's request ids.
    pub(crate) run_tag: String,
    pub(crate) stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("upstream", &self.upstream.as_str())
            .finish_non_exhaustive()
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn forwardable(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str()) && name != header::UPGRADE
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(error_body(
        message,
        "proxy_error",
        None,
        Some(status.as_u16()),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn wall_now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
    )
}

/// Whether this request is recorded, as far as its path tells: the path filter, then
/// sampling (the model filter needs the body: [`model_wanted`]).
fn wanted(config: &RecordConfig, path: &str) -> bool {
    if !config.paths.is_empty() && !config.paths.iter().any(|p| path.starts_with(p.as_str())) {
        return false;
    }
    config.sample >= 1.0 || rand::rng().random::<f64>() < config.sample
}

/// Whether the body names one of the models recorded (always, without a model filter).
fn model_wanted(config: &RecordConfig, body: &Bytes) -> bool {
    if config.models.is_empty() {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned))
        .is_some_and(|m| config.models.contains(&m))
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let s = &*shared;
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = parts.uri.path();
    let session_header = s
        .config
        .session_header
        .as_ref()
        .and_then(|h| parts.headers.get(h.as_str()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let x = Exchange {
        request_id: format!(
            "{}-{:08}",
            s.run_tag,
            s.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        arrival: wall_now(),
        path: path.to_owned(),
        session_header,
        ..Exchange::default()
    };
    // From here the exchange ends in a row (or a counted skip) however the handler ends,
    // a client that goes away included.
    let mut pending = Pending::begin(s.sink.clone(), x, wanted(&s.config, path), started);
    // The request body: kept whole up to the observation limit (it is JSON to parse); a
    // bigger one is refused with a clear answer rather than held in memory.
    let body = match Limited::new(body, s.config.max_observed_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_big {
                pending.fail(413, "request_too_large");
                json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "reprise record: request body over {} bytes",
                        s.config.max_observed_body
                    ),
                )
            } else {
                pending.fail(400, "client_disconnect");
                json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("reprise record: reading the request: {e}"),
                )
            };
        }
    };
    if pending.record() && !model_wanted(&s.config, &body) {
        pending.skip();
    }
    pending.exchange().body = Some(body.clone());

    // The request's header fields pass as they came, less the hop-by-hop ones and those
    // the proxy sets itself (`host`, `content-length`); each response's likewise, copied
    // once, straight into the answer.
    let passes =
        |k: &HeaderName| forwardable(k) && k != header::HOST && k != header::CONTENT_LENGTH;
    let sent = match &s.client {
        UpstreamClient::Plain(target) => {
            let request = wire_request(
                &parts.method,
                &s.base_path,
                path_and_query,
                target.host_header(),
                &parts.headers,
                passes,
                &body,
            );
            let options = reprise_net::h1::RequestOptions {
                head_only: parts.method == hyper::Method::HEAD,
                keep_head: true,
            };
            tokio::time::timeout(
                s.config.upstream_timeout,
                target.send_request(&request, options),
            )
            .await
            .map(|r| r.map(plain_response).map_err(|e| (false, e.to_string())))
        }
        UpstreamClient::Tls(client) => {
            let url = upstream_url(&s.upstream, path_and_query);
            let mut headers = HeaderMap::with_capacity(parts.headers.len());
            for (k, v) in parts.headers.iter().filter(|(k, _)| passes(k)) {
                headers.append(k.clone(), v.clone());
            }
            let request = client
                .request(parts.method.clone(), url)
                .headers(headers)
                .body(body);
            tokio::time::timeout(s.config.upstream_timeout, request.send())
                .await
                .map(|r| r.map(tls_response).map_err(|e| (e.is_timeout(), chain(&e))))
        }
    };
    let response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err((timeout, msg))) => {
            let (status, class) = if timeout {
                (StatusCode::GATEWAY_TIMEOUT, "timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "connect")
            };
            let message = format!("reprise record: upstream {}: {msg}", s.upstream);
            return upstream_failed(s, pending, status, class, &message);
        }
        Err(_) => {
            let message = format!(
                "reprise record: upstream {} sent no response within {:?}",
                s.upstream, s.config.upstream_timeout
            );
            return upstream_failed(s, pending, StatusCode::GATEWAY_TIMEOUT, "timeout", &message);
        }
    };
    let x = pending.exchange();
    x.status = response.status().as_u16();
    x.streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (head, upstream_body) = response.into_parts();
    let (x, record) = pending.hand_over();
    let tap = Tap::new(s.sink.clone(), upstream_body, x, record, started);
    Response::from_parts(head, ProxyBody::Stream(Box::new(tap)))
}

/// A lean client's response as the answer's head (status, and the header fields that
/// pass: not hop-by-hop, and valid HTTP field names and values) and its body.
fn plain_response(r: reprise_net::h1::Response) -> Response<UpstreamBody> {
    let mut out = Response::new(());
    *out.status_mut() = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = out.headers_mut();
    r.headers(|k, v| {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) && forwardable(&k)
        {
            headers.append(k, v);
        }
    });
    out.map(|()| UpstreamBody::Plain(r))
}

/// A `reqwest` response likewise, its hop-by-hop fields left out (and nothing else of its
/// head kept: the answer is HTTP/1.1 whatever the upstream spoke).
fn tls_response(r: reqwest::Response) -> Response<UpstreamBody> {
    let (head, body) = hyper::Response::<reqwest::Body>::from(r).into_parts();
    let mut out = Response::new(UpstreamBody::Tls(body));
    *out.status_mut() = head.status;
    let headers = out.headers_mut();
    let mut name = None;
    for (k, v) in head.headers {
        // `None` repeats the previous field's name.
        if let Some(k) = k {
            name = Some(k);
        }
        if let Some(k) = name.as_ref().filter(|k| forwardable(k)) {
            headers.append(k.clone(), v);
        }
    }
    out
}

/// The upstream could not be reached or did not answer in time: the exchange ends in a
/// row with the class, and the client gets the proxy's own answer.
fn upstream_failed(
    s: &Shared,
    pending: Pending,
    status: StatusCode,
    class: &str,
    message: &str,
) -> Response<ProxyBody> {
    tracing::warn!("{message}");
    s.sink
        .counters
        .upstream_errors
        .fetch_add(1, Ordering::Relaxed);
    pending.fail(status.as_u16(), class);
    json_error(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config() -> RecordConfig {
        RecordConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "http://h",
            PathBuf::from("/tmp/x"),
            crate::salt::Salt::from_bytes(&[3; 32]),
        )
    }

    #[test]
    fn filters_decide_what_is_recorded() {
        let body = Bytes::from_static(br#"{"model":"llama","messages":[]}"#);
        let mut c = config();
        assert!(wanted(&c, "/v1/chat/completions") && model_wanted(&c, &body));
        c.paths = vec!["/v1/completions".into()];
        assert!(!wanted(&c, "/v1/chat/completions"));
        assert!(wanted(&c, "/v1/completions"));
        c.paths.clear();
        c.models = vec!["qwen".into()];
        assert!(!model_wanted(&c, &body));
        c.models.push("llama".into());
        assert!(model_wanted(&c, &body));
        // A body that names no model is not one of the models asked for.
        assert!(!model_wanted(&c, &Bytes::from_static(b"{}")));
        assert!(!model_wanted(&c, &Bytes::from_static(b"not json")));
    }

    #[test]
    fn sampling_keeps_about_its_fraction() {
        let mut c = config();
        c.sample = 0.25;
        let kept = (0..20_000).filter(|_| wanted(&c, "/")).count();
        // Binomial(20000, 0.25): sd 61; 6 sd either side.
        assert!((4_634..=5_366).contains(&kept), "{kept}");
    }

    #[test]
    fn hop_by_hop_headers_do_not_pass() {
        for h in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            assert!(!forwardable(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["authorization", "content-type", "x-session-id"] {
            assert!(forwardable(&HeaderName::from_static(h)), "{h}");
        }
    }

    #[test]
    fn upstream_heads_lose_their_hop_by_hop_fields_and_keep_repeated_ones() {
        let upstream = hyper::Response::builder()
            .status(201)
            .version(hyper::Version::HTTP_10)
            .header("content-type", "text/event-stream")
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-request-id", "r7")
            .body(Vec::<u8>::new())
            .unwrap();
        let out = tls_response(reqwest::Response::from(upstream));
        assert_eq!(out.status(), StatusCode::CREATED);
        assert_eq!(out.version(), hyper::Version::HTTP_11);
        let h = out.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["x-request-id"], "r7");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(!h.contains_key("connection") && !h.contains_key("transfer-encoding"));
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn proxy_errors_are_openai_json() {
        let r = json_error(StatusCode::BAD_GATEWAY, "upstream down");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let ProxyBody::Full(Some(b)) = r.into_body() else {
            panic!("a fixed body")
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "upstream down");
        assert_eq!(v["error"]["type"], "proxy_error");
    }
}
