//! The byte examples of the MQTT 3.1.1 and 5.0 specifications, as raw bytes.

use bytes::{Bytes, BytesMut};
use midge_codec::*;

use crate::support::{decode_one, encode_to_vec, pid};

/// Remaining length examples, 3.1.1 section 2.2.3 table 2.4 (the same as
/// the Variable Byte Integer examples of 5.0 section 1.5.5).
const REMAINING_LENGTH_EXAMPLES: &[(u32, &[u8])] = &[
    (0, &[0x00]),
    (127, &[0x7F]),
    (128, &[0x80, 0x01]),
    (16_383, &[0xFF, 0x7F]),
    (16_384, &[0x80, 0x80, 0x01]),
    (2_097_151, &[0xFF, 0xFF, 0x7F]),
    (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
];

#[test]
fn remaining_length_examples_decode_to_their_values() {
    for &(value, encoded) in REMAINING_LENGTH_EXAMPLES {
        let mut buf = BytesMut::from(&[0x30][..]);
        buf.extend_from_slice(encoded);
        // A zero limit makes the decoder report the size it read.
        let size = value + 1 + encoded.len() as u32;
        let expected = DecodeError::PacketTooLarge { size, max: 0 };
        assert_eq!(decode(&mut buf, ProtocolVersion::V3_1_1, 0), Err(expected), "{value}");
    }
}

#[test]
fn remaining_length_examples_are_what_the_encoder_writes() {
    for &(value, encoded) in REMAINING_LENGTH_EXAMPLES {
        if value == 0 {
            assert_eq!(encode_to_vec(&Packet::PingReq, ProtocolVersion::V3_1_1), [0xC0, 0x00]);
            continue;
        }
        if value > 2_097_152 {
            // 256 MiB is too much for a unit test; the decode test covers it.
            continue;
        }
        // Topic "a" takes 3 bytes of the remaining length.
        let p =
            Publish { topic: "a".into(), payload: Bytes::from(vec![0u8; value as usize - 3]), ..Publish::default() };
        let bytes = encode_to_vec(&Packet::Publish(p), ProtocolVersion::V3_1_1);
        assert_eq!(&bytes[1..1 + encoded.len()], encoded, "{value}");
        assert_eq!(bytes.len(), 1 + encoded.len() + value as usize);
    }
}

/// The CONNECT variable header example of 3.1.1 section 3.1.2.10, with a
/// payload for the flags it sets (will, user name, password).
#[test]
fn v311_connect_variable_header_example_decodes() {
    let mut bytes = vec![0x10, 0];
    bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A]);
    for field in [&b"client"[..], b"will/topic", b"bye", b"user", b"pass"] {
        bytes.extend_from_slice(&(field.len() as u16).to_be_bytes());
        bytes.extend_from_slice(field);
    }
    bytes[1] = (bytes.len() - 2) as u8;
    let Packet::Connect(c) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.protocol_version, ProtocolVersion::V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 10);
    assert_eq!(c.client_id, "client");
    let will = c.will.as_ref().unwrap();
    assert_eq!(
        (&*will.topic, &will.payload[..], will.qos, will.retain),
        ("will/topic", &b"bye"[..], QoS::AtLeastOnce, false)
    );
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
    // And the encoder produces the same bytes back.
    assert_eq!(encode_to_vec(&Packet::Connect(c), ProtocolVersion::V3_1_1), bytes);
}

/// The CONNECT variable header example of 5.0 section 3.1.2.12: Session
/// Expiry Interval 10 in a 5-byte property block.
#[test]
fn v5_connect_variable_header_example_decodes() {
    let mut bytes = vec![0x10, 0];
    bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A]);
    bytes.extend_from_slice(&[0x05, 0x11, 0x00, 0x00, 0x00, 0x0A]);
    bytes.extend_from_slice(&[0x00, 0x01, b'c']); // client id
    bytes.push(0x00); // will properties
    for field in [&b"w"[..], b"m", b"u", b"p"] {
        bytes.extend_from_slice(&(field.len() as u16).to_be_bytes());
        bytes.extend_from_slice(field);
    }
    bytes[1] = (bytes.len() - 2) as u8;
    let Packet::Connect(c) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.protocol_version, ProtocolVersion::V5);
    assert_eq!(c.keep_alive, 10);
    assert_eq!(c.properties.session_expiry_interval, Some(10));
    assert_eq!(encode_to_vec(&Packet::Connect(c), ProtocolVersion::V5), bytes);
}

/// 3.1 CONNECT: protocol name "MQIsdp", level 3.
#[test]
fn v31_connect_uses_the_mqisdp_protocol_name() {
    let c = Connect { protocol_version: ProtocolVersion::V3_1, client_id: "x".into(), ..Connect::default() };
    let bytes = encode_to_vec(&Packet::Connect(Box::new(c)), ProtocolVersion::V3_1);
    assert_eq!(&bytes[2..11], &[0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03]);
}

/// PUBLISH variable header example, 3.1.1 section 3.3.2.3: topic "a/b", packet id 10.
#[test]
fn v311_publish_variable_header_example_decodes() {
    let bytes = [0x32, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A];
    let Packet::Publish(p) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(&*p.topic, "a/b");
    assert_eq!(p.packet_id, Some(pid(10)));
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(p.payload.is_empty());
}

/// SUBSCRIBE payload example, 3.1.1 section 3.8.3: "a/b" at QoS 1, "c/d" at QoS 2.
#[test]
fn v311_subscribe_payload_example_decodes() {
    let bytes = [0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd', 0x02];
    let Packet::Subscribe(s) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a SUBSCRIBE");
    };
    let filters: Vec<_> = s.subscriptions.iter().map(|s| (s.topic_filter.as_str(), s.options.qos)).collect();
    assert_eq!(filters, [("a/b", QoS::AtLeastOnce), ("c/d", QoS::ExactlyOnce)]);
}

/// SUBACK payload example, 3.1.1 section 3.9.3: 0x00, 0x02, 0x80.
#[test]
fn v311_suback_payload_example_decodes() {
    let bytes = [0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80];
    let Packet::SubAck(s) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a SUBACK");
    };
    assert_eq!(s.reason_codes, [ReasonCode::GRANTED_QOS0, ReasonCode::GrantedQoS2, ReasonCode::UnspecifiedError]);
}

/// UNSUBSCRIBE payload example, 3.1.1 section 3.10.3: "a/b", "c/d".
#[test]
fn v311_unsubscribe_payload_example_decodes() {
    let bytes = [0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd'];
    let Packet::Unsubscribe(u) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not an UNSUBSCRIBE");
    };
    assert_eq!(u.topic_filters, ["a/b", "c/d"]);
}

/// UTF-8 string example, 3.1.1 section 1.5.3 / 5.0 section 1.5.4:
/// "A\u{2A6D4}" is 0x00 0x05 0x41 0xF0 0xAA 0x9B 0x94.
#[test]
fn utf8_string_example_is_a_valid_topic() {
    let bytes = [0x30, 0x07, 0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94];
    let Packet::Publish(p) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(&*p.topic, "A\u{2A6D4}");
}

/// A leading 0xEF 0xBB 0xBF is U+FEFF and must not be stripped [MQTT-1.5.3-3].
#[test]
fn byte_order_mark_in_a_string_is_kept() {
    let bytes = [0x30, 0x06, 0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a'];
    let Packet::Publish(p) = decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(&*p.topic, "\u{FEFF}a");
}

/// 3.x CONNACK: 0x20 0x02, acknowledge flags, return code (section 3.2).
#[test]
fn v311_connack_bytes_carry_the_v3_return_code() {
    let ack = ConnAck { session_present: false, reason_code: ReasonCode::NotAuthorized, ..ConnAck::default() };
    assert_eq!(encode_to_vec(&Packet::ConnAck(ack), ProtocolVersion::V3_1_1), [0x20, 0x02, 0x00, 0x05]);
    let ack = ConnAck { session_present: true, ..ConnAck::default() };
    assert_eq!(encode_to_vec(&Packet::ConnAck(ack), ProtocolVersion::V3_1_1), [0x20, 0x02, 0x01, 0x00]);
}

/// v5 refusals without a 3.x equivalent become return code 5 (not authorized).
#[test]
fn v5_only_connack_failure_maps_to_v3_not_authorized() {
    let ack = ConnAck { reason_code: ReasonCode::Banned, ..ConnAck::default() };
    assert_eq!(encode_to_vec(&Packet::ConnAck(ack), ProtocolVersion::V3_1_1), [0x20, 0x02, 0x00, 0x05]);
}

/// v3 SUBACK failures are all 0x80 (3.1.1 section 3.9.3).
#[test]
fn v5_suback_failure_codes_become_0x80_in_v3() {
    let ack = SubAck {
        packet_id: pid(1),
        properties: AckProperties::default(),
        reason_codes: vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQoS1],
    };
    assert_eq!(encode_to_vec(&Packet::SubAck(ack), ProtocolVersion::V3_1_1), [0x90, 0x04, 0x00, 0x01, 0x80, 0x01]);
}

/// PUBREL, SUBSCRIBE and UNSUBSCRIBE have flags 0b0010
/// [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1].
#[test]
fn pubrel_subscribe_and_unsubscribe_are_written_with_flags_0010() {
    let v = ProtocolVersion::V3_1_1;
    assert_eq!(encode_to_vec(&Packet::PubRel(PubAck::new(pid(1))), v)[0], 0x62);
    let sub = Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        subscriptions: vec![Subscription { topic_filter: "a".into(), options: SubscriptionOptions::default() }],
    };
    assert_eq!(encode_to_vec(&Packet::Subscribe(sub), v)[0], 0x82);
    let unsub = Unsubscribe { packet_id: pid(1), user_properties: vec![], topic_filters: vec!["a".into()] };
    assert_eq!(encode_to_vec(&Packet::Unsubscribe(unsub), v)[0], 0xA2);
}

/// v5 section 3.4.2.1: success and no properties is the 2-byte short form.
#[test]
fn v5_puback_success_without_properties_is_two_bytes() {
    let bytes = encode_to_vec(&Packet::PubAck(PubAck::new(pid(5))), ProtocolVersion::V5);
    assert_eq!(bytes, [0x40, 0x02, 0x00, 0x05]);
}

/// v5 section 3.4.2.1: a reason code without properties omits the property length.
#[test]
fn v5_puback_with_reason_code_and_no_properties_omits_property_length() {
    let ack = PubAck { reason_code: ReasonCode::NoMatchingSubscribers, ..PubAck::new(pid(5)) };
    let bytes = encode_to_vec(&Packet::PubAck(ack.clone()), ProtocolVersion::V5);
    assert_eq!(bytes, [0x40, 0x03, 0x00, 0x05, 0x10]);
    // The long form (explicit empty property length) decodes the same.
    assert_eq!(decode_one(&[0x40, 0x04, 0x00, 0x05, 0x10, 0x00], ProtocolVersion::V5).unwrap(), Packet::PubAck(ack));
}

/// v5 section 3.14.2.1: DISCONNECT with Normal disconnection and no
/// properties has remaining length 0; the longer forms decode the same.
#[test]
fn v5_normal_disconnect_is_two_bytes_and_long_forms_decode() {
    let normal = Packet::Disconnect(Disconnect::default());
    assert_eq!(encode_to_vec(&normal, ProtocolVersion::V5), [0xE0, 0x00]);
    assert_eq!(decode_one(&[0xE0, 0x01, 0x00], ProtocolVersion::V5).unwrap(), normal);
    assert_eq!(decode_one(&[0xE0, 0x02, 0x00, 0x00], ProtocolVersion::V5).unwrap(), normal);
}

/// v5 section 3.15.2.1: AUTH with Success and no properties may be empty.
#[test]
fn v5_empty_auth_is_success() {
    assert_eq!(decode_one(&[0xF0, 0x00], ProtocolVersion::V5).unwrap(), Packet::Auth(Auth::default()));
    assert_eq!(encode_to_vec(&Packet::Auth(Auth::default()), ProtocolVersion::V5), [0xF0, 0x00]);
}

/// 3.x DISCONNECT and UNSUBACK carry nothing v5-specific.
#[test]
fn v3_disconnect_and_unsuback_drop_v5_fields() {
    let d = Disconnect { reason_code: ReasonCode::ServerBusy, ..Disconnect::default() };
    assert_eq!(encode_to_vec(&Packet::Disconnect(d), ProtocolVersion::V3_1_1), [0xE0, 0x00]);
    let u =
        UnsubAck { packet_id: pid(3), properties: AckProperties::default(), reason_codes: vec![ReasonCode::Success] };
    assert_eq!(encode_to_vec(&Packet::UnsubAck(u), ProtocolVersion::V3_1_1), [0xB0, 0x02, 0x00, 0x03]);
}

/// Decoding shares the input buffer: payload and topic point into it.
#[test]
fn decoded_payload_and_topic_share_the_input_buffer() {
    let mut buf = BytesMut::from(&[0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i', b'!'][..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1024).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
    assert_eq!(p.payload.as_ptr() as usize, base + 7);
}
