//! The proxy's own HTTP/1.1 server for its clients' common exchange: a request head parsed
//! in place (`httparse`) from one buffer per connection, a body of a stated length read
//! into it, the answer's head and every frame of its body written with one system call per
//! network read of the upstream (head, chunk framing and data together).
//!
//! hyper's server cost the proxy thread a third of its user time (dispatch, parsing and
//! encoding, buffered I/O): perf with frame pointers over the bench's TTFT phase put the
//! proxy's user-space time at 2.2x nginx's, with the kernel's work equal. Only the common
//! case is served here: HTTP/1.1, a body of known length (or none), no `Expect`, no
//! `Upgrade`. Anything else — HTTP/1.0, a chunked request body, `100-continue` — is
//! [`Handled::Unusual`]: the connection, with every byte read so far ([`Rewind`]), goes to
//! hyper for the rest of its life, so no request is served less correctly than before.
//!
//! As with hyper: the header timeout covers the wait for a whole request head, idle
//! keep-alive time included; a head over the limit is answered 431, an unparsable one 400;
//! a client that goes away while its answer is awaited or streamed ends the exchange (its
//! row says `client_disconnect`); an idle connection asked to close (`conns`) closes, a busy
//! one finishes its exchange first.

use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri, Version};
use reprise_net::h1::poll_fill;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::conns::{Conn, Table};
use crate::proxy::{self, Answer, BodyError, Shared};

/// Header fields a request head may have (hyper's limit).
const MAX_HEADERS: usize = 100;
/// Bodies up to this size are copied out of the connection's buffer (which then stays
/// whole for the next request); bigger ones are split off it.
const COPY_BODY: usize = 16 * 1024;
/// Answer bytes gathered from the upstream before they are written, at most.
const MAX_GATHER: usize = 64 * 1024;
/// After answering on a connection that closes, how long what the client still sends is
/// read and dropped (so that closing with unread bytes does not reset the connection and
/// destroy the answer before the client has read it), and how much.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 << 20;

/// How a connection's service ended.
pub(crate) enum Handled {
    /// Closed (by either side, a timeout, or an error answered).
    Closed,
    /// A request this server leaves to hyper: every byte read and not yet served.
    Unusual(Bytes),
}

/// A request head read and parsed.
struct Head {
    parts: hyper::http::request::Parts,
    /// Bytes of the head.
    len: usize,
    content_length: u64,
    /// The client asked to close after this exchange.
    close: bool,
}

/// What the bytes of a connection's buffer hold.
enum Parse {
    Partial,
    Complete(Box<Head>),
    /// Valid, but for hyper (see the module's overview).
    Unusual,
    TooLarge,
    Bad(String),
}

fn parse(buf: &[u8], max: usize) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max {
                Parse::TooLarge
            } else {
                Parse::Partial
            };
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Parse::TooLarge,
        Err(e) => return Parse::Bad(e.to_string()),
    };
    if len > max {
        return Parse::TooLarge;
    }
    if r.version != Some(1) {
        return Parse::Unusual;
    }
    let (Some(method), Some(path)) = (r.method, r.path) else {
        return Parse::Bad("no request line".into());
    };
    // Origin form only ("/path?query"); a proxy request's absolute form and the rest go
    // to hyper.
    if !path.starts_with('/') {
        return Parse::Unusual;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Bad(format!("invalid method {method:?}"));
    };
    let Ok(uri) = path.parse::<Uri>() else {
        return Parse::Bad("invalid request target".into());
    };
    let mut map = HeaderMap::with_capacity(r.headers.len());
    let (mut content_length, mut close) = (None, false);
    for h in r.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parse::Bad(format!("invalid header name {:?}", h.name));
        };
        if name == header::TRANSFER_ENCODING || name == header::EXPECT || name == header::UPGRADE {
            return Parse::Unusual;
        }
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, content_length) {
                (None, _) => return Parse::Bad("invalid content-length".into()),
                // Repeated: hyper judges whether the values agree.
                (Some(_), Some(_)) => return Parse::Unusual,
                (Some(n), None) => content_length = Some(n),
            }
        } else if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Parse::Unusual;
                }
            }
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Parse::Bad(format!("invalid value of header {:?}", h.name));
        };
        map.append(name, value);
    }
    let (mut parts, ()) = hyper::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = map;
    Parse::Complete(Box::new(Head {
        parts,
        len,
        content_length: content_length.unwrap_or(0),
        close,
    }))
}

/// The length of a complete head served here (see [`crate::parse_request_head`]).
pub(crate) fn head_len(buf: &[u8], max: usize) -> Option<usize> {
    match parse(buf, max) {
        Parse::Complete(h) => Some(h.len),
        _ => None,
    }
}

/// How reading a request head ended.
enum Read {
    Head(Box<Head>),
    Closed,
    Unusual,
    TooLarge,
    Bad(String),
}

async fn read_head(stream: &TcpStream, buf: &mut BytesMut, max: usize) -> Read {
    loop {
        if !buf.is_empty() {
            match parse(buf, max) {
                Parse::Partial => {}
                Parse::Complete(h) => return Read::Head(h),
                Parse::Unusual => return Read::Unusual,
                Parse::TooLarge => return Read::TooLarge,
                Parse::Bad(e) => return Read::Bad(e),
            }
        }
        // An idle connection holds no buffer until its client says something.
        if buf.capacity() == 0 && stream.readable().await.is_err() {
            return Read::Closed;
        }
        match std::future::poll_fn(|cx| poll_fill(stream, buf, cx)).await {
            Ok(0) | Err(_) => return Read::Closed,
            Ok(_) => {}
        }
    }
}

/// The body of a stated length, from what the buffer holds and then the socket.
async fn read_body(stream: &TcpStream, buf: &mut BytesMut, len: usize) -> Result<Bytes, String> {
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match std::future::poll_fn(|cx| poll_fill(stream, buf, cx)).await {
            Ok(0) => {
                return Err("the client closed the connection in the middle of the body".into());
            }
            Err(e) => return Err(e.to_string()),
            Ok(_) => {}
        }
    }
    Ok(if len <= COPY_BODY {
        let body = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        body
    } else {
        buf.split_to(len).freeze()
    })
}

/// Reads what the client sends while its answer is awaited or streamed, keeping it for
/// the next request (up to `max` bytes): ready when the client has gone (end of stream or
/// an error).
fn poll_gone(stream: &TcpStream, buf: &mut BytesMut, max: usize, cx: &mut Context<'_>) -> Poll<()> {
    while buf.len() <= max {
        match poll_fill(stream, buf, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Pending
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How the answer's body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body (a `HEAD` request, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// The status line.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The end of the answer's head (after the status line and the fields passed on), and how
/// its body is framed: the length the upstream stated (`length`), else the length of a body
/// of the proxy's own (`fixed`), chunked otherwise.
fn head_end(
    out: &mut Vec<u8>,
    status: StatusCode,
    length: Option<u64>,
    fixed: Option<usize>,
    head_only: bool,
    close: bool,
) -> Framing {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (length, fixed) {
        _ if bodiless => Framing::None,
        (Some(n), _) => Framing::Length(n),
        (None, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            Framing::Length(n as u64)
        }
        (None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head_only { Framing::None } else { framing }
}

/// The answer's head, written into `out`, and its body.
fn encode_head(
    out: &mut Vec<u8>,
    answer: Answer,
    head_only: bool,
    close: bool,
) -> (Framing, ProxyBody) {
    match answer {
        Answer::Plain {
            status,
            fields,
            length,
            body,
        } => {
            status_line(out, status);
            out.extend_from_slice(&fields);
            let framing = head_end(out, status, length, None, head_only, close);
            (framing, ProxyBody::Stream(body))
        }
        Answer::Other(response) => {
            let (head, body) = response.into_parts();
            status_line(out, head.status);
            let mut length = None;
            for (k, v) in &head.headers {
                if k == header::CONTENT_LENGTH {
                    length = v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
                }
                out.extend_from_slice(k.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            let fixed = match &body {
                ProxyBody::Full(b) => Some(b.as_ref().map_or(0, Bytes::len)),
                ProxyBody::Stream(_) => None,
            };
            let framing = head_end(out, head.status, length, fixed, head_only, close);
            (framing, body)
        }
    }
}

/// Appends body bytes as framed.
fn encode_data(out: &mut Vec<u8>, framing: Framing, data: &[u8]) {
    match framing {
        Framing::None => {}
        Framing::Length(_) => out.extend_from_slice(data),
        Framing::Chunked => {
            if data.is_empty() {
                return;
            }
            hex(out, data.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `n` in hexadecimal (a chunk's size line).
fn hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (4 * i)) & 0xf]);
    }
}

/// A connection's one timer for its header and upstream timeouts. Each exchange only moves
/// a deadline: the timer fires at an older, earlier deadline at most once per timeout and
/// is then set to the current one. Registering a timer and cancelling it, twice an
/// exchange, was 8% of the proxy thread's user time.
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new() -> Deadline {
        // Far off until first set.
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(far)),
        }
    }

    /// Ready at `at` (not before).
    async fn until(&mut self, at: tokio::time::Instant) {
        if self.sleep.deadline() > at {
            self.sleep.as_mut().reset(at);
        }
        loop {
            self.sleep.as_mut().await;
            if tokio::time::Instant::now() >= at {
                return;
            }
            self.sleep.as_mut().reset(at);
        }
    }
}

/// What the answer's body did next.
enum Step {
    /// Bytes gathered and nothing more ready: write them.
    Flush,
    End,
    /// The upstream's stream broke.
    Broken,
    /// The client went away.
    Gone,
}

/// Writes an answer: its head, then its body as it comes, each network read's worth in
/// one write. `Err` when the connection must close (the client gone, a broken stream, a
/// body that did not match its stated length).
async fn respond(
    stream: &TcpStream,
    buf: &mut BytesMut,
    max: usize,
    answer: Answer,
    head_only: bool,
    close: bool,
) -> Result<(), ()> {
    let mut out = Vec::with_capacity(1024);
    let (framing, mut body) = encode_head(&mut out, answer, head_only, close);
    if framing == Framing::None {
        return write_all(stream, &out).await.map_err(drop);
    }
    let mut sent = 0u64;
    loop {
        let step = std::future::poll_fn(|cx| {
            loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            sent += data.len() as u64;
                            encode_data(&mut out, framing, &data);
                        }
                        if out.len() >= MAX_GATHER {
                            return Poll::Ready(Step::Flush);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Step::Broken),
                    Poll::Ready(None) => return Poll::Ready(Step::End),
                    Poll::Pending if !out.is_empty() => return Poll::Ready(Step::Flush),
                    // Waiting on the upstream: a client that leaves meanwhile ends it.
                    Poll::Pending => return poll_gone(stream, buf, max, cx).map(|()| Step::Gone),
                }
            }
        })
        .await;
        match step {
            Step::Flush => {
                write_all(stream, &out).await.map_err(drop)?;
                out.clear();
            }
            Step::End => {
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                write_all(stream, &out).await.map_err(drop)?;
                return match framing {
                    Framing::Length(n) if n != sent => Err(()),
                    _ => Ok(()),
                };
            }
            Step::Broken => {
                // What came is passed on; the missing end tells the client.
                let _ = write_all(stream, &out).await;
                return Err(());
            }
            Step::Gone => return Err(()),
        }
    }
}

/// An answer of the proxy's own before closing (431, 400).
async fn refuse(stream: &mut TcpStream, status: StatusCode, message: &str) {
    let answer = proxy::json_error(status, message).into();
    let mut spare = BytesMut::new();
    if respond(stream, &mut spare, 0, answer, false, true)
        .await
        .is_ok()
    {
        linger(stream).await;
    }
}

/// Closes our side, then reads and drops what the client still sends for a while (see
/// [`LINGER`]).
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = BytesMut::new();
    let mut dropped = 0;
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            sink.clear();
            match std::future::poll_fn(|cx| poll_fill(stream, &mut sink, cx)).await {
                Ok(n) if n > 0 && dropped + n <= LINGER_BYTES => dropped += n,
                _ => break,
            }
        }
    })
    .await;
}

/// Serves a client connection until it closes, or until a request comes that is left to
/// hyper.
pub(crate) async fn connection(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    table: &Arc<Table>,
    conn: &Arc<Conn>,
) -> Handled {
    let limits = shared.config.limits;
    let max = limits.max_header_bytes;
    let mut buf = BytesMut::new();
    let mut deadline = Deadline::new();
    loop {
        let timeout = tokio::time::Instant::now() + limits.header_timeout;
        let read = tokio::select! {
            r = read_head(stream, &mut buf, max) => Ok(r),
            // The header timeout: a slow or idle client is cut off.
            () = deadline.until(timeout) => Err(()),
            () = conn.close.notified() => return Handled::Closed,
        };
        let head = match read {
            Err(()) | Ok(Read::Closed) => return Handled::Closed,
            Ok(Read::Unusual) => return Handled::Unusual(buf.freeze()),
            Ok(Read::TooLarge) => {
                let message = format!("reprise record: request head over {max} bytes");
                refuse(
                    stream,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &message,
                )
                .await;
                return Handled::Closed;
            }
            Ok(Read::Bad(e)) => {
                let message = format!("reprise record: invalid request: {e}");
                refuse(stream, StatusCode::BAD_REQUEST, &message).await;
                return Handled::Closed;
            }
            Ok(Read::Head(h)) => h,
        };
        buf.advance(head.len);
        let busy = table.busy(conn);
        let begun = proxy::begin(shared, &head.parts);
        let head_only = head.parts.method == Method::HEAD;
        let mut close = head.close;
        let response = if head.content_length > shared.config.max_observed_body as u64 {
            close = true;
            proxy::body_failed(shared, begun, BodyError::TooLarge).into()
        } else {
            match read_body(stream, &mut buf, head.content_length as usize).await {
                Ok(body) => {
                    let timeout = tokio::time::Instant::now() + shared.config.upstream_timeout;
                    let forwarding =
                        proxy::forward(shared, &head.parts, begun, body, deadline.until(timeout));
                    tokio::pin!(forwarding);
                    let watching = std::future::poll_fn(|cx| poll_gone(stream, &mut buf, max, cx));
                    tokio::select! {
                        r = &mut forwarding => r,
                        // The exchange ends as the client's disconnect.
                        () = watching => return Handled::Closed,
                    }
                }
                Err(e) => {
                    close = true;
                    proxy::body_failed(shared, begun, BodyError::Read(e)).into()
                }
            }
        };
        let written = respond(stream, &mut buf, max, response, head_only, close).await;
        drop(busy);
        match written {
            Ok(()) if !close => {}
            Ok(()) => {
                linger(stream).await;
                return Handled::Closed;
            }
            Err(()) => return Handled::Closed,
        }
    }
}

/// A connection handed to hyper with the bytes already read from it, which hyper reads
/// first.
pub(crate) struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl Rewind {
    pub(crate) fn new(read: Bytes, stream: TcpStream) -> Rewind {
        Rewind { read, stream }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn head(raw: &str) -> Parse {
        parse(raw.as_bytes(), 1024)
    }

    #[test]
    fn heads_are_served_here_or_left_to_hyper_or_refused() {
        let Parse::Complete(h) = head(
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\
             X-Tag: a\r\nx-tag: b\r\nConnection: keep-alive, close\r\n\r\n{}",
        ) else {
            panic!("a common head")
        };
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(
            h.parts.uri.path_and_query().unwrap().as_str(),
            "/v1/chat/completions?x=1"
        );
        assert_eq!(h.content_length, 2);
        assert!(h.close);
        assert_eq!(h.len, 121);
        let tags: Vec<_> = h.parts.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        let Parse::Complete(get) = head("GET /v1/models HTTP/1.1\r\nhost: h\r\n\r\n") else {
            panic!("a GET")
        };
        assert_eq!((get.content_length, get.close), (0, false));
        for unusual in [
            "POST / HTTP/1.0\r\ncontent-length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
        ] {
            assert!(matches!(head(unusual), Parse::Unusual), "{unusual:?}");
        }
        for bad in [
            "GARBAGE\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -2\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1e3\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Parse::Bad(_)), "{bad:?}");
        }
        assert!(matches!(
            head("POST / HTTP/1.1\r\nhost: h\r\n"),
            Parse::Partial
        ));
        let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(1024));
        assert!(matches!(head(&long), Parse::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(many.as_bytes(), 1 << 20), Parse::TooLarge));
    }

    #[test]
    fn answers_are_framed_by_length_or_chunks() {
        let mut out = Vec::new();
        for (n, s) in [
            (0, "0"),
            (9, "9"),
            (255, "ff"),
            (4096, "1000"),
            (0x12345, "12345"),
        ] {
            out.clear();
            hex(&mut out, n);
            assert_eq!(out, s.as_bytes());
        }
        out.clear();
        encode_data(&mut out, Framing::Chunked, b"hello");
        encode_data(&mut out, Framing::Chunked, b"");
        assert_eq!(out, b"5\r\nhello\r\n");
        let framed = |status: u16, length, fixed, head_only, close| {
            let mut out = Vec::new();
            let status = StatusCode::from_u16(status).unwrap();
            let f = head_end(&mut out, status, length, fixed, head_only, close);
            (f, String::from_utf8(out).unwrap())
        };
        assert_eq!(
            framed(200, Some(7), None, false, false),
            (Framing::Length(7), "\r\n".into())
        );
        assert_eq!(
            framed(502, None, Some(12), false, true),
            (
                Framing::Length(12),
                "content-length: 12\r\nconnection: close\r\n\r\n".into()
            )
        );
        assert_eq!(
            framed(200, None, None, false, false),
            (
                Framing::Chunked,
                "transfer-encoding: chunked\r\n\r\n".into()
            )
        );
        // A HEAD request's answer states its framing and has no body; 204 and 304 neither.
        assert_eq!(framed(200, None, None, true, false).0, Framing::None);
        assert_eq!(
            framed(204, None, None, false, false),
            (Framing::None, "\r\n".into())
        );
        assert_eq!(framed(304, Some(5), None, false, false).0, Framing::None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_get_a_verdict(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Parse::Complete(h) = parse(&data, 512) {
                proptest::prop_assert!(h.len <= data.len() && h.len <= 512);
            }
        }

        #[test]
        fn written_heads_read_back(
            method in "GET|POST|PUT|DELETE|OPTIONS",
            path in "/[a-zA-Z0-9/_.~-]{0,40}(\\?[a-z0-9=&]{0,20})?",
            fields in proptest::collection::vec(("x-[a-z0-9-]{1,12}", "[ -~]{0,30}"), 0..8),
            length in proptest::option::of(0u64..1_000_000),
            close in proptest::bool::ANY,
        ) {
            let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: h\r\n");
            for (k, v) in &fields {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            if let Some(n) = length {
                raw.push_str(&format!("Content-Length: {n}\r\n"));
            }
            if close {
                raw.push_str("connection: close\r\n");
            }
            raw.push_str("\r\n");
            let Parse::Complete(h) = parse(raw.as_bytes(), 1 << 16) else {
                return Err(proptest::test_runner::TestCaseError::fail(format!("{raw:?}")));
            };
            proptest::prop_assert_eq!(h.len, raw.len());
            proptest::prop_assert_eq!(h.parts.method.as_str(), method.as_str());
            proptest::prop_assert_eq!(h.parts.uri.path_and_query().unwrap().as_str(), path.as_str());
            proptest::prop_assert_eq!(h.content_length, length.unwrap_or(0));
            proptest::prop_assert_eq!(h.close, close);
            for (k, v) in &fields {
                // Values lose their surrounding spaces, as HTTP says.
                let values: Vec<_> = h.parts.headers.get_all(k.as_str()).iter().map(|v| v.as_bytes()).collect();
                proptest::prop_assert!(values.contains(&v.trim_matches(' ').as_bytes()), "{k}: {v:?} in {values:?}");
            }
        }
    }

    /// Reads one answer: its head, then a body by its length, to its last chunk, or to
    /// the end of the stream.
    fn answer(s: &mut std::net::TcpStream) -> (String, String) {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).unwrap(),
                1,
                "{:?}",
                String::from_utf8_lossy(&got)
            );
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap().to_ascii_lowercase();
        let mut body = Vec::new();
        if let Some(n) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            body.resize(n, 0);
            s.read_exact(&mut body).unwrap();
        } else if head.contains("transfer-encoding: chunked") {
            while !body.ends_with(b"0\r\n\r\n") {
                assert_eq!(s.read(&mut byte).unwrap(), 1);
                body.push(byte[0]);
            }
        } else {
            s.read_to_end(&mut body).unwrap();
        }
        (head, String::from_utf8(body).unwrap())
    }

    #[test]
    fn one_connection_serves_common_pipelined_and_unusual_requests() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let upstream = reprise_stub::sse::spawn(reprise_stub::sse::Style::Completion);
        let dir = tempfile::tempdir().unwrap();
        let config = crate::RecordConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            dir.path().join("capture"),
            crate::salt::Salt::from_bytes(&[5; 32]),
        );
        let recorder = rt.block_on(crate::Recorder::start(config)).unwrap();
        let mut s = std::net::TcpStream::connect(recorder.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"model":"m","prompt":"hi","max_tokens":16,"stream":true}"#;
        let common = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // Two common requests in one write, then one with a chunked body: hyper's, on the
        // same connection.
        let chunked = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        s.write_all(format!("{common}{common}").as_bytes()).unwrap();
        for _ in 0..2 {
            let (head, events) = answer(&mut s);
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            assert!(head.contains("content-type: text/event-stream"), "{head}");
            assert_eq!(events.matches("data: {").count(), 17, "{events}");
            assert!(
                events.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"),
                "{events}"
            );
        }
        s.write_all(chunked.as_bytes()).unwrap();
        let (head, events) = answer(&mut s);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(events.contains("data: [DONE]"), "{events}");
        // HTTP/1.0 is hyper's too; its answer ends with the connection.
        let mut old = std::net::TcpStream::connect(recorder.addr()).unwrap();
        old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        old.write_all(common.replace("HTTP/1.1", "HTTP/1.0").as_bytes())
            .unwrap();
        let (head, events) = answer(&mut old);
        assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
        assert!(events.contains("data: [DONE]"), "{events}");
        // `connection: close` is honoured, and said.
        let mut closing = std::net::TcpStream::connect(recorder.addr()).unwrap();
        closing
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        closing
            .write_all(
                common
                    .replace("host: x", "host: x\r\nconnection: close")
                    .as_bytes(),
            )
            .unwrap();
        let (head, _) = answer(&mut closing);
        assert!(head.contains("connection: close"), "{head}");
        let mut rest = Vec::new();
        assert_eq!(closing.read_to_end(&mut rest).unwrap(), 0);
        drop((s, old, closing));
        let summary = rt.block_on(recorder.shutdown());
        assert_eq!(summary.forwarded, 5);
        assert_eq!(summary.lost, 0);
    }
}
