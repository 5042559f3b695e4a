//! The forwarding path: one exchange from the client's request head to the upstream's
//! response head — [`begin`] (the row in the making), then [`forward`] once the body is
//! read, called by the proxy's own server (`server`) or through hyper ([`handle`]) — with
//! the decisions made on the way: whether the exchange is recorded (path and model filters,
//! sampling), which headers pass (hop-by-hop ones do not), where it goes upstream, and how
//! a failure is answered and classed. The response body is then streamed through a [`Tap`].

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

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn forwardable(name: &HeaderName) -> bool {
    forwardable_name(name.as_str())
}

/// Whether a header field of this name passes, the name as it came on the wire (any case).
fn forwardable_name(name: &str) -> bool {
    !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
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

/// `{tag}-{n:08}`, without the formatting machinery (on the path of every exchange).
fn request_id(tag: &str, n: u64) -> String {
    let mut digits = [b'0'; 20];
    let (mut i, mut rest) = (digits.len(), n);
    while rest > 0 || i > digits.len() - 8 {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let mut id = String::with_capacity(tag.len() + 1 + digits.len() - i);
    id.push_str(tag);
    id.push('-');
    id.extend(digits[i..].iter().map(|&d| d as char));
    id
}

/// An exchange begun: its row in the making and when it started.
pub(crate) struct Begun {
    pending: Pending,
    started: Instant,
}

/// Begins the exchange of a request whose head has been read: from here it ends in a row
/// (or a counted skip) however the handling ends, a client that goes away included.
pub(crate) fn begin(s: &Shared, parts: &hyper::http::request::Parts) -> Begun {
    let started = Instant::now();
    let path = parts.uri.path();
    let session_header = s
        .config
        .session_header
        .as_ref()
        .and_then(|h| parts.headers.get(h.as_str()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let x = Exchange {
        request_id: request_id(&s.run_tag, s.next_id.fetch_add(1, Ordering::Relaxed)),
        arrival: wall_now(),
        path: path.to_owned(),
        session_header,
        ..Exchange::default()
    };
    let pending = Pending::begin(s.sink.clone(), x, wanted(&s.config, path), started);
    Begun { pending, started }
}

/// Why a request body could not be read whole.
pub(crate) enum BodyError {
    /// Over the observation limit (`max_observed_body`).
    TooLarge,
    /// The client went away or broke the framing.
    Read(String),
}

/// The answer to a request whose body could not be read: 413 for one too large (it is
/// JSON to parse, so it is kept whole; a bigger one is refused rather than held in
/// memory), 400 otherwise.
pub(crate) fn body_failed(s: &Shared, begun: Begun, e: BodyError) -> Response<ProxyBody> {
    match e {
        BodyError::TooLarge => {
            begun.pending.fail(413, "request_too_large");
            json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "reprise record: request body over {} bytes",
                    s.config.max_observed_body
                ),
            )
        }
        BodyError::Read(e) => {
            begun.pending.fail(400, "client_disconnect");
            json_error(
                StatusCode::BAD_REQUEST,
                &format!("reprise record: reading the request: {e}"),
            )
        }
    }
}

/// One exchange served through hyper: the request body read whole, then [`forward`].
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let begun = begin(&shared, &parts);
    let body = match Limited::new(body, shared.config.max_observed_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let e = if too_big {
                BodyError::TooLarge
            } else {
                BodyError::Read(e.to_string())
            };
            return body_failed(&shared, begun, e);
        }
    };
    let deadline = tokio::time::sleep(shared.config.upstream_timeout);
    forward(&shared, &parts, begun, body, deadline)
        .await
        .into_response()
}

/// Forwards a request whose body has been read to the upstream: the answer is the
/// upstream's head with its body behind a [`Tap`], or the proxy's own error (504 when
/// `upstream_deadline` comes first).
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    parts: &hyper::http::request::Parts,
    begun: Begun,
    body: Bytes,
    upstream_deadline: impl Future<Output = ()>,
) -> Answer {
    let s = &**shared;
    let Begun {
        mut pending,
        started,
    } = begun;
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if pending.record() && !model_wanted(&s.config, &body) {
        pending.skip();
    }
    pending.exchange().body = Some(body.clone());

    // The request's header fields pass as they came, less the hop-by-hop ones and those
    // the proxy sets itself (`host`, `content-length`); each response's likewise, copied
    // once, straight into the answer.
    let passes =
        |k: &HeaderName| forwardable(k) && k != header::HOST && k != header::CONTENT_LENGTH;
    let sending = async {
        match &s.client {
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
                target
                    .send_request(&request, options)
                    .await
                    .map(Upstream::Plain)
                    .map_err(|e| (false, e.to_string()))
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
                request
                    .send()
                    .await
                    .map(|r| Upstream::Tls(tls_response(r)))
                    .map_err(|e| (e.is_timeout(), chain(&e)))
            }
        }
    };
    // The upstream timeout, up to the response head.
    let sent = tokio::select! {
        biased;
        r = sending => Ok(r),
        () = upstream_deadline => Err(()),
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
            return upstream_failed(s, pending, status, class, &message).into();
        }
        Err(_) => {
            let message = format!(
                "reprise record: upstream {} sent no response within {:?}",
                s.upstream, s.config.upstream_timeout
            );
            return upstream_failed(s, pending, StatusCode::GATEWAY_TIMEOUT, "timeout", &message)
                .into();
        }
    };
    let x = pending.exchange();
    match response {
        Upstream::Plain(r) => {
            x.status = r.status();
            let head = plain_head(&r);
            x.streamed = head.streamed;
            let (x, record) = pending.hand_over();
            let body = UpstreamBody::Plain(r);
            Answer::Plain {
                status: StatusCode::from_u16(x.status).unwrap_or(StatusCode::BAD_GATEWAY),
                fields: head.fields,
                length: head.length,
                body: Box::new(Tap::new(s.sink.clone(), body, x, record, started)),
            }
        }
        Upstream::Tls(response) => {
            x.status = response.status().as_u16();
            x.streamed = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let (head, upstream_body) = response.into_parts();
            let (x, record) = pending.hand_over();
            let tap = Tap::new(s.sink.clone(), upstream_body, x, record, started);
            Answer::Other(Response::from_parts(head, ProxyBody::Stream(Box::new(tap))))
        }
    }
}

/// An upstream's response, from either client.
enum Upstream {
    Plain(reprise_net::h1::Response),
    Tls(Response<UpstreamBody>),
}

/// The answer to a forwarded request.
pub(crate) enum Answer {
    /// The lean client's answer, its head as it goes on the wire: the status, the upstream
    /// head's fields that pass (`name: value` lines, hop-by-hop fields left out), the length
    /// it states, and its body.
    Plain {
        status: StatusCode,
        fields: Vec<u8>,
        length: Option<u64>,
        body: Box<Tap>,
    },
    /// Any other: an `https://` upstream's, or the proxy's own.
    Other(Response<ProxyBody>),
}

impl From<Response<ProxyBody>> for Answer {
    fn from(r: Response<ProxyBody>) -> Answer {
        Answer::Other(r)
    }
}

impl Answer {
    /// As a hyper response.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        match self {
            Answer::Other(r) => r,
            Answer::Plain {
                status,
                fields,
                body,
                ..
            } => {
                let mut out = Response::new(ProxyBody::Stream(body));
                *out.status_mut() = status;
                wire_fields(&fields, out.headers_mut());
                out
            }
        }
    }
}

/// Header fields as wire lines (`name: value`, CRLF-ended) into a map.
fn wire_fields(fields: &[u8], headers: &mut HeaderMap) {
    for line in fields.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(k, v);
        }
    }
}

/// What the proxy passes on of a lean client's response head.
struct PlainHead {
    fields: Vec<u8>,
    length: Option<u64>,
    streamed: bool,
}

/// The fields of a lean client's response head that pass (not hop-by-hop), as wire lines,
/// with the length it states and whether it is an event stream.
fn plain_head(r: &reprise_net::h1::Response) -> PlainHead {
    let mut head = PlainHead {
        fields: Vec::with_capacity(256),
        length: None,
        streamed: false,
    };
    r.headers(|k, v| {
        if !forwardable_name(k) {
            return;
        }
        if k.eq_ignore_ascii_case("content-length") {
            head.length = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if k.eq_ignore_ascii_case("content-type") {
            head.streamed = v.starts_with(b"text/event-stream");
        }
        head.fields.extend_from_slice(k.as_bytes());
        head.fields.extend_from_slice(b": ");
        head.fields.extend_from_slice(v);
        head.fields.extend_from_slice(b"\r\n");
    });
    head
}

/// A `reqwest` response as the answer's head, its hop-by-hop fields left out (and nothing else of its
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
    fn request_ids_are_the_tag_and_a_padded_count() {
        assert_eq!(request_id("ab12", 0), "ab12-00000000");
        assert_eq!(request_id("ab12", 42), "ab12-00000042");
        assert_eq!(request_id("t", 123_456_789), "t-123456789");
        assert_eq!(request_id("t", u64::MAX), format!("t-{}", u64::MAX));
    }

    #[test]
    fn wire_fields_read_back_as_they_were_written() {
        let mut h = HeaderMap::new();
        wire_fields(
            b"content-type: text/event-stream\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\
              x-odd: v: w\r\nbad line\r\n",
            &mut h,
        );
        assert_eq!(h["content-type"], "text/event-stream");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h["x-odd"], "v: w");
        assert_eq!(h.len(), 4);
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
            assert!(!forwardable_name(&h.to_ascii_uppercase()), "{h}");
        }
        for h in ["authorization", "content-type", "x-session-id"] {
            assert!(forwardable(&HeaderName::from_static(h)), "{h}");
            assert!(forwardable_name(h), "{h}");
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
