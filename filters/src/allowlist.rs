//! The `allowlist` filter: only the configured buckets are reachable. With a list set,
//! ListBuckets is answered from it without asking the backend (so the backend
//! credentials need no ListAllMyBuckets permission).

use async_trait::async_trait;
use pingora::http::RequestHeader;

use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::filter::{Filter, Flow, Reply};
use crate::request::Operation;
use crate::xml::escape;

pub struct AllowlistFilter {
    allowed: Vec<String>,
}

impl AllowlistFilter {
    /// An empty list allows every bucket.
    pub fn new(allowed: Vec<String>) -> Self {
        Self { allowed }
    }

    fn allows(&self, bucket: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|b| b == bucket)
    }

    fn list_buckets(&self, owner: &str) -> Reply {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        x.push_str(&format!("<Owner><ID>{0}</ID><DisplayName>{0}</DisplayName></Owner><Buckets>", escape(owner)));
        for b in &self.allowed {
            x.push_str(&format!("<Bucket><Name>{}</Name><CreationDate>1970-01-01T00:00:00.000Z</CreationDate></Bucket>", escape(b)));
        }
        x.push_str("</Buckets></ListAllMyBucketsResult>");
        Reply::xml(200, x)
    }
}

#[async_trait]
impl Filter for AllowlistFilter {
    fn name(&self) -> &'static str {
        "allowlist"
    }

    async fn request(&self, _req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        let owner = ctx.verified()?.access_key.clone();
        let s3 = ctx.s3()?;
        if s3.op == Operation::ListBuckets && !self.allowed.is_empty() {
            return Ok(Flow::Respond(self.list_buckets(&owner)));
        }
        let denied = |b: &str| s3err(S3ErrorCode::AccessDenied, "Access Denied: this bucket is not in the proxy's allowed_buckets").with_resource(b);
        if let Some(b) = &s3.bucket {
            if !self.allows(b) {
                return Err(denied(b));
            }
        }
        if let Some(src) = &s3.copy_source {
            if !self.allows(&src.bucket) {
                return Err(denied(&src.bucket));
            }
        }
        Ok(Flow::Continue)
    }
}
