//! The `resign` filter: turns the client's request into one for the backend. It drops the
//! client's authentication, addresses the backend (path-style or virtual-host, its own
//! host), and signs with the backend credentials. It runs last, on the request exactly
//! as the backend will receive it.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;

use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::S3Error;
use crate::filter::Filter;
use crate::request::PayloadMode;

/// Query parameters of a presigned URL: the client's authentication, not the backend's.
fn is_presign_param(k: &str) -> bool {
    matches!(
        k,
        "X-Amz-Algorithm" | "X-Amz-Credential" | "X-Amz-Date" | "X-Amz-Expires" | "X-Amz-SignedHeaders"
            | "X-Amz-Signature" | "X-Amz-Security-Token"
    )
}

pub struct ResignFilter {
    backend: Arc<Backend>,
}

impl ResignFilter {
    pub fn new(backend: Arc<Backend>) -> Self {
        Self { backend }
    }
}

#[async_trait]
impl Filter for ResignFilter {
    fn name(&self) -> &'static str {
        "resign"
    }

    async fn upstream_request(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let payload = match ctx.verified()?.payload {
            PayloadMode::Signed(h) if !ctx.body_rewritten => Some(hex::encode(h)),
            _ => None,
        };
        let s3 = ctx.s3()?;
        let query: Vec<(String, String)> =
            s3.query.iter().filter(|(k, _)| !is_presign_param(k)).cloned().collect();
        let bucket = s3.bucket.as_deref();
        let pq = self.backend.path_and_query(bucket, s3.key.as_deref(), &query);
        let uri = pq.parse().map_err(|e| S3Error::internal("building the upstream URI", e))?;
        up.set_uri(uri);
        // 100-continue is answered by the proxy itself after authentication.
        up.remove_header("expect");
        // A provider that rejects the header (profile b2): the conditional filter enforces it.
        if !self.backend.sends_if_none_match() {
            up.remove_header("if-none-match");
        }
        up.insert_header("host", self.backend.host_for(bucket))
            .map_err(|e| S3Error::internal("setting the upstream host", e))?;
        if ctx.upstream_trailer {
            // The crypto filter frames the ciphertext with a checksum trailer (verified writes).
            return self.backend.sign_trailer(up);
        }
        self.backend.sign(up, payload.as_deref())
    }
}
