//! One test (at least) per `DecodeError` variant, from raw bytes, with the
//! rule it enforces.

use bytes::BytesMut;
use midge_codec::*;

use crate::support::{NO_LIMIT, decode_one};

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A packet from its first byte and body (remaining length computed).
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT with the given protocol name, level, flags and the rest.
fn connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = s(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    body.extend_from_slice(rest);
    packet(0x10, &body)
}

fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    match decode_one(bytes, version) {
        Ok(p) => panic!("{bytes:02x?} decoded as {p:?}"),
        Err(e) => e,
    }
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// v5 PUBLISH QoS 0 to topic "t" with the given property bytes.
fn v5_publish_with_properties(props: &[u8]) -> Vec<u8> {
    let mut body = s(b"t");
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    packet(0x30, &body)
}

/// v5 CONNECT (client id "c") with the given property bytes.
fn v5_connect_with_properties(props: &[u8]) -> Vec<u8> {
    let mut rest = vec![props.len() as u8];
    rest.extend_from_slice(props);
    rest.extend_from_slice(&s(b"c"));
    connect(b"MQTT", 5, 0x02, &rest)
}

#[test]
fn an_empty_or_partial_buffer_needs_more_bytes_and_consumes_nothing() {
    for bytes in [&[][..], &[0x30], &[0x30, 0x80], &[0x30, 0x05, 0x00, 0x03]] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(decode(&mut buf, V311, NO_LIMIT), Ok(None));
        assert_eq!(&buf[..], bytes);
    }
}

/// v5 [MQTT-3.2.2-15]: a packet above the maximum packet size is refused
/// from its fixed header, before the body arrives.
#[test]
fn packet_larger_than_the_limit_is_refused_before_its_body_arrives() {
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]); // remaining length 1000
    assert_eq!(decode(&mut buf, V311, 100), Err(DecodeError::PacketTooLarge { size: 1003, max: 100 }));
    // Exactly at the limit is fine.
    let bytes = packet(0x30, &concat(&[&s(b"t"), b"payload"]));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, V311, bytes.len() as u32).unwrap().is_some());
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V311, bytes.len() as u32 - 1),
        Err(DecodeError::PacketTooLarge { size: bytes.len() as u32, max: bytes.len() as u32 - 1 })
    );
}

/// 3.1.1 section 2.2.3: the remaining length is at most four bytes.
#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    assert_eq!(decode(&mut buf, V311, NO_LIMIT), Err(DecodeError::MalformedRemainingLength));
    // Known as soon as the fourth byte has its continuation bit.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x80][..]);
    assert_eq!(decode(&mut buf, V311, NO_LIMIT), Err(DecodeError::MalformedRemainingLength));
}

/// [MQTT-1.5.5-1]: an MQTT 5 remaining length, property length or
/// Subscription Identifier uses the fewest bytes its value needs; 3.1.1
/// states no such rule, and its PINGREQ with length `0x80 0x00` is taken.
#[test]
fn a_non_minimal_variable_byte_integer_is_malformed_in_v5_only() {
    let mut buf = BytesMut::from(&[0xC0, 0x80, 0x00][..]);
    assert_eq!(decode(&mut buf, V5, NO_LIMIT), Err(DecodeError::NonMinimalVarint));
    let mut buf = BytesMut::from(&[0xC0, 0x80, 0x00][..]);
    assert_eq!(decode(&mut buf, V311, NO_LIMIT), Ok(Some(midge_codec::Packet::PingReq)));
    // A PUBLISH whose property length 0 is written as 0x80 0x00.
    let bytes = packet(0x30, &concat(&[&s(b"t"), &[0x80, 0x00]]));
    assert_eq!(err(&bytes, V5), DecodeError::NonMinimalVarint);
    assert_eq!(DecodeError::NonMinimalVarint.reason_code(), midge_codec::ReasonCode::MalformedPacket);
}

/// v5 section 1.5.5: a property length longer than four bytes is malformed.
#[test]
fn property_length_of_five_bytes_is_malformed() {
    let bytes = packet(0x30, &concat(&[&s(b"t"), &[0xFF, 0xFF, 0xFF, 0xFF, 0x01]]));
    assert_eq!(err(&bytes, V5), DecodeError::MalformedRemainingLength);
}

/// 3.1.1 section 2.2.1: packet type 0 is reserved.
#[test]
fn packet_type_zero_is_reserved() {
    assert_eq!(err(&[0x00, 0x00], V311), DecodeError::InvalidPacketType(0));
}

/// 3.1.1 section 2.2.1: packet type 15 is reserved in 3.x; AUTH is v5 only.
#[test]
fn auth_on_a_v3_connection_is_malformed() {
    assert_eq!(err(&[0xF0, 0x00], V311), DecodeError::AuthOnV3);
    assert_eq!(err(&[0xF0, 0x00], V31), DecodeError::AuthOnV3);
}

/// [MQTT-2.2.2-1] [MQTT-2.2.2-2]: reserved fixed header flags must have
/// their listed value.
#[test]
fn wrong_fixed_header_flags_are_malformed() {
    for (first, packet_type) in
        [(0x11, 1), (0x21, 2), (0x42, 4), (0x60, 6), (0x80, 8), (0xA0, 10), (0xC1, 12), (0xE8, 14)]
    {
        let mut buf = BytesMut::from(&[first, 0x00][..]);
        assert_eq!(
            decode(&mut buf, V311, NO_LIMIT),
            Err(DecodeError::InvalidFixedHeaderFlags { packet_type }),
            "{first:#04x}"
        );
    }
}

/// MQTT 3.1 sent PUBREL, SUBSCRIBE and UNSUBSCRIBE at QoS 1 with DUP on
/// retries; a 3.1 connection accepts the DUP bit there.
#[test]
fn v31_pubrel_with_dup_is_accepted() {
    let p = decode_one(&[0x6A, 0x02, 0x00, 0x01], V31).unwrap();
    assert!(matches!(p, Packet::PubRel(_)));
    assert_eq!(err(&[0x6A, 0x02, 0x00, 0x01], V311), DecodeError::InvalidFixedHeaderFlags { packet_type: 6 });
}

/// [MQTT-3.3.1-4]: a PUBLISH must not have both QoS bits set.
#[test]
fn publish_with_qos_3_is_malformed() {
    assert_eq!(err(&packet(0x36, &concat(&[&s(b"t"), &[0, 1]])), V311), DecodeError::InvalidQoS);
}

/// [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
#[test]
fn publish_with_qos_0_and_dup_is_malformed() {
    assert_eq!(err(&packet(0x38, &s(b"t")), V311), DecodeError::DupWithQoS0);
}

/// [MQTT-3.1.2-1]: an unknown protocol name.
#[test]
fn connect_with_an_unknown_protocol_name_is_refused() {
    let bytes = connect(b"MQTX", 4, 0x02, &s(b"c"));
    let e = err(&bytes, V311);
    assert_eq!(e, DecodeError::InvalidProtocolName);
    assert_eq!(err(&connect(b"mqtt", 4, 0x02, &s(b"c")), V311), DecodeError::InvalidProtocolName);
}

/// [MQTT-3.1.2-2]: a known protocol name with an unsupported level; the
/// server answers CONNACK 0x01 / 0x84.
#[test]
fn connect_with_an_unsupported_level_is_refused_with_its_level() {
    for (name, level) in [(&b"MQTT"[..], 3), (b"MQTT", 6), (b"MQIsdp", 4), (b"MQIsdp", 5)] {
        assert_eq!(err(&connect(name, level, 0x02, &s(b"c")), V311), DecodeError::UnsupportedProtocolVersion { level });
    }
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion { level: 6 }.reason_code(),
        ReasonCode::UnsupportedProtocolVersion
    );
    assert_eq!(ReasonCode::UnsupportedProtocolVersion.to_v3_connack(), 1);
}

/// [MQTT-3.1.2-3]: the reserved connect flag must be 0.
#[test]
fn connect_with_the_reserved_flag_is_malformed() {
    assert_eq!(err(&connect(b"MQTT", 4, 0x03, &s(b"c")), V311), DecodeError::ConnectReservedFlag);
}

/// [MQTT-3.1.2-11] [MQTT-3.1.2-13]: will QoS and will retain are 0 without a will.
#[test]
fn connect_with_will_qos_or_retain_but_no_will_is_malformed() {
    assert_eq!(err(&connect(b"MQTT", 4, 0x0A, &s(b"c")), V311), DecodeError::WillFlagsWithoutWill);
    assert_eq!(err(&connect(b"MQTT", 4, 0x22, &s(b"c")), V311), DecodeError::WillFlagsWithoutWill);
}

/// [MQTT-3.1.2-14]: will QoS 3.
#[test]
fn connect_with_will_qos_3_is_malformed() {
    let rest = concat(&[&s(b"c"), &s(b"w"), &s(b"m")]);
    assert_eq!(err(&connect(b"MQTT", 4, 0x1E, &rest), V311), DecodeError::InvalidWillQoS);
}

/// [MQTT-3.1.2-22]: in 3.x a password needs a user name; v5 allows it.
#[test]
fn v3_connect_with_password_but_no_username_is_malformed() {
    let rest = concat(&[&s(b"c"), &s(b"pw")]);
    assert_eq!(err(&connect(b"MQTT", 4, 0x42, &rest), V311), DecodeError::PasswordWithoutUsername);
    assert_eq!(err(&connect(b"MQIsdp", 3, 0x42, &rest), V311), DecodeError::PasswordWithoutUsername);
    let v5_rest = concat(&[&[0], &s(b"c"), &s(b"pw")]);
    assert!(decode_one(&connect(b"MQTT", 5, 0x42, &v5_rest), V311).is_ok());
}

/// 3.1.1 section 3.2.2.1: CONNACK acknowledge flag bits 7-1 are reserved.
#[test]
fn connack_with_reserved_flags_is_malformed() {
    assert_eq!(err(&[0x20, 0x02, 0x02, 0x00], V311), DecodeError::ConnAckReservedFlags);
}

/// [MQTT-1.5.3-1]: strings must be well-formed UTF-8 (no surrogates).
#[test]
fn ill_formed_utf8_is_malformed() {
    assert_eq!(err(&packet(0x30, &s(&[b'a', 0xFF])), V311), DecodeError::InvalidUtf8);
    // An encoded surrogate, U+D800.
    assert_eq!(err(&packet(0x30, &s(&[0xED, 0xA0, 0x80])), V311), DecodeError::InvalidUtf8);
    // In a client identifier too.
    assert_eq!(err(&connect(b"MQTT", 4, 0x02, &s(&[0xC0, 0x80])), V311), DecodeError::InvalidUtf8);
}

/// [MQTT-1.5.3-2]: strings must not contain U+0000.
#[test]
fn null_character_in_a_string_is_malformed() {
    assert_eq!(err(&packet(0x30, &s(b"a\0b")), V311), DecodeError::NullCharacter);
    let sub = concat(&[&[0, 1], &s(b"a\0"), &[0]]);
    assert_eq!(err(&packet(0x82, &sub), V311), DecodeError::NullCharacter);
}

/// [MQTT-3.3.2-2]: a topic name has no wildcards, in PUBLISH and in the will.
#[test]
fn wildcard_in_a_topic_name_is_refused() {
    assert_eq!(err(&packet(0x30, &s(b"a/+")), V311), DecodeError::WildcardInTopicName);
    assert_eq!(err(&packet(0x30, &s(b"#")), V311), DecodeError::WildcardInTopicName);
    let rest = concat(&[&s(b"c"), &s(b"w/#"), &s(b"m")]);
    assert_eq!(err(&connect(b"MQTT", 4, 0x06, &rest), V311), DecodeError::WildcardInTopicName);
    assert_eq!(DecodeError::WildcardInTopicName.reason_code(), ReasonCode::TopicNameInvalid);
}

/// [MQTT-4.7.3-1]: a topic name is at least one character; v5 PUBLISH may
/// leave it empty only with a topic alias.
#[test]
fn empty_topic_name_is_refused_unless_a_v5_topic_alias_stands_for_it() {
    assert_eq!(err(&packet(0x30, &s(b"")), V311), DecodeError::EmptyTopicName);
    assert_eq!(err(&packet(0x30, &concat(&[&s(b""), &[0]])), V5), DecodeError::EmptyTopicName);
    assert!(decode_one(&packet(0x30, &concat(&[&s(b""), &[3, 0x23, 0, 1]])), V5).is_ok());
    let rest = concat(&[&s(b"c"), &s(b""), &s(b"m")]);
    assert_eq!(err(&connect(b"MQTT", 4, 0x06, &rest), V311), DecodeError::EmptyTopicName);
}

/// [MQTT-2.3.1-1]: packet identifiers are non-zero.
#[test]
fn packet_identifier_zero_is_malformed() {
    assert_eq!(err(&packet(0x32, &concat(&[&s(b"t"), &[0, 0]])), V311), DecodeError::ZeroPacketId);
    assert_eq!(err(&[0x40, 0x02, 0x00, 0x00], V311), DecodeError::ZeroPacketId);
    assert_eq!(err(&packet(0x82, &concat(&[&[0, 0], &s(b"a"), &[0]])), V311), DecodeError::ZeroPacketId);
}

/// [MQTT-3.8.3-3] [MQTT-3.10.3-2]: SUBSCRIBE and UNSUBSCRIBE carry at least one filter.
#[test]
fn subscribe_or_unsubscribe_without_topic_filters_is_refused() {
    assert_eq!(err(&[0x82, 0x02, 0x00, 0x01], V311), DecodeError::MissingTopicFilters { packet: "SUBSCRIBE" });
    assert_eq!(err(&[0xA2, 0x02, 0x00, 0x01], V311), DecodeError::MissingTopicFilters { packet: "UNSUBSCRIBE" });
    assert_eq!(err(&[0x82, 0x03, 0x00, 0x01, 0x00], V5), DecodeError::MissingTopicFilters { packet: "SUBSCRIBE" });
    assert_eq!(DecodeError::MissingTopicFilters { packet: "SUBSCRIBE" }.reason_code(), ReasonCode::ProtocolError);
}

/// [MQTT-3.8.3-4] (3.x: bits 7-2) and [MQTT-3.8.3-5] (v5: bits 7-6) of the
/// subscription options are reserved.
#[test]
fn reserved_subscription_option_bits_are_malformed() {
    let v3 = packet(0x82, &concat(&[&[0, 1], &s(b"a"), &[0x04]]));
    assert_eq!(err(&v3, V311), DecodeError::SubscriptionOptionsReservedBits);
    let v5 = packet(0x82, &concat(&[&[0, 1, 0], &s(b"a"), &[0x40]]));
    assert_eq!(err(&v5, V5), DecodeError::SubscriptionOptionsReservedBits);
    // The v5 option bits are fine in v5.
    let ok = packet(0x82, &concat(&[&[0, 1, 0], &s(b"a"), &[0x2E]]));
    assert!(decode_one(&ok, V5).is_ok());
}

/// [MQTT-3.8.3-4]: a requested QoS of 3 is malformed.
#[test]
fn subscription_with_qos_3_is_malformed() {
    let bytes = packet(0x82, &concat(&[&[0, 1], &s(b"a"), &[0x03]]));
    assert_eq!(err(&bytes, V311), DecodeError::InvalidSubscriptionQoS);
}

/// v5 section 3.8.3.1: retain handling 3 is a protocol error.
#[test]
fn retain_handling_3_is_a_protocol_error() {
    let bytes = packet(0x82, &concat(&[&[0, 1, 0], &s(b"a"), &[0x30]]));
    assert_eq!(err(&bytes, V5), DecodeError::InvalidRetainHandling);
}

/// A length inside the packet that runs past its remaining length.
#[test]
fn declared_length_past_the_remaining_length_is_malformed() {
    assert_eq!(err(&[0x30, 0x04, 0x00, 0x0A, b'a', b'b'], V311), DecodeError::UnexpectedEof);
    assert_eq!(err(&connect(b"MQTT", 4, 0x02, &[0x00]), V311), DecodeError::UnexpectedEof);
    assert_eq!(err(&[0x40, 0x01, 0x00], V311), DecodeError::UnexpectedEof);
    // A v5 property block longer than the packet.
    assert_eq!(err(&packet(0x30, &concat(&[&s(b"t"), &[0x09, 0x01]])), V5), DecodeError::UnexpectedEof);
}

/// Bytes after the last field of a fixed-size packet are malformed.
#[test]
fn trailing_bytes_are_malformed() {
    assert_eq!(err(&[0xC0, 0x01, 0x00], V311), DecodeError::TrailingBytes);
    assert_eq!(err(&[0x40, 0x03, 0x00, 0x01, 0x00], V311), DecodeError::TrailingBytes);
    assert_eq!(err(&[0xE0, 0x01, 0x00], V311), DecodeError::TrailingBytes);
    assert_eq!(err(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311), DecodeError::TrailingBytes);
    assert_eq!(err(&connect(b"MQTT", 4, 0x02, &concat(&[&s(b"c"), b"x"])), V311), DecodeError::TrailingBytes);
    assert_eq!(err(&[0x20, 0x03, 0x00, 0x00, 0x00], V311), DecodeError::TrailingBytes);
    // Past a v5 DISCONNECT's property block.
    assert_eq!(err(&[0xE0, 0x03, 0x00, 0x00, 0x00], V5), DecodeError::TrailingBytes);
}

/// v5 section 2.2.2.2: an identifier the spec does not define.
#[test]
fn unknown_property_is_malformed() {
    assert_eq!(err(&v5_publish_with_properties(&[0x05, 0x00]), V5), DecodeError::UnknownProperty(0x05));
    // Identifiers are Variable Byte Integers: 0x80 0x01 is 128.
    assert_eq!(err(&v5_publish_with_properties(&[0x80, 0x01, 0x00]), V5), DecodeError::UnknownProperty(0x80));
    // Above 255 is reported as 0xFF.
    assert_eq!(err(&v5_publish_with_properties(&[0x80, 0x02, 0x00]), V5), DecodeError::UnknownProperty(0xFF));
}

/// v5 section 2.2.2.2: only user properties (and subscription identifiers
/// in PUBLISH) may repeat.
#[test]
fn repeated_property_is_a_protocol_error() {
    let twice = [0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    assert_eq!(err(&v5_publish_with_properties(&twice), V5), DecodeError::DuplicateProperty(0x02));
    let users = concat(&[&[0x26], &s(b"k"), &s(b"v"), &[0x26], &s(b"k"), &s(b"v")]);
    assert!(decode_one(&v5_publish_with_properties(&users), V5).is_ok());
    assert!(decode_one(&v5_publish_with_properties(&[0x0B, 1, 0x0B, 2]), V5).is_ok());
    let sub = packet(0x82, &concat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s(b"a"), &[0]]));
    assert_eq!(err(&sub, V5), DecodeError::DuplicateProperty(0x0B));
    assert_eq!(DecodeError::DuplicateProperty(0x0B).reason_code(), ReasonCode::ProtocolError);
}

/// v5 section 2.2.2.2: a property that does not belong to the packet.
#[test]
fn property_in_the_wrong_packet_is_malformed() {
    assert_eq!(
        err(&v5_connect_with_properties(&[0x23, 0, 1]), V5),
        DecodeError::PropertyNotAllowed { property: 0x23, packet: "CONNECT" }
    );
    let puback = [0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01];
    assert_eq!(err(&puback, V5), DecodeError::PropertyNotAllowed { property: 0x23, packet: "PUBACK" });
}

/// v5 section 3: property values out of range are protocol errors.
#[test]
fn property_values_out_of_range_are_protocol_errors() {
    for (props, id) in [
        (&[0x21, 0, 0][..], 0x21),   // receive maximum 0
        (&[0x27, 0, 0, 0, 0], 0x27), // maximum packet size 0
        (&[0x17, 2], 0x17),          // request problem information 2
        (&[0x19, 2], 0x19),          // request response information 2
    ] {
        assert_eq!(err(&v5_connect_with_properties(props), V5), DecodeError::InvalidPropertyValue(id));
    }
    for (props, id) in [
        (&[0x23, 0, 0][..], 0x23), // topic alias 0
        (&[0x01, 2], 0x01),        // payload format indicator 2
        (&[0x0B, 0], 0x0B),        // subscription identifier 0
    ] {
        assert_eq!(err(&v5_publish_with_properties(props), V5), DecodeError::InvalidPropertyValue(id));
    }
    let response_topic = concat(&[&[0x08], &s(b"a/+")]);
    assert_eq!(err(&v5_publish_with_properties(&response_topic), V5), DecodeError::InvalidPropertyValue(0x08));
    let connack = [0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02]; // maximum QoS 2
    assert_eq!(err(&connack, V5), DecodeError::InvalidPropertyValue(0x24));
    assert_eq!(DecodeError::InvalidPropertyValue(0x24).reason_code(), ReasonCode::ProtocolError);
}

/// v5 section 3.1.2.11.10: authentication data needs a method.
#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    let props = concat(&[&[0x16], &s(b"data")]);
    assert_eq!(err(&v5_connect_with_properties(&props), V5), DecodeError::AuthenticationDataWithoutMethod);
}

/// v5 section 2.4: reason codes must be defined, and valid for the packet.
#[test]
fn reason_code_not_valid_for_the_packet_is_malformed() {
    assert_eq!(err(&[0x40, 0x03, 0x00, 0x01, 0x03], V5), DecodeError::InvalidReasonCode(0x03));
    assert_eq!(err(&[0x40, 0x03, 0x00, 0x01, 0x92], V5), DecodeError::InvalidReasonCode(0x92));
    assert_eq!(err(&[0x62, 0x03, 0x00, 0x01, 0x10], V5), DecodeError::InvalidReasonCode(0x10));
    assert_eq!(err(&[0xF0, 0x01, 0x87], V5), DecodeError::InvalidReasonCode(0x87));
    assert_eq!(err(&[0xE0, 0x01, 0x18], V5), DecodeError::InvalidReasonCode(0x18));
    // 3.x: CONNACK return codes 0-5, SUBACK return codes 0, 1, 2, 0x80.
    assert_eq!(err(&[0x20, 0x02, 0x00, 0x06], V311), DecodeError::InvalidReasonCode(0x06));
    assert_eq!(err(&[0x90, 0x03, 0x00, 0x01, 0x87], V311), DecodeError::InvalidReasonCode(0x87));
}

#[test]
fn every_decode_error_maps_to_its_v5_reason_code() {
    use DecodeError::*;
    let cases = [
        (PacketTooLarge { size: 2, max: 1 }, 0x95),
        (MalformedRemainingLength, 0x81),
        (InvalidPacketType(0), 0x81),
        (InvalidFixedHeaderFlags { packet_type: 6 }, 0x81),
        (InvalidQoS, 0x81),
        (DupWithQoS0, 0x81),
        (InvalidProtocolName, 0x84),
        (UnsupportedProtocolVersion { level: 6 }, 0x84),
        (ConnectReservedFlag, 0x81),
        (WillFlagsWithoutWill, 0x81),
        (InvalidWillQoS, 0x81),
        (PasswordWithoutUsername, 0x81),
        (ConnAckReservedFlags, 0x81),
        (InvalidUtf8, 0x81),
        (NullCharacter, 0x81),
        (WildcardInTopicName, 0x90),
        (EmptyTopicName, 0x90),
        (ZeroPacketId, 0x81),
        (MissingTopicFilters { packet: "SUBSCRIBE" }, 0x82),
        (SubscriptionOptionsReservedBits, 0x81),
        (InvalidSubscriptionQoS, 0x81),
        (InvalidRetainHandling, 0x82),
        (UnexpectedEof, 0x81),
        (TrailingBytes, 0x81),
        (UnknownProperty(5), 0x81),
        (DuplicateProperty(2), 0x82),
        (PropertyNotAllowed { property: 0x23, packet: "CONNECT" }, 0x81),
        (InvalidPropertyValue(0x21), 0x82),
        (AuthenticationDataWithoutMethod, 0x82),
        (InvalidReasonCode(3), 0x81),
        (AuthOnV3, 0x81),
    ];
    for (error, code) in cases {
        assert_eq!(error.reason_code().as_u8(), code, "{error:?}");
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn error_messages_name_the_spec_rule() {
    assert_eq!(DecodeError::InvalidQoS.to_string(), "PUBLISH with QoS 3 [MQTT-3.3.1-4]");
    assert!(DecodeError::ZeroPacketId.to_string().contains("[MQTT-2.3.1-1]"));
}

#[test]
fn decode_errors_are_small() {
    assert!(std::mem::size_of::<DecodeError>() <= 24);
}

#[test]
fn a_malformed_packet_stops_decoding_and_leaves_later_bytes_alone() {
    // The broker closes on error; what matters is no panic and no bogus packet.
    let mut buf = BytesMut::from(&[0x00, 0x00, 0xC0, 0x00][..]);
    assert!(decode(&mut buf, V311, NO_LIMIT).is_err());
}
