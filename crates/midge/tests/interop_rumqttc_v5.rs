//! Interoperability with the `rumqttc` crate's MQTT 5 client (`rumqttc::v5`, 0.25).
//!
//! Run with `cargo test -p midge --test interop_rumqttc_v5`. Each test starts its own
//! broker; each client's event loop runs on its own task and hands every event to the
//! test through a channel, so a test awaits the packet it expects (a CONNACK, SUBACK,
//! PUBACK, PUBLISH, DISCONNECT…) with a time limit instead of sleeping. Only a test
//! that proves something does *not* arrive waits a short, fixed time.

mod interop_support;

use std::collections::VecDeque;
use std::time::Duration;

use interop_support::{TestBroker, start_broker};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason, Publish, PublishProperties,
    RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a client waits for one event that should come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client waits to be reasonably sure that a message does not come.
const QUIET: Duration = Duration::from_secs(1);

/// Options for a client of `broker` named `id`: clean start, keep alive 60 s, no
/// session expiry (the session ends with the connection).
fn options(broker: &TestBroker, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// A connected `rumqttc` v5 client with its event loop on a task.
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

    /// Connects a clean-start client named `id`.
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

    /// Waits for the error that ends the connection (the broker closing it, say).
    async fn connection_error(&mut self, waiting_for: &str) -> ConnectionError {
        loop {
            match timeout(EVENT_TIMEOUT, self.events.recv()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(err))) => return err,
                Ok(None) => panic!("{}: event loop ended without an error while waiting for {waiting_for}", self.name),
                Err(_) => panic!("{}: no {waiting_for} within {EVENT_TIMEOUT:?}", self.name),
            }
        }
    }

    /// Subscribes to `filter` (with its subscription options) and, if given, the
    /// SUBSCRIBE `properties`; fails the test unless the broker grants the requested QoS.
    async fn subscribe_with(&mut self, filter: Filter, properties: Option<SubscribeProperties>) {
        let (path, requested) = (filter.path.clone(), filter.qos);
        match properties {
            Some(properties) => self.client.subscribe_many_with_properties([filter], properties).await,
            None => self.client.subscribe_many([filter]).await,
        }
        .expect("queue SUBSCRIBE");
        let pkid = self.outgoing_pkid("SUBSCRIBE", |o| matches!(o, Outgoing::Subscribe(_))).await;
        let codes = self
            .wait_for("SUBACK", |event| match event {
                Event::Incoming(Packet::SubAck(suback)) if suback.pkid == pkid => Some(suback.return_codes.clone()),
                _ => None,
            })
            .await;
        match codes.as_slice() {
            [SubscribeReasonCode::Success(granted)] if *granted == requested => {}
            other => panic!("{}: SUBSCRIBE {path:?} at {requested:?} answered with {other:?}", self.name),
        }
    }

    /// Subscribes to `path` at `qos` with default subscription options.
    async fn subscribe(&mut self, path: &str, qos: QoS) {
        self.subscribe_with(Filter::new(path, qos), None).await;
    }

    /// Publishes and waits until the broker has taken the message: sent, for QoS 0;
    /// the PUBACK, which is returned, for QoS 1; the whole PUBREC/PUBREL/PUBCOMP
    /// flow for QoS 2 (nothing returned).
    async fn publish_with(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        properties: Option<PublishProperties>,
    ) -> Option<PubAck> {
        let payload = payload.into();
        match properties {
            Some(properties) => self.client.publish_with_properties(topic, qos, retain, payload, properties).await,
            None => self.client.publish(topic, qos, retain, payload).await,
        }
        .expect("queue PUBLISH");
        let pkid = self.outgoing_pkid("PUBLISH", |o| matches!(o, Outgoing::Publish(_))).await;
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(
                self.wait_for("PUBACK", |event| match event {
                    Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(ack.clone()),
                    _ => None,
                })
                .await,
            ),
            QoS::ExactlyOnce => {
                self.wait_for("PUBREC", |event| {
                    matches!(event, Event::Incoming(Packet::PubRec(rec)) if rec.pkid == pkid).then_some(())
                })
                .await;
                self.wait_for("PUBCOMP", |event| {
                    matches!(event, Event::Incoming(Packet::PubComp(comp)) if comp.pkid == pkid).then_some(())
                })
                .await;
                None
            }
        }
    }

    /// Publishes without properties; see [`Client::publish_with`].
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) -> Option<PubAck> {
        self.publish_with(topic, qos, retain, payload, None).await
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

    /// Fails the test if a message arrives within `quiet`.
    async fn expect_no_publish(&mut self, quiet: Duration) {
        if let Some(publish) = self.unread.pop_front() {
            panic!("{}: unexpected message on {:?}: {:?}", self.name, topic(&publish), text(&publish));
        }
        if let Ok(publish) = timeout(quiet, self.next_publish()).await {
            panic!("{}: unexpected message on {:?}: {:?}", self.name, topic(&publish), text(&publish));
        }
    }

    /// Acknowledges `publish` (for a client with manual acks) and waits until the
    /// PUBACK is sent.
    async fn ack(&mut self, publish: &Publish) {
        self.client.ack(publish).await.expect("queue PUBACK");
        let pkid = publish.pkid;
        self.wait_for("outgoing PUBACK", |event| {
            matches!(event, Event::Outgoing(Outgoing::PubAck(acked)) if *acked == pkid).then_some(())
        })
        .await;
    }

    /// Sends DISCONNECT (reason 0x00, no properties) and waits until the broker has
    /// closed the connection.
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
}

impl Drop for Client {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn text(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

fn topic(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.topic).into_owned()
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A session with a Session Expiry Interval above 0 outlives its connection: QoS 1
/// messages for it are kept while it is offline, and a Clean Start 0 reconnection
/// resumes it with Session Present 1 and gets them [MQTT-3.1.2-23] [MQTT-3.2.2-2].
#[tokio::test]
async fn a_session_with_an_expiry_interval_is_resumed_with_its_queued_messages() {
    let broker = start_broker(&[]);
    let mut persistent = options(&broker, "v5-resume");
    persistent.set_clean_start(false).set_session_expiry_interval(Some(60));
    let (mut first, connack) = Client::connect(persistent.clone()).await;
    assert!(!connack.session_present, "a new client id has no session to resume [MQTT-3.2.2-3]");
    first.subscribe("resume/t", QoS::AtLeastOnce).await;
    first.disconnect().await;

    let mut publisher = Client::connected(&broker, "v5-resume-pub").await;
    publisher.publish("resume/t", QoS::AtLeastOnce, false, "while away").await;

    let (mut again, connack) = Client::connect(persistent).await;
    assert!(connack.session_present, "the session was kept for 60 s, so it must be present [MQTT-3.2.2-2]");
    let got = again.next_publish().await;
    assert_eq!((topic(&got).as_str(), text(&got).as_str(), got.qos), ("resume/t", "while away", QoS::AtLeastOnce));
}

/// Without a Session Expiry Interval (absent means 0) the session ends with the
/// network connection [MQTT-3.1.2-23]: a Clean Start 0 reconnection finds none
/// (Session Present 0 [MQTT-3.2.2-3]) and receives nothing published meanwhile.
#[tokio::test]
async fn a_session_without_an_expiry_interval_ends_with_its_connection() {
    let broker = start_broker(&[]);
    let mut no_expiry = options(&broker, "v5-no-expiry");
    no_expiry.set_clean_start(false);
    let (mut first, _) = Client::connect(no_expiry.clone()).await;
    first.subscribe("expiry0/t", QoS::AtLeastOnce).await;
    first.disconnect().await;

    let mut publisher = Client::connected(&broker, "v5-no-expiry-pub").await;
    publisher.publish("expiry0/t", QoS::AtLeastOnce, false, "nobody keeps this").await;

    let (mut again, connack) = Client::connect(no_expiry).await;
    assert!(!connack.session_present, "the session ended with the connection [MQTT-3.2.2-3]");
    // Anything the old session had queued would come before this SUBACK and marker.
    again.subscribe("expiry0/marker", QoS::AtLeastOnce).await;
    publisher.publish("expiry0/marker", QoS::AtLeastOnce, false, "marker").await;
    let got = again.next_publish().await;
    assert_eq!((topic(&got).as_str(), text(&got).as_str()), ("expiry0/marker", "marker"), "an old message came");
}

/// The properties of an Application Message reach the subscriber unaltered (v5
/// section 3.3.2.3): Payload Format Indicator [MQTT-3.3.2-4], Response Topic
/// [MQTT-3.3.2-15], Correlation Data [MQTT-3.3.2-16], User Properties, in order and
/// with duplicates [MQTT-3.3.2-17] [MQTT-3.3.2-18], Content Type [MQTT-3.3.2-20]; the
/// Message Expiry Interval is the one received less the time waited [MQTT-3.3.2-6].
#[tokio::test]
async fn publish_properties_reach_the_subscriber_unchanged() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "v5-props-sub").await;
    let mut publisher = Client::connected(&broker, "v5-props-pub").await;
    sub.subscribe("props/t", QoS::AtLeastOnce).await;

    let user_properties = strings(&[("b", "2"), ("a", "1"), ("b", "3"), ("a", "1"), ("ünï", "cödé")]);
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("application/json".to_owned()),
        response_topic: Some("props/reply".to_owned()),
        correlation_data: Some(vec![0, 1, 2, 0xff, 0].into()),
        user_properties: user_properties.clone(),
        ..PublishProperties::default()
    };
    publisher.publish_with("props/t", QoS::AtLeastOnce, false, r#"{"ok":true}"#, Some(sent)).await;

    let got = sub.next_publish().await;
    assert_eq!((topic(&got).as_str(), text(&got).as_str()), ("props/t", r#"{"ok":true}"#));
    let props = got.properties.expect("the delivered PUBLISH has properties");
    assert_eq!(props.payload_format_indicator, Some(1), "[MQTT-3.3.2-4]");
    assert_eq!(props.content_type.as_deref(), Some("application/json"), "[MQTT-3.3.2-20]");
    assert_eq!(props.response_topic.as_deref(), Some("props/reply"), "[MQTT-3.3.2-15]");
    assert_eq!(props.correlation_data.as_deref(), Some(&[0, 1, 2, 0xff, 0][..]), "[MQTT-3.3.2-16]");
    assert_eq!(props.user_properties, user_properties, "[MQTT-3.3.2-17] [MQTT-3.3.2-18]");
    let expiry = props.message_expiry_interval.expect("the Message Expiry Interval is forwarded [MQTT-3.3.2-6]");
    assert!((100..=120).contains(&expiry), "Message Expiry Interval {expiry}, sent as 120 a moment ago");
    assert_eq!(props.topic_alias, None, "this client allowed no topic aliases");
    assert!(props.subscription_identifiers.is_empty(), "the subscription had no identifier");
}

/// A message delivered through a subscription made with a Subscription Identifier
/// carries that identifier [MQTT-3.3.4-3] (v5 section 3.3.2.3.8, 3.8.2.1.2); one
/// delivered through a subscription without one carries none.
#[tokio::test]
async fn the_subscription_identifier_comes_back_on_matching_messages() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "v5-subid-sub").await;
    let mut publisher = Client::connected(&broker, "v5-subid-pub").await;
    let with_id = SubscribeProperties { id: Some(7), user_properties: Vec::new() };
    sub.subscribe_with(Filter::new("ids/+", QoS::AtLeastOnce), Some(with_id)).await;
    sub.subscribe("plain", QoS::AtLeastOnce).await;

    publisher.publish("ids/a", QoS::AtLeastOnce, false, "identified").await;
    publisher.publish("plain", QoS::AtLeastOnce, false, "anonymous").await;

    let identified = sub.next_publish().await;
    assert_eq!(topic(&identified), "ids/a");
    let ids = identified.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
    assert_eq!(ids, [7], "the Subscription Identifier of the matching subscription [MQTT-3.3.4-3]");

    let anonymous = sub.next_publish().await;
    assert_eq!(topic(&anonymous), "plain");
    let ids = anonymous.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
    assert!(ids.is_empty(), "a subscription without an identifier adds none, got {ids:?}");
}

/// With No Local set, the client's own messages are not sent back to it
/// [MQTT-3.8.3-3]; other clients' messages still are.
#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let broker = start_broker(&[]);
    let mut chatter = Client::connected(&broker, "v5-nolocal-self").await;
    let mut other = Client::connected(&broker, "v5-nolocal-other").await;
    let no_local = Filter { nolocal: true, ..Filter::new("chat", QoS::AtLeastOnce) };
    chatter.subscribe_with(no_local, None).await;

    chatter.publish("chat", QoS::AtLeastOnce, false, "own").await;
    other.publish("chat", QoS::AtLeastOnce, false, "other").await;

    let got = chatter.next_publish().await;
    assert_eq!(text(&got), "other", "the client's own message came back despite No Local [MQTT-3.8.3-3]");
}

/// A QoS 2 message goes through PUBREC/PUBREL/PUBCOMP and reaches a QoS 2
/// subscriber once, at QoS 2 [MQTT-4.3.3-3].
#[tokio::test]
async fn a_qos_2_message_arrives_once_at_qos_2() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "v5-qos2-sub").await;
    let mut publisher = Client::connected(&broker, "v5-qos2-pub").await;
    sub.subscribe("exactly/once", QoS::ExactlyOnce).await;
    publisher.publish("exactly/once", QoS::ExactlyOnce, false, "one").await;
    publisher.publish("exactly/once", QoS::AtMostOnce, false, "marker").await;
    let got = sub.next_publish().await;
    assert_eq!((text(&got).as_str(), got.qos), ("one", QoS::ExactlyOnce));
    assert_eq!(text(&sub.next_publish().await), "marker", "the QoS 2 message came once");
}

/// Retain As Published (v5 section 3.8.3.1): with it, a message forwarded live keeps
/// the RETAIN flag it was published with [MQTT-3.3.1-13]; without it, RETAIN is
/// cleared [MQTT-3.3.1-12].
#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_delivery() {
    let broker = start_broker(&[]);
    let mut keeps = Client::connected(&broker, "v5-rap-keeps").await;
    let mut clears = Client::connected(&broker, "v5-rap-clears").await;
    let mut publisher = Client::connected(&broker, "v5-rap-pub").await;
    keeps.subscribe_with(Filter { preserve_retain: true, ..Filter::new("rap/#", QoS::AtLeastOnce) }, None).await;
    clears.subscribe("rap/#", QoS::AtLeastOnce).await;

    publisher.publish("rap/lamp", QoS::AtLeastOnce, true, "retained").await;
    publisher.publish("rap/lamp", QoS::AtLeastOnce, false, "not retained").await;

    let (first, second) = (keeps.next_publish().await, keeps.next_publish().await);
    assert_eq!((text(&first).as_str(), first.retain), ("retained", true), "RAP 1 keeps RETAIN [MQTT-3.3.1-13]");
    assert_eq!((text(&second).as_str(), second.retain), ("not retained", false), "[MQTT-3.3.1-13]");
    let got = clears.next_publish().await;
    assert_eq!((text(&got).as_str(), got.retain), ("retained", false), "RAP 0 clears RETAIN [MQTT-3.3.1-12]");
}

/// Retain Handling 2 (Do not send) sends no retained message at subscribe
/// [MQTT-3.3.1-11], where Retain Handling 0 does [MQTT-3.3.1-9] (v5 section 3.8.3.1).
#[tokio::test]
async fn retain_handling_do_not_send_sends_no_retained_message_at_subscribe() {
    let broker = start_broker(&[]);
    let mut publisher = Client::connected(&broker, "v5-rh2-pub").await;
    publisher.publish("rh/state", QoS::AtLeastOnce, true, "old").await;

    let mut control = Client::connected(&broker, "v5-rh2-control").await;
    control.subscribe("rh/#", QoS::AtLeastOnce).await;
    let got = control.next_publish().await;
    assert_eq!((topic(&got).as_str(), text(&got).as_str(), got.retain), ("rh/state", "old", true), "[MQTT-3.3.1-9]");

    let mut never = Client::connected(&broker, "v5-rh2-never").await;
    let filter = Filter { retain_forward_rule: RetainForwardRule::Never, ..Filter::new("rh/#", QoS::AtLeastOnce) };
    never.subscribe_with(filter, None).await;
    publisher.publish("rh/marker", QoS::AtLeastOnce, false, "marker").await;
    let got = never.next_publish().await;
    assert_eq!(topic(&got), "rh/marker", "a retained message was sent despite Retain Handling 2 [MQTT-3.3.1-11]");
}

/// Retain Handling 1 sends retained messages only when the subscription is new
/// [MQTT-3.3.1-10] (v5 section 3.8.3.1).
#[tokio::test]
async fn retain_handling_on_new_subscription_sends_retained_messages_only_once() {
    let broker = start_broker(&[]);
    let mut publisher = Client::connected(&broker, "v5-rh1-pub").await;
    publisher.publish("rh1/state", QoS::AtLeastOnce, true, "old").await;

    let mut sub = Client::connected(&broker, "v5-rh1-sub").await;
    let filter =
        Filter { retain_forward_rule: RetainForwardRule::OnNewSubscribe, ..Filter::new("rh1/#", QoS::AtLeastOnce) };
    sub.subscribe_with(filter.clone(), None).await;
    let got = sub.next_publish().await;
    assert_eq!((text(&got).as_str(), got.retain), ("old", true), "a new subscription gets the retained message");

    sub.subscribe_with(filter, None).await;
    publisher.publish("rh1/marker", QoS::AtLeastOnce, false, "marker").await;
    let got = sub.next_publish().await;
    assert_eq!(topic(&got), "rh1/marker", "the retained message was sent again for an existing subscription");
}

/// A shared subscription delivers each message to exactly one member of the group
/// (v5 section 4.8.2); with the default round-robin strategy, both members get some.
#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_exactly_one_member() {
    let broker = start_broker(&[]);
    let mut a = Client::connected(&broker, "v5-share-a").await;
    let mut b = Client::connected(&broker, "v5-share-b").await;
    let mut publisher = Client::connected(&broker, "v5-share-pub").await;
    a.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;

    const COUNT: usize = 10;
    for n in 0..COUNT {
        publisher.publish(&format!("jobs/{n}"), QoS::AtLeastOnce, false, n.to_string()).await;
    }

    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    while to_a.len() + to_b.len() < COUNT {
        let (receiver, got) = tokio::select! {
            got = a.next_publish() => (&mut to_a, got),
            got = b.next_publish() => (&mut to_b, got),
        };
        assert_eq!(topic(&got), format!("jobs/{}", text(&got)), "payload names the topic it was published to");
        receiver.push(text(&got).parse::<usize>().expect("a number"));
    }
    // A message given to both members would show up as one more here.
    tokio::join!(a.expect_no_publish(QUIET), b.expect_no_publish(QUIET));

    let mut all: Vec<usize> = to_a.iter().chain(&to_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..COUNT).collect::<Vec<_>>(), "each message exactly once (a got {to_a:?}, b got {to_b:?})");
    assert!(!to_a.is_empty() && !to_b.is_empty(), "round robin gives both members some: a {to_a:?}, b {to_b:?}");
}

/// A QoS 1 message that no subscription matches is acknowledged with 0x10 No matching
/// subscribers (v5 section 3.4.2.1); one that reaches a subscriber with 0x00 Success.
#[tokio::test]
async fn a_qos_1_publish_nobody_subscribes_to_is_acknowledged_with_no_matching_subscribers() {
    let broker = start_broker(&[]);
    let mut publisher = Client::connected(&broker, "v5-puback-pub").await;
    let ack = publisher.publish("nobody/listens", QoS::AtLeastOnce, false, "lost").await.expect("a PUBACK");
    assert_eq!(ack.reason, PubAckReason::NoMatchingSubscribers);

    let mut sub = Client::connected(&broker, "v5-puback-sub").await;
    sub.subscribe("somebody/listens", QoS::AtLeastOnce).await;
    let ack = publisher.publish("somebody/listens", QoS::AtLeastOnce, false, "heard").await.expect("a PUBACK");
    assert_eq!(ack.reason, PubAckReason::Success);
    assert_eq!(text(&sub.next_publish().await), "heard");
}

/// Back-to-back QoS 1 messages on changing topics (which the broker reads and routes
/// together) each get their own PUBACK reason: 0x10 where nobody subscribes, 0x00
/// where somebody does (v5 section 3.4.2.1), in the order published [MQTT-4.6.0-2].
#[tokio::test]
async fn back_to_back_publishes_each_get_their_own_puback_reason() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "v5-acks-sub").await;
    sub.subscribe("acks/heard", QoS::AtLeastOnce).await;
    let mut publisher = Client::connected(&broker, "v5-acks-pub").await;
    let plan = ["acks/nobody", "acks/nobody", "acks/heard", "acks/heard", "acks/nobody", "acks/heard"];
    // Queued without waiting: the event loop writes them one behind the other.
    for (i, topic) in plan.iter().enumerate() {
        publisher.client.publish(*topic, QoS::AtLeastOnce, false, i.to_string()).await.expect("queue PUBLISH");
    }
    let mut acks = Vec::new();
    while acks.len() < plan.len() {
        let ack = publisher
            .wait_for("PUBACK", |event| match event {
                Event::Incoming(Packet::PubAck(ack)) => Some((ack.pkid, ack.reason)),
                _ => None,
            })
            .await;
        acks.push(ack);
    }
    let expected: Vec<(u16, PubAckReason)> = plan
        .iter()
        .enumerate()
        .map(|(i, topic)| {
            let reason =
                if *topic == "acks/heard" { PubAckReason::Success } else { PubAckReason::NoMatchingSubscribers };
            (i as u16 + 1, reason)
        })
        .collect();
    assert_eq!(acks, expected);
    for i in [2, 3, 5] {
        assert_eq!(text(&sub.next_publish().await), i.to_string());
    }
    sub.expect_no_publish(QUIET).await;
}

/// A client may set a Topic Alias with one PUBLISH and then publish with an empty
/// topic and only the alias (v5 section 3.3.2.3.4); subscribers get the full topic
/// and, having allowed no aliases themselves, no Topic Alias [MQTT-3.1.2-27].
#[tokio::test]
async fn an_inbound_topic_alias_is_resolved_for_subscribers() {
    let broker = start_broker(&[]);
    let mut sub = Client::connected(&broker, "v5-alias-sub").await;
    let (mut publisher, connack) = Client::connect(options(&broker, "v5-alias-pub")).await;
    let alias_max = connack.properties.as_ref().and_then(|p| p.topic_alias_max).unwrap_or(0);
    assert!(alias_max >= 1, "the broker allows topic aliases by default, CONNACK says {alias_max}");
    sub.subscribe("alias/t", QoS::AtLeastOnce).await;

    let alias = || Some(PublishProperties { topic_alias: Some(1), ..PublishProperties::default() });
    publisher.publish_with("alias/t", QoS::AtLeastOnce, false, "sets the alias", alias()).await;
    publisher.publish_with("", QoS::AtLeastOnce, false, "uses the alias", alias()).await;

    for expected in ["sets the alias", "uses the alias"] {
        let got = sub.next_publish().await;
        assert_eq!((topic(&got).as_str(), text(&got).as_str()), ("alias/t", expected));
        assert_eq!(got.properties.and_then(|p| p.topic_alias), None, "[MQTT-3.1.2-27]");
    }
}

/// A broker that shuts down (SIGTERM) tells its MQTT 5 clients with a DISCONNECT
/// with reason code 0x8B Server shutting down (v5 sections 3.14.2.1 and 4.13), and
/// exits successfully.
#[tokio::test]
async fn a_stopping_broker_disconnects_clients_with_server_shutting_down() {
    let mut broker = start_broker(&[]);
    let mut client = Client::connected(&broker, "v5-shutdown").await;

    // `stop` blocks until the broker has exited; the client's event loop must keep
    // running meanwhile, so it runs on the blocking pool.
    let stopping = tokio::task::spawn_blocking(move || {
        let status = broker.stop();
        (broker, status)
    });
    let (broker, status) = stopping.await.expect("the stopping task");
    assert!(status.success(), "midge exited with {status} after SIGTERM");

    match client.connection_error("DISCONNECT from the stopping broker").await {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            assert_eq!(reason_code, DisconnectReasonCode::ServerShuttingDown)
        }
        other => panic!("the connection ended without a DISCONNECT from the broker: {other:?}"),
    }
    drop(broker);
}

/// The broker never has more unacknowledged QoS 1 PUBLISH packets out to a client
/// than the Receive Maximum the client set [MQTT-3.3.4-9]; acknowledging lets the
/// rest through.
#[tokio::test]
async fn the_broker_respects_the_clients_receive_maximum() {
    let broker = start_broker(&[]);
    let mut slow = options(&broker, "v5-recvmax-slow");
    slow.set_receive_maximum(Some(2)).set_manual_acks(true);
    let (mut slow, _) = Client::connect(slow).await;
    let mut publisher = Client::connected(&broker, "v5-recvmax-pub").await;
    slow.subscribe("recvmax/t", QoS::AtLeastOnce).await;

    for n in 0..5 {
        publisher.publish("recvmax/t", QoS::AtLeastOnce, false, n.to_string()).await;
    }

    let first = slow.next_publish().await;
    let second = slow.next_publish().await;
    assert_eq!((text(&first).as_str(), text(&second).as_str()), ("0", "1"));
    // Two are unacknowledged: the third must wait [MQTT-3.3.4-9].
    slow.expect_no_publish(QUIET).await;

    slow.ack(&first).await;
    slow.ack(&second).await;
    for n in 2..5 {
        let got = slow.next_publish().await;
        assert_eq!((text(&got), got.qos), (n.to_string(), QoS::AtLeastOnce));
        slow.ack(&got).await;
    }
}

/// A broker with a keep-alive limit answers a client asking for more with a Server
/// Keep Alive in CONNACK (v5 section 3.2.2.3.14), which the client must then use
/// [MQTT-3.2.2-21]: rumqttc pings at the shorter interval and the broker answers.
#[tokio::test]
async fn the_broker_caps_the_keep_alive_with_server_keep_alive() {
    let broker = start_broker(&["--max-keep-alive", "5"]);
    let (mut client, connack) = Client::connect(options(&broker, "v5-keepalive")).await;
    let server_keep_alive = connack.properties.as_ref().and_then(|p| p.server_keep_alive);
    assert_eq!(server_keep_alive, Some(5), "the client asked for 60 s, the broker allows 5 s");

    client.wait_for("PINGRESP", |event| matches!(event, Event::Incoming(Packet::PingResp(_))).then_some(())).await;
}

/// A burst of QoS 0 messages on one topic, written at once so the broker reads them
/// together, reaches several subscribers, each on its own terms: in order
/// [MQTT-4.6.0-6], with the Subscription Identifier of its subscription
/// [MQTT-3.3.4-3], RETAIN as its Retain As Published option says [MQTT-3.3.1-12]
/// [MQTT-3.3.1-13], without what exceeds its Maximum Packet Size [MQTT-3.1.2-25],
/// and at the QoS of its subscription capped by the published one [MQTT-3.8.4-6].
/// The broker queues such a burst to each QoS 0 subscriber as one run.
#[tokio::test]
async fn a_burst_to_several_subscribers_reaches_each_on_its_own_terms() {
    use midge_test_support::{RawClient, build};

    let broker = start_broker(&[]);
    let mut identified = Client::connected(&broker, "v5-burst-id").await;
    let with_id = SubscribeProperties { id: Some(5), user_properties: Vec::new() };
    let keeps_retain = Filter { preserve_retain: true, ..Filter::new("burst/#", QoS::AtMostOnce) };
    identified.subscribe_with(keeps_retain, Some(with_id)).await;
    let mut plain = Client::connected(&broker, "v5-burst-plain").await;
    plain.subscribe("burst/t", QoS::AtMostOnce).await;
    let mut small = options(&broker, "v5-burst-small");
    small.set_max_packet_size(Some(64));
    let mut small = Client::connect(small).await.0;
    small.subscribe("burst/t", QoS::AtMostOnce).await;
    let mut at_least_once = Client::connected(&broker, "v5-burst-qos1").await;
    at_least_once.subscribe("burst/t", QoS::AtLeastOnce).await;

    // Every third message retained; every odd one too large for `small`.
    let payload = |i: usize| if i % 2 == 1 { format!("{i:03}-{}", "x".repeat(80)) } else { format!("{i:03}") };
    let mut burst = Vec::new();
    for i in 0..40 {
        let publish = build::Publish::new("burst/t", payload(i));
        burst.extend(if i % 3 == 0 { publish.retain() } else { publish }.build());
    }
    let mut publisher = RawClient::connected(broker.addr(), "v5-burst-pub");
    publisher.send(&burst);

    for i in 0..40 {
        let got = identified.next_publish().await;
        assert_eq!((text(&got), got.retain), (payload(i), i % 3 == 0), "message {i}, Retain As Published");
        let ids = got.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
        assert_eq!(ids, [5], "message {i}: the subscription's identifier");
        let got = plain.next_publish().await;
        assert_eq!((text(&got), got.retain, got.qos), (payload(i), false, QoS::AtMostOnce), "message {i}");
        assert!(got.properties.is_none_or(|p| p.subscription_identifiers.is_empty()), "message {i}: no identifier");
        let got = at_least_once.next_publish().await;
        assert_eq!((text(&got), got.qos), (payload(i), QoS::AtMostOnce), "message {i}, capped at QoS 0");
        if i % 2 == 0 {
            assert_eq!(text(&small.next_publish().await), payload(i), "message {i} fits its maximum packet size");
        }
    }
    small.expect_no_publish(QUIET).await;
}
