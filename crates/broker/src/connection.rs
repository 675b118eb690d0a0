//! The connection driver: one task per client, over any byte stream.
//!
//! ```text
//!  socket ─read─▶ rbuf ─decode─▶ Packet ─handle─▶ Shared (route, retain, sessions)
//!                                             └──▶ wbuf (acks)
//!  Session queue ─drain (on wake)─▶ wbuf ─one write per loop turn─▶ socket
//! ```
//!
//! The task waits on four things at once: bytes from the client, a wake-up
//! from a publisher that queued something for this session, the keep-alive
//! deadline, and being told to go (takeover, shutdown). Everything it owes
//! the client is appended to `wbuf` and written once per turn, so a burst
//! of packets costs one syscall.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use midge_codec::{
    AckProperties, Auth, AuthProperties, ConnAck, Connect, DecodeError, Disconnect, MqttStr, Packet, PacketId,
    ProtocolVersion, PubAck, Publish, PublishView, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Will, decode, encode, encode_publish_view, encoded_len, fixed_header, publish_view_encoded_len, topic,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::auth::{AuthExchange, AuthStep, Check, ClientInfo, Verdict};
use crate::broker::{Origin, Shared};
use crate::config::TopicLimit;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::persist;
use crate::router::Grant;
use crate::session::{Delivery, InflightState, Kick, Message, Refill, Sendable, Session, Signal};
use crate::store::{StoreError, Table};
use crate::throttle::{Admission, Ticket};

/// Why a connection ended. Decides whether the will is published.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT: the will is discarded [MQTT-3.1.2-10],
    /// unless a v5 client asked for it with reason 0x04.
    Disconnected(ReasonCode),
    /// The peer closed the socket or it failed.
    PeerClosed,
    Io(std::io::Error),
    /// No packet within 1.5 × keep-alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// A packet begun was not whole in time (see `Conn::track_partial`).
    PacketTimeout {
        waited: Duration,
        have: usize,
        declared: Option<u32>,
    },
    Malformed(DecodeError),
    /// A well-formed packet that breaks a rule; the text names the rule,
    /// the code is what a v5 client is told.
    ProtocolViolation(ReasonCode, &'static str),
    Kicked(Kick),
    Shutdown,
    /// Re-authentication was refused [MQTT-4.12.1-2].
    ReauthFailed(ReasonCode),
    /// The store could not make this client's messages durable; they are
    /// not acknowledged.
    Store(StoreError),
}

impl Close {
    /// Human-readable cause for a v5 DISCONNECT's Reason String.
    fn reason_string(&self) -> Option<String> {
        match self {
            Close::Malformed(e) => Some(e.to_string()),
            Close::ProtocolViolation(_, rule) => Some((*rule).to_owned()),
            Close::KeepAliveTimeout => Some("keep-alive expired".to_owned()),
            Close::PacketTimeout { waited, .. } => Some(format!("packet not completed within {} s", waited.as_secs())),
            Close::Kicked(_) => Some("another connection took over the session".to_owned()),
            Close::Shutdown => Some("server shutting down".to_owned()),
            Close::ReauthFailed(_) => Some("re-authentication failed".to_owned()),
            Close::Store(_) => Some("the server could not store the message".to_owned()),
            _ => None,
        }
    }

    /// The reason code of the DISCONNECT a v5 client gets before the
    /// server closes [MQTT-4.13.2-1]; `None` when the client ended it.
    fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            Close::Disconnected(_) | Close::PeerClosed | Close::Io(_) => None,
            Close::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            // MQTT 5 has no code for a packet too slow to arrive.
            Close::PacketTimeout { .. } => Some(ReasonCode::UnspecifiedError),
            Close::Malformed(e) => Some(e.reason_code()),
            Close::ProtocolViolation(code, _) => Some(*code),
            Close::Kicked(_) => Some(ReasonCode::SessionTakenOver),
            Close::Shutdown => Some(ReasonCode::ServerShuttingDown),
            Close::ReauthFailed(code) => Some(*code),
            Close::Store(_) => Some(ReasonCode::UnspecifiedError),
        }
    }
}

/// A packet whose handling has to await something; the packets before it
/// are handled.
enum Deferred {
    /// The authorizer answers later.
    Publish(Publish),
    /// Each filter's authorization may be answered later.
    Subscribe(Subscribe),
    /// A step of the re-authentication the client's AUTH asked for.
    Reauthenticate,
}

enum Event {
    Read(std::io::Result<usize>),
    Signal,
    Timer,
}

/// Serves one client until its connection ends.
///
/// The handshake, with everything it needs, lives in one allocation that
/// is freed when it ends; serving lives in another, sized for serving
/// only. The task's own future is a few pointers: thousands of idle
/// clients each hold only what serving them needs.
pub(crate) fn run<S>(shared: Arc<Shared>, stream: S, origin: Origin) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Metrics::inc(&shared.metrics.connections_current);
    Metrics::inc(&shared.metrics.connections_total);
    let handshake = Box::pin(handshake(shared.clone(), stream, origin));
    async move {
        if let Some(serving) = handshake.await {
            serving.await;
        }
        Metrics::dec(&shared.metrics.connections_current);
    }
}

/// Reads CONNECT and answers it; returns the serving of the session, or
/// `None` if the client was refused or went away.
async fn handshake<S>(
    shared: Arc<Shared>,
    mut stream: S,
    origin: Origin,
) -> Option<Pin<Box<impl Future<Output = ()> + use<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = origin.peer;
    let mut rbuf = BytesMut::new();
    let connect = tokio::select! {
        c = tokio::time::timeout(shared.config.connect_timeout, read_connect(&shared, &mut stream, &mut rbuf, peer)) => c,
        _ = shared.shutdown.cancelled() => Ok(None),
    };
    match connect {
        Ok(Some(connect)) => run_session(&shared, stream, rbuf, origin, connect).await,
        Ok(None) => None,
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {:?}; closing", shared.config.connect_timeout);
            None
        }
    }
}

/// Reads the first packet, which must be CONNECT [MQTT-3.1.0-1]. Answers
/// and closes on an unsupported protocol level [MQTT-3.1.2-2].
async fn read_connect<S>(shared: &Shared, stream: &mut S, rbuf: &mut BytesMut, peer: SocketAddr) -> Option<Box<Connect>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Noted before decoding, which consumes a packet even when it fails.
    let mut level = None;
    let read = read_packet_with(shared, stream, rbuf, ProtocolVersion::V3_1_1, |buf| {
        level = level.or_else(|| connect_level(buf));
    });
    match read.await {
        Ok(Packet::Connect(connect)) => Some(connect),
        Ok(other) => {
            tracing::info!(%peer, packet = other.name(), "first packet is not CONNECT [MQTT-3.1.0-1]; closing");
            Metrics::inc(&shared.metrics.protocol_errors);
            None
        }
        Err(Some(e @ DecodeError::UnsupportedProtocolVersion { .. })) => {
            tracing::info!(%peer, error = %e, "refusing CONNECT");
            refuse(shared, stream, ProtocolVersion::V3_1_1, ReasonCode::UnsupportedProtocolVersion).await;
            None
        }
        Err(Some(e)) => {
            tracing::info!(%peer, error = %e, "malformed CONNECT; closing");
            Metrics::inc(&shared.metrics.protocol_errors);
            // A v5 client is told why [MQTT-3.1.4-1], [MQTT-3.2.2-6]; 3.x
            // CONNACK has no code for it, so those are just closed.
            if level == Some(5) {
                refuse(shared, stream, ProtocolVersion::V5, e.reason_code()).await;
            }
            None
        }
        Err(None) => None,
    }
}

/// The protocol level of a (possibly malformed) CONNECT at the start of `buf`.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (_, header_len) = fixed_header(buf, ProtocolVersion::V3_1_1).ok()??;
    let name_len = usize::from(u16::from_be_bytes([*buf.get(header_len)?, *buf.get(header_len + 1)?]));
    buf.get(header_len + 2 + name_len).copied()
}

/// Reads one whole packet. `Err(None)`: the peer closed or the read failed.
async fn read_packet<S>(
    shared: &Shared,
    stream: &mut S,
    rbuf: &mut BytesMut,
    version: ProtocolVersion,
) -> Result<Packet, Option<DecodeError>>
where
    S: AsyncRead + Unpin,
{
    read_packet_with(shared, stream, rbuf, version, |_| {}).await
}

/// [`read_packet`], showing `inspect` the buffered bytes before each decode.
async fn read_packet_with<S>(
    shared: &Shared,
    stream: &mut S,
    rbuf: &mut BytesMut,
    version: ProtocolVersion,
    mut inspect: impl FnMut(&[u8]),
) -> Result<Packet, Option<DecodeError>>
where
    S: AsyncRead + Unpin,
{
    loop {
        inspect(rbuf);
        if let Some(packet) = decode(rbuf, version, shared.config.max_packet_size).map_err(Some)? {
            Metrics::inc(&shared.metrics.packets_received);
            return Ok(packet);
        }
        reserve(rbuf, &mut false);
        match read_some(stream, rbuf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => Metrics::add(&shared.metrics.bytes_received, n as u64),
        }
    }
}

/// How an enhanced authentication exchange before CONNACK ended badly.
enum AuthEnd {
    /// Answer with a refusing CONNACK.
    Refuse(ReasonCode, &'static str),
    /// The client went away or sent DISCONNECT.
    Closed,
}

/// The AUTH packet that carries a step of the exchange; every one names
/// the method of the CONNECT [MQTT-4.12.0-5].
fn auth_packet(reason_code: ReasonCode, method: &str, data: Option<Bytes>) -> Packet {
    Packet::Auth(Auth {
        reason_code,
        properties: AuthProperties {
            authentication_method: Some(method.to_owned()),
            authentication_data: data,
            ..Default::default()
        },
    })
}

/// Runs enhanced authentication between CONNECT and CONNACK (v5 section
/// 4.12): the server answers each step with AUTH 0x18 until the exchange
/// succeeds (returns CONNACK's data and the proven user name) or fails.
async fn authenticate_exchange<S>(
    shared: &Shared,
    stream: &mut S,
    rbuf: &mut BytesMut,
    method: &str,
    exchange: &mut dyn AuthExchange,
    mut data: Option<Bytes>,
) -> Result<(Option<Bytes>, Option<String>), AuthEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let challenge = match exchange.step(data.take()).await {
            AuthStep::Success { data, username } => return Ok((data, username)),
            AuthStep::Failure(code) => return Err(AuthEnd::Refuse(code, "authentication failed")),
            AuthStep::Continue(challenge) => challenge,
        };
        // [MQTT-4.12.0-2]
        let mut out = BytesMut::new();
        let _ = encode(
            &auth_packet(ReasonCode::ContinueAuthentication, method, Some(challenge)),
            ProtocolVersion::V5,
            &mut out,
        );
        Metrics::inc(&shared.metrics.packets_sent);
        stream.write_all(&out).await.map_err(|_| AuthEnd::Closed)?;
        match read_packet(shared, stream, rbuf, ProtocolVersion::V5).await {
            Ok(Packet::Auth(auth)) => {
                if auth.reason_code != ReasonCode::ContinueAuthentication {
                    return Err(AuthEnd::Refuse(
                        ReasonCode::ProtocolError,
                        "client AUTH must continue [MQTT-4.12.0-3]",
                    ));
                }
                if auth.properties.authentication_method.as_deref() != Some(method) {
                    return Err(AuthEnd::Refuse(ReasonCode::ProtocolError, "AUTH changed the method [MQTT-4.12.0-5]"));
                }
                data = auth.properties.authentication_data;
            }
            Ok(Packet::Disconnect(_)) | Err(None) => return Err(AuthEnd::Closed),
            Ok(_) => {
                return Err(AuthEnd::Refuse(
                    ReasonCode::ProtocolError,
                    "only AUTH or DISCONNECT before CONNACK [MQTT-3.1.2-30]",
                ));
            }
            Err(Some(e)) => return Err(AuthEnd::Refuse(e.reason_code(), "malformed packet during authentication")),
        }
    }
}

/// Answers CONNECT with a refusing CONNACK and closes [MQTT-3.2.2-6].
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    version: ProtocolVersion,
    reason_code: ReasonCode,
) {
    let mut out = BytesMut::new();
    if encode(&Packet::ConnAck(ConnAck { reason_code, ..Default::default() }), version, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.shutdown().await;
    linger(shared, stream).await;
}

/// Nodes of the retained index a SUBSCRIBE's lookups visit before its
/// task yields to others (about 0.1 ms of work).
const RETAINED_WORK_SLICE: usize = 4096;

/// How long a connection the server ends goes on reading after its last
/// packet and FIN, at most.
const LINGER: Duration = Duration::from_secs(2);

/// Connections lingering at once, at most. Each holds a socket and a small
/// buffer for up to [`LINGER`]: a flood of refused CONNECTs from clients
/// that keep sending must not pile up open files. Past it, a connection
/// closes at once, as it did before lingering existed.
const MAX_LINGERING: usize = 1024;

/// Counts a lingering connection while it lives (also when its task is
/// dropped mid-linger, at shutdown).
struct Lingering<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Lingering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads and discards what the client still sends, until it closes or
/// [`LINGER`] passes, before the socket is dropped. Closing a socket with
/// unread input makes the kernel send a reset, which can overtake the
/// DISCONNECT or CONNACK just written: the client would see a broken pipe
/// instead of the reason (Paho's MQTT 5 flow-control test does). The write
/// side is already shut, so a client that waits for EOF gets it at once.
async fn linger<S: AsyncRead + Unpin>(shared: &Shared, stream: &mut S) {
    let crowded = shared.lingering.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_LINGERING;
    let _counted = Lingering(&shared.lingering);
    if crowded {
        return;
    }
    // On the heap, and only here: a connection's future stays small.
    let mut sink = vec![0u8; 1024];
    let deadline = tokio::time::Instant::now() + LINGER;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await
        && n > 0
    {}
}

/// Room for the next read. A client's buffer stays small until it sends
/// more than one read's worth at a time; from then on (`busy`) it reads
/// 4 KiB at a time. An idle client holds no read buffer at all: once
/// everything read is handled the buffer is let go, and the next read
/// goes through the stack (see [`read_some`]). Thousands of clients that
/// only ping do not each hold a buffer.
fn reserve(buf: &mut BytesMut, busy: &mut bool) {
    let spare = buf.capacity() - buf.len();
    if *busy {
        if spare < 512 {
            buf.reserve(4096);
        }
    } else if buf.is_empty() {
        if buf.capacity() > 0 {
            *buf = BytesMut::new();
        }
    } else if spare < 64 {
        // Part of a packet is waiting for the rest.
        *busy = true;
        buf.reserve(4096);
    }
}

/// Reads what the client sent into `rbuf`: straight into its spare room,
/// or, when it has none (an idle client's empty buffer), through a stack
/// buffer, allocating only for what arrived.
fn read_some<'a, S>(stream: &'a mut S, rbuf: &'a mut BytesMut) -> impl Future<Output = std::io::Result<usize>> + 'a
where
    S: AsyncRead + Unpin,
{
    std::future::poll_fn(move |cx| poll_read_some(stream, rbuf, cx))
}

fn poll_read_some<S>(stream: &mut S, rbuf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>>
where
    S: AsyncRead + Unpin,
{
    if rbuf.capacity() > rbuf.len() {
        return std::pin::pin!(stream.read_buf(&mut *rbuf)).poll(cx);
    }
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    let mut read = tokio::io::ReadBuf::uninit(&mut scratch);
    std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
    rbuf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

/// How far [`write_or_read`] got.
enum Progress {
    /// All of the buffer is written.
    Written,
    /// Bytes from the client arrived first (or the read failed, or hit the
    /// end of the stream: `Ok(0)`).
    Read(std::io::Result<usize>),
    Failed(std::io::Error),
}

/// Unread bytes a client may have waiting while its connection is blocked
/// writing to it; past this, its socket is not read until the write is done.
const READ_WHILE_WRITING: usize = 64 * 1024;

/// Writes `wbuf` from `*written` on; returns when it is all written, or as
/// soon as the client sent something (into `rbuf`), with `*written` telling
/// how far the write got.
fn write_or_read<'a, S>(
    stream: &'a mut S,
    wbuf: &'a [u8],
    written: &'a mut usize,
    rbuf: &'a mut BytesMut,
) -> impl Future<Output = Progress> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(move |cx| {
        while let Some(unwritten @ [_, ..]) = wbuf.get(*written..) {
            match Pin::new(&mut *stream).poll_write(cx, unwritten) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Progress::Failed(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Progress::Failed(e)),
                Poll::Pending => break,
            }
        }
        if *written == wbuf.len() {
            return Poll::Ready(Progress::Written);
        }
        if rbuf.len() < READ_WHILE_WRITING {
            return poll_read_some(stream, rbuf, cx).map(Progress::Read);
        }
        Poll::Pending
    })
}

/// Counts a refused login against its address, and says so when that
/// starts to slow the address down.
fn login_failed(shared: &Shared, ticket: &Ticket) {
    Metrics::inc(&shared.metrics.login_failures);
    let (failures, spacing) = ticket.failed();
    if failures >= 4 && failures.is_power_of_two() && !spacing.is_zero() {
        tracing::warn!(address = %ticket.address(), failures, "repeated login failures; spacing this address's attempts {spacing:?} apart");
    }
}

/// Validates CONNECT, answers CONNACK, then serves the session.
/// Returns the serving of the session, in its own allocation, for the
/// caller to await once this function's future, sized for the handshake,
/// is gone; `None` if the client was refused.
async fn run_session<S>(
    shared: &Arc<Shared>,
    mut stream: S,
    mut rbuf: BytesMut,
    origin: Origin,
    connect: Box<Connect>,
) -> Option<Pin<Box<impl Future<Output = ()> + use<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = origin.peer;
    let version = connect.protocol_version;
    let mut wbuf = BytesMut::with_capacity(256);

    // Client identifier rules [MQTT-3.1.3-6], [MQTT-3.1.3-8]; MQTT 3.1
    // requires one of 1 to 23 characters, so empty is refused there.
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        let allowed = match version {
            ProtocolVersion::V3_1 => false,
            ProtocolVersion::V3_1_1 => connect.clean_start,
            ProtocolVersion::V5 => true,
        };
        if !allowed {
            tracing::info!(%peer, "empty client id without clean session [MQTT-3.1.3-8]; refusing");
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::ClientIdentifierNotValid)).await;
            return None;
        }
        client_id = format!("auto-{:016x}", crate::random_u64());
        assigned = Some(client_id.clone());
    }
    // Keep-alive limit: a v5 client is told the value to use (Server Keep
    // Alive [MQTT-3.2.2-21]); a 3.x client cannot be, so it is refused, as
    // Mosquitto does.
    let max_keep_alive = shared.config.max_keep_alive;
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if keep_alive > max_keep_alive || (keep_alive == 0 && max_keep_alive < u16::MAX) {
        if version.is_v5() {
            keep_alive = max_keep_alive;
            server_keep_alive = Some(max_keep_alive);
        } else {
            tracing::info!(%peer, client_id, keep_alive, max_keep_alive, "keep-alive above the maximum; refusing");
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::ClientIdentifierNotValid)).await;
            return None;
        }
    }
    if let Some(will) = &connect.will
        && topic::validate_topic_name(&will.topic).is_err()
    {
        tracing::info!(%peer, client_id, "invalid will topic [MQTT-3.1.3-11]; closing");
        if version.is_v5() {
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::TopicNameInvalid)).await;
        }
        return None;
    }
    if let Some(will) = &connect.will
        && let Err(limit) = shared.config.check_topic(&will.topic)
    {
        topic_refused(shared, &client_id, peer, "will topic", &will.topic, limit, 1);
        // 3.x has no CONNACK code for a topic: the connection is closed.
        if version.is_v5() {
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::TopicNameInvalid)).await;
        }
        return None;
    }

    let mut client = ClientInfo {
        client_id: client_id.clone(),
        username: connect.username.clone(),
        peer,
        protocol_version: version,
    };
    // Paced per address, so guessing passwords is slow and one address
    // cannot crowd out the rest (see throttle.rs).
    // The rare and large waits of the handshake are boxed: the connection's
    // future is sized for its largest wait, and it is held for as long as the
    // client stays connected.
    let ticket = match Box::pin(shared.logins.admit(peer.ip())).await {
        Admission::Go(ticket) => ticket,
        Admission::Refuse => {
            tracing::info!(%peer, client_id, "too many failed logins from this address; refusing unchecked");
            Metrics::inc(&shared.metrics.logins_throttled);
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::ConnectionRateExceeded)).await;
            return None;
        }
    };
    let authenticator = shared.hooks.authenticator.clone();
    let mut auth_reply = None;
    let auth_method = connect.properties.authentication_method.clone();
    if let Some(method) = &auth_method {
        let Some(mut exchange) = authenticator.start_exchange(method, &client) else {
            tracing::info!(%peer, client_id, method, "unsupported authentication method [MQTT-4.12.0-1]; refusing");
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::BadAuthenticationMethod)).await;
            return None;
        };
        let first = connect.properties.authentication_data.clone();
        let exchange = authenticate_exchange(shared, &mut stream, &mut rbuf, method, exchange.as_mut(), first);
        match Box::pin(tokio::time::timeout(shared.config.connect_timeout, exchange)).await {
            Ok(Ok((data, username))) => {
                auth_reply = data;
                client.username = username.or(client.username);
            }
            Ok(Err(AuthEnd::Refuse(code, why))) => {
                tracing::info!(%peer, client_id, method, code = code.as_u8(), why, "enhanced authentication refused");
                login_failed(shared, &ticket);
                Box::pin(refuse(shared, &mut stream, version, code)).await;
                return None;
            }
            Ok(Err(AuthEnd::Closed)) => return None,
            Err(_) => {
                tracing::info!(%peer, client_id, method, "enhanced authentication timed out; closing");
                return None;
            }
        }
    } else if origin.policy.use_identity_as_username {
        // The verified client certificate is the credential; without one
        // there is no identity to use.
        let Some(identity) = &origin.certificate_identity else {
            tracing::info!(%peer, client_id, "no client certificate to take the user name from; refusing");
            login_failed(shared, &ticket);
            Box::pin(refuse(shared, &mut stream, version, ReasonCode::NotAuthorized)).await;
            return None;
        };
        client.username = Some(identity.clone());
    } else if client.username.is_none() && !origin.policy.allow_anonymous {
        tracing::info!(%peer, client_id, "anonymous client refused on this listener");
        login_failed(shared, &ticket);
        Box::pin(refuse(shared, &mut stream, version, ReasonCode::NotAuthorized)).await;
        return None;
    } else if let Verdict::Deny(code) = authenticator.authenticate(&client, connect.password.as_deref()).await {
        login_failed(shared, &ticket);
        Box::pin(refuse(shared, &mut stream, version, code)).await;
        return None;
    }
    drop(ticket);
    // A will is a publish like any other: one the client may not make is
    // refused up front, as Mosquitto does.
    if let Some(will) = &connect.will
        && !shared.hooks.authorizer.authorize_publish(&client, &will.topic).allowed().await
    {
        tracing::info!(%peer, client_id, username = client.username, topic = %will.topic, "will topic not authorized; refusing");
        Metrics::inc(&shared.metrics.publish_denied);
        Box::pin(refuse(shared, &mut stream, version, ReasonCode::NotAuthorized)).await;
        return None;
    }

    // How long the session outlives the connection: 3.x clean sessions end
    // with it, persistent ones never expire; v5 says so itself (absent = 0).
    let expiry_interval = match version {
        ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => u32::MAX,
    };
    let mut connack = ConnAck { reason_code: ReasonCode::Success, ..Default::default() };
    if version.is_v5() {
        connack.properties.assigned_client_identifier = assigned;
        connack.properties.receive_maximum = Some(shared.config.max_inflight.max(1));
        connack.properties.maximum_packet_size = Some(shared.config.max_packet_size);
        connack.properties.shared_subscription_available = Some(true);
        connack.properties.subscription_identifiers_available = Some(true);
        connack.properties.topic_alias_maximum = Some(shared.config.topic_alias_maximum);
        connack.properties.server_keep_alive = server_keep_alive;
        // Only when asked for [MQTT-3.1.2-28].
        if connect.properties.request_response_information == Some(true)
            && let Some(template) = &shared.config.response_information
        {
            let username = client.username.as_deref().unwrap_or_default();
            connack.properties.response_information =
                Some(template.replace("%c", &client.client_id).replace("%u", username));
        }
        // [MQTT-4.12.0-5]
        connack.properties.authentication_method.clone_from(&auth_method);
        connack.properties.authentication_data = auth_reply;
    }
    if !fit_connack(&mut connack, connect.properties.maximum_packet_size) {
        tracing::info!(%peer, client_id, max = connect.properties.maximum_packet_size, "even a bare CONNACK exceeds the client's Maximum Packet Size [MQTT-3.1.2-24]; closing");
        return None;
    }
    let connection_id = shared.next_connection_id();
    let signal = Arc::new(Signal::default());
    let (session, session_present) =
        shared.attach_session(&client_id, connect.clean_start, expiry_interval, version, connection_id, signal.clone());
    // MQTT 3.1 has no session present flag.
    connack.session_present = session_present && version != ProtocolVersion::V3_1;
    let connack_session_present = connack.session_present;
    let _ = encode(&Packet::ConnAck(connack), version, &mut wbuf);
    Metrics::inc(&shared.metrics.packets_sent);
    shared.metrics.client_connected();
    tracing::debug!(%peer, client_id, username = client.username, ?version, session_present = connack_session_present, "client connected");

    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    // All the rest needs of CONNECT; not kept for the life of the connection.
    let problem_information = connect.properties.request_problem_information != Some(false);
    let serving = {
        let mut conn = Conn {
            shared: shared.clone(),
            session,
            connection_id,
            version,
            will: connect.will.clone().map(Box::new),
            connect_expiry_interval: expiry_interval,
            wbuf,
            sendable: Vec::new(),
            window: usize::from(
                shared.config.max_inflight.max(1).min(connect.properties.receive_maximum.unwrap_or(u16::MAX)),
            ),
            client_max_packet: connect.properties.maximum_packet_size,
            aliases: None,
            client_alias_maximum: connect.properties.topic_alias_maximum.unwrap_or(0),
            refusals: 0,
            client,
            auth: auth_method.map(|method| Box::new(EnhancedAuth { method, exchange: None, data: None })),
            needs_durable: false,
            routed: 0,
            page_in: None,
            outbox: None,
        };
        conn.resend_inflight();
        drop(connect);
        Box::pin(conn.serve_until_closed(stream, rbuf, keep_alive, signal, problem_information))
    };
    Some(serving)
}

/// A connected client.
struct Conn {
    shared: Arc<Shared>,
    session: Arc<Session>,
    connection_id: u64,
    version: ProtocolVersion,
    /// Published if the connection ends without DISCONNECT.
    will: Option<Box<Will>>,
    /// The Session Expiry Interval given at CONNECT.
    connect_expiry_interval: u32,
    /// Bytes owed to the client, written once per loop turn.
    wbuf: BytesMut,
    /// Reused buffer for deliveries taken from the session queue.
    sendable: Vec<Sendable>,
    /// Outbound QoS 1/2 window: ours, lowered to the client's v5 Receive
    /// Maximum [MQTT-3.3.4-9].
    window: usize,
    /// The client's v5 Maximum Packet Size; larger PUBLISH packets are not
    /// sent to it [MQTT-3.1.2-25].
    client_max_packet: Option<u32>,
    /// Topic aliases of this connection, once one is used.
    aliases: Option<Box<Aliases>>,
    client_alias_maximum: u16,
    /// Topics and filters refused on this connection. The 1st, 2nd, 4th,
    /// 8th… are logged at `info`, the rest at `debug`: one SUBSCRIBE of
    /// 100,000 refused filters writes 17 lines, not 100,000.
    refusals: u32,
    /// Who the client is, as the authenticator saw it.
    client: ClientInfo,
    /// Enhanced authentication, if the CONNECT named a method.
    auth: Option<Box<EnhancedAuth>>,
    /// Store writes were made that must be durable before `wbuf` goes out
    /// (it holds their acknowledgements).
    needs_durable: bool,
    /// How many of the packets just handled were routed to subscribers
    /// (saturating): see the yield in `serve`.
    routed: u8,
    /// The session's in-memory queue ran dry with a backlog in the store:
    /// read it from (session, sequence).
    page_in: Option<Refill>,
    /// The run of messages on one topic being routed (see `outbox`),
    /// queued on its sessions by the end of the read at the latest; boxed
    /// on the first message routed (most connections publish little or
    /// nothing).
    outbox: Option<Box<Outbox>>,
}

/// Topic aliases, kept apart from [`Conn`]: most clients never use any.
#[derive(Default)]
struct Aliases {
    /// Set by the client on this connection (v5 section 3.3.2.3.4).
    inbound: HashMap<u16, MqttStr>,
    /// Given by us to topics towards the client, up to its Topic Alias Maximum.
    outbound: HashMap<MqttStr, u16>,
    /// Bytes of the topics in `outbound`, at most [`OUTBOUND_ALIAS_BYTES`].
    outbound_bytes: usize,
}

/// The topic bytes a connection keeps for the aliases it gives out. A
/// client may allow 65,535 aliases and topics may be 64 KiB long: without a
/// bound, one subscriber to `#` would keep up to 4 GiB of other clients'
/// topics alive. Past it, new topics go without an alias, as they would past
/// the client's Topic Alias Maximum.
const OUTBOUND_ALIAS_BYTES: usize = 64 * 1024;

/// A client's enhanced authentication (v5 section 4.12).
struct EnhancedAuth {
    /// The method of the CONNECT.
    method: String,
    /// A re-authentication in progress [MQTT-4.12.1-1].
    exchange: Option<Box<dyn AuthExchange>>,
    /// Data of the client's latest AUTH, for the exchange's next step.
    data: Option<Option<Bytes>>,
}

impl Conn {
    /// Serves the connection until it ends, then says why (MQTT 5) and
    /// closes it.
    ///
    /// An `async` block, not an `async fn`: the arguments of an `async fn`
    /// are moved into its body, so its future holds each of them twice
    /// (the whole `Conn` included) for the life of the connection.
    #[allow(clippy::manual_async_fn)]
    fn serve_until_closed<S>(
        mut self,
        mut stream: S,
        mut rbuf: BytesMut,
        keep_alive: Option<Duration>,
        signal: Arc<Signal>,
        problem_information: bool,
    ) -> impl Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        async move {
            let close = self.serve(&mut stream, &mut rbuf, keep_alive, &signal).await;
            if self.version.is_v5()
                && let Some(reason_code) = close.disconnect_reason()
            {
                // Best effort: the client may be gone or not reading.
                let mut disconnect = Disconnect { reason_code, ..Default::default() };
                // Say why, unless the client asked for no problem information (it
                // may still get one on DISCONNECT [MQTT-3.1.2-29]; we hold back).
                if problem_information {
                    disconnect.properties.reason_string = close.reason_string();
                }
                // Within the client's Maximum Packet Size [MQTT-3.1.2-24]:
                // the Reason String goes first [MQTT-3.14.2-3].
                if let Some(max) = self.client_max_packet
                    && encoded_len(&Packet::Disconnect(disconnect.clone()), self.version) > max as usize
                {
                    disconnect.properties.reason_string = None;
                }
                self.send(&Packet::Disconnect(disconnect));
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), stream.write_all(&self.wbuf))).await;
            }
            // The server ends it: the client may still be sending. (Not at
            // shutdown, which should not wait on clients.)
            let ended_here =
                !matches!(close, Close::PeerClosed | Close::Io(_) | Close::Disconnected(_) | Close::Shutdown);
            self.finish(close);
            let _ = Box::pin(stream.shutdown()).await;
            Metrics::dec(&self.shared.metrics.clients_connected);
            if ended_here {
                Box::pin(linger(&self.shared, &mut stream)).await;
            }
        }
    }

    /// The serving loop. Waits on three things: bytes from the client, the
    /// session's signal (something queued, or go) and the keep-alive timer.
    /// An `async` block for the reason given at `serve_until_closed`.
    #[allow(clippy::manual_async_fn)]
    fn serve<'a, S>(
        &'a mut self,
        stream: &'a mut S,
        rbuf: &'a mut BytesMut,
        keep_alive: Option<Duration>,
        signal: &'a Signal,
    ) -> impl Future<Output = Close> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        async move {
            // The timer is pushed back lazily: reading only stamps
            // `last_packet`; when the timer fires early it is re-armed from there.
            let mut last_packet = Instant::now();
            let timer = tokio::time::sleep(keep_alive.unwrap_or(NEVER));
            tokio::pin!(timer);
            // When the packet now arriving in pieces began, if one is: it
            // must be whole by `packet_due`, or the connection is closed.
            let mut packet_start: Option<Instant> = None;
            let mut busy = false;
            // Told to go before serving started: by shutdown (which signals
            // only connections attached when it began) or a takeover.
            if self.shared.shutdown.is_cancelled() {
                return Close::Shutdown;
            }
            // Clients may send packets right behind CONNECT without waiting
            // for CONNACK (section 3.1.4); they may already be buffered.
            let before = rbuf.len();
            if let Err(close) = self.handle_input(rbuf).await {
                return close;
            }
            self.track_partial(rbuf, before, &mut packet_start, timer.as_mut());
            // Anything already queued for a resumed session goes out now.
            self.drain();
            loop {
                // An atomic load: a client that keeps this loop busy reading
                // still notices a takeover or shutdown.
                if let Some(kick) = signal.kicked() {
                    return kicked(kick);
                }
                if let Some(refill) = self.page_in.take() {
                    if let Err(e) = Box::pin(self.page_in(refill)).await {
                        self.wbuf.clear();
                        return Close::Store(e);
                    }
                    self.drain();
                }
                if self.needs_durable {
                    self.needs_durable = false;
                    if let Some(store) = &self.shared.store
                        && let Err(e) = store.durable().await
                    {
                        // Nothing is acknowledged that is not stored.
                        self.wbuf.clear();
                        return Close::Store(e);
                    }
                }
                if !self.wbuf.is_empty() {
                    // A client that stops reading blocks only itself; it can
                    // still be taken over, shut down or timed out meanwhile.
                    // What it sends meanwhile is read (up to a limit), so a
                    // slow reader's PINGREQs keep it alive [MQTT-3.1.2-24].
                    let n = self.wbuf.len();
                    let mut woken = false;
                    let mut read_meanwhile = false;
                    let mut written = 0;
                    let ended = loop {
                        if let Some(kick) = signal.kicked() {
                            break Some(kicked(kick));
                        }
                        reserve(rbuf, &mut busy);
                        // The write first: it is usually done at once, and the
                        // other two then cost nothing. The timer last: it is
                        // polled (and its waker registered) only when the task
                        // is about to wait; a task that is not waiting needs no
                        // timer to wake it.
                        let progress = tokio::select! {
                            biased;
                            progress = write_or_read(stream, &self.wbuf, &mut written, rbuf) => progress,
                            _ = signal.notified() => {
                                woken = true;
                                continue;
                            }
                            _ = &mut timer, if keep_alive.is_some() || packet_start.is_some() => {
                                if let Some(close) = self.timer_fired(timer.as_mut(), last_packet, keep_alive, packet_start, rbuf) {
                                    break Some(close);
                                }
                                continue;
                            }
                        };
                        match progress {
                            Progress::Written => break None,
                            Progress::Failed(e) | Progress::Read(Err(e)) => break Some(Close::Io(e)),
                            Progress::Read(Ok(0)) => break Some(Close::PeerClosed),
                            Progress::Read(Ok(got)) => {
                                Metrics::add(&self.shared.metrics.bytes_received, got as u64);
                                last_packet = Instant::now();
                                read_meanwhile = true;
                            }
                        }
                    };
                    if let Some(close) = ended {
                        // Part of the buffer may be out: what follows (a
                        // DISCONNECT) must go after that part, not repeat it,
                        // or the client reads a torn stream (found by the
                        // broker fuzz target, a takeover mid-write).
                        let _ = self.wbuf.split_to(written.min(self.wbuf.len()));
                        return close;
                    }
                    Metrics::add(&self.shared.metrics.bytes_sent, n as u64);
                    // A small buffer is let go (an idle client holds none); a
                    // busy client's grown one is kept.
                    if self.wbuf.capacity() <= 256 {
                        self.wbuf = BytesMut::new();
                    } else {
                        self.wbuf.clear();
                    }
                    if woken {
                        // The wake-up was taken while writing; given back, so
                        // the wait below returns at once, after the client's
                        // bytes (reading is never starved by wake-ups).
                        signal.wake();
                    }
                    if read_meanwhile {
                        let before = rbuf.len();
                        if let Err(close) = self.handle_input(rbuf).await {
                            return close;
                        }
                        self.track_partial(rbuf, before, &mut packet_start, timer.as_mut());
                        self.drain();
                        continue;
                    }
                }
                reserve(rbuf, &mut busy);
                // The timer last, as above. A client that keeps sending is
                // not idle, so it never needs its timer checked.
                let event = tokio::select! {
                    biased;
                    read = read_some(stream, rbuf) => Event::Read(read),
                    _ = signal.notified() => Event::Signal,
                    _ = &mut timer, if keep_alive.is_some() || packet_start.is_some() => Event::Timer,
                };
                match event {
                    Event::Read(Ok(0)) => return Close::PeerClosed,
                    Event::Read(Err(e)) => return Close::Io(e),
                    Event::Read(Ok(n)) => {
                        Metrics::add(&self.shared.metrics.bytes_received, n as u64);
                        last_packet = Instant::now();
                        self.routed = 0;
                        let before = rbuf.len();
                        if let Err(close) = self.handle_input(rbuf).await {
                            return close;
                        }
                        self.track_partial(rbuf, before, &mut packet_start, timer.as_mut());
                        if self.routed == 1 && !self.wbuf.is_empty() {
                            // A lone message: deliveries before acknowledgements,
                            // as Mosquitto orders them. Yielding lets the woken
                            // subscribers' tasks write before this task's PUBACK /
                            // PUBREC goes out; a write on loopback runs the
                            // receiver's network stack inline, so acknowledging
                            // first delayed the delivery by ~20 µs at low rates.
                            // Not under load (reads of several messages): there
                            // the acknowledgements wait for the worker to run out
                            // of ready tasks, which cost QoS 2 pairs 17% on one
                            // core and QoS 1 pairs ~15% on two, although QoS 1
                            // fan-in gained 81% (docs/PERFORMANCE.md).
                            tokio::task::yield_now().await;
                        }
                    }
                    Event::Signal => {
                        if let Some(kick) = signal.kicked() {
                            return kicked(kick);
                        }
                    }
                    Event::Timer => {
                        if let Some(close) =
                            self.timer_fired(timer.as_mut(), last_packet, keep_alive, packet_start, rbuf)
                        {
                            return close;
                        }
                    }
                }
                self.drain();
            }
        }
    }

    /// Starts, keeps or ends the deadline of the packet that `rbuf` holds
    /// the first part of, after handling took the whole ones (`rbuf` held
    /// `before` bytes). A packet must be whole within `packet_timeout` plus a
    /// second per KiB it declares: keep-alive counts bytes, so without this a
    /// client trickling a byte at a time would hold its connection forever.
    fn track_partial(
        &self,
        rbuf: &BytesMut,
        before: usize,
        start: &mut Option<Instant>,
        timer: std::pin::Pin<&mut tokio::time::Sleep>,
    ) {
        let Some(timeout) = self.shared.config.packet_timeout else { return };
        if rbuf.is_empty() {
            *start = None;
            return;
        }
        // A packet was taken whole: what is left began with this read.
        if start.is_none() || rbuf.len() < before {
            *start = Some(Instant::now());
        }
        if let Some(start) = *start {
            let due = packet_due(start, timeout, rbuf, self.version);
            if due < timer.deadline() {
                timer.reset(due);
            }
        }
    }

    /// The timer fired: ends the connection if keep-alive expired
    /// [MQTT-3.1.2-24] or the packet under way is overdue, else re-arms it
    /// for the earlier of the two.
    fn timer_fired(
        &self,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
        last_packet: Instant,
        keep_alive: Option<Duration>,
        packet_start: Option<Instant>,
        rbuf: &BytesMut,
    ) -> Option<Close> {
        let now = Instant::now();
        let mut next = now + NEVER;
        if let (Some(start), Some(timeout)) = (packet_start, self.shared.config.packet_timeout) {
            let due = packet_due(start, timeout, rbuf, self.version);
            if now >= due {
                return Some(Close::PacketTimeout {
                    waited: now - start,
                    have: rbuf.len(),
                    declared: declared_length(rbuf, self.version),
                });
            }
            next = next.min(due);
        }
        if let Some(period) = keep_alive {
            if now >= last_packet + period {
                return Some(Close::KeepAliveTimeout);
            }
            next = next.min(last_packet + period);
        }
        timer.as_mut().reset(next);
        None
    }

    /// Handles every complete packet in `rbuf`, then the step of a
    /// re-authentication they asked for.
    ///
    /// Most packets need nothing awaited, and are handled without a future
    /// ([`Conn::handle_ready`]). Only what waits (an authorizer that answers
    /// later, a SUBSCRIBE, a re-authentication step) goes through
    /// [`Conn::handle_deferred`], boxed: its future is large, and an idle
    /// connection would otherwise carry room for it all the time. Boxing it
    /// for every read cost an allocation of over a kilobyte and its copy on
    /// each message's path (docs/PERFORMANCE.md).
    async fn handle_input(&mut self, rbuf: &mut BytesMut) -> Result<(), Close> {
        // Only the box is held across the await: a `Deferred` kept in this
        // future (a PUBLISH is a few hundred bytes) would be room every
        // idle connection carries (0.5 KiB per connection, measured).
        match self.start_deferred(rbuf)? {
            Some(rest) => rest.await,
            None => Ok(()),
        }
    }

    /// [`Conn::handle_ready`], then, if a packet has to wait, the rest of
    /// the handling as a boxed future.
    #[allow(clippy::type_complexity)]
    fn start_deferred<'a>(
        &'a mut self,
        rbuf: &'a mut BytesMut,
    ) -> Result<Option<Pin<Box<impl Future<Output = Result<(), Close>> + 'a>>>, Close> {
        Ok(self.handle_ready(rbuf)?.map(|deferred| Box::pin(self.handle_deferred(deferred, rbuf))))
    }

    /// Handles the complete packets in `rbuf` up to the first whose handling
    /// has to wait, and returns that one.
    ///
    /// The messages routed meanwhile are queued on their subscribers' sessions
    /// before it returns, however it ends: before the acknowledgements go out,
    /// before anything is awaited, and before the connection closes.
    fn handle_ready(&mut self, rbuf: &mut BytesMut) -> Result<Option<Deferred>, Close> {
        let handled = loop {
            match decode(rbuf, self.version, self.shared.config.max_packet_size) {
                Ok(Some(packet)) => {
                    Metrics::inc(&self.shared.metrics.packets_received);
                    if !matches!(packet, Packet::Publish(_)) {
                        // What was routed before it is queued before the
                        // packet acts: a PINGREQ's drain, a SUBSCRIBE's
                        // retained messages, the close a DISCONNECT starts.
                        self.flush_outbox();
                    }
                    match self.handle(packet) {
                        Ok(None) => {}
                        done => break done,
                    }
                }
                Ok(None) => break Ok(self.reauthentication_due().then_some(Deferred::Reauthenticate)),
                Err(e) => break Err(Close::Malformed(e)),
            }
        };
        self.flush_outbox();
        handled
    }

    /// Finishes `deferred`, then handles what follows it in `rbuf`.
    async fn handle_deferred(&mut self, deferred: Deferred, rbuf: &mut BytesMut) -> Result<(), Close> {
        let mut next = Some(deferred);
        while let Some(deferred) = next {
            let done = match deferred {
                Deferred::Publish(publish) => self.publish_when_allowed(publish).await,
                Deferred::Subscribe(subscribe) => self.handle_subscribe(subscribe).await,
                Deferred::Reauthenticate => self.reauthenticate().await,
            };
            if let Err(close) = done {
                self.flush_outbox();
                return Err(close);
            }
            next = self.handle_ready(rbuf)?;
        }
        Ok(())
    }

    fn flush_outbox(&mut self) {
        if let Some(outbox) = &mut self.outbox
            && !outbox.is_empty()
        {
            self.shared.flush(outbox);
        }
    }

    /// Handles one packet from the client, or returns it when its handling
    /// has to wait for something. `Err` ends the connection.
    fn handle(&mut self, packet: Packet) -> Result<Option<Deferred>, Close> {
        let done = match packet {
            Packet::Publish(publish) => return self.handle_publish(publish),
            Packet::PubAck(ack) => {
                self.complete_inflight(ack.packet_id, InflightState::ExpectAck, QoS::AtLeastOnce);
                Ok(())
            }
            Packet::PubRec(ack) if ack.reason_code.is_error() => {
                // A v5 client refused the message: the flow ends here, no
                // PUBREL (v5 section 4.3.3).
                self.complete_inflight(ack.packet_id, InflightState::ExpectAck, QoS::ExactlyOnce);
                Ok(())
            }
            Packet::PubRec(ack) => {
                let found = self.advance_to_pubrel(ack.packet_id);
                let mut pubrel = PubAck::new(ack.packet_id);
                if !found {
                    pubrel.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.send(&Packet::PubRel(pubrel));
                Ok(())
            }
            Packet::PubRel(ack) => {
                // Release the id: a later PUBLISH with it is a new message
                // [MQTT-4.3.3-2]. PUBCOMP even for an unknown id, so the
                // client can finish its flow.
                let known = {
                    let mut state = self.session.state.lock();
                    let known = state.awaiting_rel.remove(ack.packet_id.get());
                    if known
                        && state.stored
                        && let Some(store) = self.shared.store()
                    {
                        // Durable before PUBCOMP: a stale id left after a crash
                        // would swallow the client's next message with it.
                        persist::delete_awaiting_rel(store, state.sid, ack.packet_id.get());
                        self.needs_durable = true;
                    }
                    known
                };
                let mut pubcomp = PubAck::new(ack.packet_id);
                if !known {
                    pubcomp.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.send(&Packet::PubComp(pubcomp));
                Ok(())
            }
            Packet::PubComp(ack) => {
                self.complete_inflight(ack.packet_id, InflightState::ExpectComp, QoS::ExactlyOnce);
                Ok(())
            }
            Packet::Subscribe(subscribe) => return Ok(Some(Deferred::Subscribe(subscribe))),
            Packet::Unsubscribe(unsubscribe) => {
                self.handle_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                // What this client's own earlier publishes routed back to it
                // goes out first, as it would from a broker that writes at once.
                self.drain();
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    // A session that was to end with the connection cannot be
                    // given an expiry at DISCONNECT [MQTT-3.14.2-2].
                    if self.connect_expiry_interval == 0 && expiry != 0 {
                        return Err(Close::ProtocolViolation(
                            ReasonCode::ProtocolError,
                            "session expiry set at DISCONNECT after 0 at CONNECT [MQTT-3.14.2-2]",
                        ));
                    }
                    self.session.state.lock().expiry_interval = expiry;
                }
                Err(Close::Disconnected(disconnect.reason_code))
            }
            Packet::Connect(_) => {
                Err(Close::ProtocolViolation(ReasonCode::ProtocolError, "second CONNECT [MQTT-3.1.0-2]"))
            }
            Packet::Auth(auth) => self.handle_auth(auth),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::ProtocolViolation(ReasonCode::ProtocolError, "a server-to-client packet sent by a client"))
            }
        };
        done.map(|()| None)
    }

    /// A client's AUTH after CONNACK: starts or continues a
    /// re-authentication, whose step runs in [`Conn::reauthenticate`].
    /// Other packets keep flowing meanwhile (v5 section 4.12.1).
    fn handle_auth(&mut self, auth: Auth) -> Result<(), Close> {
        let Some(state) = &mut self.auth else {
            return Err(Close::ProtocolViolation(
                ReasonCode::ProtocolError,
                "AUTH without an authentication method at CONNECT [MQTT-4.12.0-7]",
            ));
        };
        if auth.properties.authentication_method.as_deref() != Some(state.method.as_str()) {
            return Err(Close::ProtocolViolation(
                ReasonCode::ProtocolError,
                "AUTH with another authentication method than CONNECT's [MQTT-4.12.1-1]",
            ));
        }
        if state.data.is_some() {
            return Err(Close::ProtocolViolation(
                ReasonCode::ProtocolError,
                "AUTH before the server answered the previous one (v5 section 4.12)",
            ));
        }
        match (auth.reason_code, state.exchange.is_some()) {
            (ReasonCode::ReAuthenticate, false) => {
                let Some(exchange) = self.shared.hooks.authenticator.start_exchange(&state.method, &self.client) else {
                    return Err(Close::ReauthFailed(ReasonCode::BadAuthenticationMethod));
                };
                state.exchange = Some(exchange);
            }
            (ReasonCode::ContinueAuthentication, true) => {}
            _ => {
                return Err(Close::ProtocolViolation(
                    ReasonCode::ProtocolError,
                    "AUTH 0x19 starts a re-authentication, 0x18 continues one [MQTT-4.12.1-1]",
                ));
            }
        }
        state.data = Some(auth.properties.authentication_data);
        Ok(())
    }

    /// Whether the client's last AUTH asked for a step not yet run.
    fn reauthentication_due(&self) -> bool {
        self.auth.as_ref().is_some_and(|state| state.data.is_some() && state.exchange.is_some())
    }

    /// Runs the step of a re-authentication the client's last AUTH asked for.
    async fn reauthenticate(&mut self) -> Result<(), Close> {
        let Some(state) = &mut self.auth else { return Ok(()) };
        let (Some(data), Some(exchange)) = (state.data.take(), state.exchange.as_mut()) else {
            return Ok(());
        };
        match exchange.step(data).await {
            AuthStep::Continue(challenge) => {
                let packet = auth_packet(ReasonCode::ContinueAuthentication, &state.method, Some(challenge));
                self.send(&packet);
            }
            AuthStep::Success { data, username } => {
                let packet = auth_packet(ReasonCode::Success, &state.method, data);
                state.exchange = None;
                self.send(&packet);
                tracing::debug!(client_id = %self.session.client_id, peer = %self.client.peer, username, "re-authenticated");
                self.client.username = username.or(self.client.username.take());
            }
            AuthStep::Failure(code) => return Err(Close::ReauthFailed(code)),
        }
        Ok(())
    }

    /// Handles a PUBLISH, unless the authorizer answers later: then it is
    /// returned, its topic alias resolved, for [`Conn::publish_when_allowed`].
    fn handle_publish(&mut self, mut publish: Publish) -> Result<Option<Deferred>, Close> {
        Metrics::inc(&self.shared.metrics.publish_received);
        if let Some(alias) = publish.properties.topic_alias.take() {
            // Aliases belong to this connection: resolved here, never forwarded.
            if alias == 0 || alias > self.shared.config.topic_alias_maximum {
                return Err(Close::ProtocolViolation(
                    ReasonCode::TopicAliasInvalid,
                    "topic alias 0 or above the Topic Alias Maximum we announced (v5 section 3.3.2.3.4)",
                ));
            }
            if publish.topic.is_empty() {
                let Some(topic) = self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) else {
                    return Err(Close::ProtocolViolation(
                        ReasonCode::ProtocolError,
                        "topic alias used before it was set (v5 section 3.3.4)",
                    ));
                };
                publish.topic = topic.clone();
            } else {
                self.aliases.get_or_insert_default().inbound.insert(alias, publish.topic.clone());
            }
        } else if publish.topic.is_empty() {
            return Err(Close::ProtocolViolation(
                ReasonCode::ProtocolError,
                "empty topic name without a topic alias (v5 section 3.3.2.1)",
            ));
        }
        if let Err(limit) = self.shared.config.check_topic(&publish.topic) {
            self.refuse_publish_topic(&publish, limit)?;
            return Ok(None);
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(Close::ProtocolViolation(
                ReasonCode::ProtocolError,
                "PUBLISH from a client with a Subscription Identifier [MQTT-3.3.4-6]",
            ));
        }
        // `$SYS` belongs to the broker: clients' publishes there are
        // acknowledged and dropped, as Mosquitto does.
        if publish.topic.starts_with("$SYS") {
            return self.publish_decided(publish, false, true).map(|()| None);
        }
        let answer = match self.shared.hooks.authorizer.authorize_publish(&self.client, &publish.topic) {
            Check::Ready(allowed) => Some(allowed),
            // Dropped unpolled; asked again where it can be awaited.
            Check::Pending(_) => None,
        };
        match answer {
            Some(allowed) => self.publish_decided(publish, true, allowed).map(|()| None),
            None => Ok(Some(Deferred::Publish(publish))),
        }
    }

    /// Counts and logs a topic name or filter of this connection refused
    /// for its depth or length.
    fn refused_topic(&mut self, what: &str, topic: &str, limit: TopicLimit) {
        let refused = self.count_refusal();
        topic_refused(&self.shared, &self.session.client_id, self.client.peer, what, topic, limit, refused);
    }

    /// Counts one more refused topic or filter on this connection; returns
    /// the count, whose powers of two are logged at `info`.
    fn count_refusal(&mut self) -> u32 {
        self.refusals = self.refusals.saturating_add(1);
        self.refusals
    }

    /// Refuses a PUBLISH whose topic name is beyond the topic limits: v5
    /// PUBACK/PUBREC 0x90 (Topic Name invalid) ends its flow, a v5 QoS 0
    /// one is dropped, and 3.x, with no code to say it, loses the connection.
    fn refuse_publish_topic(&mut self, publish: &Publish, limit: TopicLimit) -> Result<(), Close> {
        self.refused_topic("topic name", &publish.topic, limit);
        if !self.version.is_v5() {
            return Err(Close::ProtocolViolation(ReasonCode::TopicNameInvalid, limit.as_str()));
        }
        let ack = |id| {
            let mut ack = PubAck::new(id);
            ack.reason_code = ReasonCode::TopicNameInvalid;
            ack
        };
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(ack(id))),
            // A PUBREC with an error ends the flow: no PUBREL follows (v5 section 4.3.3).
            (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(ack(id))),
            (_, None) => {
                return Err(Close::ProtocolViolation(
                    ReasonCode::ProtocolError,
                    "QoS > 0 PUBLISH without packet id [MQTT-2.3.1-1]",
                ));
            }
        }
        Ok(())
    }

    /// Finishes a PUBLISH whose authorization has to be awaited.
    async fn publish_when_allowed(&mut self, publish: Publish) -> Result<(), Close> {
        let allowed = self.shared.hooks.authorizer.authorize_publish(&self.client, &publish.topic).allowed().await;
        self.publish_decided(publish, true, allowed)
    }

    /// Routes and acknowledges a PUBLISH once it is known whether it may be
    /// (`allowed`) and whether it is routed at all (`route`).
    fn publish_decided(&mut self, publish: Publish, mut route: bool, allowed: bool) -> Result<(), Close> {
        if !allowed {
            // 3.1.1 has no way to say no: the message is dropped silently.
            Metrics::inc(&self.shared.metrics.publish_denied);
            tracing::debug!(client_id = %self.session.client_id, username = self.client.username, topic = %publish.topic, "publish not authorized");
            route = false;
        }
        // What this publish stored must be durable before its PUBACK/PUBREC.
        self.needs_durable |= publish.qos != QoS::AtMostOnce;
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                if route {
                    self.route(publish);
                }
            }
            (QoS::AtLeastOnce, Some(id)) => {
                let matched = if route { self.route(publish) } else { 1 };
                let ack = if allowed { self.publish_ack(id, matched) } else { self.denied_ack(id) };
                self.send(&Packet::PubAck(ack));
            }
            (QoS::ExactlyOnce, Some(id)) if !allowed && self.version.is_v5() => {
                // A PUBREC with an error ends the flow: no PUBREL follows
                // (v5 section 4.3.3), so nothing awaits one.
                self.send(&Packet::PubRec(self.denied_ack(id)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // A PUBLISH re-sent before PUBREL is acknowledged again but
                // not delivered again [MQTT-4.3.3-2].
                let (first, pending) = {
                    let mut state = self.session.state.lock();
                    let first = state.awaiting_rel.insert(id.get());
                    if first
                        && state.stored
                        && let Some(store) = self.shared.store()
                    {
                        // So a PUBLISH re-sent after a restart is not routed twice.
                        persist::put_awaiting_rel(store, state.sid, id.get());
                    }
                    (first, state.awaiting_rel.len())
                };
                if self.version.is_v5() && pending > usize::from(self.shared.config.max_inflight) {
                    return Err(Close::ProtocolViolation(
                        ReasonCode::ReceiveMaximumExceeded,
                        "more QoS 2 publishes awaiting PUBREL than Receive Maximum [MQTT-3.3.4-7]",
                    ));
                }
                let matched = if first && route { self.route(publish) } else { 1 };
                self.send(&Packet::PubRec(self.publish_ack(id, matched)));
            }
            (_, None) => {
                return Err(Close::ProtocolViolation(
                    ReasonCode::ProtocolError,
                    "QoS > 0 PUBLISH without packet id [MQTT-2.3.1-1]",
                ));
            }
        }
        Ok(())
    }

    /// PUBACK/PUBREC for an accepted message; v5 says when nobody was
    /// subscribed (0x10).
    fn publish_ack(&self, id: PacketId, matched: usize) -> PubAck {
        let mut ack = PubAck::new(id);
        if matched == 0 && self.version.is_v5() {
            ack.reason_code = ReasonCode::NoMatchingSubscribers;
        }
        ack
    }

    /// PUBACK/PUBREC for a publish the authorizer refused: 0x87 for v5, a
    /// plain acknowledgement for 3.x, which has no code for it.
    fn denied_ack(&self, id: PacketId) -> PubAck {
        let mut ack = PubAck::new(id);
        if self.version.is_v5() {
            ack.reason_code = ReasonCode::NotAuthorized;
        }
        ack
    }

    /// Routes a client's message; returns how many sessions it matched.
    fn route(&mut self, publish: Publish) -> usize {
        let message = Message::new(publish.topic, publish.payload, publish.qos, publish.retain, publish.properties);
        let outbox = self.outbox.get_or_insert_default();
        let matched = self.shared.publish_from(message, &self.session, outbox);
        if matched > 0 {
            self.routed = self.routed.saturating_add(1);
        }
        matched
    }

    async fn handle_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Close> {
        let mut reason_codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut granted = Vec::new();
        for sub in &subscribe.subscriptions {
            let shared = topic::SharedFilter::parse(&sub.topic_filter);
            if let Ok(Some(_)) = shared
                && sub.options.no_local
            {
                return Err(Close::ProtocolViolation(
                    ReasonCode::ProtocolError,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                ));
            }
            let valid = match shared {
                Ok(Some(_)) => true,
                Ok(None) => topic::validate_topic_filter(&sub.topic_filter).is_ok(),
                Err(_) => false,
            };
            // Refused alike: a filter that breaks the spec's rules, and one
            // beyond the depth and length limits (counted and logged apart).
            let refused = if !valid {
                let refused = self.count_refusal();
                if refused.is_power_of_two() {
                    tracing::info!(client_id = %self.session.client_id, peer = %self.client.peer, filter = sub.topic_filter, refused, "invalid topic filter [MQTT-4.7.1-1]");
                }
                true
            } else if let Err(limit) = self.shared.config.check_topic(&sub.topic_filter) {
                self.refused_topic("topic filter", &sub.topic_filter, limit);
                true
            } else {
                false
            };
            if refused {
                if self.version == ProtocolVersion::V3_1 {
                    // MQTT 3.1 SUBACK has no failure code.
                    return Err(Close::ProtocolViolation(
                        ReasonCode::ProtocolError,
                        "invalid topic filter [MQTT-4.7.1-1]",
                    ));
                }
                reason_codes.push(if self.version.is_v5() {
                    ReasonCode::TopicFilterInvalid
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            if !self.shared.hooks.authorizer.authorize_subscribe(&self.client, &sub.topic_filter).allowed().await {
                Metrics::inc(&self.shared.metrics.subscribe_denied);
                tracing::debug!(client_id = %self.session.client_id, username = self.client.username, filter = sub.topic_filter, "subscription not authorized");
                reason_codes.push(if self.version.is_v5() {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let grant = Grant { options: sub.options, identifier: subscribe.properties.subscription_identifier };
            let Some(existed) = self.shared.subscribe(&self.session, &sub.topic_filter, grant) else {
                reason_codes.push(ReasonCode::UnspecifiedError);
                continue;
            };
            reason_codes.push(ReasonCode::granted(sub.options.qos));
            // v5 Retain Handling: 0 always send retained messages, 1 only for
            // a new subscription, 2 never (v5 section 3.8.3.1).
            let send_retained = match sub.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for a shared subscription
            // (v5 section 4.8.2).
            if send_retained && !matches!(shared, Ok(Some(_))) {
                granted.push(sub);
            }
        }
        let suback = SubAck { packet_id: subscribe.packet_id, properties: AckProperties::default(), reason_codes };
        self.send(&Packet::SubAck(suback));
        // Retained messages follow the SUBACK, flagged RETAIN=1 [MQTT-3.3.1-6], [MQTT-3.3.1-8].
        let subscription_ids: Vec<u32> = subscribe.properties.subscription_identifier.into_iter().collect();
        let mut work = 0;
        for sub in granted {
            let (messages, visited) = self.shared.retained_matching(&sub.topic_filter);
            for message in messages {
                let qos = message.qos.min(sub.options.qos);
                let subscription_ids = subscription_ids.clone();
                let delivery = Delivery { message, qos, retain: true, subscription_ids, shared: None, seq: 0 };
                self.session.enqueue(delivery, &self.shared.config, self.shared.store());
            }
            // A `+` level looks through every child of its level: many
            // filters against many retained messages are seconds of work.
            // Other clients get the thread between slices of it.
            work += visited;
            if work >= RETAINED_WORK_SLICE {
                work = 0;
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let reason_codes = unsubscribe
            .topic_filters
            .iter()
            .map(|filter| {
                // Nothing so deep or long was subscribed: refused unsearched.
                if let Err(limit) = self.shared.config.check_topic(filter) {
                    self.refused_topic("topic filter", filter, limit);
                    ReasonCode::TopicFilterInvalid
                } else if self.shared.unsubscribe(&self.session, filter) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect::<Vec<_>>();
        // UNSUBACK even if nothing matched [MQTT-3.10.4-5].
        let unsuback =
            UnsubAck { packet_id: unsubscribe.packet_id, properties: AckProperties::default(), reason_codes };
        self.send(&Packet::UnsubAck(unsuback));
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a flow and frees its slot.
    fn complete_inflight(&mut self, id: PacketId, expected: InflightState, qos: QoS) {
        let mut state = self.session.state.lock();
        if let Some(i) = state.inflight_position(id)
            && let Some(entry) = state.inflight.get(i)
            && entry.state == expected
            && entry.delivery.qos == qos
        {
            state.remove_inflight(i, self.shared.store());
        }
    }

    /// PUBREC: the message is delivered; PUBREL follows. True if known.
    fn advance_to_pubrel(&mut self, id: PacketId) -> bool {
        let mut state = self.session.state.lock();
        let sid = state.sid;
        match state.inflight_position(id).and_then(|i| state.inflight.get_mut(i)) {
            Some(entry) if entry.delivery.qos == QoS::ExactlyOnce => {
                entry.state = InflightState::ExpectComp;
                if let (Some(store), seq @ 1..) = (self.shared.store(), entry.delivery.seq) {
                    persist::put_inflight(store, sid, seq, id, InflightState::ExpectComp);
                }
                true
            }
            _ => false,
        }
    }

    /// After a reconnect, unacknowledged PUBLISH packets go out again with
    /// DUP=1 and PUBREL packets are re-sent, in their original order
    /// [MQTT-4.4.0-1].
    fn resend_inflight(&mut self) {
        let now = std::time::Instant::now();
        let state = self.session.state.lock();
        let mut out = std::mem::take(&mut self.wbuf);
        for entry in &state.inflight {
            match entry.state {
                InflightState::ExpectAck => {
                    let view = delivery_view(&entry.delivery, Some(entry.packet_id), true, now);
                    let _ = encode_publish_view(&view, self.version, &mut out);
                }
                InflightState::ExpectComp => {
                    let _ = encode(&Packet::PubRel(PubAck::new(entry.packet_id)), self.version, &mut out);
                }
            }
        }
        drop(state);
        self.wbuf = out;
    }

    /// Reads the next part of the session's backlog from the store into its
    /// in-memory queue.
    async fn page_in(&mut self, refill: Refill) -> Result<(), StoreError> {
        let Some(store) = self.shared.store.clone() else { return Ok(()) };
        let limit = self.shared.config.max_queued_in_memory.max(1);
        let (start, end) = (persist::queue_key(refill.sid, refill.from), persist::queue_key(refill.sid, refill.to));
        let records = store.scan(Table::Queue, start, end, limit).await?;
        let complete = records.len() < limit;
        let mut read = Vec::with_capacity(records.len());
        for (key, value) in records {
            let record = persist::read_queued(&key, value).map_err(|e| {
                StoreError(format!("the store's queue table has a record it cannot read (key {key:02x?}): {e}"))
            })?;
            read.push(record);
        }
        let deliveries: Vec<Delivery> = {
            let router = self.shared.router.read();
            let groups = |name: &str| router.group(name);
            read.into_iter().map(|record| record.into_delivery(&groups)).collect()
        };
        let mut state = self.session.state.lock();
        if state.sid == refill.sid && !state.discarded {
            state.refill(refill, complete, deliveries);
        }
        Ok(())
    }

    /// Moves what the in-flight window allows from the session queue to `wbuf`.
    fn drain(&mut self) {
        let now = std::time::Instant::now();
        {
            let mut state = self.session.state.lock();
            if !state.is_owned_by(self.connection_id) {
                return;
            }
            if state.take_sendable(self.window, now, &mut self.sendable, self.shared.store()) {
                self.needs_durable = true;
            }
            self.page_in = state.refill_from(self.window);
        }
        let mut sent = 0;
        let mut sendable = std::mem::take(&mut self.sendable);
        for item in sendable.drain(..) {
            match item {
                Sendable::One(d, packet_id) => {
                    if self.may_read(&d.message.topic, packet_id, 1) {
                        let copy = self.write_copy(&d.message, d.qos, d.retain, &d.subscription_ids, packet_id, now);
                        sent += u64::from(copy);
                    }
                }
                Sendable::Run(run) => {
                    // One topic for the whole run: asked once.
                    if !run.topic().is_some_and(|topic| self.may_read(topic, None, run.len())) {
                        continue;
                    }
                    for message in run.messages() {
                        if message.is_expired(now) {
                            continue;
                        }
                        let retain = run.retain(message);
                        sent += u64::from(self.write_copy(
                            message,
                            QoS::AtMostOnce,
                            retain,
                            &run.subscription_ids,
                            None,
                            now,
                        ));
                    }
                }
            }
        }
        self.sendable = sendable;
        if sent > 0 {
            Metrics::add(&self.shared.metrics.publish_sent, sent);
            Metrics::add(&self.shared.metrics.packets_sent, sent);
        }
    }

    /// Whether the client may read `topic`: a subscriber never receives a
    /// topic it may not read, whatever its filter matched (a `#`
    /// subscription included). If not, its `copies` are dropped.
    fn may_read(&self, topic: &MqttStr, packet_id: Option<PacketId>, copies: usize) -> bool {
        if self.shared.hooks.authorizer.authorize_read(&self.client, topic) {
            return true;
        }
        for _ in 0..copies {
            self.discard(packet_id, &self.shared.metrics.delivery_denied);
        }
        false
    }

    /// Writes one copy of `message` to `wbuf`, unless it is larger than the
    /// client accepts; returns whether it did.
    fn write_copy(
        &mut self,
        message: &Message,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        packet_id: Option<PacketId>,
        now: std::time::Instant,
    ) -> bool {
        let mut view = publish_view(message, qos, retain, subscription_ids, packet_id, false, now);
        if self.version.is_v5() {
            let new_alias = self.apply_outbound_alias(&mut view, &message.topic);
            if let Some(max) = self.client_max_packet
                && publish_view_encoded_len(&view, self.version) > max as usize
            {
                self.discard(packet_id, &self.shared.metrics.dropped_too_large);
                return false;
            }
            // The client learns an alias only from a packet it receives.
            if let Some(alias) = new_alias {
                let aliases = self.aliases.get_or_insert_default();
                aliases.outbound.insert(message.topic.clone(), alias);
                aliases.outbound_bytes += message.topic.len();
            }
        }
        let _ = encode_publish_view(&view, self.version, &mut self.wbuf);
        true
    }

    /// Uses a topic alias towards a v5 client that accepts them: a topic
    /// seen before goes as an empty topic with its alias; a new one gets the
    /// next free alias, returned for recording once the packet is sent.
    fn apply_outbound_alias(&self, view: &mut PublishView<'_>, topic: &MqttStr) -> Option<u16> {
        if self.client_alias_maximum == 0 {
            return None;
        }
        let outbound = self.aliases.as_ref().map(|a| &a.outbound);
        if let Some(&alias) = outbound.and_then(|o| o.get(topic)) {
            view.topic_alias = Some(alias);
            view.topic = "";
            return None;
        }
        let next = u16::try_from(outbound.map_or(0, HashMap::len) + 1).ok()?;
        if next > self.client_alias_maximum {
            return None;
        }
        let kept = self.aliases.as_ref().map_or(0, |a| a.outbound_bytes);
        if kept + topic.len() > OUTBOUND_ALIAS_BYTES {
            return None;
        }
        view.topic_alias = Some(next);
        Some(next)
    }

    /// Drops a message the client may not get, as if it had been delivered:
    /// larger than it accepts [MQTT-3.1.2-25], or a topic it may not read.
    fn discard(&self, packet_id: Option<PacketId>, counter: &std::sync::atomic::AtomicU64) {
        Metrics::inc(counter);
        if let Some(id) = packet_id {
            let mut state = self.session.state.lock();
            if let Some(i) = state.inflight_position(id) {
                state.remove_inflight(i, self.shared.store());
            }
        }
    }

    fn send(&mut self, packet: &Packet) {
        Metrics::inc(&self.shared.metrics.packets_sent);
        if let Err(e) = encode(packet, self.version, &mut self.wbuf) {
            tracing::error!(client_id = %self.session.client_id, error = %e, packet = packet.name(), "cannot encode");
        }
    }

    /// Logs why the connection ended, publishes the will when owed, and
    /// detaches from the session.
    fn finish(&mut self, close: Close) {
        let client_id = &self.session.client_id;
        let peer = self.client.peer;
        let publish_will = match &close {
            Close::Disconnected(reason) => *reason == ReasonCode::DisconnectWithWillMessage,
            Close::Kicked(Kick::TakenOver { publish_will }) => {
                tracing::info!(%client_id, %peer, "session taken over by a new connection [MQTT-3.1.4-2]");
                *publish_will
            }
            Close::Shutdown | Close::Kicked(Kick::Shutdown) => false,
            Close::PeerClosed => {
                tracing::debug!(%client_id, %peer, "connection closed by client without DISCONNECT");
                true
            }
            Close::Io(e) => {
                tracing::debug!(%client_id, %peer, error = %e, "connection failed");
                true
            }
            Close::KeepAliveTimeout => {
                tracing::info!(%client_id, %peer, "keep-alive expired [MQTT-3.1.2-24]; closing");
                true
            }
            Close::PacketTimeout { waited, have, declared } => {
                Metrics::inc(&self.shared.metrics.packet_timeouts);
                tracing::info!(%client_id, %peer, ?waited, have, declared, "packet not completed in time; closing");
                true
            }
            Close::Malformed(e) => {
                Metrics::inc(&self.shared.metrics.protocol_errors);
                tracing::warn!(%client_id, %peer, error = %e, "malformed packet; closing");
                true
            }
            Close::ProtocolViolation(_, rule) => {
                Metrics::inc(&self.shared.metrics.protocol_errors);
                tracing::warn!(%client_id, %peer, rule, "protocol violation; closing");
                true
            }
            Close::ReauthFailed(code) => {
                tracing::info!(%client_id, %peer, code = code.as_u8(), "re-authentication failed [MQTT-4.12.1-2]; closing");
                true
            }
            Close::Store(e) => {
                tracing::error!(%client_id, %peer, error = %e, "the store failed; closing without acknowledging");
                true
            }
        };
        // The will goes out like any PUBLISH, retained if asked [MQTT-3.1.2-8],
        // [MQTT-3.1.2-17]; a v5 Will Delay Interval holds it back.
        let will = self.will.take().filter(|_| publish_will).map(|will| {
            let delay = Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
            let properties = will_properties(&will);
            (Message::new(will.topic, will.payload, will.qos, will.retain, properties), delay)
        });
        self.shared.detach_session(&self.session, self.connection_id, will);
    }
}

/// Makes a v5 CONNACK fit the client's Maximum Packet Size, which bounds
/// every packet the server sends it [MQTT-3.1.2-24]: first without what
/// its absence says as well (the `*_available` flags default to true) and
/// the Reason String and User Properties [MQTT-3.2.2-19] [MQTT-3.2.2-20],
/// then without the server's informational limits. False if it still does
/// not fit: the client cannot be told even that it is connected.
fn fit_connack(connack: &mut ConnAck, max: Option<u32>) -> bool {
    let Some(max) = max.map(|max| usize::try_from(max).unwrap_or(usize::MAX)) else { return true };
    let fits = |c: &ConnAck| encoded_len(&Packet::ConnAck(c.clone()), ProtocolVersion::V5) <= max;
    if fits(connack) {
        return true;
    }
    let p = &mut connack.properties;
    p.shared_subscription_available = None;
    p.subscription_identifiers_available = None;
    p.reason_string = None;
    p.user_properties.clear();
    if fits(connack) {
        return true;
    }
    let p = &mut connack.properties;
    p.response_information = None;
    p.maximum_packet_size = None;
    p.topic_alias_maximum = None;
    p.receive_maximum = None;
    fits(connack)
}

/// A timer's wait when nothing is due: a year.
const NEVER: Duration = Duration::from_secs(86400 * 365);

/// The bytes per second a packet arriving in pieces is granted on top of
/// `packet_timeout`: a second per KiB it declares.
const PACKET_MIN_RATE: u64 = 1024;

/// The remaining length the fixed header at the start of `rbuf` declares,
/// once its bytes are in.
fn declared_length(rbuf: &[u8], version: ProtocolVersion) -> Option<u32> {
    fixed_header(rbuf, version).ok().flatten().map(|(remaining, _)| remaining)
}

/// When a packet that began at `start` must be whole.
fn packet_due(start: Instant, timeout: Duration, rbuf: &[u8], version: ProtocolVersion) -> Instant {
    let declared = declared_length(rbuf, version).map_or(0, u64::from);
    start + timeout + Duration::from_secs(declared / PACKET_MIN_RATE)
}

/// The close for a kick.
fn kicked(kick: Kick) -> Close {
    match kick {
        Kick::Shutdown => Close::Shutdown,
        kick => Close::Kicked(kick),
    }
}

fn will_properties(will: &Will) -> midge_codec::PublishProperties {
    midge_codec::PublishProperties {
        payload_format_indicator: will.properties.payload_format_indicator,
        message_expiry_interval: will.properties.message_expiry_interval,
        response_topic: will.properties.response_topic.clone(),
        correlation_data: will.properties.correlation_data.clone(),
        user_properties: will.properties.user_properties.clone(),
        content_type: will.properties.content_type.clone(),
        ..Default::default()
    }
}

/// The PUBLISH of one delivery, borrowed from the shared message: nothing
/// is built or copied per copy but the bytes written. Building a `Publish`
/// per copy cloned the message's properties (8% of the broker's CPU in QoS 0
/// fan-out to 100 subscribers) and touched the reference counts of its topic
/// and payload, which every subscriber's thread shares. For MQTT 5 it carries
/// the delivery's Subscription Identifiers [MQTT-3.3.4-3] and what is left of
/// the Message Expiry Interval [MQTT-3.3.2-6]; 3.x encodes no properties.
fn delivery_view(
    delivery: &Delivery,
    packet_id: Option<PacketId>,
    dup: bool,
    now: std::time::Instant,
) -> PublishView<'_> {
    publish_view(&delivery.message, delivery.qos, delivery.retain, &delivery.subscription_ids, packet_id, dup, now)
}

fn publish_view<'a>(
    message: &'a Message,
    qos: QoS,
    retain: bool,
    subscription_identifiers: &'a [u32],
    packet_id: Option<PacketId>,
    dup: bool,
    now: std::time::Instant,
) -> PublishView<'a> {
    let message_expiry_interval = message.expires_at.map(|expires_at| {
        let left = expires_at.saturating_duration_since(now);
        // Rounded up, so a message with time left never reads as expired.
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
    });
    PublishView {
        dup,
        qos,
        retain,
        packet_id,
        properties: message.properties.as_deref(),
        message_expiry_interval,
        subscription_identifiers,
        ..PublishView::new(&message.topic, &message.payload)
    }
}

/// Counts and logs a topic name or filter refused for its depth or length.
/// The topic itself is not logged: it may be 64 KiB of a peer's choosing.
/// `refused` is how many this connection has had refused, this one included.
fn topic_refused(
    shared: &Shared,
    client_id: &str,
    peer: SocketAddr,
    what: &str,
    topic: &str,
    limit: TopicLimit,
    refused: u32,
) {
    Metrics::inc(&shared.metrics.topics_refused);
    let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
    let prefix = topic.char_indices().nth(64).map_or(topic, |(end, _)| topic.get(..end).unwrap_or(topic));
    let limit = limit.as_str();
    if refused.is_power_of_two() {
        tracing::info!(client_id, %peer, bytes = topic.len(), levels, prefix, refused, "{what} beyond {limit}; refused");
    } else {
        tracing::debug!(client_id, %peer, bytes = topic.len(), levels, prefix, refused, "{what} beyond {limit}; refused");
    }
}
