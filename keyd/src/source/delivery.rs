//! The default source: administrators deliver keys with `memkey-admin key send` over the
//! authenticated, forward-secret protocol of `docs/key-protocol.md` (see [`crate::service`]).
//!
//! It needs nothing at start-up, so it has no [`super::KeySource`] implementation: with
//! `key_source.kind: delivery` the runner does nothing and the server waits for a delivery.
//! Deliveries are also accepted when another source is configured (the two fill one vault;
//! a key id already loaded with different material is refused either way).

/// The line logged at start-up when no other source is configured.
pub const WAITING: &str = "no key loaded; waiting for `memkey-admin key send`";
