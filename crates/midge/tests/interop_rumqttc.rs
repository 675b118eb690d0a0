//! Interoperability with the `rumqttc` crate (0.25, its MQTT 3.1.1 client).
//!
//! Run with `cargo test -p midge --test interop_rumqttc`. Each test starts its own
//! broker; each client's event loop runs on its own task and hands every event to the
//! test through a channel, so a test awaits the packet it expects (a CONNACK, SUBACK,
//! PUBACK, PUBLISH…) with a time limit instead of sleeping.

mod interop_support;

use std::collections::VecDeque;
use std::time::Duration;

use interop_support::{TestBroker, start_broker};
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, Publish,
    QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a client waits for one event that should come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Options for a client of `broker` named `id`: clean session, keep alive 60 s.
fn options(broker: &TestBroker, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// A connected `rumqttc` client with its event loop on a task.
///
/// Publishes that arrive while the test waits for something else are kept, in order,
/// for [`Client::next_publish`].
struct Client {
    name: String,
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    event_loop: JoinHandle<()>,
    unread: VecDeque<Publish>,
}

impl Client {
    /// Connects with `options` and returns the client and the broker's CONNACK.
    async fn connect(options: MqttOptions) -> (Client, ConnAck) {
        let name = options.client_id();
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        let (tx, events) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            loop {
                let event = event_loop.poll().await;
                let failed = event.is_err();
                // Stop at the first error: rumqttc would otherwise reconnect, and a
                // test wants to see exactly one connection.
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        let mut client = Client { name, client, events, event_loop, unread: VecDeque::new() };
        let connack = client
            .wait_for("CONNACK", |event| match event {
                Event::Incoming(Packet::ConnAck(connack)) => Some(connack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connack.code, ConnectReturnCode::Success, "{}: connection refused", client.name);
        (client, connack)
    }

    /// Connects a clean-session client named `id`.
    async fn connected(broker: &TestBroker, id: &str) -> Client {
        Client::connect(options(broker, id)).await.0
    }

    /// The next event of the event loop, or a panic if none comes in time or the
    /// connection fails.
    async fn next_event(&mut self, waiting_for: &str) -> Event {
        match timeout(EVENT_TIMEOUT, self.events.recv()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(err))) => panic!("{}: connection failed while waiting for {waiting_for}: {err:?}", self.name),
            Ok(None) => panic!("{}: event loop ended while waiting for {waiting_for}", self.name),
            Err(_) => panic!("{}: no {waiting_for} within {EVENT_TIMEOUT:?}", self.name),
        }
    }

    /// Waits for the first event that `select` picks; publishes passed over on the way
    /// are kept for [`Client::next_publish`].
    async fn wait_for<T>(&mut self, what: &str, mut select: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let event = self.next_event(what).await;
            if let Some(found) = select(&event) {
                return found;
            }
            if let Event::Incoming(Packet::Publish(publish)) = event {
                self.unread.push_back(publish);
            }
        }
    }

    /// Subscribes and returns the granted QoS, failing the test if the broker refused.
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> QoS {
        self.client.subscribe(filter, qos).await.expect("queue SUBSCRIBE");
        let pkid = self.outgoing_pkid("SUBSCRIBE", |o| matches!(o, Outgoing::Subscribe(_))).await;
        let codes = self
            .wait_for("SUBACK", |event| match event {
                Event::Incoming(Packet::SubAck(suback)) if suback.pkid == pkid => Some(suback.return_codes.clone()),
                _ => None,
            })
            .await;
        match codes.as_slice() {
            [SubscribeReasonCode::Success(granted)] => *granted,
            other => panic!("{}: SUBSCRIBE {filter:?} answered with {other:?}", self.name),
        }
    }

    /// Unsubscribes and waits for the UNSUBACK.
    async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.expect("queue UNSUBSCRIBE");
        let pkid = self.outgoing_pkid("UNSUBSCRIBE", |o| matches!(o, Outgoing::Unsubscribe(_))).await;
        self.wait_for("UNSUBACK", |event| {
            matches!(event, Event::Incoming(Packet::UnsubAck(unsuback)) if unsuback.pkid == pkid).then_some(())
        })
        .await;
    }

    /// Publishes and waits until the broker has taken the message: sent, for QoS 0;
    /// PUBACK for QoS 1; PUBREC, our PUBREL, then PUBCOMP for QoS 2.
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload).await.expect("queue PUBLISH");
        let pkid = self.outgoing_pkid("PUBLISH", |o| matches!(o, Outgoing::Publish(_))).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |event| {
                    matches!(event, Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid).then_some(())
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBREC", |event| {
                    matches!(event, Event::Incoming(Packet::PubRec(rec)) if rec.pkid == pkid).then_some(())
                })
                .await;
                self.wait_for("PUBCOMP", |event| {
                    matches!(event, Event::Incoming(Packet::PubComp(comp)) if comp.pkid == pkid).then_some(())
                })
                .await;
            }
        }
    }

    /// Waits for the event loop to send a packet that `kind` recognises and returns
    /// its packet identifier (0 for a QoS 0 PUBLISH).
    async fn outgoing_pkid(&mut self, what: &str, kind: impl Fn(&Outgoing) -> bool) -> u16 {
        self.wait_for(&format!("outgoing {what}"), |event| match event {
            Event::Outgoing(outgoing) if kind(outgoing) => match outgoing {
                Outgoing::Publish(pkid) | Outgoing::Subscribe(pkid) | Outgoing::Unsubscribe(pkid) => Some(*pkid),
                _ => Some(0),
            },
            _ => None,
        })
        .await
    }

    /// The next message the broker delivered.
    async fn next_publish(&mut self) -> Publish {
        if let Some(publish) = self.unread.pop_front() {
            return publish;
        }
        self.wait_for("PUBLISH", |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection.
    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        self.wait_for("outgoing DISCONNECT", |event| {
            matches!(event, Event::Outgoing(Outgoing::Disconnect)).then_some(())
        })
        .await;
        loop {
            match timeout(EVENT_TIMEOUT, self.events.recv()).await {
                // The broker closed the connection after our DISCONNECT.
                Ok(Some(Err(_)) | None) => return,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("{}: the broker did not close the connection after DISCONNECT", self.name),
            }
        }
    }

    /// Drops the connection without DISCONNECT, as a crashed client would: the event
    /// loop task, which owns the socket, is aborted, and its end awaited.
    async fn drop_connection(mut self) {
        self.event_loop.abort();
        let ended = timeout(EVENT_TIMEOUT, &mut self.event_loop).await;
        assert!(ended.is_ok(), "{}: the aborted event loop did not end", self.name);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn text(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

/// One message, published and subscribed at `qos`, arrives intact at `qos`.
async fn round_trip(qos: QoS) {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "sub").await;
    let mut publisher = Client::connected(&broker, "pub").await;
    assert_eq!(sub.subscribe("round/trip", qos).await, qos, "granted QoS");

    let payload = format!("payload at {qos:?}");
    publisher.publish("round/trip", qos, false, payload.clone()).await;

    let got = sub.next_publish().await;
    assert_eq!((got.topic.as_str(), text(&got).as_str(), got.qos, got.retain), ("round/trip", &*payload, qos, false));
    if qos == QoS::ExactlyOnce {
        // rumqttc answered PUBREC; the broker must release the message with PUBREL.
        sub.wait_for("PUBREL from the broker", |event| {
            matches!(event, Event::Incoming(Packet::PubRel(rel)) if rel.pkid == got.pkid).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_qos_0_message_goes_from_publisher_to_subscriber() {
    round_trip(QoS::AtMostOnce).await;
}

#[tokio::test]
async fn a_qos_1_message_goes_from_publisher_to_subscriber() {
    round_trip(QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn a_qos_2_message_goes_from_publisher_to_subscriber() {
    round_trip(QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn a_message_is_delivered_at_the_lower_of_the_published_and_the_granted_qos() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "sub").await;
    let mut publisher = Client::connected(&broker, "pub").await;
    sub.subscribe("low", QoS::AtLeastOnce).await;
    sub.subscribe("high", QoS::ExactlyOnce).await;

    publisher.publish("low", QoS::ExactlyOnce, false, "2 to a QoS 1 subscription").await;
    publisher.publish("high", QoS::AtLeastOnce, false, "1 to a QoS 2 subscription").await;

    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    assert_eq!((first.topic.as_str(), first.qos), ("low", QoS::AtLeastOnce));
    assert_eq!((second.topic.as_str(), second.qos), ("high", QoS::AtLeastOnce));
}

#[tokio::test]
async fn wildcard_subscriptions_receive_exactly_the_matching_topics() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "sub").await;
    let mut publisher = Client::connected(&broker, "pub").await;
    sub.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    sub.subscribe("home/#", QoS::AtLeastOnce).await;
    sub.subscribe("end", QoS::AtLeastOnce).await;

    let topics = [
        ("sensors/kitchen/temp", true),
        ("sensors/kitchen/humidity", false),
        ("sensors/temp", false),
        ("sensors/a/b/temp", false),
        ("sensors//temp", true),
        ("home", true),
        ("home/garden/light/level", true),
        ("homes/x", false),
        ("other", false),
    ];
    for (topic, _) in topics {
        publisher.publish(topic, QoS::AtLeastOnce, false, topic).await;
    }
    // Messages from one publisher arrive in order: once this one is in, every
    // matching topic above must have come before it.
    publisher.publish("end", QoS::AtLeastOnce, false, "end").await;

    let mut received = Vec::new();
    loop {
        let publish = sub.next_publish().await;
        if publish.topic == "end" {
            break;
        }
        assert_eq!(text(&publish), publish.topic, "payload names the topic it was published to");
        received.push(publish.topic);
    }
    let expected: Vec<&str> = topics.iter().filter(|(_, matches)| *matches).map(|(topic, _)| *topic).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn an_unsubscribed_filter_receives_nothing_more() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "sub").await;
    let mut publisher = Client::connected(&broker, "pub").await;
    sub.subscribe("kept", QoS::AtLeastOnce).await;
    sub.subscribe("dropped", QoS::AtLeastOnce).await;
    sub.unsubscribe("dropped").await;

    publisher.publish("dropped", QoS::AtLeastOnce, false, "should not arrive").await;
    publisher.publish("kept", QoS::AtLeastOnce, false, "arrives").await;

    let first = sub.next_publish().await;
    assert_eq!((first.topic.as_str(), text(&first).as_str()), ("kept", "arrives"));
}

#[tokio::test]
async fn a_retained_message_reaches_a_late_subscriber_with_the_retain_flag_set() {
    let broker = start_broker(&[]);
    let mut publisher = Client::connected(&broker, "pub").await;
    publisher.publish("status/door", QoS::AtLeastOnce, true, "closed").await;

    let mut late = Client::connected(&broker, "late").await;
    late.subscribe("status/+", QoS::AtLeastOnce).await;

    let got = late.next_publish().await;
    assert_eq!((got.topic.as_str(), text(&got).as_str(), got.qos), ("status/door", "closed", QoS::AtLeastOnce));
    assert!(got.retain, "a retained message sent on subscription must have RETAIN set [MQTT-3.3.1-8]");
}

#[tokio::test]
async fn a_retained_message_is_forwarded_live_without_the_retain_flag_and_an_empty_one_clears_it() {
    let broker = start_broker(&[]);
    let mut live = Client::connected(&broker, "live").await;
    let mut publisher = Client::connected(&broker, "pub").await;
    live.subscribe("status/lamp", QoS::AtLeastOnce).await;

    publisher.publish("status/lamp", QoS::AtLeastOnce, true, "on").await;
    let got = live.next_publish().await;
    assert_eq!(text(&got), "on");
    assert!(!got.retain, "a message delivered to an existing subscription has RETAIN clear [MQTT-3.3.1-9]");

    // An empty retained message removes the retained one [MQTT-3.3.1-10].
    publisher.publish("status/lamp", QoS::AtLeastOnce, true, "").await;
    publisher.publish("status/marker", QoS::AtLeastOnce, true, "still here").await;
    let mut late = Client::connected(&broker, "late").await;
    late.subscribe("status/#", QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!((got.topic.as_str(), text(&got).as_str()), ("status/marker", "still here"));
}

#[tokio::test]
async fn a_persistent_session_receives_qos_1_messages_published_while_it_was_offline() {
    let broker = start_broker(&[]);
    let mut persistent = options(&broker, "rumqttc-keeper");
    persistent.set_clean_session(false);

    let (mut keeper, connack) = Client::connect(persistent.clone()).await;
    assert!(!connack.session_present, "a new client id has no session to resume");
    keeper.subscribe("offline/#", QoS::AtLeastOnce).await;
    keeper.disconnect().await;

    let mut publisher = Client::connected(&broker, "pub").await;
    for n in 0..5 {
        publisher.publish(&format!("offline/{n}"), QoS::AtLeastOnce, false, format!("queued {n}")).await;
    }

    let (mut keeper, connack) = Client::connect(persistent).await;
    assert!(connack.session_present, "reconnecting with clean_session=false must resume the session");
    for n in 0..5 {
        let got = keeper.next_publish().await;
        assert_eq!(
            (got.topic.as_str(), text(&got).as_str(), got.qos),
            (&*format!("offline/{n}"), &*format!("queued {n}"), QoS::AtLeastOnce)
        );
    }
    // The subscription is part of the session: it still works without re-subscribing.
    publisher.publish("offline/live", QoS::AtLeastOnce, false, "live").await;
    assert_eq!(text(&keeper.next_publish().await), "live");
}

#[tokio::test]
async fn a_clean_session_discards_the_previous_persistent_session() {
    let broker = start_broker(&[]);
    let mut persistent = options(&broker, "rumqttc-forgetful");
    persistent.set_clean_session(false);
    let (mut keeper, _) = Client::connect(persistent.clone()).await;
    keeper.subscribe("forgotten", QoS::AtLeastOnce).await;
    keeper.disconnect().await;

    let (clean, connack) = Client::connect(options(&broker, "rumqttc-forgetful")).await;
    assert!(!connack.session_present, "a clean session never reports a present session [MQTT-3.2.2-1]");
    clean.disconnect().await;

    let (_, connack) = Client::connect(persistent).await;
    assert!(!connack.session_present, "the clean session replaced the persistent one");
}

#[tokio::test]
async fn the_last_will_is_published_when_a_client_drops_its_connection() {
    let broker = start_broker(&[]);
    a_dropped_client_s_will_reaches_a_watcher(&broker).await;
}

/// A client with a QoS 1 will drops its connection without DISCONNECT; a
/// subscriber to `wills/#` gets the will.
async fn a_dropped_client_s_will_reaches_a_watcher(broker: &TestBroker) {
    let mut watcher = Client::connected(broker, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut dying = options(broker, "dying");
    dying.set_last_will(LastWill::new("wills/dying", "dying went away", QoS::AtLeastOnce, false));
    let (dying, _) = Client::connect(dying).await;

    dying.drop_connection().await;

    let got = watcher.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), text(&got).as_str(), got.qos),
        ("wills/dying", "dying went away", QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn a_retained_will_is_kept_for_later_subscribers() {
    let broker = start_broker(&[]);
    let mut dying = options(&broker, "dying");
    dying.set_last_will(LastWill::new("wills/retained", "offline", QoS::AtLeastOnce, true));
    let (dying, _) = Client::connect(dying).await;
    // A watcher that sees the will live proves it was published before the late
    // subscriber asks for retained messages.
    let mut watcher = Client::connected(&broker, "watcher").await;
    watcher.subscribe("wills/retained", QoS::AtLeastOnce).await;

    dying.drop_connection().await;
    assert_eq!(text(&watcher.next_publish().await), "offline");

    let mut late = Client::connected(&broker, "late").await;
    late.subscribe("wills/retained", QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(text(&got), "offline");
    assert!(got.retain, "a retained will is delivered to later subscribers as retained");
}

#[tokio::test]
async fn no_will_is_published_after_a_clean_disconnect() {
    let broker = start_broker(&[]);
    let mut watcher = Client::connected(&broker, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    watcher.subscribe("after", QoS::AtLeastOnce).await;
    let mut polite = options(&broker, "polite");
    polite.set_last_will(LastWill::new("wills/polite", "should not arrive", QoS::AtLeastOnce, false));
    let (polite, _) = Client::connect(polite).await;

    polite.disconnect().await;
    let mut publisher = Client::connected(&broker, "pub").await;
    publisher.publish("after", QoS::AtLeastOnce, false, "marker").await;

    let got = watcher.next_publish().await;
    assert_eq!((got.topic.as_str(), text(&got).as_str()), ("after", "marker"), "the will was published");
}

/// Publishes `count` QoS 1 messages as fast as rumqttc sends them and checks that the
/// subscriber gets every one, once, in order.
async fn many_qos_1_messages_in_order(broker: &TestBroker, count: usize) {
    let mut sub = Client::connected(broker, "sub").await;
    let mut publisher = Client::connected(broker, "pub").await;
    sub.subscribe("bulk", QoS::AtLeastOnce).await;

    for n in 0..count {
        publisher.client.publish("bulk", QoS::AtLeastOnce, false, n.to_string()).await.expect("queue PUBLISH");
    }

    for n in 0..count {
        let got = sub.next_publish().await;
        assert_eq!(text(&got), n.to_string(), "message {n} of {count}");
        assert_eq!(got.qos, QoS::AtLeastOnce);
    }
    // Every PUBLISH was acknowledged to the publisher, too.
    let mut acked = 0;
    while acked < count {
        publisher
            .wait_for(&format!("PUBACK {} of {count}", acked + 1), |event| {
                matches!(event, Event::Incoming(Packet::PubAck(_))).then_some(())
            })
            .await;
        acked += 1;
    }
}

#[tokio::test]
async fn a_thousand_qos_1_messages_arrive_complete_and_in_order() {
    let broker = start_broker(&[]);
    many_qos_1_messages_in_order(&broker, 1000).await;
}

#[tokio::test]
async fn a_thousand_qos_1_messages_arrive_complete_and_in_order_through_a_small_inflight_window() {
    let broker = start_broker(&["--max-inflight", "3"]);
    many_qos_1_messages_in_order(&broker, 1000).await;
}

/// `threads = 1` (here from the configuration file) runs tokio's single-threaded
/// scheduler, as a broker confined to one CPU does by default: messages flow
/// through it, QoS 1 in order, and a will still goes out when a client drops.
#[tokio::test]
async fn a_broker_on_one_thread_serves_like_one_on_several() {
    let dir = midge_test_support::TempDir::new("one-thread");
    let config = dir.join("midge.toml");
    std::fs::write(&config, "threads = 1\n").expect("write the configuration file");
    let broker = start_broker(&["-c", config.to_str().expect("a UTF-8 path")]);
    assert!(broker.log().contains("starting on 1 thread"), "{}", broker.log());
    many_qos_1_messages_in_order(&broker, 1000).await;
    a_dropped_client_s_will_reaches_a_watcher(&broker).await;
}
