//! The upstream side: the client requests are forwarded with (the lean HTTP/1.1 client of
//! `reprise-net` for `http://`, reqwest with rustls for `https://`), its response body, and
//! error messages with their causes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reprise_net::h1;

use crate::RecordError;

/// The client to the upstream: the lean HTTP/1.1 client for `http://` (the request written
/// in one call on a kept-alive connection, the response read in the exchange's own task: no
/// connection task and no channel between them), reqwest for `https://` (rustls).
pub(crate) enum UpstreamClient {
    Plain(Arc<h1::Target>),
    Tls(reqwest::Client),
}

/// An upstream response body, from either client.
pub(crate) enum UpstreamBody {
    Plain(h1::Response),
    Tls(reqwest::Body),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, String>>> {
        // Errors become their messages (the tap classes them as a broken stream).
        match self.get_mut() {
            UpstreamBody::Plain(r) => r.poll_chunk(cx).map(|c| match c {
                Ok(Some(data)) => Some(Ok(http_body::Frame::data(data))),
                Ok(None) => None,
                Err(e) => Some(Err(e.to_string())),
            }),
            UpstreamBody::Tls(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| e.to_string()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(r) => r.is_finished(),
            UpstreamBody::Tls(b) => b.is_end_stream(),
        }
    }
}

/// An error's message with its sources.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let next = c.to_string();
        if !msg.contains(&next) {
            msg.push_str(": ");
            msg.push_str(&next);
        }
        src = c.source();
    }
    msg
}

impl UpstreamClient {
    /// The client for an upstream URL's scheme.
    pub(crate) fn for_url(upstream: &reqwest::Url) -> Result<UpstreamClient, RecordError> {
        Ok(if let Some(target) = h1::Target::new(upstream, &[]) {
            UpstreamClient::Plain(Arc::new(
                target.with_connect_timeout(Duration::from_secs(10)),
            ))
        } else {
            UpstreamClient::Tls(
                reprise_net::client_builder()
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(3))
                    .connect_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| RecordError::Config(format!("HTTP client: {e}")))?,
            )
        })
    }
}

/// A request for the lean client, as it goes on the wire: `method`, the upstream's path
/// prefix (`base`, no trailing slash) then the client's path and query, `host`, the fields
/// of `headers` that `passes` lets through (the caller leaves out hop-by-hop fields, `host`
/// and `content-length`), a content length unless the body is empty on a method that has
/// none, and the body.
pub(crate) fn wire_request(
    method: &hyper::Method,
    base: &str,
    path_and_query: &str,
    host: &str,
    headers: &hyper::HeaderMap,
    passes: impl Fn(&hyper::header::HeaderName) -> bool,
    body: &[u8],
) -> Vec<u8> {
    let headers = || headers.iter().filter(|(k, _)| passes(k));
    let fields: usize = headers().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(64 + base.len() + path_and_query.len() + fields + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = matches!(
        *method,
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::DELETE | hyper::Method::OPTIONS
    );
    if !(body.is_empty() && bodiless) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The upstream URL of a request: the upstream's path prefix, then the request's path and
/// query.
pub(crate) fn upstream_url(upstream: &reqwest::Url, path_and_query: &str) -> reqwest::Url {
    let mut url = upstream.clone();
    let base_path = url.path().trim_end_matches('/').to_owned();
    let (p, q) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    url.set_path(&format!("{base_path}{p}"));
    url.set_query(q);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_path_and_query_under_the_prefix() {
        let up = reqwest::Url::parse("http://h:8000/llm/").unwrap();
        assert_eq!(
            upstream_url(&up, "/v1/chat/completions?x=1").as_str(),
            "http://h:8000/llm/v1/chat/completions?x=1"
        );
        let bare = reqwest::Url::parse("http://h:8000").unwrap();
        assert_eq!(
            upstream_url(&bare, "/v1/models").as_str(),
            "http://h:8000/v1/models"
        );
    }

    #[test]
    fn wire_requests_are_exact() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("authorization", "Bearer k".parse().unwrap());
        headers.append("x-tag", "a".parse().unwrap());
        headers.append("x-tag", "b".parse().unwrap());
        let up = reqwest::Url::parse("http://h:8000/llm/").unwrap();
        let r = wire_request(
            &hyper::Method::POST,
            "/llm",
            "/v1/completions?x=1",
            h1::Target::new(&up, &[]).unwrap().host_header(),
            &headers,
            |_| true,
            b"{}",
        );
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "POST /llm/v1/completions?x=1 HTTP/1.1\r\nhost: h:8000\r\n\
             authorization: Bearer k\r\nx-tag: a\r\nx-tag: b\r\ncontent-length: 2\r\n\r\n{}"
        );
        // Fields the filter stops are not written, and the length still is.
        let filtered = wire_request(
            &hyper::Method::POST,
            "",
            "/x",
            "h",
            &headers,
            |k| k != "authorization",
            b"{}",
        );
        assert_eq!(
            String::from_utf8(filtered).unwrap(),
            "POST /x HTTP/1.1\r\nhost: h\r\nx-tag: a\r\nx-tag: b\r\ncontent-length: 2\r\n\r\n{}"
        );
        // No body on a method without one: no length. An empty POST says 0.
        let none = hyper::HeaderMap::new();
        let bare = reqwest::Url::parse("http://h/").unwrap();
        let get = wire_request(
            &hyper::Method::GET,
            "",
            "/v1/models",
            "h",
            &none,
            |_| true,
            b"",
        );
        assert_eq!(get, b"GET /v1/models HTTP/1.1\r\nhost: h\r\n\r\n");
        assert_eq!(h1::Target::new(&bare, &[]).unwrap().host_header(), "h");
        let post = wire_request(&hyper::Method::POST, "", "/x", "h", &none, |_| true, b"");
        assert!(post.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[test]
    fn error_chains_skip_repeated_causes() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "connect failed: refused",
            Some(Box::new(E(
                "refused",
                Some(Box::new(E("os error 111", None))),
            ))),
        );
        assert_eq!(chain(&e), "connect failed: refused: os error 111");
    }
}
