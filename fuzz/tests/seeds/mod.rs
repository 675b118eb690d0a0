//! The seed corpus: one valid packet of each type in each version for the
//! codec; for the broker, inputs picked from a fixed pseudo-random stream
//! for what they reach.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use midge_codec::*;
use midge_fuzz::Features;

const VERSIONS: [(ProtocolVersion, &str); 3] =
    [(ProtocolVersion::V3_1, "v31"), (ProtocolVersion::V3_1_1, "v311"), (ProtocolVersion::V5, "v5")];

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or(PacketId::MIN)
}

fn user_properties(v5: bool) -> Vec<UserProperty> {
    if v5 { vec![("k".into(), "v".into()), ("k".into(), "é".into())] } else { Vec::new() }
}

fn ack_properties(v5: bool) -> AckProperties {
    if v5 {
        AckProperties { reason_string: Some("why".into()), user_properties: user_properties(v5) }
    } else {
        AckProperties::default()
    }
}

fn connect(version: ProtocolVersion, full: bool) -> Packet {
    let v5 = version.is_v5();
    let mut c = Connect { protocol_version: version, clean_start: true, client_id: "c0".into(), ..Connect::default() };
    if full {
        c.keep_alive = 60;
        c.will = Some(Will {
            topic: "a/will".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(60),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("a/reply".into()),
                    correlation_data: Some(Bytes::from_static(&[1, 2])),
                    user_properties: user_properties(v5),
                }
            } else {
                WillProperties::default()
            },
        });
        c.username = Some("user".into());
        c.password = Some(Bytes::from_static(b"pw"));
        if v5 {
            c.properties = ConnectProperties {
                session_expiry_interval: Some(300),
                receive_maximum: Some(10),
                maximum_packet_size: Some(1 << 16),
                topic_alias_maximum: Some(4),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user_properties(v5),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            };
        }
    }
    Packet::Connect(Box::new(c))
}

fn packets(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version.is_v5();
    let publish = |qos: QoS| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: qos == QoS::AtLeastOnce,
            topic: "a/b".into(),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(7)),
            properties: if v5 {
                PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(30),
                    topic_alias: Some(1),
                    response_topic: Some("a/reply".into()),
                    correlation_data: Some(Bytes::from_static(b"id")),
                    user_properties: user_properties(v5),
                    subscription_identifiers: vec![3],
                    content_type: Some("text/plain".into()),
                }
            } else {
                PublishProperties::default()
            },
            payload: Bytes::from_static(b"hello"),
        })
    };
    let ack = |code: ReasonCode| PubAck {
        packet_id: pid(7),
        reason_code: if v5 { code } else { ReasonCode::Success },
        properties: ack_properties(v5),
    };
    let mut out = vec![
        ("connect-minimal", connect(version, false)),
        ("connect-will-credentials", connect(version, true)),
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: if v5 {
                    ConnAckProperties {
                        session_expiry_interval: Some(300),
                        receive_maximum: Some(20),
                        maximum_qos: Some(QoS::AtLeastOnce),
                        retain_available: Some(true),
                        maximum_packet_size: Some(1 << 20),
                        assigned_client_identifier: Some("auto-1".into()),
                        topic_alias_maximum: Some(10),
                        reason_string: Some("ok".into()),
                        user_properties: user_properties(v5),
                        wildcard_subscription_available: Some(true),
                        subscription_identifiers_available: Some(true),
                        shared_subscription_available: Some(true),
                        server_keep_alive: Some(30),
                        response_information: Some("a/".into()),
                        server_reference: Some("other".into()),
                        authentication_method: Some("SCRAM-SHA-1".into()),
                        authentication_data: Some(Bytes::from_static(b"server-first")),
                    }
                } else {
                    ConnAckProperties::default()
                },
            }),
        ),
        ("publish-qos0", publish(QoS::AtMostOnce)),
        ("publish-qos1", publish(QoS::AtLeastOnce)),
        ("publish-qos2", publish(QoS::ExactlyOnce)),
        ("puback", Packet::PubAck(ack(ReasonCode::NoMatchingSubscribers))),
        ("pubrec", Packet::PubRec(ack(ReasonCode::Success))),
        ("pubrel", Packet::PubRel(ack(ReasonCode::PacketIdentifierNotFound))),
        ("pubcomp", Packet::PubComp(ack(ReasonCode::Success))),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: pid(2),
                properties: SubscribeProperties {
                    subscription_identifier: v5.then_some(3),
                    user_properties: user_properties(v5),
                },
                subscriptions: vec![
                    Subscription {
                        topic_filter: "a/+/#".into(),
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: v5,
                            retain_as_published: v5,
                            retain_handling: if v5 {
                                RetainHandling::SendIfNew
                            } else {
                                RetainHandling::SendAtSubscribe
                            },
                        },
                    },
                    Subscription { topic_filter: "$share/g/b".into(), options: SubscriptionOptions::default() },
                ],
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: pid(2),
                properties: ack_properties(v5),
                reason_codes: vec![ReasonCode::GrantedQoS2, ReasonCode::UnspecifiedError],
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(3),
                user_properties: user_properties(v5),
                topic_filters: vec!["a/+/#".into(), "b".into()],
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(3),
                properties: ack_properties(v5),
                reason_codes: if v5 {
                    vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
                } else {
                    Vec::new()
                },
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(if v5 {
                Disconnect {
                    reason_code: ReasonCode::DisconnectWithWillMessage,
                    properties: DisconnectProperties {
                        session_expiry_interval: Some(0),
                        reason_string: Some("bye".into()),
                        user_properties: user_properties(v5),
                        server_reference: None,
                    },
                }
            } else {
                Disconnect::default()
            }),
        ),
    ];
    if v5 {
        out.push((
            "auth",
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"client-final")),
                    reason_string: Some("more".into()),
                    user_properties: user_properties(v5),
                },
            }),
        ));
    }
    out
}

/// `(file name, bytes)`: every packet type in every version, and a whole
/// session's stream per version.
pub(crate) fn codec() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (version, tag) in VERSIONS {
        let mut stream = BytesMut::new();
        for (name, packet) in packets(version) {
            let mut buf = BytesMut::new();
            encode(&packet, version, &mut buf).unwrap_or_else(|e| panic!("seed {tag}-{name} does not encode: {e}"));
            stream.extend_from_slice(&buf);
            out.push((format!("{tag}-{name}"), buf.to_vec()));
        }
        out.push((format!("{tag}-stream-of-every-type"), stream.to_vec()));
    }
    out
}

/// Broker inputs from a fixed stream of pseudo-random bytes, each kept
/// when it reaches a broker answer (packet type, reason code, version)
/// that the ones before did not.
pub(crate) fn broker() -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(21);
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    for _ in 0..3000 {
        let input: Vec<u8> = (0..rng.usize(64..1024)).map(|_| rng.u8(..)).collect();
        let mut features = Features::default();
        midge_fuzz::broker::broker_with(&input, &mut features);
        let before = seen.len();
        seen.extend(features.iter());
        if seen.len() > before {
            kept.push(input);
        }
        if kept.len() == 48 {
            break;
        }
    }
    kept
}
