//! The broker target: up to four clients against one [`Broker`] over
//! in-memory streams, driven by a sequence of operations read from the
//! input with `arbitrary`.
//!
//! ```text
//!  input ─arbitrary─▶ Scenario { knobs, ops }
//!  op ─encode─▶ client's pending bytes ─write (whole, split, mutated)─▶ duplex ─▶ broker task
//!  broker task ─▶ duplex ─▶ reader task per stream: decode, check, note ids for acks
//!  end: a fresh client must get CONNACK and PINGRESP; then shutdown, drop,
//!       and no task may have panicked
//! ```
//!
//! One current-thread runtime per input with a paused clock: the broker's
//! timers (keep-alive, connect timeout, will delay, session expiry) fire as
//! soon as everything else is idle, so an input costs CPU, not wall time,
//! and every wait is bounded in virtual time.
//!
//! Invariants, besides "nothing panics" (a panic in a broker task counts):
//! - everything the broker sends a client decodes, for the client's version
//!   and within the maximum packet size the client declared;
//! - a PUBLISH with an empty topic uses a topic alias the broker set before
//!   on that stream, within the client's Topic Alias Maximum;
//! - a client receives a PUBLISH only on a topic that a filter it (under
//!   its client id) subscribed to matches: checked while every byte sent
//!   came from the structured operations, as garbage can subscribe to
//!   anything;
//! - after the input, a new client is still served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use midge_broker::{Broker, BrokerConfig};
use midge_codec::topic::{self, SharedFilter};
use midge_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

use crate::{Features, panics};

/// How many clients an input drives.
const CLIENTS: usize = 4;

/// The deepest filter or topic the generator builds: past the few
/// thousand levels that overflowed a 2 MiB stack while the topic index
/// recursed (issue 21). The broker under test allows that depth
/// (`max_topic_levels`), so deep filters reach the index.
pub const MAX_GENERATED_LEVELS: usize = 20_000;

/// A client's idea of how long the broker may take to answer, in virtual
/// time: long enough for any timer an input sets (keep-alive up to 255 s,
/// will delay and session expiry up to 255 s), bounded so a silent broker
/// fails the probe instead of hanging it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

/// The whole input.
#[derive(Debug, Arbitrary)]
pub struct Scenario {
    knobs: Knobs,
    ops: Vec<Op>,
}

/// Broker limits, small so that queues fill and windows close.
#[derive(Debug, Arbitrary)]
struct Knobs {
    max_inflight: u8,
    max_queued_messages: u8,
    topic_alias_maximum: u8,
    /// In units of 256 bytes above a 64 KiB floor (deep filters fit).
    max_packet_size: u8,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Sends a packet on the client's stream, opening one if it has none;
    /// `delivery` applies one time in eight, else the packet goes whole
    /// (mutations end the checking of what subscribers receive).
    Send { client: u8, packet: PacketOp, odds: u8, delivery: Delivery },
    /// Writes out what an earlier split delivery held back.
    Flush { client: u8 },
    /// Ends the stream abruptly (no DISCONNECT), in both directions.
    Close { client: u8 },
    /// Closes only the client's write side: the broker reads end of stream.
    HalfClose { client: u8 },
    /// Raw bytes.
    Garbage { client: u8, bytes: Vec<u8> },
    /// Lets the broker run until it is idle.
    Settle,
    /// Moves the clock, as a silent client lets it pass.
    Advance { seconds: u8 },
}

#[derive(Debug, Arbitrary)]
enum Delivery {
    Whole,
    /// The first `n` bytes now, the rest at the client's next write.
    Split(u8),
    /// Each `(index, xor)` flips bits of one byte before sending.
    Mutated(Vec<(u16, u8)>),
    /// The remaining length replaced by another encoding of a value.
    Length(LengthTweak),
}

#[derive(Debug, Arbitrary)]
enum LengthTweak {
    /// One more byte than minimal (0x80-continued).
    NonMinimal,
    /// Another value, encoded minimally.
    Value(u32),
    /// The largest four-byte value.
    Max,
    /// Five bytes: never valid.
    FiveBytes,
}

#[derive(Debug, Arbitrary)]
enum PacketOp {
    Connect(ConnectOp),
    Subscribe { packet_id: SmallId, filters: Vec<(Filter, SubOptions)>, subscription_identifier: Option<u8> },
    Unsubscribe { packet_id: SmallId, filters: Vec<Filter> },
    Publish(PublishOp),
    Ack { kind: AckKind, id: AckId, reason: u8 },
    PingReq,
    Disconnect { reason: DisconnectReason, session_expiry_interval: Option<u8> },
    Auth { reason: u8, method: bool },
}

#[derive(Debug, Arbitrary)]
struct ConnectOp {
    /// 0..=2 name `c0`..`c2`, 3 is empty (the broker assigns one).
    client_id: u8,
    version: VersionOp,
    clean_start: bool,
    keep_alive: u8,
    session_expiry_interval: Option<u8>,
    will: Option<WillOp>,
    receive_maximum: Option<u8>,
    /// In units of 16 bytes, so some messages do not fit.
    maximum_packet_size: Option<u8>,
    topic_alias_maximum: Option<u8>,
    /// An enhanced authentication method the broker does not know.
    authentication_method: bool,
    username: bool,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum VersionOp {
    V3_1,
    V3_1_1,
    V5,
}

#[derive(Debug, Arbitrary)]
struct WillOp {
    topic: Topic,
    qos: u8,
    retain: bool,
    will_delay_interval: Option<u8>,
    message_expiry_interval: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct PublishOp {
    topic: Topic,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: SmallId,
    payload_len: u8,
    topic_alias: Option<u8>,
    /// With a topic alias: send the topic empty, as a later use of the alias.
    alias_only: bool,
    message_expiry_interval: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct SubOptions {
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
}

/// Packet ids from a tiny set, so that ids collide and get reused.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct SmallId(u8);

impl SmallId {
    fn get(self) -> PacketId {
        PacketId::new(u16::from(self.0 % 4) + 1).unwrap_or(PacketId::MIN)
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
#[expect(clippy::enum_variant_names, reason = "the spec's packet names")]
enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

#[derive(Debug, Arbitrary)]
enum AckId {
    /// An id the broker sent this stream, counting back from the latest: a
    /// plausible acknowledgement.
    Received(u8),
    /// Any id: mostly one nobody is waiting for.
    Any(u16),
    Small(SmallId),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum DisconnectReason {
    Normal,
    /// 0x04: the will is published anyway.
    WithWill,
    Other(u8),
}

#[derive(Debug, Arbitrary)]
enum Topic {
    Levels(Vec<NameLevel>),
    Deep(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum NameLevel {
    A,
    B,
    Empty,
    Dollar,
}

#[derive(Debug, Arbitrary)]
enum Filter {
    Levels(Vec<FilterLevel>),
    Shared {
        group: bool,
        levels: Vec<FilterLevel>,
    },
    Deep {
        levels: u16,
        wildcards: bool,
    },
    /// A valid filter with one byte replaced, for the validation paths.
    Odd(u8, Vec<FilterLevel>),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum FilterLevel {
    A,
    B,
    Empty,
    Plus,
    Hash,
    Dollar,
}

impl Topic {
    fn render(&self) -> String {
        match self {
            Topic::Levels(levels) if levels.is_empty() => "a".to_owned(),
            Topic::Levels(levels) => levels
                .iter()
                .take(8)
                .enumerate()
                .map(|(i, l)| match l {
                    NameLevel::A => "a",
                    NameLevel::B => "b",
                    NameLevel::Empty => "",
                    NameLevel::Dollar if i == 0 => "$SYS",
                    NameLevel::Dollar => "$",
                })
                .collect::<Vec<_>>()
                .join("/"),
            Topic::Deep(n) => deep(usize::from(*n), "a", "a"),
        }
    }
}

fn deep(n: usize, level: &str, last: &str) -> String {
    // Log-uniform from 1 to MAX_GENERATED_LEVELS: as many deep topics near
    // 100 levels as near 10,000, so the deepest, which cost a thousand
    // times more to run, come often enough to matter but slow few inputs.
    let exp = n % 15;
    let n = ((1 << exp) + (n >> 4) % (1 << exp)).min(MAX_GENERATED_LEVELS);
    let mut s = String::with_capacity(n * (level.len() + 1));
    for _ in 1..n {
        s.push_str(level);
        s.push('/');
    }
    s.push_str(last);
    s
}

fn render_levels(levels: &[FilterLevel]) -> String {
    if levels.is_empty() {
        return "#".to_owned();
    }
    levels
        .iter()
        .take(8)
        .map(|l| match l {
            FilterLevel::A => "a",
            FilterLevel::B => "b",
            FilterLevel::Empty => "",
            FilterLevel::Plus => "+",
            FilterLevel::Hash => "#",
            FilterLevel::Dollar => "$SYS",
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Filter {
    fn render(&self) -> String {
        match self {
            Filter::Levels(levels) => render_levels(levels),
            Filter::Shared { group, levels } => {
                format!("$share/{}/{}", if *group { "g" } else { "h" }, render_levels(levels))
            }
            Filter::Deep { levels, wildcards: true } => deep(usize::from(*levels), "+", "#"),
            Filter::Deep { levels, wildcards: false } => deep(usize::from(*levels), "a", "a"),
            Filter::Odd(byte, levels) => {
                let mut s = render_levels(levels);
                let c = char::from(*byte % 0x80);
                if c != '\0' {
                    s.insert(usize::from(*byte) % (s.len() + 1), c);
                }
                s.retain(|c| c != '\0');
                s
            }
        }
    }
}

/// The libFuzzer entry point: `data` read as a [`Scenario`] and run.
pub fn broker(data: &[u8]) {
    broker_with(data, &mut Features::default());
}

/// [`broker`], noting what the input reached in `features`.
pub fn broker_with(data: &[u8], features: &mut Features) {
    let Ok(scenario) = Scenario::arbitrary_take_rest(Unstructured::new(data)) else { return };
    run(&scenario, features);
}

/// Runs `scenario`; panics when an invariant breaks.
pub fn run(scenario: &Scenario, features: &mut Features) {
    panics::install_hook();
    let panics_before = panics::count();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
    let Ok(runtime) = runtime else { panic!("no tokio runtime") };
    let observed = runtime.block_on(drive(scenario));
    // Dropping the runtime drops every task still alive, and with the last
    // of them the broker's state: a recursive drop would overflow here.
    drop(runtime);
    let panicked = panics::count() - panics_before;
    assert!(panicked == 0, "{panicked} panic(s) in the broker's tasks during this input");
    for tag in observed.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
        features.add(tag);
    }
}

/// What every stream's reader reports, shared with the driver.
#[derive(Default)]
struct World {
    /// Filters subscribed under each client id (a stream's own key when the
    /// broker assigned the id): a superset of what its sessions hold.
    filters: HashMap<String, Vec<String>>,
    /// False once any byte not from a structured operation was sent.
    clean: bool,
    /// Coverage tags: what the broker answered.
    tags: Vec<(u8, u8, u8)>,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the CONNECT that opened a stream declared: how its answers are
/// decoded and what they may hold.
#[derive(Debug, Clone, Copy)]
struct Expect {
    version: ProtocolVersion,
    /// The client's Maximum Packet Size [MQTT-3.1.2-24].
    max_packet_size: u32,
    /// The client's Topic Alias Maximum [MQTT-3.3.2-9].
    topic_alias_maximum: u16,
}

/// One client's end of its current stream.
struct Stream {
    writer: WriteHalf<DuplexStream>,
    reader: JoinHandle<()>,
    /// From the CONNECT that opened the stream; `None` when it opened with
    /// something else (then answers are not checked).
    expect: Option<Expect>,
    /// Key of `World::filters` for this stream.
    key: String,
    /// Ids of QoS 1/2 PUBLISH and PUBREC the broker sent, latest last.
    received: Arc<Mutex<Vec<u16>>>,
    /// Bytes held back by a split delivery.
    pending: Vec<u8>,
    /// Set once bytes not from a structured operation went out on this
    /// stream: what the broker answers them is not checked.
    tainted: Arc<AtomicBool>,
}

#[derive(Default)]
struct Client {
    stream: Option<Stream>,
}

struct Driver {
    broker: Broker,
    clients: Vec<Client>,
    world: Shared,
    next_stream: u32,
}

async fn drive(scenario: &Scenario) -> Arc<Mutex<Vec<(u8, u8, u8)>>> {
    let knobs = &scenario.knobs;
    let config = BrokerConfig {
        max_inflight: u16::from(knobs.max_inflight % 4) + 1,
        max_queued_messages: usize::from(knobs.max_queued_messages % 8) + 1,
        max_queued_in_memory: usize::from(knobs.max_queued_messages % 8) + 1,
        topic_alias_maximum: u16::from(knobs.topic_alias_maximum % 4),
        max_packet_size: 65_536 + 256 * u32::from(knobs.max_packet_size),
        connect_timeout: Duration::from_secs(5),
        sys_interval: None,
        // Half the inputs meet a depth limit, half reach the topic index
        // with the generator's deepest filters.
        max_topic_levels: if knobs.max_packet_size.is_multiple_of(2) { 1_000_000 } else { 16 },
        ..BrokerConfig::default()
    };
    let mut driver = Driver {
        broker: Broker::new(config),
        clients: (0..CLIENTS).map(|_| Client::default()).collect(),
        world: Arc::new(Mutex::new(World { clean: true, ..World::default() })),
        next_stream: 0,
    };
    for op in &scenario.ops {
        driver.apply(op).await;
    }
    for client in 0..CLIENTS {
        driver.flush(client).await;
    }
    settle().await;
    probe(&driver.broker).await;
    driver.broker.shutdown(Duration::from_secs(5)).await;
    let tags = std::mem::take(&mut lock(&driver.world).tags);
    for client in &mut driver.clients {
        if let Some(stream) = client.stream.take() {
            stream.reader.abort();
        }
    }
    Arc::new(Mutex::new(tags))
}

/// Runs every ready task until the runtime would park: with the clock
/// paused, the sleep ends only once nothing else can run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl Driver {
    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Send { client, packet, odds, delivery } => {
                let client = usize::from(*client) % CLIENTS;
                let delivery = if odds % 8 == 0 { delivery } else { &Delivery::Whole };
                self.send(client, packet, delivery).await;
            }
            Op::Flush { client } => self.flush(usize::from(*client) % CLIENTS).await,
            Op::Close { client } => {
                if let Some(stream) = self.clients[usize::from(*client) % CLIENTS].stream.take() {
                    // Both halves gone: the broker reads end of stream and
                    // its writes fail, as with a reset socket.
                    stream.reader.abort();
                    drop(stream.writer);
                }
            }
            Op::HalfClose { client } => {
                if let Some(stream) = &mut self.clients[usize::from(*client) % CLIENTS].stream {
                    let _ = bounded(stream.writer.shutdown()).await;
                }
            }
            Op::Garbage { client, bytes } => {
                let client = usize::from(*client) % CLIENTS;
                lock(&self.world).clean = false;
                let stream = self.stream(client, None);
                stream.tainted.store(true, Ordering::Relaxed);
                stream.pending.extend_from_slice(bytes);
                self.flush(client).await;
            }
            Op::Settle => settle().await,
            Op::Advance { seconds } => tokio::time::sleep(Duration::from_secs(u64::from(*seconds))).await,
        }
    }

    /// The client's stream, opened now if it has none or the broker closed
    /// it; `connect` is the CONNECT about to be sent, if that is next.
    fn stream(&mut self, client: usize, connect: Option<&ConnectOp>) -> &mut Stream {
        let stream = &mut self.clients[client].stream;
        if stream.as_ref().is_some_and(|s| s.reader.is_finished()) {
            *stream = None;
        }
        if stream.is_none() {
            let expect = connect.map(ConnectOp::expect);
            self.next_stream += 1;
            let (ours, theirs) = tokio::io::duplex(16 * 1024);
            let peer = SocketAddr::from(([127, 0, 0, 1], 10_000 + self.next_stream as u16));
            self.broker.serve_connection(theirs, peer);
            let (read, writer) = tokio::io::split(ours);
            let received = Arc::new(Mutex::new(Vec::new()));
            let tainted = Arc::new(AtomicBool::new(false));
            let key = connect.and_then(ConnectOp::key).unwrap_or_else(|| format!("#stream-{}", self.next_stream));
            let reader = tokio::spawn(read_answers(
                read,
                expect,
                key.clone(),
                self.world.clone(),
                received.clone(),
                tainted.clone(),
                self.next_stream,
            ));
            *stream = Some(Stream { writer, reader, expect, key, received, pending: Vec::new(), tainted });
        }
        let Some(stream) = stream.as_mut() else { unreachable!("opened above") };
        stream
    }

    async fn send(&mut self, client: usize, op: &PacketOp, delivery: &Delivery) {
        let connect = match op {
            PacketOp::Connect(c) => Some(c),
            _ => None,
        };
        let opening = self.clients[client].stream.as_ref().is_none_or(|s| s.reader.is_finished());
        if opening && connect.is_none() {
            // A stream opens with a CONNECT unless the input says otherwise
            // (garbage, a CONNECT of its own): random inputs then reach
            // past the handshake.
            let connect = ConnectOp::default_for(client);
            Box::pin(self.send(client, &PacketOp::Connect(connect), &Delivery::Whole)).await;
        }
        let stream = self.stream(client, connect);
        // A packet after a CONNECT goes in the version it set up; a CONNECT
        // always in its own.
        let version = connect.map_or(stream.expect.map_or(ProtocolVersion::V5, |e| e.version), |c| c.version.get());
        let key = stream.key.clone();
        let received = stream.received.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let packet = op.build(version, &received);
        if let Packet::Subscribe(s) = &packet {
            let mut world = lock(&self.world);
            let filters = world.filters.entry(key).or_default();
            filters.extend(s.subscriptions.iter().map(|s| s.topic_filter.clone()));
        }
        let mut bytes = BytesMut::new();
        if encode(&packet, version, &mut bytes).is_err() {
            return;
        }
        let mut bytes = bytes.to_vec();
        let world = self.world.clone();
        let stream = self.stream(client, None);
        match delivery {
            Delivery::Whole => stream.pending.extend_from_slice(&bytes),
            Delivery::Split(n) => {
                let n = usize::from(*n).min(bytes.len());
                // The tail waits for the client's next write: other clients'
                // bytes go in between.
                let tail = bytes.split_off(n);
                stream.pending.extend_from_slice(&bytes);
                let _ = bounded(write_pending(stream)).await;
                stream.pending = tail;
                return;
            }
            Delivery::Mutated(edits) => {
                for (at, xor) in edits {
                    let len = bytes.len();
                    if let Some(b) = bytes.get_mut(usize::from(*at) % len.max(1)) {
                        *b ^= xor;
                    }
                }
                stream.tainted.store(true, Ordering::Relaxed);
                stream.pending.extend_from_slice(&bytes);
                lock(&world).clean = false;
            }
            Delivery::Length(tweak) => {
                stream.tainted.store(true, Ordering::Relaxed);
                stream.pending.extend_from_slice(&tweak.apply(&bytes));
                lock(&world).clean = false;
            }
        }
        let _ = bounded(write_pending(stream)).await;
    }

    async fn flush(&mut self, client: usize) {
        if let Some(stream) = &mut self.clients[client].stream {
            let _ = bounded(write_pending(stream)).await;
        }
    }
}

async fn write_pending(stream: &mut Stream) -> std::io::Result<()> {
    let pending = std::mem::take(&mut stream.pending);
    stream.writer.write_all(&pending).await
}

/// A write or shutdown the broker may never make room for (it stopped
/// reading): given up after a while of virtual time.
async fn bounded<T>(f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(30), f).await.ok()
}

impl LengthTweak {
    fn apply(&self, packet: &[u8]) -> Vec<u8> {
        // Skip the fixed header's first byte and its remaining length.
        let Some(first) = packet.first() else { return Vec::new() };
        let mut header = 1;
        while packet.get(header).is_some_and(|b| b & 0x80 != 0) {
            header += 1;
        }
        let body = packet.get(header + 1..).unwrap_or_default();
        let mut out = vec![*first];
        match self {
            LengthTweak::NonMinimal => {
                let mut v = body.len() as u32;
                loop {
                    out.push((v & 0x7F) as u8 | 0x80);
                    v >>= 7;
                    if v == 0 {
                        break;
                    }
                }
                out.push(0);
            }
            LengthTweak::Value(v) => {
                let mut v = v % 268_435_456;
                loop {
                    let byte = (v & 0x7F) as u8;
                    v >>= 7;
                    out.push(if v == 0 { byte } else { byte | 0x80 });
                    if v == 0 {
                        break;
                    }
                }
            }
            LengthTweak::Max => out.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F]),
            LengthTweak::FiveBytes => out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x01]),
        }
        out.extend_from_slice(body);
        out
    }
}

impl VersionOp {
    fn get(self) -> ProtocolVersion {
        match self {
            VersionOp::V3_1 => ProtocolVersion::V3_1,
            VersionOp::V3_1_1 => ProtocolVersion::V3_1_1,
            VersionOp::V5 => ProtocolVersion::V5,
        }
    }
}

impl ConnectOp {
    fn client_id(&self) -> &'static str {
        ["c0", "c1", "c2", ""][usize::from(self.client_id % 4)]
    }

    /// The CONNECT a stream opens with when the input did not say: v5 for
    /// even clients, 3.1.1 for odd ones; persistent for clients 2 and 3.
    fn default_for(client: usize) -> ConnectOp {
        ConnectOp {
            client_id: client as u8,
            version: if client.is_multiple_of(2) { VersionOp::V5 } else { VersionOp::V3_1_1 },
            clean_start: client < 2,
            keep_alive: 0,
            session_expiry_interval: (client >= 2).then_some(60),
            will: None,
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: Some(2),
            authentication_method: false,
            username: false,
        }
    }

    fn expect(&self) -> Expect {
        let packet = self.build_connect();
        Expect {
            version: packet.protocol_version,
            max_packet_size: packet.properties.maximum_packet_size.unwrap_or(MAX_ANSWER),
            topic_alias_maximum: packet.properties.topic_alias_maximum.unwrap_or(0),
        }
    }

    fn build_connect(&self) -> Connect {
        let v5 = self.version.get().is_v5();
        let v5_only = |v: Option<u8>| if v5 { v } else { None };
        Connect {
            protocol_version: self.version.get(),
            clean_start: self.clean_start,
            keep_alive: u16::from(self.keep_alive),
            properties: ConnectProperties {
                session_expiry_interval: v5_only(self.session_expiry_interval).map(u32::from),
                receive_maximum: v5_only(self.receive_maximum).map(|r| u16::from(r % 8) + 1),
                maximum_packet_size: v5_only(self.maximum_packet_size).map(|m| 16 * u32::from(m) + 16),
                topic_alias_maximum: v5_only(self.topic_alias_maximum).map(|t| u16::from(t % 4)),
                authentication_method: (v5 && self.authentication_method).then(|| "SCRAM-FUZZ".to_owned()),
                ..ConnectProperties::default()
            },
            client_id: self.client_id().to_owned(),
            will: self.will.as_ref().map(|w| Will {
                topic: w.topic.render().into(),
                payload: Bytes::from_static(b"will"),
                qos: qos(w.qos),
                retain: w.retain,
                properties: WillProperties {
                    will_delay_interval: v5_only(w.will_delay_interval).map(u32::from),
                    message_expiry_interval: v5_only(w.message_expiry_interval).map(u32::from),
                    ..WillProperties::default()
                },
            }),
            username: self.username.then(|| "user".to_owned()),
            password: None,
        }
    }

    /// The `World::filters` key: the client id, unless the broker assigns one.
    fn key(&self) -> Option<String> {
        let id = self.client_id();
        (!id.is_empty()).then(|| id.to_owned())
    }
}

fn qos(byte: u8) -> QoS {
    QoS::from_u8(byte % 3).unwrap_or_default()
}

fn code(byte: u8, codes: &[u8]) -> ReasonCode {
    let pick = codes.get(usize::from(byte) % codes.len().max(1)).copied().unwrap_or(0);
    ReasonCode::from_u8(pick).unwrap_or_default()
}

impl PacketOp {
    fn build(&self, version: ProtocolVersion, received: &[u16]) -> Packet {
        let v5 = version.is_v5();
        match self {
            PacketOp::Connect(c) => Packet::Connect(Box::new(c.build_connect())),
            PacketOp::Subscribe { packet_id, filters, subscription_identifier } => {
                let mut subscriptions: Vec<Subscription> = filters
                    .iter()
                    .take(8)
                    .map(|(f, o)| Subscription {
                        topic_filter: f.render(),
                        options: SubscriptionOptions {
                            qos: qos(o.qos),
                            no_local: v5 && o.no_local,
                            retain_as_published: v5 && o.retain_as_published,
                            retain_handling: match o.retain_handling % 3 {
                                _ if !v5 => RetainHandling::SendAtSubscribe,
                                0 => RetainHandling::SendAtSubscribe,
                                1 => RetainHandling::SendIfNew,
                                _ => RetainHandling::DoNotSend,
                            },
                        },
                    })
                    .collect();
                if subscriptions.is_empty() {
                    subscriptions.push(Subscription { topic_filter: "#".to_owned(), options: Default::default() });
                }
                Packet::Subscribe(Subscribe {
                    packet_id: packet_id.get(),
                    properties: SubscribeProperties {
                        subscription_identifier: subscription_identifier.filter(|_| v5).map(|s| u32::from(s) + 1),
                        user_properties: Vec::new(),
                    },
                    subscriptions,
                })
            }
            PacketOp::Unsubscribe { packet_id, filters } => {
                let mut topic_filters: Vec<String> = filters.iter().take(8).map(Filter::render).collect();
                if topic_filters.is_empty() {
                    topic_filters.push("#".to_owned());
                }
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: packet_id.get(),
                    user_properties: Vec::new(),
                    topic_filters,
                })
            }
            PacketOp::Publish(p) => {
                let qos = qos(p.qos);
                let topic_alias = p.topic_alias.filter(|_| v5).map(|a| u16::from(a % 4) + 1);
                let topic = if topic_alias.is_some() && p.alias_only { String::new() } else { p.topic.render() };
                Packet::Publish(Publish {
                    dup: p.dup && qos != QoS::AtMostOnce,
                    qos,
                    retain: p.retain,
                    topic: topic.into(),
                    packet_id: (qos != QoS::AtMostOnce).then(|| p.packet_id.get()),
                    properties: PublishProperties {
                        topic_alias,
                        message_expiry_interval: p.message_expiry_interval.filter(|_| v5).map(u32::from),
                        ..PublishProperties::default()
                    },
                    payload: Bytes::from(vec![b'x'; usize::from(p.payload_len)]),
                })
            }
            PacketOp::Ack { kind, id, reason } => {
                let id = match id {
                    AckId::Received(back) => received
                        .len()
                        .checked_sub(usize::from(*back) % received.len().max(1) + 1)
                        .and_then(|i| received.get(i).copied())
                        .unwrap_or(1),
                    AckId::Any(id) => *id,
                    AckId::Small(id) => id.get().get(),
                };
                let packet_id = PacketId::new(id).unwrap_or(PacketId::MIN);
                let codes: &[u8] = match kind {
                    AckKind::PubAck | AckKind::PubRec => &[0x00, 0x00, 0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97],
                    _ => &[0x00, 0x00, 0x92],
                };
                let ack = PubAck {
                    packet_id,
                    reason_code: if v5 { code(*reason, codes) } else { ReasonCode::Success },
                    properties: AckProperties::default(),
                };
                match kind {
                    AckKind::PubAck => Packet::PubAck(ack),
                    AckKind::PubRec => Packet::PubRec(ack),
                    AckKind::PubRel => Packet::PubRel(ack),
                    AckKind::PubComp => Packet::PubComp(ack),
                }
            }
            PacketOp::PingReq => Packet::PingReq,
            PacketOp::Disconnect { reason, session_expiry_interval } => Packet::Disconnect(Disconnect {
                reason_code: match reason {
                    DisconnectReason::Normal => ReasonCode::Success,
                    DisconnectReason::WithWill => ReasonCode::DisconnectWithWillMessage,
                    DisconnectReason::Other(b) => code(*b, &[0x80, 0x81, 0x82, 0x83, 0x87, 0x8B, 0x93, 0x95, 0x98]),
                },
                properties: DisconnectProperties {
                    session_expiry_interval: session_expiry_interval.filter(|_| v5).map(u32::from),
                    ..DisconnectProperties::default()
                },
            }),
            PacketOp::Auth { reason, method } => Packet::Auth(Auth {
                reason_code: code(*reason, &[0x00, 0x18, 0x19]),
                properties: AuthProperties {
                    authentication_method: method.then(|| "SCRAM-FUZZ".to_owned()),
                    ..AuthProperties::default()
                },
            }),
        }
    }
}

/// Reads everything the broker sends on one stream until it closes, so the
/// broker never blocks on a full stream, and checks it.
async fn read_answers(
    mut read: ReadHalf<DuplexStream>,
    expect: Option<Expect>,
    key: String,
    world: Shared,
    received: Arc<Mutex<Vec<u16>>>,
    tainted: Arc<AtomicBool>,
    stream_no: u32,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut check = Checker { expect, key, world, received, stream_no, aliases: HashMap::new() };
    loop {
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(expect) = expect.filter(|_| !tainted.load(Ordering::Relaxed)) else {
            buf.clear();
            continue;
        };
        loop {
            let before = buf.len();
            let packet = match decode(&mut buf, expect.version, MAX_ANSWER) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => panic!("stream {stream_no}: the broker sent bytes that do not decode for {expect:?}: {e}"),
            };
            let size = before - buf.len();
            assert!(
                size <= expect.max_packet_size as usize,
                "stream {stream_no}: the broker sent a {size}-byte {} to a client whose maximum packet size is {} [MQTT-3.1.2-24]: {packet:?}",
                packet.name(),
                expect.max_packet_size
            );
            check.answer(&packet);
        }
    }
}

/// Larger than any packet the broker should send to a client that set no
/// maximum packet size.
const MAX_ANSWER: u32 = 1 << 24;

/// What one stream's answers are checked against.
struct Checker {
    expect: Option<Expect>,
    key: String,
    world: Shared,
    received: Arc<Mutex<Vec<u16>>>,
    stream_no: u32,
    /// Topic aliases the broker set on this stream.
    aliases: HashMap<u16, String>,
}

impl Checker {
    fn answer(&mut self, packet: &Packet) {
        let stream_no = self.stream_no;
        let level = self.expect.map_or(0, |e| e.version.level());
        let world_handle = self.world.clone();
        let mut world = lock(&world_handle);
        let received = self.received.clone();
        let note_id = |id: PacketId| received.lock().unwrap_or_else(PoisonError::into_inner).push(id.get());
        match packet {
            Packet::ConnAck(ack) => world.tags.push((1, level, ack.reason_code.as_u8())),
            Packet::Publish(p) => {
                world.tags.push((2, level, p.qos as u8));
                if let Some(id) = p.packet_id {
                    note_id(id);
                }
                let topic = self.resolve_alias(p);
                if world.clean {
                    let filters = world.filters.get(&self.key).map(Vec::as_slice).unwrap_or_default();
                    assert!(
                        filters.iter().any(|f| filter_matches(f, &topic)),
                        "stream {stream_no} ({}) received a PUBLISH on {topic:?}, which none of its filters {filters:?} matches",
                        self.key
                    );
                }
            }
            Packet::PubRec(ack) => {
                world.tags.push((3, level, ack.reason_code.as_u8()));
                note_id(ack.packet_id);
            }
            Packet::SubAck(ack) => {
                for code in &ack.reason_codes {
                    world.tags.push((4, level, code.as_u8()));
                }
            }
            Packet::Disconnect(d) => world.tags.push((5, level, d.reason_code.as_u8())),
            Packet::PubAck(a) => world.tags.push((6, level, a.reason_code.as_u8())),
            Packet::PubRel(a) => world.tags.push((7, level, a.reason_code.as_u8())),
            Packet::PubComp(a) => world.tags.push((8, level, a.reason_code.as_u8())),
            Packet::UnsubAck(a) => {
                for code in &a.reason_codes {
                    world.tags.push((9, level, code.as_u8()));
                }
            }
            other => world.tags.push((10, level, other.name().len() as u8)),
        }
    }

    /// The topic of a PUBLISH from the broker, through this stream's aliases.
    fn resolve_alias(&mut self, p: &Publish) -> String {
        let stream_no = self.stream_no;
        let maximum = self.expect.map_or(0, |e| e.topic_alias_maximum);
        let Some(alias) = p.properties.topic_alias else { return p.topic.to_string() };
        assert!(
            (1..=maximum).contains(&alias),
            "stream {stream_no}: the broker used topic alias {alias}; the client allows up to {maximum}"
        );
        if p.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(topic) => topic.clone(),
                None => panic!("stream {stream_no}: PUBLISH with topic alias {alias}, never set"),
            }
        } else {
            self.aliases.insert(alias, p.topic.to_string());
            p.topic.to_string()
        }
    }
}

/// Whether a subscription to `filter` (shared or not) covers `topic`.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let plain = match SharedFilter::parse(filter) {
        Ok(Some(shared)) => shared.filter,
        Ok(None) => filter,
        Err(_) => return false,
    };
    topic::validate_topic_filter(plain).is_ok() && topic::matches(plain, topic)
}

/// A fresh client must still be served: CONNECT → CONNACK, PINGREQ → PINGRESP.
async fn probe(broker: &Broker) {
    let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
    broker.serve_connection(theirs, SocketAddr::from(([127, 0, 0, 1], 9_999)));
    let connect = Connect {
        protocol_version: ProtocolVersion::V5,
        clean_start: true,
        client_id: "probe".to_owned(),
        ..Connect::default()
    };
    let mut out = BytesMut::new();
    let encoded = encode(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5, &mut out)
        .and_then(|()| encode(&Packet::PingReq, ProtocolVersion::V5, &mut out));
    assert!(encoded.is_ok(), "the probe's packets encode");
    let exchange = async {
        ours.write_all(&out).await.map_err(|e| format!("writing CONNECT: {e}"))?;
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        loop {
            while let Some(packet) =
                decode(&mut buf, ProtocolVersion::V5, MAX_ANSWER).map_err(|e| format!("undecodable answer: {e}"))?
            {
                match (&packet, seen.len()) {
                    (Packet::ConnAck(ack), 0) if ack.reason_code == ReasonCode::Success => seen.push(packet),
                    (Packet::PingResp, 1) => return Ok(()),
                    _ => return Err(format!("unexpected {packet:?} after {seen:?}")),
                }
            }
            if ours.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!("closed after {seen:?}"));
            }
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("a fresh client is no longer served: {e}"),
        Err(_) => panic!("a fresh client got no CONNACK and PINGRESP within {PROBE_TIMEOUT:?}"),
    }
}
