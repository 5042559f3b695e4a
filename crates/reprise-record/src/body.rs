//! The response body the proxy hands to hyper: the upstream's body passed through frame by
//! frame as it arrives (never re-chunked; see `Tap`), or a fixed body of its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

/// A proxied or proxy-made response body.
pub(crate) enum ProxyBody {
    /// The upstream's body; an error aborts the client connection, as the upstream's broken
    /// stream would have.
    Stream(Box<crate::Tap>),
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
