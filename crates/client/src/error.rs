//! What can go wrong, and whose fault it is.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use midge_codec::{DecodeError, EncodeError, ReasonCode};

/// An error of [`crate::Client`]. `Clone`, so one connection loss can be
/// reported to every waiting caller and as an [`crate::Event`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The options are wrong (ours): a bad URL.
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    /// TLS settings could not be loaded (ours): a missing or unreadable
    /// certificate or key file.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The broker could not be reached, or the connection broke (the
    /// network's, or the broker went away).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake: {0}")]
    WebSocket(String),
    /// No answer in time (the broker's, or the network's).
    #[error("timed out after {0:?} {1}")]
    Timeout(Duration, &'static str),
    /// The broker refused the connection with this CONNACK reason code.
    #[error("connection refused by the broker: {}{}", reason_text(*.0), .1.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Refused(ReasonCode, Option<String>),
    /// The broker sent bytes that are not MQTT (the broker's fault).
    #[error("the broker sent a malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// A packet we were asked to send cannot be encoded (the caller's: a
    /// topic longer than 65535 bytes, say).
    #[error("cannot encode the packet: {0}")]
    Encode(#[from] EncodeError),
    /// The broker broke the protocol (sent a packet it must not send).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// The broker sent DISCONNECT (v5) with this reason.
    #[error("disconnected by the broker: {}{}", reason_text(*.0), .1.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Disconnected(ReasonCode, Option<String>),
    /// No PINGRESP within the keep-alive interval.
    #[error("the broker did not answer PINGREQ within the keep-alive interval")]
    KeepAliveTimeout,
    /// The broker refused a publish (v5 PUBACK/PUBREC reason code).
    #[error("publish refused by the broker: {}", reason_text(*.0))]
    PublishRefused(ReasonCode),
    /// Too many messages wait while offline (the caller's, or a long outage).
    #[error("the offline buffer is full")]
    OfflineBufferFull,
    /// The client was disconnected or dropped; the request was not carried out.
    #[error("the client is shut down")]
    Shutdown,
}

impl ClientError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> ClientError {
        ClientError::Io { context: context.into(), source: Arc::new(source) }
    }

    /// Whether the broker refused our credentials or authorization
    /// (CONNACK 0x86/0x87, 3.x return codes 4/5).
    pub fn is_not_authorized(&self) -> bool {
        matches!(self, ClientError::Refused(ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword, _))
    }
}

/// A reason code in words, with its number.
pub fn reason_text(code: ReasonCode) -> String {
    let words = match code {
        ReasonCode::Success => "success",
        ReasonCode::UnsupportedProtocolVersion => "unsupported protocol version",
        ReasonCode::ClientIdentifierNotValid => "client identifier not valid",
        ReasonCode::BadUserNameOrPassword => "bad user name or password",
        ReasonCode::NotAuthorized => "not authorized",
        ReasonCode::ServerUnavailable => "server unavailable",
        ReasonCode::ServerBusy => "server busy",
        ReasonCode::Banned => "banned",
        ReasonCode::ServerShuttingDown => "server shutting down",
        ReasonCode::BadAuthenticationMethod => "bad authentication method",
        ReasonCode::KeepAliveTimeout => "keep alive timeout",
        ReasonCode::SessionTakenOver => "session taken over",
        ReasonCode::TopicFilterInvalid => "topic filter invalid",
        ReasonCode::TopicNameInvalid => "topic name invalid",
        ReasonCode::PacketTooLarge => "packet too large",
        ReasonCode::QuotaExceeded => "quota exceeded",
        ReasonCode::PayloadFormatInvalid => "payload format invalid",
        ReasonCode::RetainNotSupported => "retain not supported",
        ReasonCode::QoSNotSupported => "QoS not supported",
        ReasonCode::NoMatchingSubscribers => "no matching subscribers",
        ReasonCode::ImplementationSpecificError => "implementation specific error",
        ReasonCode::ProtocolError => "protocol error",
        ReasonCode::MalformedPacket => "malformed packet",
        ReasonCode::UnspecifiedError => "unspecified error",
        ReasonCode::UseAnotherServer => "use another server",
        ReasonCode::ServerMoved => "server moved",
        ReasonCode::ConnectionRateExceeded => "connection rate exceeded",
        ReasonCode::AdministrativeAction => "administrative action",
        _ => return format!("reason code 0x{:02X}", code.as_u8()),
    };
    format!("{words} (0x{:02X})", code.as_u8())
}
