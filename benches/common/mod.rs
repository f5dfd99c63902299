//! What the `overhead` and `loopback` benches share.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::future::Ready;

/// The plain tower baseline: a `tower::retry::Policy` that keeps a copy of every request
/// and retries only a server error or a transport error.
#[derive(Clone, Copy)]
pub struct CloneRequest;

impl<ResB, E> tower::retry::Policy<Request<Full<Bytes>>, Response<ResB>, E> for CloneRequest {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(res) if res.status().is_server_error() => Some(std::future::ready(())),
            Ok(_) => None,
            Err(_) => Some(std::future::ready(())),
        }
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        Some(req.clone())
    }
}
