//! The upstream side: the client requests are forwarded with (hyper's own for `http://`,
//! reqwest with rustls for `https://`), its response body, and error messages with their
//! causes.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::RecordError;

/// The client to the upstream: hyper's own for `http://` (no layer between the proxy and
/// the connection pool), reqwest for `https://` (rustls).
pub(crate) enum UpstreamClient {
    Plain(Box<hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<Bytes>>>),
    Tls(reqwest::Client),
}

/// An upstream response body, from either client.
pub(crate) enum UpstreamBody {
    Plain(Incoming),
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
            UpstreamBody::Plain(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| e.to_string()))),
            UpstreamBody::Tls(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| e.to_string()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(b) => b.is_end_stream(),
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
        Ok(if upstream.scheme() == "http" {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(Duration::from_secs(10)));
            UpstreamClient::Plain(Box::new(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(3))
                    .build(connector),
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
