//! The `conditional` filter: `If-None-Match: *` on writes ("create only if absent").
//!
//! In `backend` mode the header simply travels to the backend, which must honour it (AWS,
//! MinIO, Ceph, moto do). In `enforce` mode the proxy asks the backend first (HEAD) and
//! answers 412 itself, for backends that silently ignore the header (Garage). The check
//! and the write are two requests, so two writers racing for the same new key can both
//! pass; for PBS this is harmless (chunks are content-addressed: both write the same
//! bytes).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;

use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::filter::{Filter, Flow};
use crate::request::{IfNoneMatch, Operation};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionalMode {
    Backend,
    Enforce,
}

impl std::str::FromStr for ConditionalMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "backend" => Ok(Self::Backend),
            "enforce" => Ok(Self::Enforce),
            _ => Err(format!("conditional_writes must be `backend` or `enforce`, not {s:?}")),
        }
    }
}

pub struct ConditionalFilter {
    mode: ConditionalMode,
    backend: Arc<Backend>,
}

impl ConditionalFilter {
    pub fn new(mode: ConditionalMode, backend: Arc<Backend>) -> Self {
        Self { mode, backend }
    }
}

/// The 412 answer S3 gives.
pub fn precondition_failed(resource: &str) -> S3Error {
    s3err(S3ErrorCode::PreconditionFailed, "At least one of the pre-conditions you specified did not hold").with_resource(resource)
}

#[async_trait]
impl Filter for ConditionalFilter {
    fn name(&self) -> &'static str {
        "conditional"
    }

    async fn request(&self, _req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        ctx.verified()?;
        let s3 = ctx.s3()?;
        let write = matches!(s3.op, Operation::PutObject | Operation::CopyObject | Operation::CompleteMultipartUpload);
        if self.mode != ConditionalMode::Enforce || !write || s3.if_none_match != Some(IfNoneMatch::Any) {
            return Ok(Flow::Continue);
        }
        let (bucket, key) = (s3.bucket.as_deref(), s3.key.as_deref());
        let head = self.backend.request("HEAD", bucket, key, &[], &[], None)?;
        let (resp, _) = self.backend.send(bucket, head, None, 0).await?;
        match resp.status.as_u16() {
            404 => Ok(Flow::Continue),
            200 => Err(precondition_failed(&s3.resource())),
            403 => Err(s3err(S3ErrorCode::AccessDenied, "the backend denied the existence check for If-None-Match")),
            s => {
                log::warn!("backend answered {s} to the If-None-Match existence check of {}", s3.resource());
                Err(s3err(S3ErrorCode::ServiceUnavailable, "the backend could not confirm the object is absent; please retry").with_retry_after(1))
            }
        }
    }
}
