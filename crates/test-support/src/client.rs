//! A raw-bytes MQTT client over a blocking [`TcpStream`] with bounded reads.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::build::{self, Connect};
use crate::packet::{ConnAck, Publish, RawPacket, SubAck};
use crate::{DEFAULT_SILENCE, DEFAULT_TIMEOUT};

/// Why [`RawClient::recv_packet`] returned no packet.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing complete arrived within the bound.
    TimedOut,
    /// The broker closed the connection (end of stream) between packets.
    Closed,
    /// The connection was reset or aborted by the broker.
    Reset,
    /// The broker sent bytes that are not an MQTT packet, or closed mid-packet: the
    /// broker's fault.
    Malformed(String),
    /// Any other socket error.
    Io(io::Error),
}

impl RecvError {
    /// Whether the broker ended the connection (cleanly or by reset).
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvError::Closed | RecvError::Reset)
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::TimedOut => f.write_str("no packet within the time limit"),
            RecvError::Closed => f.write_str("the broker closed the connection"),
            RecvError::Reset => f.write_str("the broker reset the connection"),
            RecvError::Malformed(why) => write!(f, "malformed bytes from the broker: {why}"),
            RecvError::Io(err) => write!(f, "socket error: {err}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A client that sends and receives raw MQTT bytes.
///
/// Reads are buffered so that two packets arriving in one segment, or one packet
/// split across segments, are framed correctly. Methods named `expect_*` panic with
/// a message naming what was expected and what came instead; `recv_packet` and
/// `try_send` return the error for tests that want to inspect it.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read from the socket and not yet framed into a packet.
    buffer: Vec<u8>,
    /// Set once the broker's side has reached end of stream or reset.
    closed: bool,
    /// For messages: who this is.
    name: String,
}

impl RawClient {
    /// Opens a TCP connection to `addr` (bounded by [`DEFAULT_TIMEOUT`]).
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, DEFAULT_TIMEOUT)
            .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let name = match stream.local_addr() {
            Ok(local) => format!("client {local}"),
            Err(_) => "client".to_owned(),
        };
        RawClient { stream, buffer: Vec::new(), closed: false, name }
    }

    /// Connects, sends `connect` and expects a CONNACK accepting it (return code 0).
    pub fn handshake(addr: SocketAddr, connect: &Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::connect(addr);
        client.send(&connect.build());
        let connack = client.expect_connack();
        assert_eq!(connack.return_code, 0, "{}: CONNECT was refused: {connack:?}", client.name);
        (client, connack)
    }

    /// Connects with a clean MQTT 3.1.1 session for `client_id` and expects it accepted.
    pub fn connected(addr: SocketAddr, client_id: &str) -> RawClient {
        let (mut client, connack) = RawClient::handshake(addr, &Connect::new(client_id));
        assert!(!connack.session_present, "clean session CONNACK has session present [MQTT-3.2.2-1]");
        client.name = format!("{client_id:?}");
        client
    }

    /// Names this client in failure messages.
    pub fn named(mut self, name: &str) -> RawClient {
        self.name = name.to_owned();
        self
    }

    /// The local address of this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Writes `bytes`, returning the socket error if any.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `bytes`; panics if the socket refuses them.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(err) = self.try_send(bytes) {
            panic!("{}: cannot send {} bytes: {err}", self.name, bytes.len());
        }
    }

    /// Closes the sending half of the connection, as a client that vanished would.
    pub fn shutdown_write(&mut self) {
        // The broker may have closed the connection already; nothing to do then.
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads the next whole packet, waiting at most `timeout`.
    pub fn recv_packet(&mut self, timeout: Duration) -> Result<RawPacket, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = self.frame()? {
                return Ok(packet);
            }
            if self.closed {
                return Err(if self.buffer.is_empty() {
                    RecvError::Closed
                } else {
                    RecvError::Malformed(format!(
                        "connection closed after {} bytes of an incomplete packet",
                        self.buffer.len()
                    ))
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::TimedOut);
            }
            self.fill(deadline - now)?;
        }
    }

    /// Reads more bytes into the buffer, waiting at most `wait` (which must be > 0).
    fn fill(&mut self, wait: Duration) -> Result<(), RecvError> {
        self.stream.set_read_timeout(Some(wait)).map_err(RecvError::Io)?;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                Ok(())
            }
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(err) => match err.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => Ok(()),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                    self.closed = true;
                    if self.buffer.is_empty() { Err(RecvError::Reset) } else { Ok(()) }
                }
                _ => Err(RecvError::Io(err)),
            },
        }
    }

    /// Takes one whole packet off the front of the buffer, if there is one.
    fn frame(&mut self) -> Result<Option<RawPacket>, RecvError> {
        let Some(&first_byte) = self.buffer.first() else {
            return Ok(None);
        };
        // Remaining length: at most four bytes, 7 bits each (section 2.2.3).
        let mut length = 0usize;
        let mut at = 1;
        loop {
            let Some(&byte) = self.buffer.get(at) else {
                return Ok(None);
            };
            length |= usize::from(byte & 0x7F) << (7 * (at - 1));
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if at == 5 {
                return Err(RecvError::Malformed(format!(
                    "remaining length longer than four bytes: {:02x?}",
                    &self.buffer[..5]
                )));
            }
        }
        if self.buffer.len() < at + length {
            return Ok(None);
        }
        let body = self.buffer[at..at + length].to_vec();
        self.buffer.drain(..at + length);
        Ok(Some(RawPacket { first_byte, body }))
    }

    /// The next packet within [`DEFAULT_TIMEOUT`]; panics on anything else.
    pub fn expect_packet(&mut self) -> RawPacket {
        self.expect_packet_within(DEFAULT_TIMEOUT)
    }

    /// The next packet within `timeout`; panics on anything else.
    pub fn expect_packet_within(&mut self, timeout: Duration) -> RawPacket {
        match self.recv_packet(timeout) {
            Ok(packet) => packet,
            Err(err) => panic!("{}: expected a packet within {timeout:?}: {err}", self.name),
        }
    }

    /// Expects a CONNACK next.
    pub fn expect_connack(&mut self) -> ConnAck {
        let packet = self.expect_packet();
        packet.connack().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a SUBACK next.
    pub fn expect_suback(&mut self) -> SubAck {
        let packet = self.expect_packet();
        packet.suback().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects an UNSUBACK next and returns its packet id.
    pub fn expect_unsuback(&mut self) -> u16 {
        let packet = self.expect_packet();
        packet.unsuback().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a PUBLISH next.
    pub fn expect_publish(&mut self) -> Publish {
        let packet = self.expect_packet();
        packet.publish().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a PUBACK next and returns its packet id.
    pub fn expect_puback(&mut self) -> u16 {
        let packet = self.expect_packet();
        packet.puback().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a PUBREC next and returns its packet id.
    pub fn expect_pubrec(&mut self) -> u16 {
        let packet = self.expect_packet();
        packet.pubrec().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a PUBREL next and returns its packet id.
    pub fn expect_pubrel(&mut self) -> u16 {
        let packet = self.expect_packet();
        packet.pubrel().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a PUBCOMP next and returns its packet id.
    pub fn expect_pubcomp(&mut self) -> u16 {
        let packet = self.expect_packet();
        packet.pubcomp().unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// Expects a PINGRESP next.
    pub fn expect_pingresp(&mut self) {
        let packet = self.expect_packet();
        packet.pingresp().unwrap_or_else(|err| panic!("{}: {err}", self.name));
    }

    /// Expects the broker to close the connection within `timeout` without sending
    /// anything first; panics if a packet arrives or the connection stays open.
    pub fn expect_closed(&mut self, timeout: Duration) {
        match self.recv_packet(timeout) {
            Err(err) if err.is_closed() => {}
            Ok(packet) => {
                panic!("{}: expected the connection closed, got {packet:?}", self.name)
            }
            Err(RecvError::TimedOut) => {
                panic!("{}: expected the connection closed within {timeout:?}; it is still open", self.name)
            }
            Err(err) => panic!("{}: expected the connection closed: {err}", self.name),
        }
    }

    /// Expects the broker to close the connection within [`DEFAULT_TIMEOUT`].
    pub fn expect_closed_soon(&mut self) {
        self.expect_closed(DEFAULT_TIMEOUT);
    }

    /// Whether the connection is closed within `timeout`, skipping nothing: `Ok(true)`
    /// if it closed, `Ok(false)` if it stayed open, `Err(packet)` if a packet came.
    pub fn closed_within(&mut self, timeout: Duration) -> Result<bool, RawPacket> {
        match self.recv_packet(timeout) {
            Err(err) if err.is_closed() => Ok(true),
            Err(RecvError::TimedOut) => Ok(false),
            Err(err) => panic!("{}: {err}", self.name),
            Ok(packet) => Err(packet),
        }
    }

    /// Expects nothing to arrive, and the connection to stay open, for `duration`.
    pub fn expect_silence(&mut self, duration: Duration) {
        match self.recv_packet(duration) {
            Err(RecvError::TimedOut) => {}
            Ok(packet) => panic!("{}: expected silence for {duration:?}, got {packet:?}", self.name),
            Err(err) => panic!("{}: expected silence for {duration:?}: {err}", self.name),
        }
    }

    /// Expects nothing for [`DEFAULT_SILENCE`].
    pub fn expect_no_packet(&mut self) {
        self.expect_silence(DEFAULT_SILENCE);
    }

    /// Sends SUBSCRIBE and expects a SUBACK for the same packet id [MQTT-3.8.4-2];
    /// returns its return codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&build::subscribe(packet_id, filters));
        let suback = self.expect_suback();
        assert_eq!(suback.packet_id, packet_id, "{}: SUBACK packet id [MQTT-3.8.4-2]", self.name);
        suback.return_codes
    }

    /// Sends a QoS 0 PUBLISH.
    pub fn publish(&mut self, topic: &str, payload: impl AsRef<[u8]>) {
        self.send(&build::publish(topic, payload));
    }

    /// Sends a QoS 1 PUBLISH and expects its PUBACK.
    pub fn publish_qos1(&mut self, topic: &str, payload: impl AsRef<[u8]>, packet_id: u16) {
        self.send(&build::Publish::new(topic, payload).qos(1, packet_id).build());
        let acked = self.expect_puback();
        assert_eq!(acked, packet_id, "{}: PUBACK packet id [MQTT-4.3.2-2]", self.name);
    }

    /// Sends a QoS 2 PUBLISH and completes the exchange: PUBREC, PUBREL, PUBCOMP.
    pub fn publish_qos2(&mut self, topic: &str, payload: impl AsRef<[u8]>, packet_id: u16) {
        self.send(&build::Publish::new(topic, payload).qos(2, packet_id).build());
        let received = self.expect_pubrec();
        assert_eq!(received, packet_id, "{}: PUBREC packet id [MQTT-4.3.3-2]", self.name);
        self.send(&build::pubrel(packet_id));
        let completed = self.expect_pubcomp();
        assert_eq!(completed, packet_id, "{}: PUBCOMP packet id [MQTT-4.3.3-2]", self.name);
    }

    /// Sends PINGREQ and expects PINGRESP: a round trip proving the broker has
    /// processed everything this client sent before.
    pub fn ping(&mut self) {
        self.send(&build::pingreq());
        self.expect_pingresp();
    }

    /// Sends DISCONNECT and waits (bounded) for the broker to close the connection,
    /// so the broker has finished with it when this returns.
    /// Packets the broker sent before it saw the DISCONNECT are skipped.
    pub fn disconnect(mut self) {
        self.send(&build::disconnect());
        self.shutdown_write();
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_packet(left) {
                Ok(_) => continue,
                Err(err) if err.is_closed() => return,
                Err(err) => panic!("{}: expected the connection closed after DISCONNECT: {err}", self.name),
            }
        }
    }
}

impl fmt::Debug for RawClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawClient")
            .field("name", &self.name)
            .field("buffered", &self.buffer.len())
            .field("closed", &self.closed)
            .finish()
    }
}
