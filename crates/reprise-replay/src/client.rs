//! Sending one request and measuring it per `docs/metrics.md`: every SSE event is
//! stamped on the arrival of the network chunk that completed it; `first_chunk` (first event
//! with `choices`), `first_token` (first non-empty content), every content event, `done`
//! (last content event, or the end of a non-streamed body), usage, and the error class.

use std::time::{Duration, Instant};

use reprise_protocol::openai::{Api, ChunkReader, Usage, answer_text};
use reprise_protocol::sse::SseParser;
use reprise_tokenizer::{Cl100k, Tokenizer};
use serde_json::{Value, json};

/// How the target wants output lengths forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// vLLM: `max_tokens`, `min_tokens`, `ignore_eos`.
    Vllm,
    /// SGLang: `max_tokens`, `min_tokens`, `ignore_eos`.
    Sglang,
    /// llama.cpp `llama-server`: `max_tokens`, `ignore_eos` (`min_tokens` is ignored there).
    Llamacpp,
    /// Text Generation Inference: `max_tokens` only (no way to force the length).
    Tgi,
    /// Plain OpenAI API: `max_tokens` (`max_completion_tokens` for chat) only.
    Openai,
}

/// The shape of the requests sent.
#[derive(Debug, Clone)]
pub struct RequestShape {
    /// Chat or completions.
    pub api: Api,
    /// Backend dialect.
    pub backend: Backend,
    /// Model id.
    pub model: String,
    /// Stream the response (SSE).
    pub stream: bool,
}

impl RequestShape {
    /// The JSON body asking for `output_tokens` tokens after `prompt`.
    pub fn body(&self, prompt: &str, output_tokens: u32) -> Value {
        let mut body = match self.api {
            Api::Chat => {
                json!({"model": self.model, "messages": [{"role": "user", "content": prompt}]})
            }
            Api::Completions => json!({"model": self.model, "prompt": prompt}),
        };
        let obj = body.as_object_mut().expect("an object");
        match (self.backend, self.api) {
            (Backend::Openai, Api::Chat) => {
                obj.insert("max_completion_tokens".into(), json!(output_tokens));
            }
            _ => {
                obj.insert("max_tokens".into(), json!(output_tokens));
            }
        }
        match self.backend {
            Backend::Vllm | Backend::Sglang => {
                obj.insert("ignore_eos".into(), json!(true));
                obj.insert("min_tokens".into(), json!(output_tokens));
            }
            Backend::Llamacpp => {
                obj.insert("ignore_eos".into(), json!(true));
            }
            Backend::Tgi | Backend::Openai => {}
        }
        obj.insert("temperature".into(), json!(0.0));
        if self.stream {
            obj.insert("stream".into(), json!(true));
            obj.insert("stream_options".into(), json!({"include_usage": true}));
        }
        body
    }
}

impl RequestShape {
    /// The same body as [`RequestShape::body`], written straight into bytes: the fixed
    /// parts are literal and only the model and the prompt are escaped, which spares every
    /// request a JSON map built key by key and then serialized (the replayer builds one
    /// body a request, thousands a second).
    pub fn body_bytes(&self, prompt: &str, output_tokens: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(prompt.len() + self.model.len() + 200);
        let string = |out: &mut Vec<u8>, s: &str| {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        };
        out.extend_from_slice(b"{\"model\":");
        string(&mut out, &self.model);
        match self.api {
            Api::Chat => {
                out.extend_from_slice(b",\"messages\":[{\"role\":\"user\",\"content\":");
                string(&mut out, prompt);
                out.extend_from_slice(b"}]");
            }
            Api::Completions => {
                out.extend_from_slice(b",\"prompt\":");
                string(&mut out, prompt);
            }
        }
        let n = output_tokens.to_string();
        let number = |out: &mut Vec<u8>, key: &[u8]| {
            out.extend_from_slice(key);
            out.extend_from_slice(n.as_bytes());
        };
        match (self.backend, self.api) {
            (Backend::Openai, Api::Chat) => number(&mut out, b",\"max_completion_tokens\":"),
            _ => number(&mut out, b",\"max_tokens\":"),
        }
        match self.backend {
            Backend::Vllm | Backend::Sglang => {
                out.extend_from_slice(b",\"ignore_eos\":true");
                number(&mut out, b",\"min_tokens\":");
            }
            Backend::Llamacpp => out.extend_from_slice(b",\"ignore_eos\":true"),
            Backend::Tgi | Backend::Openai => {}
        }
        out.extend_from_slice(b",\"temperature\":0.0");
        if self.stream {
            out.extend_from_slice(b",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        }
        out.push(b'}');
        out
    }
}

/// What happened to one request.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Just before the request was handed to the connection.
    pub sent: Option<Instant>,
    /// First event with `choices`.
    pub first_chunk: Option<Instant>,
    /// First event with non-empty content.
    pub first_token: Option<Instant>,
    /// Every content event.
    pub content_times: Vec<Instant>,
    /// Last content event, or the end of a non-streamed body.
    pub done: Option<Instant>,
    /// HTTP status (0 when no response came).
    pub status: Option<u16>,
    /// The server's usage numbers.
    pub usage: Option<Usage>,
    /// Output tokens counted by the client (content events; tokens for non-streamed bodies).
    pub n_out_counted: u32,
    /// Error class.
    pub error_kind: Option<&'static str>,
    /// Error message.
    pub error: Option<String>,
}

impl Measured {
    fn fail(&mut self, kind: &'static str, message: impl Into<String>) {
        if self.error_kind.is_none() {
            self.error_kind = Some(kind);
            self.error = Some(message.into());
        }
    }
}

/// Per-request time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The whole request.
    pub request: Duration,
    /// Between two chunks of a stream (and to the first byte).
    pub gap: Duration,
}

fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error").and_then(|e| {
                e.get("message")
                    .or(Some(e))
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
            })
        })
        .unwrap_or(text)
}

/// Whether the connection closed before any byte of the response: a kept-alive connection
/// the server had already given up (llama.cpp's server closes it after every stream without
/// saying so), where the request was not processed and is sent again on a fresh connection.
fn closed_before_response(e: &reqwest::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        if c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        src = c.source();
    }
    false
}

/// The error class of a request that failed for the load generator's own shortage (no
/// file descriptor, no free local port, no buffer memory): reported apart from the target's
/// failures, since a faster target would not have avoided it.
pub const CLIENT_ERROR: &str = "client";

pub use reprise_net::client_shortage;

fn transport_kind(e: &reqwest::Error) -> &'static str {
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(client_shortage)
        {
            return CLIENT_ERROR;
        }
        src = c.source();
    }
    if e.is_timeout() { "timeout" } else { "connect" }
}

fn chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Where and how a request goes.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'a> {
    /// Through `reqwest` (TLS, proxies, anything): the URL and the extra headers.
    Reqwest {
        /// The client (its pool belongs to the runtime that sends).
        client: &'a reqwest::Client,
        /// The full URL.
        url: &'a reqwest::Url,
        /// Headers besides the content type.
        headers: &'a reqwest::header::HeaderMap,
    },
    /// The lean HTTP/1.1 path for plain-http targets (headers are part of the target).
    H1(&'a std::sync::Arc<crate::h1::Target>),
}

/// A response being read, whichever the transport.
enum Response {
    Reqwest(reqwest::Response),
    H1(crate::h1::Response),
}

impl Response {
    fn status(&self) -> u16 {
        match self {
            Response::Reqwest(r) => r.status().as_u16(),
            Response::H1(r) => r.status(),
        }
    }

    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        match self {
            Response::Reqwest(r) => r.chunk().await.map_err(|e| chain(&e)),
            Response::H1(r) => r.chunk().await.map_err(|e| e.to_string()),
        }
    }

    /// The whole body (at most 16 MiB of it).
    async fn bytes(&mut self) -> Result<bytes::Bytes, String> {
        const LIMIT: usize = 16 << 20;
        match self {
            Response::H1(r) => r.bytes(LIMIT).await.map_err(|e| e.to_string()),
            Response::Reqwest(_) => {
                let mut all = bytes::BytesMut::new();
                while let Some(b) = self.chunk().await? {
                    if all.len() < LIMIT {
                        all.extend_from_slice(&b[..b.len().min(LIMIT - all.len())]);
                    }
                }
                Ok(all.freeze())
            }
        }
    }
}

/// Sends `body` and measures the response.
pub async fn send(
    transport: Transport<'_>,
    body: bytes::Bytes,
    stream: bool,
    timeouts: Timeouts,
) -> Measured {
    let mut m = Measured::default();
    let deadline = tokio::time::Instant::now() + timeouts.request;
    m.sent = Some(Instant::now());
    let response = match transport {
        Transport::Reqwest {
            client,
            url,
            headers,
        } => {
            let request = || {
                client
                    .post(url.clone())
                    .headers(headers.clone())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
            };
            let attempt = async {
                match request().await {
                    // Once: a second such close is the server's answer. `sent` stays the
                    // first attempt's, so the lost round trip counts in the latency.
                    Err(e) if closed_before_response(&e) => {
                        tracing::debug!(
                            "{url}: connection closed before the response; sending again"
                        );
                        request().await
                    }
                    other => other,
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => Err(None),
                Ok(Err(e)) => Err(Some((transport_kind(&e), chain(&e)))),
                Ok(Ok(r)) => Ok(Response::Reqwest(r)),
            }
        }
        Transport::H1(target) => {
            match tokio::time::timeout_at(deadline, target.send(&body)).await {
                Err(_) => Err(None),
                Ok(Err(e @ crate::h1::H1Error::Protocol(_))) => {
                    Err(Some(("bad_body", e.to_string())))
                }
                Ok(Err(e @ crate::h1::H1Error::Client(_))) => {
                    Err(Some((CLIENT_ERROR, e.to_string())))
                }
                Ok(Err(e)) => Err(Some(("connect", e.to_string()))),
                Ok(Ok(r)) => Ok(Response::H1(r)),
            }
        }
    };
    let mut response = match response {
        Err(None) => {
            m.status = Some(0);
            m.fail(
                "timeout",
                format!("no response within {:?}", timeouts.request),
            );
            return m;
        }
        Err(Some((kind, message))) => {
            m.status = Some(0);
            m.fail(kind, message);
            return m;
        }
        Ok(r) => r,
    };
    let status = response.status();
    m.status = Some(status);
    if !(200..300).contains(&status) {
        let body = tokio::time::timeout_at(deadline, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        m.done = Some(Instant::now());
        m.fail(
            if status < 500 { "http_4xx" } else { "http_5xx" },
            format!("HTTP {status}: {}", error_message(&body)),
        );
        return m;
    }
    if !stream {
        let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
            Err(_) => {
                m.fail("timeout", "body not complete in time");
                return m;
            }
            Ok(Err(e)) => {
                m.fail("broken_stream", e);
                return m;
            }
            Ok(Ok(b)) => b,
        };
        m.done = Some(Instant::now());
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => {
                m.usage = Usage::from_value(&v);
                m.n_out_counted = Cl100k.count(answer_text(&v)) as u32;
            }
            Err(e) => m.fail("bad_body", format!("response body is not JSON: {e}")),
        }
        return m;
    }
    let mut parser = SseParser::new();
    let mut chunks = ChunkReader::new();
    let mut saw_done = false;
    loop {
        let gap_deadline = (tokio::time::Instant::now() + timeouts.gap).min(deadline);
        let chunk = match tokio::time::timeout_at(gap_deadline, response.chunk()).await {
            Err(_) => {
                m.fail(
                    "timeout",
                    format!("no data for {:?}", timeouts.gap.min(timeouts.request)),
                );
                break;
            }
            Ok(Err(e)) => {
                m.fail("broken_stream", e);
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        let now = Instant::now();
        let mut bad: Option<String> = None;
        let fed = parser.feed_ref(&chunk, |event| {
            if event.is_done() {
                saw_done = true;
                return;
            }
            match chunks.facts(event.data) {
                Ok(f) => {
                    if m.first_chunk.is_none() && f.has_choices {
                        m.first_chunk = Some(now);
                    }
                    if f.has_content {
                        m.first_token.get_or_insert(now);
                        m.content_times.push(now);
                        m.n_out_counted += 1;
                    }
                    if f.usage.is_some() {
                        m.usage = f.usage;
                    }
                    if let Some(err) = f.error {
                        bad.get_or_insert_with(|| format!("error event: {err}"));
                    }
                }
                Err(e) => {
                    bad.get_or_insert_with(|| {
                        format!(
                            "event is not a JSON chunk ({e}): {}",
                            &event.data[..event.data.floor_char_boundary(80)]
                        )
                    });
                }
            }
        });
        if let Some(msg) = bad {
            m.fail("bad_body", msg);
        }
        if let Err(e) = fed {
            m.fail("bad_body", e.to_string());
            break;
        }
        if saw_done {
            break;
        }
    }
    m.done = m.content_times.last().copied().or(Some(Instant::now()));
    if saw_done {
        // Read the body to its end (the chunked terminator usually follows `[DONE]`): a
        // connection whose response was not read through cannot go back to the pool, and
        // every later request would pay for a new connection.
        let limit = timeouts.gap.min(Duration::from_secs(1));
        while let Ok(Ok(Some(_))) = tokio::time::timeout(limit, response.chunk()).await {}
    }
    if !saw_done {
        m.fail("broken_stream", "stream ended without data: [DONE]");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_bytes_are_the_body_for_every_dialect() {
        let prompt = "a \"quoted\" line\nand a tab\t and ünïcode \u{1}";
        for api in [Api::Chat, Api::Completions] {
            for backend in [
                Backend::Vllm,
                Backend::Sglang,
                Backend::Llamacpp,
                Backend::Tgi,
                Backend::Openai,
            ] {
                for stream in [true, false] {
                    let shape = RequestShape {
                        api,
                        backend,
                        model: "org/m \"x\"".into(),
                        stream,
                    };
                    let bytes: Value =
                        serde_json::from_slice(&shape.body_bytes(prompt, 37)).expect("valid JSON");
                    assert_eq!(
                        bytes,
                        shape.body(prompt, 37),
                        "{api:?} {backend:?} {stream}"
                    );
                }
            }
        }
    }

    #[test]
    fn bodies_force_lengths_per_backend() {
        let shape = |backend, api| RequestShape {
            api,
            backend,
            model: "m".into(),
            stream: true,
        };
        let v = shape(Backend::Vllm, Api::Chat).body("hi", 7);
        assert_eq!(
            (
                v["max_tokens"].clone(),
                v["min_tokens"].clone(),
                v["ignore_eos"].clone()
            ),
            (json!(7), json!(7), json!(true))
        );
        assert_eq!(v["stream_options"]["include_usage"], true);
        let v = shape(Backend::Llamacpp, Api::Completions).body("hi", 7);
        assert_eq!(v["prompt"], "hi");
        assert!(v.get("min_tokens").is_none());
        let v = shape(Backend::Openai, Api::Chat).body("hi", 7);
        assert_eq!(v["max_completion_tokens"], 7);
        assert!(v.get("ignore_eos").is_none());
    }

    #[test]
    fn error_messages_come_from_openai_bodies() {
        assert_eq!(error_message(br#"{"error": {"message": "boom"}}"#), "boom");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
