//! A no-op streaming server: every request is read whole and answered `200` with an event
//! stream of [`Options::events`] content events (16 by default), a usage event and
//! `[DONE]`. The path chooses the pace:
//!
//! - `/paced…`: events 1 ms apart (a decode rate to measure added latency against);
//! - `/slow/MS/…`: events MS milliseconds apart (streams kept open and slow);
//! - `/hold/…`: the first event at once, the rest after [`HOLD`] (streams held open);
//! - any other path: the whole stream in one write, or one frame per event without a
//!   pause with [`Options::split`].
//!
//! [`Style`] chooses the events' shape: completions (`text`) or chat (`delta.content`,
//! each stamped with its wall-clock send time in `sent_ns`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

/// How long `/hold/…` streams are held between their first event and the rest.
pub const HOLD: Duration = Duration::from_secs(5);

/// Content events per response by default.
pub const EVENTS: u32 = 16;

/// What the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The events' shape.
    pub style: Style,
    /// Content events per response.
    pub events: u32,
    /// Unpaced responses as one frame per event (each its own write) rather than one.
    pub split: bool,
}

impl Options {
    /// 16 events of `style`, unpaced responses in one write.
    pub fn new(style: Style) -> Options {
        Options {
            style,
            events: EVENTS,
            split: false,
        }
    }
}

/// The events' shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `/v1/completions` chunks: `{"choices":[{"text":" the"}]}`, all alike (cheapest to
    /// serve, so that the server is never the bottleneck of a client measurement).
    Completion,
    /// `/v1/chat/completions` chunks with `delta.content`, each carrying the wall-clock time
    /// it was written inside its content (`" t<i> @<ns>"`, read back by [`sent_stamps`]), to
    /// measure per-chunk delay through a proxy. As in a real server's stream (vLLM's, say),
    /// only the content changes from one chunk to the next: a stamp in a field of its own
    /// would make every chunk unlike the one before, the worst case for a reader that
    /// compares them (the capture proxy's).
    ChatStamped,
}

/// One completions event, as [`Style::Completion`] sends it.
pub const COMPLETION_EVENT: &str = "data: {\"id\":\"cmpl-0\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" the\",\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":16,\"completion_tokens\":16,\"total_tokens\":32}}\n\ndata: [DONE]\n\n";

/// Now on the wall clock, ns since the Unix epoch.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn event(style: Style, i: u32) -> Bytes {
    match style {
        Style::Completion => Bytes::from_static(COMPLETION_EVENT.as_bytes()),
        Style::ChatStamped => Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-0\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" t{i} @{}\"}},\"finish_reason\":null}}]}}\n\n",
            wall_ns()
        )),
    }
}

/// The send times (ns since the Unix epoch) of the [`Style::ChatStamped`] events in `text`, in
/// order.
pub fn sent_stamps(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.split(" @").skip(1).filter_map(|part| {
        let end = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        part[..end].parse().ok()
    })
}

fn events(style: Style, from: u32, to: u32) -> Bytes {
    let mut all = Vec::new();
    for i in from..to {
        all.extend_from_slice(&event(style, i));
    }
    all.extend_from_slice(USAGE.as_bytes());
    Bytes::from(all)
}

/// How a response is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    AtOnce,
    Gap(Duration),
    Hold,
}

/// One response body.
struct Stream {
    style: Style,
    events: u32,
    pace: Pace,
    next: u32,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let style = self.style;
        match self.pace {
            Pace::AtOnce => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::data(events(style, 0, self.events)))))
            }
            Pace::Hold => {
                if self.next == 0 {
                    self.next = 1;
                    self.timer = Some(Box::pin(tokio::time::sleep(HOLD)));
                    return Poll::Ready(Some(Ok(Frame::data(event(style, 0)))));
                }
                if let Some(t) = self.timer.as_mut()
                    && t.as_mut().poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
                self.done = true;
                let n = self.events;
                Poll::Ready(Some(Ok(Frame::data(events(style, 1, n)))))
            }
            Pace::Gap(gap) => {
                if self.next > 0 && !gap.is_zero() {
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.timer = None;
                }
                let i = self.next;
                self.next += 1;
                if i == self.events {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        USAGE.as_bytes(),
                    )))));
                }
                Poll::Ready(Some(Ok(Frame::data(event(style, i)))))
            }
        }
    }
}

fn pace_of(path: &str, split: bool) -> Pace {
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        Pace::Gap(Duration::from_millis(ms))
    } else if path.starts_with("/paced") {
        Pace::Gap(Duration::from_millis(1))
    } else if path.starts_with("/hold/") {
        Pace::Hold
    } else if split {
        Pace::Gap(Duration::ZERO)
    } else {
        Pace::AtOnce
    }
}

/// Serves on `listener` until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, options: Options) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let pace = pace_of(req.uri().path(), options.split);
                    let _ = req.into_body().collect().await;
                    let mut r = hyper::Response::new(Stream {
                        style: options.style,
                        events: options.events,
                        pace,
                        next: 0,
                        timer: None,
                        done: false,
                    });
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("text/event-stream"),
                    );
                    Ok::<_, Infallible>(r)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds a loopback port, calls `ready` with its address (`127.0.0.1:PORT`) and serves on
/// a current-thread runtime on this thread forever.
fn serve_here(style: Style, ready: impl FnOnce(std::net::SocketAddr)) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        ready(listener.local_addr().expect("addr"));
        serve(listener, Options::new(style)).await;
    });
}

/// Serves on a thread of its own for the rest of the process; returns
/// `http://127.0.0.1:PORT` (a test's server).
pub fn spawn(style: Style) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("stub-sse".into())
        .spawn(move || {
            serve_here(style, |addr| {
                let _ = tx.send(addr);
            })
        })
        .expect("thread");
    format!("http://{}", rx.recv().expect("the server's address"))
}

/// Binds a loopback port, prints its address (`127.0.0.1:PORT`) on stdout and serves on
/// a current-thread runtime until its standard input ends: the body of a bench's `--serve`
/// child process, which its parent spawns with a pipe on stdin, so that the server goes
/// with the parent even when that one panics or is killed.
pub fn serve_forever(style: Style) {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    serve_here(style, |addr| println!("{addr}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(style: Style, path: &str) -> (String, u32) {
        let mut s = Stream {
            style,
            events: EVENTS,
            pace: pace_of(path, false),
            next: 0,
            timer: None,
            done: false,
        };
        let mut frames = 0;
        let mut text = String::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut s).poll_frame(cx)).await {
            frames += 1;
            text.push_str(std::str::from_utf8(f.unwrap().data_ref().unwrap()).unwrap());
        }
        (text, frames)
    }

    #[tokio::test(start_paused = true)]
    async fn every_pace_sends_sixteen_events_usage_and_done() {
        for (path, frames) in [
            ("/v1/completions", 1),
            ("/paced/x", 17),
            ("/hold/x", 2),
            ("/slow/250/v1/completions", 17),
        ] {
            for style in [Style::Completion, Style::ChatStamped] {
                let (text, n) = body(style, path).await;
                assert_eq!(n, frames, "{path}");
                let content = text.matches("\"choices\":[{").count();
                assert_eq!(content, 16, "{path} {style:?}");
                assert!(text.ends_with("data: [DONE]\n\n"));
                let stamps: Vec<u64> = sent_stamps(&text).collect();
                let stamped = if style == Style::ChatStamped { 16 } else { 0 };
                assert_eq!(stamps.len(), stamped, "{path} {style:?}");
                assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
                assert!(stamps.iter().all(|&t| t > 1_600_000_000_000_000_000));
            }
        }
    }

    #[test]
    fn slow_paths_name_their_gap() {
        assert_eq!(
            pace_of("/slow/250/v1/completions", false),
            Pace::Gap(Duration::from_millis(250))
        );
        // Not a number: the default pace.
        assert_eq!(pace_of("/slow/x/v1", false), Pace::AtOnce);
    }

    #[tokio::test]
    async fn split_responses_send_one_frame_per_event() {
        let mut s = Stream {
            style: Style::Completion,
            events: 3,
            pace: pace_of("/v1/completions", true),
            next: 0,
            timer: None,
            done: false,
        };
        let mut frames = 0;
        while std::future::poll_fn(|cx| Pin::new(&mut s).poll_frame(cx))
            .await
            .is_some()
        {
            frames += 1;
        }
        // Three events, then usage and [DONE].
        assert_eq!(frames, 4);
    }
}
