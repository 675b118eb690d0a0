//! Authentication and authorization: the hooks every client passes
//! through, and the built-in policies behind them.
//!
//! A CONNECT without an Authentication Method is checked once by
//! [`Authenticator::authenticate`] (user name, password, client id, peer).
//! An MQTT 5 client that names a method starts an exchange instead
//! (section 4.12): [`Authenticator::start_exchange`] returns the state of
//! one conversation, fed the client's Authentication Data step by step
//! until it succeeds or fails. The same happens when a client
//! re-authenticates on a live connection (AUTH 0x19).
//!
//! Built in: [`AllowAll`] (the default, anonymous clients welcome) and
//! [`PasswordFile`], Mosquitto's password file format, which also offers
//! `SCRAM-SHA-256` to users whose entry holds SCRAM credentials.
//!
//! Once connected, every PUBLISH, SUBSCRIBE and delivered message passes the
//! [`Authorizer`] (Mosca's `authorizePublish` / `authorizeSubscribe` /
//! `authorizeForward`); [`AclFile`] is Mosquitto's ACL file.
//!
//! With the `webhook` feature, `Webhook` asks an HTTP(S) service both
//! questions (who may connect, what they may do).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use midge_codec::{ProtocolVersion, ReasonCode};

mod acl;
mod password_file;
pub mod scram;
#[cfg(feature = "webhook")]
mod webhook;

pub use acl::{AclFile, AclFileError};
pub use password_file::{HashKind, PasswordFile, PasswordFileError, hash_password, is_hash};
#[cfg(feature = "webhook")]
pub use webhook::{Webhook, WebhookChecks, WebhookConfig, WebhookError};

/// A boxed future, so the hooks can be `dyn` and still `async`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the broker knows about a client asking to connect.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client identifier (an assigned one if the client sent none).
    pub client_id: String,
    /// The User Name from CONNECT, if any.
    pub username: Option<String>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The protocol the client speaks.
    pub protocol_version: ProtocolVersion,
}

/// The answer to a plain CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the client in.
    Allow,
    /// Refuse it with this reason code (for 3.x clients mapped to the
    /// nearest CONNACK return code: 0x86 → 4, 0x87 → 5).
    Deny(ReasonCode),
}

/// One step of an enhanced authentication exchange, as the server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this Authentication Data in AUTH 0x18 and wait for the client's
    /// next AUTH [MQTT-4.12.0-2].
    Continue(Bytes),
    /// Authenticated. `data` goes to the client in CONNACK (or AUTH 0x00 when
    /// re-authenticating); `username` is the identity the method proved.
    Success {
        /// Final Authentication Data for the client, if the method has any.
        data: Option<Bytes>,
        /// Who the client turned out to be.
        username: Option<String>,
    },
    /// Refused with this reason code [MQTT-4.12.0-4].
    Failure(ReasonCode),
}

/// The state of one enhanced authentication conversation.
pub trait AuthExchange: Send {
    /// Takes the client's next Authentication Data (from CONNECT, then from
    /// each AUTH 0x18) and says what to answer.
    fn step(&mut self, data: Option<Bytes>) -> BoxFuture<'_, AuthStep>;
}

/// Decides who may connect. Implement it to plug in your own policy when
/// embedding the broker; see [`crate::Hooks`].
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a CONNECT that names no Authentication Method.
    fn authenticate<'a>(&'a self, client: &'a ClientInfo, password: Option<&'a [u8]>) -> BoxFuture<'a, Verdict>;

    /// Begins an exchange for an MQTT 5 Authentication Method, at CONNECT or
    /// when re-authenticating. `None` means the method is not supported: the
    /// client gets CONNACK 0x8C [MQTT-4.12.0-1].
    fn start_exchange(&self, method: &str, client: &ClientInfo) -> Option<Box<dyn AuthExchange>> {
        let _ = (method, client);
        None
    }
}

/// An authorization answer: at once, or after asking something slower
/// (an HTTP service, a database). Ready answers cost no allocation.
pub enum Check<'a> {
    /// Decided: `true` allows.
    Ready(bool),
    /// To be awaited. The broker may drop it unpolled and ask the same
    /// question again where it can wait for the answer, so creating one
    /// should not start the work (an `async` block does not).
    Pending(BoxFuture<'a, bool>),
}

impl Check<'_> {
    /// The answer, awaiting it if needed.
    pub async fn allowed(self) -> bool {
        match self {
            Check::Ready(allowed) => allowed,
            Check::Pending(future) => future.await,
        }
    }
}

/// Decides what a connected client may do. Implement it to plug in your own
/// policy when embedding the broker; see [`crate::Hooks`].
pub trait Authorizer: Send + Sync + 'static {
    /// May `client` publish to `topic`? Also asked for its will at CONNECT.
    /// A denied PUBLISH is dropped (MQTT 5 clients get PUBACK/PUBREC 0x87).
    fn authorize_publish<'a>(&'a self, client: &'a ClientInfo, topic: &'a str) -> Check<'a>;

    /// May `client` subscribe to `filter` (as sent, `$share/…` included)?
    /// Denied: SUBACK 0x80 (3.1.1) or 0x87 (MQTT 5).
    fn authorize_subscribe<'a>(&'a self, client: &'a ClientInfo, filter: &'a str) -> Check<'a>;

    /// May `client` receive a message on `topic`? Asked for every message
    /// delivered, retained ones included, so it must be quick and cannot wait.
    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool;
}

/// Lets every client in, offers no enhanced authentication method and
/// allows every topic: the default, for a broker that listens on loopback only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, _: &'a ClientInfo, _: Option<&'a [u8]>) -> BoxFuture<'a, Verdict> {
        Box::pin(async { Verdict::Allow })
    }
}

impl Authorizer for AllowAll {
    fn authorize_publish<'a>(&'a self, _: &'a ClientInfo, _: &'a str) -> Check<'a> {
        Check::Ready(true)
    }

    fn authorize_subscribe<'a>(&'a self, _: &'a ClientInfo, _: &'a str) -> Check<'a> {
        Check::Ready(true)
    }

    fn authorize_read(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }
}
