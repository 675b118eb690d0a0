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
use std::future::Future;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use midge_codec::{MqttStr, PacketId, ProtocolVersion, PublishProperties, QoS};
use parking_lot::Mutex;

use crate::BrokerConfig;
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
    /// v5 properties; `None` when there are none, as from every 3.x client.
    /// Boxed: inline they were half of every message's allocation.
    pub(crate) properties: Option<Box<PublishProperties>>,
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
        let properties = (properties != PublishProperties::default()).then(|| Box::new(properties));
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

impl Delivery {
    /// A subscriber's copy of `message` under its matching subscriptions:
    /// at the highest QoS they grant, downgraded to the published QoS
    /// [MQTT-3.8.4-6]; RETAIN cleared on normal delivery [MQTT-3.3.1-9]
    /// unless a subscription asked for it as published [MQTT-3.3.1-13].
    pub(crate) fn routed(
        message: Arc<Message>,
        granted: QoS,
        retain_as_published: bool,
        subscription_ids: Vec<u32>,
    ) -> Delivery {
        Delivery {
            qos: granted.min(message.qos),
            retain: retain_as_published && message.retain,
            subscription_ids,
            shared: None,
            seq: 0,
            message,
        }
    }
}

/// A session's QoS 0 copies of a run of messages (see `outbox`), held as
/// one reference to the run: with many subscribers, a reference per copy
/// made every copy touch its message's count, from whichever worker
/// served the subscriber, and the count's cache line moved between the
/// CPUs on every copy (docs/PERFORMANCE.md, "Two cores: one reference per
/// run").
#[derive(Debug)]
pub(crate) struct RunCopies {
    /// The run's messages, all on one topic, in the order published.
    pub(crate) messages: Arc<[Arc<Message>]>,
    pub(crate) retain_as_published: bool,
    /// v5 Subscription Identifiers of its matching subscriptions, sorted.
    pub(crate) subscription_ids: Vec<u32>,
}

impl RunCopies {
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn messages(&self) -> &[Arc<Message>] {
        &self.messages
    }

    /// The topic all its messages share (a run is never empty, so `None`
    /// never comes).
    pub(crate) fn topic(&self) -> Option<&MqttStr> {
        self.messages.first().map(|first| &first.topic)
    }

    /// Keeps the first `n` copies. They get a list of their own: a
    /// session's queue must not keep alive more messages than it counts.
    fn truncate(&mut self, n: usize) {
        if let Some((kept, [_, ..])) = self.messages.split_at_checked(n) {
            self.messages = kept.iter().cloned().collect();
        }
    }

    /// RETAIN on the wire, as for [`Delivery::routed`].
    pub(crate) fn retain(&self, message: &Message) -> bool {
        self.retain_as_published && message.retain
    }

    /// The copies one by one, as a session that must store them needs them.
    fn into_deliveries(self) -> impl Iterator<Item = Delivery> {
        let RunCopies { messages, retain_as_published, subscription_ids } = self;
        // By index: the iterator must own the shared list it walks.
        (0..messages.len()).filter_map(move |i| {
            let message = messages.get(i)?.clone();
            Some(Delivery::routed(message, QoS::AtMostOnce, retain_as_published, subscription_ids.clone()))
        })
    }
}

/// A session's queue entry: one delivery, or QoS 0 copies of a run.
#[derive(Debug)]
pub(crate) enum Queued {
    One(Delivery),
    Run(RunCopies),
}

/// What a connection takes from the queue to send.
#[derive(Debug)]
pub(crate) enum Sendable {
    /// With its packet id if QoS 1/2.
    One(Delivery, Option<PacketId>),
    Run(RunCopies),
}

/// Messages not yet sent, in order, counted one by one whether they wait
/// alone or in a run.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    entries: VecDeque<Queued>,
    /// Messages in `entries`.
    len: usize,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push_back(&mut self, delivery: Delivery) {
        self.len += 1;
        self.entries.push_back(Queued::One(delivery));
    }

    pub(crate) fn push_front(&mut self, delivery: Delivery) {
        self.len += 1;
        self.entries.push_front(Queued::One(delivery));
    }

    fn push_run(&mut self, run: RunCopies) {
        self.len += run.len();
        self.entries.push_back(Queued::Run(run));
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let entry = self.entries.pop_front()?;
        self.len -= match &entry {
            Queued::One(_) => 1,
            Queued::Run(run) => run.len(),
        };
        Some(entry)
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }

    /// Takes out the share-group deliveries; runs never hold any.
    fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken = Vec::new();
        if !self.entries.iter().any(|entry| matches!(entry, Queued::One(d) if d.shared.is_some())) {
            return taken;
        }
        let mut own = VecDeque::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            match entry {
                Queued::One(d) if d.shared.is_some() => taken.push(d),
                entry => own.push_back(entry),
            }
        }
        self.entries = own;
        self.len -= taken.len();
        taken
    }
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
    /// The broker is shutting down.
    Shutdown,
}

impl Kick {
    fn code(self) -> u8 {
        match self {
            Kick::TakenOver { publish_will: false } => 1,
            Kick::TakenOver { publish_will: true } => 2,
            Kick::Shutdown => 3,
        }
    }

    fn from_code(code: u8) -> Option<Kick> {
        match code {
            1 => Some(Kick::TakenOver { publish_will: false }),
            2 => Some(Kick::TakenOver { publish_will: true }),
            3 => Some(Kick::Shutdown),
            _ => None,
        }
    }
}

/// How a session reaches the connection attached to it: a wake-up when
/// something is queued, and the order to go. One small allocation per
/// connection, and one thing for the connection to wait on besides its
/// socket and its keep-alive timer.
///
/// Only the connection's own task ever waits on it, so one waker slot and
/// a flag do: no waiter list and no lock, as `tokio::sync::Notify` has.
/// It is waited on at every turn of the serving loop, which made Notify's
/// bookkeeping a visible share of a lone message's path (docs/PERFORMANCE.md).
#[derive(Debug, Default)]
pub(crate) struct Signal {
    waker: AtomicWaker,
    /// A wake-up the connection has not taken yet.
    woken: AtomicBool,
    /// 0 while the connection may stay; else a [`Kick`] code. The first
    /// kick wins.
    kick: AtomicU8,
}

impl Signal {
    /// Something was queued for the connection.
    pub(crate) fn wake(&self) {
        // Already set: whoever set it woke the task, or the task is running
        // and checks the flag before it waits again. Many publishers waking
        // one subscriber then touch the waker's slot once, not each time.
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Tells the connection to go.
    pub(crate) fn kick(&self, reason: Kick) {
        let _ = self.kick.compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// Why the connection must go, if it must.
    pub(crate) fn kicked(&self) -> Option<Kick> {
        Kick::from_code(self.kick.load(Ordering::Acquire))
    }

    /// Completes at the next [`Signal::wake`] or [`Signal::kick`], or at
    /// once if one came while nobody waited. Wake-ups that came meanwhile
    /// are taken as one.
    pub(crate) fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.take() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A wake between the check and the registration found no waker.
            if self.take() { Poll::Ready(()) } else { Poll::Pending }
        })
    }

    fn take(&self) -> bool {
        // A load first: the common case (nothing came) writes nothing.
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) connection_id: u64,
    /// Wakes the connection's task, or tells it to go.
    pub(crate) signal: Arc<Signal>,
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
    pub(crate) pending_will: Option<Box<Message>>,
    pub(crate) protocol: ProtocolVersion,
    /// Set once the session is discarded; a late publisher that still holds
    /// it (through a router snapshot) then drops instead of queueing.
    pub(crate) discarded: bool,
    pub(crate) subscriptions: HashMap<String, Grant>,
    /// Messages not yet sent: waiting for a connection or a free in-flight
    /// slot. For a stored session at most `max_queued_in_memory` of them;
    /// the rest wait in the store.
    pub(crate) queue: Queue,
    /// Where the backlog held only in the store starts: it is every
    /// sequence number from here to `next_seq` (they are given out one by
    /// one while it exists, and only read ones are deleted), after
    /// everything in `queue`. Paged back in (see [`SessionState::refill`])
    /// as `queue` empties. `None`: no backlog.
    pub(crate) spill_from: Option<u64>,
    /// Sent QoS 1/2 messages not yet acknowledged, in send order.
    pub(crate) inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL: a re-sent PUBLISH
    /// with one of these ids is not routed again [MQTT-4.3.3-2].
    pub(crate) awaiting_rel: PacketIds,
}

/// A set of packet ids that costs one pointer until it holds one: most
/// clients never publish at QoS 2, and every idle session carries it.
/// (A `HashSet` inline is 48 bytes; boxed, the session fits a 256-byte
/// allocation.)
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub(crate) struct PacketIds(Option<Box<HashSet<u16>>>);

impl PacketIds {
    /// Adds `id`; false if it was already there.
    pub(crate) fn insert(&mut self, id: u16) -> bool {
        self.0.get_or_insert_default().insert(id)
    }

    /// Removes `id`; false if it was not there.
    pub(crate) fn remove(&mut self, id: u16) -> bool {
        self.0.as_mut().is_some_and(|set| set.remove(&id))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |set| set.len())
    }

    /// Empties the set and lets its memory go.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

impl FromIterator<u16> for PacketIds {
    fn from_iter<I: IntoIterator<Item = u16>>(ids: I) -> PacketIds {
        let set: HashSet<u16> = ids.into_iter().collect();
        PacketIds((!set.is_empty()).then(|| Box::new(set)))
    }
}

/// What is left of a discarded session for the caller to finish.
#[derive(Debug)]
pub(crate) struct Discarded {
    pub(crate) filters: Vec<String>,
    pub(crate) pending_will: Option<Message>,
    pub(crate) shared_orphans: Vec<Delivery>,
}

/// A part of a session's backlog to read from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refill {
    pub(crate) sid: u64,
    /// First sequence number.
    pub(crate) from: u64,
    /// The session's next sequence number when the read was asked for.
    pub(crate) to: u64,
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
                queue: Queue::default(),
                spill_from: None,
                inflight: VecDeque::new(),
                next_packet_id: 0,
                awaiting_rel: PacketIds::default(),
            }),
        }
    }

    pub(crate) fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Appends a delivery for the client and wakes its connection: what
    /// [`Session::enqueue_all`] does for one.
    pub(crate) fn enqueue(&self, delivery: Delivery, config: &BrokerConfig, store: Option<&dyn Store>) -> Enqueued {
        let mut result = Enqueued::Queued;
        self.enqueue_all(std::iter::once(delivery), config, store, |outcome| result = outcome);
        result
    }

    /// Appends deliveries for the client, in order, under one lock, and
    /// wakes its connection at most once; `outcome` hears what became of
    /// each. Bounded by `max_queued_messages`; QoS 0 is not kept for an
    /// absent client (Mosquitto's default `queue_qos0_messages false`).
    ///
    /// A QoS 1/2 delivery to a stored session is written to `store` here,
    /// under the session's lock, so its acknowledgement (which needs this
    /// lock too) can only be written after it. Past `max_queued_in_memory`
    /// it stays in the store only; so does anything behind such a backlog,
    /// QoS 0 included, to keep the order.
    pub(crate) fn enqueue_all(
        &self,
        deliveries: impl IntoIterator<Item = Delivery>,
        config: &BrokerConfig,
        store: Option<&dyn Store>,
        mut outcome: impl FnMut(Enqueued),
    ) {
        let mut state = self.state.lock();
        // One wake per empty→non-empty transition: the connection drains the
        // whole queue each time it runs. A connection that ran dry looks at
        // the store's backlog when woken, too.
        let mut wake = false;
        for mut delivery in deliveries {
            if state.discarded {
                outcome(Enqueued::DroppedDiscarded);
                continue;
            }
            if state.owner.is_none() && delivery.qos == QoS::AtMostOnce {
                outcome(Enqueued::DroppedQoS0Offline);
                continue;
            }
            if state.queue.len() as u64 + state.spilled() >= config.max_queued_messages as u64 {
                outcome(Enqueued::DroppedQueueFull);
                continue;
            }
            delivery.seq = 0;
            if let Some(store) = store
                && state.stored
                && (delivery.qos != QoS::AtMostOnce || state.spill_from.is_some())
            {
                delivery.seq = state.next_seq;
                state.next_seq += 1;
                persist::put_queued(store, state.sid, delivery.seq, &delivery);
                if state.spill_from.is_some() || state.queue.len() >= config.max_queued_in_memory {
                    state.spill_from.get_or_insert(delivery.seq);
                    wake |= state.queue.is_empty();
                    outcome(Enqueued::Queued);
                    continue;
                }
            }
            wake |= state.queue.is_empty();
            state.queue.push_back(delivery);
            outcome(Enqueued::Queued);
        }
        wake_owner(state, wake);
    }

    /// Queues QoS 0 copies of a run as one entry, with what
    /// [`Session::enqueue_all`] would do with each copy: dropped for an
    /// absent client, and past `max_queued_messages`. Behind a backlog in
    /// the store each copy is stored to keep its place, so they go one by
    /// one there.
    pub(crate) fn enqueue_run(
        &self,
        mut run: RunCopies,
        config: &BrokerConfig,
        store: Option<&dyn Store>,
        mut outcome: impl FnMut(Enqueued),
    ) {
        let mut state = self.state.lock();
        let each = |outcome: &mut dyn FnMut(Enqueued), what, n| (0..n).for_each(|_| outcome(what));
        if state.discarded {
            return each(&mut outcome, Enqueued::DroppedDiscarded, run.len());
        }
        if state.owner.is_none() {
            return each(&mut outcome, Enqueued::DroppedQoS0Offline, run.len());
        }
        if store.is_some() && state.stored && state.spill_from.is_some() {
            drop(state);
            return self.enqueue_all(run.into_deliveries(), config, store, outcome);
        }
        let queued = state.queue.len() as u64 + state.spilled();
        let room = usize::try_from((config.max_queued_messages as u64).saturating_sub(queued)).unwrap_or(usize::MAX);
        let taken = run.len().min(room);
        each(&mut outcome, Enqueued::DroppedQueueFull, run.len() - taken);
        if taken == 0 {
            return;
        }
        run.truncate(taken);
        let wake = state.queue.is_empty();
        state.queue.push_run(run);
        each(&mut outcome, Enqueued::Queued, taken);
        wake_owner(state, wake);
    }
}

/// Wakes the connection attached to the session, if `wake` (the queue was
/// empty before), once the lock is let go.
fn wake_owner(state: parking_lot::MutexGuard<'_, SessionState>, wake: bool) {
    let signal = if wake { state.owner.as_ref().map(|o| o.signal.clone()) } else { None };
    drop(state);
    if let Some(signal) = signal {
        signal.wake();
    }
}

impl SessionState {
    pub(crate) fn is_owned_by(&self, connection_id: u64) -> bool {
        self.owner.as_ref().is_some_and(|o| o.connection_id == connection_id)
    }

    /// Attaches a connection, kicking any other one. Returns nothing; the
    /// kicked connection notices through its signal.
    pub(crate) fn attach(&mut self, connection_id: u64, signal: Arc<Signal>, reason: Kick) {
        if let Some(old) = self.owner.take() {
            old.signal.kick(reason);
        }
        self.owner = Some(Owner { connection_id, signal });
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
        if let Some(old) = self.owner.take() {
            old.signal.kick(reason);
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
        let mut shared_orphans = self.take_shared();
        // Their stored copies went with the session's.
        shared_orphans.iter_mut().for_each(|d| d.seq = 0);
        self.queue.clear();
        self.spill_from = None;
        self.inflight.clear();
        self.awaiting_rel.clear();
        Discarded {
            filters: self.subscriptions.drain().map(|(filter, _)| filter).collect(),
            pending_will: self.pending_will.take().map(|will| *will),
            shared_orphans,
        }
    }

    /// Removes the shared-subscription deliveries another member may take
    /// over: those not sent yet, and QoS 1 ones sent but not acknowledged
    /// (v5 section 4.8.2). A QoS 2 message already sent stays, to be
    /// completed with this client [MQTT-4.8.2-4].
    /// Their stored copies stay until another member has stored its own
    /// (see `Shared::reroute_shared`). A backlog still in the store stays
    /// with this member.
    pub(crate) fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken = self.queue.take_shared();
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
        out: &mut Vec<Sendable>,
        store: Option<&dyn Store>,
    ) -> bool {
        let mut qos2_stored = false;
        while let Some(entry) = self.queue.pop_front() {
            let d = match entry {
                Queued::One(delivery) => delivery,
                // QoS 0 and never stored: all sent now, the expired ones
                // left out as they are written.
                Queued::Run(run) => {
                    out.push(Sendable::Run(run));
                    continue;
                }
            };
            if d.message.is_expired(now) {
                self.forget(store, d.seq);
                continue;
            }
            if d.qos == QoS::AtMostOnce {
                // Stored only to keep its place behind a backlog; sent now.
                self.forget(store, d.seq);
                out.push(Sendable::One(d, None));
                continue;
            }
            if self.inflight.len() >= window {
                self.queue.push_front(d);
                break;
            }
            let id = self.next_packet_id();
            if let (Some(store), seq @ 1..) = (store, d.seq) {
                persist::put_inflight(store, self.sid, seq, id, InflightState::ExpectAck);
                qos2_stored |= d.qos == QoS::ExactlyOnce;
            }
            self.inflight.push_back(Inflight { packet_id: id, delivery: d.clone(), state: InflightState::ExpectAck });
            out.push(Sendable::One(d, Some(id)));
        }
        qos2_stored
    }

    /// Where the backlog in the store is to be read: the session number and
    /// the sequence numbers from and up to (not including), when the
    /// in-memory queue has run dry and the in-flight window has room.
    pub(crate) fn refill_from(&self, window: usize) -> Option<Refill> {
        let from = self.spill_from?;
        (self.queue.is_empty() && self.inflight.len() < window).then_some(Refill {
            sid: self.sid,
            from,
            to: self.next_seq,
        })
    }

    /// How many messages wait in the store only (an overestimate after a
    /// restart if some sequence numbers there were freed; see `persist::load`).
    pub(crate) fn spilled(&self) -> u64 {
        self.spill_from.map_or(0, |from| self.next_seq - from)
    }

    /// Appends backlog deliveries read from the store (in sequence order)
    /// to the in-memory queue. Those before `spill_from` are already here
    /// (another read got them first) and are skipped, so reads may overlap.
    /// `complete`: the read found everything of `refill`'s range (it
    /// returned less than it was allowed to), so sequence numbers there
    /// that it did not find are gaps (messages taken by another share
    /// group member before a restart), not messages still to read.
    pub(crate) fn refill(&mut self, refill: Refill, complete: bool, deliveries: Vec<Delivery>) {
        let Some(mut from) = self.spill_from else { return };
        for delivery in deliveries {
            if delivery.seq < from {
                continue;
            }
            from = delivery.seq + 1;
            self.queue.push_back(delivery);
        }
        if complete {
            from = from.max(refill.to);
        }
        self.spill_from = (from < self.next_seq).then_some(from);
    }

    /// Deletes a delivery's stored copy, if it has one (`seq` 0: none).
    pub(crate) fn forget(&self, store: Option<&dyn Store>, seq: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Table};

    fn delivery(n: u32, qos: QoS) -> Delivery {
        let message = Message::new(
            MqttStr::from("backlog"),
            Bytes::from(n.to_be_bytes().to_vec()),
            qos,
            false,
            PublishProperties::default(),
        );
        Delivery { message: Arc::new(message), qos, retain: false, subscription_ids: Vec::new(), shared: None, seq: 0 }
    }

    fn run_of(numbers: std::ops::Range<u32>) -> RunCopies {
        let messages: Arc<[Arc<Message>]> = numbers.map(|n| delivery(n, QoS::AtMostOnce).message).collect();
        RunCopies { messages, retain_as_published: false, subscription_ids: Vec::new() }
    }

    fn online(session: &Session) {
        session.state.lock().attach(1, Arc::new(Signal::default()), Kick::TakenOver { publish_will: false });
    }

    /// Payload numbers of everything sendable now, in order, runs opened.
    fn sendable_numbers(session: &Session, store: Option<&dyn Store>) -> Vec<u32> {
        let mut out = Vec::new();
        session.state.lock().take_sendable(100, Instant::now(), &mut out, store);
        let mut numbers = Vec::new();
        for item in out {
            match item {
                Sendable::One(d, _) => numbers.push(number(&d)),
                Sendable::Run(run) => numbers.extend(run.messages().iter().map(|m| payload_number(m))),
            }
        }
        numbers
    }

    fn outcomes(session: &Session, run: RunCopies, config: &BrokerConfig, store: Option<&dyn Store>) -> Vec<Enqueued> {
        let mut got = Vec::new();
        session.enqueue_run(run, config, store, |outcome| got.push(outcome));
        got
    }

    #[test]
    fn a_run_counts_each_of_its_messages_against_the_queue_limit_and_keeps_its_place() {
        let config = BrokerConfig { max_queued_messages: 5, ..BrokerConfig::default() };
        let session = Session::new("c".into(), 1, 0, ProtocolVersion::V3_1_1);
        online(&session);
        assert_eq!(session.enqueue(delivery(0, QoS::AtLeastOnce), &config, None), Enqueued::Queued);
        assert_eq!(outcomes(&session, run_of(1..3), &config, None), [Enqueued::Queued; 2]);
        assert_eq!(session.enqueue(delivery(3, QoS::AtMostOnce), &config, None), Enqueued::Queued);
        assert_eq!(session.state.lock().queue.len(), 4);
        // Room for one more: the run's first message is queued, the rest
        // dropped as a full queue drops them one by one.
        let run = run_of(4..7);
        let cut = run.messages()[1].clone();
        let got = outcomes(&session, run, &config, None);
        assert_eq!(got, [Enqueued::DroppedQueueFull, Enqueued::DroppedQueueFull, Enqueued::Queued]);
        assert_eq!(Arc::strong_count(&cut), 1, "the queue holds only the messages it counts");
        assert_eq!(session.enqueue(delivery(7, QoS::AtMostOnce), &config, None), Enqueued::DroppedQueueFull);
        // [MQTT-4.6.0-6]: in the order queued, whatever waited alone or in a run.
        assert_eq!(sendable_numbers(&session, None), [0, 1, 2, 3, 4]);
        assert!(session.state.lock().queue.is_empty());
    }

    #[test]
    fn a_run_is_dropped_for_an_absent_client_and_a_discarded_session() {
        let config = BrokerConfig::default();
        let session = Session::new("c".into(), 1, u32::MAX, ProtocolVersion::V3_1_1);
        assert_eq!(outcomes(&session, run_of(0..2), &config, None), [Enqueued::DroppedQoS0Offline; 2]);
        online(&session);
        assert_eq!(outcomes(&session, run_of(0..2), &config, None), [Enqueued::Queued; 2]);
        session.state.lock().discard(Kick::Shutdown, None);
        assert!(session.state.lock().queue.is_empty());
        assert_eq!(outcomes(&session, run_of(0..2), &config, None), [Enqueued::DroppedDiscarded; 2]);
    }

    #[test]
    fn a_run_leaves_share_group_deliveries_to_be_taken_over_and_stays() {
        let config = BrokerConfig::default();
        let session = Session::new("c".into(), 1, 0, ProtocolVersion::V5);
        online(&session);
        let group = Arc::new(SharedGroup::new("g/t"));
        let mut shared = delivery(0, QoS::AtLeastOnce);
        shared.shared = Some(group);
        session.enqueue(shared, &config, None);
        session.enqueue_run(run_of(1..3), &config, None, |_| {});
        let taken = session.state.lock().take_shared();
        assert_eq!(taken.iter().map(number).collect::<Vec<_>>(), [0]);
        assert_eq!(session.state.lock().queue.len(), 2);
        assert_eq!(sendable_numbers(&session, None), [1, 2]);
    }

    #[tokio::test]
    async fn behind_a_backlog_a_run_is_stored_copy_by_copy() {
        let store = MemoryStore::new();
        let config = BrokerConfig { max_queued_messages: 100, max_queued_in_memory: 1, ..BrokerConfig::default() };
        let session = Session::new("c".into(), 1, u32::MAX, ProtocolVersion::V5);
        session.state.lock().stored = true;
        online(&session);
        session.enqueue(delivery(0, QoS::AtLeastOnce), &config, Some(&store));
        session.enqueue(delivery(1, QoS::AtLeastOnce), &config, Some(&store));
        assert_eq!(session.state.lock().spilled(), 1);
        assert_eq!(outcomes(&session, run_of(2..4), &config, Some(&store)), [Enqueued::Queued; 2]);
        assert_eq!(store.len(Table::Queue), 4, "the run's copies wait in the store behind the backlog");
        assert_eq!(session.state.lock().spilled(), 3);
    }

    #[test]
    fn a_message_without_properties_holds_none() {
        let bare = delivery(1, QoS::AtLeastOnce).message;
        assert!(bare.properties.is_none());
        let properties = PublishProperties { content_type: Some("text/plain".into()), ..Default::default() };
        let message = Message::new(MqttStr::from("t"), Bytes::new(), QoS::AtMostOnce, false, properties.clone());
        assert_eq!(message.properties.as_deref(), Some(&properties));
        // The boxing is the point: a queued message costs half as much.
        assert!(std::mem::size_of::<Message>() < 160, "{}", std::mem::size_of::<Message>());
    }

    fn number(d: &Delivery) -> u32 {
        payload_number(&d.message)
    }

    fn payload_number(m: &Message) -> u32 {
        u32::from_be_bytes(m.payload[..].try_into().unwrap())
    }

    /// Pages the backlog in as a connection does: scan from where it starts,
    /// read the records back, refill.
    async fn page_in(session: &Session, store: &MemoryStore, limit: usize) -> bool {
        let Some(refill) = session.state.lock().refill_from(20) else { return false };
        let records = store
            .scan(
                Table::Queue,
                persist::queue_key(refill.sid, refill.from),
                persist::queue_key(refill.sid, refill.to),
                limit,
            )
            .await
            .unwrap();
        let complete = records.len() < limit;
        let deliveries =
            records.into_iter().map(|(k, v)| persist::read_queued(&k, v).unwrap().into_delivery(&|_| None)).collect();
        session.state.lock().refill(refill, complete, deliveries);
        true
    }

    #[tokio::test]
    async fn a_backlog_past_the_memory_window_waits_in_the_store_and_comes_back_in_order() {
        let store = MemoryStore::new();
        let config = BrokerConfig { max_queued_messages: 10_000, max_queued_in_memory: 100, ..BrokerConfig::default() };
        let session = Session::new("c".into(), 7, u32::MAX, ProtocolVersion::V5);
        session.state.lock().stored = true;
        for n in 0..1000 {
            assert_eq!(session.enqueue(delivery(n, QoS::AtLeastOnce), &config, Some(&store)), Enqueued::Queued);
        }
        {
            let state = session.state.lock();
            assert_eq!((state.queue.len(), state.spilled(), state.spill_from), (100, 900, Some(101)));
        }
        assert_eq!(store.len(Table::Queue), 1000, "every QoS 1 delivery is stored");

        // The client takes everything, acknowledging as it goes.
        let mut got = Vec::new();
        let mut out = Vec::new();
        loop {
            session.state.lock().take_sendable(20, Instant::now(), &mut out, Some(&store));
            if out.is_empty() && !page_in(&session, &store, 100).await {
                break;
            }
            for sendable in out.drain(..) {
                let Sendable::One(d, id) = sendable else { panic!("a stored session's queue holds no runs") };
                got.push(number(&d));
                let mut state = session.state.lock();
                let i = state.inflight_position(id.unwrap()).unwrap();
                state.remove_inflight(i, Some(&store));
            }
        }
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(store.len(Table::Queue), 0);
        assert_eq!(session.state.lock().spilled(), 0);
    }

    #[tokio::test]
    async fn behind_a_backlog_qos0_is_stored_too_so_order_holds_and_the_limit_counts_the_backlog() {
        let store = MemoryStore::new();
        let config = BrokerConfig { max_queued_messages: 6, max_queued_in_memory: 2, ..BrokerConfig::default() };
        let session = Session::new("c".into(), 1, u32::MAX, ProtocolVersion::V5);
        {
            let mut state = session.state.lock();
            state.stored = true;
            state.attach(1, Arc::new(Signal::default()), Kick::TakenOver { publish_will: false });
        }
        for (n, qos) in [(0, QoS::AtLeastOnce), (1, QoS::AtLeastOnce), (2, QoS::AtLeastOnce), (3, QoS::AtMostOnce)] {
            assert_eq!(session.enqueue(delivery(n, qos), &config, Some(&store)), Enqueued::Queued);
        }
        assert_eq!(session.state.lock().spilled(), 2);
        assert_eq!(store.len(Table::Queue), 4);
        session.enqueue(delivery(4, QoS::AtLeastOnce), &config, Some(&store));
        session.enqueue(delivery(5, QoS::AtLeastOnce), &config, Some(&store));
        assert_eq!(session.enqueue(delivery(6, QoS::AtLeastOnce), &config, Some(&store)), Enqueued::DroppedQueueFull);

        let mut got = Vec::new();
        let mut out = Vec::new();
        loop {
            session.state.lock().take_sendable(20, Instant::now(), &mut out, Some(&store));
            if out.is_empty() && !page_in(&session, &store, 2).await {
                break;
            }
            for sendable in out.drain(..) {
                let Sendable::One(d, id) = sendable else { panic!("a stored session's queue holds no runs") };
                got.push((number(&d), d.qos));
                if let Some(id) = id {
                    let mut state = session.state.lock();
                    let i = state.inflight_position(id).unwrap();
                    state.remove_inflight(i, Some(&store));
                }
            }
        }
        let numbers: Vec<u32> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5]);
        assert_eq!(got[3].1, QoS::AtMostOnce);
        assert_eq!(store.len(Table::Queue), 0, "the QoS 0 record went when it was sent");
    }

    /// [MQTT-4.3.3-2]: a QoS 2 packet id is held from PUBREC to PUBREL; the
    /// set behind it exists only while it holds one.
    #[test]
    fn packet_ids_hold_each_id_once_and_cost_nothing_empty() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.len(), 0);
        assert!(!ids.remove(7), "nothing to remove yet");
        assert!(ids.insert(7));
        assert!(!ids.insert(7), "a re-sent PUBLISH with a held id is not new");
        assert!(ids.insert(8));
        assert_eq!(ids.len(), 2);
        assert!(ids.remove(7));
        assert!(!ids.remove(7));
        assert_eq!(ids.len(), 1);
        ids.clear();
        assert_eq!(ids.len(), 0);
        assert!(ids.0.is_none());
        assert!(PacketIds::from_iter(std::iter::empty()).0.is_none());
        assert_eq!([3, 3, 4].into_iter().collect::<PacketIds>().len(), 2);
    }
}
