//! The client handle, its events, and the task that drives the connection.
//!
//! ```text
//!  Client::publish/subscribe ──Request──▶ driver task ──encode──▶ transport
//!  Events::recv ◀──Event (Message, Reconnected, Disconnected)── driver ◀──decode── transport
//! ```
//!
//! One task owns the connection and all session state (packet ids, QoS 1/2
//! messages awaiting acknowledgement, QoS 2 messages received but not
//! released, subscriptions), so nothing is shared behind a lock. When the
//! connection is lost that state survives the socket: on reconnect the
//! unacknowledged publishes are sent again with DUP and the same packet id,
//! PUBRELs are repeated, and subscriptions the broker forgot are renewed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use midge_codec::{
    ConnAck, Connect, ConnectProperties, Disconnect, DisconnectProperties, Packet, PacketId, ProtocolVersion, PubAck,
    Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
    Unsubscribe, decode, encode,
};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::tls;
use crate::transport::{self, Io};

/// An application message: what is published, and what a subscription delivers.
///
/// ```
/// use midge_client::{Message, QoS};
///
/// let message = Message::new("sensors/temperature", "21.5").qos(QoS::AtLeastOnce).retain(true);
/// assert_eq!(&message.payload[..], b"21.5");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload (any bytes).
    pub payload: Bytes,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag: as published, or set on delivery of a retained message.
    pub retain: bool,
    /// DUP flag of a delivered message (it may have been delivered before).
    pub dup: bool,
    /// v5 properties (user properties, response topic, correlation data,
    /// content type, message expiry, subscription identifiers).
    pub properties: PublishProperties,
}

impl Message {
    /// A QoS 0, not retained message.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message { topic: topic.into(), payload: payload.into(), ..Message::default() }
    }

    /// Sets the QoS.
    pub fn qos(mut self, qos: QoS) -> Message {
        self.qos = qos;
        self
    }

    /// Sets the retain flag.
    pub fn retain(mut self, retain: bool) -> Message {
        self.retain = retain;
        self
    }

    /// Sets the v5 properties.
    pub fn properties(mut self, properties: PublishProperties) -> Message {
        self.properties = properties;
        self
    }
}

/// What the client reports, in order, through [`Events`].
#[derive(Debug, Clone)]
pub enum Event {
    /// A message arrived on a subscription.
    Message(Message),
    /// The client connected again after a loss; `session_present` says
    /// whether the broker had kept the session.
    Reconnected {
        /// CONNACK's session present flag.
        session_present: bool,
    },
    /// The connection was lost; with reconnect on, the client is trying again.
    Disconnected(ClientError),
    /// An attempt to reconnect failed; the client tries again after a delay.
    ReconnectFailed(ClientError),
}

/// The receiving side of a client: messages and connection events, in
/// order. Also a [`futures_util::Stream`] of [`Event`]s. Ends (`None`)
/// when the client has stopped for good.
///
/// If events are not read, the client stops reading from the broker once
/// 1024 are waiting: back-pressure, rather than unbounded memory.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next message, skipping connection events.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Event::Message(message) = self.rx.recv().await? {
                return Some(message);
            }
        }
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A publish accepted by the client, not yet acknowledged: await
/// [`Delivery::wait`] for the outcome.
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Result<(), ClientError>>,
}

impl Delivery {
    /// Waits until the message is written (QoS 0), acknowledged by PUBACK
    /// (QoS 1) or PUBCOMP (QoS 2).
    pub async fn wait(self) -> Result<(), ClientError> {
        self.rx.await.unwrap_or(Err(ClientError::Shutdown))
    }
}

/// A handle on an MQTT connection; cheap to clone. Requests go to the task
/// that drives the connection; it stops when [`Client::disconnect`] is
/// called, or when every `Client` and the [`Events`] are dropped.
///
/// ```no_run
/// use midge_client::{Client, ConnectOptions, Message, QoS};
///
/// # async fn run() -> Result<(), midge_client::ClientError> {
/// let (client, mut events) = Client::connect(ConnectOptions::new("localhost", 1883)).await?;
/// client.subscribe("hello/#", QoS::AtLeastOnce).await?;
/// client.publish(Message::new("hello/world", "hi").qos(QoS::AtLeastOnce)).await?;
/// if let Some(message) = events.next_message().await {
///     println!("{} {:?}", message.topic, message.payload);
/// }
/// client.disconnect().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    connack: Arc<ConnAck>,
}

#[derive(Debug)]
enum Request {
    Publish { message: Message, reply: oneshot::Sender<Result<(), ClientError>> },
    Control(Control),
    Disconnect { properties: DisconnectProperties, reply: oneshot::Sender<()> },
}

/// SUBSCRIBE or UNSUBSCRIBE, waiting for its acknowledgement.
#[derive(Debug)]
struct Control {
    kind: ControlKind,
    /// None for the subscriptions the client renews by itself.
    reply: Option<oneshot::Sender<Result<Vec<ReasonCode>, ClientError>>>,
}

#[derive(Debug, Clone)]
enum ControlKind {
    Subscribe(Vec<Subscription>, SubscribeProperties),
    Unsubscribe(Vec<String>),
}

impl Client {
    /// Connects (transport, CONNECT, CONNACK) and starts the task that
    /// drives the connection. The first connection is not retried: a wrong
    /// address or a refusal is returned here.
    pub async fn connect(options: ConnectOptions) -> Result<(Client, Events), ClientError> {
        let tls = options.transport.tls().map(tls::client_config).transpose()?;
        let (connection, connack) = handshake(&options, tls.as_ref(), options.clean_start).await?;
        let (requests_tx, requests) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(options.event_capacity);
        let connack = Arc::new(connack);
        let driver = Driver {
            max_inflight: inflight_limit(&options, &connack),
            options,
            tls,
            requests,
            requests_open: true,
            events: events_tx,
            next_packet_id: 1,
            outgoing: Vec::new(),
            queue: VecDeque::new(),
            controls: Vec::new(),
            unsent_controls: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            subscriptions: Vec::new(),
            server_aliases: HashMap::new(),
        };
        tokio::spawn(driver.run(connection));
        Ok((Client { requests: requests_tx, connack }, Events { rx: events }))
    }

    /// The CONNACK of the first connection (session present flag, v5
    /// properties such as an assigned client identifier).
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    /// Publishes and waits for the outcome: written (QoS 0), PUBACK (QoS 1)
    /// or PUBCOMP (QoS 2). While the client is offline the message waits in
    /// the offline buffer.
    pub async fn publish(&self, message: Message) -> Result<(), ClientError> {
        self.publish_queued(message).await?.wait().await
    }

    /// Hands a message to the client and returns once it is queued, so
    /// several publishes can be in flight at once.
    pub async fn publish_queued(&self, message: Message) -> Result<Delivery, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Publish { message, reply }).await.map_err(|_| ClientError::Shutdown)?;
        Ok(Delivery { rx })
    }

    /// Subscribes to one topic filter; returns the broker's SUBACK code (the
    /// granted QoS, or a failure code).
    pub async fn subscribe(&self, topic_filter: impl Into<String>, qos: QoS) -> Result<ReasonCode, ClientError> {
        let options = SubscriptionOptions { qos, ..SubscriptionOptions::default() };
        let codes = self
            .subscribe_many(
                vec![Subscription { topic_filter: topic_filter.into(), options }],
                SubscribeProperties::default(),
            )
            .await?;
        codes.first().copied().ok_or_else(|| ClientError::Protocol("SUBACK without a reason code".into()))
    }

    /// Subscribes to several filters with v5 options and properties in one
    /// SUBSCRIBE; returns SUBACK's codes, one per filter. The client renews
    /// the subscriptions itself if a reconnect finds the session gone.
    pub async fn subscribe_many(
        &self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        self.control(ControlKind::Subscribe(subscriptions, properties)).await
    }

    /// Unsubscribes; returns UNSUBACK's codes (empty for 3.x).
    pub async fn unsubscribe(&self, topic_filters: Vec<String>) -> Result<Vec<ReasonCode>, ClientError> {
        self.control(ControlKind::Unsubscribe(topic_filters)).await
    }

    async fn control(&self, kind: ControlKind) -> Result<Vec<ReasonCode>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Control(Control { kind, reply: Some(reply) }))
            .await
            .map_err(|_| ClientError::Shutdown)?;
        rx.await.unwrap_or(Err(ClientError::Shutdown))
    }

    /// Sends DISCONNECT (normal disconnection: the will is not published)
    /// and closes the connection; requests still waiting fail with
    /// [`ClientError::Shutdown`].
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(DisconnectProperties::default()).await
    }

    /// [`Client::disconnect`] with v5 DISCONNECT properties (a new session
    /// expiry interval, say).
    pub async fn disconnect_with(&self, properties: DisconnectProperties) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Disconnect { properties, reply }).await.map_err(|_| ClientError::Shutdown)?;
        let _ = rx.await;
        Ok(())
    }
}

fn inflight_limit(options: &ConnectOptions, connack: &ConnAck) -> usize {
    let broker = connack.properties.receive_maximum.unwrap_or(u16::MAX);
    usize::from(options.max_inflight.min(broker))
}

/// One open connection: the stream and its buffers.
struct Connection {
    stream: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
    /// When we last sent anything (keep-alive counts from it).
    last_sent: Instant,
    /// When we sent a PINGREQ still unanswered.
    ping_sent: Option<Instant>,
}

impl Connection {
    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.write.clear();
        encode(packet, self.version, &mut self.write)?;
        tracing::trace!(packet = packet.name(), "sending");
        self.stream.write_all(&self.write).await.map_err(|e| ClientError::io("writing to the broker", e))?;
        self.stream.flush().await.map_err(|e| ClientError::io("writing to the broker", e))?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet. Cancel-safe: partial input stays in `read`.
    async fn next_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = decode(&mut self.read, self.version, self.max_packet_size)? {
                return Ok(packet);
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(|e| ClientError::io("reading from the broker", e))?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

/// Opens the transport and exchanges CONNECT / CONNACK.
async fn handshake(
    options: &ConnectOptions,
    tls: Option<&Arc<ClientConfig>>,
    clean_start: bool,
) -> Result<(Connection, ConnAck), ClientError> {
    let attempt = async {
        let stream = transport::open(options, tls).await?;
        let mut connection = Connection {
            stream,
            read: BytesMut::with_capacity(4096),
            write: BytesMut::with_capacity(4096),
            version: options.protocol,
            max_packet_size: options.max_packet_size,
            last_sent: Instant::now(),
            ping_sent: None,
        };
        let connect = Connect {
            protocol_version: options.protocol,
            clean_start,
            keep_alive: options.keep_alive,
            properties: ConnectProperties {
                session_expiry_interval: options.session_expiry_interval,
                user_properties: options.user_properties.clone(),
                maximum_packet_size: (options.max_packet_size < 268_435_460).then_some(options.max_packet_size),
                ..ConnectProperties::default()
            },
            client_id: options.client_id.clone(),
            will: options.will.clone(),
            username: options.username.clone(),
            password: options.password.clone(),
        };
        connection.send(&Packet::Connect(Box::new(connect))).await?;
        match connection.next_packet().await? {
            Packet::ConnAck(connack) if connack.reason_code.is_error() => {
                Err(ClientError::Refused(connack.reason_code, connack.properties.reason_string))
            }
            Packet::ConnAck(connack) => Ok((connection, connack)),
            other => Err(ClientError::Protocol(format!("expected CONNACK, got {}", other.name()))),
        }
    };
    match timeout(options.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout(options.connect_timeout, "connecting")),
    }
}

/// A QoS 1 or 2 publish awaiting its acknowledgement.
struct Outgoing {
    publish: Publish,
    /// What we wait for.
    expect: Expect,
    reply: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// Which acknowledgement an outgoing publish waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(clippy::enum_variant_names, reason = "the spec's packet names read best here")]
enum Expect {
    PubAck,
    PubRec,
    PubComp,
}

/// A publish not yet sent: offline, or the in-flight window is full.
struct Queued {
    message: Message,
    reply: oneshot::Sender<Result<(), ClientError>>,
}

/// A SUBSCRIBE/UNSUBSCRIBE sent and awaiting its acknowledgement.
struct SentControl {
    packet_id: PacketId,
    control: Control,
}

/// Why a connection ended without an error.
enum Stop {
    /// Disconnect was asked for, or nobody is listening any more.
    Done,
}

struct Driver {
    options: ConnectOptions,
    tls: Option<Arc<ClientConfig>>,
    requests: mpsc::Receiver<Request>,
    /// False once every `Client` is dropped; the driver then goes on only
    /// for the `Events` reader.
    requests_open: bool,
    events: mpsc::Sender<Event>,
    next_packet_id: u16,
    /// QoS 1/2 publishes sent and not yet completed, in the order sent (the
    /// order they are re-sent in after a reconnect [MQTT-4.6.0-1]).
    outgoing: Vec<Outgoing>,
    /// Publishes waiting to be sent; bounded by `offline_capacity`.
    queue: VecDeque<Queued>,
    max_inflight: usize,
    controls: Vec<SentControl>,
    unsent_controls: VecDeque<Control>,
    /// QoS 2 messages received and delivered, whose PUBREL has not come:
    /// a re-sent PUBLISH with one of these ids is not delivered again.
    incoming_qos2: HashSet<u16>,
    /// Acknowledged subscriptions, renewed when a reconnect finds no session.
    subscriptions: Vec<(Subscription, SubscribeProperties)>,
    /// v5 topic aliases the broker set on this connection.
    server_aliases: HashMap<u16, String>,
}

impl Driver {
    async fn run(mut self, mut connection: Connection) {
        loop {
            let result = self.serve(&mut connection).await;
            let _ = connection.stream.shutdown().await;
            let error = match result {
                Ok(Stop::Done) => break,
                Err(error) => error,
            };
            tracing::debug!("connection lost: {error}");
            let _ = self.events.try_send(Event::Disconnected(error.clone()));
            let Some(reconnect) = self.options.reconnect else {
                self.fail_all(error);
                return;
            };
            match self.reconnect(reconnect).await {
                Some(c) => connection = c,
                None => break,
            }
        }
        self.fail_all(ClientError::Shutdown);
    }

    /// Fails every waiting request.
    fn fail_all(&mut self, error: ClientError) {
        for o in self.outgoing.drain(..) {
            if let Some(reply) = o.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        for q in self.queue.drain(..) {
            let _ = q.reply.send(Err(error.clone()));
        }
        let controls = self.controls.drain(..).map(|c| c.control).chain(self.unsent_controls.drain(..));
        for control in controls {
            if let Some(reply) = control.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Publish { reply, .. } => drop(reply.send(Err(error.clone()))),
                Request::Control(Control { reply: Some(reply), .. }) => drop(reply.send(Err(error.clone()))),
                Request::Control(_) => {}
                Request::Disconnect { reply, .. } => drop(reply.send(())),
            }
        }
    }

    /// Tries to connect again, with a doubling delay, taking requests in
    /// the meantime. `None`: disconnect was asked for, or nobody listens.
    async fn reconnect(&mut self, reconnect: crate::Reconnect) -> Option<Connection> {
        let mut delay = reconnect.min_delay;
        loop {
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = sleep_until(wake) => break,
                    request = self.requests.recv(), if self.requests_open => match request {
                        None => self.requests_open = false,
                        Some(Request::Disconnect { reply, .. }) => {
                            let _ = reply.send(());
                            return None;
                        }
                        Some(Request::Publish { message, reply }) => {
                            if self.queue.len() >= self.options.offline_capacity {
                                let _ = reply.send(Err(ClientError::OfflineBufferFull));
                            } else {
                                self.queue.push_back(Queued { message, reply });
                            }
                        }
                        Some(Request::Control(control)) => self.unsent_controls.push_back(control),
                    },
                    _ = self.events.closed(), if !self.requests_open => return None,
                }
            }
            match handshake(&self.options, self.tls.as_ref(), self.options.clean_start).await {
                Ok((mut connection, connack)) => match self.resume(&mut connection, &connack).await {
                    Ok(()) => return Some(connection),
                    Err(e) => tracing::debug!("resuming the session failed: {e}"),
                },
                Err(e) => {
                    tracing::debug!("reconnect failed: {e}");
                    let _ = self.events.try_send(Event::ReconnectFailed(e));
                }
            }
            delay = (delay * 2).min(reconnect.max_delay);
        }
    }

    /// After a reconnect: re-sends what was unacknowledged, renews the
    /// subscriptions if the broker lost the session.
    async fn resume(&mut self, connection: &mut Connection, connack: &ConnAck) -> Result<(), ClientError> {
        self.max_inflight = inflight_limit(&self.options, connack);
        self.server_aliases.clear();
        let _ = self.events.send(Event::Reconnected { session_present: connack.session_present }).await;
        if !connack.session_present {
            // A new session: the broker holds no QoS 2 state of ours, and no subscriptions.
            self.incoming_qos2.clear();
            let mut renew: Vec<Control> = Vec::new();
            for (subscription, properties) in &self.subscriptions {
                renew.push(Control {
                    kind: ControlKind::Subscribe(vec![subscription.clone()], properties.clone()),
                    reply: None,
                });
            }
            for control in renew.into_iter().rev() {
                self.unsent_controls.push_front(control);
            }
        }
        // Unacknowledged SUBSCRIBE/UNSUBSCRIBE are sent again, under the same ids.
        for sent in &self.controls {
            let packet = control_packet(&sent.control.kind, sent.packet_id);
            connection.send(&packet).await?;
        }
        // [MQTT-4.4.0-1]: re-send unacknowledged PUBLISH (with DUP) and PUBREL,
        // in the original order, with the original packet ids.
        let mut completed = Vec::new();
        for (i, o) in self.outgoing.iter_mut().enumerate() {
            match o.expect {
                Expect::PubAck | Expect::PubRec => {
                    o.publish.dup = true;
                    connection.send(&Packet::Publish(o.publish.clone())).await?;
                }
                Expect::PubComp if connack.session_present => {
                    let id = o.publish.packet_id.unwrap_or(NonZeroU16::MIN);
                    connection.send(&Packet::PubRel(PubAck::new(id))).await?;
                }
                // The broker had the message (PUBREC) and has since lost the
                // session: there is nothing left to release.
                Expect::PubComp => completed.push(i),
            }
        }
        for i in completed.into_iter().rev() {
            if let Some(reply) = self.outgoing.remove(i).reply {
                let _ = reply.send(Ok(()));
            }
        }
        Ok(())
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, connection: &mut Connection) -> Result<Stop, ClientError> {
        let keep_alive = Duration::from_secs(u64::from(self.options.keep_alive));
        loop {
            while let Some(control) = self.unsent_controls.pop_front() {
                self.send_control(connection, control).await?;
            }
            while self.outgoing.len() < self.max_inflight
                && let Some(queued) = self.queue.pop_front()
            {
                self.send_publish(connection, queued.message, queued.reply).await?;
            }
            let deadline = match connection.ping_sent {
                Some(sent) => sent + keep_alive,
                None => connection.last_sent + keep_alive,
            };
            let accept_requests = self.requests_open && self.queue.len() < self.options.offline_capacity;
            tokio::select! {
                packet = connection.next_packet() => self.handle_packet(connection, packet?).await?,
                request = self.requests.recv(), if accept_requests => match request {
                    None => self.requests_open = false,
                    Some(Request::Publish { message, reply }) => {
                        // Behind queued messages a new one waits its turn, whatever its QoS.
                        let window_open = message.qos == QoS::AtMostOnce || self.outgoing.len() < self.max_inflight;
                        if self.queue.is_empty() && window_open {
                            self.send_publish(connection, message, reply).await?;
                        } else {
                            self.queue.push_back(Queued { message, reply });
                        }
                    }
                    Some(Request::Control(control)) => self.send_control(connection, control).await?,
                    Some(Request::Disconnect { properties, reply }) => {
                        let disconnect = Disconnect { reason_code: ReasonCode::NORMAL_DISCONNECTION, properties };
                        let _ = connection.send(&Packet::Disconnect(disconnect)).await;
                        let _ = connection.stream.shutdown().await;
                        let _ = reply.send(());
                        return Ok(Stop::Done);
                    }
                },
                _ = self.events.closed(), if !self.requests_open => {
                    let disconnect = Disconnect::default();
                    let _ = connection.send(&Packet::Disconnect(disconnect)).await;
                    return Ok(Stop::Done);
                }
                _ = sleep_until(deadline), if !keep_alive.is_zero() => {
                    if connection.ping_sent.is_some() {
                        return Err(ClientError::KeepAliveTimeout);
                    }
                    connection.send(&Packet::PingReq).await?;
                    connection.ping_sent = Some(Instant::now());
                }
            }
        }
    }

    fn packet_id(&mut self) -> PacketId {
        // Skip ids still in use: a long outage can leave many unacknowledged.
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let Some(id) = NonZeroU16::new(id) else { continue };
            let busy = self.outgoing.iter().any(|o| o.publish.packet_id == Some(id))
                || self.controls.iter().any(|c| c.packet_id == id);
            if !busy {
                return id;
            }
        }
    }

    async fn send_publish(
        &mut self,
        connection: &mut Connection,
        message: Message,
        reply: oneshot::Sender<Result<(), ClientError>>,
    ) -> Result<(), ClientError> {
        let packet_id = (message.qos != QoS::AtMostOnce).then(|| self.packet_id());
        let publish = Publish {
            dup: false,
            qos: message.qos,
            retain: message.retain,
            topic: message.topic.into(),
            packet_id,
            properties: message.properties,
            payload: message.payload,
        };
        let expect = match publish.qos {
            QoS::AtMostOnce => {
                // Refusing to encode (a topic too long, say) is this message's
                // failure, not the connection's.
                let result = connection.send(&Packet::Publish(publish)).await;
                return match result {
                    Err(ClientError::Encode(e)) => {
                        let _ = reply.send(Err(ClientError::Encode(e)));
                        Ok(())
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        Err(e)
                    }
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                };
            }
            QoS::AtLeastOnce => Expect::PubAck,
            QoS::ExactlyOnce => Expect::PubRec,
        };
        match connection.send(&Packet::Publish(publish.clone())).await {
            Err(ClientError::Encode(e)) => {
                let _ = reply.send(Err(ClientError::Encode(e)));
                Ok(())
            }
            result => {
                // Recorded even if the write failed: it is re-sent after reconnect.
                self.outgoing.push(Outgoing { publish, expect, reply: Some(reply) });
                result
            }
        }
    }

    async fn send_control(&mut self, connection: &mut Connection, control: Control) -> Result<(), ClientError> {
        let packet_id = self.packet_id();
        let packet = control_packet(&control.kind, packet_id);
        match connection.send(&packet).await {
            Err(ClientError::Encode(e)) => {
                if let Some(reply) = control.reply {
                    let _ = reply.send(Err(ClientError::Encode(e)));
                }
                Ok(())
            }
            result => {
                self.controls.push(SentControl { packet_id, control });
                result
            }
        }
    }

    async fn handle_packet(&mut self, connection: &mut Connection, packet: Packet) -> Result<(), ClientError> {
        tracing::trace!(packet = packet.name(), "received");
        match packet {
            Packet::Publish(publish) => self.handle_publish(connection, publish).await?,
            Packet::PubAck(ack) => self.complete(ack.packet_id, Expect::PubAck, ack.reason_code)?,
            Packet::PubRec(ack) => {
                let id = ack.packet_id;
                let Some(index) = self.outgoing_index(id, Expect::PubRec) else {
                    // Perhaps a PUBLISH we gave up on when the broker lost the
                    // session; releasing it lets the broker finish its side.
                    tracing::debug!("PUBREC for unknown packet id {id}");
                    connection.send(&Packet::PubRel(PubAck::new(id))).await?;
                    return Ok(());
                };
                if ack.reason_code.is_error() {
                    // A refused QoS 2 message ends here [MQTT-4.3.3-4] (v5).
                    self.complete(id, Expect::PubRec, ack.reason_code)?;
                } else {
                    self.outgoing[index].expect = Expect::PubComp;
                    connection.send(&Packet::PubRel(PubAck::new(id))).await?;
                }
            }
            Packet::PubComp(ack) => self.complete(ack.packet_id, Expect::PubComp, ack.reason_code)?,
            Packet::PubRel(ack) => {
                self.incoming_qos2.remove(&ack.packet_id.get());
                connection.send(&Packet::PubComp(PubAck::new(ack.packet_id))).await?;
            }
            Packet::SubAck(ack) => self.complete_control(ack.packet_id, ack.reason_codes, true)?,
            Packet::UnsubAck(ack) => self.complete_control(ack.packet_id, ack.reason_codes, false)?,
            Packet::PingResp => connection.ping_sent = None,
            Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason_code, d.properties.reason_string)),
            other => return Err(ClientError::Protocol(format!("unexpected {} from the broker", other.name()))),
        }
        Ok(())
    }

    async fn handle_publish(&mut self, connection: &mut Connection, mut publish: Publish) -> Result<(), ClientError> {
        if let Some(alias) = publish.properties.topic_alias {
            if publish.topic.is_empty() {
                let topic = self
                    .server_aliases
                    .get(&alias)
                    .ok_or_else(|| ClientError::Protocol(format!("unknown topic alias {alias}")))?;
                publish.topic = topic.as_str().into();
            } else {
                self.server_aliases.insert(alias, publish.topic.to_string());
            }
        }
        let message = Message {
            topic: publish.topic.to_string(),
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            dup: publish.dup,
            properties: publish.properties,
        };
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => self.deliver(message).await,
            (QoS::AtLeastOnce, Some(id)) => {
                self.deliver(message).await;
                connection.send(&Packet::PubAck(PubAck::new(id))).await?;
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // Delivered once; a re-sent copy before PUBREL only gets PUBREC again.
                if self.incoming_qos2.insert(id.get()) {
                    self.deliver(message).await;
                }
                connection.send(&Packet::PubRec(PubAck::new(id))).await?;
            }
            _ => return Err(ClientError::Protocol("QoS > 0 PUBLISH without a packet id".into())),
        }
        Ok(())
    }

    async fn deliver(&mut self, message: Message) {
        // Nobody reading is not an error: the message is dropped.
        let _ = self.events.send(Event::Message(message)).await;
    }

    fn outgoing_index(&self, id: PacketId, expect: Expect) -> Option<usize> {
        self.outgoing.iter().position(|o| o.publish.packet_id == Some(id) && o.expect == expect)
    }

    /// Ends an outgoing publish. An acknowledgement of an id we do not wait
    /// on (a duplicate after a reconnect, say) is ignored rather than
    /// treated as fatal: tearing the connection down would gain nothing.
    fn complete(&mut self, id: PacketId, expect: Expect, code: ReasonCode) -> Result<(), ClientError> {
        let Some(index) = self.outgoing_index(id, expect) else {
            tracing::debug!("{expect:?} for unknown packet id {id} ignored");
            return Ok(());
        };
        let done = self.outgoing.remove(index);
        if let Some(reply) = done.reply {
            // v5 0x10 "no matching subscribers" is a success.
            let result = if code.is_error() { Err(ClientError::PublishRefused(code)) } else { Ok(()) };
            let _ = reply.send(result);
        }
        Ok(())
    }

    fn complete_control(&mut self, id: PacketId, codes: Vec<ReasonCode>, suback: bool) -> Result<(), ClientError> {
        let index = self
            .controls
            .iter()
            .position(|c| c.packet_id == id && matches!(c.control.kind, ControlKind::Subscribe(..)) == suback);
        let Some(index) = index else {
            tracing::debug!("SUBACK/UNSUBACK for unknown packet id {id} ignored");
            return Ok(());
        };
        let sent = self.controls.remove(index);
        match &sent.control.kind {
            ControlKind::Subscribe(subscriptions, properties) => {
                for (subscription, code) in subscriptions.iter().zip(&codes) {
                    if code.is_error() {
                        continue;
                    }
                    self.subscriptions.retain(|(s, _)| s.topic_filter != subscription.topic_filter);
                    self.subscriptions.push((subscription.clone(), properties.clone()));
                }
            }
            ControlKind::Unsubscribe(filters) => self.subscriptions.retain(|(s, _)| !filters.contains(&s.topic_filter)),
        }
        if let Some(reply) = sent.control.reply {
            let _ = reply.send(Ok(codes));
        }
        Ok(())
    }
}

fn control_packet(kind: &ControlKind, packet_id: PacketId) -> Packet {
    match kind {
        ControlKind::Subscribe(subscriptions, properties) => Packet::Subscribe(Subscribe {
            packet_id,
            properties: properties.clone(),
            subscriptions: subscriptions.clone(),
        }),
        ControlKind::Unsubscribe(filters) => {
            Packet::Unsubscribe(Unsubscribe { packet_id, user_properties: Vec::new(), topic_filters: filters.clone() })
        }
    }
}
