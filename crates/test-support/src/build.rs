//! Byte builders for the packets a client sends, MQTT 3.1.1 (and 3.1 where CONNECT
//! differs).
//!
//! Every builder returns the whole packet as bytes, so a test can send it as is,
//! concatenate several into one write, cut one in half, or flip a bit of it to make
//! it malformed (`let mut p = build::subscribe(1, &[("a", 0)]); p[0] = 0x80;`).

/// Encodes a remaining length (section 2.2.3): 7 bits a byte, least significant first.
///
/// # Panics
/// If `len` exceeds 268,435,455, the largest length four bytes can encode; use
/// [`packet_with_length`] to put an arbitrary length field on the wire.
pub fn remaining_length(len: usize) -> Vec<u8> {
    assert!(len <= 268_435_455, "remaining length {len} does not fit in four bytes");
    let mut out = Vec::with_capacity(4);
    let mut rest = len;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if rest == 0 {
            return out;
        }
    }
}

/// A whole packet: `first_byte`, the remaining length of `body`, then `body`.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// A packet whose remaining-length field is given byte for byte, whatever the body:
/// for malformed lengths.
pub fn packet_with_length(first_byte: u8, length_field: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend_from_slice(length_field);
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field (section 1.5.3).
pub fn string(bytes: impl AsRef<[u8]>) -> Vec<u8> {
    let bytes = bytes.as_ref();
    let len = u16::try_from(bytes.len()).expect("a string field holds at most 65,535 bytes");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The Will of a [`Connect`].
#[derive(Debug, Clone)]
struct Will {
    topic: Vec<u8>,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// A CONNECT packet (section 3.1), MQTT 3.1.1 unless told otherwise.
///
/// Defaults: protocol name `MQTT`, level 4, CleanSession 1, keep alive 60 s, no Will,
/// no user name or password. The connect flags are computed from the fields unless
/// [`Connect::connect_flags`] overrides them, which is how a test sends flags that
/// contradict the payload.
#[derive(Debug, Clone)]
pub struct Connect {
    protocol_name: Vec<u8>,
    protocol_level: u8,
    client_id: Vec<u8>,
    clean_session: bool,
    keep_alive: u16,
    will: Option<Will>,
    username: Option<Vec<u8>>,
    password: Option<Vec<u8>>,
    connect_flags: Option<u8>,
}

impl Connect {
    /// An MQTT 3.1.1 CONNECT for `client_id`.
    pub fn new(client_id: impl AsRef<[u8]>) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            protocol_level: 4,
            client_id: client_id.as_ref().to_vec(),
            clean_session: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            connect_flags: None,
        }
    }

    /// Makes this an MQTT 3.1 CONNECT: protocol name `MQIsdp`, level 3.
    pub fn mqtt31(self) -> Connect {
        self.protocol(b"MQIsdp", 3)
    }

    /// Sets the protocol name and level bytes, valid or not.
    pub fn protocol(mut self, name: impl AsRef<[u8]>, level: u8) -> Connect {
        self.protocol_name = name.as_ref().to_vec();
        self.protocol_level = level;
        self
    }

    /// Sets the CleanSession flag.
    pub fn clean_session(mut self, clean_session: bool) -> Connect {
        self.clean_session = clean_session;
        self
    }

    /// Sets the keep alive, in seconds.
    pub fn keep_alive(mut self, seconds: u16) -> Connect {
        self.keep_alive = seconds;
        self
    }

    /// Adds a Will message.
    pub fn will(mut self, topic: impl AsRef<[u8]>, payload: impl AsRef<[u8]>, qos: u8, retain: bool) -> Connect {
        self.will = Some(Will { topic: topic.as_ref().to_vec(), payload: payload.as_ref().to_vec(), qos, retain });
        self
    }

    /// Adds a user name.
    pub fn username(mut self, username: impl AsRef<[u8]>) -> Connect {
        self.username = Some(username.as_ref().to_vec());
        self
    }

    /// Adds a password.
    pub fn password(mut self, password: impl AsRef<[u8]>) -> Connect {
        self.password = Some(password.as_ref().to_vec());
        self
    }

    /// Sends exactly these connect flags instead of the ones the fields imply.
    pub fn connect_flags(mut self, flags: u8) -> Connect {
        self.connect_flags = Some(flags);
        self
    }

    /// The connect flags the fields imply (section 3.1.2.3).
    pub fn implied_flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        flags
    }

    /// The packet's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut body = string(&self.protocol_name);
        body.push(self.protocol_level);
        body.push(self.connect_flags.unwrap_or_else(|| self.implied_flags()));
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(string(&self.client_id));
        if let Some(will) = &self.will {
            body.extend(string(&will.topic));
            body.extend(string(&will.payload));
        }
        if let Some(username) = &self.username {
            body.extend(string(username));
        }
        if let Some(password) = &self.password {
            body.extend(string(password));
        }
        packet(0x10, &body)
    }
}

/// A PUBLISH packet (section 3.3). QoS 0, not retained, DUP 0 unless told otherwise.
#[derive(Debug, Clone)]
pub struct Publish {
    topic: Vec<u8>,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: Option<u16>,
}

impl Publish {
    /// A QoS 0 PUBLISH of `payload` to `topic`.
    pub fn new(topic: impl AsRef<[u8]>, payload: impl AsRef<[u8]>) -> Publish {
        Publish {
            topic: topic.as_ref().to_vec(),
            payload: payload.as_ref().to_vec(),
            qos: 0,
            retain: false,
            dup: false,
            packet_id: None,
        }
    }

    /// Sets the QoS bits (3 is allowed, to make a malformed packet) and the packet
    /// id, which is written only when `qos > 0`.
    pub fn qos(mut self, qos: u8, packet_id: u16) -> Publish {
        self.qos = qos;
        self.packet_id = Some(packet_id);
        self
    }

    /// Sets the RETAIN flag.
    pub fn retain(mut self) -> Publish {
        self.retain = true;
        self
    }

    /// Sets the DUP flag.
    pub fn dup(mut self) -> Publish {
        self.dup = true;
        self
    }

    /// The packet's bytes.
    ///
    /// # Panics
    /// If QoS is above 0 and no packet id was given.
    pub fn build(&self) -> Vec<u8> {
        let mut first_byte = 0x30 | (self.qos << 1);
        if self.dup {
            first_byte |= 0x08;
        }
        if self.retain {
            first_byte |= 0x01;
        }
        let mut body = string(&self.topic);
        if self.qos > 0 {
            let id = self.packet_id.expect("a QoS 1 or 2 PUBLISH needs a packet id");
            body.extend(id.to_be_bytes());
        }
        body.extend_from_slice(&self.payload);
        packet(first_byte, &body)
    }
}

/// A QoS 0 PUBLISH, not retained.
pub fn publish(topic: impl AsRef<[u8]>, payload: impl AsRef<[u8]>) -> Vec<u8> {
    Publish::new(topic, payload).build()
}

/// A PUBACK for `packet_id`.
pub fn puback(packet_id: u16) -> Vec<u8> {
    packet(0x40, &packet_id.to_be_bytes())
}

/// A PUBREC for `packet_id`.
pub fn pubrec(packet_id: u16) -> Vec<u8> {
    packet(0x50, &packet_id.to_be_bytes())
}

/// A PUBREL for `packet_id` (fixed header flags 0b0010).
pub fn pubrel(packet_id: u16) -> Vec<u8> {
    packet(0x62, &packet_id.to_be_bytes())
}

/// A PUBCOMP for `packet_id`.
pub fn pubcomp(packet_id: u16) -> Vec<u8> {
    packet(0x70, &packet_id.to_be_bytes())
}

/// A SUBSCRIBE (fixed header flags 0b0010) asking for each `(topic_filter, qos)`.
pub fn subscribe(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (topic_filter, qos) in filters {
        body.extend(string(topic_filter));
        body.push(*qos);
    }
    packet(0x82, &body)
}

/// An UNSUBSCRIBE (fixed header flags 0b0010) of each topic filter.
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for topic_filter in filters {
        body.extend(string(topic_filter));
    }
    packet(0xA2, &body)
}

/// A PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// A DISCONNECT.
pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_uses_the_spec_boundaries() {
        // Table 2.4 of section 2.2.3.
        assert_eq!(remaining_length(0), [0x00]);
        assert_eq!(remaining_length(127), [0x7F]);
        assert_eq!(remaining_length(128), [0x80, 0x01]);
        assert_eq!(remaining_length(16_383), [0xFF, 0x7F]);
        assert_eq!(remaining_length(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(remaining_length(2_097_151), [0xFF, 0xFF, 0x7F]);
        assert_eq!(remaining_length(2_097_152), [0x80, 0x80, 0x80, 0x01]);
        assert_eq!(remaining_length(268_435_455), [0xFF, 0xFF, 0xFF, 0x7F]);
    }

    #[test]
    fn connect_matches_the_spec_example() {
        // Section 3.1.2.11's variable header, with client id "a" and keep alive 10.
        let bytes = Connect::new("a").keep_alive(10).build();
        assert_eq!(bytes, [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'a']);
    }

    #[test]
    fn connect_flags_follow_the_fields() {
        let connect = Connect::new("c").clean_session(false).will("w", "x", 2, true).username("u").password("p");
        assert_eq!(connect.implied_flags(), 0x80 | 0x40 | 0x20 | 0x10 | 0x04);
    }

    #[test]
    fn publish_puts_the_packet_id_after_the_topic() {
        let bytes = Publish::new("a/b", "hi").qos(1, 0x0102).retain().dup().build();
        assert_eq!(bytes, [0x3B, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i']);
    }

    #[test]
    fn subscribe_has_flags_0010() {
        let bytes = subscribe(7, &[("a", 1), ("b/#", 2)]);
        assert_eq!(bytes, [0x82, 12, 0, 7, 0, 1, b'a', 1, 0, 3, b'b', b'/', b'#', 2]);
    }
}
