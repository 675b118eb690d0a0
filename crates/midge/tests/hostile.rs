//! The real `midge serve` under hostile input, over raw TCP sockets (issue 21).
//!
//! Each test starts its own broker on an ephemeral port (in memory), connects a
//! watcher subscribed to `#`, attacks, and then checks ([`Target::check`]) that
//! the broker process is alive, that a fresh client connects, subscribes and gets
//! a publish round trip within a bounded time, and that the watcher received none
//! of the messages the broker had to refuse (every refused message carries the
//! payload [`REFUSED`]). Tests that load the broker also bound its memory
//! (`VmRSS` from `/proc`).
//!
//! Rule ids in doc comments are the normative statements of OASIS MQTT 3.1.1
//! (`[MQTT-x.y.z-n]`) or, where marked v5, of MQTT 5.0.
//!
//! Run with `cargo test -p midge --test hostile`; add `-- --nocapture` to see the
//! figures (memory, a normal client's latency during an attack, the mutation seed).
//! `HOSTILE_SEED=N` replays one run of random mutations.

mod hostile_support;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hostile_support::{
    Ending, REFUSED, Rng, Target, V5Connect, WAIT, expect_closed, expect_closed_silently, expect_closed_v5,
    expect_closed_v5_any, in_parallel, memory, round_trip, unique, v5,
};
use midge_test_support::build::{self, Connect, Publish as PublishPacket};
use midge_test_support::{RawClient, RecvError, TempDir, packet_type};

/// v5 reason codes (MQTT 5.0 section 2.4).
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const TOPIC_FILTER_INVALID: u8 = 0x8F;
const TOPIC_NAME_INVALID: u8 = 0x90;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;

/// A topic name of `levels` levels: `a/a/…/a`.
fn deep_topic(levels: usize) -> String {
    let mut topic = "a/".repeat(levels - 1);
    topic.push('a');
    topic
}

/// A topic filter of `levels` levels: `+/+/…/+/#`.
fn deep_filter(levels: usize) -> String {
    let mut filter = "+/".repeat(levels - 1);
    filter.push('#');
    filter
}

/// A valid MQTT 3.1.1 CONNECT for a fresh client id.
fn connect_v3() -> Vec<u8> {
    Connect::new(unique("attacker")).build()
}

/// Connects, sends CONNECT (3.1.1 or 5) and waits for the CONNACK, then sends
/// `attack`; returns the client to read the outcome.
fn attack(target: &Target, v5: bool, attack: &[u8]) -> RawClient {
    let mut client = if v5 { target.client_v5() } else { target.client() };
    // A refused packet may make the broker close before all of it is written.
    let _ = client.try_send(attack);
    client
}

/// Sends `attack` after a CONNECT and expects the connection closed: with
/// nothing first in 3.1.1, with DISCONNECT `reason` (or nothing) in v5.
fn expect_refused(target: &Target, v5: bool, attack_bytes: &[u8], reason: u8, what: &str) {
    let mut client = attack(target, v5, attack_bytes);
    if v5 {
        expect_closed_v5(&mut client, reason, what);
    } else {
        expect_closed_silently(&mut client, what);
    }
}

mod framing {
    use super::*;

    /// Valid packets of every type a client sends, as (name, bytes, is CONNECT).
    fn every_client_packet(v5: bool) -> Vec<(&'static str, Vec<u8>, bool)> {
        let mut packets = if v5 {
            vec![
                (
                    "CONNECT",
                    V5Connect::new("trunc")
                        .properties(v5::u32(v5::SESSION_EXPIRY, 10))
                        .will(v5::u32(v5::MESSAGE_EXPIRY, 5), "will/t", REFUSED)
                        .username("user")
                        .build(),
                    true,
                ),
                ("PUBLISH QoS 0", v5::publish("t/trunc", 0, 0, &v5::user("k", "v"), REFUSED), false),
                ("PUBLISH QoS 1", v5::publish("t/trunc", 1, 7, &v5::u32(v5::MESSAGE_EXPIRY, 9), REFUSED), false),
                ("PUBLISH QoS 2", v5::publish("t/trunc", 2, 7, &[], REFUSED), false),
                ("SUBSCRIBE", v5::subscribe(3, &v5::user("k", "v"), &[(b"t/+", 1), (b"u/#", 2)]), false),
                ("UNSUBSCRIBE", v5::unsubscribe(4, &[], &[b"t/+", b"u/#"]), false),
                ("DISCONNECT", v5::disconnect(0, &v5::string(v5::REASON_STRING, "bye")), false),
                ("AUTH", build::packet(0xF0, &[0x18, 0x00]), false),
            ]
        } else {
            vec![
                (
                    "CONNECT",
                    Connect::new("trunc").will("will/t", REFUSED, 1, false).username("u").password("p").build(),
                    true,
                ),
                ("PUBLISH QoS 0", build::publish("t/trunc", REFUSED), false),
                ("PUBLISH QoS 1", PublishPacket::new("t/trunc", REFUSED).qos(1, 7).build(), false),
                ("PUBLISH QoS 2", PublishPacket::new("t/trunc", REFUSED).qos(2, 7).retain().build(), false),
                ("SUBSCRIBE", build::subscribe(3, &[("t/+", 1), ("u/#", 2)]), false),
                ("UNSUBSCRIBE", build::unsubscribe(4, &["t/+", "u/#"]), false),
                ("DISCONNECT", build::disconnect(), false),
            ]
        };
        packets.extend([
            ("PUBACK", build::puback(1), false),
            ("PUBREC", build::pubrec(1), false),
            ("PUBREL", build::pubrel(1), false),
            ("PUBCOMP", build::pubcomp(1), false),
            ("PINGREQ", build::pingreq(), false),
        ]);
        packets
    }

    /// Where to cut a packet of `len` bytes: every offset in the fixed header and
    /// the first fields, then a dozen spread over the rest.
    fn cuts(len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (1..len.min(10)).collect();
        let step = (len / 12).max(1);
        cuts.extend((10..len).step_by(step));
        cuts.push(len - 1);
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|&c| c > 0 && c < len);
        cuts
    }

    /// Every packet type cut at every few offsets, over 3.1.1 and 5, then the
    /// client half-closes: the broker closes the connection without acting on the
    /// fragment (a packet is only ever handled whole), and nothing it carried is
    /// published. Then the same fragments are left hanging on open connections
    /// while a fresh client is served.
    #[test]
    fn truncated_packets_are_never_acted_on_whether_the_client_closes_or_waits() {
        let target = Target::start(&[]);
        let mut fragments = Vec::new();
        for v5 in [false, true] {
            for (name, bytes, is_connect) in every_client_packet(v5) {
                for cut in cuts(bytes.len()) {
                    fragments.push((v5, name, bytes[..cut].to_vec(), is_connect));
                }
            }
        }
        let hanging = Mutex::new(Vec::new());
        in_parallel(fragments.len() * 2, 4, |i| {
            let (v5, name, fragment, is_connect) = &fragments[i / 2];
            let close = i % 2 == 0;
            let what = format!(
                "{name} (v5: {v5}) cut after {} bytes, then {}",
                fragment.len(),
                if close { "close" } else { "wait" }
            );
            let mut client = if *is_connect {
                RawClient::connect(target.addr())
            } else if *v5 {
                target.client_v5()
            } else {
                target.client()
            };
            client.send(fragment);
            if close {
                client.shutdown_write();
                let ending = expect_closed(&mut client, &what);
                assert_eq!(ending, Ending::Closed, "{what}");
            } else {
                hanging.lock().unwrap().push(client);
            }
        });
        let mut hanging = hanging.into_inner().unwrap();
        target.check();
        for client in &mut hanging {
            // Still open (no deadline yet) or closed by one: either way, silent.
            match client.recv_packet(Duration::from_millis(2)) {
                Err(RecvError::TimedOut) => {}
                Err(err) if err.is_closed() => {}
                other => panic!("a hanging fragment got {other:?}"),
            }
        }
        drop(hanging);
        target.check_with_mosquitto();
        println!("truncated packets: {} fragments, closed and left hanging", fragments.len());
    }

    /// A remaining length of five bytes is malformed (3.1.1 section 2.2.3: at most
    /// four; v5 [MQTT-1.5.5-1]): the connection is closed, as the first packet or
    /// later, over 3.1.1 and 5 (v5: DISCONNECT 0x81).
    #[test]
    fn a_remaining_length_of_five_bytes_closes_the_connection() {
        let target = Target::start(&[]);
        for length in [[0xFF, 0xFF, 0xFF, 0xFF, 0x7F], [0x80, 0x80, 0x80, 0x80, 0x00], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF]] {
            let mut first = RawClient::connect(target.addr());
            first.send(&build::packet_with_length(0x10, &length, b"\0\x04MQTT"));
            expect_closed_silently(&mut first, &format!("CONNECT with remaining length {length:02x?}"));
            for first_byte in [0x30, 0x32, 0x82, 0xC0] {
                let bytes = build::packet_with_length(first_byte, &length, REFUSED);
                let what = format!("packet 0x{first_byte:02x} with remaining length {length:02x?}");
                expect_refused(&target, false, &bytes, 0, &what);
                expect_refused(&target, true, &bytes, MALFORMED_PACKET, &what);
            }
        }
        target.check();
    }

    /// A remaining length in more bytes than needed (`0x80 0x00` for 0): MQTT 5
    /// requires the minimum number of bytes [MQTT-1.5.5-1] (v5), so the
    /// connection is closed with DISCONNECT 0x81 (Malformed Packet).
    #[test]
    fn a_non_minimal_remaining_length_closes_an_mqtt5_connection() {
        let target = Target::start(&[]);
        let body = {
            let mut body = build::string("t/nonminimal");
            body.push(0); // no properties
            body.extend_from_slice(REFUSED);
            body
        };
        for padding in [&[0x80u8, 0x00][..], &[0x80, 0x80, 0x00], &[0x80, 0x80, 0x80, 0x00]] {
            let mut length = build::remaining_length(body.len());
            // Same value, one more byte: set the continuation bit, add zeros.
            if let Some(last) = length.last_mut() {
                *last |= 0x80;
            }
            length.extend_from_slice(&padding[1..]);
            let bytes = build::packet_with_length(0x30, &length, &body);
            expect_refused(&target, true, &bytes, MALFORMED_PACKET, &format!("PUBLISH length {length:02x?}"));
            let ping = build::packet_with_length(0xC0, padding, &[]);
            expect_refused(&target, true, &ping, MALFORMED_PACKET, &format!("PINGREQ length {padding:02x?}"));
        }
        target.check();
    }

    /// The same in MQTT 3.1.1, which has no numbered rule for it: the broker may
    /// read a non-minimal length or close, but it never misframes what follows,
    /// and never crashes.
    #[test]
    fn a_non_minimal_remaining_length_never_misframes_an_mqtt311_stream() {
        let target = Target::start(&[]);
        for padding in [&[0x80u8, 0x00][..], &[0x80, 0x80, 0x00], &[0x80, 0x80, 0x80, 0x00]] {
            let mut client = target.client();
            let mut bytes = build::packet_with_length(0xC0, padding, &[]);
            bytes.extend(build::pingreq());
            let _ = client.try_send(&bytes);
            match client.recv_packet(WAIT) {
                Ok(packet) => {
                    packet.pingresp().unwrap_or_else(|e| panic!("{e}"));
                    client.expect_pingresp();
                }
                Err(err) if err.is_closed() => {}
                Err(err) => panic!("PINGREQ with length {padding:02x?}: {err}"),
            }
        }
        target.check();
    }
}

mod strings {
    use super::*;

    /// Byte strings that are not well-formed UTF-8 [MQTT-1.5.3-1] or contain
    /// U+0000 [MQTT-1.5.3-2] (v5: [MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    const BAD: [&[u8]; 6] =
        [b"bad\xFF", b"overlong\xC0\x80nul", b"surrogate\xED\xA0\x80", b"cut\xE2\x82", b"nul\x00inside", b"\x00"];

    /// Invalid UTF-8 and U+0000 in every string field of MQTT 3.1.1 (client id,
    /// user name, will topic, topic name, SUBSCRIBE and UNSUBSCRIBE filters):
    /// the connection is closed without a CONNACK or an acknowledgement
    /// [MQTT-1.5.3-1] [MQTT-1.5.3-2], and the PUBLISH never reaches `#`.
    #[test]
    fn invalid_utf8_and_nul_in_every_mqtt311_string_close_the_connection() {
        let target = Target::start(&[]);
        for bad in BAD {
            let connects = [
                ("client id", Connect::new(bad).build()),
                ("user name", Connect::new(unique("c")).username(bad).password("p").build()),
                ("will topic", Connect::new(unique("c")).will(bad, REFUSED, 1, true).build()),
            ];
            for (field, bytes) in connects {
                let mut client = RawClient::connect(target.addr());
                client.send(&bytes);
                expect_closed_silently(&mut client, &format!("CONNECT with {field} {bad:?}"));
            }
            let mut topic = b"t/".to_vec();
            topic.extend_from_slice(bad);
            let mut sub = build::string(&topic);
            sub.push(0);
            let cases = [
                ("topic name, QoS 0", build::publish(&topic, REFUSED)),
                ("topic name, QoS 1", PublishPacket::new(&topic, REFUSED).qos(1, 1).build()),
                ("topic name, QoS 2 retained", PublishPacket::new(&topic, REFUSED).qos(2, 1).retain().build()),
                ("SUBSCRIBE filter", build::packet(0x82, &[&[0, 1][..], &sub].concat())),
                ("UNSUBSCRIBE filter", build::packet(0xA2, &[&[0, 1][..], &build::string(&topic)].concat())),
            ];
            for (field, bytes) in cases {
                expect_refused(&target, false, &bytes, 0, &format!("{field} {bad:?}"));
            }
        }
        target.check();
    }

    /// Invalid UTF-8 and U+0000 in every string field of MQTT 5: client id, user
    /// name, will topic, will and CONNECT string properties (content type,
    /// response topic, authentication method, user property name and value),
    /// topic name and PUBLISH string properties, SUBSCRIBE and UNSUBSCRIBE filters
    /// and user properties, a DISCONNECT reason string. The connection is closed,
    /// after a CONNACK or DISCONNECT 0x81 (Malformed Packet) [MQTT-1.5.4-1]
    /// [MQTT-1.5.4-2] (v5), and the PUBLISH never reaches `#`.
    #[test]
    fn invalid_utf8_and_nul_in_every_mqtt5_string_close_the_connection() {
        let target = Target::start(&[]);
        for bad in BAD {
            let will = |properties: Vec<u8>, topic: &[u8]| V5Connect::new(unique("c")).will(properties, topic, REFUSED);
            let connects = [
                ("client id", V5Connect::new(bad)),
                ("user name", V5Connect::new(unique("c")).username(bad)),
                ("will topic", will(Vec::new(), bad)),
                ("will content type", will(v5::string(v5::CONTENT_TYPE, bad), b"w")),
                ("will response topic", will(v5::string(v5::RESPONSE_TOPIC, bad), b"w")),
                ("will user property name", will(v5::user(bad, "v"), b"w")),
                ("will user property value", will(v5::user("k", bad), b"w")),
                ("authentication method", V5Connect::new(unique("c")).properties(v5::string(v5::AUTH_METHOD, bad))),
                ("CONNECT user property", V5Connect::new(unique("c")).properties(v5::user(bad, bad))),
            ];
            for (field, connect) in connects {
                let mut client = RawClient::connect(target.addr());
                client.send(&connect.build());
                expect_closed_v5(&mut client, MALFORMED_PACKET, &format!("v5 CONNECT with {field} {bad:?}"));
            }
            let mut topic = b"t/".to_vec();
            topic.extend_from_slice(bad);
            let cases = [
                ("topic name", v5::publish(&topic, 1, 1, &[], REFUSED)),
                ("content type", v5::publish("t/ok", 1, 1, &v5::string(v5::CONTENT_TYPE, bad), REFUSED)),
                ("response topic", v5::publish("t/ok", 2, 1, &v5::string(v5::RESPONSE_TOPIC, bad), REFUSED)),
                ("PUBLISH user property name", v5::publish("t/ok", 0, 0, &v5::user(bad, "v"), REFUSED)),
                ("PUBLISH user property value", v5::publish("t/ok", 0, 0, &v5::user("k", bad), REFUSED)),
                ("SUBSCRIBE filter", v5::subscribe(1, &[], &[(&topic, 0)])),
                ("SUBSCRIBE user property", v5::subscribe(1, &v5::user("k", bad), &[(b"t/ok", 0)])),
                ("UNSUBSCRIBE filter", v5::unsubscribe(1, &[], &[&topic])),
                ("UNSUBSCRIBE user property", v5::unsubscribe(1, &v5::user(bad, "v"), &[b"t/ok"])),
                ("DISCONNECT reason string", v5::disconnect(0, &v5::string(v5::REASON_STRING, bad))),
            ];
            for (field, bytes) in cases {
                expect_refused(&target, true, &bytes, MALFORMED_PACKET, &format!("v5 {field} {bad:?}"));
            }
        }
        target.check();
    }
}

mod packets {
    use super::*;

    /// Packet types whose fixed-header flags are fixed, with those flags
    /// (3.1.1 section 2.2.2, v5 section 2.1.3), and a valid body.
    fn fixed_flags(v5: bool) -> Vec<(&'static str, u8, Vec<u8>)> {
        let mut packets = vec![
            ("PUBACK", 0x40, vec![0, 1]),
            ("PUBREC", 0x50, vec![0, 1]),
            ("PUBREL", 0x62, vec![0, 1]),
            ("PUBCOMP", 0x70, vec![0, 1]),
            ("SUBSCRIBE", 0x82, build::subscribe(1, &[("t", 0)])[2..].to_vec()),
            ("UNSUBSCRIBE", 0xA2, build::unsubscribe(1, &["t"])[2..].to_vec()),
            ("PINGREQ", 0xC0, vec![]),
            ("DISCONNECT", 0xE0, vec![]),
        ];
        if v5 {
            // v5 bodies: SUBSCRIBE and UNSUBSCRIBE carry a property length.
            packets[4].2 = v5::subscribe(1, &[], &[(b"t", 0)])[2..].to_vec();
            packets[5].2 = v5::unsubscribe(1, &[], &[b"t"])[2..].to_vec();
            packets.push(("AUTH", 0xF0, vec![0x18, 0]));
        }
        packets
    }

    /// Every wrong value of the reserved fixed-header flags of every packet type
    /// that fixes them closes the connection [MQTT-2.2.2-2] (v5: DISCONNECT
    /// 0x81), as do a CONNECT with flags and PUBLISH with QoS 3
    /// [MQTT-3.3.1-4]; and no PUBLISH among them reaches `#`.
    #[test]
    fn wrong_reserved_flags_of_every_packet_type_close_the_connection() {
        let target = Target::start(&[]);
        let mut cases = Vec::new();
        for v5 in [false, true] {
            for (name, first_byte, body) in fixed_flags(v5) {
                for flags in 0..16u8 {
                    if flags != first_byte & 0x0F {
                        cases.push((
                            v5,
                            format!("{name} with flags {flags:04b}"),
                            build::packet((first_byte & 0xF0) | flags, &body),
                        ));
                    }
                }
            }
            for flags in [0b0110, 0b0111, 0b1110, 0b1111] {
                let publish = if v5 {
                    v5::publish("t/flags", 1, 1, &[], REFUSED)
                } else {
                    PublishPacket::new("t/flags", REFUSED).qos(1, 1).build()
                };
                let mut bytes = publish;
                bytes[0] = 0x30 | flags;
                cases.push((v5, format!("PUBLISH with flags {flags:04b} (QoS 3)"), bytes));
            }
        }
        in_parallel(cases.len(), 4, |i| {
            let (v5, what, bytes) = &cases[i];
            expect_refused(&target, *v5, bytes, MALFORMED_PACKET, what);
        });
        for flags in 1..16u8 {
            let mut connect = connect_v3();
            connect[0] = 0x10 | flags;
            let mut client = RawClient::connect(target.addr());
            client.send(&connect);
            expect_closed_silently(&mut client, &format!("CONNECT with flags {flags:04b}"));
        }
        target.check();
        println!("wrong reserved flags: {} cases", cases.len() + 15);
    }

    /// Packet identifier 0 in SUBSCRIBE, UNSUBSCRIBE and PUBLISH at QoS 1 and 2
    /// closes the connection [MQTT-2.3.1-1] (v5: DISCONNECT 0x81), and the
    /// PUBLISH never reaches `#`.
    #[test]
    fn packet_id_0_closes_the_connection() {
        let target = Target::start(&[]);
        let cases = [
            (false, "SUBSCRIBE", build::subscribe(0, &[("t/#", 1)])),
            (false, "UNSUBSCRIBE", build::unsubscribe(0, &["t/#"])),
            (false, "PUBLISH QoS 1", PublishPacket::new("t/id0", REFUSED).qos(1, 0).build()),
            (false, "PUBLISH QoS 2", PublishPacket::new("t/id0", REFUSED).qos(2, 0).retain().build()),
            (true, "SUBSCRIBE", v5::subscribe(0, &[], &[(b"t/#", 1)])),
            (true, "UNSUBSCRIBE", v5::unsubscribe(0, &[], &[b"t/#"])),
            (true, "PUBLISH QoS 1", v5::publish("t/id0", 1, 0, &[], REFUSED)),
            (true, "PUBLISH QoS 2", v5::publish("t/id0", 2, 0, &[], REFUSED)),
        ];
        for (v5, what, bytes) in cases {
            expect_refused(&target, v5, &bytes, MALFORMED_PACKET, &format!("{what} with packet id 0 (v5: {v5})"));
        }
        target.check();
    }

    /// Packets only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP; and in
    /// 3.1.1 the reserved type 15, AUTH in v5), and reserved type 0, close the
    /// connection: as the first packet [MQTT-3.1.0-1] and after CONNECT
    /// [MQTT-4.8.0-1] (v5: DISCONNECT 0x82, or 0x81 for a reserved type).
    #[test]
    fn server_only_packets_from_a_client_close_the_connection() {
        let target = Target::start(&[]);
        let server_only: [(&str, Vec<u8>); 4] = [
            ("CONNACK", vec![0x20, 2, 0, 0]),
            ("SUBACK", vec![0x90, 3, 0, 1, 0]),
            ("UNSUBACK", vec![0xB0, 2, 0, 1]),
            ("PINGRESP", vec![0xD0, 0]),
        ];
        for (name, bytes) in &server_only {
            let mut first = RawClient::connect(target.addr());
            first.send(bytes);
            expect_closed_silently(&mut first, &format!("{name} as the first packet"));
            expect_refused(&target, false, bytes, 0, &format!("{name} after CONNECT"));
        }
        for (name, bytes) in [
            ("CONNACK", vec![0x20, 3, 0, 0, 0]),
            ("SUBACK", vec![0x90, 4, 0, 1, 0, 0]),
            ("UNSUBACK", vec![0xB0, 4, 0, 1, 0, 0]),
            ("PINGRESP", vec![0xD0, 0]),
        ] {
            expect_refused(&target, true, &bytes, PROTOCOL_ERROR, &format!("v5 {name} after CONNECT"));
        }
        expect_refused(&target, false, &[0xF0, 0], 0, "type 15 (AUTH) over 3.1.1");
        let mut first = RawClient::connect(target.addr());
        first.send(&[0xF0, 0]);
        expect_closed_silently(&mut first, "AUTH as the first packet");
        for v5 in [false, true] {
            expect_refused(&target, v5, &[0x00, 0], MALFORMED_PACKET, "reserved packet type 0");
        }
        target.check();
    }

    /// A second CONNECT on a connection is a protocol violation: the broker
    /// closes the connection [MQTT-3.1.0-2] (v5: DISCONNECT 0x82), and the
    /// second CONNECT's will is not kept.
    #[test]
    fn a_second_connect_closes_the_connection() {
        let target = Target::start(&[]);
        let second = Connect::new(unique("second")).will("t/second", REFUSED, 0, false).build();
        expect_refused(&target, false, &second, 0, "a second 3.1.1 CONNECT");
        let second_v5 = V5Connect::new(unique("second")).will(Vec::new(), "t/second", REFUSED).build();
        expect_refused(&target, true, &second_v5, PROTOCOL_ERROR, "a second v5 CONNECT");
        target.check();
    }
}

mod topics {
    use super::*;

    /// Subscribes `client` to `filter` and returns the SUBACK's codes (v5 or 3.1.1).
    fn suback_codes(client: &mut RawClient, v5: bool, filters: &[&str]) -> Vec<u8> {
        if v5 {
            let filters: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_bytes(), 1)).collect();
            client.send(&v5::subscribe(9, &[], &filters));
            let packet = client.expect_packet_within(WAIT);
            v5::ack_codes(&packet).1
        } else {
            let filters: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 1)).collect();
            client.send(&build::subscribe(9, &filters));
            client.expect_packet_within(WAIT).suback().unwrap_or_else(|e| panic!("{e}")).return_codes
        }
    }

    /// A filter with more levels than `max_topic_levels` (default 128), or longer
    /// than `max_topic_length`, is refused in the SUBACK: v5 0x8F (Topic Filter
    /// invalid), 3.1.1 0x80 [MQTT-3.9.3-2]; the other filters of the SUBSCRIBE
    /// are granted, the connection stays up, and a message on a topic the
    /// refused filter would match reaches nobody through it.
    #[test]
    fn filters_beyond_the_topic_limits_are_refused_in_the_suback() {
        let target = Target::start(&["--max-topic-length", "2000"]);
        let too_long = format!("l/{}", "x".repeat(1999));
        for v5 in [false, true] {
            let refused = if v5 { TOPIC_FILTER_INVALID } else { 0x80 };
            let mut client = if v5 { target.client_v5() } else { target.client() };
            let codes = suback_codes(&mut client, v5, &[&deep_filter(129), "ok/#", &deep_filter(10_000), &too_long]);
            assert_eq!(codes, [refused, 1, refused, refused], "v5: {v5}");
            // A shared subscription is measured by its filter.
            let shared = format!("$share/g/{}", deep_filter(129));
            assert_eq!(suback_codes(&mut client, v5, &[&shared]), [refused], "v5: {v5}");
            let at_limit = deep_filter(128);
            assert_eq!(suback_codes(&mut client, v5, &[&at_limit]), [1], "128 levels are within the limit");
            client.ping();
        }
        target.check();
    }

    /// An UNSUBSCRIBE of a filter beyond the limits: v5 UNSUBACK 0x8F; 3.1.1 an
    /// UNSUBACK (which carries no codes) or a close — never a crash.
    #[test]
    fn unsubscribing_filters_beyond_the_topic_limits_is_refused() {
        let target = Target::start(&[]);
        let mut client = target.client_v5();
        let deep = deep_filter(10_000);
        client.send(&v5::unsubscribe(5, &[], &[deep.as_bytes(), deep_filter(129).as_bytes(), b"ok/#"]));
        let (id, codes) = v5::ack_codes(&client.expect_packet_within(WAIT));
        assert_eq!((id, codes), (5, vec![TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID, 0x11]));
        let mut client = target.client();
        client.send(&build::unsubscribe(5, &[&deep]));
        match client.recv_packet(WAIT) {
            Ok(packet) => assert_eq!(packet.unsuback(), Ok(5)),
            Err(err) => assert!(err.is_closed(), "3.1.1 UNSUBSCRIBE of a deep filter: {err}"),
        }
        target.check();
    }

    /// A PUBLISH whose topic has more levels than `max_topic_levels`, or is longer
    /// than `max_topic_length`: v5 QoS 1 gets PUBACK 0x90 (Topic Name invalid),
    /// QoS 2 PUBREC 0x90, QoS 0 is dropped and the connection stays; 3.1.1 at any
    /// QoS is closed. Retained or not, `#` receives none of it, and no retained
    /// message is stored.
    #[test]
    fn publishes_beyond_the_topic_limits_are_refused() {
        let target = Target::start(&["--max-topic-length", "2000"]);
        let topics = [deep_topic(129), deep_topic(10_000), format!("l/{}", "x".repeat(1999))];
        for topic in &topics {
            let mut client = target.client_v5();
            for retain in [0, 1] {
                let mut qos1 = v5::publish(topic, 1, 11, &[], REFUSED);
                qos1[0] |= retain;
                client.send(&qos1);
                let puback = client.expect_packet_within(WAIT);
                assert_eq!((puback.packet_type(), v5::reason_code(&puback)), (packet_type::PUBACK, TOPIC_NAME_INVALID));
                let mut qos2 = v5::publish(topic, 2, 12, &[], REFUSED);
                qos2[0] |= retain;
                client.send(&qos2);
                let pubrec = client.expect_packet_within(WAIT);
                assert_eq!((pubrec.packet_type(), v5::reason_code(&pubrec)), (packet_type::PUBREC, TOPIC_NAME_INVALID));
                let mut qos0 = v5::publish(topic, 0, 0, &[], REFUSED);
                qos0[0] |= retain;
                client.send(&qos0);
                client.ping();
            }
            for qos in 0..3 {
                let mut publish = PublishPacket::new(topic, REFUSED);
                if qos > 0 {
                    publish = publish.qos(qos, 3);
                }
                let what = format!("3.1.1 QoS {qos} PUBLISH to a topic of {} bytes", topic.len());
                expect_refused(&target, false, &publish.retain().build(), 0, &what);
            }
        }
        assert!(retained(&target, "#").is_empty(), "a refused PUBLISH was retained");
        target.check();
    }

    /// A will topic beyond the limits: v5 CONNACK 0x90 then close; 3.1.1 closed
    /// without CONNACK. No will is ever published.
    #[test]
    fn wills_beyond_the_topic_limits_are_refused_at_connect() {
        let target = Target::start(&["--max-topic-length", "2000"]);
        for topic in [deep_topic(129), deep_topic(10_000), format!("l/{}", "x".repeat(1999))] {
            let mut client = RawClient::connect(target.addr());
            client.send(&V5Connect::new(unique("will")).will(Vec::new(), &topic, REFUSED).build());
            let connack = client.expect_packet_within(WAIT);
            assert_eq!((connack.packet_type(), v5::reason_code(&connack)), (packet_type::CONNACK, TOPIC_NAME_INVALID));
            expect_closed(&mut client, "after CONNACK 0x90");
            let mut client = RawClient::connect(target.addr());
            client.send(&Connect::new(unique("will")).will(&topic, REFUSED, 1, true).build());
            expect_closed_silently(&mut client, "3.1.1 CONNECT with a will topic beyond the limits");
        }
        target.check();
    }

    /// Retained messages the broker holds, as a new subscriber to `filter` gets
    /// them: everything before a probe published after the SUBSCRIBE, which the
    /// session's queue delivers after them.
    fn retained(target: &Target, filter: &str) -> Vec<String> {
        let probe = unique("probe");
        let probe_topic = format!("probe/{probe}");
        let mut client = target.client();
        client.subscribe(1, &[(filter, 0), (&probe_topic, 0)]);
        let mut prober = target.client();
        prober.publish_qos1(&probe_topic, &probe, 1);
        let mut found = Vec::new();
        loop {
            let publish = client.expect_publish();
            if publish.payload == probe.as_bytes() {
                return found;
            }
            if publish.retain {
                found.push(format!(
                    "{}… ({} bytes)",
                    publish.topic.chars().take(20).collect::<String>(),
                    publish.topic.len()
                ));
            }
        }
    }

    /// The crash of issue 21 against a broker with default settings: clients
    /// subscribe to a 10,000-level filter `+/+/…/#` (about 20 KB, under the
    /// default maximum packet size) and close their sockets; others publish to
    /// 10,000-level topics. Whatever the broker answers (a refusal, with the
    /// default topic limits), it keeps serving.
    #[test]
    fn the_10000_level_subscribe_of_issue_21_does_not_stop_a_default_broker() {
        let target = Target::start(&[]);
        let filter = deep_filter(10_000);
        let topic = deep_topic(10_000);
        in_parallel(4, 4, |_| {
            let mut client = target.client();
            client.send(&build::subscribe(1, &[(&filter, 1)]));
            // Granted or refused: either way the client vanishes right after.
            let _ = client.recv_packet(WAIT);
        });
        in_parallel(4, 4, |i| {
            let mut client = target.client();
            let publish = PublishPacket::new(&topic, REFUSED);
            let publish = if i % 2 == 0 { publish } else { publish.qos(1, 1) };
            let _ = client.try_send(&publish.build());
            let _ = client.recv_packet(Duration::from_millis(200));
        });
        target.check();
    }

    /// Topics and filters of 65,535 bytes, the longest a string can be
    /// [MQTT-1.5.3] and within the default limits, in one level: subscribed,
    /// published, retained and delivered.
    #[test]
    fn topics_and_filters_of_65535_bytes_are_served() {
        let target = Target::start(&[]);
        let topic = "x".repeat(65_535);
        let mut subscriber = target.client();
        assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), [1]);
        let mut publisher = target.client();
        publisher.send(&PublishPacket::new(&topic, b"long").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        let got = subscriber.expect_publish();
        assert_eq!((got.topic.len(), got.payload.as_slice()), (65_535, b"long".as_slice()));
        subscriber.send(&build::puback(got.id()));
        assert_eq!(retained(&target, "#").len(), 1);
        target.check();
    }

    /// The regression test of issue 21, with the limits raised so the deep
    /// structures themselves are exercised: several clients subscribe to
    /// 10,000- and 50,000-level filters, some vanish without DISCONNECT, some
    /// unsubscribe, others publish to 10,000- and 50,000-level topics and set
    /// wills on them; the live deep subscribers get their messages, and the broker
    /// keeps serving.
    #[test]
    fn deep_filters_subscribed_then_dropped_and_deep_publishes_keep_the_broker_serving() {
        let target = Target::start(&["--max-topic-levels", "100000"]);
        let deep10k = deep_filter(10_000);
        // 50,000 empty levels, the last a wildcard: `/…/+` (49,999 bytes).
        let deep50k = format!("{}+", "/".repeat(49_999));
        let topic10k = deep_topic(10_000);
        let topic50k = format!("{}z", "/".repeat(49_999));
        // Subscribers that vanish abruptly, in parallel.
        in_parallel(8, 4, |i| {
            let mut client = target.client();
            let filter = if i % 2 == 0 { &deep10k } else { &deep50k };
            assert_eq!(client.subscribe(1, &[(filter, 1), (&topic10k, 2)]), [1, 2]);
            // Dropped without DISCONNECT.
        });
        // Exactly 10,000 levels, `+/…/+`: not the 50,000-level topic.
        let exact10k = format!("{}+", "+/".repeat(9_999));
        let mut stay10k = target.client();
        assert_eq!(stay10k.subscribe(1, &[(&exact10k, 1)]), [1]);
        let mut stay50k = target.client_v5();
        stay50k.send(&v5::subscribe(1, &[], &[(deep50k.as_bytes(), 1)]));
        assert_eq!(v5::ack_codes(&stay50k.expect_packet_within(WAIT)).1, [1]);
        let mut unsubscriber = target.client();
        assert_eq!(unsubscriber.subscribe(1, &[(&deep50k, 0), (&deep10k, 0)]), [0, 0]);
        unsubscriber.send(&build::unsubscribe(2, &[&deep50k, &deep10k]));
        assert_eq!(unsubscriber.expect_unsuback(), 2);
        // A will on a deep topic, published when its client vanishes.
        let mut will = RawClient::connect(target.addr());
        will.send(&Connect::new(unique("will")).will(&topic10k, b"deep will", 0, false).build());
        assert_eq!(will.expect_connack().return_code, 0);
        drop(will);
        in_parallel(6, 3, |i| {
            let mut publisher = target.client();
            let topic = if i % 2 == 0 { &topic10k } else { &topic50k };
            publisher.publish_qos1(topic, format!("deep {i}"), 1);
            drop(publisher);
        });
        let mut got10k = 0;
        let mut got_will = false;
        while got10k < 3 || !got_will {
            let publish = stay10k.expect_publish();
            assert_eq!(publish.topic, topic10k);
            if publish.payload == b"deep will" {
                got_will = true;
            } else {
                got10k += 1;
            }
            if let Some(id) = publish.packet_id {
                stay10k.send(&build::puback(id));
            }
        }
        for _ in 0..3 {
            let publish = stay50k.expect_packet_within(WAIT);
            assert_eq!(publish.packet_type(), packet_type::PUBLISH, "{publish:?}");
        }
        drop(stay50k);
        stay10k.disconnect();
        target.check();
        println!("deep filters: RSS growth {:.1} MB", target.rss_growth_mb());
    }

    /// Retained messages on 10,000-level and 65,535-level topics, then
    /// subscribers with `#` and with a 10,000-level wildcard filter arrive and
    /// get them; clearing them leaves nothing retained.
    #[test]
    fn deep_retained_messages_reach_late_wildcard_subscribers() {
        let target = Target::start(&["--max-topic-levels", "100000"]);
        let topic10k = deep_topic(10_000);
        let topic65k = "/".repeat(65_534);
        let mut publisher = target.client();
        for (i, topic) in [&topic10k, &topic65k].into_iter().enumerate() {
            publisher.send(&PublishPacket::new(topic, b"deep retained").qos(1, 1 + i as u16).retain().build());
            assert_eq!(publisher.expect_puback(), 1 + i as u16);
        }
        assert_eq!(retained(&target, "#").len(), 2);
        // `+/…/+/#` of 10,000 levels matches both; of 30,001 levels, only the deeper.
        assert_eq!(retained(&target, &deep_filter(10_000)).len(), 2);
        assert_eq!(retained(&target, &format!("{}#", "+/".repeat(30_000))).len(), 1);
        // Exactly 10,000 levels, the first a wildcard: only the 10,000-level topic.
        assert_eq!(retained(&target, &format!("+{}", &topic10k[1..])).len(), 1);
        for topic in [&topic10k, &topic65k] {
            publisher.send(&PublishPacket::new(topic, b"").qos(1, 3).retain().build());
            assert_eq!(publisher.expect_puback(), 3);
        }
        assert!(retained(&target, "#").is_empty());
        target.check();
    }

    /// ACL rules matched against 10,000-level topics and filters (limits
    /// raised): a deep subscription is granted under `topic readwrite #`, a
    /// deep PUBLISH under a `deny` rule is refused (v5 PUBACK ≥ 0x80) and
    /// reaches nobody, an allowed one is delivered.
    #[test]
    fn acl_rules_match_deep_topics_and_filters() {
        let dir = TempDir::new("acl");
        let acl = dir.join("acl");
        std::fs::write(&acl, "topic readwrite #\ntopic deny a/a/secret/#\npattern readwrite %c/#\n").unwrap();
        let target = Target::start(&["--max-topic-levels", "100000", "--acl-file", acl.to_str().unwrap()]);
        let mut subscriber = target.client_v5();
        subscriber.send(&v5::subscribe(1, &[], &[(deep_filter(10_000).as_bytes(), 1)]));
        assert_eq!(v5::ack_codes(&subscriber.expect_packet_within(WAIT)).1, [1]);
        let mut publisher = target.client_v5();
        let denied = format!("a/a/secret/{}", deep_topic(9_997));
        publisher.send(&v5::publish(&denied, 1, 1, &[], REFUSED));
        let puback = publisher.expect_packet_within(WAIT);
        assert_eq!(puback.packet_type(), packet_type::PUBACK, "{puback:?}");
        assert!(v5::reason_code(&puback) >= 0x80, "a denied deep PUBLISH was accepted: {puback:?}");
        publisher.send(&v5::publish(deep_topic(10_000), 1, 2, &[], b"allowed"));
        let puback = publisher.expect_packet_within(WAIT);
        assert_eq!((puback.packet_type(), v5::reason_code(&puback)), (packet_type::PUBACK, 0));
        let delivered = subscriber.expect_packet_within(WAIT);
        assert_eq!(delivered.packet_type(), packet_type::PUBLISH, "{delivered:?}");
        assert!(delivered.body.ends_with(b"allowed"), "{delivered:?}");
        target.check();
    }

    /// The store's records of deep topics (limits raised, persistence on): a
    /// persistent session subscribed to a 10,000-level filter and a retained
    /// message on a 10,000-level topic, queued for it while it is away, survive
    /// a restart; the session gets its message and a late subscriber the
    /// retained one.
    #[test]
    fn deep_retained_messages_and_sessions_survive_a_restart() {
        let dir = TempDir::new("deep-store");
        let data = dir.path().to_str().unwrap().to_owned();
        let args = ["--data-dir", data.as_str(), "--max-topic-levels", "100000"];
        let topic = deep_topic(10_000);
        let session = Connect::new(unique("deep-session")).clean_session(false);
        let mut target = Target::start(&args);
        let (mut client, _) = RawClient::handshake(target.addr(), &session);
        assert_eq!(client.subscribe(1, &[(&deep_filter(10_000), 1)]), [1]);
        client.disconnect();
        let mut publisher = target.client();
        publisher.send(&PublishPacket::new(&topic, b"kept").qos(1, 1).retain().build());
        assert_eq!(publisher.expect_puback(), 1);
        publisher.disconnect();
        target.check();
        let status = target.broker.stop();
        assert!(status.success(), "midge exited with {status:?}");
        drop(target);

        let target = Target::start(&args);
        assert_eq!(retained(&target, &deep_filter(10_000)).len(), 1, "the deep retained message is gone");
        let (mut client, connack) = RawClient::handshake(target.addr(), &session);
        assert!(connack.session_present, "the session with a deep subscription is gone");
        let queued = client.expect_publish();
        assert_eq!((queued.topic.len(), queued.payload.as_slice()), (topic.len(), b"kept".as_slice()));
        client.send(&build::puback(queued.id()));
        client.disconnect();
        target.check();
    }

    /// Shared subscriptions and topic aliases over 10,000-level topics (limits
    /// raised): three members share a deep filter and two vanish; a publisher
    /// sets a topic alias for a deep topic and reuses it; the member left, which
    /// accepts topic aliases from the broker, receives its share.
    #[test]
    fn deep_shared_subscriptions_and_topic_aliases_keep_the_broker_serving() {
        let target = Target::start(&["--max-topic-levels", "100000"]);
        let shared = format!("$share/deep/{}", deep_filter(10_000));
        let member = |alias_maximum: u16| {
            let connect = V5Connect::new(unique("member")).properties(v5::u16(v5::TOPIC_ALIAS_MAXIMUM, alias_maximum));
            let mut client = hostile_support::connected_v5(target.addr(), &connect);
            client.send(&v5::subscribe(1, &[], &[(shared.as_bytes(), 1)]));
            assert_eq!(v5::ack_codes(&client.expect_packet_within(WAIT)).1, [1]);
            client
        };
        let mut kept = member(5);
        drop((member(0), member(5)));
        let mut publisher = target.client_v5();
        let topic = deep_topic(10_000);
        publisher.send(&v5::publish(&topic, 1, 1, &v5::u16(v5::TOPIC_ALIAS, 7), b"shared"));
        for id in 2..=12u16 {
            publisher.send(&v5::publish("", 1, id, &v5::u16(v5::TOPIC_ALIAS, 7), b"shared"));
        }
        for id in 1..=12u16 {
            let puback = publisher.expect_packet_within(WAIT);
            assert_eq!((puback.packet_type(), &puback.body[..2]), (packet_type::PUBACK, &id.to_be_bytes()[..]));
        }
        // Round robin over three members, two of which may not be gone yet: the
        // one left gets at least every third message.
        for _ in 0..4 {
            let publish = kept.expect_packet_within(WAIT);
            assert_eq!(publish.packet_type(), packet_type::PUBLISH, "{publish:?}");
            assert!(publish.body.ends_with(b"shared"), "{publish:?}");
            let topic_len = usize::from(u16::from_be_bytes([publish.body[0], publish.body[1]]));
            kept.send(&build::packet(0x40, &publish.body[2 + topic_len..4 + topic_len]));
        }
        target.check();
    }

    /// One SUBSCRIBE with 100,000 short filters, then one with 100,000 filters of
    /// 16 levels: each SUBACK carries 100,000 codes [MQTT-3.8.4-5] (3.1.1:
    /// [MQTT-3.9.3-1]), messages are routed through them, the broker keeps
    /// serving, and its memory stays bounded.
    #[test]
    fn a_subscribe_with_100000_filters_gets_100000_codes() {
        let target = Target::start(&["--max-packet-size", "16777216"]);
        let short: Vec<String> = (0..100_000).map(|i| format!("t/{i}")).collect();
        let deep: Vec<String> = (0..100_000).map(|i| format!("d/+/+/+/+/+/+/+/+/+/+/+/+/+/{}/{i}", i % 97)).collect();
        let mut client = target.client();
        for (filters, topic) in
            [(&short, "t/99999".to_owned()), (&deep, format!("d/{}{}/99999", "q/".repeat(13), 99_999 % 97))]
        {
            let pairs: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 0)).collect();
            let started = Instant::now();
            client.send(&build::subscribe(7, &pairs));
            let suback =
                client.expect_packet_within(Duration::from_secs(60)).suback().unwrap_or_else(|e| panic!("{e}"));
            let took = started.elapsed();
            assert_eq!(suback.return_codes.len(), 100_000);
            assert!(suback.return_codes.iter().all(|&c| c == 0), "a filter was refused");
            let mut publisher = target.client();
            publisher.publish_qos1(&topic, b"through 100,000", 1);
            let got = client.expect_packet_within(WAIT).publish().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.topic, topic);
            let memory = memory(target.pid());
            println!(
                "SUBSCRIBE with 100,000 filters like {:?}: SUBACK of 100,000 codes after {took:?}; broker RSS {} MB (growth {:.1} MB), peak {} MB",
                filters[0],
                memory.rss_kb / 1024,
                target.rss_growth_mb(),
                memory.hwm_kb / 1024
            );
            target.check();
        }
        assert!(target.rss_growth_mb() < 300.0, "RSS grew by {:.1} MB", target.rss_growth_mb());
    }
}

mod properties {
    use super::*;

    /// A CONNECT with `properties`, expecting CONNACK `reason` (or a bare close).
    fn expect_connect_refused(target: &Target, properties: Vec<u8>, reason: u8, what: &str) {
        let mut client = RawClient::connect(target.addr());
        client.send(&V5Connect::new(unique("props")).properties(properties).build());
        expect_closed_v5(&mut client, reason, what);
    }

    /// Properties that may appear once, twice: a Protocol Error (v5 section
    /// 2.2.2.2 and each property's "It is a Protocol Error to include … more
    /// than once"), CONNACK or DISCONNECT 0x82.
    #[test]
    fn duplicate_properties_close_the_connection() {
        let target = Target::start(&[]);
        let twice = |p: Vec<u8>| [p.clone(), p].concat();
        expect_connect_refused(&target, twice(v5::u32(v5::SESSION_EXPIRY, 5)), PROTOCOL_ERROR, "session expiry twice");
        expect_connect_refused(
            &target,
            twice(v5::u16(v5::RECEIVE_MAXIMUM, 5)),
            PROTOCOL_ERROR,
            "receive maximum twice",
        );
        expect_connect_refused(
            &target,
            twice(v5::u32(v5::MAXIMUM_PACKET_SIZE, 500)),
            PROTOCOL_ERROR,
            "max packet size twice",
        );
        let publishes = [
            ("message expiry", twice(v5::u32(v5::MESSAGE_EXPIRY, 5))),
            ("content type", twice(v5::string(v5::CONTENT_TYPE, "a"))),
            ("payload format", twice(v5::byte(v5::PAYLOAD_FORMAT, 0))),
            ("topic alias", twice(v5::u16(v5::TOPIC_ALIAS, 1))),
            ("response topic", twice(v5::string(v5::RESPONSE_TOPIC, "r"))),
        ];
        for (what, properties) in publishes {
            let bytes = v5::publish("t/dup", 1, 1, &properties, REFUSED);
            expect_refused(&target, true, &bytes, PROTOCOL_ERROR, &format!("PUBLISH with {what} twice"));
        }
        let subscribe = v5::subscribe(1, &twice(vec![v5::SUBSCRIPTION_ID, 5]), &[(b"t/#", 0)]);
        expect_refused(&target, true, &subscribe, PROTOCOL_ERROR, "SUBSCRIBE with subscription id twice");
        // User properties may repeat (v5 section 3.3.2.3.7).
        let mut client = target.client_v5();
        client.send(&v5::publish("t/users", 1, 1, &twice(v5::user("k", "v")), b"fine"));
        let puback = client.expect_packet_within(WAIT);
        assert_eq!(puback.packet_type(), packet_type::PUBACK, "{puback:?}");
        target.check();
    }

    /// Property identifiers MQTT 5 does not define: Malformed Packet (v5 section
    /// 2.2.2.2), in CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE and DISCONNECT.
    #[test]
    fn unknown_property_ids_close_the_connection() {
        let target = Target::start(&[]);
        for id in [0x00u8, 0x04, 0x10, 0x2B, 0x50, 0x7F] {
            let property = vec![id, 0, 0, 0, 1];
            expect_connect_refused(&target, property.clone(), MALFORMED_PACKET, &format!("CONNECT property {id:#04x}"));
            let cases = [
                ("PUBLISH", v5::publish("t/unknown", 1, 1, &property, REFUSED)),
                ("SUBSCRIBE", v5::subscribe(1, &property, &[(b"t/#", 0)])),
                ("UNSUBSCRIBE", v5::unsubscribe(1, &property, &[b"t/#"])),
                ("DISCONNECT", v5::disconnect(0, &property)),
            ];
            for (name, bytes) in cases {
                expect_refused(&target, true, &bytes, MALFORMED_PACKET, &format!("{name} with property {id:#04x}"));
            }
        }
        target.check();
    }

    /// Topic alias 0, which is not permitted [MQTT-3.3.2-8] (v5): DISCONNECT 0x82
    /// (Protocol Error); above the Topic Alias Maximum the broker announced
    /// [MQTT-3.3.2-9] (v5): 0x94 (Topic Alias invalid); an alias used before it
    /// was set, with an empty topic: 0x82 (v5 section 3.3.4). None of the
    /// messages is delivered.
    #[test]
    fn topic_aliases_out_of_range_or_unset_close_the_connection() {
        let target = Target::start(&["--topic-alias-maximum", "10"]);
        for (alias, reason) in [(0u16, PROTOCOL_ERROR), (11, TOPIC_ALIAS_INVALID), (65_535, TOPIC_ALIAS_INVALID)] {
            let bytes = v5::publish("t/alias", 1, 1, &v5::u16(v5::TOPIC_ALIAS, alias), REFUSED);
            expect_refused(&target, true, &bytes, reason, &format!("topic alias {alias}"));
        }
        let unset = v5::publish("", 1, 1, &v5::u16(v5::TOPIC_ALIAS, 3), REFUSED);
        expect_refused(&target, true, &unset, PROTOCOL_ERROR, "topic alias used before it was set");
        // "a Protocol Error if the Topic Name is zero length and there is no Topic
        // Alias" (v5 section 3.3.2.1); midge says 0x90 (Topic Name invalid).
        let mut client = attack(&target, true, &v5::publish("", 0, 0, &[], REFUSED));
        expect_closed_v5_any(&mut client, &[PROTOCOL_ERROR, TOPIC_NAME_INVALID], "empty topic without an alias");
        // An alias is per connection: one set on another connection is unknown here.
        let mut setter = target.client_v5();
        setter.send(&v5::publish("t/alias", 1, 1, &v5::u16(v5::TOPIC_ALIAS, 2), b"sets alias 2"));
        assert_eq!(setter.expect_packet_within(WAIT).packet_type(), packet_type::PUBACK);
        let other = v5::publish("", 1, 1, &v5::u16(v5::TOPIC_ALIAS, 2), REFUSED);
        expect_refused(&target, true, &other, PROTOCOL_ERROR, "another connection's topic alias");
        target.check();
    }

    /// A property that does not belong to the packet (v5 section 2.2.2.2: "a
    /// Control Packet which contains an Identifier which is not valid for its
    /// packet type … is a Malformed Packet"): DISCONNECT 0x81, or 0x82 for a
    /// subscription identifier in a client's PUBLISH [MQTT-3.3.4-6].
    #[test]
    fn properties_in_the_wrong_packet_close_the_connection() {
        let target = Target::start(&[]);
        expect_connect_refused(&target, v5::u16(v5::TOPIC_ALIAS, 1), MALFORMED_PACKET, "topic alias in CONNECT");
        expect_connect_refused(
            &target,
            v5::string(v5::REASON_STRING, "x"),
            MALFORMED_PACKET,
            "reason string in CONNECT",
        );
        let cases = [
            ("session expiry in PUBLISH", v5::publish("t/p", 1, 1, &v5::u32(v5::SESSION_EXPIRY, 1), REFUSED)),
            ("receive maximum in PUBLISH", v5::publish("t/p", 1, 1, &v5::u16(v5::RECEIVE_MAXIMUM, 1), REFUSED)),
            ("message expiry in SUBSCRIBE", v5::subscribe(1, &v5::u32(v5::MESSAGE_EXPIRY, 1), &[(b"t/#", 0)])),
            ("topic alias in UNSUBSCRIBE", v5::unsubscribe(1, &v5::u16(v5::TOPIC_ALIAS, 1), &[b"t/#"])),
        ];
        for (what, bytes) in cases {
            expect_refused(&target, true, &bytes, MALFORMED_PACKET, what);
        }
        let mut client = target.client_v5();
        client.send(&v5::publish("t/p", 1, 1, &[v5::SUBSCRIPTION_ID, 1], REFUSED));
        expect_closed_v5_any(&mut client, &[MALFORMED_PACKET, PROTOCOL_ERROR], "subscription id in a client's PUBLISH");
        target.check();
    }

    /// A property length running past the end of the packet, a property whose
    /// value runs past the property length, a property length of five bytes:
    /// Malformed Packet, DISCONNECT 0x81 (v5 section 2.2.2.1).
    #[test]
    fn property_lengths_beyond_the_packet_close_the_connection() {
        let target = Target::start(&[]);
        let publish_with = |raw_properties: &[u8]| {
            let mut body = build::string("t/plen");
            body.extend([0, 1]);
            body.extend_from_slice(raw_properties);
            build::packet(0x32, &body)
        };
        let cases = [
            ("property length 200 in a short packet", publish_with(&[200, 1, 0x02, 0, 0])),
            ("property length 2^28-1", publish_with(&[0xFF, 0xFF, 0xFF, 0x7F, 0x02])),
            ("property length of five bytes", publish_with(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F])),
            ("string value past the property length", publish_with(&[3, v5::CONTENT_TYPE, 0, 50, b'a'])),
            ("integer value cut by the property length", publish_with(&[3, v5::MESSAGE_EXPIRY, 0, 0])),
        ];
        for (what, bytes) in cases {
            expect_refused(&target, true, &bytes, MALFORMED_PACKET, what);
        }
        let mut connect = V5Connect::new(unique("plen")).build();
        // Property length (after the 10 bytes of the variable header) set far too large.
        connect[2 + 10] = 0x7F;
        let mut client = RawClient::connect(target.addr());
        client.send(&connect);
        expect_closed_v5(&mut client, MALFORMED_PACKET, "CONNECT property length beyond the packet");
        target.check();
    }
}

mod mutations {
    use super::*;

    /// A valid stream of every packet a client sends, MQTT 3.1.1 or 5.
    fn valid_stream(v5: bool, id: &str) -> Vec<u8> {
        let mut stream = Vec::new();
        if v5 {
            stream.extend(
                V5Connect::new(id)
                    .properties([v5::u32(v5::SESSION_EXPIRY, 0), v5::u16(v5::TOPIC_ALIAS_MAXIMUM, 5)].concat())
                    .will(v5::user("k", "v"), "m/will", b"mutant will")
                    .build(),
            );
            stream.extend(v5::subscribe(1, &[v5::SUBSCRIPTION_ID, 3], &[(b"m/+", 2), (b"m/#", 1)]));
            stream.extend(v5::publish("m/a", 0, 0, &v5::u16(v5::TOPIC_ALIAS, 1), b"mutant 0"));
            stream.extend(v5::publish("", 1, 2, &v5::u16(v5::TOPIC_ALIAS, 1), b"mutant 1"));
            stream.extend(v5::publish("m/b", 2, 3, &v5::string(v5::CONTENT_TYPE, "t"), b"mutant 2"));
            stream.extend(build::pubrel(3));
            stream.extend(v5::unsubscribe(4, &[], &[b"m/+"]));
            stream.extend(build::pingreq());
            stream.extend(v5::disconnect(0, &[]));
        } else {
            stream.extend(Connect::new(id).will("m/will", b"mutant will", 1, false).username("u").build());
            stream.extend(build::subscribe(1, &[("m/+", 2), ("m/#", 1)]));
            stream.extend(build::publish("m/a", b"mutant 0"));
            stream.extend(PublishPacket::new("m/a", b"mutant 1").qos(1, 2).build());
            stream.extend(PublishPacket::new("m/b", b"mutant 2").qos(2, 3).retain().build());
            stream.extend(build::pubrel(3));
            stream.extend(build::unsubscribe(4, &["m/+"]));
            stream.extend(build::pingreq());
            stream.extend(build::disconnect());
        }
        stream
    }

    /// Changes `stream` in one to four random ways: a byte flipped, set to 0x00 or
    /// 0xFF, inserted or removed, a range duplicated, the end cut off.
    fn mutate(rng: &mut Rng, stream: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(stream.len());
            match rng.below(7) {
                0 => stream[at] ^= 1 << rng.below(8),
                1 => stream[at] = 0x00,
                2 => stream[at] = 0xFF,
                3 => stream.insert(at, rng.next() as u8),
                4 if stream.len() > 2 => {
                    stream.remove(at);
                }
                5 => {
                    let end = (at + 1 + rng.below(16)).min(stream.len());
                    let copy = stream[at..end].to_vec();
                    stream.splice(at..at, copy);
                }
                _ => stream.truncate(at.max(1)),
            }
        }
    }

    /// A few hundred random mutations of valid 3.1.1 and 5 streams (seeded; the
    /// seed is printed, `HOSTILE_SEED` replays it), each sent on its own
    /// connection, which is then half-closed: the broker answers or closes each,
    /// never crashes, and keeps serving.
    #[test]
    fn random_mutations_of_valid_streams_never_stop_the_broker() {
        let seed = std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        println!("random mutations: HOSTILE_SEED={seed}");
        let target = Target::start(&[]);
        const RUNS: usize = 400;
        in_parallel(RUNS, 4, |run| {
            let mut rng = Rng::new(seed ^ (run as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut stream = valid_stream(run % 2 == 1, &format!("mutant-{run}"));
            mutate(&mut rng, &mut stream);
            let mut client = RawClient::connect(target.addr());
            let _ = client.try_send(&stream);
            client.shutdown_write();
            // The broker ends the connection on end of stream, whatever it made of it.
            let deadline = Instant::now() + WAIT;
            loop {
                match client.recv_packet(deadline.saturating_duration_since(Instant::now())) {
                    Ok(packet) => {
                        if let Ok(Some(id)) = packet.publish().map(|p| p.packet_id) {
                            let _ = client.try_send(&build::puback(id));
                        }
                    }
                    Err(RecvError::TimedOut) => {
                        panic!("seed {seed} run {run}: still open after {WAIT:?}; stream {stream:02x?}")
                    }
                    Err(_) => break,
                }
            }
            if run % 100 == 99 {
                target.assert_alive();
            }
        });
        target.check();
        println!("random mutations: {RUNS} streams, seed {seed}, watcher got {} messages", target.watcher.total());
    }
}

mod memory {
    use super::*;

    /// A PUBLISH fixed header claiming a remaining length of 268,435,455 bytes.
    const CLAIM_256MB: [u8; 5] = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];

    /// With the default maximum packet size (1 MiB), a 256 MB claim is refused
    /// from its fixed header alone, before any body is read: 3.1.1 closed, v5
    /// DISCONNECT 0x95 (Packet too large) [MQTT-3.2.2-15] (v5) — eight clients at
    /// once, and the broker's memory does not move.
    #[test]
    fn claims_of_256_mb_beyond_the_maximum_packet_size_are_refused_at_once() {
        let target = Target::start(&[]);
        in_parallel(16, 8, |i| {
            let v5 = i % 2 == 1;
            let mut client = attack(&target, v5, &CLAIM_256MB);
            let _ = client.try_send(&vec![0u8; 64 * 1024]);
            let what = format!("a 256 MB claim (v5: {v5})");
            if v5 {
                expect_closed_v5(&mut client, PACKET_TOO_LARGE, &what);
            } else {
                expect_closed(&mut client, &what);
            }
        });
        target.check();
        assert!(target.rss_growth_mb() < 50.0, "RSS grew by {:.1} MB", target.rss_growth_mb());
    }

    /// With the maximum packet size raised to the protocol's limit, eight
    /// clients each claim 256 MB and trickle the body in: the broker's memory
    /// follows the bytes that arrived (2 MB each), not the 2 GB claimed, and it
    /// keeps serving others meanwhile.
    #[test]
    fn claims_of_256_mb_allocate_only_the_bytes_that_arrived() {
        let target = Target::start(&["--max-packet-size", "268435460"]);
        let chunk = vec![b'x'; 64 * 1024];
        let clients: Vec<RawClient> = (0..8)
            .map(|_| {
                let mut client = target.client();
                client.send(&CLAIM_256MB);
                client.send(&build::string("t/claim"));
                client
            })
            .collect();
        let clients = Mutex::new(clients);
        // 32 rounds of 64 KB each, paced: the claims stay open for a while.
        for _round in 0..32 {
            in_parallel(8, 8, |i| clients.lock().unwrap()[i].send(&chunk));
            thread::sleep(Duration::from_millis(20));
        }
        // Every byte sent has been read (the socket buffers drain), or is about to be.
        let round_trip = target.check();
        let grown = target.rss_growth_mb();
        let memory = memory(target.pid());
        println!(
            "8 × 256 MB claims, 2 MB sent each: broker RSS {} MB (growth {grown:.1} MB), peak {} MB; round trip meanwhile {round_trip:?}",
            memory.rss_kb / 1024,
            memory.hwm_kb / 1024
        );
        assert!(grown < 100.0, "RSS grew by {grown:.1} MB for 16 MB received against 2 GB claimed");
        drop(clients);
        target.check();
    }

    /// Clients that send a valid CONNECT, then a PUBLISH header claiming 1,000
    /// bytes and one byte every 500 ms — or one byte of a fixed header and
    /// nothing more — are closed by the per-packet deadline (`--packet-timeout
    /// 2`: two seconds, plus one per KiB declared) within a bounded time, eight
    /// at once, while the broker serves others. Mosquitto never closes them.
    #[test]
    fn clients_trickling_a_packet_are_closed_by_the_packet_deadline() {
        let target = Target::start(&["--packet-timeout", "2"]);
        let bound = Duration::from_secs(15);
        let closed_after = Mutex::new(Vec::new());
        thread::scope(|scope| {
            for i in 0..8 {
                let (target, closed_after) = (&target, &closed_after);
                scope.spawn(move || {
                    let mut client = target.client();
                    let trickle = i % 2 == 0;
                    client.send(if trickle { &[0x30, 0xE8, 0x07][..] } else { &[0x30][..] });
                    let started = Instant::now();
                    loop {
                        if trickle && client.try_send(b"x").is_err() {
                            break;
                        }
                        match client.recv_packet(Duration::from_millis(500)) {
                            Err(RecvError::TimedOut) => {}
                            Err(err) if err.is_closed() => break,
                            other => panic!("a trickling client got {other:?}"),
                        }
                        assert!(started.elapsed() < bound, "a trickling client is still connected after {bound:?}");
                    }
                    closed_after.lock().unwrap().push(started.elapsed());
                });
            }
            // Served meanwhile.
            target.check();
        });
        let closed_after = closed_after.into_inner().unwrap();
        println!("8 trickling clients closed after {closed_after:?} (--packet-timeout 2)");
        assert!(
            closed_after.iter().all(|d| *d >= Duration::from_millis(1500)),
            "closed before the deadline: {closed_after:?}"
        );
        target.check();
    }

    /// The deadline grows with the packet: an 8 KiB PUBLISH sent in eight pieces
    /// over about three seconds, under `--packet-timeout 1` (one second plus
    /// eight for its 8 KiB), is taken whole and acknowledged.
    #[test]
    fn a_large_packet_arriving_slowly_within_its_budget_is_taken() {
        let target = Target::start(&["--packet-timeout", "1"]);
        let mut client = target.client();
        let packet = PublishPacket::new("t/slow", vec![b's'; 8 * 1024]).qos(1, 9).build();
        for piece in packet.chunks(packet.len().div_ceil(8)) {
            client.send(piece);
            // Pacing of the slow client, not a wait for the broker.
            thread::sleep(Duration::from_millis(400));
        }
        assert_eq!(client.expect_puback(), 9);
        target.check();
    }
}

mod faults {
    use super::*;

    /// Looking up retained messages walks an index, and a SUBSCRIBE whose
    /// filters make it look through many (a `+` level over 20,000 retained
    /// topics, 500 times) yields to other clients as it goes: on one thread,
    /// a client connecting meanwhile is served at once, not after the
    /// SUBSCRIBE (a scan of every retained message per filter held the
    /// broker for 55 s with 2,000 filters against 100,000 messages).
    #[test]
    fn an_expensive_subscribe_against_many_retained_messages_does_not_stall_others() {
        let target = Target::start(&["--threads", "1"]);
        let mut retainer = RawClient::connected(target.addr(), "retainer");
        let mut batch = Vec::new();
        for i in 0..20_000 {
            batch.extend(PublishPacket::new(format!("dev/{i}/status"), "on").retain().build());
        }
        retainer.send(&batch);
        retainer.ping();
        let mut expensive = RawClient::connected(target.addr(), "expensive");
        let filters: Vec<String> = (0..500).map(|i| format!("dev/+/{i}/none")).collect();
        let asked: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 0)).collect();
        expensive.send(&build::subscribe(1, &asked));
        // Let the lookups begin, then measure a newcomer's round trip.
        thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let mut newcomer = RawClient::connected(target.addr(), "newcomer");
        newcomer.ping();
        let served_in = started.elapsed();
        let suback = expensive.recv_packet(Duration::from_secs(120)).expect("a SUBACK");
        let subscribe_took = started.elapsed();
        assert_eq!(suback.packet_type(), packet_type::SUBACK);
        assert!(
            served_in < Duration::from_millis(1500),
            "a newcomer waited {served_in:?} while the SUBSCRIBE ran ({subscribe_took:?} in all)"
        );
        target.check();
    }

    /// A refused client that keeps its socket open makes the broker read on
    /// for up to 2 s (so a client still sending sees the reason, not a
    /// reset), but at most 1,024 connections linger at once: 1,500 refused
    /// CONNECTs held open leave the broker well under 1,500 open files
    /// meanwhile, and a normal client is served.
    #[test]
    fn lingering_after_refusals_is_capped_so_a_flood_cannot_pile_up_open_files() {
        let target = Target::start(&[]);
        let open_files = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
        let before = open_files(target.pid());
        // Protocol level 9: refused with CONNACK 0x01 [MQTT-3.1.2-2], then lingering.
        let connect = Connect::new("refused").protocol("MQTT", 9).build();
        let mut held = Vec::new();
        let mut most = 0;
        for i in 0..1500 {
            let Ok(mut socket) = TcpStream::connect(target.addr()) else { break };
            use std::io::{Read, Write};
            socket.set_read_timeout(Some(WAIT)).unwrap();
            socket.write_all(&connect).unwrap();
            let mut connack = [0u8; 4];
            socket.read_exact(&mut connack).unwrap();
            assert_eq!(connack, [0x20, 0x02, 0x00, 0x01], "refused with 0x01");
            held.push(socket);
            if i % 100 == 99 {
                most = most.max(open_files(target.pid()));
            }
        }
        most = most.max(open_files(target.pid()));
        assert_eq!(held.len(), 1500);
        assert!(most < before + 1024 + 64, "{most} open files (from {before}) while 1,500 refused clients lingered");
        target.check();
        drop(held);
    }

    /// What the persistent subscriber received.
    #[derive(Default)]
    struct Received {
        payloads: std::collections::HashSet<Vec<u8>>,
        reconnects: usize,
    }

    /// The persistent subscriber's thread: receives and acknowledges QoS 1 and 2,
    /// and once, after `drop_after` messages, vanishes mid-flow (a PUBLISH not
    /// acknowledged) and comes back to its session.
    fn persistent_subscriber(addr: SocketAddr, id: String, received: Arc<Mutex<Received>>, stop: Arc<AtomicBool>) {
        let drop_after = 300;
        let mut client = RawClient::handshake(addr, &Connect::new(&id).clean_session(false)).0;
        let mut count = 0;
        while !stop.load(Ordering::Relaxed) {
            let packet = match client.recv_packet(Duration::from_millis(100)) {
                Ok(packet) => packet,
                Err(RecvError::TimedOut) => continue,
                Err(err) => panic!("the persistent subscriber: {err}"),
            };
            match packet.packet_type() {
                packet_type::PUBLISH => {
                    let publish = packet.publish().unwrap_or_else(|e| panic!("{e}"));
                    count += 1;
                    if count == drop_after {
                        // Vanish without acknowledging, then resume the session.
                        drop(client);
                        let (again, connack) = RawClient::handshake(addr, &Connect::new(&id).clean_session(false));
                        assert!(connack.session_present, "the persistent session is gone");
                        client = again;
                        received.lock().unwrap().reconnects += 1;
                        continue;
                    }
                    match publish.qos {
                        1 => client.send(&build::puback(publish.id())),
                        2 => client.send(&build::pubrec(publish.id())),
                        _ => {}
                    }
                    received.lock().unwrap().payloads.insert(publish.payload);
                }
                packet_type::PUBREL => {
                    let id = packet.pubrel().unwrap_or_else(|e| panic!("{e}"));
                    client.send(&build::pubcomp(id));
                }
                _ => panic!("the persistent subscriber got {packet:?}"),
            }
        }
    }

    /// 1,200 publishers vanish in the middle of QoS 1 and QoS 2 flows (before
    /// the acknowledgement, after PUBACK, after PUBREC and before PUBREL) while a
    /// persistent subscriber receives, itself vanishing once mid-flow: every
    /// message whose PUBACK or PUBREC the publisher saw reaches the subscriber
    /// (a QoS 2 message is the broker's once PUBREC is sent, [MQTT-4.3.3-2]), and
    /// the broker keeps serving.
    #[test]
    fn publishers_vanishing_mid_flow_lose_no_acknowledged_message() {
        let target = Target::start(&["--max-queued-messages", "100000"]);
        let id = unique("persistent");
        {
            let mut setup = RawClient::handshake(target.addr(), &Connect::new(&id).clean_session(false)).0;
            assert_eq!(setup.subscribe(1, &[("flow/#", 2)]), [2]);
            drop(setup);
        }
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscriber = {
            let (received, stop, addr) = (Arc::clone(&received), Arc::clone(&stop), target.addr());
            thread::spawn(move || persistent_subscriber(addr, id, received, stop))
        };
        const PUBLISHERS: usize = 1_200;
        let acknowledged = Mutex::new(Vec::new());
        in_parallel(PUBLISHERS, 6, |i| {
            let mut client = target.client();
            let payload = format!("m{i}").into_bytes();
            let qos = if i % 2 == 0 { 1 } else { 2 };
            client.send(&PublishPacket::new(format!("flow/{}", i % 10), &payload).qos(qos, 1).build());
            if i % 3 == 0 {
                return; // Gone before the acknowledgement.
            }
            let ack = client.expect_packet();
            let acked = if qos == 1 { ack.puback() } else { ack.pubrec() };
            assert_eq!(acked, Ok(1), "{ack:?}");
            acknowledged.lock().unwrap().push(payload);
            // Gone after PUBACK, or after PUBREC without PUBREL.
        });
        let acknowledged = acknowledged.into_inner().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let missing = loop {
            let missing: Vec<String> = {
                let received = received.lock().unwrap();
                acknowledged
                    .iter()
                    .filter(|p| !received.payloads.contains(*p))
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            };
            if missing.is_empty() || Instant::now() > deadline || subscriber.is_finished() {
                break missing;
            }
            thread::sleep(Duration::from_millis(50));
        };
        stop.store(true, Ordering::Relaxed);
        subscriber.join().expect("the persistent subscriber failed");
        assert!(
            missing.is_empty(),
            "{} acknowledged messages never arrived: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        let received = received.lock().unwrap();
        assert_eq!(received.reconnects, 1);
        println!(
            "{PUBLISHERS} publishers vanished mid-flow: {} acknowledged, {} received by the persistent subscriber",
            acknowledged.len(),
            received.payloads.len()
        );
        target.check();
    }

    /// Subscribers that stop reading (at QoS 0 and 1) while a publisher floods
    /// 64 MB at them: the broker keeps serving others meanwhile, the publisher is
    /// not stalled for good, and the broker's memory stays bounded.
    #[test]
    fn subscribers_that_stop_reading_do_not_stop_the_broker() {
        let target = Target::start(&[]);
        let mut stuck = Vec::new();
        for qos in [0, 1] {
            let mut client = target.client();
            assert_eq!(client.subscribe(1, &[("flood/#", qos)]), [qos]);
            stuck.push(client); // Never read again.
        }
        let payload = vec![b'f'; 16 * 1024];
        let done = AtomicBool::new(false);
        let latencies = Mutex::new(Vec::new());
        thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let rtt = round_trip(target.addr()).unwrap_or_else(|why| panic!("during the flood: {why}"));
                    latencies.lock().unwrap().push(rtt);
                }
            });
            let mut publisher = target.client();
            for i in 0..4_000u32 {
                publisher.send(&build::publish(format!("flood/{}", i % 8), &payload));
            }
            publisher.ping();
            done.store(true, Ordering::Relaxed);
        });
        let latencies = latencies.into_inner().unwrap();
        let grown = target.rss_growth_mb();
        let memory = memory(target.pid());
        println!(
            "64 MB flood at 2 subscribers that never read: broker RSS {} MB (growth {grown:.1} MB), peak {} MB; {} round trips meanwhile, max {:?}",
            memory.rss_kb / 1024,
            memory.hwm_kb / 1024,
            latencies.len(),
            latencies.iter().max()
        );
        assert!(grown < 150.0, "RSS grew by {grown:.1} MB");
        target.check();
        drop(stuck);
        target.check();
    }
}

mod figures {
    use super::*;

    /// The percentile `p` (0–100) of sorted `values`.
    fn percentile(values: &[Duration], p: usize) -> Duration {
        values[(values.len() - 1) * p / 100]
    }

    /// A normal client's round trips (QoS 1 publish to itself), one every 20 ms
    /// for `period`.
    fn latencies(addr: SocketAddr, period: Duration) -> Vec<Duration> {
        let id = unique("normal");
        let topic = format!("normal/{id}");
        let mut client = RawClient::connected(addr, &id);
        assert_eq!(client.subscribe(1, &[(&topic, 1)]), [1]);
        let mut out = Vec::new();
        let end = Instant::now() + period;
        let mut packet_id = 1u16;
        while Instant::now() < end {
            let sent = Instant::now();
            client.send(&PublishPacket::new(&topic, b"rtt").qos(1, packet_id).build());
            loop {
                let packet = client.expect_packet_within(WAIT);
                if packet.packet_type() == packet_type::PUBLISH {
                    out.push(sent.elapsed());
                    let publish = packet.publish().unwrap_or_else(|e| panic!("{e}"));
                    client.send(&build::puback(publish.id()));
                    break;
                }
            }
            packet_id = packet_id % 60_000 + 1;
            thread::sleep(Duration::from_millis(20));
        }
        out.sort();
        out
    }

    /// Figures for docs/reliability.md: the broker's memory and a normal client's
    /// round-trip latency, first alone, then while eight clients flood malformed
    /// packets (each connects, sends a CONNECT and a random malformed packet, and
    /// is closed). The latency under attack stays within a second.
    #[test]
    fn a_normal_client_is_served_while_eight_clients_flood_malformed_packets() {
        let target = Target::start(&[]);
        let before = memory(target.pid());
        let quiet = latencies(target.addr(), Duration::from_secs(1));
        let stop = AtomicBool::new(false);
        let attacks = AtomicUsize::new(0);
        let under_attack = thread::scope(|scope| {
            for attacker in 0..8u64 {
                let (stop, attacks, addr) = (&stop, &attacks, target.addr());
                scope.spawn(move || {
                    let mut rng = Rng::new(0xA77AC4 + attacker);
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = TcpStream::connect_timeout(&addr, WAIT) else { continue };
                        let _ = stream.set_write_timeout(Some(WAIT));
                        let mut bytes = connect_v3();
                        let garbage: Vec<u8> = (0..8 + rng.below(64)).map(|_| rng.next() as u8).collect();
                        // A reserved type, or flags wrong, so it is malformed.
                        bytes.push([0x00, 0x21, 0x83, 0xF0, 0x36][rng.below(5)]);
                        bytes.extend(garbage);
                        use std::io::{Read, Write};
                        let _ = stream.write_all(&bytes);
                        let _ = stream.set_read_timeout(Some(WAIT));
                        let mut sink = [0u8; 256];
                        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                        attacks.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let measured = latencies(target.addr(), Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            measured
        });
        let after = memory(target.pid());
        let line = |name: &str, v: &[Duration]| {
            format!(
                "{name}: {} round trips, p50 {:?}, p99 {:?}, max {:?}",
                v.len(),
                percentile(v, 50),
                percentile(v, 99),
                v[v.len() - 1]
            )
        };
        println!("{}", line("normal client alone", &quiet));
        println!(
            "{} while 8 clients sent {} malformed connections",
            line("normal client under attack", &under_attack),
            attacks.load(Ordering::Relaxed)
        );
        println!(
            "broker memory: RSS {} MB before, {} MB after, peak (VmHWM) {} MB",
            before.rss_kb / 1024,
            after.rss_kb / 1024,
            after.hwm_kb / 1024
        );
        assert!(percentile(&under_attack, 99) < Duration::from_secs(1), "{}", line("under attack", &under_attack));
        target.check();
    }
}
