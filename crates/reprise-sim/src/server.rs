//! The HTTP/1.1 server (hyper): OpenAI-compatible routes, `/metrics`, `/health`,
//! `/tokenize` and the admin routes for faults and reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use reprise_protocol::openai::{Api, GenerationRequest, Usage, error_body};
use reprise_tokenizer::{Cl100k, Tokenizer, block_hashes, output_word};
use serde_json::json;
use tokio::sync::mpsc::{self, UnboundedSender};

use crate::body::{SimBody, SseStream, StreamSpec, with_cached};
use crate::driver::{Msg, NOT_ADMITTED, SeqEvent};
use crate::engine::{Rejection, SeqSpec};
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::profile::Profile;

/// Largest request body accepted, bytes.
const MAX_BODY: usize = 64 << 20;

/// The service returned an error on purpose: hyper closes the connection without a response.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
pub struct ResetConnection;

/// State shared by all connections.
#[derive(Debug)]
pub struct State {
    pub(crate) profile: Profile,
    pub(crate) speedup: f64,
    pub(crate) seed: u64,
    pub(crate) engine: UnboundedSender<Msg>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) fault_rng: Mutex<StdRng>,
    pub(crate) next_id: AtomicU64,
}

type Reply = Result<Response<SimBody>, ResetConnection>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<String>,
) -> Response<SimBody> {
    let mut r = Response::new(SimBody::text(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(status: StatusCode, body: impl Into<String>) -> Response<SimBody> {
    respond(status, "application/json", body)
}

fn error(status: StatusCode, message: &str, kind: &str, param: Option<&str>) -> Response<SimBody> {
    json_reply(
        status,
        error_body(message, kind, param, Some(status.as_u16())),
    )
}

fn engine_stopped() -> Response<SimBody> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "engine stopped",
        "server_error",
        None,
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<SimBody>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("could not read the request body: {e}"),
            "invalid_request_error",
            None,
        )),
    }
}

/// Routes one request.
pub async fn handle(req: Request<Incoming>, state: Arc<State>) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => Ok(respond(StatusCode::OK, "text/plain", "")),
        (Method::GET, "/v1/models") => Ok(models(&state)),
        (Method::GET, "/metrics") => Ok(respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        )),
        (Method::POST, "/tokenize") => Ok(tokenize(req, &state).await),
        (Method::GET, "/admin/faults") => Ok(json_reply(
            StatusCode::OK,
            serde_json::to_string(&*state.faults.lock().unwrap_or_else(|e| e.into_inner()))
                .unwrap_or_default(),
        )),
        (Method::POST, "/admin/faults") => Ok(set_faults(req, &state).await),
        (Method::POST, "/admin/reload") => Ok(reload(req, &state).await),
        (Method::POST, p) => match Api::from_path(p) {
            Some(api) => generate(api, req, state).await,
            None => Ok(not_found(&path)),
        },
        _ => Ok(not_found(&path)),
    }
}

fn not_found(path: &str) -> Response<SimBody> {
    error(
        StatusCode::NOT_FOUND,
        &format!("no route for {path}"),
        "not_found_error",
        None,
    )
}

fn models(state: &State) -> Response<SimBody> {
    let p = &state.profile;
    json_reply(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": [{
                "id": p.model, "object": "model", "created": unix_now(), "owned_by": "reprise-sim",
                "root": p.model, "parent": null, "max_model_len": p.max_model_len
            }]
        })
        .to_string(),
    )
}

async fn tokenize(req: Request<Incoming>, state: &State) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("request body is not valid JSON: {e}"),
                "invalid_request_error",
                None,
            );
        }
    };
    let text = if let Some(p) = value.get("prompt").and_then(|p| p.as_str()) {
        p.to_owned()
    } else if let Ok(r) = GenerationRequest::parse(Api::Chat, &body) {
        r.prompt
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing `prompt` or `messages`",
            "invalid_request_error",
            Some("prompt"),
        );
    };
    let tokens = Cl100k.encode(&text);
    json_reply(
        StatusCode::OK,
        json!({ "count": tokens.len(), "max_model_len": state.profile.max_model_len, "tokens": tokens }).to_string(),
    )
}

async fn set_faults(req: Request<Incoming>, state: &State) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad fault settings: {e}"),
                "invalid_request_error",
                None,
            );
        }
    };
    if let Err(e) = faults.check() {
        return error(StatusCode::BAD_REQUEST, &e, "invalid_request_error", None);
    }
    *state.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults.clone();
    json_reply(
        StatusCode::OK,
        serde_json::to_string(&faults).unwrap_or_default(),
    )
}

async fn reload(req: Request<Incoming>, state: &State) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let secs = if body.is_empty() {
        Some(5.0)
    } else {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("seconds")?.as_f64())
    };
    let Some(secs) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"seconds\": N}",
            "invalid_request_error",
            Some("seconds"),
        );
    };
    state.metrics.fault("reload");
    let pause = Duration::from_secs_f64(secs / state.speedup);
    if state.engine.send(Msg::Pause(pause)).is_err() {
        return engine_stopped();
    }
    json_reply(
        StatusCode::OK,
        json!({ "paused_seconds": secs }).to_string(),
    )
}

/// Output length: `max_tokens` with `ignore_eos`, else a lognormal draw capped by
/// `max_tokens`; never below `min_tokens` or 1.
fn output_length(
    profile: &Profile,
    req: &GenerationRequest,
    rng: &mut StdRng,
) -> (u32, &'static str) {
    let cap = req.max_tokens.unwrap_or(profile.default_max_tokens);
    let floor = req.min_tokens.unwrap_or(0).max(1);
    if req.ignore_eos {
        return (cap.max(floor), "length");
    }
    let mu = profile.output_median_tokens.ln();
    let drawn = LogNormal::new(mu, profile.output_sigma.max(1e-9))
        .map(|d| d.sample(rng).round().max(1.0))
        .unwrap_or(profile.output_median_tokens);
    let n = (drawn.min(f64::from(u32::MAX)) as u32).max(floor);
    if n >= cap {
        (cap.max(floor), "length")
    } else {
        (n, "stop")
    }
}

async fn generate(api: Api, req: Request<Incoming>, state: Arc<State>) -> Reply {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return Ok(r),
    };
    let request = match GenerationRequest::parse(api, &body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &e.message,
                "invalid_request_error",
                e.param.as_deref(),
            ));
        }
    };
    let profile = &state.profile;
    if request.model != profile.model {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &format!("The model `{}` does not exist.", request.model),
            "not_found_error",
            Some("model"),
        ));
    }
    if request.n != 1 {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "only `n` = 1 is supported",
            "invalid_request_error",
            Some("n"),
        ));
    }
    if request.max_tokens == Some(0) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "`max_tokens` must be at least 1",
            "invalid_request_error",
            Some("max_tokens"),
        ));
    }
    let drawn = {
        let faults = state
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut rng = state.fault_rng.lock().unwrap_or_else(|e| e.into_inner());
        faults.draw([
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
        ])
    };
    if drawn.reset {
        state.metrics.fault("reset");
        return Err(ResetConnection);
    }
    if let Some(status) = drawn.error {
        state.metrics.fault("error");
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(error(status, "injected fault", "server_error", None));
    }

    let tokens = if request.prompt.len() > 8 * 1024 {
        let text = request.prompt.clone();
        tokio::task::spawn_blocking(move || Cl100k.encode(&text))
            .await
            .unwrap_or_default()
    } else {
        Cl100k.encode(&request.prompt)
    };
    let prompt_tokens = tokens.len() as u32;
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(state.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (mut output_tokens, mut finish_reason) = output_length(profile, &request, &mut rng);
    let room = profile.max_model_len.saturating_sub(prompt_tokens);
    if room == 0 {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens in the prompt.",
                profile.max_model_len, prompt_tokens
            ),
            "invalid_request_error",
            Some("messages"),
        ));
    }
    if output_tokens > room {
        output_tokens = room;
        finish_reason = "length";
    }
    let spec = SeqSpec {
        id,
        prompt_tokens,
        output_tokens,
        block_hashes: block_hashes(&tokens, profile.block_size as usize, state.seed),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cached = Arc::new(AtomicU32::new(NOT_ADMITTED));
    let submit = Msg::Submit {
        spec,
        events: tx,
        cached: cached.clone(),
    };
    if state.engine.send(submit).is_err() {
        return Ok(engine_stopped());
    }
    match rx.recv().await {
        Some(SeqEvent::Queued) => {}
        Some(SeqEvent::Rejected(Rejection::QueueFull)) => {
            let status = StatusCode::from_u16(profile.reject_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Ok(error(
                status,
                "the server is overloaded: request queue is full",
                "server_error",
                None,
            ));
        }
        Some(SeqEvent::Rejected(Rejection::TooLarge)) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "prompt and output do not fit in the KV cache",
                "invalid_request_error",
                None,
            ));
        }
        _ => {
            return Ok(engine_stopped());
        }
    }
    let (prefix, object) = match api {
        Api::Chat => ("chatcmpl", "chat.completion"),
        Api::Completions => ("cmpl", "text_completion"),
    };
    let response_id = format!("{prefix}-{id}");
    let model_json = serde_json::to_string(&profile.model).unwrap_or_default();
    let created = unix_now();
    let count_finish = |state: &State| {
        let counter = if finish_reason == "length" {
            &state.metrics.success_length
        } else {
            &state.metrics.success_stop
        };
        counter.fetch_add(1, Ordering::Relaxed);
    };
    if request.stream {
        let spec = StreamSpec {
            api,
            id: response_id,
            created,
            model_json,
            prompt_tokens,
            cached,
            include_usage: request.include_usage,
            finish_reason,
            faults: drawn,
            speedup: state.speedup,
        };
        count_finish(&state);
        let stream = SseStream::new(spec, rx, state.metrics.clone());
        let mut r = Response::new(SimBody::Stream(Box::new(stream)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(r);
    }
    let mut text = String::with_capacity(output_tokens as usize * 5);
    let mut generated = 0u32;
    loop {
        match rx.recv().await {
            Some(SeqEvent::Token) => {
                text.push_str(output_word(u64::from(generated)));
                generated += 1;
            }
            Some(SeqEvent::Last) => {
                text.push_str(output_word(u64::from(generated)));
                generated += 1;
                break;
            }
            _ => {
                return Ok(engine_stopped());
            }
        }
    }
    count_finish(&state);
    let usage = with_cached(Usage::new(prompt_tokens, generated), &cached);
    let choice = match api {
        Api::Chat => json!({
            "index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": null, "finish_reason": finish_reason, "stop_reason": null
        }),
        Api::Completions => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason, "stop_reason": null
        }),
    };
    let body = json!({
        "id": response_id, "object": object, "created": created, "model": profile.model,
        "choices": [choice], "usage": usage
    });
    Ok(json_reply(StatusCode::OK, body.to_string()))
}

/// Serves connections from `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { handle(req, state).await }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}
