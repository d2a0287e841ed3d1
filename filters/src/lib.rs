//! The s3-crypt-proxy filter chain. See `docs/filters.md`.
#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod request;
pub mod sigv4;
pub mod xml;

pub use error::{s3err, S3Error, S3ErrorCode};
