//! The s3-crypt-proxy filter chain. See `docs/filters.md`.
//!
//! Each filter is one module with the phases it needs ([`filter::Filter`]); the chain
//! ([`chain::Chain`]) runs them in the configured order, checked by
//! [`chain::validate_order`] at start-up.
#![deny(unsafe_code)] // audited exceptions: backend::ack_promptly (a setsockopt on a raw fd), md5_sha256 (the stitched hash kernel)

pub mod allowlist;
pub mod auth;
pub mod backend;
pub mod backend_stats;
pub mod chain;
pub mod clients;
pub mod checksum;
pub mod conditional;
pub mod crypto;
pub mod delete_emulation;
pub mod ctx;
pub mod error;
pub mod etag;
pub mod filter;
pub mod keylock;
pub mod keys;
pub mod listing;
pub mod md5_lanes;
pub mod md5_sha256;
pub mod offload;
pub mod passthrough;
pub mod profile;
pub mod request;
pub mod resign;
pub mod rotation;
pub mod sigv4;
pub mod verified_write;
pub mod xml;
pub mod xml_body;

pub use chain::{validate_order, Chain, FilterKind};
pub use ctx::RequestCtx;
pub use error::{s3err, S3Error, S3ErrorCode};
pub use filter::{Filter, Flow, Reply};
