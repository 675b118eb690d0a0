//! The codec target: arbitrary bytes through `midge_codec::decode`, as each
//! protocol version, whole and fed byte by byte, under a large and a small
//! packet size limit; every packet that decodes is re-encoded and decoded
//! again.
//!
//! Invariants (a panic names the one broken):
//! - decoding never panics, and `Ok(None)` ("need more") consumes nothing;
//! - the same stream gives the same packets and the same first error
//!   whether it arrives whole or one byte at a time;
//! - a limit below a packet's size fails that packet with `PacketTooLarge`
//!   naming its size, and changes nothing before it;
//! - a decoded packet encodes; `encoded_len` is the length written; the
//!   encoding decodes back to an equal packet and consumes exactly itself;
//! - the encoding is canonical: never longer than the bytes it was decoded
//!   from (fewest-byte lengths, omitted defaults), and a fixed point
//!   (encoding the re-decoded packet gives the same bytes);
//! - a PUBLISH encodes identically through `encode`, `encode_publish` and
//!   `encode_publish_view`, and `publish_encoded_len` agrees;
//! - topic helpers agree with each other on the topics and filters found.

use arbitrary::Unstructured;
use bytes::{Bytes, BytesMut};
use midge_codec::topic::{self, SharedFilter};
use midge_codec::*;

use crate::Features;

/// The versions every input is decoded as.
pub const VERSIONS: [ProtocolVersion; 3] = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

/// The large limit: big enough for any packet a fuzzer builds, small enough
/// that a claimed 256 MB body is refused from its header.
pub const MAX_PACKET_SIZE: u32 = 1 << 20;

/// The codec target, for libFuzzer.
pub fn codec(data: &[u8]) {
    codec_with(data, &mut Features::default());
}

/// The codec target, noting what `data` reached in `features`.
pub fn codec_with(data: &[u8], features: &mut Features) {
    for version in VERSIONS {
        let whole = decode_stream(data, version, MAX_PACKET_SIZE);
        for (packet, consumed) in &whole.packets {
            features.add((version, packet.name()));
            check_round_trip(packet, version, consumed);
            check_topics(packet, features);
        }
        if let Some(e) = &whole.error {
            features.add((version, std::mem::discriminant(e)));
            // Every error maps onto a v5 reason code and prints.
            let _ = (e.reason_code(), e.to_string());
        }

        let trickled = decode_trickle(data, version, MAX_PACKET_SIZE);
        assert_eq!(
            trickled.outcome(),
            whole.outcome(),
            "{version:?}: the stream decodes differently fed one byte at a time"
        );

        check_small_limit(data, version, &whole);
    }
}

/// What decoding a stream gave: the packets with the bytes each came from,
/// then the error that stopped it, if any.
struct Decoded {
    packets: Vec<(Packet, Bytes)>,
    error: Option<DecodeError>,
}

impl Decoded {
    fn outcome(&self) -> (Vec<&Packet>, Option<DecodeError>) {
        (self.packets.iter().map(|(p, _)| p).collect(), self.error)
    }
}

/// Decodes packets from `data` until it runs out or fails.
fn decode_stream(data: &[u8], version: ProtocolVersion, max: u32) -> Decoded {
    let mut buf = BytesMut::from(data);
    let mut out = Decoded { packets: Vec::new(), error: None };
    loop {
        let before = buf.clone().freeze();
        match decode(&mut buf, version, max) {
            Ok(Some(packet)) => {
                let used = before.len() - buf.len();
                assert!(used > 0, "{version:?}: {packet:?} decoded from no bytes");
                out.packets.push((packet, before.slice(..used)));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before.len(), "{version:?}: \"need more\" consumed bytes");
                return out;
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
}

/// Decodes `data` as it would arrive one byte per read.
fn decode_trickle(data: &[u8], version: ProtocolVersion, max: u32) -> Decoded {
    let mut buf = BytesMut::new();
    let mut out = Decoded { packets: Vec::new(), error: None };
    for byte in data {
        buf.extend_from_slice(&[*byte]);
        loop {
            let len = buf.len();
            match decode(&mut buf, version, max) {
                Ok(Some(packet)) => out.packets.push((packet, Bytes::new())),
                Ok(None) => {
                    assert_eq!(buf.len(), len, "{version:?}: \"need more\" consumed bytes");
                    break;
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out
}

/// Under a limit that some packet of the stream exceeds, the packets
/// before it decode as before and that one fails with its size.
fn check_small_limit(data: &[u8], version: ProtocolVersion, whole: &Decoded) {
    let limit = u32::try_from(data.len() / 2).unwrap_or(u32::MAX).max(2);
    let limited = decode_stream(data, version, limit);
    let first_too_big = whole.packets.iter().position(|(_, bytes)| bytes.len() > limit as usize);
    match first_too_big {
        Some(i) => {
            let before: Vec<&Packet> = whole.packets.iter().take(i).map(|(p, _)| p).collect();
            let size = whole.packets.get(i).map(|(_, bytes)| bytes.len());
            assert_eq!(limited.outcome().0, before, "{version:?}: limit {limit} changed earlier packets");
            assert!(
                matches!(limited.error, Some(DecodeError::PacketTooLarge { size: s, max }) if Some(s as usize) == size && max == limit),
                "{version:?}: a packet of {size:?} bytes under limit {limit} gave {:?}",
                limited.error
            );
        }
        None => {
            // Every whole packet fits; a failing one may have claimed more
            // than the limit (refused earlier, from its header), or not.
            assert_eq!(limited.outcome().0, whole.outcome().0, "{version:?}: limit {limit} changed packets that fit");
            if limited.error != whole.error {
                assert!(
                    matches!(limited.error, Some(DecodeError::PacketTooLarge { max, .. }) if max == limit),
                    "{version:?}: limit {limit} gave {:?} where no limit gave {:?}",
                    limited.error,
                    whole.error
                );
            }
        }
    }
}

fn encode_vec(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut buf) {
        panic!("{version:?}: decoded {packet:?} does not encode: {e}");
    }
    assert!(buf.len() == encoded_len(packet, version), "{version:?}: encoded_len disagrees with encode for {packet:?}");
    buf
}

fn check_round_trip(packet: &Packet, version: ProtocolVersion, original: &[u8]) {
    let bytes = encode_vec(packet, version);
    assert!(
        bytes.len() <= original.len(),
        "{version:?}: {packet:?} re-encodes to {} bytes, longer than the {} it came from: {bytes:02x?}",
        bytes.len(),
        original.len()
    );
    let mut again = bytes.clone();
    match decode(&mut again, version, MAX_PACKET_SIZE) {
        Ok(Some(decoded)) => {
            assert_eq!(&decoded, packet, "{version:?}: round trip changed the packet ({bytes:02x?})");
            assert!(again.is_empty(), "{version:?}: {} bytes left after the re-encoded packet", again.len());
            assert_eq!(encode_vec(&decoded, version), bytes, "{version:?}: encoding is not a fixed point");
        }
        other => panic!("{version:?}: {packet:?} re-encoded as {bytes:02x?} decodes as {other:?}"),
    }
    if let Packet::Publish(publish) = packet {
        let mut direct = BytesMut::new();
        let mut view = BytesMut::new();
        let encoded = encode_publish(publish, version, &mut direct);
        let viewed = encode_publish_view(&PublishView::from(publish), version, &mut view);
        assert!(encoded.is_ok() && viewed.is_ok(), "{version:?}: PUBLISH encoders disagree on success");
        assert_eq!(direct, bytes, "{version:?}: encode_publish differs from encode");
        assert_eq!(view, bytes, "{version:?}: encode_publish_view differs from encode");
        assert_eq!(publish_encoded_len(publish, version), bytes.len(), "{version:?}: publish_encoded_len");
    }
}

/// Topic names and filters that decoded, through the topic helpers.
fn check_topics(packet: &Packet, features: &mut Features) {
    let mut names: Vec<&str> = Vec::new();
    let mut filters: Vec<&str> = Vec::new();
    match packet {
        Packet::Publish(p) => names.push(&p.topic),
        Packet::Connect(c) => names.extend(c.will.as_ref().map(|w| &*w.topic)),
        Packet::Subscribe(s) => filters.extend(s.subscriptions.iter().map(|s| s.topic_filter.as_str())),
        Packet::Unsubscribe(u) => filters.extend(u.topic_filters.iter().map(String::as_str)),
        _ => {}
    }
    for filter in &filters {
        let valid = topic::validate_topic_filter(filter);
        features.add(("filter", valid.as_ref().err().map(std::mem::discriminant)));
        let shared = SharedFilter::parse(filter);
        features.add(("shared", shared.as_ref().err().map(std::mem::discriminant), matches!(shared, Ok(Some(_)))));
        if let Ok(Some(s)) = shared {
            assert!(
                topic::validate_topic_filter(s.filter).is_ok(),
                "a shared filter's own filter is invalid: {filter:?}"
            );
            assert!(!s.group.is_empty() && !s.group.contains(['/', '+', '#']), "bad share name in {filter:?}");
        }
        if valid.is_err() {
            continue;
        }
        let plain = shared.ok().flatten().map_or(*filter, |s| s.filter);
        for name in &names {
            if topic::validate_topic_name(name).is_ok() {
                let _ = topic::matches(plain, name);
            }
        }
        // A filter without wildcards matches exactly itself.
        if topic::validate_topic_name(plain).is_ok() {
            assert!(topic::matches(plain, plain), "{plain:?} does not match itself");
        }
        if !plain.starts_with('$') && topic::validate_topic_name(plain).is_ok() {
            assert!(topic::matches("#", plain), "'#' does not match {plain:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Generation: valid packets from random bytes, for the driver and the seeds.

/// A stream of one to four valid packets of one version, encoded, built
/// from `u`: inputs that get past the decoder's first checks, which random
/// bytes rarely do.
pub fn arbitrary_stream(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let version = *u.choose(&VERSIONS)?;
    let count = u.int_in_range(1..=4)?;
    let mut buf = BytesMut::new();
    for _ in 0..count {
        let packet = arbitrary_packet(u, version)?;
        // A packet the encoder refuses adds nothing; the others still go.
        let _ = encode(&packet, version, &mut buf);
    }
    Ok(buf.to_vec())
}

fn short_string(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let s: String = u.arbitrary()?;
    Ok(s.chars().filter(|c| *c != '\0').take(12).collect())
}

fn topic_name(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let levels = u.int_in_range(1..=4)?;
    let mut parts = Vec::new();
    for _ in 0..levels {
        parts.push(*u.choose(&["a", "b", "", "$SYS", "sensors", "é"])?);
    }
    Ok(parts.join("/"))
}

fn topic_filter(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let levels = u.int_in_range(1..=4)?;
    let mut parts = Vec::new();
    for _ in 0..levels {
        parts.push(*u.choose(&["a", "b", "", "+", "#", "$SYS", "x#", "+y"])?);
    }
    let filter = parts.join("/");
    Ok(if u.ratio(1, 4)? { format!("$share/g/{filter}") } else { filter })
}

fn binary(u: &mut Unstructured<'_>) -> arbitrary::Result<Bytes> {
    let len = u.int_in_range(0..=16)?;
    Ok(Bytes::copy_from_slice(u.bytes(len)?))
}

fn pid(u: &mut Unstructured<'_>) -> arbitrary::Result<PacketId> {
    Ok(PacketId::new(u.int_in_range(1..=u16::MAX)?).unwrap_or(PacketId::MIN))
}

fn qos(u: &mut Unstructured<'_>) -> arbitrary::Result<QoS> {
    Ok(*u.choose(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])?)
}

fn code(u: &mut Unstructured<'_>, codes: &[u8]) -> arbitrary::Result<ReasonCode> {
    Ok(ReasonCode::from_u8(*u.choose(codes)?).unwrap_or_default())
}

fn user_properties(u: &mut Unstructured<'_>, v5: bool) -> arbitrary::Result<Vec<UserProperty>> {
    let n = if v5 { u.int_in_range(0..=2)? } else { 0 };
    (0..n).map(|_| Ok((short_string(u)?, short_string(u)?))).collect()
}

fn opt<T>(
    u: &mut Unstructured<'_>,
    v5: bool,
    f: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Option<T>> {
    if v5 && u.arbitrary()? { f(u).map(Some) } else { Ok(None) }
}

fn ack_properties(u: &mut Unstructured<'_>, v5: bool) -> arbitrary::Result<AckProperties> {
    Ok(AckProperties { reason_string: opt(u, v5, short_string)?, user_properties: user_properties(u, v5)? })
}

const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];

/// Any packet `version` carries, with fields drawn from `u`; mostly valid,
/// sometimes not (a wildcard in a will topic, an unknown share group), so
/// the decoder's refusals are reached too.
pub fn arbitrary_packet(u: &mut Unstructured<'_>, version: ProtocolVersion) -> arbitrary::Result<Packet> {
    let v5 = version.is_v5();
    let kinds = if v5 { 16 } else { 15 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => {
            let will = if u.arbitrary()? {
                Some(Will {
                    topic: topic_name(u)?.into(),
                    payload: binary(u)?,
                    qos: qos(u)?,
                    retain: u.arbitrary()?,
                    properties: WillProperties {
                        will_delay_interval: opt(u, v5, |u| u.arbitrary())?,
                        payload_format_indicator: opt(u, v5, |u| u.int_in_range(0..=1))?,
                        message_expiry_interval: opt(u, v5, |u| u.arbitrary())?,
                        content_type: opt(u, v5, short_string)?,
                        response_topic: opt(u, v5, topic_name)?,
                        correlation_data: opt(u, v5, binary)?,
                        user_properties: user_properties(u, v5)?,
                    },
                })
            } else {
                None
            };
            let username = if u.arbitrary()? { Some(short_string(u)?) } else { None };
            let password = if u.arbitrary()? && (v5 || username.is_some()) { Some(binary(u)?) } else { None };
            let authentication_method = opt(u, v5, short_string)?;
            Packet::Connect(Box::new(Connect {
                protocol_version: version,
                clean_start: u.arbitrary()?,
                keep_alive: u.arbitrary()?,
                properties: ConnectProperties {
                    session_expiry_interval: opt(u, v5, |u| u.arbitrary())?,
                    receive_maximum: opt(u, v5, |u| u.int_in_range(1..=u16::MAX))?,
                    maximum_packet_size: opt(u, v5, |u| u.int_in_range(1..=u32::MAX))?,
                    topic_alias_maximum: opt(u, v5, |u| u.arbitrary())?,
                    request_response_information: opt(u, v5, |u| u.arbitrary())?,
                    request_problem_information: opt(u, v5, |u| u.arbitrary())?,
                    user_properties: user_properties(u, v5)?,
                    authentication_data: if authentication_method.is_some() { opt(u, v5, binary)? } else { None },
                    authentication_method,
                },
                client_id: short_string(u)?,
                will,
                username,
                password,
            }))
        }
        1 => {
            let codes: &[u8] = if v5 {
                &[0x00, 0x80, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x88, 0x8C, 0x90, 0x97, 0x9C]
            } else {
                &[0x00, 0x84, 0x85, 0x86, 0x87, 0x88]
            };
            let authentication_method = opt(u, v5, short_string)?;
            Packet::ConnAck(ConnAck {
                session_present: u.arbitrary()?,
                reason_code: code(u, codes)?,
                properties: ConnAckProperties {
                    session_expiry_interval: opt(u, v5, |u| u.arbitrary())?,
                    receive_maximum: opt(u, v5, |u| u.int_in_range(1..=u16::MAX))?,
                    maximum_qos: opt(u, v5, |u| Ok(*u.choose(&[QoS::AtMostOnce, QoS::AtLeastOnce])?))?,
                    retain_available: opt(u, v5, |u| u.arbitrary())?,
                    maximum_packet_size: opt(u, v5, |u| u.int_in_range(1..=u32::MAX))?,
                    assigned_client_identifier: opt(u, v5, short_string)?,
                    topic_alias_maximum: opt(u, v5, |u| u.arbitrary())?,
                    reason_string: opt(u, v5, short_string)?,
                    user_properties: user_properties(u, v5)?,
                    wildcard_subscription_available: opt(u, v5, |u| u.arbitrary())?,
                    subscription_identifiers_available: opt(u, v5, |u| u.arbitrary())?,
                    shared_subscription_available: opt(u, v5, |u| u.arbitrary())?,
                    server_keep_alive: opt(u, v5, |u| u.arbitrary())?,
                    response_information: opt(u, v5, short_string)?,
                    server_reference: opt(u, v5, short_string)?,
                    authentication_data: if authentication_method.is_some() { opt(u, v5, binary)? } else { None },
                    authentication_method,
                },
            })
        }
        2 => {
            let qos = qos(u)?;
            let topic_alias = opt(u, v5, |u| u.int_in_range(1..=u16::MAX))?;
            let topic = if topic_alias.is_some() && u.arbitrary()? { String::new() } else { topic_name(u)? };
            Packet::Publish(Publish {
                dup: qos != QoS::AtMostOnce && u.arbitrary()?,
                qos,
                retain: u.arbitrary()?,
                topic: topic.into(),
                packet_id: if qos == QoS::AtMostOnce { None } else { Some(pid(u)?) },
                properties: PublishProperties {
                    payload_format_indicator: opt(u, v5, |u| u.int_in_range(0..=1))?,
                    message_expiry_interval: opt(u, v5, |u| u.arbitrary())?,
                    topic_alias,
                    response_topic: opt(u, v5, topic_name)?,
                    correlation_data: opt(u, v5, binary)?,
                    user_properties: user_properties(u, v5)?,
                    subscription_identifiers: opt(u, v5, |u| u.int_in_range(1..=268_435_455))?.into_iter().collect(),
                    content_type: opt(u, v5, short_string)?,
                },
                payload: binary(u)?,
            })
        }
        kind @ 3..=6 => {
            let codes = if kind < 5 { PUBACK_CODES } else { PUBREL_CODES };
            let ack = PubAck {
                packet_id: pid(u)?,
                reason_code: if v5 { code(u, codes)? } else { ReasonCode::Success },
                properties: ack_properties(u, v5)?,
            };
            match kind {
                3 => Packet::PubAck(ack),
                4 => Packet::PubRec(ack),
                5 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        7 => {
            let n = u.int_in_range(1..=3)?;
            let mut subscriptions = Vec::new();
            for _ in 0..n {
                let qos = qos(u)?;
                let options = if v5 {
                    SubscriptionOptions {
                        qos,
                        no_local: u.arbitrary()?,
                        retain_as_published: u.arbitrary()?,
                        retain_handling: *u.choose(&[
                            RetainHandling::SendAtSubscribe,
                            RetainHandling::SendIfNew,
                            RetainHandling::DoNotSend,
                        ])?,
                    }
                } else {
                    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
                };
                subscriptions.push(Subscription { topic_filter: topic_filter(u)?, options });
            }
            Packet::Subscribe(Subscribe {
                packet_id: pid(u)?,
                properties: SubscribeProperties {
                    subscription_identifier: opt(u, v5, |u| u.int_in_range(1..=268_435_455))?,
                    user_properties: user_properties(u, v5)?,
                },
                subscriptions,
            })
        }
        8 => {
            let codes: &[u8] =
                if v5 { &[0x00, 0x01, 0x02, 0x80, 0x87, 0x8F, 0x9E, 0xA1, 0xA2] } else { &[0, 1, 2, 0x80] };
            let n = u.int_in_range(0..=3)?;
            Packet::SubAck(SubAck {
                packet_id: pid(u)?,
                properties: ack_properties(u, v5)?,
                reason_codes: (0..n).map(|_| code(u, codes)).collect::<arbitrary::Result<_>>()?,
            })
        }
        9 => {
            let n = u.int_in_range(1..=3)?;
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(u)?,
                user_properties: user_properties(u, v5)?,
                topic_filters: (0..n).map(|_| topic_filter(u)).collect::<arbitrary::Result<_>>()?,
            })
        }
        10 => {
            let n = if v5 { u.int_in_range(0..=3)? } else { 0 };
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(u)?,
                properties: ack_properties(u, v5)?,
                reason_codes: (0..n)
                    .map(|_| code(u, &[0x00, 0x11, 0x80, 0x87, 0x8F]))
                    .collect::<arbitrary::Result<_>>()?,
            })
        }
        11 => Packet::PingReq,
        12 => Packet::PingResp,
        13 | 14 => Packet::Disconnect(if v5 {
            Disconnect {
                reason_code: code(u, &[0x00, 0x04, 0x80, 0x81, 0x82, 0x8E, 0x93, 0x95, 0x98, 0x9C])?,
                properties: DisconnectProperties {
                    session_expiry_interval: opt(u, v5, |u| u.arbitrary())?,
                    reason_string: opt(u, v5, short_string)?,
                    user_properties: user_properties(u, v5)?,
                    server_reference: opt(u, v5, short_string)?,
                },
            }
        } else {
            Disconnect::default()
        }),
        _ => {
            let authentication_method = opt(u, v5, short_string)?;
            Packet::Auth(Auth {
                reason_code: code(u, &[0x00, 0x18, 0x19])?,
                properties: AuthProperties {
                    authentication_data: if authentication_method.is_some() { opt(u, v5, binary)? } else { None },
                    authentication_method,
                    reason_string: opt(u, v5, short_string)?,
                    user_properties: user_properties(u, v5)?,
                },
            })
        }
    })
}
