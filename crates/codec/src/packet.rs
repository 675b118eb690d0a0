//! The one packet model shared by MQTT 3.1, 3.1.1 and 5.0.
//!
//! Every version decodes into these types, so each broker handler exists once.
//! Fields that only exist in v5 (properties, most reason codes) are simply left
//! at their defaults for 3.x; the encoder drops them when writing 3.x and maps
//! reason codes onto the 3.x return codes.

use std::num::NonZeroU16;

use bytes::Bytes;

use crate::reason::ReasonCode;
use crate::string::MqttStr;

/// Packet identifier: never zero [MQTT-2.3.1-1].
pub type PacketId = NonZeroU16;

/// A UTF-8 string pair (v5 user property).
pub type UserProperty = (String, String);

/// Protocol level negotiated by CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    #[default]
    V3_1_1,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name CONNECT carries for this level.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is not a QoS.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The fifteen MQTT control packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1).
    Connect(Box<Connect>),
    /// CONNACK (2).
    ConnAck(ConnAck),
    /// PUBLISH (3).
    Publish(Publish),
    /// PUBACK (4).
    PubAck(PubAck),
    /// PUBREC (5).
    PubRec(PubAck),
    /// PUBREL (6).
    PubRel(PubAck),
    /// PUBCOMP (7).
    PubComp(PubAck),
    /// SUBSCRIBE (8).
    Subscribe(Subscribe),
    /// SUBACK (9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (11).
    UnsubAck(UnsubAck),
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14).
    Disconnect(Disconnect),
    /// AUTH (15), v5 only.
    Auth(Auth),
}

impl Packet {
    /// The spec's name of the packet type, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Level from the variable header (name checked against it).
    pub protocol_version: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (v5).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// v5 properties.
    pub properties: ConnectProperties,
    /// May be empty.
    pub client_id: String,
    /// Present when the will flag is set.
    pub will: Option<Will>,
    /// Present when the user name flag is set.
    pub username: Option<String>,
    /// Present when the password flag is set (binary data).
    pub password: Option<Bytes>,
}

/// The will message of CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// Will topic (a topic name: no wildcards).
    pub topic: MqttStr,
    /// Will payload (binary).
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// v5 will properties.
    pub properties: WillProperties,
}

/// v5 CONNECT properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// 0x11.
    pub session_expiry_interval: Option<u32>,
    /// 0x21; 0 is a protocol error.
    pub receive_maximum: Option<u16>,
    /// 0x27; 0 is a protocol error.
    pub maximum_packet_size: Option<u32>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19; only 0 or 1.
    pub request_response_information: Option<bool>,
    /// 0x17; only 0 or 1.
    pub request_problem_information: Option<bool>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
}

/// v5 will properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// 0x18.
    pub will_delay_interval: Option<u32>,
    /// 0x01; only 0 or 1.
    pub payload_format_indicator: Option<u8>,
    /// 0x02.
    pub message_expiry_interval: Option<u32>,
    /// 0x03.
    pub content_type: Option<String>,
    /// 0x08 (a topic name).
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK. `reason_code` is the v5 code; for 3.x it is mapped to the return
/// code (0x84→1, 0x85→2, 0x88→3, 0x86→4, 0x87→5; any other failure→5 on encode).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Connect reason code.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: ConnAckProperties,
}

/// v5 CONNACK properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// 0x11.
    pub session_expiry_interval: Option<u32>,
    /// 0x21.
    pub receive_maximum: Option<u16>,
    /// 0x24; only 0 or 1.
    pub maximum_qos: Option<QoS>,
    /// 0x25.
    pub retain_available: Option<bool>,
    /// 0x27.
    pub maximum_packet_size: Option<u32>,
    /// 0x12.
    pub assigned_client_identifier: Option<String>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x28.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A.
    pub shared_subscription_available: Option<bool>,
    /// 0x13.
    pub server_keep_alive: Option<u16>,
    /// 0x1A.
    pub response_information: Option<String>,
    /// 0x1C.
    pub server_reference: Option<String>,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// DUP flag; must be 0 for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; may be empty only in v5 with a topic alias.
    pub topic: MqttStr,
    /// Present iff qos > 0 [MQTT-2.3.1-5].
    pub packet_id: Option<PacketId>,
    /// v5 properties.
    pub properties: PublishProperties,
    /// Application message; shared, never copied, on fan-out.
    pub payload: Bytes,
}

/// v5 PUBLISH properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01; only 0 or 1.
    pub payload_format_indicator: Option<u8>,
    /// 0x02.
    pub message_expiry_interval: Option<u32>,
    /// 0x23; 0 is a protocol error.
    pub topic_alias: Option<u16>,
    /// 0x08.
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x0B, may repeat (server to client only); each 1..=268_435_455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x03.
    pub content_type: Option<String>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// Packet id being acknowledged.
    pub packet_id: PacketId,
    /// v5 reason code; `Success` for 3.x.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: AckProperties,
}

impl PubAck {
    /// A success acknowledgment with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubAck { packet_id, reason_code: ReasonCode::Success, properties: AckProperties::default() }
    }
}

/// Reason string and user properties: the properties of PUBACK, PUBREC,
/// PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// v5 retain handling subscription option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: do not send.
    DoNotSend = 2,
}

/// Subscription options byte; only `qos` exists in 3.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
}

/// One topic filter of SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter as sent (validated by the broker, which must answer
    /// SUBACK 0x80/0x8F for a bad one rather than fail to decode).
    pub topic_filter: String,
    /// Options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id.
    pub packet_id: PacketId,
    /// v5 properties.
    pub properties: SubscribeProperties,
    /// At least one [MQTT-3.8.3-3].
    pub subscriptions: Vec<Subscription>,
}

/// v5 SUBSCRIBE properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 0x0B; 1..=268_435_455.
    pub subscription_identifier: Option<u32>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK. 3.x return codes are 0, 1, 2 and 0x80, which are the same
/// numbers as the v5 codes `GrantedQoS0..2` and `UnspecifiedError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet id.
    pub packet_id: PacketId,
    /// v5 properties.
    pub properties: AckProperties,
    /// One per subscription, in order [MQTT-3.8.4-6].
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id.
    pub packet_id: PacketId,
    /// v5 user properties (the only UNSUBSCRIBE property).
    pub user_properties: Vec<UserProperty>,
    /// At least one [MQTT-3.10.3-2].
    pub topic_filters: Vec<String>,
}

/// UNSUBACK. 3.x has no payload: `reason_codes` decodes empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet id.
    pub packet_id: PacketId,
    /// v5 properties.
    pub properties: AckProperties,
    /// v5 only.
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT. 3.x has no variable header: `reason_code` is `Success`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// v5 reason code.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: DisconnectProperties,
}

/// v5 DISCONNECT properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// 0x11.
    pub session_expiry_interval: Option<u32>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x1C.
    pub server_reference: Option<String>,
}

/// AUTH (v5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: AuthProperties,
}

/// v5 AUTH properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}
