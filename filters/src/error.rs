//! One S3 error type that keeps its code from the filter that raised it to the XML body the
//! client reads. Filters return `S3Error`; the proxy turns it into a pingora error (as its
//! cause) and `fail_to_proxy` downcasts it back, so no code is lost on the way.

use std::fmt;

use bytes::Bytes;

/// The S3 error codes this proxy answers with, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum S3ErrorCode {
    AccessDenied,
    AuthorizationQueryParametersError,
    BadDigest,
    EntityTooLarge,
    EntityTooSmall,
    IncompleteBody,
    InternalError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidBucketName,
    InvalidDigest,
    InvalidObjectState,
    InvalidPart,
    InvalidPartOrder,
    InvalidPartNumber,
    InvalidRange,
    InvalidRequest,
    KeyTooLongError,
    MalformedXML,
    MetadataTooLarge,
    MethodNotAllowed,
    MissingContentLength,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NoSuchVersion,
    NotImplemented,
    PreconditionFailed,
    NotModified,
    RequestTimeTooSkewed,
    ServiceUnavailable,
    SignatureDoesNotMatch,
    SlowDown,
    XAmzContentSHA256Mismatch,
    BadGateway,
    /// 400, but retried by the AWS SDKs (botocore's standard and legacy modes, the Go and
    /// Java SDKs): the proxy's answer when the backend refused a body damaged in transit
    /// after the answer's status could no longer change (verified_write.rs).
    RequestTimeout,
}

impl S3ErrorCode {
    pub fn status(self) -> u16 {
        use S3ErrorCode::*;
        match self {
            AccessDenied | InvalidAccessKeyId | SignatureDoesNotMatch | RequestTimeTooSkewed
            | InvalidObjectState => 403,
            AuthorizationQueryParametersError | BadDigest | IncompleteBody | InvalidArgument | InvalidBucketName | InvalidDigest
            | InvalidPart | InvalidPartOrder | InvalidRequest | KeyTooLongError | MalformedXML | MetadataTooLarge
            | XAmzContentSHA256Mismatch | EntityTooLarge | EntityTooSmall | RequestTimeout => 400,
            NoSuchBucket | NoSuchKey | NoSuchUpload | NoSuchVersion => 404,
            MethodNotAllowed => 405,
            MissingContentLength => 411,
            PreconditionFailed => 412,
            InvalidRange | InvalidPartNumber => 416,
            NotModified => 304,
            InternalError => 500,
            NotImplemented => 501,
            BadGateway => 502,
            ServiceUnavailable | SlowDown => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        use S3ErrorCode::*;
        match self {
            AccessDenied => "AccessDenied",
            AuthorizationQueryParametersError => "AuthorizationQueryParametersError",
            BadDigest => "BadDigest",
            EntityTooLarge => "EntityTooLarge",
            EntityTooSmall => "EntityTooSmall",
            IncompleteBody => "IncompleteBody",
            InternalError => "InternalError",
            InvalidAccessKeyId => "InvalidAccessKeyId",
            InvalidArgument => "InvalidArgument",
            InvalidBucketName => "InvalidBucketName",
            InvalidDigest => "InvalidDigest",
            InvalidObjectState => "InvalidObjectState",
            InvalidPart => "InvalidPart",
            InvalidPartOrder => "InvalidPartOrder",
            InvalidPartNumber => "InvalidPartNumber",
            InvalidRange => "InvalidRange",
            InvalidRequest => "InvalidRequest",
            KeyTooLongError => "KeyTooLongError",
            MalformedXML => "MalformedXML",
            MetadataTooLarge => "MetadataTooLarge",
            MethodNotAllowed => "MethodNotAllowed",
            MissingContentLength => "MissingContentLength",
            NoSuchBucket => "NoSuchBucket",
            NoSuchKey => "NoSuchKey",
            NoSuchUpload => "NoSuchUpload",
            NoSuchVersion => "NoSuchVersion",
            NotImplemented => "NotImplemented",
            PreconditionFailed => "PreconditionFailed",
            NotModified => "NotModified",
            RequestTimeTooSkewed => "RequestTimeTooSkewed",
            ServiceUnavailable => "ServiceUnavailable",
            SignatureDoesNotMatch => "SignatureDoesNotMatch",
            SlowDown => "SlowDown",
            XAmzContentSHA256Mismatch => "XAmzContentSHA256Mismatch",
            RequestTimeout => "RequestTimeout",
            BadGateway => "BadGateway",
        }
    }
}

impl S3ErrorCode {
    /// Every code, for [`S3ErrorCode::from_code`].
    const ALL: &'static [S3ErrorCode] = {
        use S3ErrorCode::*;
        &[
            AccessDenied, AuthorizationQueryParametersError, BadDigest, EntityTooLarge, EntityTooSmall, IncompleteBody,
            InternalError, InvalidAccessKeyId, InvalidArgument, InvalidBucketName, InvalidDigest, InvalidObjectState,
            InvalidPart, InvalidPartOrder, InvalidPartNumber, InvalidRange, InvalidRequest, KeyTooLongError, MalformedXML, MetadataTooLarge,
            MethodNotAllowed, MissingContentLength, NoSuchBucket, NoSuchKey, NoSuchUpload, NoSuchVersion, NotImplemented,
            PreconditionFailed, NotModified, RequestTimeTooSkewed, ServiceUnavailable, SignatureDoesNotMatch, SlowDown,
            XAmzContentSHA256Mismatch, BadGateway, RequestTimeout,
        ]
    };

    /// The code named `s` (as in an S3 error body), if this proxy knows it.
    pub fn from_code(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// An S3 error answer: code, human message, and the resource it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Error {
    pub code: S3ErrorCode,
    pub message: String,
    pub resource: Option<String>,
    /// Seconds for a `Retry-After` header (503 answers).
    pub retry_after: Option<u32>,
    /// Further elements of the error body, as S3 sends them (e.g. `HeadersNotSigned`).
    pub details: Vec<(&'static str, String)>,
}

impl S3Error {
    pub fn new(code: S3ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), resource: None, retry_after: None, details: Vec::new() }
    }

    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Adds `<name>value</name>` to the error body.
    pub fn with_detail(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.details.push((name, value.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// A generic internal error: details go to the log, never to the client.
    pub fn internal(context: &str, detail: impl fmt::Display) -> Self {
        log::error!("{context}: {detail}");
        Self::new(S3ErrorCode::InternalError, "We encountered an internal error. Please try again.")
    }

    /// The `<Error>` XML body S3 clients parse.
    pub fn to_xml(&self, request_id: &str) -> Bytes {
        let mut s = String::with_capacity(256);
        s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
        s.push_str(self.code.as_str());
        s.push_str("</Code><Message>");
        s.push_str(&crate::xml::escape(&self.message));
        s.push_str("</Message>");
        if let Some(r) = &self.resource {
            s.push_str("<Resource>");
            s.push_str(&crate::xml::escape(r));
            s.push_str("</Resource>");
        }
        for (name, value) in &self.details {
            s.push_str(&format!("<{name}>{}</{name}>", crate::xml::escape(value)));
        }
        s.push_str("<RequestId>");
        s.push_str(request_id);
        s.push_str("</RequestId></Error>");
        Bytes::from(s)
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for S3Error {}

/// Shorthand used across the filters.
pub fn s3err(code: S3ErrorCode, message: impl Into<String>) -> S3Error {
    S3Error::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_body_has_code_message_and_escapes() {
        let e = s3err(S3ErrorCode::NoSuchKey, "no <such> key").with_resource("/b/k&1");
        let xml = String::from_utf8(e.to_xml("req1").to_vec()).unwrap();
        assert!(xml.contains("<Code>NoSuchKey</Code>"));
        assert!(xml.contains("<Message>no &lt;such&gt; key</Message>"));
        assert!(xml.contains("<Resource>/b/k&amp;1</Resource>"));
        assert_eq!(e.status(), 404);
        let e = s3err(S3ErrorCode::AccessDenied, "unsigned").with_detail("HeadersNotSigned", "x-amz-a, x-amz-<b>");
        let xml = String::from_utf8(e.to_xml("req1").to_vec()).unwrap();
        assert!(xml.contains("<HeadersNotSigned>x-amz-a, x-amz-&lt;b&gt;</HeadersNotSigned><RequestId>"), "{xml}");
    }

    #[test]
    fn throttling_is_503_never_429() {
        assert_eq!(S3ErrorCode::SlowDown.status(), 503);
    }
}
