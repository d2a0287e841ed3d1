//! The `allowlist` filter: only the configured buckets are reachable. With a list set,
//! ListBuckets is answered from it without asking the backend (so the backend
//! credentials need no ListAllMyBuckets permission).
//!
//! A client with its own grants (`clients[].buckets`) reaches only those buckets (and, for
//! a `bucket/prefix` grant, only keys and listings under the prefix), by every path: the
//! request's bucket and key, a copy source, the keys a DeleteObjects names (checked on the
//! held body, see `xml_body`). A `read-only` client may only GET and HEAD.

use async_trait::async_trait;
use pingora::http::RequestHeader;

use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::filter::{Filter, Flow, Reply};
use crate::clients::Client;
use crate::request::{Operation, S3Request};
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

    fn list_buckets<'a>(owner: &str, buckets: impl Iterator<Item = &'a str>) -> Reply {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        x.push_str(&format!("<Owner><ID>{0}</ID><DisplayName>{0}</DisplayName></Owner><Buckets>", escape(owner)));
        for b in buckets {
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

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        let owner = ctx.verified()?.access_key.clone();
        let s3 = ctx.s3()?;
        if let Some(client) = ctx.client.as_deref() {
            if !client.role.allows_method(req.method.as_str()) {
                return Err(s3err(S3ErrorCode::AccessDenied, "Access Denied: this client is read-only"));
            }
            if !client.grants.is_empty() {
                if s3.op == Operation::ListBuckets {
                    return Ok(Flow::Respond(Self::list_buckets(&owner, client.grants.iter().map(|g| g.bucket.as_str()))));
                }
                return granted(client, s3).map(|()| Flow::Continue);
            }
        }
        if s3.op == Operation::ListBuckets && !self.allowed.is_empty() {
            return Ok(Flow::Respond(Self::list_buckets(&owner, self.allowed.iter().map(String::as_str))));
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

/// The bucket settings a client limited to a key prefix may read. Only those every backend
/// implements: one that does not know a sub-resource may answer it as a plain listing of
/// the whole bucket (moto does for `?requestPayment`, `?policyStatus`, `?metrics`, …).
const SETTINGS_UNDER_A_PREFIX: &[&str] = &["location", "versioning", "object-lock"];

/// A client with its own grants: the bucket, key, listing prefix and copy source must all
/// lie inside them.
fn granted(client: &Client, s3: &S3Request) -> Result<(), S3Error> {
    let denied = |what: String| s3err(S3ErrorCode::AccessDenied, "Access Denied: this client may not reach this bucket or key").with_resource(what);
    if let Some(bucket) = &s3.bucket {
        let grant = client.grant(bucket).ok_or_else(|| denied(bucket.clone()))?;
        match &s3.key {
            Some(key) if !grant.allows_key(key) => return Err(denied(format!("{bucket}/{key}"))),
            Some(_) => {}
            // Bucket-level requests under a prefix grant: listings inside the prefix, HEAD
            // and GET of the bucket settings clients read (`SETTINGS_UNDER_A_PREFIX`);
            // nothing that changes the bucket.
            None if !grant.prefixes.is_empty() => {
                let listing = matches!(s3.op, Operation::ListObjectsV1 | Operation::ListObjectsV2 | Operation::ListMultipartUploads)
                    || s3.query.iter().any(|(k, _)| k == "versions");
                let setting = s3.method == "GET" && s3.op == Operation::BucketOther && s3.query.iter().all(|(k, _)| SETTINGS_UNDER_A_PREFIX.contains(&k.as_str()));
                if listing {
                    let prefix = s3.query_value("prefix").unwrap_or("");
                    if !grant.allows_listing(prefix) {
                        return Err(denied(format!("{bucket}/{prefix}")));
                    }
                } else if !(s3.op == Operation::DeleteObjects || s3.method == "HEAD" || setting) {
                    return Err(denied(bucket.clone()));
                }
            }
            None => {}
        }
    }
    if let Some(src) = &s3.copy_source {
        let grant = client.grant(&src.bucket).ok_or_else(|| denied(src.bucket.clone()))?;
        if !grant.allows_key(&src.key) {
            return Err(denied(format!("{}/{}", src.bucket, src.key)));
        }
    }
    Ok(())
}
