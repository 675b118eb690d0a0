//! The broker's shared state and the operations connections call on it:
//! attach/detach sessions, subscribe, publish (route + retain).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use midge_codec::topic::SharedFilter;
use midge_codec::{MqttStr, ProtocolVersion, PublishProperties, QoS};
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AllowAll, Authenticator, Authorizer};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::outbox::{Batch, Outbox, Recipient};
use crate::persist;
use crate::retained::RetainedTree;
use crate::router::{Grant, TopicIndex};
use crate::session::{Delivery, Discarded, Enqueued, Kick, Message, Session, SessionState, Signal};
use crate::shared::{SharedGroup, Subscriber};
use crate::store::{Store, StoreError};
use crate::throttle::LoginThrottle;

/// A session handle compared by identity, for the topic index.
#[derive(Debug, Clone)]
pub(crate) struct SessionRef(pub(crate) Arc<Session>);

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The topic index with its share groups. One lock guards both, so a
/// group is in the index exactly while it has members.
#[derive(Debug, Default)]
pub(crate) struct Router {
    index: TopicIndex<Subscriber>,
    /// `{group}/{filter}` → group.
    groups: HashMap<String, Arc<SharedGroup>>,
}

/// Share groups and their members' queued messages hold each other (see
/// [`SharedGroup::disband`]); without this a dropped broker would leak every
/// session that had a message queued for a group it belonged to.
impl Drop for Router {
    fn drop(&mut self) {
        for group in self.groups.values() {
            group.disband();
        }
    }
}

impl Router {
    fn subscribe(&mut self, session: &Arc<Session>, filter: &str, grant: Grant) {
        let member = SessionRef(session.clone());
        match SharedFilter::parse(filter) {
            Ok(Some(shared)) => {
                let name = format!("{}/{}", shared.group, shared.filter);
                let group = self.groups.entry(name).or_insert_with_key(|name| {
                    let group = Arc::new(SharedGroup::new(name));
                    self.index.insert(shared.filter, Subscriber::Shared(group.clone()), Grant::default());
                    group
                });
                group.join(member, grant);
            }
            _ => self.index.insert(filter, Subscriber::Session(member), grant),
        }
    }

    /// The share group named `{group}/{filter}`, while it has members.
    pub(crate) fn group(&self, name: &str) -> Option<Arc<SharedGroup>> {
        self.groups.get(name).cloned()
    }

    fn unsubscribe(&mut self, session: &Arc<Session>, filter: &str) {
        let member = SessionRef(session.clone());
        match SharedFilter::parse(filter) {
            Ok(Some(shared)) => {
                let name = format!("{}/{}", shared.group, shared.filter);
                if let Some(group) = self.groups.get(&name)
                    && group.leave(&member)
                {
                    self.index.remove(shared.filter, &Subscriber::Shared(group.clone()));
                    self.groups.remove(&name);
                }
            }
            _ => {
                self.index.remove(filter, &Subscriber::Session(member));
            }
        }
    }
}

/// One session a message is routed to, merged over its matching subscriptions.
struct Target<'a> {
    session: &'a SessionRef,
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
}

/// State shared by every connection.
///
/// Locks, in the order they may nest: `sessions` → `router` → a session's
/// state. `retained` nests with nothing. The publish path takes only the
/// router's read lock and each target session's own lock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) metrics: Metrics,
    pub(crate) hooks: Hooks,
    pub(crate) logins: Arc<LoginThrottle>,
    /// Client id → session, for takeover and resumption.
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    pub(crate) router: RwLock<Router>,
    /// Topic name → last retained message, indexed by level.
    retained: RwLock<RetainedTree>,
    next_connection_id: AtomicU64,
    /// Connections reading on after the server ended them (`connection::linger`).
    pub(crate) lingering: std::sync::atomic::AtomicUsize,
    /// Where sessions and retained messages are kept; `None`: memory only.
    pub(crate) store: Option<Arc<dyn Store>>,
    /// The next session's number in the store.
    next_sid: AtomicU64,
    pub(crate) started: Instant,
    pub(crate) shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// How clients coming in through one listener are admitted.
#[derive(Debug, Clone)]
pub struct ListenerPolicy {
    /// Let clients without a user name in (they still pass the
    /// authenticator). Default `true`.
    pub allow_anonymous: bool,
    /// Take the user name from the verified client certificate instead of
    /// CONNECT (Mosquitto's `use_identity_as_username`); such clients are
    /// authenticated by TLS and skip the authenticator. Default `false`.
    pub use_identity_as_username: bool,
}

impl Default for ListenerPolicy {
    fn default() -> Self {
        ListenerPolicy { allow_anonymous: true, use_identity_as_username: false }
    }
}

/// Where a connection came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client's address.
    pub peer: SocketAddr,
    /// The identity in a verified client certificate (its subject CN, or
    /// its first DNS name), if the listener asked for one.
    pub certificate_identity: Option<String>,
    /// The listener's admission rules.
    pub policy: Arc<ListenerPolicy>,
}

/// The policies a broker applies to its clients.
#[derive(Clone)]
pub struct Hooks {
    /// Who may connect.
    pub authenticator: Arc<dyn Authenticator>,
    /// What a connected client may publish, subscribe to and receive.
    pub authorizer: Arc<dyn Authorizer>,
}

impl Default for Hooks {
    /// Everyone in, everything allowed.
    fn default() -> Self {
        Hooks { authenticator: Arc::new(AllowAll), authorizer: Arc::new(AllowAll) }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

/// Failed accepts on one listener. At the open-file limit every retry
/// fails until a descriptor frees up: the failure is logged once per
/// [`AcceptFailures::QUIET`] with how many there were, not twenty times a
/// second, and the recovery is logged too.
#[derive(Debug, Default)]
pub struct AcceptFailures {
    /// Failures since the last accept that worked.
    count: u64,
    logged_at: Option<Instant>,
}

impl AcceptFailures {
    /// How long a failure is not logged again.
    pub const QUIET: Duration = Duration::from_secs(10);

    /// Notes a failed accept, logs it if nothing was logged for
    /// [`Self::QUIET`], and waits 50 ms: EMFILE and friends fail at once,
    /// so trying again at once would spin.
    pub async fn failed(&mut self, error: &std::io::Error) {
        self.count += 1;
        if self.logged_at.is_none_or(|at| at.elapsed() >= Self::QUIET) {
            tracing::warn!(error = %error, failures = self.count, "accept failed; trying again every 50 ms");
            self.logged_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Notes an accept that worked, after failures if there were some.
    pub fn succeeded(&mut self) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "accepting connections again");
            *self = AcceptFailures::default();
        }
    }
}

/// A running broker. Cheap to clone; all clones drive the same broker.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// A broker with `config`. It serves nothing until given connections
    /// ([`Broker::serve_tcp`], [`Broker::serve_connection`]).
    pub fn new(config: BrokerConfig) -> Broker {
        Broker::with_hooks(config, Hooks::default())
    }

    /// A broker whose clients pass through `hooks`.
    pub fn with_hooks(config: BrokerConfig, hooks: Hooks) -> Broker {
        Broker::build(config, hooks, None)
    }

    /// A broker that keeps persistent sessions, their QoS 1/2 messages and
    /// retained messages in `store`, and acknowledges QoS 1/2 messages and
    /// subscriptions only once the store has them (under its sync policy).
    /// Call [`Broker::recover`] before serving clients.
    pub fn with_store(config: BrokerConfig, hooks: Hooks, store: Arc<dyn Store>) -> Broker {
        Broker::build(config, hooks, Some(store))
    }

    fn build(config: BrokerConfig, hooks: Hooks, store: Option<Arc<dyn Store>>) -> Broker {
        Broker {
            shared: Arc::new(Shared {
                store,
                next_sid: AtomicU64::new(1),
                logins: LoginThrottle::new(config.login_limits.clone()),
                config,
                metrics: Metrics::default(),
                hooks,
                sessions: Mutex::new(HashMap::new()),
                router: RwLock::new(Router::default()),
                retained: RwLock::new(RetainedTree::default()),
                next_connection_id: AtomicU64::new(1),
                lingering: std::sync::atomic::AtomicUsize::new(0),
                started: Instant::now(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The broker's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Accepts MQTT connections on `listener` until [`Broker::shutdown`],
    /// anonymous clients allowed.
    pub async fn serve_tcp(&self, listener: TcpListener) {
        self.serve_tcp_with(listener, Arc::new(ListenerPolicy::default())).await;
    }

    /// Accepts MQTT connections on `listener` under `policy` until
    /// [`Broker::shutdown`].
    pub async fn serve_tcp_with(&self, listener: TcpListener, policy: Arc<ListenerPolicy>) {
        let mut failures = AcceptFailures::default();
        loop {
            let accepted = tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    failures.succeeded();
                    // Small packets matter more than segment efficiency; we
                    // batch writes ourselves.
                    let _ = stream.set_nodelay(true);
                    let origin = Origin { peer, certificate_identity: None, policy: policy.clone() };
                    self.serve_connection_from(stream, origin);
                }
                Err(e) => failures.failed(&e).await,
            }
        }
    }

    /// Serves one client over any byte stream (TCP, TLS, WebSocket...),
    /// anonymous clients allowed.
    pub fn serve_connection<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let policy = Arc::new(ListenerPolicy::default());
        self.serve_connection_from(stream, Origin { peer, certificate_identity: None, policy });
    }

    /// Serves one client that came in as `origin` says.
    pub fn serve_connection_from<S>(&self, stream: S, origin: Origin)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        self.shared.tasks.spawn(crate::connection::run(shared, stream, origin));
    }

    /// True once [`Broker::shutdown`] has begun: listeners stop accepting.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Starts publishing `$SYS` topics, if configured.
    pub fn start_sys(&self) {
        if let Some(interval) = self.shared.config.sys_interval {
            self.shared.tasks.spawn(crate::sys::run(self.shared.clone(), interval));
        }
    }

    /// Closes every connection and stops accepting; waits up to `grace`
    /// for connections to finish, then makes everything written durable.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.cancel();
        // Connections wait on their signal, not on the token: each is told.
        // One that attaches after this sees the token cancelled.
        for session in self.shared.sessions.lock().values() {
            if let Some(owner) = &session.state.lock().owner {
                owner.signal.kick(Kick::Shutdown);
            }
        }
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait()).await.is_err() {
            tracing::warn!(
                "{} connections and tasks did not close within {grace:?}; dropping them",
                self.shared.tasks.len()
            );
        }
        if let Some(store) = self.shared.store.clone() {
            let closed = tokio::task::spawn_blocking(move || store.close()).await;
            if let Ok(Err(e)) = closed {
                tracing::error!("closing the store: {e}");
            }
        }
    }

    /// Loads what the store holds: sessions with their subscriptions and
    /// messages, and retained messages. Sessions whose expiry passed while
    /// the broker was down end now (publishing their delayed wills); the
    /// others wait for their clients again. Needs a Tokio runtime (it
    /// starts the sessions' expiry timers).
    pub fn recover(&self) -> Result<Recovery, StoreError> {
        let Some(store) = self.shared.store.clone() else { return Ok(Recovery::default()) };
        let started = Instant::now();
        let recovered = persist::load(store.as_ref(), self.shared.config.max_queued_in_memory)?;
        let mut report = Recovery { retained: recovered.retained.len(), ..Recovery::default() };
        {
            let mut retained = self.shared.retained.write();
            for message in recovered.retained {
                let topic = message.topic.clone();
                retained.insert(topic.as_str(), Arc::new(message));
            }
        }
        for session in recovered.sessions {
            report.sessions += 1;
            report.queued += session.queued.len() + usize::try_from(session.spilled()).unwrap_or(usize::MAX);
            report.subscriptions += session.record.subscriptions.len();
            self.shared.restore_session(session);
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Publishes a message as the broker itself (used for `$SYS`).
    pub fn publish(&self, topic: &str, payload: Bytes, qos: QoS, retain: bool) {
        let properties = PublishProperties::default();
        self.shared.publish(Message::new(MqttStr::from(topic), payload, qos, retain, properties), None);
    }
}

/// What [`Broker::recover`] found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Persistent sessions restored.
    pub sessions: usize,
    /// Their subscriptions.
    pub subscriptions: usize,
    /// QoS 1/2 messages queued for them (in flight ones included).
    pub queued: usize,
    /// Retained messages.
    pub retained: usize,
    /// How long loading took.
    pub elapsed: Duration,
}

/// Removes `session` from the registry unless a newer session already
/// holds its client id.
fn forget(sessions: &mut HashMap<Arc<str>, Arc<Session>>, session: &Arc<Session>) {
    if sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
        sessions.remove(&session.client_id);
    }
}

impl Shared {
    pub(crate) fn store(&self) -> Option<&dyn Store> {
        self.store.as_deref()
    }

    /// Writes (or removes) a session's record to match its state: stored
    /// while it outlives its connection. `will_due` is when its delayed
    /// will fires (ms since the epoch); a session written while detached
    /// records when the client left.
    pub(crate) fn store_session(&self, session: &Session, state: &mut SessionState, will_due: Option<u64>) {
        let Some(store) = self.store() else { return };
        // A session that ends with its connection is not stored, unless it
        // still has a backlog in the store (it is removed when it ends).
        if state.discarded || (state.ends_with_connection() && state.spill_from.is_none()) {
            if state.stored {
                persist::end_session(store, state.sid);
                state.stored = false;
            }
            return;
        }
        let disconnected_at = if state.owner.is_some() { 0 } else { persist::now_unix_ms() };
        let will = will_due.zip(state.pending_will.as_deref());
        persist::put_session(
            store,
            state.sid,
            &session.client_id,
            state.expiry_interval,
            state.protocol,
            disconnected_at,
            state.subscriptions.iter(),
            will,
        );
        state.stored = true;
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Attaches connection `connection_id` to the session of `client_id`,
    /// creating, resuming or replacing it. Returns the session and whether
    /// it was resumed (CONNACK's session present [MQTT-3.2.2-2]).
    ///
    /// `clean_start` discards any existing session [MQTT-3.1.2-6];
    /// `expiry_interval` is how long the session outlives this connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attach_session(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        protocol: ProtocolVersion,
        connection_id: u64,
        signal: Arc<Signal>,
    ) -> (Arc<Session>, bool) {
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut state = existing.state.lock();
            if !clean_start && !state.ends_with_connection() {
                // The session continues on the new connection; the old
                // connection's will is not published (as Mosquitto does),
                // and a delayed will is cancelled [MQTT-3.1.3-9].
                state.attach(connection_id, signal, Kick::TakenOver { publish_will: false });
                state.expiry_interval = expiry_interval;
                state.protocol = protocol;
                state.pending_will = None;
                self.store_session(&existing, &mut state, None);
                existing.set_online(true);
                return (existing.clone(), true);
            }
            let discarded = state.discard(Kick::TakenOver { publish_will: true }, self.store());
            drop(state);
            existing.set_online(false);
            self.finish_discard(&existing, discarded);
        }
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(client_id.into(), sid, expiry_interval, protocol));
        {
            let mut state = session.state.lock();
            state.attach(connection_id, signal, Kick::TakenOver { publish_will: true });
            self.store_session(&session, &mut state, None);
        }
        session.set_online(true);
        sessions.insert(session.client_id.clone(), session.clone());
        (session, false)
    }

    /// The connection `connection_id` has ended. The session ends now if
    /// its expiry interval is 0 [MQTT-3.1.2-6], else it waits for the client
    /// for that long, measured by its own timer [MQTT-3.1.2-23]. A will
    /// with a delay waits too, unless the session ends first.
    pub(crate) fn detach_session(
        self: &Arc<Self>,
        session: &Arc<Session>,
        connection_id: u64,
        will: Option<(Message, Duration)>,
    ) {
        let mut sessions = self.sessions.lock();
        let mut state = session.state.lock();
        if !state.is_owned_by(connection_id) {
            drop((state, sessions));
            // Taken over: the new connection owns the session now.
            if let Some((will, _)) = will {
                self.publish(will, None);
            }
            return;
        }
        state.owner = None;
        state.detached_by = connection_id;
        session.set_online(false);
        if state.ends_with_connection() {
            let mut discarded = state.discard(Kick::TakenOver { publish_will: true }, self.store());
            discarded.pending_will = will.map(|(message, _)| message);
            drop(state);
            forget(&mut sessions, session);
            drop(sessions);
            self.finish_discard(session, discarded);
            return;
        }
        let expiry = (state.expiry_interval != u32::MAX).then(|| Duration::from_secs(u64::from(state.expiry_interval)));
        let mut will_now = None;
        let mut will_delay = None;
        let mut will_due = None;
        if let Some((message, delay)) = will {
            if delay.is_zero() {
                will_now = Some(message);
            } else {
                // Published when the delay passes or the session ends,
                // whichever comes first (v5 section 3.1.3.2.2).
                state.pending_will = Some(Box::new(message));
                will_delay = expiry.is_none_or(|e| delay < e).then_some(delay);
                will_due = Some(persist::now_unix_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX / 2));
            }
        }
        // The stored session now says when the client left, and holds the
        // delayed will, so both survive a restart.
        self.store_session(session, &mut state, will_due);
        tracing::debug!(
            client_id = %session.client_id,
            expiry = state.expiry_interval,
            delayed_will = state.pending_will.is_some(),
            "client left; session kept"
        );
        // Shared-subscription messages this client has not taken go to
        // another member now rather than wait for it (v5 section 4.8.2).
        let orphans = state.take_shared();
        drop((state, sessions));
        self.reroute_shared(session, orphans);
        if let Some(message) = will_now {
            self.publish(message, None);
        }
        self.arm_timers(session, connection_id, will_delay, expiry);
    }

    /// Puts back a session read from the store, detached, with its timers
    /// running from when its client left.
    fn restore_session(self: &Arc<Self>, restored: persist::RecoveredSession) {
        let record = restored.record;
        let now = persist::now_unix_ms();
        let left_at = if record.disconnected_at == 0 { now } else { record.disconnected_at };
        let away = Duration::from_millis(now.saturating_sub(left_at));
        self.next_sid.fetch_max(restored.sid + 1, Ordering::Relaxed);
        let session =
            Arc::new(Session::new(record.client_id.into(), restored.sid, record.expiry_interval, record.protocol));
        let filters: Vec<(String, Grant)> = record.subscriptions;
        {
            let mut router = self.router.write();
            for (filter, grant) in &filters {
                router.subscribe(&session, filter, *grant);
            }
        }
        // Deliveries picked for a share group are that group's again.
        let deliveries: Vec<_> = {
            let router = self.router.read();
            let groups = |name: &str| router.group(name);
            restored.queued.into_iter().map(|q| (q.sent, q.into_delivery(&groups))).collect()
        };
        let mut will_left = None;
        {
            let mut state = session.state.lock();
            state.stored = true;
            // Connection ids start at 1: 0 means "restored, nobody attached since".
            state.detached_by = 0;
            state.next_seq = restored.next_seq;
            state.spill_from = restored.spill_from;
            state.subscriptions = filters.iter().cloned().collect();
            state.awaiting_rel = restored.awaiting_rel.into_iter().collect();
            for (sent, delivery) in deliveries {
                match sent {
                    Some((packet_id, sent_state)) => {
                        state.inflight.push_back(crate::session::Inflight { packet_id, delivery, state: sent_state });
                    }
                    None => state.queue.push_back(delivery),
                }
            }
            if let Some((due, will)) = record.pending_will {
                state.pending_will = Some(Box::new(will));
                will_left = Some(Duration::from_millis(due.saturating_sub(now)));
            }
            // A client that was connected when the broker stopped left then.
            if record.disconnected_at == 0 {
                let due = will_left.map(|left| now + u64::try_from(left.as_millis()).unwrap_or(0));
                self.store_session(&session, &mut state, due);
            }
        }
        self.sessions.lock().insert(session.client_id.clone(), session.clone());
        let expiry = (record.expiry_interval != u32::MAX)
            .then(|| Duration::from_secs(u64::from(record.expiry_interval)).saturating_sub(away));
        if expiry.is_some_and(|left| left.is_zero()) {
            // Expired while the broker was down; its will goes out now.
            self.expire_session(&session, 0);
            return;
        }
        let will_delay = will_left.filter(|left| expiry.is_none_or(|e| *left < e));
        self.arm_timers(&session, 0, will_delay, expiry);
    }

    /// Starts the will-delay and session-expiry timers of a session that
    /// `connection_id` left.
    fn arm_timers(
        self: &Arc<Self>,
        session: &Arc<Session>,
        connection_id: u64,
        will_delay: Option<Duration>,
        expiry: Option<Duration>,
    ) {
        if let Some(delay) = will_delay {
            let (shared, session) = (self.clone(), session.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {
                        let will = {
                            let mut state = session.state.lock();
                            if state.still_detached_by(connection_id) { state.pending_will.take() } else { None }
                        };
                        if let Some(will) = will {
                            shared.publish(*will, None);
                        }
                    }
                }
            });
        }
        if let Some(expiry) = expiry {
            let (shared, session) = (self.clone(), session.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(expiry) => shared.expire_session(&session, connection_id),
                }
            });
        }
    }

    /// Ends a session whose client did not come back in time.
    fn expire_session(&self, session: &Arc<Session>, connection_id: u64) {
        let mut sessions = self.sessions.lock();
        let mut state = session.state.lock();
        if !state.still_detached_by(connection_id) {
            return;
        }
        let discarded = state.discard(Kick::TakenOver { publish_will: true }, self.store());
        drop(state);
        forget(&mut sessions, session);
        drop(sessions);
        tracing::debug!(client_id = %session.client_id, "session expired");
        self.finish_discard(session, discarded);
    }

    /// Removes a discarded session's subscriptions and publishes the will
    /// that was waiting for the session to end [MQTT-3.1.3-9].
    fn finish_discard(&self, session: &Arc<Session>, discarded: Discarded) {
        self.remove_subscriptions(session, discarded.filters);
        self.reroute_shared(session, discarded.shared_orphans);
        if let Some(will) = discarded.pending_will {
            self.publish(will, None);
        }
    }

    fn remove_subscriptions(&self, session: &Arc<Session>, filters: Vec<String>) {
        if filters.is_empty() {
            return;
        }
        let mut router = self.router.write();
        for filter in filters {
            router.unsubscribe(session, &filter);
        }
    }

    /// Gives shared-subscription messages that `from` will not take to
    /// other members of their groups; those with no other member stay with
    /// `from` (if it still exists, it will get them when it returns).
    fn reroute_shared(&self, from: &Arc<Session>, orphans: Vec<Delivery>) {
        if orphans.is_empty() {
            return;
        }
        let from = SessionRef(from.clone());
        let mut kept = Vec::new();
        let mut moved = Vec::new();
        for delivery in orphans {
            let Some(group) = delivery.shared.clone() else { continue };
            match group.pick(self.config.shared_strategy, Some(&from)) {
                Some((member, grant)) => {
                    let qos = delivery.message.qos.min(grant.options.qos);
                    let subscription_ids = grant.identifier.into_iter().collect();
                    moved.push(delivery.seq);
                    // Another client: a new delivery, not a re-send, so DUP is 0.
                    let delivery = Delivery { qos, subscription_ids, seq: 0, ..delivery };
                    self.count_enqueue(member.0.enqueue(delivery, &self.config, self.store()));
                }
                None => kept.push(delivery),
            }
        }
        let mut state = from.0.state.lock();
        if !state.discarded {
            // Moved messages are stored with their new member by now.
            for seq in moved {
                state.forget(self.store(), seq);
            }
            // Kept ones go back where they were, ahead of anything newer,
            // still stored.
            for delivery in kept.into_iter().rev() {
                state.queue.push_front(delivery);
            }
        }
    }

    /// Number of sessions, connected or not.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.router.read().index.len()
    }

    pub(crate) fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Adds or replaces a subscription of a live session. Returns whether
    /// it existed before, or `None` if the session was discarded meanwhile.
    pub(crate) fn subscribe(&self, session: &Arc<Session>, filter: &str, options: Grant) -> Option<bool> {
        let mut router = self.router.write();
        let mut state = session.state.lock();
        if state.discarded {
            return None;
        }
        let existed = state.subscriptions.insert(filter.to_owned(), options).is_some();
        self.store_session(session, &mut state, None);
        drop(state);
        router.subscribe(session, filter, options);
        Some(existed)
    }

    /// Removes a subscription; true if it existed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let mut router = self.router.write();
        let mut state = session.state.lock();
        let existed = state.subscriptions.remove(filter).is_some();
        if existed {
            self.store_session(session, &mut state, None);
        }
        drop(state);
        router.unsubscribe(session, filter);
        existed
    }

    /// Retains (or clears) and routes one application message. `origin` is
    /// the publishing client's session, for v5 No Local. Returns the number
    /// of sessions with a matching subscription.
    pub(crate) fn publish(&self, message: Message, origin: Option<&Arc<Session>>) -> usize {
        self.publish_via(message, origin, None)
    }

    /// [`Shared::publish`] for a client's message: its copies wait in
    /// `outbox`, in a run of messages on one topic, for [`Shared::flush`],
    /// which the connection calls when it has handled its read.
    pub(crate) fn publish_from(&self, message: Message, origin: &Arc<Session>, outbox: &mut Outbox) -> usize {
        self.publish_via(message, Some(origin), Some(outbox))
    }

    /// Queues what `outbox` holds on its target sessions.
    pub(crate) fn flush(&self, outbox: &mut Outbox) {
        outbox.flush(|session, batch| match batch {
            Batch::Each(deliveries) => {
                session.enqueue_all(deliveries, &self.config, self.store(), |outcome| self.count_enqueue(outcome));
            }
            Batch::Run(run) => {
                session.enqueue_run(run, &self.config, self.store(), |outcome| self.count_enqueue(outcome))
            }
        });
    }

    fn publish_via(&self, message: Message, origin: Option<&Arc<Session>>, outbox: Option<&mut Outbox>) -> usize {
        let message = Arc::new(message);
        if message.retain {
            let mut retained = self.retained.write();
            if message.payload.is_empty() {
                // A zero-byte retained message clears the topic and is not
                // stored [MQTT-3.3.1-10], [MQTT-3.3.1-11].
                if retained.remove(message.topic.as_str())
                    && let Some(store) = self.store()
                {
                    persist::delete_retained(store, message.topic.as_str());
                }
            } else {
                // Replaces any earlier one [MQTT-3.3.1-5].
                retained.insert(message.topic.as_str(), message.clone());
                // $SYS topics are the broker's own, refreshed every interval:
                // stale after a restart and not worth a write each time.
                if let Some(store) = self.store()
                    && !message.topic.as_str().starts_with("$SYS/")
                {
                    persist::put_retained(store, &message);
                }
            }
        }
        match outbox {
            None => self.route(message, origin, None),
            Some(outbox) => match outbox.join(message) {
                Ok(matched) => matched,
                Err(message) => {
                    self.flush(outbox);
                    self.route(message, origin, Some(outbox))
                }
            },
        }
    }

    /// Delivers `message` to every session with a matching subscription:
    /// one copy per session at the highest matching QoS [MQTT-3.3.5-1],
    /// downgraded to the published QoS [MQTT-3.8.4-6].
    fn route(&self, message: Arc<Message>, origin: Option<&Arc<Session>>, outbox: Option<&mut Outbox>) -> usize {
        let router = self.router.read();
        // The first match is kept apart: a message with one subscriber (the
        // common case) allocates no list of targets.
        let mut first: Option<Target<'_>> = None;
        let mut targets: Vec<Target<'_>> = Vec::new();
        let mut groups: Vec<&Arc<SharedGroup>> = Vec::new();
        let filters = router.index.for_each_match(message.topic.as_str(), |subscriber, grant| {
            let s = match subscriber {
                Subscriber::Session(s) => s,
                Subscriber::Shared(group) => return groups.push(group),
            };
            let o = grant.options;
            // No Local: not back to the publisher's own session [MQTT-3.8.3-3].
            if o.no_local && origin.is_some_and(|origin| Arc::ptr_eq(origin, &s.0)) {
                return;
            }
            let ids = grant.identifier.into_iter().collect();
            let target = Target { session: s, qos: o.qos, retain_as_published: o.retain_as_published, ids };
            if first.is_none() {
                first = Some(target);
            } else {
                targets.push(target);
            }
        });
        if !targets.is_empty() {
            targets.extend(first.take());
        }
        // One session subscribed through several matching filters gets one
        // copy. With one filter matched there is nothing to merge: sorting
        // 100 targets per message was 7% of QoS 0 fan-out.
        if targets.len() > 1 && filters > 1 {
            targets.sort_unstable_by_key(|t| Arc::as_ptr(&t.session.0) as usize);
            targets.dedup_by(|later, kept| {
                if later.session == kept.session {
                    kept.qos = kept.qos.max(later.qos);
                    kept.retain_as_published |= later.retain_as_published;
                    kept.ids.append(&mut later.ids);
                    true
                } else {
                    false
                }
            });
        }
        let mut matched = targets.len() + usize::from(first.is_some());
        let targets = first.into_iter().chain(targets).map(|mut target| {
            target.ids.sort_unstable();
            target
        });
        if let Some(outbox) = outbox
            && groups.is_empty()
        {
            // The start of a run: later messages on this topic in the same
            // read go where this one goes (see `outbox`).
            let recipients = targets.map(|target| Recipient {
                session: target.session.0.clone(),
                qos: target.qos,
                retain_as_published: target.retain_as_published,
                subscription_ids: target.ids,
            });
            outbox.start(message, recipients, matched);
            return matched;
        }
        // Each share group gives the message to one member, separately from
        // that member's own subscriptions (v5 section 4.8.2); a member is
        // picked per message, so these are queued at once.
        for group in groups {
            let Some((member, grant)) = group.pick(self.config.shared_strategy, None) else { continue };
            matched += 1;
            let o = grant.options;
            let ids = grant.identifier.into_iter().collect();
            let delivery = Delivery {
                shared: Some(group.clone()),
                ..Delivery::routed(message.clone(), o.qos, o.retain_as_published, ids)
            };
            self.count_enqueue(member.0.enqueue(delivery, &self.config, self.store()));
        }
        for target in targets {
            let delivery = Delivery::routed(message.clone(), target.qos, target.retain_as_published, target.ids);
            self.count_enqueue(target.session.0.enqueue(delivery, &self.config, self.store()));
        }
        matched
    }

    /// Counts a delivery a session's queue turned away.
    fn count_enqueue(&self, outcome: Enqueued) {
        match outcome {
            Enqueued::Queued | Enqueued::DroppedDiscarded => {}
            Enqueued::DroppedQueueFull => Metrics::inc(&self.metrics.dropped_queue_full),
            Enqueued::DroppedQoS0Offline => Metrics::inc(&self.metrics.dropped_qos0_offline),
        }
    }

    /// Retained messages matching `filter`, for a new subscription, and
    /// how much work finding them was (nodes of the index visited). An
    /// expired one is not sent [MQTT-3.3.2-5].
    pub(crate) fn retained_matching(&self, filter: &str) -> (Vec<Arc<Message>>, usize) {
        let now = std::time::Instant::now();
        let retained = self.retained.read();
        if !filter.contains(['+', '#']) {
            let found = retained.get(filter).filter(|m| !m.is_expired(now)).cloned().into_iter().collect();
            return (found, 1);
        }
        let mut found = Vec::new();
        let visited = retained.for_each_match(filter, |m| {
            if !m.is_expired(now) {
                found.push(m.clone());
            }
        });
        (found, visited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_codec::{MqttStr, ProtocolVersion, PublishProperties, QoS};

    /// A member of a share group with a message queued for the group (an
    /// offline member, say) and the group hold each other. Dropping the
    /// router must break that cycle, or every such session leaks with the
    /// broker (found by the broker fuzz target under LeakSanitizer).
    #[test]
    fn a_dropped_router_lets_go_of_share_group_members_with_queued_messages() {
        let session = Arc::new(Session::new("member".into(), 1, u32::MAX, ProtocolVersion::V5));
        let mut router = Router::default();
        router.subscribe(&session, "$share/g/t/#", Grant::default());
        let group = router.group("g/t/#").unwrap();
        let message = Message::new(
            MqttStr::from("t/1"),
            Bytes::from_static(b"m"),
            QoS::AtLeastOnce,
            false,
            PublishProperties::default(),
        );
        let delivery = Delivery {
            shared: Some(group.clone()),
            ..Delivery::routed(Arc::new(message), QoS::AtLeastOnce, false, Vec::new())
        };
        session.enqueue(delivery, &BrokerConfig::default(), None);
        let (weak_session, weak_group) = (Arc::downgrade(&session), Arc::downgrade(&group));
        drop((session, group));
        assert!(weak_session.upgrade().is_some(), "the router still has the member");
        drop(router);
        assert!(weak_session.upgrade().is_none(), "the session leaked");
        assert!(weak_group.upgrade().is_none(), "the group leaked");
    }

    /// A member that leaves a sticky group is not kept alive as its sticky
    /// member.
    #[test]
    fn a_member_leaving_a_group_is_no_longer_its_sticky_member() {
        let session = Arc::new(Session::new("member".into(), 1, u32::MAX, ProtocolVersion::V5));
        let mut router = Router::default();
        router.subscribe(&session, "$share/g/t", Grant::default());
        let group = router.group("g/t").unwrap();
        assert!(group.pick(crate::shared::SharedStrategy::Sticky, None).is_some());
        let weak = Arc::downgrade(&session);
        router.unsubscribe(&session, "$share/g/t");
        drop(session);
        assert!(weak.upgrade().is_none(), "the group kept the session it had picked");
    }
}
