//! midge-broker: an embeddable MQTT broker.
//!
//! The path of a message:
//!
//! ```text
//!  bytes ─▶ midge_codec::decode ─▶ Packet ─▶ connection (one task per client)
//!        ─▶ Shared::publish: retain store + topic index (router)
//!        ─▶ Session::enqueue for each matching session (payload shared, not copied)
//!        ─▶ that session's connection wakes, drains its queue through the
//!           in-flight window ─▶ midge_codec::encode ─▶ one write per turn ─▶ bytes
//! ```
//!
//! Sessions live apart from connections (a session outlives its socket for
//! persistent clients); connections are generic over any
//! `AsyncRead + AsyncWrite` stream, so TCP, TLS and WebSocket differ only in
//! how the stream was accepted.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use midge_broker::{Broker, BrokerConfig};
//! let broker = Broker::new(BrokerConfig::default());
//! broker.start_sys();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:1883").await?;
//! broker.serve_tcp(listener).await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
// Hostile input must never panic (issue 21): no unwrap, expect or unchecked
// indexing outside tests (clippy.toml lets tests use them); each exception
// carries an allow saying why it cannot fire.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
// Slicing a `str` panics off a char boundary, which indexing_slicing does not
// cover; this lint has no in-tests setting, hence the cfg.
#![cfg_attr(not(test), deny(clippy::string_slice))]

pub mod auth;
mod broker;
mod config;
mod connection;
mod metrics;
mod outbox;
mod persist;
mod retained;
pub mod router;
mod session;
mod shared;
pub mod store;
mod sys;
#[cfg(test)]
mod testing;
mod throttle;

pub use broker::{AcceptFailures, Broker, Hooks, ListenerPolicy, Origin, Recovery};
pub use config::BrokerConfig;
pub use metrics::Metrics;
pub use shared::SharedStrategy;
pub use sys::VERSION;
pub use throttle::LoginLimits;

/// Unpredictable enough for assigned client ids and share-group picks:
/// std's randomly keyed hasher, mixed with the clock, without a `rand`
/// dependency.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}
