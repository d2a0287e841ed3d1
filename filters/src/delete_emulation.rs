//! DeleteObjects for backends that lack it (`backend.delete_objects: emulate`; the `gcs`
//! profile: Google Cloud Storage's XML API has no multi-object delete). The proxy reads the
//! checked `<Delete>` body, deletes each object with its own DELETE (a few at a time, on
//! pooled connections) and answers the `DeleteResult` S3 would have sent, so that PBS's
//! garbage collection and the SDKs need no per-provider switch.
//!
//! As in S3, an object that did not exist counts as deleted; a DELETE the backend refuses is
//! an `<Error>` entry with the backend's code; `Quiet` leaves out the successes.

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::{S3Error, S3ErrorCode};
use crate::filter::Reply;
use crate::xml::escape;
use crate::xml_body::{check, Rule, DELETE};

/// How DeleteObjects reaches the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteObjectsMode {
    Native,
    Emulate,
}

impl std::str::FromStr for DeleteObjectsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Self::Native),
            "emulate" => Ok(Self::Emulate),
            other => Err(format!("backend.delete_objects must be native or emulate, not {other:?}")),
        }
    }
}

/// DELETEs in flight at once for one DeleteObjects.
const CONCURRENCY: usize = 8;

/// One `<Object>` of the request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub version_id: Option<String>,
}

/// The objects a checked `<Delete>` body names, and its `Quiet` flag.
pub fn parse(xml: &[u8]) -> Result<(Vec<Target>, bool), S3Error> {
    let mut targets: Vec<Target> = Vec::new();
    let mut current = Target::default();
    let mut quiet = false;
    check(Rule::Schema(&DELETE), xml, |path, text| {
        match path {
            [.., "Object", "Key"] => current.key = text.to_string(),
            [.., "Object", "VersionId"] => current.version_id = Some(text.to_string()),
            [.., "Object"] => targets.push(std::mem::take(&mut current)),
            [.., "Quiet"] => quiet = text.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
        Ok(())
    })?;
    Ok((targets, quiet))
}

enum Outcome {
    Deleted { version_id: Option<String>, marker_version: Option<String> },
    Failed { code: String, message: String },
}

async fn delete_one(backend: &Backend, bucket: &str, t: &Target) -> Outcome {
    let query: Vec<(String, String)> = t.version_id.iter().map(|v| ("versionId".to_string(), v.clone())).collect();
    let answer = match backend.request("DELETE", Some(bucket), Some(&t.key), &query, &[], None) {
        Ok(req) => backend.send(Some(bucket), req, None, 64 << 10).await,
        Err(e) => Err(e),
    };
    match answer {
        // 404: S3 reports a key that was not there as deleted.
        Ok((resp, _)) if resp.status.is_success() || resp.status.as_u16() == 404 => {
            let header = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            let marker = (header("x-amz-delete-marker").as_deref() == Some("true")).then(|| header("x-amz-version-id")).flatten();
            Outcome::Deleted { version_id: t.version_id.clone(), marker_version: marker }
        }
        Ok((resp, body)) => {
            let text = String::from_utf8_lossy(&body);
            let between = |tag: &str| {
                let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
                let start = text.find(&open)? + open.len();
                Some(text[start..].split(&close).next()?.to_string())
            };
            Outcome::Failed {
                code: between("Code").unwrap_or_else(|| format!("HTTP{}", resp.status.as_u16())),
                message: between("Message").unwrap_or_else(|| "the backend refused the delete".into()),
            }
        }
        Err(e) => Outcome::Failed { code: S3ErrorCode::InternalError.as_str().into(), message: e.message },
    }
}

/// Deletes every object the body names and builds the `DeleteResult`.
pub async fn run(backend: &Backend, bucket: &str, xml: &[u8]) -> Result<Reply, S3Error> {
    let (targets, quiet) = parse(xml)?;
    // A few at a time, in order (a stream combinator over borrowed closures trips up the
    // Send bound of the proxy's request future).
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(targets.len());
    for group in targets.chunks(CONCURRENCY) {
        let deletes: Vec<_> = group.iter().map(|t| delete_one(backend, bucket, t)).collect();
        outcomes.extend(futures::future::join_all(deletes).await);
    }
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (t, o) in targets.iter().zip(outcomes) {
        match o {
            Outcome::Deleted { .. } if quiet => {}
            Outcome::Deleted { version_id, marker_version } => {
                x.push_str(&format!("<Deleted><Key>{}</Key>", escape(&t.key)));
                if let Some(v) = version_id {
                    x.push_str(&format!("<VersionId>{}</VersionId>", escape(&v)));
                }
                if let Some(m) = marker_version {
                    x.push_str(&format!("<DeleteMarker>true</DeleteMarker><DeleteMarkerVersionId>{}</DeleteMarkerVersionId>", escape(&m)));
                }
                x.push_str("</Deleted>");
            }
            Outcome::Failed { code, message } => {
                x.push_str(&format!("<Error><Key>{}</Key>", escape(&t.key)));
                if let Some(v) = &t.version_id {
                    x.push_str(&format!("<VersionId>{}</VersionId>", escape(v)));
                }
                x.push_str(&format!("<Code>{}</Code><Message>{}</Message></Error>", escape(&code), escape(&message)));
            }
        }
    }
    x.push_str("</DeleteResult>");
    Ok(Reply::xml(200, x))
}

/// The body as the client sent it, collected whole (bounded by the caller).
pub fn collected(pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        1 => pieces.into_iter().next().expect("one piece"),
        _ => Bytes::from(pieces.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_versions_and_quiet() {
        let xml = b"<Delete><Quiet>true</Quiet><Object><Key>a&amp;b</Key></Object><Object><Key>c</Key><VersionId>v1</VersionId></Object></Delete>";
        let (t, quiet) = parse(xml).unwrap();
        assert!(quiet);
        assert_eq!(t, vec![Target { key: "a&b".into(), version_id: None }, Target { key: "c".into(), version_id: Some("v1".into()) }]);
        assert_eq!(parse(b"<Delete></Delete>").unwrap_err().code, S3ErrorCode::MalformedXML);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("emulate".parse::<DeleteObjectsMode>().unwrap(), DeleteObjectsMode::Emulate);
        assert!("auto".parse::<DeleteObjectsMode>().is_err());
    }
}
