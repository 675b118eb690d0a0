//! Sessions live apart from connections [DESIGN seam 3].
//!
//! A [`Session`] holds what MQTT says survives a disconnect: subscriptions,
//! messages queued for the client, outbound QoS 1/2 messages in flight and
//! inbound QoS 2 packet ids awaiting PUBREL. A connection *attaches* to a
//! session, drains its queue to the socket and detaches when it closes; a
//! publisher never touches a socket, it only appends to sessions' queues.
//!
//! Lock order: router → session state. A session's state lock is held only
//! for queue and map operations, never across I/O or an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use midge_codec::{MqttStr, PacketId, ProtocolVersion, PublishProperties, QoS};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::persist;
use crate::router::Grant;
use crate::shared::SharedGroup;
use crate::store::Store;

/// An application message as the broker routes it: shared by every
/// subscriber it fans out to, so the payload is never copied.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) topic: MqttStr,
    pub(crate) payload: Bytes,
    /// QoS it was published with.
    pub(crate) qos: QoS,
    /// RETAIN as published.
    pub(crate) retain: bool,
    pub(crate) properties: PublishProperties,
    /// From the v5 Message Expiry Interval: past it, the message is not
    /// delivered [MQTT-3.3.2-5].
    pub(crate) expires_at: Option<Instant>,
    /// The message as the store keeps it, made once however many stored
    /// sessions it goes to (see `persist::stored_form`).
    pub(crate) stored: std::sync::OnceLock<Bytes>,
}

impl Message {
    pub(crate) fn new(
        topic: MqttStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    ) -> Message {
        let expires_at =
            properties.message_expiry_interval.map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        Message { topic, payload, qos, retain, properties, expires_at, stored: std::sync::OnceLock::new() }
    }

    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) message: Arc<Message>,
    /// min(publish QoS, subscription QoS).
    pub(crate) qos: QoS,
    /// RETAIN flag on the wire: set only when sent because of a new
    /// subscription [MQTT-3.3.1-8], [MQTT-3.3.1-9].
    pub(crate) retain: bool,
    /// v5 Subscription Identifiers of every matching subscription
    /// [MQTT-3.3.4-3]; empty (no allocation) without them.
    pub(crate) subscription_ids: Vec<u32>,
    /// The share group it was picked for, so it can go to another member
    /// if this one leaves.
    pub(crate) shared: Option<Arc<SharedGroup>>,
    /// Its sequence number in the store, 0 if it is not stored.
    pub(crate) seq: u64,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    ExpectAck,
    /// PUBREL sent, waiting for PUBCOMP.
    ExpectComp,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) packet_id: PacketId,
    pub(crate) delivery: Delivery,
    pub(crate) state: InflightState,
}

/// Why a connection was told to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection took the session over [MQTT-3.1.4-2]. `publish_will`
    /// is false when the session continues, as Mosquitto does.
    TakenOver { publish_will: bool },
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) connection_id: u64,
    /// Wakes the connection's task when something is queued.
    pub(crate) wake: Arc<Notify>,
    kick: Option<oneshot::Sender<Kick>>,
}

/// A session: one per client id.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    pub(crate) state: Mutex<SessionState>,
    /// Mirrors `state.owner.is_some()` for share groups, which check many
    /// members per message and should not take each one's lock.
    online: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct SessionState {
    /// The session's number in the store.
    pub(crate) sid: u64,
    /// Whether the session is in the store (it outlives its connection and
    /// the broker has a store); its QoS 1/2 deliveries are stored then.
    pub(crate) stored: bool,
    /// The next delivery's sequence number in the store.
    pub(crate) next_seq: u64,
    /// The attached connection; `None` while the client is away.
    pub(crate) owner: Option<Owner>,
    /// Seconds the session outlives its connection: 0 ends it with the
    /// connection (3.x clean session [MQTT-3.1.2-6], v5 default), `u32::MAX`
    /// never (3.x persistent session, v5 0xFFFFFFFF [MQTT-3.1.2-23]).
    pub(crate) expiry_interval: u32,
    /// The connection that last detached: timers armed at that detach act
    /// only if no connection attached since.
    pub(crate) detached_by: u64,
    /// A v5 will waiting out its Will Delay Interval.
    pub(crate) pending_will: Option<Message>,
    pub(crate) protocol: ProtocolVersion,
    /// Set once the session is discarded; a late publisher that still holds
    /// it (through a router snapshot) then drops instead of queueing.
    pub(crate) discarded: bool,
    pub(crate) subscriptions: HashMap<String, Grant>,
    /// Messages not yet sent: waiting for a connection or a free in-flight slot.
    pub(crate) queue: VecDeque<Delivery>,
    /// Sent QoS 1/2 messages not yet acknowledged, in send order.
    pub(crate) inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL: a re-sent PUBLISH
    /// with one of these ids is not routed again [MQTT-4.3.3-2].
    pub(crate) awaiting_rel: HashSet<u16>,
}

/// What is left of a discarded session for the caller to finish.
#[derive(Debug)]
pub(crate) struct Discarded {
    pub(crate) filters: Vec<String>,
    pub(crate) pending_will: Option<Message>,
    pub(crate) shared_orphans: Vec<Delivery>,
}

/// What [`Session::enqueue`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    Queued,
    DroppedQueueFull,
    DroppedQoS0Offline,
    DroppedDiscarded,
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>, sid: u64, expiry_interval: u32, protocol: ProtocolVersion) -> Session {
        Session {
            client_id,
            online: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                sid,
                stored: false,
                next_seq: 1,
                owner: None,
                expiry_interval,
                detached_by: 0,
                pending_will: None,
                protocol,
                discarded: false,
                subscriptions: HashMap::new(),
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                next_packet_id: 0,
                awaiting_rel: HashSet::new(),
            }),
        }
    }

    pub(crate) fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Appends a delivery for the client and wakes its connection. Bounded
    /// by `max_queued`; QoS 0 is not kept for an absent client (Mosquitto's
    /// default `queue_qos0_messages false`).
    ///
    /// A QoS 1/2 delivery to a stored session is written to `store` here,
    /// under the session's lock, so its acknowledgement (which needs this
    /// lock too) can only be written after it.
    pub(crate) fn enqueue(&self, mut delivery: Delivery, max_queued: usize, store: Option<&dyn Store>) -> Enqueued {
        let mut state = self.state.lock();
        if state.discarded {
            return Enqueued::DroppedDiscarded;
        }
        let online = state.owner.is_some();
        if !online && delivery.qos == QoS::AtMostOnce {
            return Enqueued::DroppedQoS0Offline;
        }
        if state.queue.len() >= max_queued {
            return Enqueued::DroppedQueueFull;
        }
        delivery.seq = 0;
        if let Some(store) = store
            && state.stored
            && delivery.qos != QoS::AtMostOnce
        {
            delivery.seq = state.next_seq;
            state.next_seq += 1;
            persist::put_queued(store, state.sid, delivery.seq, &delivery);
        }
        let Some(owner) = &state.owner else {
            state.queue.push_back(delivery);
            return Enqueued::Queued;
        };
        let wake_needed = state.queue.is_empty();
        let wake = wake_needed.then(|| owner.wake.clone());
        state.queue.push_back(delivery);
        drop(state);
        // One wake per empty→non-empty transition: the connection drains the
        // whole queue each time it runs.
        if let Some(wake) = wake {
            wake.notify_one();
        }
        Enqueued::Queued
    }
}

impl SessionState {
    pub(crate) fn is_owned_by(&self, connection_id: u64) -> bool {
        self.owner.as_ref().is_some_and(|o| o.connection_id == connection_id)
    }

    /// Attaches a connection, kicking any other one. Returns nothing; the
    /// kicked connection notices through its oneshot.
    pub(crate) fn attach(&mut self, connection_id: u64, wake: Arc<Notify>, kick: oneshot::Sender<Kick>, reason: Kick) {
        if let Some(mut old) = self.owner.take()
            && let Some(tx) = old.kick.take()
        {
            let _ = tx.send(reason);
        }
        self.owner = Some(Owner { connection_id, wake, kick: Some(kick) });
    }

    /// True when the session ends with its connection.
    pub(crate) fn ends_with_connection(&self) -> bool {
        self.expiry_interval == 0
    }

    /// True if no connection attached since `connection_id` detached.
    pub(crate) fn still_detached_by(&self, connection_id: u64) -> bool {
        self.owner.is_none() && self.detached_by == connection_id && !self.discarded
    }

    /// Ends the session: kicks its connection, if any, and drops its
    /// queue. Returns its subscription filters for the caller to remove
    /// from the router (which must not be locked while this lock is held)
    /// and a delayed will, which is due now that the session ends.
    pub(crate) fn discard(&mut self, reason: Kick, store: Option<&dyn Store>) -> Discarded {
        if let Some(mut old) = self.owner.take()
            && let Some(tx) = old.kick.take()
        {
            let _ = tx.send(reason);
        }
        self.discarded = true;
        if let Some(store) = store
            && self.stored
        {
            persist::end_session(store, self.sid);
            self.stored = false;
        }
        // Shared-subscription messages not yet sent, or sent at QoS 1, go to
        // another member; a QoS 2 one already sent must not [MQTT-4.8.2-5].
        let shared_orphans = self.take_shared(None);
        self.queue.clear();
        self.inflight.clear();
        self.awaiting_rel.clear();
        Discarded {
            filters: self.subscriptions.drain().map(|(filter, _)| filter).collect(),
            pending_will: self.pending_will.take(),
            shared_orphans,
        }
    }

    /// Removes the shared-subscription deliveries another member may take
    /// over: those not sent yet, and QoS 1 ones sent but not acknowledged
    /// (v5 section 4.8.2). A QoS 2 message already sent stays, to be
    /// completed with this client [MQTT-4.8.2-4].
    /// Their stored copies are deleted; the member taking one stores its own.
    pub(crate) fn take_shared(&mut self, store: Option<&dyn Store>) -> Vec<Delivery> {
        let mut taken = self.take_shared_deliveries();
        if let Some(store) = store {
            for delivery in &mut taken {
                self.forget(Some(store), delivery.seq);
                delivery.seq = 0;
            }
        }
        taken
    }

    fn take_shared_deliveries(&mut self) -> Vec<Delivery> {
        let mut taken = Vec::new();
        if self.queue.iter().any(|d| d.shared.is_some()) {
            let (shared, own): (VecDeque<Delivery>, VecDeque<Delivery>) =
                self.queue.drain(..).partition(|d| d.shared.is_some());
            self.queue = own;
            taken.extend(shared);
        }
        if self.inflight.iter().any(|f| f.delivery.shared.is_some() && f.delivery.qos == QoS::AtLeastOnce) {
            let (shared, own): (VecDeque<Inflight>, VecDeque<Inflight>) = self
                .inflight
                .drain(..)
                .partition(|f| f.delivery.shared.is_some() && f.delivery.qos == QoS::AtLeastOnce);
            self.inflight = own;
            taken.extend(shared.into_iter().map(|f| f.delivery));
        }
        taken
    }

    /// Allocates an unused non-zero packet id [MQTT-2.3.1-2].
    pub(crate) fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            let Some(id) = NonZeroU16::new(self.next_packet_id) else { continue };
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// Moves queued deliveries that fit into the in-flight window to `out`,
    /// giving QoS 1/2 ones a packet id. Stops at the first QoS > 0 delivery
    /// that does not fit, so order is kept [MQTT-4.6.0-6].
    /// Expired messages are dropped on the way [MQTT-3.3.2-5].
    ///
    /// Stored deliveries get their packet id stored; returns true if a QoS 2
    /// one did, which must be durable before the PUBLISH goes out: after a
    /// crash the client, which may hold that id awaiting PUBREL, must see
    /// the same id again, or it would take the message for a new one.
    pub(crate) fn take_sendable(
        &mut self,
        window: usize,
        now: Instant,
        out: &mut Vec<(Delivery, Option<PacketId>)>,
        store: Option<&dyn Store>,
    ) -> bool {
        let mut qos2_stored = false;
        while let Some(front) = self.queue.front() {
            if front.message.is_expired(now) {
                self.forget(store, front.seq);
                self.queue.pop_front();
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                let d = self.queue.pop_front().expect("front exists");
                out.push((d, None));
                continue;
            }
            if self.inflight.len() >= window {
                break;
            }
            let d = self.queue.pop_front().expect("front exists");
            let id = self.next_packet_id();
            if let (Some(store), seq @ 1..) = (store, d.seq) {
                persist::put_inflight(store, self.sid, seq, id, InflightState::ExpectAck);
                qos2_stored |= d.qos == QoS::ExactlyOnce;
            }
            self.inflight.push_back(Inflight { packet_id: id, delivery: d.clone(), state: InflightState::ExpectAck });
            out.push((d, Some(id)));
        }
        qos2_stored
    }

    /// Deletes a delivery's stored copy, if it has one (`seq` 0: none).
    fn forget(&self, store: Option<&dyn Store>, seq: u64) {
        if let Some(store) = store
            && seq != 0
        {
            persist::delete_queued(store, self.sid, seq);
        }
    }

    /// Ends the flow of the in-flight message at `i` (acknowledged, or not
    /// to be sent after all), with its stored copy.
    pub(crate) fn remove_inflight(&mut self, i: usize, store: Option<&dyn Store>) {
        if let Some(done) = self.inflight.remove(i) {
            self.forget(store, done.delivery.seq);
        }
    }

    /// Finds an in-flight message by id; acks usually come in order, so the
    /// front is checked first.
    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        self.inflight.iter().position(|f| f.packet_id == id)
    }
}
