//! The admin port: `/metrics` (the [`crate::Counters`] in the Prometheus text format) and
//! `/health`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::proxy::{Shared, json_error};

pub(crate) async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(ProxyBody::text(shared.sink.counters.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => Response::new(ProxyBody::text("ok\n")),
        _ => json_error(StatusCode::NOT_FOUND, "not found: /metrics, /health"),
    }
}
