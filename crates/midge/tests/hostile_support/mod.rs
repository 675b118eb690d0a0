//! Shared by `hostile.rs`: the broker under attack with a `#` watcher beside it,
//! the check run after every attack, MQTT 5 byte builders (the ones in
//! `midge_test_support::build` are MQTT 3.1.1), memory figures from `/proc`, and a
//! seeded PRNG.
//!
//! Every attack publishes the payload [`REFUSED`]; the [`Watcher`], a client
//! subscribed to `#` before the attack, records every message it receives, and
//! [`Target::check`] fails if one of them carried that payload.

// Not every helper is used by every test build configuration.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use midge_test_support::build::{self, Connect};
use midge_test_support::{Broker, Process, RawClient, RawPacket, RecvError, packet_type};

/// The payload of every message an attack sends that the broker must refuse: no
/// subscriber may ever receive it.
pub(crate) const REFUSED: &[u8] = b"refused-by-midge";

/// How long a check waits for something that must happen. Generous: the machine
/// may be compiling on both cores.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The most any test lets the broker's RSS grow, in MB: 100,000
/// subscriptions of 16 levels take about 100 MB in a debug build.
pub(crate) const MAX_RSS_GROWTH_MB: f64 = 250.0;

/// A fresh client id on every call, for the many clients a test opens.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The broker under attack, and a `#` subscriber connected before the attack.
///
/// Dropping it kills the broker; if the test is failing, the broker's log is
/// printed first.
pub(crate) struct Target {
    pub(crate) broker: Broker,
    pub(crate) watcher: Watcher,
    /// RSS (kB) once the broker and the watcher were up.
    pub(crate) rss_at_start: u64,
}

impl Target {
    /// Starts `midge serve --in-memory ARGS…` (without `--in-memory` if ARGS
    /// have `--data-dir`) with a watcher subscribed to `#`.
    pub(crate) fn start(args: &[&str]) -> Target {
        // In memory, unless the test gives the store a directory.
        let mut full = if args.contains(&"--data-dir") { vec![] } else { vec!["--in-memory"] };
        full.extend_from_slice(args);
        let broker = Broker::start(env!("CARGO_BIN_EXE_midge"), &full);
        let watcher = Watcher::start(broker.addr());
        let rss_at_start = memory(broker.pid()).rss_kb;
        Target { broker, watcher, rss_at_start }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.broker.addr()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// A connected MQTT 3.1.1 client with a fresh client id.
    pub(crate) fn client(&self) -> RawClient {
        RawClient::connected(self.addr(), &unique("attacker"))
    }

    /// A connected MQTT 5 client with a fresh client id.
    pub(crate) fn client_v5(&self) -> RawClient {
        connected_v5(self.addr(), &V5Connect::new(unique("attacker5")))
    }

    /// The checks after an attack; returns the fresh client's round-trip time.
    ///
    /// 1. The broker process is still running.
    /// 2. A fresh client connects, subscribes and receives its own QoS 1 publish.
    /// 3. The watcher, subscribed to `#` since before the attack, receives a
    ///    sentinel published after it — so everything routed before has reached
    ///    it — and none of what it received carried [`REFUSED`].
    /// 4. The broker's RSS has grown by less than [`MAX_RSS_GROWTH_MB`] since
    ///    it started (tests that load it bound it more tightly themselves).
    pub(crate) fn check(&self) -> Duration {
        self.assert_alive();
        let grown = self.rss_growth_mb();
        assert!(grown < MAX_RSS_GROWTH_MB, "the broker's RSS grew by {grown:.1} MB; {}", self.state());
        let round_trip = round_trip(self.addr()).unwrap_or_else(|why| {
            panic!("after the attack, a fresh client gets no round trip: {why}; {}", self.state())
        });
        self.watcher.assert_nothing_refused(self.addr());
        self.assert_alive();
        round_trip
    }

    /// As [`Target::check`], with Mosquitto's command-line clients (an
    /// independent implementation) as the fresh client.
    pub(crate) fn check_with_mosquitto(&self) {
        self.assert_alive();
        let port = self.broker.port().to_string();
        let topic = unique("health/mosquitto");
        let mut sub = Process::spawn(
            "mosquitto_sub",
            command(
                "stdbuf",
                &["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", &port, "-t", &topic, "-q", "1", "-C", "1"],
            ),
        );
        sub.wait_for_stdout_line("received SUBACK", WAIT);
        let mut publisher = Process::spawn(
            "mosquitto_pub",
            command("mosquitto_pub", &["-h", "127.0.0.1", "-p", &port, "-t", &topic, "-q", "1", "-m", "still here"]),
        );
        publisher.wait_success(WAIT);
        sub.wait_success(WAIT);
        assert!(sub.stdout_lines().iter().any(|l| l == "still here"), "mosquitto_sub: {}", sub.transcript());
        self.watcher.assert_nothing_refused(self.addr());
        self.assert_alive();
    }

    /// Panics, with the broker's log, unless the broker process is running.
    pub(crate) fn assert_alive(&self) {
        let pid = self.pid();
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the field after the parenthesised command name.
        let running = state.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']));
        assert!(running, "the broker (pid {pid}) is gone; its log:\n{}", tail(&self.broker.log()));
    }

    /// Memory now, and what the broker logged last: for failure messages.
    pub(crate) fn state(&self) -> String {
        format!("broker memory {:?}; log tail:\n{}", memory(self.pid()), tail(&self.broker.log()))
    }

    /// Current RSS growth since start, in MB.
    pub(crate) fn rss_growth_mb(&self) -> f64 {
        (memory(self.pid()).rss_kb.saturating_sub(self.rss_at_start)) as f64 / 1024.0
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.watcher.stop();
        if thread::panicking() {
            eprintln!("--- midge log (tail) ---\n{}--- end of midge log ---", tail(&self.broker.log()));
        }
    }
}

/// The last 60 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(60);
    lines[from..].iter().map(|l| format!("{l}\n")).collect()
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// A fresh MQTT 3.1.1 client subscribes to a topic of its own and receives its own
/// QoS 1 publish; returns the time from PUBLISH to delivery.
pub(crate) fn round_trip(addr: SocketAddr) -> Result<Duration, String> {
    let id = unique("health");
    let topic = format!("health/{id}");
    let mut client = RawClient::connect(addr).named(&id);
    client.try_send(&Connect::new(&id).build()).map_err(|e| format!("CONNECT: {e}"))?;
    let connack = client.recv_packet(WAIT).map_err(|e| format!("no CONNACK: {e}"))?;
    let connack = connack.connack()?;
    if connack.return_code != 0 {
        return Err(format!("CONNACK {connack:?}"));
    }
    client.try_send(&build::subscribe(1, &[(&topic, 1)])).map_err(|e| format!("SUBSCRIBE: {e}"))?;
    let suback = client.recv_packet(WAIT).map_err(|e| format!("no SUBACK: {e}"))?.suback()?;
    if suback.return_codes != [1] {
        return Err(format!("SUBACK {suback:?}"));
    }
    let sent = Instant::now();
    client.try_send(&build::Publish::new(&topic, b"ping").qos(1, 2).build()).map_err(|e| format!("PUBLISH: {e}"))?;
    let deadline = sent + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = client.recv_packet(left).map_err(|e| format!("no PUBLISH back: {e}"))?;
        match packet.packet_type() {
            packet_type::PUBACK => continue,
            packet_type::PUBLISH => {
                let elapsed = sent.elapsed();
                let publish = packet.publish()?;
                if publish.topic != topic || publish.payload != b"ping" {
                    return Err(format!("unexpected {publish:?}"));
                }
                if let Some(id) = publish.packet_id {
                    client.try_send(&build::puback(id)).map_err(|e| format!("PUBACK: {e}"))?;
                }
                client.disconnect();
                return Ok(elapsed);
            }
            _ => return Err(format!("unexpected {packet:?}")),
        }
    }
}

/// What the watcher has seen.
#[derive(Default)]
struct Seen {
    /// Topics (shortened) of messages that carried [`REFUSED`].
    refused: Vec<String>,
    /// Payloads of sentinel messages received.
    sentinels: HashSet<Vec<u8>>,
    /// Messages received.
    total: usize,
    /// Why the watcher's connection ended, if it did.
    ended: Option<String>,
}

/// A MQTT 3.1.1 client subscribed to `#` at QoS 1, reading on a thread of its own
/// so that no flood can fill its queue while a test is busy elsewhere.
pub(crate) struct Watcher {
    seen: Arc<(Mutex<Seen>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn start(addr: SocketAddr) -> Watcher {
        let mut client = RawClient::connected(addr, &unique("watcher"));
        assert_eq!(client.subscribe(1, &[("#", 1)]), [1], "the watcher's SUBSCRIBE to #");
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let seen = Arc::clone(&seen);
            let stop = Arc::clone(&stop);
            thread::spawn(move || watch(client, &seen, &stop))
        };
        Watcher { seen, stop, thread: Some(thread) }
    }

    /// Publishes a sentinel and waits until the watcher has it; then asserts
    /// that nothing it received carried [`REFUSED`].
    pub(crate) fn assert_nothing_refused(&self, addr: SocketAddr) {
        let payload = unique("sentinel").into_bytes();
        let mut publisher = RawClient::connected(addr, &unique("sentinel"));
        publisher.publish_qos1("watch/sentinel", &payload, 1);
        publisher.disconnect();
        let (lock, changed) = &*self.seen;
        let deadline = Instant::now() + WAIT;
        let mut seen = lock.lock().unwrap();
        while !seen.sentinels.contains(&payload) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && seen.ended.is_none(),
                "the # watcher did not receive the sentinel within {WAIT:?} (connection ended: {:?}; {} messages)",
                seen.ended,
                seen.total
            );
            seen = changed.wait_timeout(seen, left).unwrap().0;
        }
        assert!(seen.refused.is_empty(), "the # watcher received refused messages on {:?}", seen.refused);
    }

    /// How many messages the watcher has received so far.
    pub(crate) fn total(&self) -> usize {
        self.seen.0.lock().unwrap().total
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The watcher's thread: reads until told to stop, acknowledges QoS 1.
fn watch(mut client: RawClient, seen: &(Mutex<Seen>, Condvar), stop: &AtomicBool) {
    let (lock, changed) = seen;
    while !stop.load(Ordering::Relaxed) {
        let packet = match client.recv_packet(Duration::from_millis(100)) {
            Ok(packet) => packet,
            Err(RecvError::TimedOut) => continue,
            Err(err) => {
                lock.lock().unwrap().ended = Some(err.to_string());
                changed.notify_all();
                return;
            }
        };
        let publish = match packet.publish() {
            Ok(publish) => publish,
            Err(err) => {
                lock.lock().unwrap().ended = Some(err);
                changed.notify_all();
                return;
            }
        };
        if let Some(id) = publish.packet_id
            && client.try_send(&build::puback(id)).is_err()
        {
            lock.lock().unwrap().ended = Some("cannot send PUBACK".into());
            changed.notify_all();
            return;
        }
        let mut seen = lock.lock().unwrap();
        seen.total += 1;
        if publish.payload == REFUSED {
            seen.refused.push(publish.topic.chars().take(40).collect());
        }
        if publish.topic == "watch/sentinel" {
            seen.sentinels.insert(publish.payload);
        }
        drop(seen);
        changed.notify_all();
    }
}

/// The broker's memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    /// Resident set size now (kB).
    pub(crate) rss_kb: u64,
    /// Peak resident set size (kB).
    pub(crate) hwm_kb: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub(crate) fn memory(pid: u32) -> Memory {
    let status = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0)
    };
    Memory { rss_kb: field("VmRSS:"), hwm_kb: field("VmHWM:") }
}

/// How an attacked connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Closed with nothing sent first.
    Closed,
    /// A packet came, then the close.
    ClosedAfter(RawPacket),
}

/// Reads until the broker closes the connection (within [`WAIT`]); returns the
/// last packet it sent before, if any. Panics if the connection stays open.
pub(crate) fn expect_closed(client: &mut RawClient, what: &str) -> Ending {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_packet(left) {
            Ok(packet) => last = Some(packet),
            Err(err) if err.is_closed() => {
                return last.map_or(Ending::Closed, Ending::ClosedAfter);
            }
            Err(RecvError::TimedOut) => panic!("{what}: the connection is still open after {WAIT:?}"),
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

/// Expects an MQTT 3.1.1 connection closed with nothing sent first.
pub(crate) fn expect_closed_silently(client: &mut RawClient, what: &str) {
    let ending = expect_closed(client, what);
    assert_eq!(ending, Ending::Closed, "{what}: expected the connection closed without a packet");
}

/// Expects an MQTT 5 connection closed, after a DISCONNECT (or CONNACK, when
/// `connack`) with `reason`, or with nothing sent if the broker could not say why.
pub(crate) fn expect_closed_v5(client: &mut RawClient, reason: u8, what: &str) {
    expect_closed_v5_any(client, &[reason], what);
}

/// As [`expect_closed_v5`], where the specification leaves a choice of reasons.
pub(crate) fn expect_closed_v5_any(client: &mut RawClient, reasons: &[u8], what: &str) {
    match expect_closed(client, what) {
        Ending::Closed => {}
        Ending::ClosedAfter(packet) => {
            let got = v5::reason_code(&packet);
            assert!(
                matches!(packet.packet_type(), packet_type::DISCONNECT | packet_type::CONNACK),
                "{what}: closed after {packet:?}"
            );
            assert!(
                reasons.contains(&got),
                "{what}: closed with reason 0x{got:02x}, expected one of {reasons:02x?}: {packet:?}"
            );
        }
    }
}

/// Connects with an MQTT 5 CONNECT and expects CONNACK success.
pub(crate) fn connected_v5(addr: SocketAddr, connect: &V5Connect) -> RawClient {
    let mut client = RawClient::connect(addr).named(&String::from_utf8_lossy(&connect.client_id));
    client.send(&connect.build());
    let connack = client.expect_packet();
    assert_eq!(connack.packet_type(), packet_type::CONNACK, "{connack:?}");
    assert_eq!(v5::reason_code(&connack), 0, "MQTT 5 CONNECT refused: {connack:?}");
    client
}

/// The will of a [`V5Connect`], at QoS 0, not retained.
#[derive(Debug, Clone)]
pub(crate) struct V5Will {
    /// Will properties, encoded, without their length.
    pub(crate) properties: Vec<u8>,
    pub(crate) topic: Vec<u8>,
    pub(crate) payload: Vec<u8>,
}

/// An MQTT 5 CONNECT (section 3.1 of MQTT 5.0), every field as raw bytes so a
/// test can make any of them malformed.
#[derive(Debug, Clone)]
pub(crate) struct V5Connect {
    pub(crate) client_id: Vec<u8>,
    /// The CONNECT properties, already encoded (without their length).
    pub(crate) properties: Vec<u8>,
    pub(crate) will: Option<V5Will>,
    pub(crate) username: Option<Vec<u8>>,
    pub(crate) password: Option<Vec<u8>>,
    pub(crate) clean_start: bool,
}

impl V5Connect {
    pub(crate) fn new(client_id: impl AsRef<[u8]>) -> V5Connect {
        V5Connect {
            client_id: client_id.as_ref().to_vec(),
            properties: Vec::new(),
            will: None,
            username: None,
            password: None,
            clean_start: true,
        }
    }

    pub(crate) fn properties(mut self, properties: Vec<u8>) -> V5Connect {
        self.properties = properties;
        self
    }

    pub(crate) fn will(mut self, properties: Vec<u8>, topic: impl AsRef<[u8]>, payload: impl AsRef<[u8]>) -> V5Connect {
        self.will = Some(V5Will { properties, topic: topic.as_ref().to_vec(), payload: payload.as_ref().to_vec() });
        self
    }

    pub(crate) fn username(mut self, username: impl AsRef<[u8]>) -> V5Connect {
        self.username = Some(username.as_ref().to_vec());
        self
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut body = build::string("MQTT");
        body.push(5);
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if self.will.is_some() {
            flags |= 0x04;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend(60u16.to_be_bytes());
        body.extend(v5::with_length(&self.properties));
        body.extend(build::string(&self.client_id));
        if let Some(will) = &self.will {
            body.extend(v5::with_length(&will.properties));
            body.extend(build::string(&will.topic));
            body.extend(build::string(&will.payload));
        }
        if let Some(username) = &self.username {
            body.extend(build::string(username));
        }
        if let Some(password) = &self.password {
            body.extend(build::string(password));
        }
        build::packet(0x10, &body)
    }
}

/// MQTT 5 packets and properties as bytes, and the reason codes of the
/// broker's answers.
pub(crate) mod v5 {
    use midge_test_support::{RawPacket, build, packet_type};

    /// Property identifiers (MQTT 5.0 section 2.2.2.2).
    pub(crate) const PAYLOAD_FORMAT: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const SUBSCRIPTION_ID: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY: u8 = 0x11;
    pub(crate) const AUTH_METHOD: u8 = 0x15;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;

    /// A Variable Byte Integer (MQTT 5.0 section 1.5.5).
    pub(crate) fn vbi(value: usize) -> Vec<u8> {
        build::remaining_length(value)
    }

    /// Properties prefixed with their length.
    pub(crate) fn with_length(properties: &[u8]) -> Vec<u8> {
        let mut out = vbi(properties.len());
        out.extend_from_slice(properties);
        out
    }

    /// A byte property.
    pub(crate) fn byte(id: u8, value: u8) -> Vec<u8> {
        vec![id, value]
    }

    /// A two-byte integer property.
    pub(crate) fn u16(id: u8, value: u16) -> Vec<u8> {
        let mut out = vec![id];
        out.extend(value.to_be_bytes());
        out
    }

    /// A four-byte integer property.
    pub(crate) fn u32(id: u8, value: u32) -> Vec<u8> {
        let mut out = vec![id];
        out.extend(value.to_be_bytes());
        out
    }

    /// A UTF-8 string (or binary data) property.
    pub(crate) fn string(id: u8, value: impl AsRef<[u8]>) -> Vec<u8> {
        let mut out = vec![id];
        out.extend(build::string(value));
        out
    }

    /// A user property: a UTF-8 string pair.
    pub(crate) fn user(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Vec<u8> {
        let mut out = vec![USER_PROPERTY];
        out.extend(build::string(key));
        out.extend(build::string(value));
        out
    }

    /// A PUBLISH; the packet id is written when `qos > 0`.
    pub(crate) fn publish(
        topic: impl AsRef<[u8]>,
        qos: u8,
        packet_id: u16,
        properties: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = build::string(topic);
        if qos > 0 {
            body.extend(packet_id.to_be_bytes());
        }
        body.extend(with_length(properties));
        body.extend_from_slice(payload);
        build::packet(0x30 | (qos << 1), &body)
    }

    /// A SUBSCRIBE of `(topic_filter, options)` pairs.
    pub(crate) fn subscribe(packet_id: u16, properties: &[u8], filters: &[(&[u8], u8)]) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        body.extend(with_length(properties));
        for (filter, options) in filters {
            body.extend(build::string(filter));
            body.push(*options);
        }
        build::packet(0x82, &body)
    }

    /// An UNSUBSCRIBE.
    pub(crate) fn unsubscribe(packet_id: u16, properties: &[u8], filters: &[&[u8]]) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        body.extend(with_length(properties));
        for filter in filters {
            body.extend(build::string(filter));
        }
        build::packet(0xA2, &body)
    }

    /// A DISCONNECT with a reason code and properties.
    pub(crate) fn disconnect(reason: u8, properties: &[u8]) -> Vec<u8> {
        let mut body = vec![reason];
        body.extend(with_length(properties));
        build::packet(0xE0, &body)
    }

    /// The reason code of a CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP or
    /// DISCONNECT (0 where the packet may leave it out).
    pub(crate) fn reason_code(packet: &RawPacket) -> u8 {
        match packet.packet_type() {
            packet_type::CONNACK => packet.body.get(1).copied().unwrap_or(0xFF),
            packet_type::DISCONNECT => packet.body.first().copied().unwrap_or(0),
            _ => packet.body.get(2).copied().unwrap_or(0),
        }
    }

    /// A SUBACK's or UNSUBACK's packet id and reason codes.
    pub(crate) fn ack_codes(packet: &RawPacket) -> (u16, Vec<u8>) {
        assert!(
            matches!(packet.packet_type(), packet_type::SUBACK | packet_type::UNSUBACK),
            "expected SUBACK or UNSUBACK, got {packet:?}"
        );
        let body = &packet.body;
        let packet_id = u16::from_be_bytes([body[0], body[1]]);
        // Property length, a Variable Byte Integer.
        let (mut length, mut at, mut shift) = (0usize, 2usize, 0);
        loop {
            let byte = body[at];
            length |= usize::from(byte & 0x7F) << shift;
            at += 1;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        (packet_id, body[at + length..].to_vec())
    }
}

/// A small, seeded PRNG (xorshift64*): the same seed gives the same attack.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Runs `work(i)` for `i` in `0..n` on `threads` threads; panics if any did.
pub(crate) fn in_parallel(n: usize, threads: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    work(i);
                }
            });
        }
    });
}
