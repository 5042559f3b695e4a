//! A lean HTTP/1.1 client for plain `http://` targets: the replayer's requests and the
//! capture proxy's forwarding.
//!
//! A replay sends the same request head to the same target thousands of times a second, so
//! everything that does not change is formatted once per target ([`Target::new`]): request
//! line, `host`, content type and the user's headers. A request is then one buffer (head,
//! length, body) written in one call on a kept-alive connection of the sender's own pool,
//! and the response is parsed in place (`httparse`) and its body decoded (content-length,
//! chunked or read-to-close) as it arrives, each network read handed to the caller as it
//! comes so that SSE events can be stamped on arrival. The capture proxy formats each
//! request itself ([`Target::send_request`]) and reads the response's header fields
//! ([`Response::headers`]) and its body by polling ([`Response::poll_chunk`]).
//!
//! A pool belongs to one runtime (its sockets are registered with that runtime's reactor).
//! Before a pooled connection is reused it is checked without blocking for an end of file
//! the server sent while it was idle (llama.cpp closes kept-alive connections after each
//! stream without saying so); a reused connection that fails before any byte of the
//! response arrives is retried once on a new connection, as browsers and hyper do.
//!
//! TLS targets and proxies (`HTTP_PROXY`, `ALL_PROXY`) go through `reqwest` instead.

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Idle connections kept per target and pool.
const MAX_IDLE: usize = 4096;

/// Why a request failed, split by whether the response had started: before the response
/// head is complete it is a transport failure (`connect`), after it a `broken_stream`.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Connecting, writing the request, or reading the response head failed.
    #[error("{0}")]
    Transport(String),
    /// This process ran short of something it needs to connect (a file descriptor, a
    /// local port, buffer memory): the client's failure, not the target's.
    #[error("{0}")]
    Client(String),
    /// The response head is not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Protocol(String),
    /// The body broke off or its framing is invalid.
    #[error("{0}")]
    Body(String),
}

/// One target (scheme `http`) and the idle connections to it of one runtime.
#[derive(Debug)]
pub struct Target {
    /// `host:port`, what is connected to.
    authority: String,
    /// The `host` field of requests: the host, and the port when the URL names one.
    host_header: String,
    /// Everything of the request head up to the content length's value.
    head: Vec<u8>,
    idle: Mutex<Vec<Conn>>,
    /// Longest wait for a new connection (`None`: the system's).
    connect_timeout: Option<Duration>,
}

/// How a request formatted by the caller is sent ([`Target::send_request`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOptions {
    /// The request is a `HEAD`: its response has no body, whatever its head says.
    pub head_only: bool,
    /// Keep the response head, to read its header fields ([`Response::headers`]).
    pub keep_head: bool,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
}

impl Target {
    /// The target for a `http://` URL, with `headers` sent on every request (names and
    /// values as given; `content-type: application/json` is added). Returns `None` for any
    /// other scheme.
    pub fn new(url: &reqwest::Url, headers: &[(String, String)]) -> Option<Target> {
        if url.scheme() != "http" {
            return None;
        }
        // IPv6 hosts come bracketed, as both the authority and `host` want them.
        let host = url.host_str()?;
        let authority = format!("{host}:{}", url.port_or_known_default()?);
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let mut head = format!("POST {path} HTTP/1.1\r\nhost: {host_header}\r\n");
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("accept: */*\r\ncontent-type: application/json\r\ncontent-length: ");
        Some(Target {
            authority,
            host_header,
            head: head.into_bytes(),
            idle: Mutex::new(Vec::new()),
            connect_timeout: None,
        })
    }

    /// Gives up connecting after `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Target {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The `host` field of requests to this target (the URL's host, and its port when the
    /// URL names one), for callers that format their own requests.
    pub fn host_header(&self) -> &str {
        &self.host_header
    }

    /// `host:port`, what is connected to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Idle connections now in the pool.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            // Nothing arrived since the last read drained the socket (the reactor saw no
            // event): no system call to check. A close the reactor has not seen yet shows
            // up as a failure before the response, and the request goes once more.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if conn.stream.poll_read_ready(&mut cx).is_pending() {
                return Some(conn);
            }
            // An idle connection has nothing to read: an end of file (or anything else)
            // means the server is done with it.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, H1Error> {
        let connecting = TcpStream::connect(&self.authority);
        let connected = match self.connect_timeout {
            Some(t) => tokio::time::timeout(t, connecting).await.map_err(|_| {
                H1Error::Transport(format!(
                    "connecting to {}: no answer within {t:?}",
                    self.authority
                ))
            })?,
            None => connecting.await,
        };
        let stream = connected.map_err(|e| {
            let message = format!("connecting to {}: {e}", self.authority);
            if crate::client_shortage(&e) {
                H1Error::Client(message)
            } else {
                H1Error::Transport(message)
            }
        })?;
        stream
            .set_nodelay(true)
            .map_err(|e| H1Error::Transport(format!("connecting to {}: {e}", self.authority)))?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// Sends `body` with the target's own request head and reads the response head. The
    /// body of the response is read with [`Response::chunk`].
    pub async fn send(self: &Arc<Self>, body: &[u8]) -> Result<Response, H1Error> {
        let mut request = Vec::with_capacity(self.head.len() + 24 + body.len());
        request.extend_from_slice(&self.head);
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        self.send_request(&request, RequestOptions::default()).await
    }

    /// Sends `request`, a whole HTTP/1.1 request as it goes on the wire (head and body,
    /// formatted by the caller), and reads the response head.
    pub async fn send_request(
        self: &Arc<Self>,
        request: &[u8],
        options: RequestOptions,
    ) -> Result<Response, H1Error> {
        if let Some(conn) = self.checkout() {
            match self.exchange(conn, request, options).await {
                Ok(r) => return Ok(r),
                // The server closed the kept-alive connection as the request went out:
                // once more on a new one.
                Err((H1Error::Transport(_), false)) => {}
                Err((e, _)) => return Err(e),
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, request, options)
            .await
            .map_err(|(e, _)| e)
    }

    /// Writes the request and reads the head. On error, says whether any byte of the
    /// response had arrived.
    async fn exchange(
        self: &Arc<Self>,
        mut conn: Conn,
        request: &[u8],
        options: RequestOptions,
    ) -> Result<Response, (H1Error, bool)> {
        conn.stream.write_all(request).await.map_err(|e| {
            (
                H1Error::Transport(format!("sending to {}: {e}", self.authority)),
                false,
            )
        })?;
        conn.buf.clear();
        loop {
            let n = std::future::poll_fn(|cx| poll_fill(&conn.stream, &mut conn.buf, cx))
                .await
                .map_err(|e| {
                    let started = !conn.buf.is_empty();
                    (
                        H1Error::Transport(format!("reading from {}: {e}", self.authority)),
                        started,
                    )
                })?;
            if n == 0 {
                let started = !conn.buf.is_empty();
                return Err((
                    H1Error::Transport(format!(
                        "{} closed the connection before the response{}",
                        self.authority,
                        if started { " was complete" } else { "" }
                    )),
                    started,
                ));
            }
            match parse_head(&conn.buf).map_err(|e| (e, true))? {
                Head::Partial => {
                    if conn.buf.len() > MAX_HEAD {
                        return Err((
                            H1Error::Protocol(format!("response head over {MAX_HEAD} bytes")),
                            true,
                        ));
                    }
                }
                // `100 Continue` and other interim responses: skip.
                Head::Interim(len) => conn.buf.advance(len),
                Head::Complete(h) => {
                    let head = options.keep_head.then(|| conn.buf[..h.len].to_vec());
                    conn.buf.advance(h.len);
                    let framing = if options.head_only {
                        Framing::Length(0)
                    } else {
                        h.framing()
                    };
                    let mut response = Response {
                        target: self.clone(),
                        conn: Some(conn),
                        status: h.status,
                        framing,
                        keep_alive: h.keep_alive,
                        out: BytesMut::new(),
                        finished: false,
                        head,
                    };
                    if response.framing == Framing::Length(0) {
                        response.finish(true);
                    }
                    return Ok(response);
                }
            }
        }
    }
}

/// A response whose head has been read.
#[derive(Debug)]
pub struct Response {
    target: Arc<Target>,
    conn: Option<Conn>,
    status: u16,
    framing: Framing,
    keep_alive: bool,
    out: BytesMut,
    finished: bool,
    /// The head's bytes, when asked to keep them.
    head: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many body bytes left.
    Length(u64),
    Chunked(Chunked),
    /// The body ends when the server closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a size line.
    Size,
    /// This many data bytes left in the chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Calls `f` with each header field of the response head (name, value), in order.
    /// Only for a response sent with [`RequestOptions::keep_head`]; otherwise none.
    pub fn headers(&self, mut f: impl FnMut(&str, &[u8])) {
        let Some(head) = &self.head else { return };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        // It parsed before.
        if r.parse(head).is_ok() {
            for h in r.headers.iter() {
                f(h.name, h.value);
            }
        }
    }

    /// Whether the whole body has been read.
    pub fn is_finished(&self) -> bool {
        self.finished || self.conn.is_none()
    }

    /// The body bytes that arrived with the next network read (decoded from chunked
    /// framing), or `None` at the end of the body. At the end a connection that can be
    /// kept alive goes back to the pool.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, H1Error> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// [`Response::chunk`], polled.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, H1Error>> {
        loop {
            if self.finished {
                return Poll::Ready(Ok(None));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            decode(&mut self.framing, &mut conn.buf, &mut self.out)?;
            if self.framing == Framing::Length(0) {
                self.finish(true);
            }
            if !self.out.is_empty() {
                return Poll::Ready(Ok(Some(self.out.split().freeze())));
            }
            if self.finished {
                return Poll::Ready(Ok(None));
            }
            let conn = self.conn.as_mut().expect("a connection until finished");
            let n = ready!(poll_fill(&conn.stream, &mut conn.buf, cx)).map_err(|e| {
                H1Error::Body(format!("reading from {}: {e}", self.target.authority))
            })?;
            if n == 0 {
                if self.framing == Framing::Close {
                    self.finish(false);
                    continue;
                }
                return Poll::Ready(Err(H1Error::Body(format!(
                    "{} closed the connection in the middle of the body",
                    self.target.authority
                ))));
            }
        }
    }

    /// Reads the rest of the body, up to `limit` bytes (the rest is read and dropped).
    pub async fn bytes(&mut self, limit: usize) -> Result<Bytes, H1Error> {
        let mut all = BytesMut::new();
        while let Some(b) = self.chunk().await? {
            if all.len() < limit {
                all.extend_from_slice(&b[..b.len().min(limit - all.len())]);
            }
        }
        Ok(all.freeze())
    }

    fn finish(&mut self, reusable: bool) {
        self.finished = true;
        if let Some(conn) = self.conn.take()
            && reusable
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.target.checkin(conn);
        }
    }
}

/// Decodes what `buf` holds into `out`, consuming it from `buf`. Sets the framing to
/// `Length(0)` when the body is complete.
fn decode(framing: &mut Framing, buf: &mut BytesMut, out: &mut BytesMut) -> Result<(), H1Error> {
    loop {
        match framing {
            Framing::Close => {
                out.extend_from_slice(buf);
                buf.clear();
                return Ok(());
            }
            Framing::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                out.extend_from_slice(&buf[..take]);
                buf.advance(take);
                *left -= take as u64;
                return Ok(());
            }
            Framing::Chunked(state) => match *state {
                Chunked::Size => {
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > 1024 {
                            return Err(H1Error::Body("chunk size line too long".into()));
                        }
                        return Ok(());
                    };
                    let line = &buf[..end];
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let digits = std::str::from_utf8(digits).unwrap_or("").trim();
                    let size = u64::from_str_radix(digits, 16).map_err(|_| {
                        H1Error::Body(format!(
                            "invalid chunk size line {:?}",
                            String::from_utf8_lossy(&line[..line.len().min(40)])
                        ))
                    })?;
                    buf.advance(end + 2);
                    *state = if size == 0 {
                        Chunked::Trailer
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    out.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    *state = if left == take as u64 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take as u64)
                    };
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Body("chunk data not followed by CRLF".into()));
                    }
                    buf.advance(2);
                    *state = Chunked::Size;
                }
                Chunked::Trailer => {
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > MAX_HEAD {
                            return Err(H1Error::Body("trailer too long".into()));
                        }
                        return Ok(());
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *framing = Framing::Length(0);
                        return Ok(());
                    }
                }
            },
        }
    }
}

/// Reads what the socket holds into `buf`, waiting for it to be readable.
///
/// A read that leaves room in the buffer took everything the socket held, so the
/// readiness is cleared then and there, as nginx does: the next wait goes straight to the
/// reactor instead of first reading `EAGAIN` (one system call fewer per network read).
/// The read runs inside `try_io`, so what is cleared is the readiness seen *before* the
/// read: an event the reactor records meanwhile (data that came after it, perhaps seen by
/// another worker thread) has a newer tick and stays.
///
/// `Ok(0)` is the end of the stream. The capture proxy reads its clients with it too.
pub fn poll_fill(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
    let room = buf.capacity() - buf.len();
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let mut drained = None;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            let n = stream.try_read_buf(buf)?;
            if n > 0 && n < room {
                drained = Some(n);
                return Err(ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (read, drained) {
            (_, Some(n)) => return Poll::Ready(Ok(n)),
            (Err(e), None) if e.kind() == ErrorKind::WouldBlock => continue,
            (r, None) => return Poll::Ready(r),
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

struct HeadFacts {
    len: usize,
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    no_body: bool,
}

impl HeadFacts {
    /// How the body after this head ends.
    fn framing(&self) -> Framing {
        if self.no_body {
            Framing::Length(0)
        } else if self.chunked {
            Framing::Chunked(Chunked::Size)
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::Close
        }
    }
}

/// Reads `data` as the bytes of one response the way [`Target::send`] and
/// [`Response::chunk`] do — interim heads skipped, the head parsed, the body decoded by its
/// framing as it arrives in two reads split at `split` — and returns the status and the
/// body, or the error. The entry point of the `h1_response` fuzz target and its corpus test
/// (untrusted input: servers send these bytes).
#[doc(hidden)]
pub fn parse_response(data: &[u8], split: usize) -> Result<(u16, Vec<u8>), H1Error> {
    let mut at = 0;
    let head = loop {
        match parse_head(&data[at..])? {
            Head::Partial => {
                return Err(H1Error::Protocol("the response head is incomplete".into()));
            }
            Head::Interim(len) => at += len,
            Head::Complete(h) => break h,
        }
    };
    let body = &data[at + head.len..];
    let split = split.min(body.len());
    let mut framing = head.framing();
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    for part in [&body[..split], &body[split..]] {
        buf.extend_from_slice(part);
        decode(&mut framing, &mut buf, &mut out)?;
    }
    Ok((head.status, out.to_vec()))
}

enum Head {
    Partial,
    Interim(usize),
    Complete(HeadFacts),
}

fn parse_head(buf: &[u8]) -> Result<Head, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => return Err(H1Error::Protocol(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Head::Interim(len));
    }
    let mut facts = HeadFacts {
        len,
        status,
        content_length: None,
        chunked: false,
        keep_alive: r.version == Some(1),
        no_body: status == 204 || status == 304,
    };
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| H1Error::Protocol("invalid content-length".into()))?;
            facts.content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            facts.chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    facts.keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    facts.keep_alive = true;
                }
            }
        }
    }
    if facts.chunked {
        // Chunked wins over a length (RFC 9112 §6.3).
        facts.content_length = None;
    } else if facts.content_length.is_none() {
        // Read to close: the connection cannot be reused.
        facts.keep_alive = false;
    }
    Ok(Head::Complete(facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8], split: usize) -> Result<Vec<u8>, H1Error> {
        let mut f = framing;
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            decode(&mut f, &mut buf, &mut out)?;
        }
        if f != Framing::Length(0) && f != Framing::Close {
            return Err(H1Error::Body("incomplete".into()));
        }
        Ok(out.to_vec())
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 1..wire.len() {
            let out = decode_all(Framing::Chunked(Chunked::Size), wire, split).unwrap();
            assert_eq!(out, b"hello world!", "split {split}");
        }
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for wire in [&b"zz\r\nhello\r\n0\r\n\r\n"[..], b"5\r\nhelloXX0\r\n\r\n"] {
            assert!(decode_all(Framing::Chunked(Chunked::Size), wire, 3).is_err());
        }
    }

    #[test]
    fn heads_give_status_framing_and_keep_alive() {
        let h = |s: &str| match parse_head(s.as_bytes()).unwrap() {
            Head::Complete(f) => f,
            _ => panic!("incomplete head"),
        };
        let f = h("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(f.chunked && f.keep_alive && f.status == 200);
        let f = h("HTTP/1.1 503 Busy\r\nContent-Length: 12\r\nConnection: close\r\n\r\n");
        assert_eq!(
            (f.content_length, f.keep_alive, f.status),
            (Some(12), false, 503)
        );
        let f = h("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!f.keep_alive);
        let f = h("HTTP/1.1 200 OK\r\n\r\n");
        assert!(!f.keep_alive && f.content_length.is_none());
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
            Ok(Head::Interim(25))
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nx: 1"),
            Ok(Head::Partial)
        ));
        assert!(parse_head(b"SMTP ready\r\n\r\n").is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes from a server, split anywhere, never panic the parsers; a valid
        /// chunked encoding of any body decodes to that body.
        #[test]
        fn untrusted_bytes_never_panic(
            wire in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            split in 1usize..40,
        ) {
            let _ = parse_head(&wire);
            let _ = decode_all(Framing::Chunked(Chunked::Size), &wire, split);
            let _ = decode_all(Framing::Length(17), &wire, split);
        }

        #[test]
        fn chunked_round_trip(
            pieces in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 1..50), 0..8),
            split in 1usize..40,
        ) {
            let mut wire = Vec::new();
            for p in &pieces {
                wire.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                wire.extend_from_slice(p);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let body: Vec<u8> = pieces.concat();
            proptest::prop_assert_eq!(
                decode_all(Framing::Chunked(Chunked::Size), &wire, split).unwrap(),
                body
            );
        }
    }
}
