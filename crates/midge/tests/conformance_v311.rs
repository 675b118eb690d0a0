//! MQTT 3.1.1 conformance of `midge serve`, spoken in raw bytes.
//!
//! Each test runs its own broker on an ephemeral port, drives it with
//! [`RawClient`], and is named for the behaviour it checks; its doc comment cites
//! the normative statement (`[MQTT-x.y.z-n]`) of the OASIS MQTT 3.1.1 standard, or
//! the section where the rule is not a numbered statement. Tests in
//! [`midge_contract`] check midge's own documented choices where the
//! specification leaves the server free.
//!
//! Nothing here decodes with `midge-codec`: the harness frames and parses the
//! broker's bytes itself, so a codec bug cannot hide behind its own decoder.
//!
//! Run with `cargo test -p midge --test conformance_v311`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use midge_test_support::build::{self, Connect, Publish as PublishPacket};
use midge_test_support::{Broker, ConnAck, Publish, RawClient, packet_type};

/// A fresh broker with default settings.
fn midge() -> Broker {
    Broker::start(env!("CARGO_BIN_EXE_midge"), &[])
}

/// A fresh broker with extra `serve` flags.
fn midge_with(args: &[&str]) -> Broker {
    Broker::start(env!("CARGO_BIN_EXE_midge"), args)
}

/// A connected clean-session client.
fn client(broker: &Broker, client_id: &str) -> RawClient {
    RawClient::connected(broker.addr(), client_id)
}

/// A connected clean-session client subscribed to `filters`, each granted as asked.
fn subscriber(broker: &Broker, client_id: &str, filters: &[(&str, u8)]) -> RawClient {
    let mut client = client(broker, client_id);
    let granted = client.subscribe(1, filters);
    let asked: Vec<u8> = filters.iter().map(|(_, qos)| *qos).collect();
    assert_eq!(granted, asked, "SUBACK return codes for {filters:?}");
    client
}

/// Connects `client_id` with CleanSession 0; returns the client and its CONNACK.
fn persistent(broker: &Broker, client_id: &str) -> (RawClient, ConnAck) {
    let connect = Connect::new(client_id).clean_session(false);
    let (client, connack) = RawClient::handshake(broker.addr(), &connect);
    (client.named(client_id), connack)
}

/// Receives `n` PUBLISH packets and acknowledges each as a well-behaved client
/// does: PUBACK at QoS 1; PUBREC at QoS 2, then PUBCOMP for the broker's PUBREL.
/// Returns once `n` have arrived and no QoS 2 exchange is left half-done.
fn receive(client: &mut RawClient, n: usize) -> Vec<Publish> {
    let mut received = Vec::new();
    let mut awaiting_pubrel = BTreeSet::new();
    while received.len() < n || !awaiting_pubrel.is_empty() {
        let packet = client.expect_packet();
        match packet.packet_type() {
            packet_type::PUBLISH => {
                let publish = packet.publish().unwrap_or_else(|err| panic!("{err}"));
                match publish.qos {
                    1 => client.send(&build::puback(publish.id())),
                    2 => {
                        client.send(&build::pubrec(publish.id()));
                        awaiting_pubrel.insert(publish.id());
                    }
                    _ => {}
                }
                received.push(publish);
            }
            packet_type::PUBREL => {
                let id = packet.pubrel().unwrap_or_else(|err| panic!("{err}"));
                assert!(awaiting_pubrel.remove(&id), "PUBREL {id} for no PUBREC we sent");
                client.send(&build::pubcomp(id));
            }
            _ => panic!("expected PUBLISH or PUBREL, got {packet:?}; so far {received:?}"),
        }
    }
    assert!(received.len() == n, "expected {n} PUBLISH packets, got {received:?}");
    received
}

/// The payloads of `publishes`, as text.
fn payloads(publishes: &[Publish]) -> Vec<String> {
    publishes.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect()
}

/// Topics of `publishes`, sorted: for sets of messages whose relative order the
/// specification does not fix (different topics).
fn topics(publishes: &[Publish]) -> BTreeSet<String> {
    publishes.iter().map(|p| p.topic.clone()).collect()
}

/// Proves that nothing published to `topic` before now is still on its way to
/// `subscriber`: publishes a probe from another client and expects it to be the
/// very next packet. Messages on one topic from one client arrive in order
/// [MQTT-4.6.0-6], and anything routed before the probe was queued ahead of it.
fn expect_next_is_probe(broker: &Broker, subscriber: &mut RawClient, topic: &str) {
    let mut prober = client(broker, "prober");
    prober.publish_qos1(topic, "probe", 1);
    let next = subscriber.expect_publish();
    assert_eq!(
        (next.topic.as_str(), next.payload.as_slice()),
        (topic, b"probe".as_slice()),
        "expected only the probe, got {next:?}"
    );
    if next.qos == 1 {
        subscriber.send(&build::puback(next.id()));
    }
    prober.disconnect();
}

mod connect {
    use super::*;

    /// [MQTT-3.1.0-1] the first packet a client sends must be CONNECT; anything
    /// else closes the connection without a CONNACK, and is not acted on.
    #[test]
    fn a_first_packet_other_than_connect_closes_the_connection() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("early/#", 0)]);
        let firsts = [
            build::pingreq(),
            build::subscribe(1, &[("early/x", 0)]),
            build::publish("early/x", "not connected"),
            build::disconnect(),
        ];
        for first in firsts {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&first);
            raw.expect_closed_soon();
        }
        observer.expect_no_packet();
    }

    /// [MQTT-3.1.0-2] a second CONNECT on a connection is a protocol violation
    /// and the server disconnects the client.
    #[test]
    fn a_second_connect_closes_the_connection() {
        let broker = midge();
        let mut twice = client(&broker, "twice");
        twice.send(&Connect::new("twice").build());
        twice.expect_closed_soon();
    }

    /// [MQTT-3.1.2-1], [MQTT-3.1.4-1] a protocol name other than "MQTT" (or
    /// "MQIsdp" for 3.1) is not processed as MQTT: the connection closes without a
    /// CONNACK.
    #[test]
    fn a_wrong_protocol_name_closes_without_connack() {
        let broker = midge();
        for name in [&b"MQTX"[..], b"mqtt", b"MQT", b"MQTTT"] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&Connect::new("badname").protocol(name, 4).build());
            raw.expect_closed_soon();
        }
    }

    /// [MQTT-3.1.2-2], [MQTT-3.2.2-4], [MQTT-3.2.2-5] an unsupported protocol level
    /// gets CONNACK 0x01 (unacceptable protocol version) with session present 0,
    /// then the connection closes.
    #[test]
    fn an_unsupported_protocol_level_gets_connack_0x01_then_close() {
        let broker = midge();
        for level in [0, 1, 2, 6, 7, 255] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&Connect::new("badlevel").protocol("MQTT", level).build());
            let connack = raw.expect_connack();
            assert_eq!(connack, ConnAck { session_present: false, return_code: 0x01 }, "level {level}");
            raw.expect_closed_soon();
        }
    }

    /// [MQTT-3.1.4-5] after refusing a CONNECT the server does not process anything
    /// the client sent after it: a retained PUBLISH right behind a refused CONNECT
    /// is never stored.
    #[test]
    fn data_after_a_refused_connect_is_not_processed() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        let mut bytes = Connect::new("refused").protocol("MQTT", 6).build();
        bytes.extend(PublishPacket::new("refused/retained", "must not exist").retain().build());
        raw.send(&bytes);
        assert_eq!(raw.expect_connack().return_code, 0x01);
        raw.expect_closed_soon();

        let mut late = client(&broker, "late");
        assert_eq!(late.subscribe(1, &[("refused/#", 0)]), [0]);
        expect_next_is_probe(&broker, &mut late, "refused/retained");
    }

    /// [MQTT-3.1.2-3] the reserved bit 0 of the connect flags must be zero; if it
    /// is not, the server disconnects the client, without a CONNACK [MQTT-3.1.4-1].
    #[test]
    fn a_set_reserved_connect_flag_closes_without_connack() {
        let broker = midge();
        for flags in [0x01, 0x03] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&Connect::new("reserved").connect_flags(flags).build());
            raw.expect_closed_soon();
        }
    }

    /// [MQTT-3.1.2-11], [MQTT-3.1.2-13] with the Will Flag 0, Will QoS must be 0:
    /// otherwise the CONNECT is malformed and the connection closes without a
    /// CONNACK [MQTT-3.1.4-1].
    #[test]
    fn will_qos_without_the_will_flag_closes_without_connack() {
        let broker = midge();
        for will_qos_bits in [0x08, 0x10] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&Connect::new("willqos").connect_flags(0x02 | will_qos_bits).build());
            raw.expect_closed_soon();
        }
    }

    /// [MQTT-3.1.2-11], [MQTT-3.1.2-15] with the Will Flag 0, Will Retain must be 0.
    #[test]
    fn will_retain_without_the_will_flag_closes_without_connack() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        raw.send(&Connect::new("willretain").connect_flags(0x02 | 0x20).build());
        raw.expect_closed_soon();
    }

    /// [MQTT-3.1.2-14] Will QoS must not be 3.
    #[test]
    fn will_qos_3_closes_without_connack() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        let connect = Connect::new("willqos3").will("will/t", "x", 0, false);
        raw.send(&connect.connect_flags(0x02 | 0x04 | 0x18).build());
        raw.expect_closed_soon();
    }

    /// [MQTT-3.1.2-9] with the Will Flag 1 the Will Topic and Will Message must be
    /// in the payload; a CONNECT without them is malformed.
    #[test]
    fn the_will_flag_without_a_will_in_the_payload_closes_without_connack() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        raw.send(&Connect::new("nowill").connect_flags(0x02 | 0x04).build());
        raw.expect_closed_soon();
    }

    /// [MQTT-3.1.2-22] with the User Name Flag 0 the Password Flag must be 0.
    #[test]
    fn a_password_without_a_user_name_closes_without_connack() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        raw.send(&Connect::new("pwonly").password("secret").build());
        raw.expect_closed_soon();
    }

    /// [MQTT-3.1.2-19], [MQTT-3.1.2-21] a flag announcing a user name or password
    /// that the payload does not hold makes the CONNECT malformed.
    #[test]
    fn a_user_name_or_password_flag_without_the_field_closes_without_connack() {
        let broker = midge();
        let missing_user = Connect::new("nouser").connect_flags(0x02 | 0x80);
        let missing_password = Connect::new("nopw").username("user").connect_flags(0x02 | 0x80 | 0x40);
        for connect in [missing_user, missing_password] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&connect.build());
            raw.expect_closed_soon();
        }
    }

    /// [MQTT-3.1.3-4], [MQTT-1.5.3-1] a client id that is not well-formed UTF-8
    /// makes the CONNECT malformed: closed without a CONNACK [MQTT-3.1.4-1].
    #[test]
    fn a_client_id_that_is_not_utf8_closes_without_connack() {
        let broker = midge();
        for client_id in [&[0xC3, 0x28][..], &[0xED, 0xA0, 0x80], &[b'a', 0xFF]] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(&Connect::new(client_id).build());
            raw.expect_closed_soon();
        }
    }

    /// [MQTT-3.1.3-5] a client id of 1 to 23 characters from [0-9a-zA-Z] is accepted.
    #[test]
    fn a_23_character_alphanumeric_client_id_is_accepted() {
        let broker = midge();
        let mut longest = client(&broker, "abcdefghijklmnopqrstuvW");
        longest.ping();
        let mut shortest = client(&broker, "0");
        shortest.ping();
    }

    /// [MQTT-3.1.3-6] an empty client id with CleanSession 1 is accepted, and the
    /// server gives it a unique id: two such clients do not take each other over.
    #[test]
    fn an_empty_client_id_with_clean_session_is_accepted_with_a_unique_id() {
        let broker = midge();
        let (mut first, connack) = RawClient::handshake(broker.addr(), &Connect::new(""));
        assert!(!connack.session_present);
        let (mut second, _) = RawClient::handshake(broker.addr(), &Connect::new(""));
        first.ping();
        second.ping();
    }

    /// [MQTT-3.1.3-8], [MQTT-3.2.2-4], [MQTT-3.2.2-5] an empty client id with
    /// CleanSession 0 gets CONNACK 0x02 (identifier rejected), session present 0,
    /// then the connection closes.
    #[test]
    fn an_empty_client_id_with_a_persistent_session_gets_connack_0x02_then_close() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        raw.send(&Connect::new("").clean_session(false).build());
        assert_eq!(raw.expect_connack(), ConnAck { session_present: false, return_code: 0x02 });
        raw.expect_closed_soon();
    }

    /// MQTT 3.1 (protocol name "MQIsdp", level 3; section 3.1.2.1 and the MQTT 3.1
    /// specification) connects and can subscribe and publish.
    #[test]
    fn an_mqtt_3_1_client_connects_and_exchanges_messages() {
        let broker = midge();
        let connect = Connect::new("old").mqtt31();
        let (mut old, connack) = RawClient::handshake(broker.addr(), &connect);
        assert_eq!(connack.return_code, 0);
        assert_eq!(old.subscribe(3, &[("v31/+", 1)]), [1]);

        let mut modern = client(&broker, "modern");
        modern.publish_qos1("v31/from-311", "hi", 1);
        let delivered = receive(&mut old, 1).remove(0);
        assert_eq!((delivered.topic.as_str(), delivered.payload.as_slice()), ("v31/from-311", &b"hi"[..]));

        let mut listener = subscriber(&broker, "listener", &[("v31/#", 1)]);
        old.publish_qos1("v31/to/311", "hello from 3.1", 4);
        let delivered = receive(&mut listener, 1).remove(0);
        assert_eq!(delivered.payload, b"hello from 3.1");
    }

    /// [MQTT-3.2.2-1] a CleanSession 1 connection has session present 0, even when a
    /// stored session existed for the client id (it is discarded, [MQTT-3.1.2-6]).
    #[test]
    fn a_clean_session_connack_has_session_present_0() {
        let broker = midge();
        let (mut stored, _) = persistent(&broker, "sp");
        stored.subscribe(1, &[("sp/t", 1)]);
        stored.disconnect();
        let (_clean, connack) = RawClient::handshake(broker.addr(), &Connect::new("sp"));
        assert_eq!(connack, ConnAck { session_present: false, return_code: 0 });
    }

    /// [MQTT-3.2.2-3], [MQTT-3.2.2-2] CleanSession 0 gets session present 0 the first
    /// time and 1 when the stored session is resumed.
    #[test]
    fn a_resumed_session_connack_has_session_present_1() {
        let broker = midge();
        let (first, connack) = persistent(&broker, "resume");
        assert_eq!(connack, ConnAck { session_present: false, return_code: 0 });
        first.disconnect();
        let (second, connack) = persistent(&broker, "resume");
        assert_eq!(connack, ConnAck { session_present: true, return_code: 0 });
        second.disconnect();
        let (_third, connack) = persistent(&broker, "resume");
        assert!(connack.session_present, "the session is still stored the second time");
    }

    /// [MQTT-3.1.4-2] a CONNECT with the client id of a connected client disconnects
    /// the existing client; the new connection is accepted.
    #[test]
    fn a_connect_with_a_connected_client_id_closes_the_older_connection() {
        let broker = midge();
        let mut older = client(&broker, "twin");
        let mut newer = client(&broker, "twin");
        older.expect_closed_soon();
        newer.ping();
    }

    /// [MQTT-3.14.1-1] DISCONNECT's reserved fixed-header bits must be zero;
    /// otherwise the server disconnects the client.
    #[test]
    fn a_disconnect_with_reserved_bits_set_closes_the_connection() {
        let broker = midge();
        let mut bad = client(&broker, "baddisc");
        bad.send(&[0xE1, 0x00]);
        bad.expect_closed_soon();
    }

    /// [MQTT-3.2.0-1] the first packet from the server is CONNACK, even when the
    /// client sends more packets right behind its CONNECT in the same segment.
    #[test]
    fn connack_is_the_first_packet_even_when_packets_are_pipelined() {
        let broker = midge();
        let mut raw = RawClient::connect(broker.addr());
        let mut bytes = Connect::new("pipelined").build();
        bytes.extend(build::subscribe(5, &[("pipe/t", 0)]));
        bytes.extend(build::publish("pipe/t", "to myself"));
        bytes.extend(build::pingreq());
        raw.send(&bytes);
        assert_eq!(raw.expect_connack().return_code, 0);
        assert_eq!(raw.expect_suback().return_codes, [0]);
        assert_eq!(raw.expect_publish().payload, b"to myself");
        raw.expect_pingresp();
    }
}

mod keep_alive {
    use super::*;

    /// [MQTT-3.12.4-1] the server answers every PINGREQ with a PINGRESP.
    #[test]
    fn pingreq_gets_pingresp() {
        let broker = midge();
        let mut pinger = client(&broker, "pinger");
        for _ in 0..3 {
            pinger.ping();
        }
    }

    /// [MQTT-3.1.2-24] with keep alive 1 s and silence, the server disconnects the
    /// client after one and a half times the keep alive (1.5 s; accepted between
    /// 1.0 s and 2.5 s to allow for a busy machine), and publishes its Will
    /// [MQTT-3.1.2-8].
    #[test]
    fn silence_past_one_and_a_half_keep_alives_closes_and_publishes_the_will() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("will/ka", 1)]);
        let connect = Connect::new("sleepy").keep_alive(1).will("will/ka", "gone quiet", 1, false);
        let (mut sleepy, _) = RawClient::handshake(broker.addr(), &connect);
        let connected = Instant::now();
        sleepy.expect_closed(Duration::from_secs(5));
        let after = connected.elapsed();
        assert!(
            after >= Duration::from_millis(1000) && after <= Duration::from_millis(2500),
            "closed {after:?} after CONNACK; expected about 1.5 s"
        );
        let will = receive(&mut observer, 1).remove(0);
        assert_eq!((will.topic.as_str(), will.payload.as_slice()), ("will/ka", &b"gone quiet"[..]));
    }

    /// [MQTT-3.1.2-24] the limit is one and a half keep alives, not one: a client
    /// with keep alive 2 s whose next packet comes after 2.25 s is still served.
    #[test]
    fn a_packet_within_one_and_a_half_keep_alives_keeps_the_connection() {
        let broker = midge();
        let (mut slow, _) = RawClient::handshake(broker.addr(), &Connect::new("slow").keep_alive(2));
        // Pacing the client, not waiting for the broker: this is the client being late.
        std::thread::sleep(Duration::from_millis(2250));
        slow.ping();
    }

    /// [MQTT-3.1.2-23], [MQTT-3.1.2-24] any control packet resets the keep-alive
    /// timer: a client pinging every 0.5 s with keep alive 1 s stays connected for
    /// well past 1.5 s.
    #[test]
    fn regular_pings_keep_the_connection_open() {
        let broker = midge();
        let (mut steady, _) = RawClient::handshake(broker.addr(), &Connect::new("steady").keep_alive(1));
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(500));
            steady.ping();
        }
    }
}

mod subscribe {
    use super::*;

    /// [MQTT-3.8.4-1], [MQTT-3.8.4-2] the server answers SUBSCRIBE with a SUBACK of
    /// the same packet id.
    #[test]
    fn suback_carries_the_subscribe_packet_id() {
        let broker = midge();
        let mut sub = client(&broker, "sub");
        for packet_id in [1, 0x1234, 0xFFFF] {
            sub.send(&build::subscribe(packet_id, &[("ids/t", 0)]));
            assert_eq!(sub.expect_suback().packet_id, packet_id);
        }
    }

    /// [MQTT-3.8.4-4], [MQTT-3.8.4-5], [MQTT-3.9.3-1] a SUBSCRIBE with several
    /// filters gets one SUBACK with a return code per filter, in order, each the
    /// granted QoS (midge grants what is asked, up to 2).
    #[test]
    fn suback_has_one_return_code_per_filter_in_order() {
        let broker = midge();
        let mut sub = client(&broker, "multi");
        let codes = sub.subscribe(9, &[("m/a", 2), ("m/b", 0), ("m/+/c", 1), ("#", 2), ("m/b", 1)]);
        assert_eq!(codes, [2, 0, 1, 2, 1]);
    }

    /// [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1], [MQTT-3.8.4-5] a filter with a
    /// misplaced wildcard (or an empty one) is invalid: 3.1.1 lets the server
    /// answer 0x80 for it or close the connection. When it answers, the other
    /// filters of the packet are still granted and the connection goes on.
    #[test]
    fn an_invalid_filter_gets_0x80_or_closes_the_connection() {
        let broker = midge();
        for invalid in ["a/#/b", "a+", "#a", "a/b#", "+a/b", "a/+b", "##", ""] {
            let mut sub = client(&broker, "invalid");
            sub.send(&build::subscribe(2, &[("ok/1", 1), (invalid, 1), ("ok/2", 0)]));
            match sub.closed_within(Duration::from_secs(5)) {
                Ok(true) => continue,
                Ok(false) => panic!("no SUBACK and no close for filter {invalid:?}"),
                Err(packet) => {
                    let suback = packet.suback().unwrap_or_else(|err| panic!("{err}"));
                    assert_eq!(suback.packet_id, 2);
                    assert_eq!(suback.return_codes, [1, 0x80, 0], "filter {invalid:?}");
                    sub.ping();
                }
            }
        }
    }

    /// [MQTT-3.8.1-1] SUBSCRIBE's fixed-header flags must be 0010; any other value
    /// is malformed and closes the connection.
    #[test]
    fn subscribe_flags_other_than_0010_close_the_connection() {
        let broker = midge();
        for first_byte in [0x80, 0x81, 0x83, 0x8A] {
            let mut sub = client(&broker, "flags");
            let mut packet = build::subscribe(1, &[("f/t", 0)]);
            packet[0] = first_byte;
            sub.send(&packet);
            sub.expect_closed_soon();
        }
    }

    /// [MQTT-3.8.3-3] a SUBSCRIBE with no topic filter is a protocol violation.
    #[test]
    fn subscribe_without_a_filter_closes_the_connection() {
        let broker = midge();
        let mut sub = client(&broker, "empty");
        sub.send(&build::subscribe(1, &[]));
        sub.expect_closed_soon();
    }

    /// [MQTT-3.8.3-4] a requested QoS of 3, or reserved bits set in the byte that
    /// carries it, makes the SUBSCRIBE malformed.
    #[test]
    fn subscribe_with_qos_3_or_reserved_bits_closes_the_connection() {
        let broker = midge();
        for requested in [3, 0x04, 0x80 | 1, 0x10] {
            let mut sub = client(&broker, "qos3");
            sub.send(&build::subscribe(1, &[("q/t", requested)]));
            sub.expect_closed_soon();
        }
    }

    /// [MQTT-2.3.1-1] a SUBSCRIBE must carry a non-zero packet id; 0 is a protocol
    /// violation and closes the connection [MQTT-4.8.0-1].
    #[test]
    fn subscribe_with_packet_id_0_closes_the_connection() {
        let broker = midge();
        let mut sub = client(&broker, "zero");
        sub.send(&build::subscribe(0, &[("z/t", 0)]));
        sub.expect_closed_soon();
    }

    /// [MQTT-3.8.3-1], [MQTT-1.5.3-1] a topic filter that is not well-formed UTF-8
    /// closes the connection.
    #[test]
    fn subscribe_with_a_filter_that_is_not_utf8_closes_the_connection() {
        let broker = midge();
        let mut sub = client(&broker, "utf8");
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend(build::string([b'a', b'/', 0xC3, 0x28]));
        body.push(0);
        sub.send(&build::packet(0x82, &body));
        sub.expect_closed_soon();
    }

    /// [MQTT-4.7.3-2], [MQTT-1.5.3-2] a topic filter containing U+0000 closes the
    /// connection.
    #[test]
    fn subscribe_with_a_null_character_closes_the_connection() {
        let broker = midge();
        let mut sub = client(&broker, "nul");
        sub.send(&build::subscribe(1, &[("a/\0/b", 0)]));
        sub.expect_closed_soon();
    }
}

mod unsubscribe {
    use super::*;

    /// [MQTT-3.10.4-4], [MQTT-3.10.4-2] UNSUBSCRIBE gets an UNSUBACK with the same
    /// packet id, and messages stop arriving for the removed filter.
    #[test]
    fn unsuback_carries_the_packet_id_and_delivery_stops() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("u/t", 1)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos1("u/t", "before", 1);
        assert_eq!(payloads(&receive(&mut sub, 1)), ["before"]);

        sub.send(&build::unsubscribe(0x4321, &["u/t"]));
        assert_eq!(sub.expect_unsuback(), 0x4321);
        publisher.publish_qos1("u/t", "after", 2);
        publisher.ping();
        sub.expect_no_packet();
    }

    /// [MQTT-3.10.4-5] the server answers UNSUBSCRIBE with an UNSUBACK even when no
    /// subscription was removed.
    #[test]
    fn unsuback_is_sent_when_nothing_matched() {
        let broker = midge();
        let mut sub = client(&broker, "nothing");
        sub.send(&build::unsubscribe(7, &["never/subscribed"]));
        assert_eq!(sub.expect_unsuback(), 7);
    }

    /// [MQTT-3.10.4-1] filters are compared character by character, not matched:
    /// unsubscribing `w/b` leaves a subscription to `w/+` in place.
    #[test]
    fn unsubscribe_removes_only_an_identical_filter() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("w/+", 0)]);
        sub.send(&build::unsubscribe(2, &["w/b"]));
        assert_eq!(sub.expect_unsuback(), 2);
        let mut publisher = client(&broker, "pub");
        publisher.publish("w/b", "still here");
        assert_eq!(sub.expect_publish().payload, b"still here");
    }

    /// [MQTT-3.10.4-6] an UNSUBSCRIBE with several filters removes each of them and
    /// gets a single UNSUBACK.
    #[test]
    fn unsubscribe_with_several_filters_gets_one_unsuback() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("x/1", 0), ("x/2", 0), ("x/3", 0)]);
        sub.send(&build::unsubscribe(3, &["x/1", "x/2"]));
        assert_eq!(sub.expect_unsuback(), 3);
        let mut publisher = client(&broker, "pub");
        for topic in ["x/1", "x/2", "x/3"] {
            publisher.publish(topic, topic);
        }
        assert_eq!(sub.expect_publish().topic, "x/3");
        sub.expect_no_packet();
    }

    /// [MQTT-3.10.1-1] UNSUBSCRIBE's fixed-header flags must be 0010; any other
    /// value is malformed and closes the connection.
    #[test]
    fn unsubscribe_flags_other_than_0010_close_the_connection() {
        let broker = midge();
        for first_byte in [0xA0, 0xA3, 0xAA] {
            let mut sub = client(&broker, "flags");
            let mut packet = build::unsubscribe(1, &["f/t"]);
            packet[0] = first_byte;
            sub.send(&packet);
            sub.expect_closed_soon();
        }
    }

    /// [MQTT-3.10.3-2] an UNSUBSCRIBE with no topic filter is a protocol violation.
    #[test]
    fn unsubscribe_without_a_filter_closes_the_connection() {
        let broker = midge();
        let mut sub = client(&broker, "empty");
        sub.send(&build::unsubscribe(1, &[]));
        sub.expect_closed_soon();
    }
}

mod topics {
    use super::*;

    /// Section 4.7.1.2: `a/#` matches `a` itself and every level below it, and
    /// nothing else.
    #[test]
    fn multi_level_wildcard_matches_the_parent_and_all_descendants() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("sport/#", 0)]);
        let mut publisher = client(&broker, "pub");
        for topic in ["sport", "sport/tennis", "sport/tennis/player1", "sport/", "sports", "other/sport"] {
            publisher.publish(topic, topic);
        }
        let got = topics(&receive(&mut sub, 4));
        let expected = ["sport", "sport/tennis", "sport/tennis/player1", "sport/"];
        assert_eq!(got, expected.map(String::from).into());
        sub.expect_no_packet();
    }

    /// Section 4.7.1.3: `+` matches exactly one level, which may be empty.
    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        let broker = midge();
        let mut plus = subscriber(&broker, "plus", &[("sport/+", 0)]);
        let mut both = subscriber(&broker, "both", &[("+/+", 0)]);
        let mut lone = subscriber(&broker, "lone", &[("+", 0)]);
        let mut publisher = client(&broker, "pub");
        for topic in ["sport", "sport/", "sport/tennis", "sport/tennis/player1", "/finance"] {
            publisher.publish(topic, topic);
        }
        let got = topics(&receive(&mut plus, 2));
        assert_eq!(got, ["sport/", "sport/tennis"].map(String::from).into());
        let got = topics(&receive(&mut both, 3));
        assert_eq!(got, ["sport/", "sport/tennis", "/finance"].map(String::from).into());
        assert_eq!(lone.expect_publish().topic, "sport");
        for sub in [&mut plus, &mut both, &mut lone] {
            sub.expect_no_packet();
        }
    }

    /// [MQTT-4.7.3-4] matching does no normalisation: topics are case sensitive,
    /// and `a//b` is not `a/b`.
    #[test]
    fn topic_matching_is_exact_and_case_sensitive() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("Case/Topic", 0), ("a/b", 0)]);
        let mut publisher = client(&broker, "pub");
        for topic in ["case/topic", "CASE/TOPIC", "a//b", "a/b/", "Case/Topic"] {
            publisher.publish(topic, topic);
        }
        assert_eq!(sub.expect_publish().topic, "Case/Topic");
        sub.expect_no_packet();
    }

    /// [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting
    /// with `$`: `#` and `+/broker/#` receive no `$SYS` message, while `$SYS/#`
    /// does.
    #[test]
    fn wildcards_do_not_match_dollar_topics() {
        let broker = midge_with(&["--sys-interval", "1"]);
        let mut wild = subscriber(&broker, "wild", &[("#", 0), ("+/broker/#", 0), ("+/#", 0)]);
        let mut sys = subscriber(&broker, "sys", &[("$SYS/#", 0)]);
        // Wait for a periodic $SYS publish (RETAIN 0: routed after both subscribed).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no periodic $SYS publish within 10 s (--sys-interval 1)");
            let publish = sys.expect_publish();
            assert!(publish.topic.starts_with("$SYS/"), "{publish:?}");
            if !publish.retain {
                break;
            }
        }
        expect_next_is_probe(&broker, &mut wild, "probe/after-sys");
    }

    /// `$SYS/broker/version` (a Mosquitto convention, section 4.7.2) is published
    /// as a retained message: a new explicit subscription gets it at once with
    /// RETAIN 1 [MQTT-3.3.1-6], [MQTT-3.3.1-8].
    #[test]
    fn sys_broker_version_is_retained() {
        let broker = midge_with(&["--sys-interval", "1"]);
        let mut first = subscriber(&broker, "first", &[("$SYS/broker/version", 0)]);
        let seen = first.expect_publish();
        assert_eq!(seen.topic, "$SYS/broker/version");
        assert!(!seen.payload.is_empty(), "empty version");

        let mut second = subscriber(&broker, "second", &[("$SYS/broker/version", 0)]);
        let retained = second.expect_publish();
        assert_eq!(retained.topic, "$SYS/broker/version");
        assert!(retained.retain, "a new subscription gets the retained version with RETAIN 1");
        assert_eq!(retained.payload, seen.payload);
    }

    /// [MQTT-3.3.2-2], [MQTT-4.7.1-1] a PUBLISH topic name must not contain
    /// wildcards: the connection closes and the message goes nowhere.
    #[test]
    fn publishing_to_a_wildcard_topic_closes_the_connection() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("#", 0)]);
        for topic in ["a/+", "a/#", "#", "+", "a/b+", "a#"] {
            let mut publisher = client(&broker, "wildpub");
            publisher.send(&build::publish(topic, "x"));
            publisher.expect_closed_soon();
        }
        observer.expect_no_packet();
    }

    /// [MQTT-4.7.3-1] a topic name must be at least one character long: an empty
    /// one closes the connection.
    #[test]
    fn publishing_to_an_empty_topic_closes_the_connection() {
        let broker = midge();
        let mut publisher = client(&broker, "emptypub");
        publisher.send(&build::publish("", "x"));
        publisher.expect_closed_soon();
    }

    /// [MQTT-4.7.3-2], [MQTT-1.5.3-2] a topic name containing U+0000 closes the
    /// connection.
    #[test]
    fn publishing_to_a_topic_with_a_null_character_closes_the_connection() {
        let broker = midge();
        let mut publisher = client(&broker, "nulpub");
        publisher.send(&build::publish("a/\0", "x"));
        publisher.expect_closed_soon();
    }

    /// [MQTT-3.3.2-1], [MQTT-1.5.3-1] a topic name that is not well-formed UTF-8
    /// (here: a truncated sequence, an encoded surrogate, an overlong `/`) closes
    /// the connection.
    #[test]
    fn publishing_to_a_topic_that_is_not_utf8_closes_the_connection() {
        let broker = midge();
        for topic in [&[b'a', 0xC3, 0x28][..], &[0xED, 0xA0, 0x80], &[b'a', 0xC0, 0xAF, b'b']] {
            let mut publisher = client(&broker, "badutf8");
            publisher.send(&build::publish(topic, "x"));
            publisher.expect_closed_soon();
        }
    }
}

mod qos {
    use super::*;

    /// [MQTT-3.3.4-1] (Table 3.4) a QoS 0 PUBLISH gets no answer, and is delivered
    /// at QoS 0 with DUP 0 and no packet id [MQTT-3.3.1-2], [MQTT-2.3.1-5].
    #[test]
    fn a_qos0_publish_is_not_acknowledged() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("q0", 2)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish("q0", "fire and forget");
        let delivered = sub.expect_publish();
        assert_eq!((delivered.qos, delivered.dup, delivered.packet_id), (0, false, None));
        publisher.expect_no_packet();
    }

    /// [MQTT-4.3.2-2], [MQTT-2.3.1-6] a QoS 1 PUBLISH gets a PUBACK with its packet id.
    #[test]
    fn a_qos1_publish_gets_puback_with_its_packet_id() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        for packet_id in [1, 0xBEEF, 0xFFFF] {
            publisher.send(&PublishPacket::new("q1", "x").qos(1, packet_id).build());
            assert_eq!(publisher.expect_puback(), packet_id);
        }
    }

    /// [MQTT-4.3.3-2] a QoS 2 PUBLISH gets PUBREC with its packet id, and the PUBREL
    /// gets PUBCOMP with it; the message is delivered once.
    #[test]
    fn a_qos2_publish_goes_through_pubrec_pubrel_pubcomp() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("q2", 2)]);
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("q2", "exactly once").qos(2, 0x0A0B).build());
        assert_eq!(publisher.expect_pubrec(), 0x0A0B);
        publisher.send(&build::pubrel(0x0A0B));
        assert_eq!(publisher.expect_pubcomp(), 0x0A0B);
        let delivered = receive(&mut sub, 1);
        assert_eq!(payloads(&delivered), ["exactly once"]);
        assert_eq!(delivered[0].qos, 2);
        sub.expect_no_packet();
    }

    /// [MQTT-4.3.3-2] until the PUBREL, a re-sent QoS 2 PUBLISH with the same packet
    /// id is answered with PUBREC again but not delivered again.
    #[test]
    fn a_qos2_publish_resent_before_pubrel_is_delivered_once() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("q2/dup", 2)]);
        let mut publisher = client(&broker, "pub");
        let packet = PublishPacket::new("q2/dup", "once").qos(2, 7);
        publisher.send(&packet.clone().build());
        assert_eq!(publisher.expect_pubrec(), 7);
        publisher.send(&packet.clone().dup().build());
        assert_eq!(publisher.expect_pubrec(), 7);
        publisher.send(&packet.dup().build());
        assert_eq!(publisher.expect_pubrec(), 7);
        publisher.send(&build::pubrel(7));
        assert_eq!(publisher.expect_pubcomp(), 7);
        assert_eq!(payloads(&receive(&mut sub, 1)), ["once"]);
        expect_next_is_probe(&broker, &mut sub, "q2/dup");
    }

    /// [MQTT-4.3.3-2] after PUBCOMP, a PUBLISH reusing the packet id is a new message.
    #[test]
    fn a_qos2_packet_id_reused_after_pubcomp_is_a_new_message() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("q2/reuse", 2)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos2("q2/reuse", "first", 3);
        publisher.publish_qos2("q2/reuse", "second", 3);
        assert_eq!(payloads(&receive(&mut sub, 2)), ["first", "second"]);
    }

    /// [MQTT-4.3.2-2] after PUBACK, a PUBLISH reusing the packet id is a new message,
    /// whatever its DUP flag.
    #[test]
    fn a_qos1_packet_id_reused_after_puback_is_a_new_message() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("q1/reuse", 1)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos1("q1/reuse", "first", 3);
        publisher.send(&PublishPacket::new("q1/reuse", "second").qos(1, 3).dup().build());
        assert_eq!(publisher.expect_puback(), 3);
        assert_eq!(payloads(&receive(&mut sub, 2)), ["first", "second"]);
    }

    /// [MQTT-3.8.4-6] a message is delivered at the lower of its published QoS and
    /// the subscription's granted QoS.
    #[test]
    fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("min/0", 0), ("min/1", 1), ("min/2", 2)]);
        let mut publisher = client(&broker, "pub");
        let mut packet_id = 1;
        for topic in ["min/0", "min/1", "min/2"] {
            publisher.publish(topic, "0");
            publisher.publish_qos1(topic, "1", packet_id);
            publisher.publish_qos2(topic, "2", packet_id + 1);
            packet_id += 2;
        }
        let mut got: Vec<(String, String, u8)> = receive(&mut sub, 9)
            .into_iter()
            .map(|p| (p.topic, String::from_utf8_lossy(&p.payload).into_owned(), p.qos))
            .collect();
        got.sort();
        let mut expected = Vec::new();
        for (sub_qos, topic) in ["min/0", "min/1", "min/2"].into_iter().enumerate() {
            for pub_qos in 0..3u8 {
                expected.push((topic.to_owned(), pub_qos.to_string(), pub_qos.min(sub_qos as u8)));
            }
        }
        assert_eq!(got, expected);
        sub.expect_no_packet();
    }

    /// [MQTT-2.3.1-1], [MQTT-2.3.1-2], [MQTT-2.3.1-4] packet ids of the server's
    /// QoS 1 and 2 PUBLISH packets are non-zero and unique among those in flight.
    #[test]
    fn outbound_packet_ids_are_nonzero_and_unique_while_in_flight() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("ids/1", 1), ("ids/2", 2)]);
        let mut publisher = client(&broker, "pub");
        for i in 0..5u16 {
            publisher.publish_qos1("ids/1", format!("q1-{i}"), 100 + i);
            publisher.publish_qos2("ids/2", format!("q2-{i}"), 200 + i);
        }
        // Receive all ten without acknowledging any: all are in flight at once.
        let mut ids = BTreeSet::new();
        for _ in 0..10 {
            let publish = sub.expect_publish();
            assert!(publish.qos > 0);
            assert!(ids.insert(publish.id()), "packet id {} reused while in flight: {publish:?}", publish.id());
        }
        assert!(!ids.contains(&0));
    }

    /// [MQTT-3.3.5-1] with overlapping subscriptions, the message is delivered at
    /// the highest QoS of the matching subscriptions. (The specification also
    /// allows further copies; midge sends one, as Mosquitto 2 does.)
    #[test]
    fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("o/+", 0), ("o/#", 2), ("o/b", 1)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos2("o/b", "overlap", 1);
        let delivered = receive(&mut sub, 1);
        assert_eq!(delivered[0].qos, 2, "{delivered:?}");
        expect_next_is_probe(&broker, &mut sub, "o/b");
    }

    /// [MQTT-4.6.0-6] messages on one topic from one client are delivered in the
    /// order they were published.
    #[test]
    fn messages_on_one_topic_keep_their_order() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("order/q1", 1), ("order/q0", 0)]);
        let mut publisher = client(&broker, "pub");
        let mut sent = Vec::new();
        for i in 0..60u16 {
            publisher.send(&PublishPacket::new("order/q1", i.to_string()).qos(1, i + 1).build());
            publisher.publish("order/q0", i.to_string());
            sent.push(i.to_string());
        }
        for i in 0..60u16 {
            assert_eq!(publisher.expect_puback(), i + 1, "PUBACKs in PUBLISH order [MQTT-4.6.0-2]");
        }
        let received = receive(&mut sub, 120);
        let in_order = |topic: &str| -> Vec<String> {
            payloads(&received.iter().filter(|p| p.topic == topic).cloned().collect::<Vec<_>>())
        };
        assert_eq!(in_order("order/q1"), sent);
        assert_eq!(in_order("order/q0"), sent);
    }

    /// [MQTT-4.6.0-6] order, [MQTT-3.3.5-1] one copy at the highest QoS and
    /// [MQTT-3.8.4-6] the downgrade hold for messages that reach the broker in
    /// one read, on topics that change from message to message (midge queues a
    /// read's messages on one topic together). The publisher's own copies, and
    /// its PUBACKs in order [MQTT-4.6.0-2], come before the PINGRESP of the
    /// PINGREQ behind them.
    #[test]
    fn messages_in_one_write_on_changing_topics_keep_their_order_and_qos() {
        let broker = midge();
        let mut all = subscriber(&broker, "all", &[("run/#", 1)]);
        let mut overlap = subscriber(&broker, "overlap", &[("run/a", 0), ("run/+", 2)]);
        let mut publisher = subscriber(&broker, "pub", &[("run/b", 0)]);
        let plan = ["a", "a", "a", "b", "b", "a", "c", "b", "b", "b", "a"];
        // QoS 1 on even messages, else 2 on every third, else 0.
        let qos_of = |i: usize| -> u8 {
            match i {
                _ if i.is_multiple_of(2) => 1,
                _ if i.is_multiple_of(3) => 2,
                _ => 0,
            }
        };
        let mut bytes = Vec::new();
        for (i, topic) in plan.iter().enumerate() {
            let publish = PublishPacket::new(format!("run/{topic}"), i.to_string());
            let publish = match qos_of(i) {
                0 => publish,
                qos => publish.qos(qos, i as u16 + 1),
            };
            bytes.extend(publish.build());
        }
        bytes.extend(build::pingreq());
        publisher.send(&bytes);

        let acked: Vec<usize> = (0..plan.len()).filter(|&i| qos_of(i) > 0).collect();
        let mut own = Vec::new();
        let mut acks = Vec::new();
        let mut comps = 0;
        loop {
            let packet = publisher.expect_packet();
            match packet.packet_type() {
                packet_type::PUBLISH => own.push(packet.publish().unwrap_or_else(|e| panic!("{e}"))),
                packet_type::PUBACK => acks.push(packet.puback().unwrap_or_else(|e| panic!("{e}"))),
                packet_type::PUBREC => {
                    let id = packet.pubrec().unwrap_or_else(|e| panic!("{e}"));
                    acks.push(id);
                    publisher.send(&build::pubrel(id));
                }
                packet_type::PUBCOMP => comps += 1,
                packet_type::PINGRESP => break,
                _ => panic!("unexpected {packet:?}"),
            }
        }
        let qos2 = (0..plan.len()).filter(|&i| qos_of(i) == 2).count();
        while comps < qos2 {
            publisher.expect_pubcomp();
            comps += 1;
        }
        let expected_acks: Vec<u16> = acked.iter().map(|&i| i as u16 + 1).collect();
        assert_eq!(acks, expected_acks, "acknowledgements in PUBLISH order [MQTT-4.6.0-2]");
        let on = |topic: &str| -> Vec<String> {
            (0..plan.len()).filter(|&i| plan[i] == topic).map(|i| i.to_string()).collect()
        };
        assert_eq!(payloads(&own), on("b"), "the publisher's own copies, before its PINGRESP");
        assert!(own.iter().all(|p| p.qos == 0), "its run/b subscription is QoS 0: {own:?}");

        let every = receive(&mut all, plan.len());
        let all_payloads: Vec<String> = (0..plan.len()).map(|i| i.to_string()).collect();
        // Per topic [MQTT-4.6.0-6]; midge keeps one client's order across topics too.
        assert_eq!(payloads(&every), all_payloads, "one subscription, one publisher: published order");
        for p in &every {
            let i: usize = String::from_utf8_lossy(&p.payload).parse().expect("a number");
            assert_eq!(p.qos, qos_of(i).min(1), "min(published, granted 1) [MQTT-3.8.4-6]: {p:?}");
        }

        let both = receive(&mut overlap, plan.len());
        assert_eq!(payloads(&both), all_payloads, "one copy each [MQTT-3.3.5-1], in order");
        for p in &both {
            let i: usize = String::from_utf8_lossy(&p.payload).parse().expect("a number");
            assert_eq!(p.qos, qos_of(i), "highest matching grant (2), downgraded to the published: {p:?}");
        }
        // No extra copies behind: the probe is the next thing either gets.
        expect_next_is_probe(&broker, &mut all, "run/a");
        let probe = overlap.expect_publish();
        assert_eq!(probe.payload, b"probe", "{probe:?}");
    }

    /// [MQTT-3.3.1-3] the DUP flag of an incoming PUBLISH is not propagated: a
    /// first delivery to a subscriber has DUP 0.
    #[test]
    fn the_dup_flag_of_an_incoming_publish_is_not_propagated() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("dup/t", 1)]);
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("dup/t", "x").qos(1, 1).dup().build());
        assert_eq!(publisher.expect_puback(), 1);
        let delivered = sub.expect_publish();
        assert!(!delivered.dup, "{delivered:?}");
    }

    /// [MQTT-3.3.1-4] a PUBLISH with both QoS bits set closes the connection.
    #[test]
    fn a_publish_with_qos_3_closes_the_connection() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("q3/t", 0)]);
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("q3/t", "x").qos(3, 1).build());
        publisher.expect_closed_soon();
        observer.expect_no_packet();
    }

    /// [MQTT-2.3.1-1] a QoS 1 or 2 PUBLISH must carry a non-zero packet id; 0 is a
    /// protocol violation and closes the connection [MQTT-4.8.0-1].
    #[test]
    fn a_qos1_publish_with_packet_id_0_closes_the_connection() {
        let broker = midge();
        for qos in [1, 2] {
            let mut publisher = client(&broker, "pub");
            publisher.send(&PublishPacket::new("zero/id", "x").qos(qos, 0).build());
            publisher.expect_closed_soon();
        }
    }

    /// [MQTT-3.6.1-1] PUBREL's fixed-header flags must be 0010; any other value is
    /// malformed and closes the connection.
    #[test]
    fn a_pubrel_with_wrong_flags_closes_the_connection() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("rel/t", "x").qos(2, 5).build());
        assert_eq!(publisher.expect_pubrec(), 5);
        publisher.send(&build::packet(0x60, &5u16.to_be_bytes()));
        publisher.expect_closed_soon();
    }

    /// [MQTT-2.2.2-1], [MQTT-2.2.2-2] reserved fixed-header flags of PUBACK, PUBREC,
    /// PUBCOMP and PINGREQ must be 0; other values close the connection.
    #[test]
    fn acks_and_pingreq_with_reserved_flags_set_close_the_connection() {
        let broker = midge();
        for packet in
            [build::packet(0x41, &[0, 1]), build::packet(0x52, &[0, 1]), build::packet(0x72, &[0, 1]), vec![0xC1, 0]]
        {
            let mut raw = client(&broker, "flags").named(&format!("sender of {packet:02x?}"));
            raw.send(&packet);
            raw.expect_closed_soon();
        }
    }
}

mod retained {
    use super::*;

    /// [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-8], [MQTT-3.1.2-7] a retained
    /// message outlives its publisher's session and is sent to a new subscriber
    /// with RETAIN 1, at the QoS it was published with (capped by the subscription).
    #[test]
    fn a_retained_message_is_delivered_to_a_new_subscriber_with_retain_1() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("r/t", "kept").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        publisher.disconnect();

        let mut high = client(&broker, "high");
        assert_eq!(high.subscribe(1, &[("r/t", 2)]), [2]);
        let delivered = receive(&mut high, 1).remove(0);
        assert_eq!((delivered.payload.as_slice(), delivered.retain, delivered.qos), (&b"kept"[..], true, 1));

        let mut low = client(&broker, "low");
        assert_eq!(low.subscribe(1, &[("r/+", 0)]), [0]);
        let delivered = low.expect_publish();
        assert_eq!((delivered.payload.as_slice(), delivered.retain, delivered.qos), (&b"kept"[..], true, 0));
    }

    /// [MQTT-3.3.1-5], [MQTT-3.3.1-7] a newer retained message replaces the old one,
    /// a QoS 0 one included (which the server SHOULD keep; midge does).
    #[test]
    fn a_retained_message_is_replaced_by_a_newer_one() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("r/replace", "old").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        publisher.send(&PublishPacket::new("r/replace", "new").retain().build());
        publisher.ping();

        let mut sub = client(&broker, "sub");
        assert_eq!(sub.subscribe(1, &[("r/replace", 1)]), [1]);
        let delivered = sub.expect_publish();
        assert_eq!((delivered.payload.as_slice(), delivered.retain, delivered.qos), (&b"new"[..], true, 0));
        expect_next_is_probe(&broker, &mut sub, "r/replace");
    }

    /// [MQTT-3.3.1-10], [MQTT-3.3.1-11] a retained PUBLISH with an empty payload is
    /// delivered as usual to current subscribers, removes the retained message, and
    /// is not itself retained.
    #[test]
    fn an_empty_retained_publish_clears_the_retained_message() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("r/clear", "soon gone").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        let mut current = client(&broker, "current");
        current.subscribe(1, &[("r/clear", 0)]);
        assert_eq!(current.expect_publish().payload, b"soon gone");

        publisher.send(&PublishPacket::new("r/clear", "").qos(1, 2).retain().build());
        assert_eq!(publisher.expect_puback(), 2);
        let cleared = current.expect_publish();
        assert_eq!((cleared.payload.as_slice(), cleared.retain), (&b""[..], false));

        let mut late = client(&broker, "late");
        assert_eq!(late.subscribe(1, &[("r/clear", 0)]), [0]);
        expect_next_is_probe(&broker, &mut late, "r/clear");
    }

    /// [MQTT-3.3.1-9] a retained PUBLISH is delivered to already-established
    /// subscriptions with RETAIN 0.
    #[test]
    fn existing_subscribers_get_retained_publishes_with_retain_0() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("r/live", 1)]);
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("r/live", "now").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        let delivered = receive(&mut sub, 1).remove(0);
        assert!(!delivered.retain, "{delivered:?}");
    }

    /// [MQTT-3.3.1-12] a PUBLISH with RETAIN 0 neither stores nor replaces the
    /// retained message.
    #[test]
    fn a_non_retained_publish_leaves_the_retained_message_alone() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("r/keep", "retained").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        publisher.publish_qos1("r/keep", "transient", 2);
        publisher.publish_qos1("r/other", "never retained", 3);

        let mut sub = client(&broker, "sub");
        assert_eq!(sub.subscribe(1, &[("r/#", 0)]), [0]);
        let delivered = sub.expect_publish();
        assert_eq!((delivered.topic.as_str(), delivered.payload.as_slice()), ("r/keep", &b"retained"[..]));
        expect_next_is_probe(&broker, &mut sub, "r/keep");
    }

    /// [MQTT-3.3.1-6] a new wildcard subscription gets the retained message of every
    /// matching topic, and of no other.
    #[test]
    fn a_wildcard_subscription_gets_every_matching_retained_message() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        for (i, topic) in ["rw/1", "rw/2", "rw/x/3", "other/4"].into_iter().enumerate() {
            publisher.send(&PublishPacket::new(topic, topic).qos(1, i as u16 + 1).retain().build());
            assert_eq!(publisher.expect_puback(), i as u16 + 1);
        }
        let mut sub = client(&broker, "sub");
        assert_eq!(sub.subscribe(1, &[("rw/+", 0)]), [0]);
        let got = receive(&mut sub, 2);
        assert!(got.iter().all(|p| p.retain), "{got:?}");
        assert_eq!(topics(&got), ["rw/1", "rw/2"].map(String::from).into());
        expect_next_is_probe(&broker, &mut sub, "rw/probe");
    }

    /// [MQTT-3.8.4-3] subscribing again with an identical filter replaces the
    /// subscription (new QoS, one delivery per message) and re-sends the retained
    /// messages.
    #[test]
    fn subscribing_again_replaces_the_subscription_and_resends_retained() {
        let broker = midge();
        let mut publisher = client(&broker, "pub");
        publisher.send(&PublishPacket::new("r/again", "retained").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);

        let mut sub = client(&broker, "sub");
        assert_eq!(sub.subscribe(1, &[("r/again", 2)]), [2]);
        let first = receive(&mut sub, 1).remove(0);
        assert_eq!((first.retain, first.qos), (true, 1));

        assert_eq!(sub.subscribe(2, &[("r/again", 0)]), [0]);
        let resent = sub.expect_publish();
        assert_eq!((resent.payload.as_slice(), resent.retain, resent.qos), (&b"retained"[..], true, 0));

        publisher.publish_qos2("r/again", "live", 2);
        let live = sub.expect_publish();
        assert_eq!((live.payload.as_slice(), live.qos), (&b"live"[..], 0), "the replaced subscription's QoS");
        expect_next_is_probe(&broker, &mut sub, "r/again");
    }
}

mod will {
    use super::*;

    /// [MQTT-3.1.2-8], [MQTT-3.1.2-16] the Will is published, not retained, when the
    /// connection closes without DISCONNECT.
    #[test]
    fn the_will_is_published_when_the_connection_drops() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("will/drop", 0)]);
        let connect = Connect::new("mortal").will("will/drop", "dropped", 0, false);
        let (mortal, _) = RawClient::handshake(broker.addr(), &connect);
        drop(mortal);
        let will = observer.expect_publish();
        assert_eq!((will.payload.as_slice(), will.retain), (&b"dropped"[..], false));

        let mut late = client(&broker, "late");
        assert_eq!(late.subscribe(1, &[("will/drop", 0)]), [0]);
        expect_next_is_probe(&broker, &mut late, "will/drop");
    }

    /// [MQTT-3.1.2-10], [MQTT-3.14.4-3] after DISCONNECT the Will is discarded, not
    /// published.
    #[test]
    fn the_will_is_not_published_after_disconnect() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("will/polite", 0)]);
        let connect = Connect::new("polite").will("will/polite", "should not appear", 0, false);
        let (polite, _) = RawClient::handshake(broker.addr(), &connect);
        polite.disconnect();
        expect_next_is_probe(&broker, &mut observer, "will/polite");
    }

    /// [MQTT-3.1.2-17] a Will with Will Retain 1 is published as a retained message.
    #[test]
    fn a_will_with_will_retain_is_retained() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("will/retained", 0)]);
        let connect = Connect::new("mortal").will("will/retained", "last words", 1, true);
        let (mortal, _) = RawClient::handshake(broker.addr(), &connect);
        drop(mortal);
        let will = observer.expect_publish();
        assert_eq!(will.payload, b"last words");

        let mut late = client(&broker, "late");
        assert_eq!(late.subscribe(1, &[("will/retained", 1)]), [1]);
        let retained = receive(&mut late, 1).remove(0);
        assert_eq!((retained.payload.as_slice(), retained.retain, retained.qos), (&b"last words"[..], true, 1));
    }

    /// [MQTT-3.1.2-9], [MQTT-3.8.4-6] the Will is published at its Will QoS, capped
    /// by each subscription.
    #[test]
    fn the_will_is_published_at_its_will_qos() {
        let broker = midge();
        let mut high = subscriber(&broker, "high", &[("will/qos", 2)]);
        let mut low = subscriber(&broker, "low", &[("will/qos", 0)]);
        let connect = Connect::new("mortal").will("will/qos", "qos one", 1, false);
        let (mortal, _) = RawClient::handshake(broker.addr(), &connect);
        drop(mortal);
        assert_eq!(receive(&mut high, 1)[0].qos, 1);
        assert_eq!(low.expect_publish().qos, 0);
    }

    /// Section 3.1.2.5: the Will is published when the server closes the connection
    /// for a protocol error.
    #[test]
    fn the_will_is_published_when_the_server_closes_for_a_protocol_error() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("will/error", 0)]);
        let connect = Connect::new("offender").will("will/error", "misbehaved", 0, false);
        let (mut offender, _) = RawClient::handshake(broker.addr(), &connect);
        offender.send(&build::publish("bad/+", "wildcard in a topic name"));
        offender.expect_closed_soon();
        assert_eq!(observer.expect_publish().payload, b"misbehaved");
    }

    /// [MQTT-3.1.2-12] with the Will Flag 0 nothing is published when the
    /// connection ends.
    #[test]
    fn no_will_is_published_for_a_client_without_one() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("#", 0)]);
        let quiet = client(&broker, "quiet");
        drop(quiet);
        // A new connection with the same id cannot be served until the broker has
        // finished with the old one, Will included.
        let again = client(&broker, "quiet");
        again.disconnect();
        expect_next_is_probe(&broker, &mut observer, "probe/t");
    }
}

mod session {
    use super::*;

    /// [MQTT-3.1.2-4] a CleanSession 0 session keeps its subscriptions across a
    /// disconnect.
    #[test]
    fn subscriptions_survive_a_disconnect() {
        let broker = midge();
        let (mut sub, _) = persistent(&broker, "keeper");
        assert_eq!(sub.subscribe(1, &[("sess/keep", 1)]), [1]);
        sub.disconnect();
        let (mut sub, connack) = persistent(&broker, "keeper");
        assert!(connack.session_present);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos1("sess/keep", "still subscribed", 1);
        assert_eq!(payloads(&receive(&mut sub, 1)), ["still subscribed"]);
    }

    /// [MQTT-3.1.2-5], [MQTT-4.6.0-6] QoS 1 and QoS 2 messages published while a
    /// CleanSession 0 client is away are stored and delivered, in order, when it
    /// comes back.
    #[test]
    fn qos1_and_qos2_messages_are_queued_while_offline() {
        let broker = midge();
        let (mut sub, _) = persistent(&broker, "away");
        assert_eq!(sub.subscribe(1, &[("sess/q1", 1), ("sess/q2", 2)]), [1, 2]);
        sub.disconnect();

        let mut publisher = client(&broker, "pub");
        for i in 0..5u16 {
            publisher.publish_qos1("sess/q1", format!("one-{i}"), 10 + i);
            publisher.publish_qos2("sess/q2", format!("two-{i}"), 20 + i);
        }

        let (mut sub, connack) = persistent(&broker, "away");
        assert!(connack.session_present);
        let received = receive(&mut sub, 10);
        for (topic, prefix) in [("sess/q1", "one"), ("sess/q2", "two")] {
            let on_topic: Vec<Publish> = received.iter().filter(|p| p.topic == topic).cloned().collect();
            let expected: Vec<String> = (0..5).map(|i| format!("{prefix}-{i}")).collect();
            assert_eq!(payloads(&on_topic), expected, "{topic}");
        }
        sub.expect_no_packet();
    }

    /// [MQTT-4.4.0-1], [MQTT-3.3.1-1] unacknowledged QoS 1 and QoS 2 PUBLISH packets
    /// are re-sent on reconnection with their original packet ids and DUP 1.
    #[test]
    fn unacknowledged_publishes_are_resent_with_dup_after_reconnect() {
        let broker = midge();
        let (mut sub, _) = persistent(&broker, "forgetful");
        assert_eq!(sub.subscribe(1, &[("sess/unacked", 2)]), [2]);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos1("sess/unacked", "a", 1);
        publisher.publish_qos2("sess/unacked", "b", 2);
        publisher.publish_qos1("sess/unacked", "c", 3);
        let first: Vec<Publish> = (0..3).map(|_| sub.expect_publish()).collect();
        assert!(first.iter().all(|p| !p.dup), "first deliveries have DUP 0: {first:?}");
        drop(sub);

        let (mut sub, connack) = persistent(&broker, "forgetful");
        assert!(connack.session_present);
        let again = receive(&mut sub, 3);
        let by_payload = |publishes: &[Publish]| -> Vec<(Vec<u8>, Option<u16>, u8)> {
            let mut all: Vec<_> = publishes.iter().map(|p| (p.payload.clone(), p.packet_id, p.qos)).collect();
            all.sort();
            all
        };
        assert_eq!(by_payload(&again), by_payload(&first), "same messages, same packet ids and QoS");
        assert!(again.iter().all(|p| p.dup), "re-sent PUBLISH packets have DUP 1: {again:?}");
        // Same topic and QoS: the QoS 1 messages keep their order [MQTT-4.6.0-6].
        let qos1 = |publishes: &[Publish]| -> Vec<String> {
            payloads(&publishes.iter().filter(|p| p.qos == 1).cloned().collect::<Vec<_>>())
        };
        assert_eq!(qos1(&first), ["a", "c"]);
        assert_eq!(qos1(&again), ["a", "c"]);
        sub.expect_no_packet();
    }

    /// [MQTT-4.4.0-1] a QoS 2 delivery that got as far as PUBREL is resumed on
    /// reconnection by re-sending the PUBREL (not the PUBLISH) with its packet id.
    #[test]
    fn a_pending_pubrel_is_resent_after_reconnect() {
        let broker = midge();
        let (mut sub, _) = persistent(&broker, "halfway");
        assert_eq!(sub.subscribe(1, &[("sess/rel", 2)]), [2]);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos2("sess/rel", "x", 1);
        let publish = sub.expect_publish();
        sub.send(&build::pubrec(publish.id()));
        assert_eq!(sub.expect_pubrel(), publish.id());
        drop(sub);

        let (mut sub, connack) = persistent(&broker, "halfway");
        assert!(connack.session_present);
        assert_eq!(sub.expect_pubrel(), publish.id());
        sub.send(&build::pubcomp(publish.id()));
        sub.expect_no_packet();
    }

    /// [MQTT-4.4.0-1], [MQTT-4.3.3-2] an inbound QoS 2 exchange survives the
    /// publisher's reconnection: its re-sent PUBREL gets PUBCOMP, and the message is
    /// delivered exactly once.
    #[test]
    fn an_inbound_qos2_exchange_completes_after_the_publisher_reconnects() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("sess/in2", 2)]);
        let (mut publisher, _) = persistent(&broker, "publisher");
        publisher.send(&PublishPacket::new("sess/in2", "once").qos(2, 9).build());
        assert_eq!(publisher.expect_pubrec(), 9);
        drop(publisher);

        let (mut publisher, connack) = persistent(&broker, "publisher");
        assert!(connack.session_present);
        publisher.send(&build::pubrel(9));
        assert_eq!(publisher.expect_pubcomp(), 9);
        assert_eq!(payloads(&receive(&mut sub, 1)), ["once"]);
        expect_next_is_probe(&broker, &mut sub, "sess/in2");
    }

    /// [MQTT-3.1.2-6] connecting with CleanSession 1 discards the stored session:
    /// its subscriptions and queued messages are gone, and a later CleanSession 0
    /// connection starts afresh (session present 0, [MQTT-3.2.2-3]).
    #[test]
    fn a_clean_session_discards_the_stored_session() {
        let broker = midge();
        let (mut sub, _) = persistent(&broker, "wiped");
        assert_eq!(sub.subscribe(1, &[("sess/wipe", 1)]), [1]);
        sub.disconnect();
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos1("sess/wipe", "queued", 1);

        let (mut clean, connack) = RawClient::handshake(broker.addr(), &Connect::new("wiped"));
        assert!(!connack.session_present);
        publisher.publish_qos1("sess/wipe", "live", 2);
        clean.expect_no_packet();
        clean.disconnect();

        let (mut fresh, connack) = persistent(&broker, "wiped");
        assert!(!connack.session_present, "the clean session ended with its connection");
        publisher.publish_qos1("sess/wipe", "after", 3);
        fresh.expect_no_packet();
    }

    /// [MQTT-3.1.2-6] a CleanSession 1 session lasts only as long as its
    /// connection: nothing of it is there for a later CleanSession 0 connection.
    #[test]
    fn a_clean_session_is_not_kept_after_the_connection() {
        let broker = midge();
        let mut sub = subscriber(&broker, "brief", &[("sess/brief", 1)]);
        sub.ping();
        drop(sub);
        let (mut again, connack) = persistent(&broker, "brief");
        assert!(!connack.session_present);
        let mut publisher = client(&broker, "pub");
        publisher.publish_qos1("sess/brief", "nobody", 1);
        again.expect_no_packet();
    }
}

mod malformed {
    use super::*;

    /// Checks that `broker` still serves a fresh pair of clients end to end.
    fn still_serving(broker: &Broker) {
        let mut sub = subscriber(broker, "healthy-sub", &[("healthy/t", 1)]);
        let mut publisher = client(broker, "healthy-pub");
        publisher.publish_qos1("healthy/t", "fine", 1);
        assert_eq!(payloads(&receive(&mut sub, 1)), ["fine"]);
    }

    /// [MQTT-3.1.0-1], [MQTT-4.8.0-1] bytes that are not MQTT close that connection
    /// only; a client connected before keeps being served.
    #[test]
    fn garbage_closes_that_connection_only() {
        let broker = midge();
        let mut bystander = subscriber(&broker, "bystander", &[("calm/t", 0)]);
        for garbage in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x00, 0x00], &[0xFF; 64]] {
            let mut raw = RawClient::connect(broker.addr());
            raw.send(garbage);
            raw.expect_closed_soon();
        }
        bystander.ping();
        let mut publisher = client(&broker, "pub");
        publisher.publish("calm/t", "still here");
        assert_eq!(bystander.expect_publish().payload, b"still here");
        still_serving(&broker);
    }

    /// Section 2.2.1, [MQTT-4.8.0-1] a connected client sending a reserved packet
    /// type (0, or 15 which 3.1.1 reserves) or a server-only packet (CONNACK, SUBACK,
    /// UNSUBACK, PINGRESP) is closed.
    #[test]
    fn reserved_or_server_only_packet_types_close_the_connection() {
        let broker = midge();
        let packets = [
            vec![0x00, 0x00],
            vec![0xF0, 0x00],
            vec![0x20, 0x02, 0x00, 0x00],
            vec![0x90, 0x03, 0x00, 0x01, 0x00],
            vec![0xB0, 0x02, 0x00, 0x01],
            vec![0xD0, 0x00],
        ];
        for packet in packets {
            let mut raw = client(&broker, "reserved").named(&format!("sender of {packet:02x?}"));
            raw.send(&packet);
            raw.expect_closed_soon();
        }
        still_serving(&broker);
    }

    /// Section 2.2.3: the remaining length takes at most four bytes; a fifth
    /// continuation byte makes the packet malformed, closing the connection.
    #[test]
    fn a_remaining_length_over_four_bytes_closes_the_connection() {
        let broker = midge();
        let mut raw = client(&broker, "toolong");
        raw.send(&build::packet_with_length(0x30, &[0xFF, 0xFF, 0xFF, 0xFF, 0x01], &[0, 1, b'a']));
        raw.expect_closed_soon();
        still_serving(&broker);
    }

    /// Sections 1.5.3, 3.3.2.1: a string length running past the end of its packet
    /// makes the packet malformed.
    #[test]
    fn a_string_longer_than_its_packet_closes_the_connection() {
        let broker = midge();
        let mut raw = client(&broker, "overrun");
        raw.send(&build::packet(0x30, &[0x00, 0x05, b'a']));
        raw.expect_closed_soon();
        let mut raw = client(&broker, "overrun");
        raw.send(&build::packet(0x82, &[0x00, 0x01, 0x00, 0x09, b'a', 0x00]));
        raw.expect_closed_soon();
        still_serving(&broker);
    }

    /// A client that vanishes halfway through a packet is dropped, its Will is
    /// published [MQTT-3.1.2-8], and other clients are not disturbed.
    #[test]
    fn a_client_vanishing_mid_packet_does_not_disturb_others() {
        let broker = midge();
        let mut observer = subscriber(&broker, "observer", &[("vanish/#", 0)]);
        let connect = Connect::new("vanisher").will("vanish/will", "vanished", 0, false);
        let (mut vanisher, _) = RawClient::handshake(broker.addr(), &connect);
        let whole = PublishPacket::new("vanish/t", vec![b'x'; 1000]).build();
        vanisher.send(&whole[..500]);
        drop(vanisher);
        let will = observer.expect_publish();
        assert_eq!((will.topic.as_str(), will.payload.as_slice()), ("vanish/will", &b"vanished"[..]));
        observer.ping();
        still_serving(&broker);
    }

    /// Framing does not depend on segment boundaries: a CONNECT and a PUBLISH sent
    /// one byte per write are read correctly.
    #[test]
    fn packets_split_into_single_bytes_are_reassembled() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("split/t", 0)]);
        let mut raw = RawClient::connect(broker.addr());
        let mut bytes = Connect::new("trickle").build();
        bytes.extend(build::publish("split/t", "one byte at a time"));
        for byte in bytes {
            raw.send(&[byte]);
        }
        assert_eq!(raw.expect_connack().return_code, 0);
        assert_eq!(sub.expect_publish().payload, b"one byte at a time");
    }

    /// Section 3.3.3: a PUBLISH with an empty payload is valid and delivered as such.
    #[test]
    fn a_publish_with_an_empty_payload_is_delivered() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("empty/t", 1)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish("empty/t", "");
        publisher.publish_qos1("empty/t", "", 1);
        let got = receive(&mut sub, 2);
        assert!(got.iter().all(|p| p.payload.is_empty() && p.topic == "empty/t"), "{got:?}");
    }

    /// Section 2.2.3: a payload needing a three-byte remaining length (100 kB)
    /// arrives intact.
    #[test]
    fn a_large_payload_arrives_intact() {
        let broker = midge();
        let mut sub = subscriber(&broker, "sub", &[("big/t", 1)]);
        let mut publisher = client(&broker, "pub");
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        publisher.publish_qos1("big/t", &payload, 1);
        let got = receive(&mut sub, 1).remove(0);
        assert_eq!(got.payload.len(), payload.len());
        assert!(got.payload == payload, "payload bytes differ");
    }
}

/// midge's choices where MQTT 3.1.1 leaves the server free, as documented for
/// `midge serve` (matching Mosquitto's defaults).
mod midge_contract {
    use super::*;

    /// QoS 0 messages are not queued for an offline CleanSession 0 client (the
    /// specification allows either, section 3.1.2.4).
    #[test]
    fn qos0_messages_are_not_queued_for_an_offline_client() {
        let broker = midge();
        let (mut sub, _) = persistent(&broker, "away");
        assert_eq!(sub.subscribe(1, &[("c/q0", 2)]), [2]);
        sub.disconnect();
        let mut publisher = client(&broker, "pub");
        publisher.publish("c/q0", "qos0 while away");
        publisher.publish_qos1("c/q0", "qos1 while away", 1);
        let (mut sub, _) = persistent(&broker, "away");
        assert_eq!(payloads(&receive(&mut sub, 1)), ["qos1 while away"]);
        sub.expect_no_packet();
    }

    /// `--max-queued-messages N` bounds the offline queue of a session; when it is
    /// full the newest message is dropped.
    #[test]
    fn a_full_offline_queue_drops_the_newest_messages() {
        let broker = midge_with(&["--max-queued-messages", "3"]);
        let (mut sub, _) = persistent(&broker, "away");
        assert_eq!(sub.subscribe(1, &[("c/queue", 1)]), [1]);
        sub.disconnect();
        let mut publisher = client(&broker, "pub");
        for i in 0..6u16 {
            publisher.publish_qos1("c/queue", i.to_string(), i + 1);
        }
        let (mut sub, _) = persistent(&broker, "away");
        assert_eq!(payloads(&receive(&mut sub, 3)), ["0", "1", "2"]);
        sub.expect_no_packet();
    }

    /// A packet begun must arrive whole within `--packet-timeout` (plus a
    /// second per KiB it declares): keep-alive counts bytes, so a client
    /// trickling a byte now and then, here without a keep-alive at all, would
    /// otherwise hold its connection forever (Mosquitto's does).
    #[test]
    fn a_packet_trickled_a_byte_at_a_time_is_cut_off_at_the_packet_timeout() {
        let broker = midge_with(&["--packet-timeout", "1"]);
        let (mut trickler, _) = RawClient::handshake(broker.addr(), &Connect::new("trickler").keep_alive(0));
        let mut watcher = subscriber(&broker, "watcher", &[("#", 0)]);
        let publish = build::publish("t/trickle", vec![b'x'; 200]);
        let started = Instant::now();
        let mut sent = 0;
        // One byte every 200 ms: the 203-byte packet would take 40 s.
        while sent < publish.len() && trickler.try_send(&publish[sent..=sent]).is_ok() {
            sent += 1;
            match trickler.closed_within(Duration::from_millis(200)) {
                Ok(true) => break,
                Ok(false) => {}
                Err(packet) => panic!("unexpected packet {packet:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(20), "still open after {sent} bytes");
        }
        assert!(sent < publish.len(), "the whole packet went through");
        assert!(started.elapsed() >= Duration::from_secs(1), "closed before its packet timeout");
        watcher.expect_no_packet();
        // The broker goes on serving.
        let mut other = client(&broker, "other");
        other.publish("t/after", "fine");
        assert_eq!(watcher.expect_publish().topic, "t/after");
    }

    /// A client cannot flood the log with refusals: of 1,000 filters beyond
    /// `--max-topic-levels` in one SUBSCRIBE, each refused with 0x80 and
    /// counted, the 1st, 2nd, 4th … 512th are logged at `info` (10 lines).
    #[test]
    fn refused_topics_are_logged_sparsely_so_a_client_cannot_flood_the_log() {
        let broker = midge_with(&["--max-topic-levels", "4"]);
        let mut deep = client(&broker, "deep");
        let filters: Vec<String> = (0..1000).map(|i| format!("a/b/c/d/{i}")).collect();
        let asked: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 0)).collect();
        assert_eq!(deep.subscribe(1, &asked), vec![0x80; 1000]);
        // The 512th is the last line logged; the broker wrote it before the SUBACK.
        assert!(broker.wait_for_log("refused=512", Duration::from_secs(10)), "{}", broker.log());
        let lines = broker.log().lines().filter(|l| l.contains("beyond max_topic_levels")).count();
        assert_eq!(lines, 10, "{}", broker.log());
    }

    /// The limits are keys of the configuration file too, and a limit of 0
    /// is refused at start-up with a message saying which.
    #[test]
    fn the_topic_limits_and_packet_timeout_are_configuration_file_keys() {
        let dir = midge_test_support::TempDir::new("limits-conf");
        let conf = dir.join("midge.toml");
        std::fs::write(&conf, "max_topic_levels = 3\nmax_topic_length = 10\npacket_timeout = 5\n").unwrap();
        let broker = midge_with(&["-c", conf.to_str().unwrap()]);
        let mut c = client(&broker, "conf");
        assert_eq!(c.subscribe(1, &[("a/b/c", 0), ("a/b/c/d", 0), ("abcdefghijk", 0)]), [0, 0x80, 0x80]);
        drop(broker);
        for (text, message) in [
            ("max_topic_levels = 0", "max_topic_levels and max_topic_length must be at least 1"),
            ("max_topic_length = 70000", "max_topic_length"),
        ] {
            std::fs::write(&conf, text).unwrap();
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_midge"));
            command.args(["serve", "--in-memory", "--port", "0", "-c", conf.to_str().unwrap()]);
            let mut serve = midge_test_support::Process::spawn("midge serve", command);
            assert_eq!(serve.wait_exit(Duration::from_secs(30)).code(), Some(1), "{text}: {}", serve.transcript());
            assert!(serve.stderr().contains(message), "{text}: expected {message:?}: {}", serve.transcript());
        }
    }

    /// A large packet sent slowly but steadily gets a second per KiB on top
    /// of `--packet-timeout`: 4 KiB over about 2.5 s arrives with a 1 s
    /// timeout.
    #[test]
    fn a_large_packet_sent_slowly_but_steadily_is_given_a_second_per_kib() {
        let broker = midge_with(&["--packet-timeout", "1"]);
        let mut watcher = subscriber(&broker, "watcher", &[("t/slow", 0)]);
        let (mut slow, _) = RawClient::handshake(broker.addr(), &Connect::new("slow").keep_alive(0));
        let publish = build::publish("t/slow", vec![b'y'; 4096]);
        for piece in publish.chunks(publish.len() / 5 + 1) {
            slow.send(piece);
            std::thread::sleep(Duration::from_millis(500));
        }
        let got = watcher.expect_publish();
        assert_eq!((got.topic.as_str(), got.payload.len()), ("t/slow", 4096));
    }

    /// A client that stops reading blocks only its own connection: once the
    /// broker's writes to it stall, it can still be taken over [MQTT-3.1.4-2],
    /// and a shutdown still closes it instead of waiting out the grace period.
    #[test]
    fn a_client_that_stops_reading_can_be_taken_over_and_shut_down() {
        let mut broker = midge();
        let (mut stalled, _) = persistent(&broker, "stalled");
        assert_eq!(stalled.subscribe(1, &[("c/flood", 0)]), [0]);
        // Well past what loopback socket buffers hold, so the broker's
        // writes to `stalled` block; the PINGRESP says every PUBLISH before
        // it was routed.
        let mut publisher = client(&broker, "pub");
        let payload = vec![b'x'; 32 * 1024];
        for _ in 0..640 {
            publisher.publish("c/flood", &payload);
        }
        publisher.send(&build::pingreq());
        assert_eq!(publisher.expect_packet().packet_type(), packet_type::PINGRESP);

        let (taker, connack) = persistent(&broker, "stalled");
        assert_eq!((connack.return_code, connack.session_present), (0, true));

        // The new connection, subscribed through the session, does not read
        // either; shutdown must not wait for it.
        for _ in 0..640 {
            publisher.publish("c/flood", &payload);
        }
        publisher.send(&build::pingreq());
        assert_eq!(publisher.expect_packet().packet_type(), packet_type::PINGRESP);
        assert!(broker.stop().success());
        let log = broker.log();
        assert!(!log.contains("did not close"), "shutdown waited out its grace period:\n{log}");
        drop((stalled, taker));
    }

    /// A subscriber that reads slower than it is sent to keeps its connection
    /// while it pings: the broker reads what it sends between writes, so its
    /// PINGREQs are seen and the keep-alive [MQTT-3.1.2-24] does not expire.
    #[test]
    fn a_slow_reader_under_a_flood_is_not_timed_out_while_it_pings() {
        let broker = midge();
        // Keep-alive 2 s: the broker gives up after 3 s without a packet, six
        // times the ping interval below, so a slow CI machine does not matter.
        let connect = Connect::new("slow").keep_alive(2);
        let (mut slow, connack) = RawClient::handshake(broker.addr(), &connect);
        assert_eq!(connack.return_code, 0);
        assert_eq!(slow.subscribe(1, &[("c/slow", 0)]), [0]);
        let addr = broker.addr();
        let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flood = {
            let flooding = flooding.clone();
            std::thread::spawn(move || {
                let mut publisher = RawClient::connected(addr, "flood");
                let payload = vec![b'x'; 4096];
                while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    publisher.publish("c/slow", &payload);
                }
            })
        };
        // Two and a half keep-alive timeouts of reading about 200 KB/s, far
        // below the flood, with a PINGREQ every half second.
        let until = Instant::now() + Duration::from_millis(7500);
        let mut next_ping = Instant::now();
        while Instant::now() < until {
            if Instant::now() >= next_ping {
                if let Err(e) = slow.try_send(&build::pingreq()) {
                    panic!("the slow reader lost its connection ({e}); broker log:\n{}", broker.log());
                }
                next_ping += Duration::from_millis(500);
            }
            for _ in 0..2 {
                let _ = slow.expect_packet();
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
        flood.join().unwrap();
        let log = broker.log();
        assert!(!log.contains("keep-alive expired"), "the slow reader was timed out:\n{log}");
    }

    /// `--max-inflight N` bounds the unacknowledged QoS 1 and 2 PUBLISH packets sent
    /// to one client; each acknowledgement lets the next one go.
    #[test]
    fn max_inflight_bounds_unacknowledged_deliveries() {
        let broker = midge_with(&["--max-inflight", "2"]);
        let mut sub = subscriber(&broker, "slow", &[("c/inflight", 1)]);
        let mut publisher = client(&broker, "pub");
        for i in 0..5u16 {
            publisher.publish_qos1("c/inflight", i.to_string(), i + 1);
        }
        let first = sub.expect_publish();
        let second = sub.expect_publish();
        assert_eq!(payloads(&[first.clone(), second]), ["0", "1"]);
        sub.expect_no_packet();
        sub.send(&build::puback(first.id()));
        assert_eq!(sub.expect_publish().payload, b"2");
        sub.expect_no_packet();
    }

    /// `--max-packet-size BYTES` closes a connection that sends a bigger packet;
    /// other clients are served.
    #[test]
    fn a_packet_over_max_packet_size_closes_that_connection() {
        let broker = midge_with(&["--max-packet-size", "1024"]);
        let mut sub = subscriber(&broker, "sub", &[("c/size", 0)]);
        let mut publisher = client(&broker, "pub");
        publisher.publish("c/size", vec![b'x'; 512]);
        assert_eq!(sub.expect_publish().payload.len(), 512);
        let mut big = client(&broker, "big");
        big.send(&build::publish("c/size", vec![b'x'; 4096]));
        big.expect_closed_soon();
        sub.expect_no_packet();
        publisher.publish("c/size", "small");
        assert_eq!(sub.expect_publish().payload, b"small");
    }

    /// SIGTERM stops the broker cleanly: it exits with success and its clients see
    /// their connections closed.
    #[test]
    fn sigterm_stops_the_broker_cleanly() {
        let mut broker = midge();
        let mut connected = client(&broker, "witness");
        let status = broker.stop();
        assert!(status.success(), "exit status {status:?}; log:\n{}", broker.log());
        connected.expect_closed_soon();
    }
}
