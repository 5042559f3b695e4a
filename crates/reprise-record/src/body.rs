//! The response body the proxy hands to hyper: the upstream's body passed through frame by
//! frame as it arrives (never re-chunked), looked at by a [`Tap`] after each frame is handed
//! over, or a fixed body of the proxy's own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame};
use reprise_protocol::openai::{Usage, chunk_facts, content_of};
use reprise_protocol::sse::SseParser;

use crate::observe::Exchange;
use crate::sink::Sink;
use crate::upstream::UpstreamBody;

/// A proxied or proxy-made response body.
pub(crate) enum ProxyBody {
    /// The upstream's body; an error aborts the client connection, as the upstream's broken
    /// stream would have.
    Stream(Box<Tap>),
    /// A body the proxy wrote itself (errors, admin pages).
    Full(Option<Bytes>),
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyBody::Stream(_) => "ProxyBody::Stream",
            ProxyBody::Full(_) => "ProxyBody::Full",
        })
    }
}

impl ProxyBody {
    /// A fixed body.
    pub fn text(s: impl Into<String>) -> Self {
        ProxyBody::Full(Some(Bytes::from(s.into())))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ProxyBody::Stream(tap) => Pin::new(tap.as_mut()).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(tap) => tap.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }
}

/// The upstream body on its way to the client: every frame is passed on as it is polled
/// (no task, channel or copy in between) and looked at after it has been handed over; the
/// exchange is submitted when the body ends, fails, or is dropped by a departed client.
pub(crate) struct Tap {
    sink: Arc<Sink>,
    inner: UpstreamBody,
    x: Option<Exchange>,
    record: bool,
    started: Instant,
    parser: SseParser,
    kept: Vec<u8>,
    last_content: Option<Instant>,
    completion: String,
}

impl Tap {
    /// Taps `inner`, the response to exchange `x` that started at `started`; `record`
    /// says whether a row is made (filters and sampling), the exchange is counted out
    /// either way.
    pub(crate) fn new(
        sink: Arc<Sink>,
        inner: UpstreamBody,
        x: Exchange,
        record: bool,
        started: Instant,
    ) -> Tap {
        Tap {
            sink,
            inner,
            x: Some(x),
            record,
            started,
            parser: SseParser::new(),
            kept: Vec::new(),
            last_content: None,
            completion: String::new(),
        }
    }

    fn observe(&mut self, chunk: &Bytes) {
        let now = Instant::now();
        let s = &self.sink;
        if !self.record {
            return;
        }
        let Some(x) = self.x.as_mut() else { return };
        if x.streamed {
            let (started, last_content, completion) =
                (self.started, &mut self.last_content, &mut self.completion);
            let content = s.observe.record_content;
            // Borrowed events: no allocation or copy per event on the forwarding path.
            let _ = self.parser.feed_ref(chunk, |event| {
                if event.is_done() {
                    return;
                }
                let Ok(f) = chunk_facts(event.data) else {
                    return;
                };
                if f.has_content {
                    match *last_content {
                        None => x.ttft = Some(now - started),
                        Some(prev) => x
                            .itl_us
                            .push((now - prev).as_micros().min(u128::from(u32::MAX)) as u32),
                    }
                    *last_content = Some(now);
                    x.content_events += 1;
                    if content && let Ok(v) = serde_json::from_str::<serde_json::Value>(event.data)
                    {
                        completion.push_str(&content_of(&v));
                    }
                }
                if f.usage.is_some() {
                    x.usage = f.usage;
                }
            });
        } else if self.kept.len() + chunk.len() <= s.max_observed_body {
            self.kept.extend_from_slice(chunk);
        }
    }

    /// Ends the exchange (once): measures E2E, reads a plain body's usage, submits the row.
    fn finish(&mut self, failure: Option<&str>) {
        let Some(mut x) = self.x.take() else { return };
        let s = &self.sink;
        if let Some(f) = failure {
            x.failure = Some(f.to_owned());
            if f == "broken_stream" {
                s.counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        x.e2e = Some(self.started.elapsed());
        if self.record {
            let content = s.observe.record_content;
            if !x.streamed
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.kept)
            {
                x.usage = Usage::from_value(&v);
                x.ttft = x.e2e.filter(|_| x.status == 200);
                if content {
                    let text = v["choices"][0]["message"]["content"]
                        .as_str()
                        .or(v["choices"][0]["text"].as_str())
                        .unwrap_or_default();
                    self.completion.push_str(text);
                }
            }
            if content {
                x.completion = Some(std::mem::take(&mut self.completion));
            }
            if x.failure.is_none() {
                x.failure = status_class(x.status).map(str::to_owned);
            }
            s.end(Some(x));
        } else {
            s.end(None);
        }
    }
}

impl Body for Tap {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(Some("broken_stream"));
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.observe(&data);
                }
                // A sized body is not polled past its length: it ends here.
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the connection broke).
        let failure = (!self.inner.is_end_stream()).then_some("client_disconnect");
        self.finish(failure);
    }
}

/// The failure class of an answered exchange by its status: `http_5xx`, `http_4xx`, or
/// none.
pub(crate) fn status_class(status: u16) -> Option<&'static str> {
    match status {
        500.. => Some("http_5xx"),
        400..=499 => Some("http_4xx"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::{Flat, sink};
    use http_body_util::BodyExt;
    use std::time::Duration;

    type Rows = Flat<reprise_trace::TraceRecord>;

    fn tapped(body: &'static str, streamed: bool, status: u16) -> (Tap, Flat<Exchange>, Rows) {
        let (sink, obs_rx, rows) = sink(8, 8);
        let sink = Arc::new(sink);
        sink.begin();
        let x = Exchange {
            request_id: "r".into(),
            status,
            streamed,
            ..Exchange::default()
        };
        let inner = UpstreamBody::Tls(reqwest::Body::from(body));
        (
            Tap::new(
                sink,
                inner,
                x,
                true,
                Instant::now() - Duration::from_millis(5),
            ),
            obs_rx,
            rows,
        )
    }

    #[tokio::test]
    async fn a_stream_is_passed_on_whole_and_measured() {
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n\
                   data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
                   data: [DONE]\n\n";
        let (tap, obs, _rows) = tapped(sse, true, 200);
        let sink = tap.sink.clone();
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(out, sse.as_bytes());
        let x = obs.try_recv().unwrap();
        assert_eq!(x.content_events, 2);
        assert_eq!(x.itl_us.len(), 1);
        assert!(x.ttft.unwrap() >= Duration::from_millis(5));
        assert_eq!(x.usage.map(|u| u.completion_tokens), Some(2));
        assert_eq!(x.failure, None);
        assert_eq!(
            sink.counters
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn a_plain_error_body_is_classed_by_status() {
        let (tap, obs, _rows) = tapped("{\"error\":{\"message\":\"busy\"}}", false, 503);
        tap.collect().await.unwrap();
        let x = obs.try_recv().unwrap();
        assert_eq!(x.failure.as_deref(), Some("http_5xx"));
        assert_eq!(x.ttft, None);
    }

    #[tokio::test]
    async fn a_client_that_leaves_early_is_a_row_with_its_class() {
        let (tap, obs, _rows) = tapped("data: {}\n\n", true, 200);
        let sink = tap.sink.clone();
        // Dropped before its first frame was polled: the client went away.
        drop(tap);
        let x = obs.try_recv().unwrap();
        assert_eq!(x.failure.as_deref(), Some("client_disconnect"));
        assert!(x.e2e.is_some());
        assert_eq!(
            sink.counters
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn statuses_are_classed() {
        assert_eq!(status_class(200), None);
        assert_eq!(status_class(404), Some("http_4xx"));
        assert_eq!(status_class(502), Some("http_5xx"));
    }
}
