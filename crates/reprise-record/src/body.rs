//! The response body the proxy writes to its client (through its own server or hyper): the upstream's body passed through frame by
//! frame as it arrives (never re-chunked), stamped and kept by a [`Tap`] for the workers to
//! measure, or a fixed body of the proxy's own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame};

use crate::observe::{EventMeter, Exchange};
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

/// Bytes of a stream kept for the workers to measure; past them the tap measures the rest
/// itself, so that a long stream holds at most this much.
const KEEP_STREAM: usize = 32 * 1024;

/// The upstream body on its way to the client: every frame is passed on as it is polled
/// (no task, channel or copy in between), stamped with its arrival time and kept; the
/// exchange is submitted when the body ends, fails, or is dropped by a departed client.
///
/// The events are measured by the workers from the kept reads (each read's arrival time
/// stamped here), not on the forwarding path: skimming every event before passing its
/// frame on was 11% of the forwarding thread's time and sat in front of every write to the
/// client. A stream that outgrows [`KEEP_STREAM`] is measured here from then on.
pub(crate) struct Tap {
    sink: Arc<Sink>,
    inner: UpstreamBody,
    x: Option<Exchange>,
    record: bool,
    started: Instant,
    /// Measures here, once the stream outgrew what is kept (`None` until then).
    meter: Option<EventMeter>,
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
            meter: None,
        }
    }

    fn observe(&mut self, chunk: &Bytes) {
        if !self.record {
            return;
        }
        let s = &self.sink;
        let Some(x) = self.x.as_mut() else { return };
        if x.streamed {
            let at = self.started.elapsed();
            if let Some(meter) = self.meter.as_mut() {
                meter.feed(x, at, chunk);
                return;
            }
            x.response.extend_from_slice(chunk);
            x.reads.push((at, x.response.len()));
            if x.response.len() > KEEP_STREAM {
                let mut meter = EventMeter::new(s.observe.record_content);
                meter.feed_kept(x);
                self.meter = Some(meter);
            }
        } else if x.response.len() + chunk.len() <= s.max_observed_body {
            x.response.extend_from_slice(chunk);
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
            // What the tap measured itself; the workers add what they measure.
            if s.observe.record_content {
                x.completion = Some(
                    self.meter
                        .as_mut()
                        .map(EventMeter::take_completion)
                        .unwrap_or_default(),
                );
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

    fn options() -> crate::observe::ObserveOptions {
        crate::observe::ObserveOptions {
            block_tokens: 16,
            record_content: false,
            salt: crate::salt::Salt::from_bytes(&[1; 32]),
        }
    }

    #[tokio::test]
    async fn a_stream_is_passed_on_whole_kept_and_measured_by_the_workers() {
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n\
                   data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
                   data: [DONE]\n\n";
        let (tap, obs, _rows) = tapped(sse, true, 200);
        let sink = tap.sink.clone();
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(out, sse.as_bytes());
        // Kept, not measured, on the forwarding path: one read, stamped.
        let x = obs.try_recv().unwrap();
        assert_eq!((x.response.as_slice(), x.reads.len()), (sse.as_bytes(), 1));
        assert!(x.reads[0].0 >= Duration::from_millis(5));
        assert_eq!((x.content_events, x.ttft), (0, None));
        // Measured by a worker.
        let r = crate::observe::to_record(x, &options(), false);
        assert!(r.ttft_us.unwrap() >= 5_000);
        // Both content events came in one read: one gap, of nothing.
        assert_eq!(r.itl_us, Some(vec![0]));
        assert_eq!((r.input_tokens, r.output_tokens), (Some(3), Some(2)));
        assert_eq!(r.failure, None);
        assert_eq!(
            sink.counters
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn a_long_stream_is_measured_by_the_tap_past_what_is_kept() {
        // 2,000 content events in reads of 10: past KEEP_STREAM the tap measures itself.
        let event = "data: {\"choices\":[{\"delta\":{\"content\":\"token\"}}]}\n\n";
        /// A body of the given reads.
        struct Reads(std::collections::VecDeque<Bytes>);
        impl Body for Reads {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
                Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
            }
        }
        let reads = Reads((0..200).map(|_| Bytes::from(event.repeat(10))).collect());
        let (sink, obs, _rows) = sink(8, 8);
        let sink = Arc::new(sink);
        sink.begin();
        let x = Exchange {
            request_id: "long".into(),
            status: 200,
            streamed: true,
            ..Exchange::default()
        };
        let inner = UpstreamBody::Tls(reqwest::Body::wrap(reads));
        let tap = Tap::new(sink, inner, x, true, Instant::now());
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), event.len() * 2_000);
        let x = obs.try_recv().unwrap();
        // The tap measured it all: what it kept, then the rest as it came.
        assert!(x.response.is_empty() && x.reads.is_empty());
        assert_eq!(x.content_events, 2_000);
        let r = crate::observe::to_record(x, &options(), false);
        assert_eq!(r.output_tokens, Some(2_000));
        assert_eq!(r.itl_us.map(|g| g.len()), Some(1_999));
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
