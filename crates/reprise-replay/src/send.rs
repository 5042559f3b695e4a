//! The request path shared by both loops: a request body built from its trace row
//! ([`build_body`]), the HTTP clients (the lean HTTP/1.1 one or `reqwest`), one request sent
//! and measured ([`send_job`]), and the finished request handed to the writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reprise_trace::TraceRecord;
use tokio::sync::Semaphore;

use crate::client::{self, Measured, Timeouts};
use crate::row::Job;
use crate::{Progress, ReplayConfig, ReplayError, h1};

/// A request sent, with what was measured, on its way to the writer.
pub(crate) struct Done {
    pub(crate) job: Job,
    pub(crate) measured: Measured,
}

/// Why a failed request means the target is wrong rather than busy: a 404 on the API path
/// or a refused connection. `None` for any other outcome.
pub(crate) fn wrong_target(m: &Measured, target: &str, api_path: &str) -> Option<String> {
    if m.status == Some(404) {
        return Some(format!(
            "target {target} answered 404 Not Found on {api_path} before any request succeeded: \
             check the base URL (requests go to {target}{api_path}) or --api"
        ));
    }
    let error = m.error.as_deref().unwrap_or_default();
    (m.error_kind == Some("connect") && error.to_ascii_lowercase().contains("refused")).then(|| {
        format!("target {target} refused the connection before any request succeeded: {error}")
    })
}

/// Whether a proxy is configured in the environment (which `reqwest` honours).
pub(crate) fn proxy_in_env() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

pub(crate) fn build_body(config: &ReplayConfig, request: &TraceRecord) -> Vec<u8> {
    let input = config
        .prompt_words
        .as_ref()
        .and_then(|m| m.words.get(&request.request_id).copied())
        .unwrap_or(request.input_tokens.unwrap_or(16));
    let output = request
        .output_tokens
        .or(request.max_tokens)
        .unwrap_or(128)
        .max(1);
    let prompt = match &request.prompt {
        Some(p) => p.clone(),
        None => config
            .prompts
            .build(&request.request_id, input, request.prefix_hashes.as_deref()),
    };
    config.shape.body_bytes(&prompt, output)
}

/// What sized the prompts: `cl100k` (the embedded default), `server` or `hf:<name>`.
pub(crate) fn tokenizer_label(config: &ReplayConfig) -> String {
    config
        .prompt_words
        .as_ref()
        .map_or_else(|| "cl100k".to_owned(), |s| s.by.clone())
}

/// The phase of the next request sent: the first `config.warmup` are warm-up.
pub(crate) fn phase_for(sent: &AtomicU64, config: &ReplayConfig, planned: &str) -> String {
    if sent.fetch_add(1, Ordering::Relaxed) < config.warmup {
        "warmup".to_owned()
    } else {
        planned.to_owned()
    }
}

/// The HTTP client requests go through. A client's pooled connections belong to the
/// runtime that opened them (their dispatch task runs there), so every runtime that sends
/// builds a client of its own: a connection opened by a sender thread whose runtime has
/// finished would fail the next request that picks it ("dispatch task is gone").
pub(crate) fn http_client() -> Result<reqwest::Client, ReplayError> {
    reprise_net::client_builder()
        .pool_max_idle_per_host(4096)
        // Below common servers' keep-alive timeouts (uvicorn, as in vLLM, and llama.cpp's
        // HTTP server close idle connections after 5 s): an idle connection is dropped here
        // first, rather than reused just as the server closes it, which fails the request.
        .pool_idle_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ReplayError::Client(e.to_string()))
}

/// What a request task needs besides its job.
#[derive(Clone)]
pub(crate) struct SendCtx {
    /// `reqwest`, for the targets the lean client does not serve (`https://`, a proxy,
    /// `--http-client reqwest`); `None` when it serves them all (building a reqwest client
    /// loads the system's root certificates: milliseconds of CPU for nothing).
    pub(crate) client: Option<reqwest::Client>,
    /// Per URL, the lean client's target (and pool) when it sends to that URL; empty or
    /// `None` means `reqwest`. Like `client`, of the runtime that sends.
    pub(crate) lean: Vec<Option<Arc<h1::Target>>>,
    pub(crate) urls: Vec<reqwest::Url>,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) done_tx: std::sync::mpsc::Sender<Done>,
    pub(crate) limiter: Option<Arc<Semaphore>>,
    pub(crate) timeouts: Timeouts,
    pub(crate) stream: bool,
    pub(crate) progress: Arc<Progress>,
    /// Set when the drain time after a stop has run out.
    pub(crate) cancel: tokio::sync::watch::Receiver<bool>,
    /// Live metrics, when served.
    pub(crate) live: Option<Arc<crate::live::Live>>,
}

/// Sends and measures one request, hands it to the writer, and returns when its response
/// ended (or it failed).
pub(crate) async fn send_job(mut job: Job, ctx: Arc<SendCtx>) -> std::time::Instant {
    let _permit = match &ctx.limiter {
        Some(l) => l.clone().acquire_owned().await.ok(),
        None => None,
    };
    ctx.progress.sent.fetch_add(1, Ordering::Relaxed);
    if let Some(live) = &ctx.live {
        live.on_send(&job);
    }
    let started = std::time::Instant::now();
    let body = std::mem::take(&mut job.body);
    let transport = match (
        ctx.lean.get(job.target).and_then(Option::as_ref),
        &ctx.client,
    ) {
        (Some(target), _) => client::Transport::H1(target),
        (None, Some(client)) => client::Transport::Reqwest {
            client,
            url: &ctx.urls[job.target],
            headers: &ctx.headers,
        },
        (None, None) => {
            // Not reached: a reqwest client is built whenever a target needs one.
            let measured = Measured {
                sent: Some(started),
                error_kind: Some(client::CLIENT_ERROR),
                error: Some("no HTTP client for this target".into()),
                ..Measured::default()
            };
            let end = std::time::Instant::now();
            ctx.progress.finished.fetch_add(1, Ordering::Relaxed);
            let _ = ctx.done_tx.send(Done { job, measured });
            return end;
        }
    };
    let send = client::send(
        transport,
        bytes::Bytes::from(body),
        ctx.stream,
        ctx.timeouts,
    );
    // Still in flight when the drain time after a stop runs out: the request ends here, in
    // a row of its own (class `cancelled`), rather than vanishing with its task.
    let mut cancel = ctx.cancel.clone();
    let measured = tokio::select! {
        m = send => m,
        _ = cancel.wait_for(|c| *c) => Measured {
            sent: Some(started),
            error_kind: Some("cancelled"),
            error: Some("still in flight when the drain time after the stop ran out".into()),
            ..Measured::default()
        },
    };
    let end = std::time::Instant::now();
    ctx.progress.finished.fetch_add(1, Ordering::Relaxed);
    let _ = ctx.done_tx.send(Done { job, measured });
    end
}

/// The extra headers as `reqwest` sends them, marked sensitive (never logged).
pub(crate) fn header_map(
    headers: &[(String, String)],
) -> Result<reqwest::header::HeaderMap, ReplayError> {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ReplayError::Config(format!("header `{k}`: {e}")))?;
        let mut value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|e| ReplayError::Config(format!("header `{k}`: {e}")))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// Each target's endpoint URL, parsed once: reqwest would parse a string URL on every
/// request.
pub(crate) fn endpoint_urls(config: &ReplayConfig) -> Result<Vec<reqwest::Url>, ReplayError> {
    let api_path = config.shape.api.path();
    config
        .targets
        .iter()
        .map(|t| {
            let text = format!("{}{api_path}", t.trim_end_matches('/'));
            reqwest::Url::parse(&text)
                .map_err(|e| ReplayError::Config(format!("target `{t}`: {e}")))
        })
        .collect()
}

/// A `reqwest` client when some target needs one (the lean client does not serve it).
pub(crate) fn reqwest_if_needed(
    config: &ReplayConfig,
    urls: &[reqwest::Url],
) -> Result<Option<reqwest::Client>, ReplayError> {
    let needed = lean_targets(config, urls).iter().any(Option::is_none);
    needed.then(http_client).transpose()
}

/// The lean client's target per URL (`None`: `reqwest` sends there), built afresh for each
/// runtime that sends, since a pool belongs to the runtime that opened its connections.
pub(crate) fn lean_targets(
    config: &ReplayConfig,
    urls: &[reqwest::Url],
) -> Vec<Option<Arc<h1::Target>>> {
    let lean = config.http == crate::HttpClient::Auto && !proxy_in_env();
    urls.iter()
        .map(|u| {
            lean.then(|| h1::Target::new(u, &config.headers))
                .flatten()
                .map(Arc::new)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, input: Option<u32>, output: Option<u32>) -> TraceRecord {
        let mut r = TraceRecord::new(id, reprise_trace::Timestamp(0));
        r.input_tokens = input;
        r.output_tokens = output;
        r
    }

    #[test]
    fn bodies_force_the_trace_lengths() {
        let config = ReplayConfig::new(vec!["http://a".into()], "m", "/tmp/x");
        let body: serde_json::Value =
            serde_json::from_slice(&build_body(&config, &record("r", Some(5), Some(7)))).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["stream"], true);
        // Without sizes: 16 prompt tokens and 128 output tokens.
        let body: serde_json::Value =
            serde_json::from_slice(&build_body(&config, &record("r", None, None))).unwrap();
        assert_eq!(body["max_tokens"], 128);
    }

    #[test]
    fn the_first_requests_are_warmup() {
        let mut config = ReplayConfig::new(vec!["http://a".into()], "m", "/tmp/x");
        config.warmup = 2;
        let sent = AtomicU64::new(0);
        let phases: Vec<String> = (0..3)
            .map(|_| phase_for(&sent, &config, "rate=1"))
            .collect();
        assert_eq!(phases, ["warmup", "warmup", "rate=1"]);
    }

    #[test]
    fn a_404_or_a_refusal_means_a_wrong_target() {
        let m = Measured {
            status: Some(404),
            error_kind: Some("http_4xx"),
            ..Measured::default()
        };
        let why = wrong_target(&m, "http://h:1", "/v1/chat/completions").unwrap();
        assert!(why.contains("http://h:1/v1/chat/completions"), "{why}");
        let refused = Measured {
            error_kind: Some("connect"),
            error: Some("Connection refused (os error 111)".into()),
            ..Measured::default()
        };
        assert!(wrong_target(&refused, "http://h:1", "/x").is_some());
        let busy = Measured {
            status: Some(503),
            error_kind: Some("http_5xx"),
            ..Measured::default()
        };
        assert_eq!(wrong_target(&busy, "http://h:1", "/x"), None);
    }

    #[test]
    fn urls_are_the_base_plus_the_api_path() {
        let config = ReplayConfig::new(vec!["http://a:1/".into()], "m", "/tmp/x");
        let urls = endpoint_urls(&config).unwrap();
        assert_eq!(urls[0].as_str(), "http://a:1/v1/chat/completions");
        let map = header_map(&[("authorization".into(), "Bearer s".into())]).unwrap();
        assert!(map["authorization"].is_sensitive());
        assert!(header_map(&[("bad name".into(), "v".into())]).is_err());
    }
}
