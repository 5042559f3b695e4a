//! Response bodies: a whole body, or an SSE stream fed by the engine's token events and
//! framed exactly as vLLM frames it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use reprise_protocol::openai::{Api, Usage};
use reprise_tokenizer::output_word;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Sleep;

use crate::driver::{NOT_ADMITTED, SeqEvent};
use crate::faults::Drawn;
use crate::metrics::Metrics;

/// A body error: the stream is aborted on purpose (a cut fault) or the engine went away.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A `cut` fault.
    #[error("stream cut by fault injection")]
    Cut,
    /// The engine stopped.
    #[error("engine stopped")]
    EngineGone,
}

/// `usage` with the prompt tokens the prefix cache served, once the engine has said.
pub fn with_cached(usage: Usage, cached: &AtomicU32) -> Usage {
    match cached.load(Ordering::Relaxed) {
        NOT_ADMITTED => usage,
        n => usage.with_cached(n),
    }
}

/// What a finished stream reports.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// API of the request.
    pub api: Api,
    /// Response id (`chatcmpl-N` / `cmpl-N`).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name, JSON-quoted.
    pub model_json: String,
    /// Prompt tokens for `usage`.
    pub prompt_tokens: u32,
    /// Prompt tokens served from the prefix cache, set by the engine at admission.
    pub cached: Arc<AtomicU32>,
    /// Send a final usage chunk.
    pub include_usage: bool,
    /// `length` or `stop`.
    pub finish_reason: &'static str,
    /// Faults drawn for this request.
    pub faults: Drawn,
    /// `--speedup`, for stall lengths.
    pub speedup: f64,
}

/// A streamed (SSE) response.
pub struct SseStream {
    spec: StreamSpec,
    rx: UnboundedReceiver<SeqEvent>,
    head: String,
    tail: &'static str,
    generated: u32,
    pending: VecDeque<Bytes>,
    finished: bool,
    stall: Option<Pin<Box<Sleep>>>,
    cut_armed: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("id", &self.spec.id)
            .field("generated", &self.generated)
            .finish()
    }
}

impl SseStream {
    /// A stream of the events in `rx` (the `Queued` event already consumed).
    pub fn new(spec: StreamSpec, rx: UnboundedReceiver<SeqEvent>, metrics: Arc<Metrics>) -> Self {
        let (head, tail) = match spec.api {
            Api::Chat => (
                format!(
                    "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"",
                    spec.id, spec.created, spec.model_json
                ),
                "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            ),
            Api::Completions => (
                format!(
                    "data: {{\"id\":\"{}\",\"object\":\"text_completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"text\":\"",
                    spec.id, spec.created, spec.model_json
                ),
                "\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}\n\n",
            ),
        };
        let mut pending = VecDeque::new();
        if spec.api == Api::Chat {
            pending.push_back(Bytes::from(format!(
                "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
                spec.id, spec.created, spec.model_json
            )));
        }
        SseStream {
            spec,
            rx,
            head,
            tail,
            generated: 0,
            pending,
            finished: false,
            stall: None,
            cut_armed: false,
            metrics,
        }
    }

    fn push_token(&mut self, out: &mut String) {
        out.push_str(&self.head);
        out.push_str(output_word(u64::from(self.generated)));
        out.push_str(self.tail);
        self.generated += 1;
    }

    fn finish_frames(&mut self) {
        let s = &self.spec;
        let finish = match s.api {
            Api::Chat => format!(
                "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":\"{}\",\"stop_reason\":null}}]}}\n\n",
                s.id, s.created, s.model_json, s.finish_reason
            ),
            Api::Completions => format!(
                "data: {{\"id\":\"{}\",\"object\":\"text_completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"{}\",\"stop_reason\":null}}]}}\n\n",
                s.id, s.created, s.model_json, s.finish_reason
            ),
        };
        self.pending.push_back(Bytes::from(finish));
        if s.include_usage {
            let object = match s.api {
                Api::Chat => "chat.completion.chunk",
                Api::Completions => "text_completion",
            };
            let usage = serde_json::to_string(&with_cached(
                Usage::new(s.prompt_tokens, self.generated),
                &s.cached,
            ))
            .unwrap_or_default();
            self.pending.push_back(Bytes::from(format!(
                "data: {{\"id\":\"{}\",\"object\":\"{object}\",\"created\":{},\"model\":{},\"choices\":[],\"usage\":{usage}}}\n\n",
                s.id, s.created, s.model_json
            )));
        }
        self.pending
            .push_back(Bytes::from_static(reprise_protocol::sse::DONE.as_bytes()));
        self.finished = true;
    }
}

impl Body for SseStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(b) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(sleep) = &mut this.stall {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.stall = None;
        }
        let faults = this.spec.faults;
        if faults.cut_after == Some(this.generated) {
            if !this.cut_armed {
                // Pause briefly first so that what was sent so far is flushed to the client.
                this.cut_armed = true;
                let mut sleep = Box::pin(tokio::time::sleep(Duration::from_millis(2)));
                if sleep.as_mut().poll(cx).is_pending() {
                    this.stall = Some(sleep);
                    return Poll::Pending;
                }
            }
            this.metrics.fault("cut");
            this.finished = true;
            return Poll::Ready(Some(Err(BodyError::Cut)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(Some(Err(BodyError::EngineGone)))
            }
            Poll::Ready(Some(first)) => {
                // Coalesce the tokens already waiting into one write (each stays its own
                // SSE event), as a server under load does.
                let mut out = String::new();
                let mut event = first;
                loop {
                    match event {
                        SeqEvent::Token | SeqEvent::Last => {
                            this.push_token(&mut out);
                            if faults.malformed_after == Some(this.generated) {
                                this.metrics.fault("malformed");
                                out.push_str(
                                    "data: {\"id\":\"broken\",\"choices\":[{\"delta\":\n\n",
                                );
                            }
                            if let Some((after, ms)) = faults.stall
                                && after == this.generated
                            {
                                this.metrics.fault("stall");
                                let d =
                                    Duration::from_secs_f64(ms as f64 / 1000.0 / this.spec.speedup);
                                this.stall = Some(Box::pin(tokio::time::sleep(d)));
                            }
                            if event == SeqEvent::Last {
                                this.finish_frames();
                                break;
                            }
                        }
                        SeqEvent::Queued => {}
                        SeqEvent::Rejected(_) => {
                            this.finished = true;
                            return Poll::Ready(Some(Err(BodyError::EngineGone)));
                        }
                    }
                    if this.stall.is_some()
                        || faults.cut_after == Some(this.generated)
                        || out.len() >= 16 * 1024
                    {
                        break;
                    }
                    match this.rx.try_recv() {
                        Ok(e) => event = e,
                        Err(_) => break,
                    }
                }
                if out.is_empty() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
            }
        }
    }
}

/// The body of every response.
#[derive(Debug)]
pub enum SimBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// An SSE stream.
    Stream(Box<SseStream>),
}

impl SimBody {
    /// A complete body from text.
    pub fn text(s: impl Into<String>) -> Self {
        SimBody::Full(Some(Bytes::from(s.into())))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Stream(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            SimBody::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            SimBody::Full(None) => http_body::SizeHint::with_exact(0),
            SimBody::Stream(_) => http_body::SizeHint::default(),
        }
    }
}
