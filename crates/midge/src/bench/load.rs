//! The publisher and subscriber loops, and the window that keeps publishers
//! from running ahead of subscribers.
//!
//! Hot path: a publisher encodes up to `--batch` PUBLISHes into one reused
//! buffer and writes it with one call; the payload is a template whose first
//! 16 bytes are overwritten in place with a run tag and the send time. A
//! subscriber reads whatever has arrived, decodes every packet in the
//! buffer, records latencies in its own histogram, and writes all its
//! acknowledgements with one call. The shared counters are touched once per
//! batch, not once per message.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use midge_codec::{MqttStr, Packet, ProtocolVersion, PubAck, Publish, QoS, decode, encode, encode_publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::client::{Conn, MAX_PACKET};
use super::pace::Pacer;

/// How long the window may stay full with nothing received before what is
/// outstanding is counted as lost and publishers go on.
const STALL: Duration = Duration::from_secs(1);

/// How often a subscriber looks whether it must stop or ping: one timer per
/// subscriber, armed once, rather than a waiter registered on every read.
const TICK: Duration = Duration::from_millis(20);

/// The bytes at the front of a payload that carry the run tag and send time.
pub(crate) const STAMP_LEN: usize = 16;

/// The process's clock origin: send times are nanoseconds since it, so
/// latency is measured on one monotonic clock within one process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Tells this process's payloads from any other's: only they carry a send
/// time on our clock.
fn run_tag() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    *TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (u64::from(std::process::id()) << 32) ^ (nanos as u64) ^ 0x6d69_6467_6562_6e63
    })
}

/// Nanoseconds since [`epoch`].
pub(crate) fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Counters shared by every task of a run, and the window.
#[derive(Debug)]
pub(crate) struct Flow {
    /// PUBLISHes written.
    pub(crate) sent: AtomicU64,
    /// QoS 1/2 PUBLISHes completed (PUBACK / PUBCOMP).
    pub(crate) acked: AtomicU64,
    /// PUBLISHes received by subscribers (each copy counts).
    pub(crate) received: AtomicU64,
    /// Deliveries the window stopped waiting for (after [`STALL`] without room).
    written_off: AtomicU64,
    /// Times publishers gave up waiting for room.
    pub(crate) stalls: AtomicU64,
    /// Nanoseconds (since the epoch) of the last write and the last receipt.
    pub(crate) last_sent_at: AtomicU64,
    pub(crate) last_received_at: AtomicU64,
    /// Nanoseconds (since the epoch) of the first receipt (0: none yet).
    pub(crate) first_received_at: AtomicU64,
    /// Copies each message is expected to arrive as (0: no subscriber here).
    pub(crate) copies: u64,
    /// In-flight deliveries allowed (window × copies); 0: unbounded.
    limit: u64,
    /// Set by a publisher about to wait for room; subscribers then notify.
    waiting: AtomicBool,
    room: Notify,
    /// Set when publishing must end (deadline, Ctrl-C).
    pub(crate) stop: AtomicBool,
    /// Set when subscribers must end (after the drain); they look every [`TICK`].
    pub(crate) stop_subscribers: AtomicBool,
}

impl Flow {
    pub(crate) fn new(copies: u64, window: u64) -> Flow {
        Flow {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            last_sent_at: AtomicU64::new(0),
            last_received_at: AtomicU64::new(0),
            first_received_at: AtomicU64::new(0),
            copies,
            limit: if copies == 0 { 0 } else { window.saturating_mul(copies) },
            waiting: AtomicBool::new(false),
            room: Notify::new(),
            stop: AtomicBool::new(false),
            stop_subscribers: AtomicBool::new(false),
        }
    }

    /// Deliveries sent and not yet received (nor written off).
    pub(crate) fn outstanding(&self) -> u64 {
        let expected = self.sent.load(Ordering::SeqCst).saturating_mul(self.copies);
        expected
            .saturating_sub(self.received.load(Ordering::SeqCst))
            .saturating_sub(self.written_off.load(Ordering::SeqCst))
    }

    /// Copies sent and not yet received (what the drain waits for).
    pub(crate) fn outstanding_total(&self) -> u64 {
        let expected = self.sent.load(Ordering::SeqCst).saturating_mul(self.copies);
        expected.saturating_sub(self.received.load(Ordering::SeqCst))
    }

    /// Messages that may be sent now.
    fn room(&self) -> u64 {
        if self.limit == 0 {
            return u64::MAX;
        }
        self.limit.saturating_sub(self.outstanding()) / self.copies
    }

    /// Waits until a subscriber makes room (or [`Flow::watch_stall`] gives up on
    /// what is outstanding).
    async fn wait_for_room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if self.room() > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Called by the run's control loop: when the window has been full with
    /// nothing received for [`STALL`], writes off what is outstanding (it counts
    /// as lost at the end anyway) and wakes the publishers. Keeps timers out of
    /// the publishers' path.
    pub(crate) fn watch_stall(&self, last: &mut (u64, Instant)) {
        let received = self.received.load(Ordering::SeqCst);
        if received != last.0 || self.limit == 0 || self.room() > 0 {
            *last = (received, Instant::now());
            return;
        }
        if last.1.elapsed() >= STALL {
            self.written_off.fetch_add(self.outstanding(), Ordering::SeqCst);
            self.stalls.fetch_add(1, Ordering::Relaxed);
            self.room.notify_waiters();
            *last = (received, Instant::now());
        }
    }

    /// Called by subscribers after counting a batch.
    fn received(&self, n: u64, now: u64) {
        if self.received.fetch_add(n, Ordering::SeqCst) == 0 {
            let _ = self.first_received_at.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.last_received_at.store(now, Ordering::Relaxed);
        if self.waiting.load(Ordering::SeqCst) {
            self.waiting.store(false, Ordering::SeqCst);
            self.room.notify_waiters();
        }
    }
}

/// What one publisher sends.
#[derive(Debug, Clone)]
pub(crate) struct PublisherPlan {
    pub(crate) topic: String,
    pub(crate) qos: QoS,
    pub(crate) size: usize,
    /// Messages per second, if paced.
    pub(crate) rate: Option<f64>,
    /// This publisher's first slot: paced publishers are spread over one
    /// period, so `--total-rate` is even rather than every publisher sending
    /// in the same instant.
    pub(crate) start: Instant,
    /// Messages to send, if limited.
    pub(crate) count: Option<u64>,
    /// When to stop publishing, if timed.
    pub(crate) deadline: Option<Instant>,
    pub(crate) inflight: u16,
    pub(crate) batch: usize,
    /// How long to wait for outstanding acks once done.
    pub(crate) drain: Duration,
}

/// Runs one publisher until its count or deadline, then waits (bounded) for its
/// acknowledgements and disconnects.
pub(crate) async fn publisher(
    mut conn: Conn,
    plan: PublisherPlan,
    version: ProtocolVersion,
    flow: Arc<Flow>,
) -> anyhow::Result<()> {
    let who = conn.client_id.clone();
    let result = publish_loop(&mut conn, &plan, version, &flow).await;
    let _ = disconnect(&mut conn, version).await;
    result.with_context(|| format!("publisher {who}"))
}

async fn publish_loop(
    conn: &mut Conn,
    plan: &PublisherPlan,
    version: ProtocolVersion,
    flow: &Flow,
) -> anyhow::Result<()> {
    let mut template = vec![b'x'; plan.size];
    let stamped = plan.size >= STAMP_LEN;
    if stamped {
        template[..8].copy_from_slice(&run_tag().to_le_bytes());
    }
    let mut publish = Publish {
        qos: plan.qos,
        topic: MqttStr::from(plan.topic.as_str()),
        payload: Bytes::from(template),
        ..Publish::default()
    };
    let max_inflight = u64::from(plan.inflight.min(conn.receive_maximum).max(1));
    let mut inflight: u64 = 0;
    let mut next_id: u16 = 0;
    let mut sent: u64 = 0;
    let mut wbuf = BytesMut::with_capacity(plan.batch * (plan.size + plan.topic.len() + 16));
    let start = plan.start;
    // Timers created once and re-armed, not one per wait.
    let far = start + Duration::from_secs(86_400 * 365);
    let deadline = tokio::time::sleep_until(plan.deadline.unwrap_or(far).into());
    tokio::pin!(deadline);
    let mut pacer = Pacer::new(start, plan.rate);
    loop {
        if inflight > 0 {
            inflight -= read_acks(conn, version, &mut wbuf, flow)?;
            if !wbuf.is_empty() {
                conn.stream.write_all(&wbuf).await.context("writing PUBREL")?;
                wbuf.clear();
            }
        }
        // One clock read per batch: the deadline, the pace and the send time.
        let now = Instant::now();
        let done = plan.count.is_some_and(|c| sent >= c)
            || flow.stop.load(Ordering::Relaxed)
            || plan.deadline.is_some_and(|d| now >= d);
        if done {
            break;
        }
        let mut n = plan.batch as u64;
        if let Some(count) = plan.count {
            n = n.min(count - sent);
        }
        if plan.qos != QoS::AtMostOnce {
            n = n.min(max_inflight - inflight);
        }
        let window = flow.room();
        n = n.min(window);
        let mut paced = false;
        if let Some(rate) = plan.rate {
            let due = if now < start { 0 } else { (now.duration_since(start).as_secs_f64() * rate) as u64 + 1 };
            let allowed = due.saturating_sub(sent);
            if allowed < n {
                n = allowed;
                if n == 0 {
                    paced = true;
                    pacer.arm(start + Duration::from_secs_f64(sent as f64 / rate)).context("arming the pace timer")?;
                }
            }
        }
        if n == 0 {
            tokio::select! {
                // A paced publisher reads its acknowledgements when its next slot
                // comes, not as each arrives: waking for them would put the
                // generator's own work between a delivery and its timestamp
                // whenever a broker sends the PUBACK just before the message.
                r = conn.stream.readable(), if inflight > 0 && !paced => { r.context("waiting for acknowledgements")?; }
                () = flow.wait_for_room(), if window == 0 => {}
                r = pacer.wait(), if paced => { r.context("waiting for the pace timer")?; }
                () = &mut deadline => {}
            }
            continue;
        }
        let sent_at = now.duration_since(epoch()).as_nanos() as u64;
        let stamp = sent_at.to_le_bytes();
        for _ in 0..n {
            if plan.qos != QoS::AtMostOnce {
                next_id = next_id.checked_add(1).unwrap_or(1);
                publish.packet_id = NonZeroU16::new(next_id);
            }
            encode_publish(&publish, version, &mut wbuf).context("encoding PUBLISH")?;
            if stamped {
                let at = wbuf.len() - plan.size + 8;
                wbuf[at..at + 8].copy_from_slice(&stamp);
            }
        }
        // Counted before the write, so a subscriber never sees more than was sent.
        flow.sent.fetch_add(n, Ordering::SeqCst);
        sent += n;
        if plan.qos != QoS::AtMostOnce {
            inflight += n;
        }
        conn.stream.write_all(&wbuf).await.context("writing PUBLISH")?;
        wbuf.clear();
        flow.last_sent_at.store(sent_at, Ordering::Relaxed);
    }
    // Wait, bounded, for the acknowledgements still outstanding.
    let until = Instant::now() + plan.drain;
    while inflight > 0 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{inflight} publishes still unacknowledged {:?} after the last one", plan.drain);
        }
        match tokio::time::timeout(left, conn.stream.readable()).await {
            Ok(r) => r.context("waiting for acknowledgements")?,
            Err(_) => continue,
        }
        inflight -= read_acks(conn, version, &mut wbuf, flow)?;
        if !wbuf.is_empty() {
            conn.stream.write_all(&wbuf).await.context("writing PUBREL")?;
            wbuf.clear();
        }
    }
    Ok(())
}

/// Reads what has arrived without waiting and handles the acknowledgements;
/// returns how many publishes completed. PUBRELs for PUBRECs go into `wbuf`.
fn read_acks(conn: &mut Conn, version: ProtocolVersion, wbuf: &mut BytesMut, flow: &Flow) -> anyhow::Result<u64> {
    loop {
        conn.rbuf.reserve(4096);
        match conn.stream.try_read_buf(&mut conn.rbuf) {
            Ok(0) => bail!("the broker closed the connection"),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("reading acknowledgements"),
        }
    }
    let mut done = 0;
    loop {
        match short_ack(&conn.rbuf) {
            Some((PUBACK | PUBCOMP, _)) => {
                conn.rbuf.advance(4);
                done += 1;
                continue;
            }
            Some((PUBREC, id)) => {
                conn.rbuf.advance(4);
                put_ack(wbuf, PUBREL, id);
                continue;
            }
            _ => {}
        }
        let Some(packet) = decode(&mut conn.rbuf, version, MAX_PACKET).context("malformed packet from the broker")?
        else {
            break;
        };
        match packet {
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                if ack.reason_code.is_error() {
                    bail!("the broker refused a publish: {:?}", ack.reason_code);
                }
                done += 1;
            }
            Packet::PubRec(ack) => {
                if ack.reason_code.is_error() {
                    bail!("the broker refused a publish: {:?}", ack.reason_code);
                }
                encode(&Packet::PubRel(PubAck::new(ack.packet_id)), version, wbuf).context("encoding PUBREL")?;
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => bail!("the broker disconnected: {:?}", d.reason_code),
            other => bail!("unexpected {} from the broker", other.name()),
        }
    }
    if done > 0 {
        flow.acked.fetch_add(done, Ordering::Relaxed);
    }
    Ok(done)
}

/// Latencies seen by one subscriber, in nanoseconds.
pub(crate) type Latencies = Histogram<u64>;

pub(crate) fn new_histogram() -> Latencies {
    // 1 ns to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs one subscriber until `stop` turns true; returns its latencies.
pub(crate) async fn subscriber(
    mut conn: Conn,
    version: ProtocolVersion,
    keep_alive: u16,
    flow: Arc<Flow>,
) -> anyhow::Result<Latencies> {
    let who = conn.client_id.clone();
    let mut hist = new_histogram();
    let result = subscribe_loop(&mut conn, version, keep_alive, &flow, &mut hist).await;
    let _ = disconnect(&mut conn, version).await;
    result.with_context(|| format!("subscriber {who}"))?;
    Ok(hist)
}

async fn subscribe_loop(
    conn: &mut Conn,
    version: ProtocolVersion,
    keep_alive: u16,
    flow: &Flow,
    hist: &mut Latencies,
) -> anyhow::Result<()> {
    let tag = run_tag().to_le_bytes();
    let mut wbuf = BytesMut::with_capacity(4096);
    let ping_every = Duration::from_secs(u64::from(keep_alive.max(2)) / 2);
    let mut next_ping = Instant::now() + ping_every;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What arrived with the SUBACK is handled before the first read.
    let mut first = true;
    loop {
        if !first {
            conn.rbuf.reserve(64 * 1024);
            tokio::select! {
                r = conn.stream.read_buf(&mut conn.rbuf) => {
                    if r.context("reading")? == 0 {
                        bail!("the broker closed the connection");
                    }
                }
                _ = tick.tick() => {
                    if flow.stop_subscribers.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if Instant::now() >= next_ping {
                        next_ping += ping_every;
                        encode(&Packet::PingReq, version, &mut wbuf).context("encoding PINGREQ")?;
                    }
                }
            }
        }
        first = false;
        let now = now_nanos();
        let mut got = 0;
        loop {
            // The hot packet is only framed here; everything else, and anything
            // this framing does not accept, goes through the codec.
            if let Some(view) = PublishView::parse(&conn.rbuf, version) {
                got += 1;
                let payload = &conn.rbuf[view.payload_start..view.len];
                if payload.len() >= STAMP_LEN && payload[..8] == tag {
                    let mut sent = [0; 8];
                    sent.copy_from_slice(&payload[8..16]);
                    hist.saturating_record(now.saturating_sub(u64::from_le_bytes(sent)).max(1));
                }
                if let Some(id) = view.packet_id {
                    put_ack(&mut wbuf, if view.qos == QoS::ExactlyOnce { PUBREC } else { PUBACK }, id);
                }
                conn.rbuf.advance(view.len);
                continue;
            }
            if let Some((PUBREL, id)) = short_ack(&conn.rbuf) {
                conn.rbuf.advance(4);
                put_ack(&mut wbuf, PUBCOMP, id);
                continue;
            }
            let Some(packet) =
                decode(&mut conn.rbuf, version, MAX_PACKET).context("malformed packet from the broker")?
            else {
                break;
            };
            match packet {
                Packet::Publish(p) => {
                    got += 1;
                    if p.payload.len() >= STAMP_LEN && p.payload[..8] == tag {
                        let mut sent = [0; 8];
                        sent.copy_from_slice(&p.payload[8..16]);
                        hist.saturating_record(now.saturating_sub(u64::from_le_bytes(sent)).max(1));
                    }
                    if let Some(id) = p.packet_id {
                        let ack = PubAck::new(id);
                        let ack = if p.qos == QoS::ExactlyOnce { Packet::PubRec(ack) } else { Packet::PubAck(ack) };
                        encode(&ack, version, &mut wbuf).context("encoding PUBACK")?;
                    }
                }
                Packet::PubRel(rel) => {
                    encode(&Packet::PubComp(PubAck::new(rel.packet_id)), version, &mut wbuf)
                        .context("encoding PUBCOMP")?;
                }
                Packet::PingResp | Packet::SubAck(_) => {}
                Packet::Disconnect(d) => bail!("the broker disconnected: {:?}", d.reason_code),
                other => bail!("unexpected {} from the broker", other.name()),
            }
        }
        if got > 0 {
            flow.received(got, now);
        }
        if !wbuf.is_empty() {
            conn.stream.write_all(&wbuf).await.context("writing acknowledgements")?;
            wbuf.clear();
        }
    }
}

/// Sends DISCONNECT (best effort) and shuts the socket down.
pub(crate) async fn disconnect(conn: &mut Conn, version: ProtocolVersion) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(8);
    encode(&Packet::Disconnect(Default::default()), version, &mut buf)?;
    conn.stream.write_all(&buf).await?;
    conn.stream.shutdown().await?;
    Ok(())
}

/// Where the parts of a complete PUBLISH at the front of a buffer are.
///
/// The subscriber's hot path: at millions of messages a second, building a
/// [`Packet`] (checking the topic's UTF-8, moving the large enum) was most of
/// the generator's CPU. This only frames a well-formed PUBLISH: anything
/// else — another packet, an incomplete or doubtful one — is left to
/// [`decode`], which decides and reports. A test checks it against the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PublishView {
    /// Bytes of the whole packet.
    len: usize,
    qos: QoS,
    packet_id: Option<NonZeroU16>,
    /// Offset of the payload; it runs to `len`.
    payload_start: usize,
}

impl PublishView {
    fn parse(buf: &[u8], version: ProtocolVersion) -> Option<PublishView> {
        let first = *buf.first()?;
        if first >> 4 != 3 {
            return None;
        }
        let qos = QoS::from_u8((first >> 1) & 3)?;
        if qos == QoS::AtMostOnce && first & 0x08 != 0 {
            return None; // DUP on QoS 0: the codec's error to report.
        }
        let (remaining, header) = varint(&buf[1..])?;
        let len = 1 + header + remaining;
        if len > buf.len() || len > MAX_PACKET as usize {
            return None;
        }
        let body = &buf[..len];
        let topic_len = usize::from(u16::from_be_bytes([*body.get(1 + header)?, *body.get(2 + header)?]));
        let mut at = 3 + header + topic_len;
        let mut packet_id = None;
        if qos != QoS::AtMostOnce {
            packet_id = Some(NonZeroU16::new(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))?);
            at += 2;
        }
        if version.is_v5() {
            let (properties, n) = varint(body.get(at..)?)?;
            at += n + properties;
        }
        (at <= len).then_some(PublishView { len, qos, packet_id, payload_start: at })
    }
}

/// Packet types of the acknowledgements, as in the fixed header's high nibble.
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;

/// A success acknowledgement framed in place, as [`PublishView`] frames a
/// PUBLISH: the type and packet id of a PUBACK, PUBREC, PUBREL or PUBCOMP
/// of remaining length 2 (always in 3.x; in v5 when the reason is Success
/// and there are no properties, section 3.4.2.1). Decoding each into a
/// [`Packet`] was a tenth of the generator's CPU in QoS 2 pairs. Anything
/// else is left to [`decode`].
fn short_ack(buf: &[u8]) -> Option<(u8, NonZeroU16)> {
    let [first, 2, high, low, ..] = *buf else { return None };
    if !matches!(first, 0x40 | 0x50 | 0x62 | 0x70) {
        return None;
    }
    Some((first >> 4, NonZeroU16::new(u16::from_be_bytes([high, low]))?))
}

/// Appends a success acknowledgement of type `kind` for `id`: the four
/// bytes the codec writes for one, in every version.
fn put_ack(buf: &mut BytesMut, kind: u8, id: NonZeroU16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    let [high, low] = id.get().to_be_bytes();
    buf.extend_from_slice(&[kind << 4 | flags, 2, high, low]);
}

/// A Variable Byte Integer at the front of `buf`: its value and length.
fn varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_codec::PublishProperties;

    /// The framing agrees with the codec on every version, QoS and shape of
    /// PUBLISH, and accepts nothing incomplete.
    #[test]
    fn publish_view_frames_what_the_codec_encodes() {
        for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for (topic, size) in [("a", 0), ("bench/fan-in/7", 64), ("t", 200), ("long/topic", 20_000)] {
                    let publish = Publish {
                        qos,
                        topic: MqttStr::from(topic),
                        packet_id: (qos != QoS::AtMostOnce).then(|| NonZeroU16::new(513).expect("non-zero")),
                        properties: PublishProperties {
                            user_properties: if version.is_v5() { vec![("k".into(), "v".into())] } else { vec![] },
                            message_expiry_interval: version.is_v5().then_some(60),
                            ..PublishProperties::default()
                        },
                        payload: Bytes::from(vec![7u8; size]),
                        ..Publish::default()
                    };
                    let mut buf = BytesMut::new();
                    encode_publish(&publish, version, &mut buf).expect("encodes");
                    buf.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ after it
                    let view = PublishView::parse(&buf, version).expect("a complete PUBLISH");
                    assert_eq!(view.len, buf.len() - 2);
                    assert_eq!(view.qos, qos);
                    assert_eq!(view.packet_id, publish.packet_id);
                    assert_eq!(&buf[view.payload_start..view.len], &publish.payload[..]);
                    for cut in 0..view.len {
                        assert_eq!(PublishView::parse(&buf[..cut], version), None, "cut at {cut}");
                    }
                    let decoded = decode(&mut buf, version, MAX_PACKET).expect("decodes").expect("complete");
                    assert_eq!(decoded, Packet::Publish(publish));
                }
            }
        }
    }

    /// The acknowledgements written and framed in place are the codec's, in
    /// every version; anything longer or malformed is left to the codec.
    #[test]
    fn short_acks_are_the_codecs() {
        let id = NonZeroU16::new(0x1234).expect("non-zero");
        for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for (kind, packet) in [
                (PUBACK, Packet::PubAck(PubAck::new(id))),
                (PUBREC, Packet::PubRec(PubAck::new(id))),
                (PUBREL, Packet::PubRel(PubAck::new(id))),
                (PUBCOMP, Packet::PubComp(PubAck::new(id))),
            ] {
                let mut ours = BytesMut::new();
                put_ack(&mut ours, kind, id);
                let mut codec = BytesMut::new();
                encode(&packet, version, &mut codec).expect("encodes");
                assert_eq!(ours, codec, "{version:?} {packet:?}");
                assert_eq!(short_ack(&ours), Some((kind, id)));
                for cut in 0..4 {
                    assert_eq!(short_ack(&ours[..cut]), None);
                }
            }
        }
        // A v5 acknowledgement with a reason code, packet id 0, PUBREL
        // without its flag, a PUBLISH: the codec's.
        for other in [&[0x40, 3, 0x12, 0x34, 0x10][..], &[0x40, 2, 0, 0], &[0x60, 2, 0x12, 0x34], &[0x30, 2, 0, 1]] {
            assert_eq!(short_ack(other), None, "{other:?}");
        }
    }

    #[test]
    fn publish_view_leaves_other_packets_to_the_codec() {
        let mut buf = BytesMut::new();
        encode(&Packet::PubRel(PubAck::new(NonZeroU16::MIN)), ProtocolVersion::V3_1_1, &mut buf).expect("encodes");
        assert_eq!(PublishView::parse(&buf, ProtocolVersion::V3_1_1), None);
        // QoS 1 with packet id 0 is malformed: the codec must see it.
        assert_eq!(PublishView::parse(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], ProtocolVersion::V3_1_1), None);
        // QoS 3 likewise.
        assert_eq!(PublishView::parse(&[0x36, 0x03, 0x00, 0x01, b't'], ProtocolVersion::V3_1_1), None);
    }
}
