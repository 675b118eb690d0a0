//! Bytes to packets.
//!
//! [`decode`] first reads the fixed header (type, flags, remaining length)
//! and checks the size against the caller's limit, so a peer cannot make us
//! buffer more than that. Once the whole packet has arrived it is split off
//! the caller's buffer as one [`Bytes`], and topic names, payloads and
//! binary fields are slices of it: no copy.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::reason::ReasonCode;
use crate::string::MqttStr;

/// Largest value of a four-byte Variable Byte Integer.
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Decodes one packet from the front of `buf`.
///
/// * `Ok(None)`: more bytes are needed; nothing was consumed.
/// * `Ok(Some(packet))`: the packet's bytes were consumed from `buf`.
/// * `Err(_)`: malformed input; the caller closes the connection.
///
/// `version` is the connection's negotiated version, used for every packet
/// except CONNECT, which determines its own version from its protocol name
/// and level. `max_packet_size` bounds the whole packet (fixed header
/// included); it is checked as soon as the remaining length is known,
/// before the body has arrived.
///
/// ```
/// use bytes::BytesMut;
/// use midge_codec::{Packet, ProtocolVersion, decode, encode};
///
/// let mut buf = BytesMut::new();
/// encode(&Packet::PingReq, ProtocolVersion::V5, &mut buf)?;
/// assert_eq!(&buf[..], [0xC0, 0x00]);
/// let mut partial = buf.split_to(1);
/// assert_eq!(decode(&mut partial, ProtocolVersion::V5, 1024)?, None);
/// partial.unsplit(buf);
/// assert_eq!(decode(&mut partial, ProtocolVersion::V5, 1024)?, Some(Packet::PingReq));
/// assert!(partial.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    check_fixed_header(packet_type, flags, version)?;

    let Some((remaining, header_len)) = fixed_header(buf, version)? else {
        return Ok(None);
    };

    // header_len <= 5 and remaining <= MAX_VARINT, so this cannot overflow.
    let size = remaining + header_len as u32;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    let size = size as usize;
    if buf.len() < size {
        // Nothing is reserved for the declared body: the caller's reads grow
        // the buffer as bytes actually arrive.
        return Ok(None);
    }

    let mut packet = buf.split_to(size).freeze();
    let body = packet.split_off(header_len);
    let r = Reader { buf: body };
    decode_body(packet_type, flags, version, r).map(Some)
}

/// The remaining length a packet's fixed header declares, and the header's
/// own size (2 to 5 bytes), once the header's bytes are in `buf`: `Ok(None)`
/// before. Nothing of the body is needed, so a caller can tell how large a
/// packet will be while its bytes still arrive. The remaining length is up
/// to four bytes, 7 bits each, least significant first; MQTT 5 requires the
/// fewest bytes [MQTT-1.5.5-1].
#[inline]
pub fn fixed_header(buf: &[u8], version: ProtocolVersion) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut remaining: u32 = 0;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= u32::from(byte & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            if byte == 0 && header_len > 2 && version.is_v5() {
                return Err(DecodeError::NonMinimalVarint);
            }
            return Ok(Some((remaining, header_len)));
        }
        if header_len == 5 {
            // The fourth byte has the continuation bit: a fifth is never valid.
            return Err(DecodeError::MalformedRemainingLength);
        }
    }
}

/// Checks the packet type and the flag bits the spec fixes for it
/// [MQTT-2.2.2-1].
fn check_fixed_header(packet_type: u8, flags: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let expected = match packet_type {
        0 => return Err(DecodeError::InvalidPacketType(0)),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        15 if !version.is_v5() => return Err(DecodeError::AuthOnV3),
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1].
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    // MQTT 3.1 sent these three "at QoS 1" and set DUP on a retry.
    let flags = if version == ProtocolVersion::V3_1 && expected == 0b0010 { flags & !0b1000 } else { flags };
    if flags != expected {
        return Err(DecodeError::InvalidFixedHeaderFlags { packet_type });
    }
    Ok(())
}

fn decode_body(packet_type: u8, flags: u8, version: ProtocolVersion, mut r: Reader) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(decode_connect(&mut r)?)),
        2 => Packet::ConnAck(decode_connack(&mut r, v5)?),
        3 => Packet::Publish(decode_publish(&mut r, flags, v5)?),
        4 => Packet::PubAck(decode_puback(&mut r, v5, "PUBACK", PUBACK_CODES)?),
        5 => Packet::PubRec(decode_puback(&mut r, v5, "PUBREC", PUBACK_CODES)?),
        6 => Packet::PubRel(decode_puback(&mut r, v5, "PUBREL", PUBREL_CODES)?),
        7 => Packet::PubComp(decode_puback(&mut r, v5, "PUBCOMP", PUBREL_CODES)?),
        8 => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
        9 => Packet::SubAck(decode_suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(decode_disconnect(&mut r, v5)?),
        15 => Packet::Auth(decode_auth(&mut r)?),
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

/// A cursor over the body of one packet; every read is bounds-checked and
/// every slice shares the packet's buffer.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless everything was read.
    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEof);
        }
        Ok(self.buf.split_to(n))
    }

    /// The rest of the packet (a PUBLISH payload).
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = *self.buf.first_chunk::<N>().ok_or(DecodeError::UnexpectedEof)?;
        self.buf.advance(N);
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A Variable Byte Integer (v5 section 1.5.5), in its shortest form
    /// [MQTT-1.5.5-1]: only v5 packets carry them past the fixed header.
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::NonMinimalVarint);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }

    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// Binary Data: two-byte length, then that many bytes.
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 Encoded String [MQTT-1.5.3-1] [MQTT-1.5.3-2].
    fn mqtt_str(&mut self) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary()?;
        let s = MqttStr::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        Ok(self.mqtt_str()?.as_str().to_owned())
    }

    /// A topic name: a string without wildcards [MQTT-3.3.2-2].
    fn topic_name(&mut self) -> Result<MqttStr, DecodeError> {
        let topic = self.mqtt_str()?;
        if topic.contains(['+', '#']) {
            return Err(DecodeError::WildcardInTopicName);
        }
        Ok(topic)
    }

    /// Splits off the next `len` bytes as their own reader.
    fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader { buf: self.take(len)? })
    }
}

// ---------------------------------------------------------------------------
// Reason codes allowed per packet (v5 section 2.4 and each packet's section).

const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B,
    0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
const SUBACK_V3_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn reason_code(byte: u8, allowed: &[u8]) -> Result<ReasonCode, DecodeError> {
    if !allowed.contains(&byte) {
        return Err(DecodeError::InvalidReasonCode(byte));
    }
    ReasonCode::from_u8(byte).ok_or(DecodeError::InvalidReasonCode(byte))
}

// ---------------------------------------------------------------------------
// v5 properties (section 2.2.2).

mod prop {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}
pub(crate) use prop::*;

/// Every property identifier the spec defines, as a bit mask.
const KNOWN_PROPERTIES: u64 = bits(&[
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C, 0x1F, 0x21, 0x22,
    0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
]);

const fn bits(mut ids: &[u8]) -> u64 {
    let mut mask = 0;
    while let [id, rest @ ..] = ids {
        mask |= 1 << *id;
        ids = rest;
    }
    mask
}

/// Reads a property block: its length, then `(identifier, value)` pairs.
/// Unknown, misplaced and repeated identifiers are rejected here; `each`
/// reads the value of an identifier in `allowed`.
fn read_properties(
    r: &mut Reader,
    packet: &'static str,
    allowed: &[u8],
    mut each: impl FnMut(u8, &mut Reader) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()?;
    let mut p = r.sub(len as usize)?;
    let mut seen = 0u64;
    while !p.is_empty() {
        let id = p.varint()?;
        let Ok(id) = u8::try_from(id) else {
            return Err(DecodeError::UnknownProperty(0xFF));
        };
        if id >= 64 || KNOWN_PROPERTIES & (1 << id) == 0 {
            return Err(DecodeError::UnknownProperty(id));
        }
        if !allowed.contains(&id) {
            return Err(DecodeError::PropertyNotAllowed { property: id, packet });
        }
        let bit = 1u64 << id;
        let may_repeat = id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && packet == "PUBLISH");
        if seen & bit != 0 && !may_repeat {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= bit;
        each(id, &mut p)?;
    }
    Ok(())
}

fn user_property(r: &mut Reader) -> Result<UserProperty, DecodeError> {
    Ok((r.string()?, r.string()?))
}

/// A byte property that may only be 0 or 1.
fn flag(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        v => Ok(v),
    }
}

fn nonzero_u32(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        v => Ok(v),
    }
}

fn payload_format(r: &mut Reader) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::InvalidPropertyValue(PAYLOAD_FORMAT_INDICATOR)),
    }
}

fn subscription_identifier(r: &mut Reader) -> Result<u32, DecodeError> {
    match r.varint()? {
        0 => Err(DecodeError::InvalidPropertyValue(SUBSCRIPTION_IDENTIFIER)),
        v => Ok(v),
    }
}

/// The response topic is a topic name [MQTT-3.3.2-14].
fn response_topic(r: &mut Reader) -> Result<String, DecodeError> {
    let topic = r.string()?;
    if crate::topic::validate_topic_name(&topic).is_err() {
        return Err(DecodeError::InvalidPropertyValue(RESPONSE_TOPIC));
    }
    Ok(topic)
}

fn not_allowed(id: u8, packet: &'static str) -> DecodeError {
    DecodeError::PropertyNotAllowed { property: id, packet }
}

const ACK_PROPERTIES: &[u8] = &[REASON_STRING, USER_PROPERTY];

fn ack_properties(r: &mut Reader, packet: &'static str) -> Result<AckProperties, DecodeError> {
    let mut p = AckProperties::default();
    read_properties(r, packet, ACK_PROPERTIES, |id, r| {
        match id {
            REASON_STRING => p.reason_string = Some(r.string()?),
            USER_PROPERTY => p.user_properties.push(user_property(r)?),
            _ => return Err(not_allowed(id, packet)),
        }
        Ok(())
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------
// Packets.

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol_version = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT" | b"MQIsdp", level) => {
            return Err(DecodeError::UnsupportedProtocolVersion { level });
        }
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol_version.is_v5();

    let flags = r.u8()?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillQoS)?;
    if password_flag && !username_flag && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;

    let mut properties = ConnectProperties::default();
    if v5 {
        const ALLOWED: &[u8] = &[
            SESSION_EXPIRY_INTERVAL,
            RECEIVE_MAXIMUM,
            MAXIMUM_PACKET_SIZE,
            TOPIC_ALIAS_MAXIMUM,
            REQUEST_RESPONSE_INFORMATION,
            REQUEST_PROBLEM_INFORMATION,
            USER_PROPERTY,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
        ];
        let p = &mut properties;
        read_properties(r, "CONNECT", ALLOWED, |id, r| {
            match id {
                SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32()?),
                RECEIVE_MAXIMUM => p.receive_maximum = Some(nonzero_u16(r, id)?),
                MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(nonzero_u32(r, id)?),
                TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16()?),
                REQUEST_RESPONSE_INFORMATION => p.request_response_information = Some(flag(r, id)?),
                REQUEST_PROBLEM_INFORMATION => p.request_problem_information = Some(flag(r, id)?),
                USER_PROPERTY => p.user_properties.push(user_property(r)?),
                AUTHENTICATION_METHOD => p.authentication_method = Some(r.string()?),
                AUTHENTICATION_DATA => p.authentication_data = Some(r.binary()?),
                _ => return Err(not_allowed(id, "CONNECT")),
            }
            Ok(())
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
    }

    let client_id = r.string()?;

    let will = if will_flag {
        let mut properties = WillProperties::default();
        if v5 {
            const ALLOWED: &[u8] = &[
                WILL_DELAY_INTERVAL,
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                USER_PROPERTY,
            ];
            let p = &mut properties;
            read_properties(r, "CONNECT will", ALLOWED, |id, r| {
                match id {
                    WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32()?),
                    PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(payload_format(r)?),
                    MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32()?),
                    CONTENT_TYPE => p.content_type = Some(r.string()?),
                    RESPONSE_TOPIC => p.response_topic = Some(response_topic(r)?),
                    CORRELATION_DATA => p.correlation_data = Some(r.binary()?),
                    USER_PROPERTY => p.user_properties.push(user_property(r)?),
                    _ => return Err(not_allowed(id, "CONNECT will")),
                }
                Ok(())
            })?;
        }
        let topic = r.topic_name()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName);
        }
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };

    let username = if username_flag { Some(r.string()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };

    Ok(Connect { protocol_version, clean_start, keep_alive, properties, client_id, will, username, password })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0b1111_1110 != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let session_present = ack_flags & 1 != 0;
    let code = r.u8()?;
    if !v5 {
        let reason_code = ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode(code))?;
        return Ok(ConnAck { session_present, reason_code, properties: Default::default() });
    }
    let reason_code = reason_code(code, CONNACK_CODES)?;
    let mut properties = ConnAckProperties::default();
    const ALLOWED: &[u8] = &[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        ASSIGNED_CLIENT_IDENTIFIER,
        TOPIC_ALIAS_MAXIMUM,
        REASON_STRING,
        USER_PROPERTY,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
        SERVER_KEEP_ALIVE,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ];
    let p = &mut properties;
    read_properties(r, "CONNACK", ALLOWED, |id, r| {
        match id {
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32()?),
            RECEIVE_MAXIMUM => p.receive_maximum = Some(nonzero_u16(r, id)?),
            MAXIMUM_QOS => p.maximum_qos = Some(if flag(r, id)? { QoS::AtLeastOnce } else { QoS::AtMostOnce }),
            RETAIN_AVAILABLE => p.retain_available = Some(flag(r, id)?),
            MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(nonzero_u32(r, id)?),
            ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(r.string()?),
            TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16()?),
            REASON_STRING => p.reason_string = Some(r.string()?),
            USER_PROPERTY => p.user_properties.push(user_property(r)?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => p.wildcard_subscription_available = Some(flag(r, id)?),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => p.subscription_identifiers_available = Some(flag(r, id)?),
            SHARED_SUBSCRIPTION_AVAILABLE => p.shared_subscription_available = Some(flag(r, id)?),
            SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16()?),
            RESPONSE_INFORMATION => p.response_information = Some(r.string()?),
            SERVER_REFERENCE => p.server_reference = Some(r.string()?),
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.binary()?),
            _ => return Err(not_allowed(id, "CONNACK")),
        }
        Ok(())
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(ConnAck { session_present, reason_code, properties })
}

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    // check_fixed_header already refused QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let topic = r.topic_name()?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(r.packet_id()?) };
    let mut properties = PublishProperties::default();
    if v5 {
        const ALLOWED: &[u8] = &[
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            TOPIC_ALIAS,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            USER_PROPERTY,
            SUBSCRIPTION_IDENTIFIER,
            CONTENT_TYPE,
        ];
        let p = &mut properties;
        read_properties(r, "PUBLISH", ALLOWED, |id, r| {
            match id {
                PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(payload_format(r)?),
                MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32()?),
                TOPIC_ALIAS => p.topic_alias = Some(nonzero_u16(r, id)?),
                RESPONSE_TOPIC => p.response_topic = Some(response_topic(r)?),
                CORRELATION_DATA => p.correlation_data = Some(r.binary()?),
                USER_PROPERTY => p.user_properties.push(user_property(r)?),
                SUBSCRIPTION_IDENTIFIER => p.subscription_identifiers.push(subscription_identifier(r)?),
                CONTENT_TYPE => p.content_type = Some(r.string()?),
                _ => return Err(not_allowed(id, "PUBLISH")),
            }
            Ok(())
        })?;
    }
    // v5 allows an empty topic name when a topic alias stands for it.
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    let payload = r.rest();
    Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. v5 may omit the reason code (then
/// Success) and the property length (then none) (v5 section 3.4.2.1).
fn decode_puback(r: &mut Reader, v5: bool, packet: &'static str, codes: &[u8]) -> Result<PubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut ack = PubAck::new(packet_id);
    if v5 && !r.is_empty() {
        ack.reason_code = reason_code(r.u8()?, codes)?;
        if !r.is_empty() {
            ack.properties = ack_properties(r, packet)?;
        }
    }
    Ok(ack)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut properties = SubscribeProperties::default();
    if v5 {
        const ALLOWED: &[u8] = &[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY];
        let p = &mut properties;
        read_properties(r, "SUBSCRIBE", ALLOWED, |id, r| {
            match id {
                SUBSCRIPTION_IDENTIFIER => p.subscription_identifier = Some(subscription_identifier(r)?),
                USER_PROPERTY => p.user_properties.push(user_property(r)?),
                _ => return Err(not_allowed(id, "SUBSCRIBE")),
            }
            Ok(())
        })?;
    }
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let topic_filter = r.string()?;
        let byte = r.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReservedBits);
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidSubscriptionQoS)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        let options = SubscriptionOptions {
            qos,
            no_local: byte & 0b0000_0100 != 0,
            retain_as_published: byte & 0b0000_1000 != 0,
            retain_handling,
        };
        subscriptions.push(Subscription { topic_filter, options });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::MissingTopicFilters { packet: "SUBSCRIBE" });
    }
    Ok(Subscribe { packet_id, properties, subscriptions })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 { ack_properties(r, "SUBACK")? } else { AckProperties::default() };
    let codes = if v5 { SUBACK_CODES } else { SUBACK_V3_CODES };
    let mut reason_codes = Vec::with_capacity(r.len());
    while !r.is_empty() {
        reason_codes.push(reason_code(r.u8()?, codes)?);
    }
    Ok(SubAck { packet_id, properties, reason_codes })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut user_properties = Vec::new();
    if v5 {
        read_properties(r, "UNSUBSCRIBE", &[USER_PROPERTY], |id, r| {
            match id {
                USER_PROPERTY => user_properties.push(user_property(r)?),
                _ => return Err(not_allowed(id, "UNSUBSCRIBE")),
            }
            Ok(())
        })?;
    }
    let mut topic_filters = Vec::new();
    while !r.is_empty() {
        topic_filters.push(r.string()?);
    }
    if topic_filters.is_empty() {
        return Err(DecodeError::MissingTopicFilters { packet: "UNSUBSCRIBE" });
    }
    Ok(Unsubscribe { packet_id, user_properties, topic_filters })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck { packet_id, properties: AckProperties::default(), reason_codes: vec![] };
    if v5 {
        ack.properties = ack_properties(r, "UNSUBACK")?;
        ack.reason_codes.reserve(r.len());
        while !r.is_empty() {
            ack.reason_codes.push(reason_code(r.u8()?, UNSUBACK_CODES)?);
        }
    }
    Ok(ack)
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if !v5 || r.is_empty() {
        return Ok(disconnect);
    }
    disconnect.reason_code = reason_code(r.u8()?, DISCONNECT_CODES)?;
    if r.is_empty() {
        return Ok(disconnect);
    }
    const ALLOWED: &[u8] = &[SESSION_EXPIRY_INTERVAL, REASON_STRING, USER_PROPERTY, SERVER_REFERENCE];
    let p = &mut disconnect.properties;
    read_properties(r, "DISCONNECT", ALLOWED, |id, r| {
        match id {
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32()?),
            REASON_STRING => p.reason_string = Some(r.string()?),
            USER_PROPERTY => p.user_properties.push(user_property(r)?),
            SERVER_REFERENCE => p.server_reference = Some(r.string()?),
            _ => return Err(not_allowed(id, "DISCONNECT")),
        }
        Ok(())
    })?;
    Ok(disconnect)
}

/// AUTH (v5 only; 3.x was refused in `check_fixed_header`).
fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if r.is_empty() {
        return Ok(auth);
    }
    auth.reason_code = reason_code(r.u8()?, AUTH_CODES)?;
    if r.is_empty() {
        return Ok(auth);
    }
    const ALLOWED: &[u8] = &[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY];
    let p = &mut auth.properties;
    read_properties(r, "AUTH", ALLOWED, |id, r| {
        match id {
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.binary()?),
            REASON_STRING => p.reason_string = Some(r.string()?),
            USER_PROPERTY => p.user_properties.push(user_property(r)?),
            _ => return Err(not_allowed(id, "AUTH")),
        }
        Ok(())
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &'static [u8]) -> Reader {
        Reader { buf: Bytes::from_static(bytes) }
    }

    #[test]
    fn variable_byte_integers_decode_from_one_to_four_bytes() {
        for (bytes, value) in [
            (&[0x00][..], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0xFF, 0x7F], MAX_VARINT),
        ] {
            let mut r = reader(bytes);
            assert_eq!(r.varint(), Ok(value));
            assert!(r.is_empty());
        }
        assert_eq!(reader(&[0x80, 0x80, 0x80, 0x80, 0x01]).varint(), Err(DecodeError::MalformedRemainingLength));
        // [MQTT-1.5.5-1]: 0 as 0x80 0x00, 127 as 0xFF 0x00.
        assert_eq!(reader(&[0x80, 0x00]).varint(), Err(DecodeError::NonMinimalVarint));
        assert_eq!(reader(&[0xFF, 0x80, 0x00]).varint(), Err(DecodeError::NonMinimalVarint));
        assert_eq!(reader(&[0x80, 0x01]).varint(), Ok(128));
        assert_eq!(reader(&[0x80]).varint(), Err(DecodeError::UnexpectedEof));
    }

    #[test]
    fn reads_past_the_end_are_errors_not_panics() {
        let mut r = reader(&[0x01]);
        assert_eq!(r.u16(), Err(DecodeError::UnexpectedEof));
        assert_eq!(r.u32(), Err(DecodeError::UnexpectedEof));
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u8(), Err(DecodeError::UnexpectedEof));
        assert_eq!(reader(&[0x00, 0x02, b'a']).binary(), Err(DecodeError::UnexpectedEof));
    }

    #[test]
    fn strings_are_slices_of_the_packet() {
        let packet = Bytes::from_static(b"\x00\x03abcrest");
        let mut r = Reader { buf: packet.clone() };
        let s = r.mqtt_str().unwrap();
        assert_eq!(&*s, "abc");
        assert_eq!(s.as_bytes().as_ptr(), packet[2..].as_ptr());
        assert_eq!(&r.rest()[..], b"rest");
    }

    #[test]
    fn fixed_header_flags_are_checked_per_packet_type() {
        use ProtocolVersion::*;
        assert_eq!(check_fixed_header(3, 0b1101, V3_1_1), Ok(()));
        assert_eq!(check_fixed_header(3, 0b0110, V3_1_1), Err(DecodeError::InvalidQoS));
        assert_eq!(check_fixed_header(3, 0b1000, V3_1_1), Err(DecodeError::DupWithQoS0));
        assert_eq!(check_fixed_header(6, 0b0010, V3_1_1), Ok(()));
        assert_eq!(check_fixed_header(6, 0b1010, V3_1), Ok(()));
        assert_eq!(check_fixed_header(6, 0b1010, V5), Err(DecodeError::InvalidFixedHeaderFlags { packet_type: 6 }));
        assert_eq!(check_fixed_header(15, 0, V5), Ok(()));
        assert_eq!(check_fixed_header(15, 0, V3_1_1), Err(DecodeError::AuthOnV3));
        assert_eq!(check_fixed_header(0, 0, V5), Err(DecodeError::InvalidPacketType(0)));
    }

    #[test]
    fn every_listed_reason_code_is_a_reason_code() {
        for list in [
            CONNACK_CODES,
            PUBACK_CODES,
            PUBREL_CODES,
            SUBACK_CODES,
            SUBACK_V3_CODES,
            UNSUBACK_CODES,
            DISCONNECT_CODES,
            AUTH_CODES,
        ] {
            for &code in list {
                assert!(ReasonCode::from_u8(code).is_some(), "{code:#04x}");
            }
        }
    }

    #[test]
    fn a_huge_declared_length_reserves_nothing() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V5, u32::MAX), Ok(None));
        assert!(buf.capacity() < 1024);
    }
}
