//! Packets as received from the broker, and strict parsers for the ones a server sends.
//!
//! The parsers check what the specification requires of a *server's* packets (fixed
//! header flags, lengths, reserved bits, packet identifiers) so that any test reading a
//! packet also checks its form.

use std::fmt;

/// MQTT control packet types: the high nibble of the first byte (section 2.2.1).
pub mod packet_type {
    /// Client request to connect.
    pub const CONNECT: u8 = 1;
    /// Connect acknowledgment.
    pub const CONNACK: u8 = 2;
    /// Publish message.
    pub const PUBLISH: u8 = 3;
    /// Publish acknowledgment (QoS 1).
    pub const PUBACK: u8 = 4;
    /// Publish received (QoS 2, part 1).
    pub const PUBREC: u8 = 5;
    /// Publish release (QoS 2, part 2).
    pub const PUBREL: u8 = 6;
    /// Publish complete (QoS 2, part 3).
    pub const PUBCOMP: u8 = 7;
    /// Subscribe request.
    pub const SUBSCRIBE: u8 = 8;
    /// Subscribe acknowledgment.
    pub const SUBACK: u8 = 9;
    /// Unsubscribe request.
    pub const UNSUBSCRIBE: u8 = 10;
    /// Unsubscribe acknowledgment.
    pub const UNSUBACK: u8 = 11;
    /// Ping request.
    pub const PINGREQ: u8 = 12;
    /// Ping response.
    pub const PINGRESP: u8 = 13;
    /// Client is disconnecting.
    pub const DISCONNECT: u8 = 14;

    /// The spec name of a packet type, for messages.
    pub fn name(packet_type: u8) -> &'static str {
        match packet_type {
            CONNECT => "CONNECT",
            CONNACK => "CONNACK",
            PUBLISH => "PUBLISH",
            PUBACK => "PUBACK",
            PUBREC => "PUBREC",
            PUBREL => "PUBREL",
            PUBCOMP => "PUBCOMP",
            SUBSCRIBE => "SUBSCRIBE",
            SUBACK => "SUBACK",
            UNSUBSCRIBE => "UNSUBSCRIBE",
            UNSUBACK => "UNSUBACK",
            PINGREQ => "PINGREQ",
            PINGRESP => "PINGRESP",
            DISCONNECT => "DISCONNECT",
            15 => "AUTH (reserved in 3.1.1)",
            _ => "reserved packet type 0",
        }
    }
}

/// One whole control packet as framed on the wire: the first byte of the fixed
/// header, and the bytes the remaining length counted.
#[derive(Clone, PartialEq, Eq)]
pub struct RawPacket {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Variable header and payload.
    pub body: Vec<u8>,
}

impl RawPacket {
    /// The packet type, one of [`packet_type`]'s constants.
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The four flag bits of the fixed header.
    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0F
    }

    /// Reads this packet as a CONNACK (section 3.2).
    pub fn connack(&self) -> Result<ConnAck, String> {
        self.expect_first_byte(0x20, "CONNACK")?;
        let [ack_flags, return_code] = self.body[..] else {
            return Err(format!("CONNACK remaining length is {}, not 2: {self:?}", self.body.len()));
        };
        if ack_flags & 0xFE != 0 {
            return Err(format!("CONNACK acknowledge flags 0x{ack_flags:02x} set reserved bits 7-1 (section 3.2.2.1)"));
        }
        Ok(ConnAck { session_present: ack_flags & 1 == 1, return_code })
    }

    /// Reads this packet as a SUBACK (section 3.9), checking that every return code
    /// is one of 0x00, 0x01, 0x02, 0x80 [MQTT-3.9.3-2].
    pub fn suback(&self) -> Result<SubAck, String> {
        self.expect_first_byte(0x90, "SUBACK")?;
        if self.body.len() < 3 {
            return Err(format!("SUBACK without a return code: {self:?}"));
        }
        let packet_id = u16::from_be_bytes([self.body[0], self.body[1]]);
        let return_codes = self.body[2..].to_vec();
        if let Some(bad) = return_codes.iter().find(|c| !matches!(c, 0x00 | 0x01 | 0x02 | 0x80)) {
            return Err(format!("SUBACK return code 0x{bad:02x} is reserved [MQTT-3.9.3-2]: {self:?}"));
        }
        Ok(SubAck { packet_id, return_codes })
    }

    /// Reads this packet as an UNSUBACK (section 3.11) and returns its packet id.
    pub fn unsuback(&self) -> Result<u16, String> {
        self.ack(0xB0, "UNSUBACK")
    }

    /// Reads this packet as a PUBACK and returns its packet id.
    pub fn puback(&self) -> Result<u16, String> {
        self.ack(0x40, "PUBACK")
    }

    /// Reads this packet as a PUBREC and returns its packet id.
    pub fn pubrec(&self) -> Result<u16, String> {
        self.ack(0x50, "PUBREC")
    }

    /// Reads this packet as a PUBREL (flags must be 0b0010 [MQTT-3.6.1-1]) and
    /// returns its packet id.
    pub fn pubrel(&self) -> Result<u16, String> {
        self.ack(0x62, "PUBREL")
    }

    /// Reads this packet as a PUBCOMP and returns its packet id.
    pub fn pubcomp(&self) -> Result<u16, String> {
        self.ack(0x70, "PUBCOMP")
    }

    /// Checks that this packet is a PINGRESP (section 3.13).
    pub fn pingresp(&self) -> Result<(), String> {
        self.expect_first_byte(0xD0, "PINGRESP")?;
        if !self.body.is_empty() {
            return Err(format!("PINGRESP with a remaining length of {}: {self:?}", self.body.len()));
        }
        Ok(())
    }

    /// Reads this packet as a PUBLISH sent by a server (section 3.3).
    ///
    /// Checks: QoS is not 3 [MQTT-3.3.1-4]; DUP is 0 at QoS 0 [MQTT-3.3.1-2]; the topic
    /// name is well-formed UTF-8 without wildcards or U+0000 [MQTT-3.3.2-1],
    /// [MQTT-3.3.2-2], [MQTT-1.5.3-2]; a packet id is present and non-zero exactly when
    /// QoS > 0 [MQTT-2.3.1-1], [MQTT-2.3.1-5].
    pub fn publish(&self) -> Result<Publish, String> {
        if self.packet_type() != packet_type::PUBLISH {
            return Err(format!("expected PUBLISH, got {self:?}"));
        }
        let flags = self.flags();
        let dup = flags & 0b1000 != 0;
        let qos = (flags >> 1) & 0b11;
        let retain = flags & 1 != 0;
        if qos == 3 {
            return Err(format!("PUBLISH with QoS 3 [MQTT-3.3.1-4]: {self:?}"));
        }
        if qos == 0 && dup {
            return Err(format!("QoS 0 PUBLISH with DUP=1 [MQTT-3.3.1-2]: {self:?}"));
        }
        let body = &self.body;
        if body.len() < 2 {
            return Err(format!("PUBLISH too short for a topic name: {self:?}"));
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let mut at = 2 + topic_len;
        if body.len() < at {
            return Err(format!("PUBLISH topic length {topic_len} overruns the packet: {self:?}"));
        }
        let topic = String::from_utf8(body[2..at].to_vec())
            .map_err(|_| format!("PUBLISH topic is not UTF-8 [MQTT-3.3.2-1]: {self:?}"))?;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(format!("PUBLISH topic {topic:?} is not a valid topic name [MQTT-3.3.2-2]"));
        }
        let packet_id = if qos > 0 {
            if body.len() < at + 2 {
                return Err(format!("QoS {qos} PUBLISH without a packet id: {self:?}"));
            }
            let id = u16::from_be_bytes([body[at], body[at + 1]]);
            if id == 0 {
                return Err(format!("QoS {qos} PUBLISH with packet id 0 [MQTT-2.3.1-1]: {self:?}"));
            }
            at += 2;
            Some(id)
        } else {
            None
        };
        Ok(Publish { dup, qos, retain, topic, packet_id, payload: body[at..].to_vec() })
    }

    fn ack(&self, first_byte: u8, name: &str) -> Result<u16, String> {
        self.expect_first_byte(first_byte, name)?;
        let [hi, lo] = self.body[..] else {
            return Err(format!("{name} remaining length is {}, not 2: {self:?}", self.body.len()));
        };
        Ok(u16::from_be_bytes([hi, lo]))
    }

    fn expect_first_byte(&self, first_byte: u8, name: &str) -> Result<(), String> {
        if self.first_byte == first_byte {
            Ok(())
        } else if self.first_byte >> 4 == first_byte >> 4 {
            Err(format!(
                "{name} with fixed header flags 0x{:x}, expected 0x{:x} [MQTT-2.2.2-1]: {self:?}",
                self.flags(),
                first_byte & 0x0F
            ))
        } else {
            Err(format!("expected {name}, got {self:?}"))
        }
    }
}

impl fmt::Debug for RawPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} flags=0x{:x} body=[", packet_type::name(self.packet_type()), self.flags())?;
        for (i, byte) in self.body.iter().take(64).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{byte:02x}")?;
        }
        if self.body.len() > 64 {
            write!(f, " …{} more", self.body.len() - 64)?;
        }
        f.write_str("]")
    }
}

/// A CONNACK as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Bit 0 of the acknowledge flags.
    pub session_present: bool,
    /// 0 accepted; 1 unacceptable protocol version; 2 identifier rejected; 3 server
    /// unavailable; 4 bad user name or password; 5 not authorized.
    pub return_code: u8,
}

/// A SUBACK as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The packet id it acknowledges.
    pub packet_id: u16,
    /// One per topic filter of the SUBSCRIBE: granted QoS, or 0x80 for failure.
    pub return_codes: Vec<u8>,
}

/// A PUBLISH as read from the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// Fixed header DUP flag.
    pub dup: bool,
    /// Fixed header QoS (0, 1 or 2).
    pub qos: u8,
    /// Fixed header RETAIN flag.
    pub retain: bool,
    /// Topic name.
    pub topic: String,
    /// Present exactly when `qos > 0`.
    pub packet_id: Option<u16>,
    /// Application message.
    pub payload: Vec<u8>,
}

impl Publish {
    /// The packet id of a QoS 1 or 2 PUBLISH; panics at QoS 0.
    pub fn id(&self) -> u16 {
        self.packet_id.unwrap_or_else(|| panic!("QoS 0 PUBLISH has no packet id: {self:?}"))
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("dup", &self.dup)
            .field("packet_id", &self.packet_id)
            .finish()
    }
}
