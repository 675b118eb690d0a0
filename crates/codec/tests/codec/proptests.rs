//! Property tests: arbitrary packets round-trip, arbitrary bytes never
//! panic, and the decoder copes with any split of the input.

use bytes::{Bytes, BytesMut};
use midge_codec::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::support::{NO_LIMIT, encode_to_vec};

const MAX_VARINT: u32 = 268_435_455;

// Reason codes each packet may carry (v5 section 2.4).
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B,
    0x9C, 0x9D, 0x9F,
];
const V3_CONNACK_CODES: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
const V3_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn code(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(|b| ReasonCode::from_u8(b).expect("a reason code"))
}

/// Any string without U+0000 (which MQTT forbids).
fn string() -> impl Strategy<Value = String> {
    "[^\\x00]{0,10}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 é$/_-]{1,12}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((string(), string()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).expect("non-zero"))
}

fn subscription_identifier() -> impl Strategy<Value = u32> {
    1..=MAX_VARINT
}

fn ack_properties(v5: bool) -> BoxedStrategy<AckProperties> {
    if !v5 {
        return Just(AckProperties::default()).boxed();
    }
    (option::of(string()), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties { reason_string, user_properties })
        .boxed()
}

prop_compose! {
    fn connect_properties()(
        session_expiry_interval in option::of(any::<u32>()),
        receive_maximum in option::of(1..=u16::MAX),
        maximum_packet_size in option::of(1..=u32::MAX),
        topic_alias_maximum in option::of(any::<u16>()),
        request_response_information in option::of(any::<bool>()),
        request_problem_information in option::of(any::<bool>()),
        user_properties in user_properties(),
        authentication_method in option::of(string()),
        authentication_data in option::of(binary()),
    ) -> ConnectProperties {
        ConnectProperties {
            session_expiry_interval,
            receive_maximum,
            maximum_packet_size,
            topic_alias_maximum,
            request_response_information,
            request_problem_information,
            user_properties,
            // Authentication data needs a method.
            authentication_method: if authentication_data.is_some() {
                Some(authentication_method.unwrap_or_default())
            } else {
                authentication_method
            },
            authentication_data,
        }
    }
}

prop_compose! {
    fn will_properties()(
        will_delay_interval in option::of(any::<u32>()),
        payload_format_indicator in option::of(0..=1u8),
        message_expiry_interval in option::of(any::<u32>()),
        content_type in option::of(string()),
        response_topic in option::of(topic_name()),
        correlation_data in option::of(binary()),
        user_properties in user_properties(),
    ) -> WillProperties {
        WillProperties {
            will_delay_interval,
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        }
    }
}

fn will(v5: bool) -> impl Strategy<Value = Will> {
    let properties = if v5 { will_properties().boxed() } else { Just(WillProperties::default()).boxed() };
    (topic_name(), binary(), qos(), any::<bool>(), properties).prop_map(|(topic, payload, qos, retain, properties)| {
        Will { topic: topic.into(), payload, qos, retain, properties }
    })
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let properties = if v5 { connect_properties().boxed() } else { Just(ConnectProperties::default()).boxed() };
    (
        any::<bool>(),
        any::<u16>(),
        properties,
        string(),
        option::of(will(v5)),
        option::of(string()),
        option::of(binary()),
    )
        .prop_map(move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
            // 3.x needs a user name with a password [MQTT-3.1.2-22].
            let username = if !v5 && password.is_some() && username.is_none() { Some(String::new()) } else { username };
            Packet::Connect(Box::new(Connect {
                protocol_version: version,
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
            }))
        })
}

prop_compose! {
    fn connack_properties()(
        a in (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            option::of(any::<bool>()),
            option::of(1..=u32::MAX),
            option::of(string()),
            option::of(any::<u16>()),
            option::of(string()),
            user_properties(),
        ),
        b in (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            option::of(string()),
            option::of(string()),
            option::of(string()),
            option::of(binary()),
        ),
    ) -> ConnAckProperties {
        let (authentication_method, authentication_data) = match (b.6, b.7) {
            (None, Some(data)) => (Some(String::new()), Some(data)),
            (method, data) => (method, data),
        };
        ConnAckProperties {
            session_expiry_interval: a.0,
            receive_maximum: a.1,
            maximum_qos: a.2,
            retain_available: a.3,
            maximum_packet_size: a.4,
            assigned_client_identifier: a.5,
            topic_alias_maximum: a.6,
            reason_string: a.7,
            user_properties: a.8,
            wildcard_subscription_available: b.0,
            subscription_identifiers_available: b.1,
            shared_subscription_available: b.2,
            server_keep_alive: b.3,
            response_information: b.4,
            server_reference: b.5,
            authentication_method,
            authentication_data,
        }
    }
}

fn connack(v5: bool) -> impl Strategy<Value = Packet> {
    let codes = if v5 { CONNACK_CODES } else { V3_CONNACK_CODES };
    let properties = if v5 { connack_properties().boxed() } else { Just(ConnAckProperties::default()).boxed() };
    (any::<bool>(), code(codes), properties).prop_map(|(session_present, reason_code, properties)| {
        Packet::ConnAck(ConnAck { session_present, reason_code, properties })
    })
}

prop_compose! {
    fn publish_properties()(
        payload_format_indicator in option::of(0..=1u8),
        message_expiry_interval in option::of(any::<u32>()),
        topic_alias in option::of(1..=u16::MAX),
        response_topic in option::of(topic_name()),
        correlation_data in option::of(binary()),
        user_properties in user_properties(),
        subscription_identifiers in vec(subscription_identifier(), 0..3),
        content_type in option::of(string()),
    ) -> PublishProperties {
        PublishProperties {
            payload_format_indicator,
            message_expiry_interval,
            topic_alias,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers,
            content_type,
        }
    }
}

fn publish(v5: bool) -> impl Strategy<Value = Packet> {
    let properties = if v5 { publish_properties().boxed() } else { Just(PublishProperties::default()).boxed() };
    (any::<bool>(), qos(), any::<bool>(), topic_name(), any::<bool>(), packet_id(), properties, binary()).prop_map(
        move |(dup, qos, retain, topic, empty_topic, id, properties, payload)| {
            let has_id = qos != QoS::AtMostOnce;
            // v5 may send an empty topic name with a topic alias.
            let empty = v5 && empty_topic && properties.topic_alias.is_some();
            Packet::Publish(Publish {
                dup: dup && has_id,
                qos,
                retain,
                topic: if empty { MqttStr::default() } else { topic.into() },
                packet_id: has_id.then_some(id),
                properties,
                payload,
            })
        },
    )
}

fn pub_ack(v5: bool) -> impl Strategy<Value = Packet> {
    let kind = 0..4usize;
    (kind, packet_id(), 0..usize::MAX, ack_properties(v5)).prop_map(move |(kind, packet_id, pick, properties)| {
        let codes = if kind < 2 { PUBACK_CODES } else { PUBREL_CODES };
        let reason_code = if v5 {
            ReasonCode::from_u8(codes[pick % codes.len()]).expect("a reason code")
        } else {
            ReasonCode::Success
        };
        let ack = PubAck { packet_id, reason_code, properties };
        match kind {
            0 => Packet::PubAck(ack),
            1 => Packet::PubRec(ack),
            2 => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        }
    })
}

fn subscription(v5: bool) -> impl Strategy<Value = Subscription> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (string(), qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(
        move |(topic_filter, qos, no_local, retain_as_published, retain_handling)| Subscription {
            topic_filter,
            options: if v5 {
                SubscriptionOptions { qos, no_local, retain_as_published, retain_handling }
            } else {
                SubscriptionOptions { qos, ..SubscriptionOptions::default() }
            },
        },
    )
}

fn subscribe(v5: bool) -> impl Strategy<Value = Packet> {
    let properties = if v5 {
        (option::of(subscription_identifier()), user_properties())
            .prop_map(|(subscription_identifier, user_properties)| SubscribeProperties {
                subscription_identifier,
                user_properties,
            })
            .boxed()
    } else {
        Just(SubscribeProperties::default()).boxed()
    };
    (packet_id(), properties, vec(subscription(v5), 1..4)).prop_map(|(packet_id, properties, subscriptions)| {
        Packet::Subscribe(Subscribe { packet_id, properties, subscriptions })
    })
}

fn suback(v5: bool) -> impl Strategy<Value = Packet> {
    let codes = if v5 { SUBACK_CODES } else { V3_SUBACK_CODES };
    (packet_id(), ack_properties(v5), vec(code(codes), 0..5)).prop_map(|(packet_id, properties, reason_codes)| {
        Packet::SubAck(SubAck { packet_id, properties, reason_codes })
    })
}

fn unsubscribe(v5: bool) -> impl Strategy<Value = Packet> {
    let user_properties = if v5 { user_properties().boxed() } else { Just(vec![]).boxed() };
    (packet_id(), user_properties, vec(string(), 1..4)).prop_map(|(packet_id, user_properties, topic_filters)| {
        Packet::Unsubscribe(Unsubscribe { packet_id, user_properties, topic_filters })
    })
}

fn unsuback(v5: bool) -> impl Strategy<Value = Packet> {
    let codes = vec(code(UNSUBACK_CODES), 0..5);
    let codes = if v5 { codes.boxed() } else { Just(vec![]).boxed() };
    (packet_id(), ack_properties(v5), codes).prop_map(|(packet_id, properties, reason_codes)| {
        Packet::UnsubAck(UnsubAck { packet_id, properties, reason_codes })
    })
}

fn disconnect(v5: bool) -> BoxedStrategy<Packet> {
    if !v5 {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    let properties = (option::of(any::<u32>()), option::of(string()), user_properties(), option::of(string()))
        .prop_map(|(session_expiry_interval, reason_string, user_properties, server_reference)| DisconnectProperties {
            session_expiry_interval,
            reason_string,
            user_properties,
            server_reference,
        });
    (code(DISCONNECT_CODES), properties)
        .prop_map(|(reason_code, properties)| Packet::Disconnect(Disconnect { reason_code, properties }))
        .boxed()
}

fn auth() -> impl Strategy<Value = Packet> {
    let properties = (option::of(string()), option::of(binary()), option::of(string()), user_properties()).prop_map(
        |(method, authentication_data, reason_string, user_properties)| AuthProperties {
            authentication_method: if authentication_data.is_some() {
                Some(method.unwrap_or_default())
            } else {
                method
            },
            authentication_data,
            reason_string,
            user_properties,
        },
    );
    (code(AUTH_CODES), properties).prop_map(|(reason_code, properties)| Packet::Auth(Auth { reason_code, properties }))
}

/// Any packet `version` can carry, with only the fields it carries.
fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let common = prop_oneof![
        connect(version),
        connack(v5),
        publish(v5),
        pub_ack(v5),
        subscribe(v5),
        suback(v5),
        unsubscribe(v5),
        unsuback(v5),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v5),
    ];
    if v5 { prop_oneof![10 => common, 1 => auth()].boxed() } else { common.boxed() }
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V3_1), Just(ProtocolVersion::V3_1_1), Just(ProtocolVersion::V5)]
}

/// A version and a sequence of packets for it.
fn stream() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..6)))
}

/// Decodes every packet in `buf`, failing on an error.
fn decode_all(buf: &mut BytesMut, version: ProtocolVersion, out: &mut Vec<Packet>) -> Result<(), TestCaseError> {
    while let Some(p) = decode(buf, version, NO_LIMIT).map_err(|e| TestCaseError::fail(e.to_string()))? {
        out.push(p);
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_v5_packet_round_trips(p in packet(ProtocolVersion::V5)) {
        let bytes = encode_to_vec(&p, ProtocolVersion::V5);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, ProtocolVersion::V5, NO_LIMIT), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_v311_packet_round_trips(p in packet(ProtocolVersion::V3_1_1)) {
        let bytes = encode_to_vec(&p, ProtocolVersion::V3_1_1);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, ProtocolVersion::V3_1_1, NO_LIMIT), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_v31_packet_round_trips(p in packet(ProtocolVersion::V3_1)) {
        let bytes = encode_to_vec(&p, ProtocolVersion::V3_1);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, ProtocolVersion::V3_1, NO_LIMIT), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64), v in version(), max in any::<u32>()) {
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        match decode(&mut buf, v, max) {
            Ok(None) => prop_assert_eq!(buf.len(), before),
            Ok(Some(p)) => {
                // Whatever decodes re-encodes to something that decodes the same.
                let again = encode_to_vec(&p, v);
                let mut again = BytesMut::from(&again[..]);
                prop_assert_eq!(decode(&mut again, v, NO_LIMIT), Ok(Some(p)));
            }
            Err(e) => { let _ = e.reason_code(); }
        }
    }

    /// Valid packets with some bytes replaced reach the deep parts of the decoder.
    #[test]
    fn corrupted_valid_packets_never_panic(
        (v, p) in version().prop_flat_map(|v| (Just(v), packet(v))),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode_to_vec(&p, v);
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf, v, NO_LIMIT) {}
    }

    #[test]
    fn every_proper_prefix_of_a_packet_needs_more_bytes(
        (v, p) in version().prop_flat_map(|v| (Just(v), packet(v))),
    ) {
        let bytes = encode_to_vec(&p, v);
        for end in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..end]);
            prop_assert_eq!(decode(&mut buf, v, NO_LIMIT), Ok(None), "prefix of {} bytes", end);
            prop_assert_eq!(buf.len(), end);
        }
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same_packets(
        (v, packets) in stream(),
        split in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        for p in &packets {
            bytes.extend(encode_to_vec(p, v));
        }
        let split = split.index(bytes.len() + 1);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        buf.extend_from_slice(&bytes[..split]);
        decode_all(&mut buf, v, &mut decoded)?;
        buf.extend_from_slice(&bytes[split..]);
        decode_all(&mut buf, v, &mut decoded)?;
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn a_stream_fed_byte_by_byte_decodes_the_same_packets((v, packets) in stream()) {
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for p in &packets {
            for byte in encode_to_vec(p, v) {
                buf.extend_from_slice(&[byte]);
                decode_all(&mut buf, v, &mut decoded)?;
            }
        }
        prop_assert_eq!(decoded, packets);
    }

    /// Only the fixed header has arrived; the limit is enforced anyway and
    /// nothing is reserved for the declared body.
    #[test]
    fn oversized_remaining_length_is_refused_before_the_body_arrives(
        remaining in 1..=MAX_VARINT,
        first in prop::sample::select(&[0x10u8, 0x30, 0x32, 0x82, 0xE0][..]),
        v in version(),
    ) {
        let mut header = vec![first];
        let mut n = remaining;
        loop {
            let byte = (n % 128) as u8;
            n /= 128;
            if n == 0 { header.push(byte); break; }
            header.push(byte | 0x80);
        }
        let size = remaining + header.len() as u32;
        let max = size - 1;
        let mut buf = BytesMut::from(&header[..]);
        prop_assert_eq!(decode(&mut buf, v, max), Err(DecodeError::PacketTooLarge { size, max }));
        prop_assert!(buf.capacity() < 64);
    }

    #[test]
    fn encoded_len_matches_the_bytes_written((v, p) in version().prop_flat_map(|v| (Just(v), packet(v)))) {
        let mut buf = BytesMut::new();
        encode(&p, v, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), encoded_len(&p, v));
        if let Packet::Publish(publish) = &p {
            prop_assert_eq!(buf.len(), publish_encoded_len(publish, v));
        }
    }
}

#[test]
fn generated_packets_cover_every_packet_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    let strategy = packet(ProtocolVersion::V5);
    for _ in 0..2000 {
        seen.insert(strategy.new_tree(&mut runner).unwrap().current().name());
    }
    assert_eq!(seen.len(), 15, "{seen:?}");
}
