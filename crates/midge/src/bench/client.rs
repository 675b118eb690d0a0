//! Opening a benchmark connection: TCP (from a chosen source address), then
//! CONNECT/CONNACK and SUBSCRIBE/SUBACK, spoken through `midge-codec`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use midge_codec::{
    Connect, ConnectProperties, Packet, ProtocolVersion, QoS, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions, decode, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::opts::ConnectOpts;

/// Largest packet the generator accepts from a broker.
pub(crate) const MAX_PACKET: u32 = 16 * 1024 * 1024;

/// Everything every connection of a run shares, resolved once.
#[derive(Debug)]
pub(crate) struct Dialer {
    pub(crate) addr: SocketAddr,
    pub(crate) version: ProtocolVersion,
    ifaddrs: Vec<IpAddr>,
    next_ifaddr: AtomicUsize,
    username: Option<String>,
    password: Option<Bytes>,
    keep_alive: u16,
    clean_start: bool,
    session_expiry: Option<u32>,
    prefix: String,
    timeout: Duration,
    /// Paces connects at --connect-rate: the slot each connect waits for.
    slots: AtomicU64,
    rate: f64,
    /// Bounds the connects in progress (--connect-concurrency).
    in_progress: Semaphore,
}

/// An open, acknowledged connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Bytes already read past the packets the handshake consumed.
    pub(crate) rbuf: BytesMut,
    pub(crate) client_id: String,
    /// The broker's MQTT 5 receive maximum (65,535 when it gives none).
    pub(crate) receive_maximum: u16,
    /// From the TCP connect to the CONNACK.
    pub(crate) connect_time: Duration,
}

impl Dialer {
    pub(crate) async fn new(opts: &ConnectOpts) -> anyhow::Result<Dialer> {
        let target = format!("{}:{}", opts.host, opts.port);
        let mut addrs = tokio::net::lookup_host(&target).await.with_context(|| format!("cannot resolve {target}"))?;
        let addr = match opts.ifaddr.first() {
            Some(ip) => addrs.find(|a| a.is_ipv4() == ip.is_ipv4()),
            None => addrs.next(),
        };
        let addr = addr.with_context(|| format!("{target} has no address of the --ifaddr family"))?;
        let session_expiry = match (opts.version, opts.session_expiry, opts.clean) {
            (ProtocolVersion::V5, Some(s), _) => Some(s),
            (ProtocolVersion::V5, None, false) => Some(3600),
            _ => None,
        };
        Ok(Dialer {
            addr,
            version: opts.version,
            ifaddrs: opts.ifaddr.clone(),
            next_ifaddr: AtomicUsize::new(0),
            username: opts.username.clone(),
            password: opts.password.as_ref().map(|p| Bytes::copy_from_slice(p.as_bytes())),
            keep_alive: opts.keepalive,
            clean_start: opts.clean,
            session_expiry,
            prefix: opts.client_id_prefix.clone().unwrap_or_else(|| format!("mb-{}-", std::process::id())),
            timeout: Duration::from_secs_f64(opts.connect_timeout.max(0.001)),
            slots: AtomicU64::new(0),
            rate: opts.connect_rate,
            in_progress: Semaphore::new(opts.connect_concurrency as usize),
        })
    }

    pub(crate) fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// The client id of the `index`th client of `role` ("p", "s", "c").
    pub(crate) fn client_id(&self, role: &str, index: usize) -> String {
        format!("{}{role}{index}", self.prefix)
    }

    /// Opens one connection and waits for its CONNACK; `start` is the run's
    /// start, from which --connect-rate paces.
    pub(crate) async fn connect(self: &Arc<Self>, client_id: String, start: Instant) -> anyhow::Result<Conn> {
        if self.rate > 0.0 {
            let slot = self.slots.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep_until((start + Duration::from_secs_f64(slot as f64 / self.rate)).into()).await;
        }
        let _permit = self.in_progress.acquire().await.context("connect limiter closed")?;
        let began = Instant::now();
        let mut conn =
            tokio::time::timeout(self.timeout, self.handshake(client_id.clone())).await.map_err(|_| {
                anyhow::anyhow!("no CONNACK from {} within {:?} for {client_id}", self.addr, self.timeout)
            })??;
        conn.connect_time = began.elapsed();
        Ok(conn)
    }

    async fn tcp(&self) -> std::io::Result<TcpStream> {
        if self.ifaddrs.is_empty() {
            return TcpStream::connect(self.addr).await;
        }
        let ip = self.ifaddrs[self.next_ifaddr.fetch_add(1, Ordering::Relaxed) % self.ifaddrs.len()];
        let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // The port is then chosen at connect time and may be shared by connections to
        // different destinations: bind alone would reserve one of the source address's
        // ~28k ephemeral ports per socket, whatever the destination.
        #[cfg(target_os = "linux")]
        if ip.is_ipv4() {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(std::io::Error::from)?;
        }
        socket.bind(SocketAddr::new(ip, 0))?;
        socket.connect(self.addr).await
    }

    async fn handshake(&self, client_id: String) -> anyhow::Result<Conn> {
        let mut stream = self.tcp().await.with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let connect = Connect {
            protocol_version: self.version,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            properties: ConnectProperties { session_expiry_interval: self.session_expiry, ..Default::default() },
            client_id: client_id.clone(),
            will: None,
            username: self.username.clone(),
            password: self.password.clone(),
        };
        let mut wbuf = BytesMut::with_capacity(128);
        encode(&Packet::Connect(Box::new(connect)), self.version, &mut wbuf).context("encoding CONNECT")?;
        stream.write_all(&wbuf).await.with_context(|| format!("sending CONNECT to {}", self.addr))?;
        let mut rbuf = BytesMut::with_capacity(4096);
        let packet = read_packet(&mut stream, &mut rbuf, self.version).await?;
        let Packet::ConnAck(ack) = packet else {
            bail!("expected CONNACK from {}, got {}", self.addr, packet.name());
        };
        if ack.reason_code.is_error() {
            bail!("the broker at {} refused {client_id}: {:?}", self.addr, ack.reason_code);
        }
        let receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
        Ok(Conn { stream, rbuf, client_id, receive_maximum, connect_time: Duration::ZERO })
    }
}

impl Conn {
    /// Subscribes to `filter` and waits (bounded by the caller) for the SUBACK.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS, version: ProtocolVersion) -> anyhow::Result<()> {
        let subscribe = Subscribe {
            packet_id: NonZeroU16::MIN,
            properties: SubscribeProperties::default(),
            subscriptions: vec![Subscription {
                topic_filter: filter.to_owned(),
                options: SubscriptionOptions { qos, ..Default::default() },
            }],
        };
        let mut wbuf = BytesMut::with_capacity(64 + filter.len());
        encode(&Packet::Subscribe(subscribe), version, &mut wbuf).context("encoding SUBSCRIBE")?;
        self.stream.write_all(&wbuf).await.context("sending SUBSCRIBE")?;
        match read_packet(&mut self.stream, &mut self.rbuf, version).await? {
            Packet::SubAck(ack) => {
                if let Some(code) = ack.reason_codes.iter().find(|c| c.is_error()) {
                    bail!("the broker refused {}'s subscription to {filter}: {code:?}", self.client_id);
                }
                Ok(())
            }
            // A persistent session left by an earlier run may be handed its stored
            // messages first; they would be miscounted.
            Packet::Publish(_) => bail!(
                "{} received a PUBLISH before its SUBACK (a stored session?); use another --client-id-prefix",
                self.client_id
            ),
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }
}

/// Reads until one whole packet has arrived and returns it.
pub(crate) async fn read_packet(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    version: ProtocolVersion,
) -> anyhow::Result<Packet> {
    loop {
        if let Some(packet) = decode(rbuf, version, MAX_PACKET).context("malformed packet from the broker")? {
            return Ok(packet);
        }
        rbuf.reserve(4096);
        if stream.read_buf(rbuf).await.context("reading from the broker")? == 0 {
            bail!("the broker closed the connection");
        }
    }
}
