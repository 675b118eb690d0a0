//! Every packet type round-trips through every version that has it.

use bytes::Bytes;
use midge_codec::*;

use crate::support::{assert_round_trip, pid};

const V3: [ProtocolVersion; 2] = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1];
const ALL: [ProtocolVersion; 3] = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

fn user_properties() -> Vec<UserProperty> {
    vec![("region".into(), "eu".into()), ("region".into(), "us".into()), (String::new(), "é".into())]
}

fn ack_properties() -> AckProperties {
    AckProperties { reason_string: Some("because".into()), user_properties: user_properties() }
}

fn connect(version: ProtocolVersion) -> Connect {
    let v5 = version.is_v5();
    Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 60,
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(20),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user_properties(),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"\x00\x01client-first")),
            }
        } else {
            ConnectProperties::default()
        },
        client_id: "client-1".into(),
        will: Some(Will {
            topic: "clients/client-1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(120),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("clients/client-1/reply".into()),
                    correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
                    user_properties: user_properties(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"\xffsecret\x00")),
    }
}

#[test]
fn connect_with_will_and_credentials_round_trips_in_every_version() {
    for version in ALL {
        assert_round_trip(&Packet::Connect(Box::new(connect(version))), version);
    }
}

#[test]
fn minimal_connect_round_trips_in_every_version() {
    for version in ALL {
        let c = Connect { protocol_version: version, ..Connect::default() };
        assert_round_trip(&Packet::Connect(Box::new(c)), version);
    }
}

#[test]
fn v5_connect_with_password_and_no_username_round_trips() {
    let c = Connect {
        protocol_version: ProtocolVersion::V5,
        password: Some(Bytes::from_static(b"token")),
        ..Connect::default()
    };
    assert_round_trip(&Packet::Connect(Box::new(c)), ProtocolVersion::V5);
}

#[test]
fn connect_is_decoded_with_its_own_version_whatever_the_connection_version() {
    for version in ALL {
        let packet = Packet::Connect(Box::new(connect(version)));
        let bytes = crate::support::encode_to_vec(&packet, version);
        for connection_version in ALL {
            assert_eq!(crate::support::decode_one(&bytes, connection_version).unwrap(), packet);
        }
    }
}

#[test]
fn connack_round_trips_every_v3_return_code() {
    for version in V3 {
        for code in [
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ] {
            let ack = ConnAck { session_present: code == ReasonCode::Success, reason_code: code, ..ConnAck::default() };
            assert_round_trip(&Packet::ConnAck(ack), version);
        }
    }
}

#[test]
fn v5_connack_with_every_property_round_trips() {
    let ack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(0xFFFF_FFFF),
            receive_maximum: Some(100),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(65536),
            assigned_client_identifier: Some("auto-1234".into()),
            topic_alias_maximum: Some(16),
            reason_string: Some("welcome".into()),
            user_properties: user_properties(),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(false),
            server_keep_alive: Some(30),
            response_information: Some("responses/".into()),
            server_reference: Some("other.example:1883".into()),
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"server-final")),
        },
    };
    assert_round_trip(&Packet::ConnAck(ack), ProtocolVersion::V5);
    let refused = ConnAck { reason_code: ReasonCode::Banned, ..ConnAck::default() };
    assert_round_trip(&Packet::ConnAck(refused), ProtocolVersion::V5);
}

fn publish(qos: QoS, v5: bool) -> Publish {
    Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: true,
        topic: "sensors/kitchen/temperature".into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(0xBEEF)),
        properties: if v5 {
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(3),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"req-17")),
                user_properties: user_properties(),
                subscription_identifiers: vec![1, 268_435_455, 128],
                content_type: Some("application/json".into()),
            }
        } else {
            PublishProperties::default()
        },
        payload: Bytes::from_static(b"{\"celsius\": 21.5}"),
    }
}

#[test]
fn publish_round_trips_at_every_qos_in_every_version() {
    for version in ALL {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_round_trip(&Packet::Publish(publish(qos, version.is_v5())), version);
        }
    }
}

#[test]
fn publish_with_empty_payload_round_trips() {
    for version in ALL {
        let p = Publish { topic: "a".into(), ..Publish::default() };
        assert_round_trip(&Packet::Publish(p), version);
    }
}

#[test]
fn v5_publish_with_topic_alias_and_empty_topic_round_trips() {
    let p = Publish {
        topic: "".into(),
        properties: PublishProperties { topic_alias: Some(7), ..Default::default() },
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    };
    assert_round_trip(&Packet::Publish(p), ProtocolVersion::V5);
}

#[test]
fn encode_publish_and_encode_agree() {
    for version in ALL {
        let p = publish(QoS::ExactlyOnce, version.is_v5());
        let mut a = bytes::BytesMut::new();
        let mut b = bytes::BytesMut::new();
        encode_publish(&p, version, &mut a).unwrap();
        encode(&Packet::Publish(p.clone()), version, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), publish_encoded_len(&p, version));
    }
}

#[test]
fn publish_acks_round_trip_in_every_version() {
    let wrap: [fn(PubAck) -> Packet; 4] = [Packet::PubAck, Packet::PubRec, Packet::PubRel, Packet::PubComp];
    for version in ALL {
        for w in wrap {
            assert_round_trip(&w(PubAck::new(pid(1))), version);
            assert_round_trip(&w(PubAck::new(pid(65535))), version);
        }
    }
    for (w, code) in [
        (Packet::PubAck as fn(PubAck) -> Packet, ReasonCode::NoMatchingSubscribers),
        (Packet::PubRec, ReasonCode::QuotaExceeded),
        (Packet::PubRel, ReasonCode::PacketIdentifierNotFound),
        (Packet::PubComp, ReasonCode::PacketIdentifierNotFound),
    ] {
        let with_code = PubAck { reason_code: code, ..PubAck::new(pid(9)) };
        assert_round_trip(&w(with_code.clone()), ProtocolVersion::V5);
        let with_props = PubAck { properties: ack_properties(), ..with_code };
        assert_round_trip(&w(with_props), ProtocolVersion::V5);
        let success_with_props = PubAck { properties: ack_properties(), ..PubAck::new(pid(10)) };
        assert_round_trip(&w(success_with_props), ProtocolVersion::V5);
    }
}

fn subscribe(v5: bool) -> Subscribe {
    let options = |qos, no_local, retain_as_published, retain_handling| SubscriptionOptions {
        qos,
        no_local: v5 && no_local,
        retain_as_published: v5 && retain_as_published,
        retain_handling: if v5 { retain_handling } else { RetainHandling::SendAtSubscribe },
    };
    Subscribe {
        packet_id: pid(10),
        properties: if v5 {
            SubscribeProperties { subscription_identifier: Some(99_999), user_properties: user_properties() }
        } else {
            SubscribeProperties::default()
        },
        subscriptions: vec![
            Subscription {
                topic_filter: "sport/tennis/#".into(),
                options: options(QoS::AtMostOnce, true, false, RetainHandling::SendIfNew),
            },
            Subscription {
                topic_filter: "$share/group/+/x".into(),
                options: options(QoS::AtLeastOnce, false, true, RetainHandling::DoNotSend),
            },
            Subscription {
                topic_filter: "a".into(),
                options: options(QoS::ExactlyOnce, true, true, RetainHandling::SendAtSubscribe),
            },
        ],
    }
}

#[test]
fn subscribe_round_trips_in_every_version() {
    for version in ALL {
        assert_round_trip(&Packet::Subscribe(subscribe(version.is_v5())), version);
    }
}

#[test]
fn suback_round_trips_in_every_version() {
    for version in ALL {
        let ack = SubAck {
            packet_id: pid(10),
            properties: AckProperties::default(),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS0,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
        };
        assert_round_trip(&Packet::SubAck(ack), version);
    }
    let ack = SubAck {
        packet_id: pid(10),
        properties: ack_properties(),
        reason_codes: vec![ReasonCode::TopicFilterInvalid, ReasonCode::SharedSubscriptionsNotSupported],
    };
    assert_round_trip(&Packet::SubAck(ack), ProtocolVersion::V5);
}

#[test]
fn unsubscribe_round_trips_in_every_version() {
    for version in ALL {
        let unsub = Unsubscribe {
            packet_id: pid(77),
            user_properties: if version.is_v5() { user_properties() } else { vec![] },
            topic_filters: vec!["a/b".into(), "$share/g/c/#".into()],
        };
        assert_round_trip(&Packet::Unsubscribe(unsub), version);
    }
}

#[test]
fn unsuback_round_trips_in_every_version() {
    for version in V3 {
        let ack = UnsubAck { packet_id: pid(77), properties: AckProperties::default(), reason_codes: vec![] };
        assert_round_trip(&Packet::UnsubAck(ack), version);
    }
    let ack = UnsubAck {
        packet_id: pid(77),
        properties: ack_properties(),
        reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    };
    assert_round_trip(&Packet::UnsubAck(ack), ProtocolVersion::V5);
}

#[test]
fn pings_round_trip_in_every_version() {
    for version in ALL {
        assert_round_trip(&Packet::PingReq, version);
        assert_round_trip(&Packet::PingResp, version);
    }
}

#[test]
fn disconnect_round_trips_in_every_version() {
    for version in ALL {
        assert_round_trip(&Packet::Disconnect(Disconnect::default()), version);
    }
    let with_code = Disconnect { reason_code: ReasonCode::DisconnectWithWillMessage, ..Disconnect::default() };
    assert_round_trip(&Packet::Disconnect(with_code), ProtocolVersion::V5);
    let with_props = Disconnect {
        reason_code: ReasonCode::ServerMoved,
        properties: DisconnectProperties {
            session_expiry_interval: Some(10),
            reason_string: Some("moving".into()),
            user_properties: user_properties(),
            server_reference: Some("other:1883".into()),
        },
    };
    assert_round_trip(&Packet::Disconnect(with_props), ProtocolVersion::V5);
}

#[test]
fn auth_round_trips_in_v5() {
    assert_round_trip(&Packet::Auth(Auth::default()), ProtocolVersion::V5);
    let auth = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"client-final")),
            reason_string: Some("more".into()),
            user_properties: user_properties(),
        },
    };
    assert_round_trip(&Packet::Auth(auth), ProtocolVersion::V5);
    let bare = Auth { reason_code: ReasonCode::ReAuthenticate, ..Auth::default() };
    assert_round_trip(&Packet::Auth(bare), ProtocolVersion::V5);
}
