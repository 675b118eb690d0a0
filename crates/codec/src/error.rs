//! Decode and encode errors. Small, `Copy`, and each names the spec rule.
//!
//! Rule ids in brackets are those of MQTT 3.1.1 (`[MQTT-x.y.z-n]`); where
//! MQTT 5.0 numbers the same rule differently both are given.

use crate::ReasonCode;

/// Why bytes from a peer are not a valid packet. Every variant is the
/// peer's fault: the connection is to be closed, and for v5 a server first
/// sends DISCONNECT with [`DecodeError::reason_code`] (or, during CONNECT,
/// a CONNACK with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The whole packet (fixed header included) is larger than the maximum
    /// packet size we accept; detected from the fixed header alone, before
    /// the body is buffered (v5 [MQTT-3.1.2-24] / [MQTT-3.2.2-15]).
    #[error("packet of {size} bytes exceeds the maximum packet size {max} [MQTT-3.2.2-15]")]
    PacketTooLarge {
        /// Declared size of the whole packet.
        size: u32,
        /// The limit it exceeds.
        max: u32,
    },
    /// The remaining length (or another Variable Byte Integer) continues
    /// past its fourth byte (3.1.1 section 2.2.3, v5 section 1.5.5).
    #[error("variable byte integer longer than four bytes (MQTT 3.1.1 section 2.2.3)")]
    MalformedRemainingLength,
    /// An MQTT 5 Variable Byte Integer in more bytes than its value needs
    /// (a last byte of 0 after a continuation) [MQTT-1.5.5-1]. 3.1.1 states
    /// no such rule, and such lengths are accepted there.
    #[error("variable byte integer not in its shortest form [MQTT-1.5.5-1]")]
    NonMinimalVarint,
    /// The packet type nibble is reserved: 0, or 15 in 3.x (which is
    /// reported as [`DecodeError::AuthOnV3`]).
    #[error("reserved control packet type {0} (MQTT 3.1.1 section 2.2.1)")]
    InvalidPacketType(u8),
    /// The four fixed-header flag bits differ from the value the spec fixes
    /// for the packet type [MQTT-2.2.2-1], [MQTT-2.2.2-2].
    #[error("invalid fixed header flags for packet type {packet_type} [MQTT-2.2.2-2]")]
    InvalidFixedHeaderFlags {
        /// The packet type nibble.
        packet_type: u8,
    },
    /// PUBLISH with both QoS bits set [MQTT-3.3.1-4].
    #[error("PUBLISH with QoS 3 [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// PUBLISH with QoS 0 and the DUP flag set [MQTT-3.3.1-2].
    #[error("PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]")]
    DupWithQoS0,
    /// CONNECT whose protocol name is neither `MQTT` nor `MQIsdp`; the
    /// server closes the connection without CONNACK [MQTT-3.1.2-1].
    #[error("CONNECT with an unknown protocol name [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    /// CONNECT with a known protocol name but a level we do not speak; the
    /// server answers CONNACK 0x01 (3.x) / 0x84 (v5) and closes [MQTT-3.1.2-2].
    #[error("CONNECT with unsupported protocol level {level} [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion {
        /// The protocol level byte.
        level: u8,
    },
    /// CONNECT with the reserved connect flag set [MQTT-3.1.2-3].
    #[error("CONNECT with the reserved flag set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// CONNECT with will QoS or will retain set but no will flag
    /// [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    #[error("CONNECT with will QoS or will retain but no will flag [MQTT-3.1.2-11] [MQTT-3.1.2-13]")]
    WillFlagsWithoutWill,
    /// CONNECT with will QoS 3 [MQTT-3.1.2-14].
    #[error("CONNECT with will QoS 3 [MQTT-3.1.2-14]")]
    InvalidWillQoS,
    /// 3.x CONNECT with the password flag but not the user name flag
    /// [MQTT-3.1.2-22]; v5 allows a password alone.
    #[error("CONNECT with a password but no user name [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// CONNACK acknowledge flags with a reserved bit set [MQTT-3.2.2-1].
    #[error("CONNACK with reserved acknowledge flags set (MQTT 3.1.1 section 3.2.2.1)")]
    ConnAckReservedFlags,
    /// A UTF-8 encoded string is not well-formed UTF-8 [MQTT-1.5.3-1].
    #[error("ill-formed UTF-8 string [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// A UTF-8 encoded string contains U+0000 [MQTT-1.5.3-2].
    #[error("string contains U+0000 [MQTT-1.5.3-2]")]
    NullCharacter,
    /// A topic name (PUBLISH, will topic) contains `+` or `#` [MQTT-3.3.2-2].
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// A topic name is empty: always in 3.x and for a will topic
    /// [MQTT-4.7.3-1], and in v5 PUBLISH without a topic alias.
    #[error("empty topic name [MQTT-4.7.3-1]")]
    EmptyTopicName,
    /// A packet identifier of 0 [MQTT-2.3.1-1].
    #[error("packet identifier 0 [MQTT-2.3.1-1]")]
    ZeroPacketId,
    /// SUBSCRIBE [MQTT-3.8.3-3] or UNSUBSCRIBE [MQTT-3.10.3-2] without any
    /// topic filter.
    #[error("{packet} without topic filters [MQTT-3.8.3-3] [MQTT-3.10.3-2]")]
    MissingTopicFilters {
        /// `"SUBSCRIBE"` or `"UNSUBSCRIBE"`.
        packet: &'static str,
    },
    /// Reserved bits of the SUBSCRIBE options byte are set: bits 7-2 in 3.x
    /// [MQTT-3.8.3-4], bits 7-6 in v5 [MQTT-3.8.3-5].
    #[error("reserved subscription option bits set [MQTT-3.8.3-4] [MQTT-3.8.3-5]")]
    SubscriptionOptionsReservedBits,
    /// A SUBSCRIBE maximum QoS of 3 [MQTT-3.8.3-4].
    #[error("SUBSCRIBE with QoS 3 [MQTT-3.8.3-4]")]
    InvalidSubscriptionQoS,
    /// A v5 retain handling option of 3 (v5 section 3.8.3.1).
    #[error("SUBSCRIBE with retain handling 3 (MQTT 5.0 section 3.8.3.1)")]
    InvalidRetainHandling,
    /// A length declared inside the packet runs past its remaining length.
    #[error("declared length runs past the end of the packet")]
    UnexpectedEof,
    /// Bytes left over after the last field of a packet whose length is
    /// fully determined by its fields.
    #[error("unexpected bytes after the end of the packet")]
    TrailingBytes,
    /// A v5 property identifier the spec does not define (v5 section 2.2.2.2).
    #[error("unknown property identifier {0:#04x} (MQTT 5.0 section 2.2.2.2)")]
    UnknownProperty(u8),
    /// A v5 property other than user property (or subscription identifier
    /// in PUBLISH) appears twice (v5 section 2.2.2.2).
    #[error("property {0:#04x} included more than once (MQTT 5.0 section 2.2.2.2)")]
    DuplicateProperty(u8),
    /// A v5 property that does not belong to this packet (v5 section 2.2.2.2).
    #[error("property {property:#04x} is not allowed in {packet} (MQTT 5.0 section 2.2.2.2)")]
    PropertyNotAllowed {
        /// The property identifier.
        property: u8,
        /// The packet's name.
        packet: &'static str,
    },
    /// A v5 property value outside its range: receive maximum, maximum
    /// packet size or topic alias 0, payload format indicator, request
    /// flags, maximum QoS or availability flags above 1, subscription
    /// identifier 0, a response topic that is not a topic name.
    #[error("invalid value for property {0:#04x} (MQTT 5.0 section 3)")]
    InvalidPropertyValue(u8),
    /// v5 authentication data without an authentication method
    /// (v5 section 3.1.2.11.10).
    #[error("authentication data without authentication method (MQTT 5.0 section 3.1.2.11.10)")]
    AuthenticationDataWithoutMethod,
    /// A reason code (or 3.x return code) not defined for this packet
    /// (v5 section 2.4).
    #[error("reason code {0:#04x} is not valid for this packet (MQTT 5.0 section 2.4)")]
    InvalidReasonCode(u8),
    /// Packet type 15 on a 3.x connection: AUTH exists only in v5, and 15
    /// is reserved in 3.x (3.1.1 section 2.2.1).
    #[error("AUTH on an MQTT 3.x connection (packet type 15 is reserved)")]
    AuthOnV3,
}

impl DecodeError {
    /// The v5 reason code a server sends in DISCONNECT (or CONNACK) for
    /// this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName | UnsupportedProtocolVersion { .. } => ReasonCode::UnsupportedProtocolVersion,
            WildcardInTopicName | EmptyTopicName => ReasonCode::TopicNameInvalid,
            MissingTopicFilters { .. }
            | InvalidRetainHandling
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthenticationDataWithoutMethod => ReasonCode::ProtocolError,
            MalformedRemainingLength
            | NonMinimalVarint
            | InvalidPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | InvalidQoS
            | DupWithQoS0
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | InvalidWillQoS
            | PasswordWithoutUsername
            | ConnAckReservedFlags
            | InvalidUtf8
            | NullCharacter
            | ZeroPacketId
            | SubscriptionOptionsReservedBits
            | InvalidSubscriptionQoS
            | UnexpectedEof
            | TrailingBytes
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode(_)
            | AuthOnV3 => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded. Every variant is our own caller's
/// fault: the packet value cannot be represented on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes (the largest
    /// four-byte Variable Byte Integer).
    #[error("remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    /// A string or binary field is longer than 65,535 bytes.
    #[error("string or binary field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    /// A Variable Byte Integer value (e.g. a subscription identifier) above
    /// 268,435,455.
    #[error("variable byte integer {0} exceeds 268435455")]
    VariableByteIntegerTooLarge(u32),
    /// PUBLISH with QoS 1 or 2 but no packet identifier [MQTT-2.3.1-5].
    #[error("PUBLISH with QoS > 0 needs a packet identifier [MQTT-2.3.1-5]")]
    MissingPacketId,
    /// A 3.x CONNECT with a password but no user name [MQTT-3.1.2-22].
    #[error("3.x CONNECT with a password but no user name [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// The packet does not exist in the target version (AUTH in 3.x).
    #[error("{packet} does not exist in MQTT 3.x")]
    NotInVersion {
        /// The packet's name.
        packet: &'static str,
    },
}
