//! Packets to bytes.
//!
//! Each packet body is described once, by a function generic over a
//! [`Sink`]: run with a [`Counter`] it yields the length (and any field that
//! cannot be encoded), run with a [`Writer`] it appends the bytes. So
//! [`encode`] counts, reserves once and writes, with no intermediate buffer,
//! and [`encoded_len`] can never disagree with it.

use bytes::{BufMut, BytesMut};

use crate::decode::*;
use crate::error::EncodeError;
use crate::packet::*;
use crate::reason::ReasonCode;

/// Appends the encoding of `packet` for `version` to `buf`.
///
/// CONNECT is encoded for its own `protocol_version` (the field decides,
/// as on decode). Fields the version does not carry (v5 properties and
/// reason codes in 3.x) are dropped; 3.x CONNACK and SUBACK codes are
/// mapped onto the 3.x return codes. On error nothing is appended.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if let Packet::Publish(publish) = packet {
        return encode_publish(publish, version, buf);
    }
    let mut counter = Counter::default();
    body(packet, version, &mut counter);
    let len = counter.finish()?;
    write_fixed_header(buf, first_byte(packet), len);
    body(packet, version, &mut Writer(buf));
    Ok(())
}

/// Total encoded size of `packet` for `version`, fixed header included.
///
/// For a packet [`encode`] refuses, this is the size it would have had.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut counter = Counter::default();
    body(packet, version, &mut counter);
    total_len(counter.len)
}

/// Appends the encoding of `publish` for `version` to `buf`, as
/// [`encode_publish_view`] does.
pub fn encode_publish(publish: &Publish, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    encode_publish_view(&publish.into(), version, buf)
}

/// A PUBLISH whose parts are borrowed from wherever they live. A broker
/// sending one message to many clients encodes each copy from the shared
/// message, without building a [`Publish`] per copy (and touching the
/// reference counts of its topic and payload twice).
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    /// DUP flag; must be 0 for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name.
    pub topic: &'a str,
    /// Present iff qos > 0 [MQTT-2.3.1-5].
    pub packet_id: Option<PacketId>,
    /// v5 properties; `None` is an empty property block. Their Message
    /// Expiry Interval, Topic Alias and Subscription Identifiers are not
    /// used: those differ from copy to copy, and are the three below.
    pub properties: Option<&'a PublishProperties>,
    /// v5 Message Expiry Interval (what is left of it, on a copy).
    pub message_expiry_interval: Option<u32>,
    /// v5 Topic Alias.
    pub topic_alias: Option<u16>,
    /// v5 Subscription Identifiers (server to client).
    pub subscription_identifiers: &'a [u32],
    /// Application message.
    pub payload: &'a [u8],
}

impl<'a> PublishView<'a> {
    /// A view of `topic` and `payload` with no packet id, flags or
    /// properties, to fill in with struct update syntax.
    pub fn new(topic: &'a str, payload: &'a [u8]) -> PublishView<'a> {
        PublishView {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            properties: None,
            message_expiry_interval: None,
            topic_alias: None,
            subscription_identifiers: &[],
            payload,
        }
    }
}

impl<'a> From<&'a Publish> for PublishView<'a> {
    fn from(p: &'a Publish) -> PublishView<'a> {
        PublishView {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: Some(&p.properties),
            message_expiry_interval: p.properties.message_expiry_interval,
            topic_alias: p.properties.topic_alias,
            subscription_identifiers: &p.properties.subscription_identifiers,
            payload: &p.payload,
        }
    }
}

/// Appends the encoding of `publish` for `version` to `buf`: the hot path
/// of fan-out. Reserves once, then writes the header, topic, properties and
/// payload; the payload is copied once, from wherever it is borrowed.
pub fn encode_publish_view(
    publish: &PublishView<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    publish_body(publish, version, &mut counter);
    let len = counter.finish()?;
    write_fixed_header(buf, publish_first_byte(publish), len);
    publish_body(publish, version, &mut Writer(buf));
    Ok(())
}

/// Total encoded size of `publish` for `version`, fixed header included.
pub fn publish_encoded_len(publish: &Publish, version: ProtocolVersion) -> usize {
    publish_view_encoded_len(&publish.into(), version)
}

/// [`publish_encoded_len`] of a [`PublishView`].
pub fn publish_view_encoded_len(publish: &PublishView<'_>, version: ProtocolVersion) -> usize {
    let mut counter = Counter::default();
    publish_body(publish, version, &mut counter);
    total_len(counter.len)
}

fn total_len(remaining: usize) -> usize {
    1 + varint_len(remaining) + remaining
}

/// Bytes a Variable Byte Integer takes (values above the maximum are
/// refused before they are written).
fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn write_fixed_header(buf: &mut BytesMut, first: u8, remaining: usize) {
    buf.reserve(total_len(remaining));
    buf.put_u8(first);
    // `Counter::finish` has checked remaining <= MAX_VARINT.
    Writer(buf).varint(remaining as u32);
}

/// What a [`PublishView`] without properties stands for.
static NO_PROPERTIES: PublishProperties = PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
};

fn publish_first_byte(p: &PublishView<'_>) -> u8 {
    0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(&p.into()),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

// ---------------------------------------------------------------------------
// Sinks.

/// Where a packet body goes: counted or written.
trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    /// A Variable Byte Integer; values above `MAX_VARINT` fail the count.
    fn varint(&mut self, v: u32);
    /// Raw bytes (a payload).
    fn raw(&mut self, b: &[u8]);
    /// Binary Data / UTF-8 string: two-byte length, then the bytes;
    /// longer than 65,535 fails the count.
    fn binary(&mut self, b: &[u8]);
    /// Records a reason the packet cannot be encoded (the counter keeps
    /// the first; the writer never sees one, as it runs only after a
    /// successful count).
    fn fail(&mut self, err: EncodeError);
    /// Writes the length of a property block counted by `counter`.
    fn property_length(&mut self, counter: Counter);

    fn str(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }

    fn prop_u8(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.u8(id);
            self.u8(v);
        }
    }

    fn prop_bool(&mut self, id: u8, v: Option<bool>) {
        self.prop_u8(id, v.map(u8::from));
    }

    fn prop_u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.u8(id);
            self.u16(v);
        }
    }

    fn prop_u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.u8(id);
            self.u32(v);
        }
    }

    fn prop_varint(&mut self, id: u8, v: u32) {
        self.u8(id);
        self.varint(v);
    }

    fn prop_str(&mut self, id: u8, v: Option<&str>) {
        if let Some(v) = v {
            self.u8(id);
            self.str(v);
        }
    }

    fn prop_bin(&mut self, id: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            self.u8(id);
            self.binary(v);
        }
    }

    fn user_properties(&mut self, props: &[UserProperty]) {
        for (key, value) in props {
            self.u8(USER_PROPERTY);
            self.str(key);
            self.str(value);
        }
    }
}

/// Counts bytes and remembers the first field that cannot be encoded.
#[derive(Default)]
struct Counter {
    len: usize,
    err: Option<EncodeError>,
}

impl Counter {
    fn finish(self) -> Result<usize, EncodeError> {
        if let Some(err) = self.err {
            return Err(err);
        }
        if self.len > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge(self.len));
        }
        Ok(self.len)
    }
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn varint(&mut self, v: u32) {
        if v > MAX_VARINT {
            self.fail(EncodeError::VariableByteIntegerTooLarge(v));
        }
        self.len += varint_len(v as usize);
    }
    fn raw(&mut self, b: &[u8]) {
        self.len += b.len();
    }
    fn binary(&mut self, b: &[u8]) {
        if b.len() > usize::from(u16::MAX) {
            self.fail(EncodeError::FieldTooLong(b.len()));
        }
        self.len += 2 + b.len();
    }
    fn fail(&mut self, err: EncodeError) {
        self.err.get_or_insert(err);
    }
    fn property_length(&mut self, counter: Counter) {
        if let Some(err) = counter.err {
            self.fail(err);
        }
        // A property block above MAX_VARINT makes the packet too large too.
        self.len += varint_len(counter.len);
    }
}

/// Appends to the caller's buffer.
struct Writer<'a>(&'a mut BytesMut);

impl Sink for Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn varint(&mut self, mut v: u32) {
        loop {
            let byte = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                self.0.put_u8(byte);
                return;
            }
            self.0.put_u8(byte | 0x80);
        }
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.put_slice(b);
    }
    fn binary(&mut self, b: &[u8]) {
        // The count refused anything longer.
        self.u16(b.len() as u16);
        self.0.put_slice(b);
    }
    fn fail(&mut self, _: EncodeError) {}
    fn property_length(&mut self, counter: Counter) {
        self.varint(counter.len as u32);
    }
}

/// Writes a v5 property block: its length, then the properties.
fn property_block(s: &mut dyn Sink, props: impl Fn(&mut dyn Sink)) {
    let mut counter = Counter::default();
    props(&mut counter);
    let empty = counter.len == 0;
    s.property_length(counter);
    // An empty block is its length alone: no second walk to write nothing.
    if !empty {
        props(s);
    }
}

fn ack_properties_empty(p: &AckProperties) -> bool {
    p.reason_string.is_none() && p.user_properties.is_empty()
}

fn ack_properties(s: &mut dyn Sink, p: &AckProperties) {
    property_block(s, |s| {
        s.prop_str(REASON_STRING, p.reason_string.as_deref());
        s.user_properties(&p.user_properties);
    });
}

// ---------------------------------------------------------------------------
// Packet bodies (everything after the remaining length).

fn body(packet: &Packet, version: ProtocolVersion, s: &mut dyn Sink) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => connect_body(c, s),
        Packet::ConnAck(c) => connack_body(c, v5, s),
        Packet::Publish(p) => publish_body(&p.into(), version, s),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            s.u16(a.packet_id.get());
            let no_properties = ack_properties_empty(&a.properties);
            if v5 && (a.reason_code != ReasonCode::Success || !no_properties) {
                s.u8(a.reason_code.as_u8());
                if !no_properties {
                    ack_properties(s, &a.properties);
                }
            }
        }
        Packet::Subscribe(sub) => {
            s.u16(sub.packet_id.get());
            if v5 {
                let p = &sub.properties;
                property_block(s, |s| {
                    if let Some(id) = p.subscription_identifier {
                        s.prop_varint(SUBSCRIPTION_IDENTIFIER, id);
                    }
                    s.user_properties(&p.user_properties);
                });
            }
            for subscription in &sub.subscriptions {
                s.str(&subscription.topic_filter);
                let o = &subscription.options;
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling as u8) << 4;
                }
                s.u8(byte);
            }
        }
        Packet::SubAck(ack) => {
            s.u16(ack.packet_id.get());
            if v5 {
                ack_properties(s, &ack.properties);
            }
            for code in &ack.reason_codes {
                s.u8(if v5 { code.as_u8() } else { v3_suback_code(*code) });
            }
        }
        Packet::Unsubscribe(unsub) => {
            s.u16(unsub.packet_id.get());
            if v5 {
                property_block(s, |s| s.user_properties(&unsub.user_properties));
            }
            for filter in &unsub.topic_filters {
                s.str(filter);
            }
        }
        Packet::UnsubAck(ack) => {
            s.u16(ack.packet_id.get());
            if v5 {
                ack_properties(s, &ack.properties);
                for code in &ack.reason_codes {
                    s.u8(code.as_u8());
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            let p = &d.properties;
            let no_properties = p.session_expiry_interval.is_none()
                && p.reason_string.is_none()
                && p.user_properties.is_empty()
                && p.server_reference.is_none();
            if v5 && (d.reason_code != ReasonCode::Success || !no_properties) {
                s.u8(d.reason_code.as_u8());
                if !no_properties {
                    property_block(s, |s| {
                        s.prop_u32(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
                        s.prop_str(REASON_STRING, p.reason_string.as_deref());
                        s.user_properties(&p.user_properties);
                        s.prop_str(SERVER_REFERENCE, p.server_reference.as_deref());
                    });
                }
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                s.fail(EncodeError::NotInVersion { packet: "AUTH" });
                return;
            }
            let p = &a.properties;
            let no_properties = p.authentication_method.is_none()
                && p.authentication_data.is_none()
                && p.reason_string.is_none()
                && p.user_properties.is_empty();
            if a.reason_code != ReasonCode::Success || !no_properties {
                s.u8(a.reason_code.as_u8());
                if !no_properties {
                    property_block(s, |s| {
                        s.prop_str(AUTHENTICATION_METHOD, p.authentication_method.as_deref());
                        s.prop_bin(AUTHENTICATION_DATA, p.authentication_data.as_deref());
                        s.prop_str(REASON_STRING, p.reason_string.as_deref());
                        s.user_properties(&p.user_properties);
                    });
                }
            }
        }
    }
}

/// 3.x SUBACK return codes: 0, 1, 2, or 0x80 for any failure.
fn v3_suback_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => code.as_u8(),
        _ => 0x80,
    }
}

fn connect_body(c: &Connect, s: &mut dyn Sink) {
    let version = c.protocol_version;
    let v5 = version.is_v5();
    s.str(version.protocol_name());
    s.u8(version.level());
    if !v5 && c.password.is_some() && c.username.is_none() {
        s.fail(EncodeError::PasswordWithoutUsername);
    }
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0b100 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        let p = &c.properties;
        property_block(s, |s| {
            s.prop_u32(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
            s.prop_u16(RECEIVE_MAXIMUM, p.receive_maximum);
            s.prop_u32(MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
            s.prop_u16(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
            s.prop_bool(REQUEST_RESPONSE_INFORMATION, p.request_response_information);
            s.prop_bool(REQUEST_PROBLEM_INFORMATION, p.request_problem_information);
            s.user_properties(&p.user_properties);
            s.prop_str(AUTHENTICATION_METHOD, p.authentication_method.as_deref());
            s.prop_bin(AUTHENTICATION_DATA, p.authentication_data.as_deref());
        });
    }
    s.str(&c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            let p = &will.properties;
            property_block(s, |s| {
                s.prop_u32(WILL_DELAY_INTERVAL, p.will_delay_interval);
                s.prop_u8(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
                s.prop_u32(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
                s.prop_str(CONTENT_TYPE, p.content_type.as_deref());
                s.prop_str(RESPONSE_TOPIC, p.response_topic.as_deref());
                s.prop_bin(CORRELATION_DATA, p.correlation_data.as_deref());
                s.user_properties(&p.user_properties);
            });
        }
        s.str(&will.topic);
        s.binary(&will.payload);
    }
    if let Some(username) = &c.username {
        s.str(username);
    }
    if let Some(password) = &c.password {
        s.binary(password);
    }
}

fn connack_body(c: &ConnAck, v5: bool, s: &mut dyn Sink) {
    s.u8(u8::from(c.session_present));
    if !v5 {
        s.u8(c.reason_code.to_v3_connack());
        return;
    }
    s.u8(c.reason_code.as_u8());
    let p = &c.properties;
    property_block(s, |s| {
        s.prop_u32(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
        s.prop_u16(RECEIVE_MAXIMUM, p.receive_maximum);
        // Only 0 or 1 may be sent; an absent Maximum QoS means 2.
        let maximum_qos = p.maximum_qos.filter(|q| *q != QoS::ExactlyOnce);
        s.prop_u8(MAXIMUM_QOS, maximum_qos.map(|q| q as u8));
        s.prop_bool(RETAIN_AVAILABLE, p.retain_available);
        s.prop_u32(MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
        s.prop_str(ASSIGNED_CLIENT_IDENTIFIER, p.assigned_client_identifier.as_deref());
        s.prop_u16(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
        s.prop_str(REASON_STRING, p.reason_string.as_deref());
        s.user_properties(&p.user_properties);
        s.prop_bool(WILDCARD_SUBSCRIPTION_AVAILABLE, p.wildcard_subscription_available);
        s.prop_bool(SUBSCRIPTION_IDENTIFIER_AVAILABLE, p.subscription_identifiers_available);
        s.prop_bool(SHARED_SUBSCRIPTION_AVAILABLE, p.shared_subscription_available);
        s.prop_u16(SERVER_KEEP_ALIVE, p.server_keep_alive);
        s.prop_str(RESPONSE_INFORMATION, p.response_information.as_deref());
        s.prop_str(SERVER_REFERENCE, p.server_reference.as_deref());
        s.prop_str(AUTHENTICATION_METHOD, p.authentication_method.as_deref());
        s.prop_bin(AUTHENTICATION_DATA, p.authentication_data.as_deref());
    });
}

fn publish_body(p: &PublishView<'_>, version: ProtocolVersion, s: &mut dyn Sink) {
    s.str(p.topic);
    if p.qos != QoS::AtMostOnce {
        match p.packet_id {
            Some(id) => s.u16(id.get()),
            None => s.fail(EncodeError::MissingPacketId),
        }
    }
    if version.is_v5() {
        let props = p.properties.unwrap_or(&NO_PROPERTIES);
        let none = p.message_expiry_interval.is_none()
            && p.topic_alias.is_none()
            && p.subscription_identifiers.is_empty()
            && props.payload_format_indicator.is_none()
            && props.response_topic.is_none()
            && props.correlation_data.is_none()
            && props.user_properties.is_empty()
            && props.content_type.is_none();
        if none {
            // As most messages have: a zero length, without walking every
            // absent property (a quarter of the broker's CPU in MQTT 5
            // fan-out, where each copy is encoded in two passes).
            s.property_length(Counter::default());
        } else {
            property_block(s, |s| {
                s.prop_u8(PAYLOAD_FORMAT_INDICATOR, props.payload_format_indicator);
                s.prop_u32(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
                s.prop_u16(TOPIC_ALIAS, p.topic_alias);
                s.prop_str(RESPONSE_TOPIC, props.response_topic.as_deref());
                s.prop_bin(CORRELATION_DATA, props.correlation_data.as_deref());
                s.user_properties(&props.user_properties);
                for id in p.subscription_identifiers {
                    s.prop_varint(SUBSCRIPTION_IDENTIFIER, *id);
                }
                s.prop_str(CONTENT_TYPE, props.content_type.as_deref());
            });
        }
    }
    s.raw(p.payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Writer(&mut buf).varint(v);
        buf.to_vec()
    }

    #[test]
    fn variable_byte_integers_use_the_fewest_bytes() {
        for (v, bytes) in [
            (0, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_VARINT, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            assert_eq!(varint(v), bytes, "{v}");
            assert_eq!(varint_len(v as usize), bytes.len(), "{v}");
        }
    }

    #[test]
    fn counter_refuses_fields_that_do_not_fit() {
        let mut c = Counter::default();
        c.binary(&vec![0; 65_536]);
        assert_eq!(c.finish(), Err(EncodeError::FieldTooLong(65_536)));
        let mut c = Counter::default();
        c.varint(MAX_VARINT + 1);
        assert_eq!(c.finish(), Err(EncodeError::VariableByteIntegerTooLarge(MAX_VARINT + 1)));
        let c = Counter { len: MAX_VARINT as usize + 1, err: None };
        assert_eq!(c.finish(), Err(EncodeError::PacketTooLarge(MAX_VARINT as usize + 1)));
    }

    #[test]
    fn publish_without_packet_id_at_qos_1_is_refused_and_nothing_is_written() {
        let p = Publish { qos: QoS::AtLeastOnce, topic: "t".into(), ..Publish::default() };
        let mut buf = BytesMut::new();
        assert_eq!(encode_publish(&p, ProtocolVersion::V5, &mut buf), Err(EncodeError::MissingPacketId));
        assert!(buf.is_empty());
    }

    #[test]
    fn auth_cannot_be_encoded_for_v3() {
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::Auth(Auth::default()), ProtocolVersion::V3_1_1, &mut buf),
            Err(EncodeError::NotInVersion { packet: "AUTH" })
        );
    }

    #[test]
    fn v3_connect_with_password_and_no_username_is_refused() {
        let c = Connect { password: Some(bytes::Bytes::from_static(b"pw")), ..Connect::default() };
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::Connect(Box::new(c)), ProtocolVersion::V3_1_1, &mut buf),
            Err(EncodeError::PasswordWithoutUsername)
        );
    }

    #[test]
    fn maximum_qos_2_is_sent_as_an_absent_property() {
        let ack = ConnAck {
            properties: ConnAckProperties { maximum_qos: Some(QoS::ExactlyOnce), ..Default::default() },
            ..ConnAck::default()
        };
        let mut buf = BytesMut::new();
        encode(&Packet::ConnAck(ack), ProtocolVersion::V5, &mut buf).unwrap();
        assert_eq!(&buf[..], [0x20, 0x03, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn encode_appends_to_what_is_already_in_the_buffer() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        encode(&Packet::PingReq, ProtocolVersion::V5, &mut buf).unwrap();
        assert_eq!(&buf[..], [b'x', b'y', 0xC0, 0x00]);
    }

    /// A borrowed PUBLISH encodes byte for byte as the owned one, in every
    /// version; `None` properties are an empty property block in v5.
    #[test]
    fn a_publish_view_encodes_as_the_publish_it_borrows_from() {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            dup: true,
            topic: crate::MqttStr::from("a/b"),
            packet_id: PacketId::new(7),
            payload: bytes::Bytes::from_static(b"payload"),
            ..Publish::default()
        };
        for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let mut owned = BytesMut::new();
            encode_publish(&publish, version, &mut owned).unwrap();
            let mut borrowed = BytesMut::new();
            let view = PublishView { properties: None, ..PublishView::from(&publish) };
            encode_publish_view(&view, version, &mut borrowed).unwrap();
            assert_eq!(owned, borrowed, "{version:?}");
            assert_eq!(publish_encoded_len(&publish, version), borrowed.len());
        }
        let missing_id = PublishView { packet_id: None, ..PublishView::from(&publish) };
        assert!(encode_publish_view(&missing_id, ProtocolVersion::V3_1_1, &mut BytesMut::new()).is_err());
    }

    /// A v5 copy takes its expiry, alias and subscription identifiers from
    /// the view, the rest of its properties from the shared ones, whose own
    /// per-copy values are not sent: the same bytes as an owned PUBLISH with
    /// those properties.
    #[test]
    fn a_publish_view_sends_its_own_per_copy_properties() {
        let shared = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            topic_alias: Some(9),
            response_topic: Some("r/t".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![99],
            content_type: Some("text/plain".into()),
        };
        let owned = Publish {
            qos: QoS::AtMostOnce,
            topic: crate::MqttStr::from(""),
            payload: bytes::Bytes::from_static(b"payload"),
            properties: PublishProperties {
                message_expiry_interval: Some(59),
                topic_alias: Some(2),
                subscription_identifiers: vec![1, 7],
                ..shared.clone()
            },
            ..Publish::default()
        };
        let view = PublishView {
            properties: Some(&shared),
            message_expiry_interval: Some(59),
            topic_alias: Some(2),
            subscription_identifiers: &[1, 7],
            ..PublishView::new("", b"payload")
        };
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        encode_publish(&owned, ProtocolVersion::V5, &mut a).unwrap();
        encode_publish_view(&view, ProtocolVersion::V5, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(publish_view_encoded_len(&view, ProtocolVersion::V5), b.len());
        // 3.x has no properties at all.
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        encode_publish_view(&view, ProtocolVersion::V3_1_1, &mut a).unwrap();
        encode_publish_view(&PublishView::new("", b"payload"), ProtocolVersion::V3_1_1, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
