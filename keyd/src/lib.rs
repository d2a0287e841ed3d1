//! memkey-server ("keyd"): keeps s3-crypt-proxy master keys in locked memory, accepts them
//! from administrators over an authenticated, forward-secret delivery protocol
//! (`docs/key-protocol.md`) and hands them to the local proxy over a Unix socket.
//!
//! * [`client`]: what the proxy calls (`fetch_keyring`, `fetch_status`).
//! * [`server`]: run the server in-process (`Server::start`).
//! * [`audit`]: the JSON-lines audit log of key events.
//! * [`protocol`]: message formats and cryptography shared with `memkey-admin`.
//! * [`source`]: key sources besides delivery (PKCS#11 HSM, AWS KMS) and sealed key files.

pub mod audit;
pub mod client;
pub mod config;
pub mod harden;
pub mod protocol;
pub mod server;
pub mod service;
pub mod shamir;
pub mod share_quorum;
pub mod source;
pub mod util;
pub mod vault;

pub use config::Config;
pub use server::{Server, ServerHandle, StartError};
