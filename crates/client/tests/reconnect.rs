//! Session resumption, seen from a scripted broker: the test plays the broker
//! with midge-codec over a real socket, drops the connection at chosen points
//! and checks what the client sends when it comes back [MQTT-4.4.0-1].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use midge_client::{Client, ClientError, ConnectOptions, Event, Events, Message, QoS, Reconnect};
use midge_codec::{ConnAck, Packet, ProtocolVersion, PubAck, decode, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(10);

/// One side of a scripted broker connection.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = timeout(WAIT, listener.accept()).await.expect("no connection in time").unwrap();
        Peer { stream, buf: BytesMut::new() }
    }

    async fn recv(&mut self) -> Packet {
        timeout(WAIT, async {
            loop {
                if let Some(packet) = decode(&mut self.buf, ProtocolVersion::V3_1_1, 1 << 20).unwrap() {
                    return packet;
                }
                assert_ne!(self.stream.read_buf(&mut self.buf).await.unwrap(), 0, "the client closed the connection");
            }
        })
        .await
        .expect("no packet in time")
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, ProtocolVersion::V3_1_1, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Reads CONNECT (which must not ask for a clean session) and accepts it.
    async fn handshake(&mut self, session_present: bool) {
        let Packet::Connect(connect) = self.recv().await else { panic!("expected CONNECT") };
        assert!(!connect.clean_start, "a resuming client must not ask for a clean session");
        self.send(Packet::ConnAck(ConnAck { session_present, ..ConnAck::default() })).await;
    }
}

fn options(port: u16) -> ConnectOptions {
    ConnectOptions::new("127.0.0.1", port)
        .client_id("resumer")
        .clean_start(false)
        .reconnect(Some(Reconnect { min_delay: Duration::from_millis(10), max_delay: Duration::from_millis(50) }))
}

async fn connect(listener: &TcpListener, options: ConnectOptions) -> (Client, Events, Peer) {
    let (connected, peer) = tokio::join!(Client::connect(options), async {
        let mut peer = Peer::accept(listener).await;
        peer.handshake(false).await;
        peer
    });
    let (client, events) = connected.unwrap();
    (client, events, peer)
}

async fn expect_event(events: &mut Events, what: impl Fn(&Event) -> bool) -> Event {
    timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("the client stopped");
            if what(&event) {
                return event;
            }
        }
    })
    .await
    .expect("no such event in time")
}

#[tokio::test]
async fn an_unacknowledged_qos1_publish_is_resent_with_dup_and_the_same_packet_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, mut events, mut first) = connect(&listener, options(listener.local_addr().unwrap().port())).await;

    let delivery = client.publish_queued(Message::new("t", "payload").qos(QoS::AtLeastOnce)).await.unwrap();
    let Packet::Publish(original) = first.recv().await else { panic!("expected PUBLISH") };
    assert!(!original.dup);
    drop(first);

    let mut second = Peer::accept(&listener).await;
    second.handshake(true).await;
    let Packet::Publish(resent) = second.recv().await else { panic!("expected PUBLISH") };
    assert!(resent.dup, "a re-sent PUBLISH carries DUP [MQTT-3.3.1-1]");
    assert_eq!(resent.packet_id, original.packet_id);
    assert_eq!((resent.topic.as_str(), &resent.payload[..]), ("t", &b"payload"[..]));
    second.send(Packet::PubAck(PubAck::new(resent.packet_id.unwrap()))).await;

    timeout(WAIT, delivery.wait()).await.unwrap().unwrap();
    expect_event(&mut events, |e| matches!(e, Event::Reconnected { session_present: true })).await;
}

#[tokio::test]
async fn a_qos2_publish_past_pubrec_is_resumed_with_pubrel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, _events, mut first) = connect(&listener, options(listener.local_addr().unwrap().port())).await;

    let delivery = client.publish_queued(Message::new("t", "once").qos(QoS::ExactlyOnce)).await.unwrap();
    let Packet::Publish(publish) = first.recv().await else { panic!("expected PUBLISH") };
    let id = publish.packet_id.unwrap();
    first.send(Packet::PubRec(PubAck::new(id))).await;
    assert!(matches!(first.recv().await, Packet::PubRel(ack) if ack.packet_id == id));
    drop(first);

    let mut second = Peer::accept(&listener).await;
    second.handshake(true).await;
    // Not the PUBLISH again: the broker has it; only the release is repeated.
    assert!(matches!(second.recv().await, Packet::PubRel(ack) if ack.packet_id == id));
    second.send(Packet::PubComp(PubAck::new(id))).await;

    timeout(WAIT, delivery.wait()).await.unwrap().unwrap();
}

#[tokio::test]
async fn publishes_made_offline_wait_in_a_bounded_buffer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (client, mut events, first) = connect(&listener, options(port).offline_capacity(1)).await;
    drop(first);
    expect_event(&mut events, |e| matches!(e, Event::Disconnected(_))).await;

    // The broker refuses to come back (it closes every connection before
    // CONNACK) until the test has published.
    let back = Arc::new(AtomicBool::new(false));
    let broker = tokio::spawn({
        let back = back.clone();
        async move {
            loop {
                let mut peer = Peer::accept(&listener).await;
                if back.load(Ordering::SeqCst) {
                    peer.handshake(false).await;
                    return peer;
                }
            }
        }
    });
    let kept = client.publish_queued(Message::new("t", "kept").qos(QoS::AtLeastOnce)).await.unwrap();
    let refused = client.publish_queued(Message::new("t", "refused").qos(QoS::AtLeastOnce)).await.unwrap();
    let full = timeout(WAIT, refused.wait()).await.unwrap();
    assert!(matches!(full, Err(ClientError::OfflineBufferFull)), "{full:?}");
    back.store(true, Ordering::SeqCst);

    let mut peer = timeout(WAIT, broker).await.unwrap().unwrap();
    let Packet::Publish(publish) = peer.recv().await else { panic!("expected PUBLISH") };
    assert_eq!(&publish.payload[..], b"kept");
    peer.send(Packet::PubAck(PubAck::new(publish.packet_id.unwrap()))).await;
    timeout(WAIT, kept.wait()).await.unwrap().unwrap();
}
