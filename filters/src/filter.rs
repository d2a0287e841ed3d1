//! The filter trait: one S3 concern per implementation, with the phases it needs.
//!
//! A request passes the filters in chain order (`request`, `upstream_request`,
//! `request_body`); the answer passes them in reverse order (`upstream_response`,
//! `response_body`), like layers of an onion:
//!
//! ```text
//!  client ─▶ sigv4 ─▶ allowlist ─▶ conditional ─▶ crypto ─▶ listing ─▶ resign ─▶ backend
//!  client ◀─ sigv4 ◀─ allowlist ◀─ conditional ◀─ crypto ◀─ listing ◀─ resign ◀─ backend
//! ```
//!
//! | phase              | pingora hook                     | runs                                   | may await |
//! |--------------------|----------------------------------|----------------------------------------|-----------|
//! | `request`          | `request_filter`                 | once, before the backend is contacted  | yes       |
//! | `upstream_request` | `upstream_request_filter`        | once per backend attempt               | yes       |
//! | `request_body`     | `request_body_filter`            | per body piece (≤ 64 KiB), then end    | no        |
//! | `upstream_response`| `upstream_response_filter`       | once, final (non-1xx) answer           | yes       |
//! | `response_body`    | `upstream_response_body_filter`  | per body piece; not for HEAD/204/304   | no        |
//!
//! Every phase returns `Err(S3Error)` to fail the request with that S3 error. Filters keep
//! their per-request state in [`RequestCtx`]; they hold only configuration themselves, so
//! each can be driven in a unit test without a server.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::ctx::RequestCtx;
use crate::error::S3Error;

/// A complete answer produced by a filter instead of asking the backend.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn xml(status: u16, body: String) -> Self {
        Self { status, headers: vec![("content-type", "application/xml".into())], body: Bytes::from(body) }
    }
}

/// What the request phase decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next filter and, at the end, to the backend.
    Continue,
    /// Answer the client with this and stop.
    Respond(Reply),
}

#[async_trait]
pub trait Filter: Send + Sync {
    /// The name used in the `filters:` list of the configuration.
    fn name(&self) -> &'static str;

    /// Inspect the client's request; answer it directly or let it continue.
    /// **The body has not been read yet.**
    async fn request(&self, _req: &RequestHeader, _ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        Ok(Flow::Continue)
    }

    /// Shape the request header the backend receives. Runs again on every retry, so any
    /// streaming state (ciphers, hashes) is (re)created here, not in `request`.
    async fn upstream_request(&self, _up: &mut RequestHeader, _ctx: &mut RequestCtx) -> Result<(), S3Error> {
        Ok(())
    }

    /// One piece of the request body (**not the entire body**). Replace `body` to change
    /// what goes upstream; `Some(Bytes::new())` sends nothing yet. When `end` is true the
    /// piece is the last one (possibly `None`).
    fn request_body(&self, _body: &mut Option<Bytes>, _end: bool, _ctx: &mut RequestCtx) -> Result<(), S3Error> {
        Ok(())
    }

    /// Shape the backend's answer header before the client sees it. An error here is
    /// answered in full by the proxy (the backend's answer may have no body to replace).
    async fn upstream_response(&self, _resp: &mut ResponseHeader, _ctx: &mut RequestCtx) -> Result<(), S3Error> {
        Ok(())
    }

    /// One piece of the backend's answer body (**not the entire body**).
    fn response_body(&self, _body: &mut Option<Bytes>, _end: bool, _ctx: &mut RequestCtx) -> Result<(), S3Error> {
        Ok(())
    }
}
