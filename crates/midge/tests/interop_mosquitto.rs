//! Interoperability with Eclipse Mosquitto's command-line clients (Debian's
//! `mosquitto-clients`: `/usr/bin/mosquitto_pub` and `/usr/bin/mosquitto_sub`).
//!
//! Run with `cargo test -p midge --test interop_mosquitto`; `./scripts/test` installs
//! the clients first. A subscriber runs with `-d`, whose debug lines go to stdout
//! beside the messages; a test waits for its `received SUBACK` line before anything
//! is published, so no test sleeps to let a subscription happen.

mod interop_support;

use std::path::Path;
use std::process::Command;

use interop_support::{TestBroker, WAIT, require_file, start_broker};
use midge_test_support::Process;

const MOSQUITTO_SUB: &str = "/usr/bin/mosquitto_sub";
const MOSQUITTO_PUB: &str = "/usr/bin/mosquitto_pub";
const SUBACK: &str = "received SUBACK";

/// Fails the test unless both Mosquitto clients are installed.
fn require_mosquitto_clients() {
    for program in [MOSQUITTO_SUB, MOSQUITTO_PUB] {
        require_file(Path::new(program), "the Debian package mosquitto-clients");
    }
}

/// Starts the broker, after checking that the clients are there.
fn broker(args: &[&str]) -> TestBroker {
    require_mosquitto_clients();
    start_broker(args)
}

/// Runs a Mosquitto client against `broker`: `PROGRAM -h 127.0.0.1 -p PORT ARGS…`.
///
/// Through `stdbuf -oL`: into a pipe the clients' stdout is block-buffered, and a
/// test waits for each line as it is printed.
fn mosquitto(program: &str, broker: &TestBroker, args: &[&str]) -> Process {
    let mut command = Command::new("stdbuf");
    command.args(["-oL", program, "-h", "127.0.0.1", "-p", &broker.port().to_string()]).args(args);
    let name = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program);
    Process::spawn(name, command)
}

/// Starts `mosquitto_sub -d ARGS…` and waits until the broker has acknowledged its
/// subscriptions.
fn subscriber(broker: &TestBroker, args: &[&str]) -> Process {
    let mut full = vec!["-d"];
    full.extend_from_slice(args);
    let sub = mosquitto(MOSQUITTO_SUB, broker, &full);
    sub.wait_for_stdout_line(SUBACK, WAIT);
    sub
}

/// Runs `mosquitto_pub ARGS…` to completion; it exits only once its message is
/// published (acknowledged, for QoS 1 and 2).
fn publish(broker: &TestBroker, args: &[&str]) -> Process {
    let mut publisher = mosquitto(MOSQUITTO_PUB, broker, args);
    publisher.wait_success(WAIT);
    publisher
}

/// The lines of a `mosquitto_sub -d` run that are messages, not debug output.
fn messages(sub: &Process) -> Vec<String> {
    sub.stdout_lines()
        .into_iter()
        .filter(|line| !line.starts_with("Client ") && !line.starts_with("Subscribed ("))
        .collect()
}

/// Waits for a `mosquitto_sub -C N` to exit by itself after its N messages and
/// returns those messages.
fn finished_messages(mut sub: Process) -> Vec<String> {
    sub.wait_success(WAIT);
    messages(&sub)
}

#[test]
fn mosquitto_sub_prints_the_message_that_mosquitto_pub_sends() {
    let broker = broker(&[]);
    let sub = subscriber(&broker, &["-t", "t", "-v", "-C", "1"]);

    publish(&broker, &["-t", "t", "-m", "hello from mosquitto_pub"]);

    assert_eq!(finished_messages(sub), ["t hello from mosquitto_pub"]);
}

#[test]
fn qos_1_and_qos_2_messages_complete_their_handshakes_and_arrive_at_the_qos_they_were_sent_with() {
    let broker = broker(&[]);
    // %q prints the QoS of the delivered message.
    let mut sub = subscriber(&broker, &["-t", "q/#", "-q", "2", "-F", "%q %t %p", "-C", "2"]);

    let qos1 = publish(&broker, &["-d", "-t", "q/one", "-q", "1", "-m", "at least once"]);
    let qos2 = publish(&broker, &["-d", "-t", "q/two", "-q", "2", "-m", "exactly once"]);

    qos1.wait_for_stdout_line("received PUBACK", WAIT);
    qos2.wait_for_stdout_line("received PUBREC", WAIT);
    qos2.wait_for_stdout_line("received PUBCOMP", WAIT);
    // Read once the subscriber has exited: the publisher's PUBCOMP can come
    // before the subscriber has printed its side of the handshakes.
    sub.wait_success(WAIT);
    let sub_debug = sub.stdout();
    assert_eq!(messages(&sub), ["1 q/one at least once", "2 q/two exactly once"], "{sub_debug}");
    // The subscriber's side of each handshake: it acknowledged the QoS 1 message,
    // and the broker released the QoS 2 one so the subscriber could complete it.
    assert!(sub_debug.contains("sending PUBACK"), "the subscriber sent no PUBACK:\n{sub_debug}");
    assert!(sub_debug.contains("sending PUBREC"), "the subscriber sent no PUBREC:\n{sub_debug}");
    assert!(sub_debug.contains("received PUBREL"), "the broker sent the subscriber no PUBREL:\n{sub_debug}");
    assert!(sub_debug.contains("sending PUBCOMP"), "the subscriber sent no PUBCOMP:\n{sub_debug}");
}

#[test]
fn a_subscription_at_qos_0_downgrades_a_qos_2_message_to_qos_0() {
    let broker = broker(&[]);
    let sub = subscriber(&broker, &["-t", "down", "-q", "0", "-F", "%q %p", "-C", "1"]);

    publish(&broker, &["-t", "down", "-q", "2", "-m", "downgraded"]);

    assert_eq!(finished_messages(sub), ["0 downgraded"]);
}

#[test]
fn a_retained_message_reaches_a_subscriber_that_arrives_later_with_the_retain_flag() {
    let broker = broker(&[]);
    publish(&broker, &["-t", "state/door", "-r", "-q", "1", "-m", "open"]);

    // %r prints the retain flag of the delivered message.
    let late = mosquitto(MOSQUITTO_SUB, &broker, &["-t", "state/#", "-F", "%r %t %p", "-C", "1"]);

    assert_eq!(finished_messages(late), ["1 state/door open"]);
}

#[test]
fn a_newer_retained_message_replaces_the_older_one() {
    let broker = broker(&[]);
    publish(&broker, &["-t", "state/lamp", "-r", "-m", "on"]);
    publish(&broker, &["-t", "state/lamp", "-r", "-m", "off"]);

    let late = mosquitto(MOSQUITTO_SUB, &broker, &["-t", "state/lamp", "-F", "%r %p", "-C", "1"]);

    assert_eq!(finished_messages(late), ["1 off"]);
}

#[test]
fn an_mqtt_3_1_subscriber_receives_from_an_mqtt_3_1_1_publisher() {
    let broker = broker(&[]);
    let sub = subscriber(&broker, &["-V", "mqttv31", "-t", "v/31", "-q", "1", "-v", "-C", "1"]);

    publish(&broker, &["-V", "mqttv311", "-t", "v/31", "-q", "1", "-m", "from 3.1.1"]);

    assert_eq!(finished_messages(sub), ["v/31 from 3.1.1"]);
}

#[test]
fn an_mqtt_3_1_1_subscriber_receives_from_an_mqtt_3_1_publisher() {
    let broker = broker(&[]);
    let sub = subscriber(&broker, &["-V", "mqttv311", "-t", "v/311", "-q", "2", "-v", "-C", "1"]);

    publish(&broker, &["-V", "mqttv31", "-t", "v/311", "-q", "2", "-m", "from 3.1"]);

    assert_eq!(finished_messages(sub), ["v/311 from 3.1"]);
}

#[test]
fn mqtt_3_1_clients_exchange_retained_messages() {
    let broker = broker(&[]);
    publish(&broker, &["-V", "mqttv31", "-t", "v31/kept", "-r", "-q", "1", "-m", "kept"]);

    let late = mosquitto(MOSQUITTO_SUB, &broker, &["-V", "mqttv31", "-t", "v31/kept", "-F", "%r %p", "-C", "1"]);

    assert_eq!(finished_messages(late), ["1 kept"]);
}

#[test]
fn the_will_of_a_killed_mosquitto_sub_reaches_another_subscriber() {
    let broker = broker(&[]);
    let watcher = subscriber(&broker, &["-t", "wills/#", "-v", "-C", "1"]);
    let mut dying = subscriber(
        &broker,
        &[
            "-i",
            "dying-client",
            "-t",
            "anything",
            "--will-topic",
            "wills/dying-client",
            "--will-payload",
            "gone unexpectedly",
            "--will-qos",
            "1",
        ],
    );

    // SIGKILL: the client cannot send DISCONNECT; the kernel closes its socket.
    dying.kill();

    assert_eq!(finished_messages(watcher), ["wills/dying-client gone unexpectedly"]);
}

#[test]
fn no_will_is_published_when_its_client_disconnects_cleanly() {
    let broker = broker(&[]);
    let watcher = subscriber(&broker, &["-t", "wills/#", "-t", "done", "-v", "-C", "1"]);
    // -E: subscribe, then DISCONNECT and exit: a clean end discards the will.
    let mut polite = mosquitto(
        MOSQUITTO_SUB,
        &broker,
        &["-E", "-i", "polite-client", "-t", "anything", "--will-topic", "wills/polite-client", "--will-payload", "x"],
    );
    polite.wait_success(WAIT);

    // Messages from one publisher arrive in order, and the broker handled the
    // DISCONNECT before this later connection: had it published the will, the will
    // would come first.
    publish(&broker, &["-t", "done", "-m", "end"]);

    assert_eq!(finished_messages(watcher), ["done end"]);
}

#[test]
fn a_persistent_session_receives_the_qos_1_messages_published_while_it_was_offline() {
    let broker = broker(&[]);
    // -c: clean session off; -E: exit once subscribed, leaving the session behind.
    let mut first = mosquitto(MOSQUITTO_SUB, &broker, &["-c", "-i", "keeper", "-q", "1", "-t", "queue/#", "-E"]);
    first.wait_success(WAIT);

    for n in 1..=3 {
        publish(&broker, &["-t", &format!("queue/{n}"), "-q", "1", "-m", &format!("message {n}")]);
    }

    let back = mosquitto(MOSQUITTO_SUB, &broker, &["-c", "-i", "keeper", "-q", "1", "-t", "queue/#", "-v", "-C", "3"]);
    assert_eq!(finished_messages(back), ["queue/1 message 1", "queue/2 message 2", "queue/3 message 3"]);
}

#[test]
fn a_persistent_mqtt_3_1_session_receives_the_qos_2_messages_published_while_it_was_offline() {
    let broker = broker(&[]);
    let session = ["-V", "mqttv31", "-c", "-i", "keeper31", "-q", "2", "-t", "queue31"];
    let mut first = mosquitto(MOSQUITTO_SUB, &broker, &[&session[..], &["-E"]].concat());
    first.wait_success(WAIT);

    publish(&broker, &["-t", "queue31", "-q", "2", "-m", "first"]);
    publish(&broker, &["-t", "queue31", "-q", "2", "-m", "second"]);

    let back = mosquitto(MOSQUITTO_SUB, &broker, &[&session[..], &["-F", "%q %p", "-C", "2"]].concat());
    assert_eq!(finished_messages(back), ["2 first", "2 second"]);
}

#[test]
fn a_clean_session_does_not_receive_messages_published_before_it_connected() {
    let broker = broker(&[]);
    let mut first = mosquitto(MOSQUITTO_SUB, &broker, &["-c", "-i", "forgetful", "-q", "1", "-t", "gone", "-E"]);
    first.wait_success(WAIT);
    publish(&broker, &["-t", "gone", "-q", "1", "-m", "stale"]);

    // Without -c the session starts clean: the queued message is discarded. The
    // subscriber's first message must then be the one published after it subscribed.
    let clean = subscriber(&broker, &["-i", "forgetful", "-q", "1", "-t", "gone", "-v", "-C", "1"]);
    publish(&broker, &["-t", "gone", "-q", "1", "-m", "fresh"]);

    assert_eq!(finished_messages(clean), ["gone fresh"]);
}

#[test]
fn sys_broker_version_names_midge() {
    let broker = broker(&[]);

    let sys = mosquitto(MOSQUITTO_SUB, &broker, &["-t", "$SYS/broker/version", "-F", "%r %t %p", "-C", "1"]);

    let lines = finished_messages(sys);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("1 $SYS/broker/version midge "),
        "expected a retained `midge VERSION` on $SYS/broker/version, got {:?}",
        lines[0]
    );
}

#[test]
fn sys_counters_are_published_at_the_sys_interval() {
    let broker = broker(&["--sys-interval", "1"]);

    let sys = mosquitto(
        MOSQUITTO_SUB,
        &broker,
        &["-t", "$SYS/broker/uptime", "-t", "$SYS/broker/clients/connected", "-v", "-C", "4"],
    );

    let lines = finished_messages(sys);
    let uptime: Vec<&String> = lines.iter().filter(|l| l.starts_with("$SYS/broker/uptime ")).collect();
    let connected: Vec<&String> = lines.iter().filter(|l| l.starts_with("$SYS/broker/clients/connected ")).collect();
    assert!(!uptime.is_empty() && !connected.is_empty(), "expected both counters, got {lines:?}");
    for line in uptime {
        let value = line.trim_start_matches("$SYS/broker/uptime ");
        let seconds = value.strip_suffix(" seconds").and_then(|n| n.parse::<u64>().ok());
        assert!(seconds.is_some(), "uptime should read `N seconds`, got {value:?}");
    }
    let connected: Vec<u64> = connected
        .iter()
        .map(|line| {
            let value = line.trim_start_matches("$SYS/broker/clients/connected ");
            value.parse().unwrap_or_else(|_| panic!("clients/connected should be a number, got {value:?}"))
        })
        .collect();
    // At most two of the four messages are retained values from before the
    // subscriber connected; a fresh one counts the subscriber itself.
    assert!(connected.iter().any(|&n| n >= 1), "no clients/connected value counts the subscriber: {lines:?}");
}
