//! midge-codec: a sans-IO codec for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Bytes in, packets out, and back; no sockets, no async, no `unsafe`.
//!
//! ```text
//!   &mut BytesMut ──decode()──▶ Ok(Some(Packet)) | Ok(None) "need more" | Err(DecodeError)
//!   &Packet ──encode()──▶ appended to &mut BytesMut
//! ```
//!
//! Every version decodes into one packet model ([`Packet`]), so the broker
//! handles each packet once. Decoding checks the declared remaining length
//! against the caller's maximum packet size *before* buffering the body, so
//! a peer cannot make us allocate more than that bound. Every malformed input
//! is a [`DecodeError`] naming the rule it breaks and mapping to a v5
//! [`ReasonCode`].

#![warn(missing_docs)]
// Hostile input must never panic (issue 21): no unwrap, expect or unchecked
// indexing outside tests (clippy.toml lets tests use them); each exception
// carries an allow saying why it cannot fire.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
// Slicing a `str` panics off a char boundary, which indexing_slicing does not
// cover; this lint has no in-tests setting, hence the cfg.
#![cfg_attr(not(test), deny(clippy::string_slice))]

mod decode;
mod encode;
mod error;
pub mod packet;
pub mod reason;
pub mod string;
pub mod topic;

pub use decode::{decode, fixed_header};
pub use encode::{
    PublishView, encode, encode_publish, encode_publish_view, encoded_len, publish_encoded_len,
    publish_view_encoded_len,
};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use reason::ReasonCode;
pub use string::MqttStr;
