//! Nothing acknowledged is lost: the real broker is killed with SIGKILL (no chance to
//! flush anything) and started again on the same data directory.
//!
//! Publishers are rumqttc (QoS 1) and raw sockets (QoS 2, whose flows the test must
//! control packet by packet); every message's payload is its index, and each check
//! counts indices: every message the broker acknowledged (PUBACK, PUBREC) arrives after
//! the restart, and at QoS 2 none arrives twice.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use midge_test_support::{Broker, RawClient, TempDir, build};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const WAIT: Duration = Duration::from_secs(60);

fn start(data: &TempDir) -> Broker {
    start_with(data, &[])
}

fn start_with(data: &TempDir, extra: &[&str]) -> Broker {
    let dir = data.path().to_str().unwrap().to_owned();
    let mut args = vec!["--data-dir", &dir, "--max-queued-messages", "100000"];
    args.extend_from_slice(extra);
    Broker::start(env!("CARGO_BIN_EXE_midge"), &args)
}

fn options(broker: &Broker, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(100);
    options
}

/// Creates the persistent session `id` with a QoS `qos` subscription to `filter`, then
/// leaves (DISCONNECT): from now on the broker queues for it.
fn offline_subscriber(broker: &Broker, id: &str, filter: &str, qos: u8) {
    let (mut sub, _) = RawClient::handshake(broker.addr(), &build::Connect::new(id).clean_session(false));
    sub.send(&build::subscribe(1, &[(filter, qos)]));
    assert_eq!(sub.expect_suback().return_codes, [qos]);
    sub.disconnect();
}

/// Publishes `count` QoS 1 messages (payload: the index) with rumqttc and returns the
/// indices the broker acknowledged. After `kill_after` PUBACKs the broker is killed.
async fn publish_qos1(broker: &mut Broker, count: usize, kill_after: usize) -> BTreeSet<usize> {
    let (client, mut events) = AsyncClient::new(options(broker, "publisher"), 1000);
    let publisher = tokio::spawn(async move {
        for i in 0..count {
            if client.publish("load/x", QoS::AtLeastOnce, false, i.to_string()).await.is_err() {
                break;
            }
        }
        client
    });
    // Outgoing PUBLISH events come in the order of the publish calls; a packet id is
    // not reused before its PUBACK, so it names one index at a time.
    let (mut sent, mut by_id, mut acked) = (0usize, HashMap::new(), BTreeSet::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await.expect("publisher stalled") {
            Ok(Event::Outgoing(Outgoing::Publish(id))) => {
                by_id.insert(id, sent);
                sent += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                acked.insert(by_id[&ack.pkid]);
                if acked.len() == kill_after {
                    broker.kill();
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("publisher failed before the kill: {e}"),
        }
    }
    publisher.abort();
    acked
}

/// Reconnects the persistent session `id` with rumqttc and collects payload indices
/// until every one of `expected` has arrived (duplicates allowed: QoS 1).
async fn collect(broker: &Broker, id: &str, expected: &BTreeSet<usize>) -> BTreeSet<usize> {
    let (_client, mut events) = AsyncClient::new(options(broker, id), 1000);
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !expected.is_subset(&got) {
        let event = tokio::time::timeout_at(deadline, events.poll()).await;
        let Ok(event) = event else {
            let missing: Vec<_> = expected.difference(&got).take(20).collect();
            panic!("{} acknowledged messages never arrived, e.g. {missing:?}", expected.difference(&got).count());
        };
        if let Event::Incoming(Packet::Publish(p)) = event.expect("subscriber connection failed") {
            got.insert(std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
        }
    }
    got
}

/// Publishes indices `range` at QoS 1 with rumqttc as client `id` and returns once the
/// broker acknowledged every one.
async fn publish_all(broker: &Broker, id: &str, range: std::ops::Range<usize>) {
    let (client, mut events) = AsyncClient::new(options(broker, id), 1000);
    let count = range.len();
    let publisher = tokio::spawn(async move {
        for i in range {
            client.publish("load/x", QoS::AtLeastOnce, false, i.to_string()).await.unwrap();
        }
        client
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked < count {
        match tokio::time::timeout_at(deadline, events.poll()).await.expect("publisher stalled") {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher failed: {e}"),
        }
    }
    publisher.await.unwrap().disconnect().await.unwrap();
}

/// A backlog longer than --max-queued-in-memory waits in the store; after a restart
/// (which reads only the first part of it) the subscriber gets all of it, in order and
/// once, while a publisher keeps adding to it.
#[test]
fn a_backlog_beyond_the_memory_window_is_delivered_in_order_while_it_grows() {
    let data = TempDir::new("persist-paging");
    let flags = ["--max-queued-in-memory", "50"];
    let mut broker = start_with(&data, &flags);
    offline_subscriber(&broker, "subscriber", "load/#", 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(publish_all(&broker, "publisher", 0..3000));
    broker.kill();
    let broker = start_with(&data, &flags);
    let log = broker.log();
    assert!(log.contains("(1 subscriptions, 3000 queued messages)"), "{log}");
    let got = runtime.block_on(async {
        let more = publish_all(&broker, "publisher", 3000..5000);
        let (_client, mut events) = AsyncClient::new(options(&broker, "subscriber"), 1000);
        let receive = async {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while got.len() < 5000 {
                // A deadline for the whole, not per event: pings would renew a per-event one.
                let Ok(event) = tokio::time::timeout_at(deadline, events.poll()).await else {
                    panic!("stalled after {} messages", got.len());
                };
                if let Event::Incoming(Packet::Publish(p)) = event.expect("subscriber connection failed") {
                    got.push(std::str::from_utf8(&p.payload).unwrap().parse::<usize>().unwrap());
                }
            }
            got
        };
        tokio::join!(more, receive).1
    });
    // One publisher, one subscriber, no reconnect: every message once, in order
    // [MQTT-4.6.0-6].
    let out_of_order = got.windows(2).find(|w| w[1] != w[0] + 1);
    assert!(got[0] == 0 && out_of_order.is_none(), "first {}, first break {out_of_order:?}", got[0]);
}

/// The case: 10,000 QoS 1 messages for an offline persistent subscriber, the
/// broker killed right after the last PUBACK, restarted: all 10,000 arrive.
#[test]
fn ten_thousand_acknowledged_messages_survive_sigkill() {
    let data = TempDir::new("persist-10k");
    let mut broker = start(&data);
    offline_subscriber(&broker, "subscriber", "load/#", 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let acked = runtime.block_on(publish_qos1(&mut broker, 10_000, 10_000));
    assert_eq!(acked.len(), 10_000);
    let broker = start(&data);
    let log = broker.log();
    let recovered = log.lines().find(|l| l.contains("recovered")).unwrap_or_default();
    assert!(recovered.contains("recovered 2 sessions (1 subscriptions, 10000 queued messages)"), "{log}");
    println!("{recovered}");
    let got = runtime.block_on(collect(&broker, "subscriber", &acked));
    assert_eq!(got.len(), 10_000);
}

/// Killed at random points mid-stream (the seed is printed to replay a failure): every
/// message acknowledged before the kill arrives after the restart.
#[test]
fn messages_acknowledged_before_a_kill_at_a_random_point_survive() {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("seed {seed}");
    let mut random = seed;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for round in 0..3 {
        // xorshift: enough randomness for a kill point.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let kill_after = 1 + (random % 4_000) as usize;
        let data = TempDir::new("persist-random");
        let mut broker = start(&data);
        offline_subscriber(&broker, "subscriber", "load/#", 1);
        let acked = runtime.block_on(publish_qos1(&mut broker, 5_000, kill_after));
        assert_eq!(acked.len(), kill_after, "round {round} (seed {seed})");
        let broker = start(&data);
        runtime.block_on(collect(&broker, "subscriber", &acked));
    }
}

/// QoS 2 across a kill, with the publisher finishing its flows after the restart as
/// MQTT says a client must [MQTT-4.4.0-1]: PUBLISH again (DUP) what got no PUBREC,
/// PUBREL what got PUBREC. Killed once right after the broker's PUBRECs (which the
/// client then never saw) and once right after PUBRELs; the subscriber receives every
/// message exactly once [MQTT-4.3.3-2].
#[test]
fn qos2_messages_are_delivered_exactly_once_across_kills() {
    const WINDOW: u16 = 20;
    const WINDOWS: u16 = 30;
    for kill_after_pubrel in [false, true] {
        let data = TempDir::new("persist-qos2");
        let mut broker = start(&data);
        offline_subscriber(&broker, "sub2", "q2/#", 2);
        let connect = build::Connect::new("pub2").clean_session(false);
        let (mut publisher, _) = RawClient::handshake(broker.addr(), &connect);
        let kill_window = WINDOWS / 2;
        let publish = |i: u16, dup: bool| {
            let p = build::Publish::new("q2/x", i.to_string()).qos(2, i + 1);
            if dup { p.dup().build() } else { p.build() }
        };
        for w in 0..WINDOWS {
            let ids: Vec<u16> = (w * WINDOW..(w + 1) * WINDOW).collect();
            for &i in &ids {
                publisher.send(&publish(i, false));
            }
            if w == kill_window && !kill_after_pubrel {
                // The broker has the messages (it acknowledged them); the PUBRECs are
                // lost with the crash, so the client must send the PUBLISHes again.
                for &i in &ids {
                    assert_eq!(publisher.expect_pubrec(), i + 1);
                }
                broker.kill();
                broker = start(&data);
                let (mut again, connack) = RawClient::handshake(broker.addr(), &connect);
                assert!(connack.session_present, "the publisher's session survived");
                // No PUBREC seen for this window: all of it again, DUP set.
                for &i in &ids {
                    again.send(&publish(i, true));
                }
                publisher = again;
            }
            for &i in &ids {
                assert_eq!(publisher.expect_pubrec(), i + 1);
            }
            for &i in &ids {
                publisher.send(&build::pubrel(i + 1));
            }
            if w == kill_window && kill_after_pubrel {
                broker.kill();
                broker = start(&data);
                let (mut again, _) = RawClient::handshake(broker.addr(), &connect);
                for &i in &ids {
                    again.send(&build::pubrel(i + 1));
                }
                publisher = again;
            }
            for &i in &ids {
                assert_eq!(publisher.expect_pubcomp(), i + 1);
            }
        }
        let (mut sub, connack) = RawClient::handshake(broker.addr(), &build::Connect::new("sub2").clean_session(false));
        assert!(connack.session_present);
        let mut seen: HashMap<u16, usize> = HashMap::new();
        let total = usize::from(WINDOWS * WINDOW);
        let mut open_flows = 0;
        // The broker sends up to its in-flight window ahead: PUBLISHes and PUBRELs interleave.
        while seen.values().sum::<usize>() < total || open_flows > 0 {
            let packet = sub.expect_packet();
            if let Ok(p) = packet.publish() {
                *seen.entry(std::str::from_utf8(&p.payload).unwrap().parse().unwrap()).or_default() += 1;
                sub.send(&build::pubrec(p.packet_id.unwrap()));
                open_flows += 1;
            } else {
                let id = packet.pubrel().unwrap_or_else(|e| panic!("{e}"));
                sub.send(&build::pubcomp(id));
                open_flows -= 1;
            }
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "delivered more than once (kill after PUBREL: {kill_after_pubrel}): {twice:?}");
        assert_eq!(seen.len(), total);
        sub.expect_no_packet();
    }
}

/// Retained messages, a subscription and a delayed will (MQTT 5 Will Delay Interval)
/// outlive a kill: the will fires after the restart, when its delay is over.
#[test]
fn retained_messages_and_delayed_wills_survive_sigkill() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    use rumqttc::v5::{
        AsyncClient as AsyncClientV5, Event as EventV5, MqttOptions as OptionsV5, mqttbytes::QoS as QoSV5,
    };
    let data = TempDir::new("persist-retained-will");
    let mut broker = start_with(&data, &["--log-level", "debug"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut retainer = RawClient::connected(broker.addr(), "retainer");
    for (id, (topic, payload)) in [("kept/a", "first"), ("kept/b", "second"), ("kept/a", "replaced")].iter().enumerate()
    {
        let id = id as u16 + 1;
        retainer.send(&build::Publish::new(topic, payload).qos(1, id).retain().build());
        assert_eq!(retainer.expect_puback(), id);
    }
    runtime.block_on(async {
        // A v5 client with a will delayed 3 s and a session that outlives it. The will
        // is retained, so the watcher below gets it whether it fires before or after
        // the watcher subscribes.
        let mut options = OptionsV5::new("will-owner", "127.0.0.1", broker.port());
        options.set_session_expiry_interval(Some(300));
        let properties = LastWillProperties {
            delay_interval: Some(3),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        options.set_last_will(LastWill::new("wills/owner", "gone", QoSV5::AtLeastOnce, true, Some(properties)));
        let (_client, mut events) = AsyncClientV5::new(options, 10);
        loop {
            if let EventV5::Incoming(rumqttc::v5::Incoming::ConnAck(_)) = events.poll().await.unwrap() {
                break;
            }
        }
        // The connection drops without DISCONNECT: the will waits out its delay.
        drop(events);
    });
    assert!(broker.wait_for_log("client left; session kept", WAIT), "{}", broker.log());
    // A QoS 1 publish acknowledged after that line was written behind the session's new
    // record (one writer, in order): once PUBACKed, the delayed will is on disk too.
    retainer.send(&build::Publish::new("sync/point", "x").qos(1, 9).build());
    assert_eq!(retainer.expect_puback(), 9);
    broker.kill();
    let broker = start(&data);
    // The will fires from the restarted broker once its 3 s are over.
    let mut watcher = RawClient::connected(broker.addr(), "watcher");
    watcher.send(&build::subscribe(1, &[("wills/#", 1), ("kept/#", 1)]));
    watcher.expect_suback();
    let mut kept = BTreeSet::new();
    let mut will = None;
    while will.is_none() || kept.len() < 2 {
        let packet = watcher.recv_packet(Duration::from_secs(20));
        let p = packet
            .unwrap_or_else(|e| panic!("{e}; have will {will:?}, retained {kept:?}; log:\n{}", broker.log()))
            .publish()
            .unwrap();
        if let Some(id) = p.packet_id {
            watcher.send(&build::puback(id));
        }
        if p.topic == "wills/owner" {
            will = Some(p.payload.clone());
        } else {
            kept.insert((p.topic.clone(), String::from_utf8(p.payload.clone()).unwrap()));
        }
    }
    assert_eq!(will.as_deref(), Some(&b"gone"[..]));
    let expected: BTreeSet<_> =
        [("kept/a".to_owned(), "replaced".to_owned()), ("kept/b".to_owned(), "second".to_owned())].into();
    assert_eq!(kept, expected);
}

/// One broker per data directory; a file that is not a store stops start-up with a
/// message that says what to do, never an empty start.
#[test]
fn a_store_in_use_or_damaged_stops_start_up_with_a_clear_error() {
    use std::process::Command;
    let data = TempDir::new("persist-errors");
    let first = start(&data);
    let serve = |dir: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
        command.args(["serve", "--bind", "127.0.0.1", "--port", "0", "--data-dir", dir]);
        let mut process = midge_test_support::Process::spawn("midge serve", command);
        assert!(!process.wait_exit(WAIT).success(), "{}", process.transcript());
        process.stderr()
    };
    let message = serve(data.path().to_str().unwrap());
    assert!(message.contains("in use by another process"), "{message}");
    drop(first);
    let damaged = TempDir::new("persist-damaged");
    std::fs::write(damaged.join("midge.redb"), vec![0x5A; 100_000]).unwrap();
    let message = serve(damaged.path().to_str().unwrap());
    assert!(message.contains("move it (or its directory) aside"), "{message}");
}

/// Publishes `count` QoS 1 messages (payload: the index) from a raw client, each
/// acknowledged before the next.
fn publish_raw(broker: &Broker, count: u16) {
    let mut publisher = RawClient::connected(broker.addr(), "shared-publisher");
    for i in 0..count {
        publisher.publish_qos1("work/x", i.to_string(), i + 1);
    }
    publisher.disconnect();
}

/// Connects the persistent session `id`, takes the messages the broker sends first
/// (its in-flight window) without acknowledging them, and drops the connection.
fn take_without_acking(broker: &Broker, id: &str) -> usize {
    let (mut member, connack) = RawClient::handshake(broker.addr(), &build::Connect::new(id).clean_session(false));
    assert!(connack.session_present);
    let mut taken = 0;
    while let Ok(packet) = member.recv_packet(Duration::from_millis(500)) {
        assert_eq!(packet.packet_type(), midge_test_support::packet_type::PUBLISH);
        taken += 1;
    }
    drop(member);
    taken
}

/// Payload indices a persistent session `id` receives (acknowledging each) until
/// `count` have arrived.
fn receive_raw(broker: &Broker, id: &str, count: usize) -> BTreeSet<u16> {
    let (mut member, _) = RawClient::handshake(broker.addr(), &build::Connect::new(id).clean_session(false));
    let mut got = BTreeSet::new();
    while got.len() < count {
        let publish = member.expect_publish();
        got.insert(String::from_utf8(publish.payload).unwrap().parse().unwrap());
        member.send(&build::puback(publish.packet_id.unwrap()));
    }
    got
}

/// A message queued for a share group member remembers its group in the store: after
/// a restart, when that member leaves without taking its messages, they go to the
/// other member (v5 section 4.8.2) rather than wait for it.
#[test]
fn shared_subscription_messages_move_to_another_member_after_a_restart() {
    let data = TempDir::new("persist-shared");
    let mut broker = start(&data);
    offline_subscriber(&broker, "member-a", "$share/g/work/#", 1);
    offline_subscriber(&broker, "member-b", "$share/g/work/#", 1);
    publish_raw(&broker, 100);
    broker.kill();
    let broker = start(&data);
    // a's half, restored from the store, goes to b when a leaves without taking it.
    let taken = take_without_acking(&broker, "member-a");
    assert!(taken > 0, "a was sent its in-flight window");
    let got = receive_raw(&broker, "member-b", 100);
    assert_eq!(got, (0..100).collect(), "b got every message, its own and a's");
}

/// With no other member to take them, a leaving member's messages stay with it, and
/// stay stored: they survive a crash after it left.
#[test]
fn shared_subscription_messages_kept_by_the_only_member_stay_stored() {
    let data = TempDir::new("persist-shared-kept");
    let mut broker = start_with(&data, &["--log-level", "debug"]);
    offline_subscriber(&broker, "only", "$share/g/work/#", 1);
    publish_raw(&broker, 30);
    assert!(take_without_acking(&broker, "only") > 0);
    // The broker has seen it leave (the second time "only" left)...
    let left = || broker.log().matches("client left; session kept client_id=only").count();
    let deadline = std::time::Instant::now() + WAIT;
    while left() < 2 {
        assert!(std::time::Instant::now() < deadline, "the broker never saw the member leave");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and what it wrote then is durable: a PUBACK waits for every write before it.
    RawClient::connected(broker.addr(), "barrier").publish_qos1("nobody/listens", "x", 1);
    broker.kill();
    let broker = start(&data);
    assert_eq!(receive_raw(&broker, "only", 30), (0..30).collect());
}
