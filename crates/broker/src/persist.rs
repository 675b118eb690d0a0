//! The broker's records in the [`Store`], and recovery from them.
//!
//! Keys: a session is its number (8 bytes, big-endian); its queued and
//! in-flight messages are (session, sequence) and its inbound QoS 2 packet
//! ids (session, packet id), so one session's records are one key range.
//! Retained messages are keyed by topic.
//!
//! Only sessions that outlive their connection are stored, and of their
//! deliveries only QoS 1 and 2 ones: what MQTT says must survive.
//! Every write for a session is made under its lock, so the store sees a
//! session's changes in the order they happened.
//!
//! Values are a small binary format, version byte first. A message is kept
//! as an MQTT 5 PUBLISH packet (midge-codec reads and writes it), behind
//! its absolute expiry time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use midge_codec::{
    Packet, PacketId, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions, decode, encode_publish,
};

use std::sync::Arc;

use crate::router::Grant;
use crate::session::{Delivery, InflightState, Message};
use crate::shared::SharedGroup;
use crate::store::{Store, StoreError, StoreOp, Table};

const VERSION: u8 = 1;

pub(crate) fn session_key(sid: u64) -> Vec<u8> {
    sid.to_be_bytes().to_vec()
}

pub(crate) fn queue_key(sid: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&sid.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn rel_key(sid: u64, packet_id: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.extend_from_slice(&sid.to_be_bytes());
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Milliseconds since the Unix epoch of an `Instant` (0 = none).
fn to_unix_ms(at: Instant, now: Instant, wall: SystemTime) -> u64 {
    let wall_at = if at >= now { wall + (at - now) } else { wall - (now - at) };
    wall_at.duration_since(UNIX_EPOCH).map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

fn from_unix_ms(ms: u64, now: Instant, wall: SystemTime) -> Instant {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    match at.duration_since(wall) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A message as stored: expiry (absolute), then the PUBLISH packet. Made
/// once per message and shared by every record that holds it.
pub(crate) fn stored_form(message: &Message) -> &Bytes {
    message.stored.get_or_init(|| {
        let mut out = BytesMut::with_capacity(16 + message.topic.len() + message.payload.len());
        out.put_u8(VERSION);
        let expires = message.expires_at.map_or(0, |at| to_unix_ms(at, Instant::now(), SystemTime::now()));
        out.put_u64(expires);
        let publish = Publish {
            dup: false,
            qos: message.qos,
            retain: message.retain,
            topic: message.topic.clone(),
            packet_id: (message.qos != QoS::AtMostOnce).then_some(PacketId::MIN),
            properties: message.properties.as_deref().cloned().unwrap_or_default(),
            payload: message.payload.clone(),
        };
        // Cannot fail: the message came in as a valid PUBLISH (or was made by
        // the broker) and the store has no size limit.
        let _ = encode_publish(&publish, ProtocolVersion::V5, &mut out);
        out.freeze()
    })
}

fn decode_message(buf: &mut Bytes) -> Result<Message, String> {
    if buf.remaining() < 9 || buf.get_u8() != VERSION {
        return Err("message record of an unknown version".into());
    }
    let expires = buf.get_u64();
    // Without a copy when nothing else holds the record: the payload is
    // then a slice of what the store read.
    let mut packet = BytesMut::from(std::mem::take(buf));
    let publish = match decode(&mut packet, ProtocolVersion::V5, u32::MAX) {
        Ok(Some(Packet::Publish(publish))) => publish,
        Ok(_) => return Err("message record does not hold a PUBLISH".into()),
        Err(e) => return Err(format!("message record: {e}")),
    };
    *buf = packet.freeze();
    let mut message = Message::new(publish.topic, publish.payload, publish.qos, publish.retain, publish.properties);
    message.expires_at = (expires != 0).then(|| from_unix_ms(expires, Instant::now(), SystemTime::now()));
    Ok(message)
}

/// Version 2 of a queue record adds the share group.
const QUEUE_VERSION: u8 = 2;

/// Queued for a session: the delivery's own fields (with the share group it
/// was picked for, so it can still go to another member after a restart),
/// then the message.
pub(crate) fn put_queued(store: &dyn Store, sid: u64, seq: u64, delivery: &Delivery) {
    let message = stored_form(&delivery.message);
    let group = delivery.shared.as_ref().map_or("", |g| &g.name);
    let mut out = BytesMut::with_capacity(10 + 4 * delivery.subscription_ids.len() + group.len() + message.len());
    out.put_u8(QUEUE_VERSION);
    out.put_u8(delivery.qos as u8);
    out.put_u8(u8::from(delivery.retain));
    out.put_u16(u16::try_from(delivery.subscription_ids.len()).unwrap_or(u16::MAX));
    for id in delivery.subscription_ids.iter().take(usize::from(u16::MAX)) {
        out.put_u32(*id);
    }
    put_str(&mut out, group);
    out.put_slice(message);
    store.write(StoreOp::Put(Table::Queue, queue_key(sid, seq), out.freeze()));
}

/// A queued message was sent with `packet_id` and is now in `state`.
pub(crate) fn put_inflight(store: &dyn Store, sid: u64, seq: u64, packet_id: PacketId, state: InflightState) {
    let mut out = BytesMut::with_capacity(4);
    out.put_u8(VERSION);
    out.put_u16(packet_id.get());
    out.put_u8(match state {
        InflightState::ExpectAck => 0,
        InflightState::ExpectComp => 1,
    });
    store.write(StoreOp::Put(Table::Inflight, queue_key(sid, seq), out.freeze()));
}

/// A queued message is done with (acknowledged, expired, dropped or moved).
pub(crate) fn delete_queued(store: &dyn Store, sid: u64, seq: u64) {
    store.write(StoreOp::Delete(Table::Queue, queue_key(sid, seq)));
    store.write(StoreOp::Delete(Table::Inflight, queue_key(sid, seq)));
}

pub(crate) fn put_awaiting_rel(store: &dyn Store, sid: u64, packet_id: u16) {
    store.write(StoreOp::Put(Table::AwaitingRel, rel_key(sid, packet_id), Bytes::new()));
}

pub(crate) fn delete_awaiting_rel(store: &dyn Store, sid: u64, packet_id: u16) {
    store.write(StoreOp::Delete(Table::AwaitingRel, rel_key(sid, packet_id)));
}

pub(crate) fn put_retained(store: &dyn Store, message: &Message) {
    store.write(StoreOp::Put(Table::Retained, message.topic.as_bytes().to_vec(), stored_form(message).clone()));
}

pub(crate) fn delete_retained(store: &dyn Store, topic: &str) {
    store.write(StoreOp::Delete(Table::Retained, topic.as_bytes().to_vec()));
}

/// Everything of a session, when it ends.
pub(crate) fn end_session(store: &dyn Store, sid: u64) {
    for table in [Table::Queue, Table::Inflight, Table::AwaitingRel] {
        store.write(StoreOp::DeletePrefix(table, session_key(sid)));
    }
    store.write(StoreOp::Delete(Table::Sessions, session_key(sid)));
}

/// The stored form of a session.
#[derive(Debug)]
pub(crate) struct SessionRecord {
    pub(crate) client_id: String,
    pub(crate) expiry_interval: u32,
    pub(crate) protocol: ProtocolVersion,
    /// When the client left (ms since the epoch), 0 while connected.
    pub(crate) disconnected_at: u64,
    pub(crate) subscriptions: Vec<(String, Grant)>,
    /// A will waiting out its delay: when it is due (ms since the epoch).
    pub(crate) pending_will: Option<(u64, Message)>,
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

fn get_str(buf: &mut Bytes) -> Result<String, String> {
    if buf.remaining() < 4 {
        return Err("truncated".into());
    }
    let len = buf.get_u32() as usize;
    if buf.remaining() < len {
        return Err("truncated".into());
    }
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| "a string that is not UTF-8".into())
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8 | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | (o.retain_handling as u8) << 4
}

fn options_from(byte: u8) -> Result<SubscriptionOptions, String> {
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(byte & 3).ok_or("bad subscription QoS")?,
        no_local: byte & 4 != 0,
        retain_as_published: byte & 8 != 0,
        retain_handling: match byte >> 4 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err("bad retain handling".into()),
        },
    })
}

/// Writes a session's record.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_session<'a>(
    store: &dyn Store,
    sid: u64,
    client_id: &str,
    expiry_interval: u32,
    protocol: ProtocolVersion,
    disconnected_at: u64,
    subscriptions: impl ExactSizeIterator<Item = (&'a String, &'a Grant)>,
    pending_will: Option<(u64, &Message)>,
) {
    let mut out = BytesMut::with_capacity(64 + subscriptions.len() * 32);
    out.put_u8(VERSION);
    put_str(&mut out, client_id);
    out.put_u32(expiry_interval);
    out.put_u8(protocol.level());
    out.put_u64(disconnected_at);
    out.put_u32(u32::try_from(subscriptions.len()).unwrap_or(u32::MAX));
    for (filter, grant) in subscriptions {
        put_str(&mut out, filter);
        out.put_u8(options_byte(&grant.options));
        out.put_u32(grant.identifier.unwrap_or(0));
    }
    match pending_will {
        None => out.put_u8(0),
        Some((due, message)) => {
            out.put_u8(1);
            out.put_u64(due);
            out.put_slice(stored_form(message));
        }
    }
    store.write(StoreOp::Put(Table::Sessions, session_key(sid), out.freeze()));
}

impl SessionRecord {
    fn read(mut buf: Bytes) -> Result<SessionRecord, String> {
        if buf.remaining() < 1 || buf.get_u8() != VERSION {
            return Err("session record of an unknown version".into());
        }
        let client_id = get_str(&mut buf)?;
        if buf.remaining() < 17 {
            return Err("truncated".into());
        }
        let expiry_interval = buf.get_u32();
        let protocol = match buf.get_u8() {
            3 => ProtocolVersion::V3_1,
            4 => ProtocolVersion::V3_1_1,
            5 => ProtocolVersion::V5,
            _ => return Err("unknown protocol level".into()),
        };
        let disconnected_at = buf.get_u64();
        let count = buf.get_u32();
        let mut subscriptions = Vec::new();
        for _ in 0..count {
            let filter = get_str(&mut buf)?;
            if buf.remaining() < 5 {
                return Err("truncated".into());
            }
            let options = options_from(buf.get_u8())?;
            let identifier = Some(buf.get_u32()).filter(|id| *id != 0);
            subscriptions.push((filter, Grant { options, identifier }));
        }
        let pending_will = match buf.try_get_u8().map_err(|_| "truncated")? {
            0 => None,
            _ => {
                let due = buf.try_get_u64().map_err(|_| "truncated")?;
                Some((due, decode_message(&mut buf)?))
            }
        };
        Ok(SessionRecord { client_id, expiry_interval, protocol, disconnected_at, subscriptions, pending_will })
    }
}

/// A queued message as read back.
#[derive(Debug)]
pub(crate) struct QueuedRecord {
    pub(crate) seq: u64,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) subscription_ids: Vec<u32>,
    /// The share group (`{group}/{filter}`) it was picked for, if any.
    pub(crate) group: Option<String>,
    pub(crate) message: Message,
    pub(crate) sent: Option<(PacketId, InflightState)>,
}

impl QueuedRecord {
    /// The delivery again; its share group, looked up by name, if it still
    /// has members.
    pub(crate) fn into_delivery(self, groups: &dyn Fn(&str) -> Option<Arc<SharedGroup>>) -> Delivery {
        Delivery {
            message: Arc::new(self.message),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            shared: self.group.as_deref().and_then(groups),
            seq: self.seq,
        }
    }
}

/// Reads a queue record: `key` is (session, sequence).
pub(crate) fn read_queued(key: &[u8], mut buf: Bytes) -> Result<QueuedRecord, String> {
    let (_, rest) = split_key(key)?;
    let seq = u64_of(rest)?;
    let version = buf.try_get_u8().map_err(|_| "truncated")?;
    if !(1..=QUEUE_VERSION).contains(&version) || buf.remaining() < 4 {
        return Err("queue record of an unknown version".into());
    }
    let qos = QoS::from_u8(buf.get_u8()).ok_or("bad QoS")?;
    let retain = buf.get_u8() != 0;
    let count = buf.get_u16();
    let mut subscription_ids = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        subscription_ids.push(buf.try_get_u32().map_err(|_| "truncated")?);
    }
    let group = if version >= 2 { Some(get_str(&mut buf)?).filter(|g| !g.is_empty()) } else { None };
    let message = decode_message(&mut buf)?;
    Ok(QueuedRecord { seq, qos, retain, subscription_ids, group, message, sent: None })
}

fn read_inflight(mut buf: Bytes) -> Result<(PacketId, InflightState), String> {
    if buf.remaining() < 4 || buf.get_u8() != VERSION {
        return Err("in-flight record of an unknown version".into());
    }
    let id = PacketId::new(buf.get_u16()).ok_or("packet id 0")?;
    let state = if buf.get_u8() == 0 { InflightState::ExpectAck } else { InflightState::ExpectComp };
    Ok((id, state))
}

fn split_key(key: &[u8]) -> Result<(u64, &[u8]), String> {
    let (sid, rest) = key.split_first_chunk().ok_or("short key")?;
    Ok((u64::from_be_bytes(*sid), rest))
}

fn u64_of(rest: &[u8]) -> Result<u64, String> {
    Ok(u64::from_be_bytes(rest.try_into().map_err(|_| "bad key length")?))
}

/// A session as read back from the store, with its messages.
pub(crate) struct RecoveredSession {
    pub(crate) sid: u64,
    pub(crate) record: SessionRecord,
    /// In sequence order: those sent (in flight), then at most the memory
    /// window of those not sent yet.
    pub(crate) queued: Vec<QueuedRecord>,
    /// How many of `queued` were not sent.
    unsent: usize,
    /// The rest of the queue, left in the store: how many, and the first
    /// one's sequence number.
    pub(crate) spill_from: Option<u64>,
    /// The sequence number after the last one stored.
    pub(crate) next_seq: u64,
    pub(crate) awaiting_rel: Vec<u16>,
}

impl RecoveredSession {
    /// Messages left in the store: sequence numbers run without gaps
    /// through a backlog, so this counts them; numbers freed by messages
    /// moved to another member of a share group make it an overestimate,
    /// put right as the backlog is read.
    pub(crate) fn spilled(&self) -> u64 {
        self.spill_from.map_or(0, |from| self.next_seq - from)
    }
}

/// What the store holds, decoded.
pub(crate) struct Recovered {
    pub(crate) sessions: Vec<RecoveredSession>,
    pub(crate) retained: Vec<Message>,
}

/// Reads and decodes the store: sessions, retained messages and of each
/// session's queue what it sent and up to `window` more; the rest of a
/// queue is counted and left in the store. A record that cannot be read
/// stops the broker with the table and key, rather than starting without it.
pub(crate) fn load(store: &dyn Store, window: usize) -> Result<Recovered, StoreError> {
    let bad = |table: Table, key: &[u8], why: String| {
        StoreError(format!("the store's {} table has a record it cannot read (key {key:02x?}): {why}", table.name()))
    };
    let mut sessions: Vec<RecoveredSession> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (key, value) in store.load(Table::Sessions)? {
        let (sid, _) = split_key(&key).map_err(|e| bad(Table::Sessions, &key, e))?;
        let record = SessionRecord::read(value).map_err(|e| bad(Table::Sessions, &key, e))?;
        index.insert(sid, sessions.len());
        sessions.push(RecoveredSession {
            sid,
            record,
            queued: Vec::new(),
            unsent: 0,
            spill_from: None,
            next_seq: 1,
            awaiting_rel: Vec::new(),
        });
    }
    let mut sent = std::collections::HashMap::new();
    for (key, value) in store.load(Table::Inflight)? {
        let (sid, rest) = split_key(&key).map_err(|e| bad(Table::Inflight, &key, e))?;
        let seq = u64_of(rest).map_err(|e| bad(Table::Inflight, &key, e))?;
        sent.insert((sid, seq), read_inflight(value).map_err(|e| bad(Table::Inflight, &key, e))?);
    }
    // Each session's queue is read up to the window; the rest of it stays
    // in the store, so start-up takes the same time whatever the backlog.
    for session in &mut sessions {
        let sid = session.sid;
        let (start, end) = (session_key(sid), session_key(sid + 1));
        let mut failure = None;
        store.read(Table::Queue, &start, Some(&end), &mut |key, value| {
            let seq = match split_key(key).and_then(|(_, rest)| u64_of(rest)) {
                Ok(seq) => seq,
                Err(e) => {
                    failure = Some(bad(Table::Queue, key, e));
                    return false;
                }
            };
            let was_sent = sent.get(&(sid, seq)).copied();
            if was_sent.is_none() && session.unsent >= window {
                session.spill_from = Some(seq);
                return false;
            }
            match read_queued(key, Bytes::copy_from_slice(value)) {
                Ok(mut record) => {
                    record.sent = was_sent;
                    session.unsent += usize::from(was_sent.is_none());
                    session.queued.push(record);
                    true
                }
                Err(e) => {
                    failure = Some(bad(Table::Queue, key, e));
                    false
                }
            }
        })?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if let Some(last) = store.last_key(Table::Queue, &start, &end)? {
            session.next_seq =
                split_key(&last).and_then(|(_, rest)| u64_of(rest)).map_err(|e| bad(Table::Queue, &last, e))? + 1;
        }
    }
    for (key, _) in store.load(Table::AwaitingRel)? {
        let (sid, rest) = split_key(&key).map_err(|e| bad(Table::AwaitingRel, &key, e))?;
        let id = u16::from_be_bytes(rest.try_into().map_err(|_| bad(Table::AwaitingRel, &key, "bad key".into()))?);
        if let Some(session) = index.get(&sid).and_then(|&i| sessions.get_mut(i)) {
            session.awaiting_rel.push(id);
        }
    }
    let mut retained = Vec::new();
    for (key, mut value) in store.load(Table::Retained)? {
        retained.push(decode_message(&mut value).map_err(|e| bad(Table::Retained, &key, e))?);
    }
    Ok(Recovered { sessions, retained })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use midge_codec::{MqttStr, PublishProperties};

    fn message(expiry: Option<u32>) -> Message {
        let properties = PublishProperties {
            message_expiry_interval: expiry,
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        Message::new(MqttStr::from("a/b"), Bytes::from_static(b"hello"), QoS::ExactlyOnce, true, properties)
    }

    #[test]
    fn messages_round_trip_with_their_expiry() {
        let m = message(Some(60));
        let back = decode_message(&mut stored_form(&m).clone()).unwrap();
        assert_eq!(
            (back.topic.as_str(), &back.payload[..], back.qos, back.retain),
            ("a/b", &b"hello"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(back.properties.and_then(|p| p.content_type).as_deref(), Some("text/plain"));
        let left = back.expires_at.unwrap().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60), "{left:?}");
    }

    #[test]
    fn a_session_with_its_queue_is_read_back() {
        let store = MemoryStore::new();
        let grant = Grant {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::SendIfNew,
            },
            identifier: Some(7),
        };
        let subscriptions: std::collections::HashMap<String, Grant> = [("a/#".to_string(), grant)].into();
        let will = message(None);
        put_session(&store, 3, "c1", u32::MAX, ProtocolVersion::V5, 1234, subscriptions.iter(), Some((99, &will)));
        let delivery = Delivery {
            message: std::sync::Arc::new(message(None)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![7],
            shared: None,
            seq: 0,
        };
        put_queued(&store, 3, 10, &delivery);
        put_queued(&store, 3, 11, &delivery);
        put_inflight(&store, 3, 10, PacketId::new(42).unwrap(), InflightState::ExpectComp);
        put_awaiting_rel(&store, 3, 9);
        put_queued(&store, 4, 1, &delivery); // no such session: ignored
        let recovered = load(&store, 1000).unwrap();
        assert_eq!(recovered.sessions.len(), 1);
        let s = &recovered.sessions[0];
        assert_eq!((s.sid, s.record.client_id.as_str(), s.record.disconnected_at), (3, "c1", 1234));
        assert_eq!(s.record.subscriptions, vec![("a/#".to_string(), grant)]);
        assert_eq!(s.record.pending_will.as_ref().unwrap().0, 99);
        assert_eq!(s.queued.iter().map(|q| q.seq).collect::<Vec<_>>(), [10, 11]);
        assert_eq!(s.queued[0].sent, Some((PacketId::new(42).unwrap(), InflightState::ExpectComp)));
        assert_eq!(s.queued[1].subscription_ids, [7]);
        assert_eq!(s.awaiting_rel, [9]);
        end_session(&store, 3);
        let recovered = load(&store, 1000).unwrap();
        assert!(recovered.sessions.is_empty());
        assert_eq!(store.len(Table::Queue), 1, "only the orphan of session 4 is left");
    }

    #[test]
    fn a_long_queue_is_loaded_up_to_the_window_and_the_rest_counted() {
        let store = MemoryStore::new();
        put_session(&store, 5, "c", u32::MAX, ProtocolVersion::V5, 1, std::iter::empty(), None);
        let group = std::sync::Arc::new(SharedGroup::new("g/a/#"));
        let delivery = Delivery {
            message: std::sync::Arc::new(message(None)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            shared: Some(group.clone()),
            seq: 0,
        };
        for seq in 1..=10 {
            put_queued(&store, 5, seq, &delivery);
        }
        put_inflight(&store, 5, 1, PacketId::new(1).unwrap(), InflightState::ExpectAck);
        put_inflight(&store, 5, 2, PacketId::new(2).unwrap(), InflightState::ExpectAck);
        let recovered = load(&store, 3).unwrap();
        let s = &recovered.sessions[0];
        assert_eq!(s.queued.iter().map(|q| q.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "2 sent + 3 unsent");
        assert_eq!((s.spilled(), s.spill_from, s.next_seq), (5, Some(6), 11));
        assert_eq!(s.queued[0].group.as_deref(), Some("g/a/#"));
        let back = recovered.sessions.into_iter().next().unwrap().queued.remove(0);
        let d = back.into_delivery(&|name| (name == "g/a/#").then(|| group.clone()));
        assert!(d.shared.is_some_and(|g| std::sync::Arc::ptr_eq(&g, &group)));
    }
}
