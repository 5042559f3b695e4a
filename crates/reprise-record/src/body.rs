//! The response body the proxy hands to hyper: chunks from the upstream, forwarded as they
//! arrive (one frame per upstream chunk, never re-chunked), or a fixed body of its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

/// A proxied or proxy-made response body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Upstream chunks; an `Err` aborts the client connection, as the upstream's broken
    /// stream would have.
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    /// A body the proxy wrote itself (errors, admin pages).
    Full(Option<Bytes>),
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
            ProxyBody::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ProxyBody::Full(None))
    }
}
