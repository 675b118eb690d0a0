//! Authentication end to end: a password file made by `midge passwd` and by
//! Debian's `mosquitto_passwd`, plain logins with paho-mqtt, and MQTT 5
//! enhanced authentication (SCRAM-SHA-256, re-authentication) with an
//! independent SCRAM client written in Python (`tests/python/auth_v5.py`).

mod interop_support;

use std::process::Command;

use interop_support::{TestBroker, WAIT, require_paho, require_success, run_python, start_broker};
use midge_test_support::{Process, TempDir, build};

/// The users `auth_v5.py` expects: sam (SCRAM-SHA-256), alice (mosquitto_passwd's
/// `$7$`), ann (argon2id, midge's default).
fn password_file(dir: &TempDir) -> String {
    let file = dir.join("passwords");
    let file = file.to_str().unwrap().to_owned();
    midge(&["passwd", "-c", "-b", "-H", "scram-sha-256", &file, "sam", "pencil"]);
    require_success("mosquitto_passwd", &["-b", &file, "alice", "secret"], "mosquitto (apt-get)");
    midge(&["passwd", "-b", &file, "ann", "a2"]);
    file
}

fn midge(args: &[&str]) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(args);
    Process::spawn(&format!("midge {}", args.join(" ")), command).wait_success(WAIT);
}

fn start_with_passwords(dir: &TempDir) -> TestBroker {
    let file = password_file(dir);
    let broker = start_broker(&["--password-file", &file]);
    assert!(broker.log().contains("3 users (1 with SCRAM-SHA-256); anonymous clients refused"), "{}", broker.log());
    broker
}

fn run_scenario(scenario: &str) {
    require_paho();
    let dir = TempDir::new(scenario);
    let broker = start_with_passwords(&dir);
    run_python("auth_v5.py", &["127.0.0.1", &broker.port().to_string(), scenario], &format!("passed: {scenario}"));
}

/// v5 section 4.12: CONNECT with SCRAM-SHA-256 → AUTH 0x18 [MQTT-4.12.0-2] → AUTH 0x18
/// [MQTT-4.12.0-3] → CONNACK with the method [MQTT-4.12.0-5] and a server signature the
/// client verifies; the session then works.
#[test]
fn scram_sha_256_authenticates_an_mqtt5_client() {
    run_scenario("scram_success");
}

/// [MQTT-4.12.0-4]: a failed exchange ends in a refusing CONNACK (0x86) and a close.
#[test]
fn scram_with_a_wrong_password_is_refused() {
    run_scenario("scram_wrong_password");
}

/// RFC 5802 section 5.1: unknown users run the whole exchange and fail at its end.
#[test]
fn scram_does_not_reveal_unknown_users() {
    run_scenario("scram_unknown_user");
}

/// [MQTT-4.12.1-1]: AUTH 0x19 re-authenticates a live connection, traffic continues meanwhile.
#[test]
fn a_client_re_authenticates_on_a_live_connection() {
    run_scenario("reauthenticate");
}

/// [MQTT-4.12.1-2]: a failed re-authentication gets DISCONNECT and a close.
#[test]
fn failed_re_authentication_disconnects() {
    run_scenario("reauthenticate_wrong");
}

/// [MQTT-4.12.0-1], [MQTT-4.12.0-5], [MQTT-4.12.0-6], [MQTT-4.12.0-7], [MQTT-3.1.2-30].
#[test]
fn enhanced_authentication_rules_are_enforced() {
    run_scenario("auth_rules");
}

/// Plain user name/password with paho-mqtt 3.1.1 and 5 against `$7$` (mosquitto_passwd),
/// argon2id and SCRAM entries; wrong and unknown → 4/0x86, anonymous → 5/0x87.
#[test]
fn password_file_logins_with_paho() {
    run_scenario("passwords");
}

/// The ACL file end to end with paho-mqtt 3.1.1 and 5: publish (PUBACK/PUBREC 0x87 for v5,
/// silently dropped for 3.1.1), subscribe (SUBACK 0x87 / 0x80), delivery through `#`,
/// retained messages, `$SYS`, `%c`/`%u` patterns, and wills.
#[test]
fn acl_file_rules_apply_to_publish_subscribe_delivery_retained_and_wills() {
    require_paho();
    let dir = TempDir::new("acl");
    let file = password_file(&dir);
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\ntopic read #\ntopic deny secret/#\ntopic read $SYS/broker/uptime\n\n\
         user ann\ntopic write ann/out\n\nuser sam\ntopic write #\n\n\
         pattern write devices/%c/#\npattern read inbox/%u/#\n",
    )
    .unwrap();
    let broker = start_broker(&["--password-file", &file, "--acl-file", acl.to_str().unwrap()]);
    assert!(broker.log().contains("ACL file"), "{}", broker.log());
    run_python("auth_v5.py", &["127.0.0.1", &broker.port().to_string(), "acl"], "passed: acl");
}

/// Mosquitto's command-line clients against a password file, and `--allow-anonymous`.
#[test]
fn mosquitto_clients_log_in_and_anonymous_can_be_allowed() {
    let dir = TempDir::new("mosquitto-login");
    let file = password_file(&dir);
    let broker = start_broker(&["--password-file", &file, "--allow-anonymous"]);
    let port = broker.port().to_string();
    // No user name: allowed by --allow-anonymous. Retained, so the subscriber
    // below needs no timing.
    let mut publish = Command::new("mosquitto_pub");
    publish.args(["-h", "127.0.0.1", "-p", &port, "-t", "auth/t", "-r", "-m", "from anonymous"]);
    Process::spawn("mosquitto_pub", publish).wait_success(WAIT);
    let mut sub = Command::new("mosquitto_sub");
    sub.args(["-h", "127.0.0.1", "-p", &port, "-u", "alice", "-P", "secret", "-t", "auth/t", "-C", "1"]);
    let mut sub = Process::spawn("mosquitto_sub", sub);
    sub.wait_success(WAIT);
    assert_eq!(sub.stdout().trim(), "from anonymous", "{}", sub.transcript());
    // A wrong password still fails, with mosquitto_pub's own message for CONNACK 4.
    let mut publish = Command::new("mosquitto_pub");
    publish.args(["-h", "127.0.0.1", "-p", &port, "-u", "alice", "-P", "nope", "-t", "auth/t", "-m", "x"]);
    let mut refused = Process::spawn("mosquitto_pub", publish);
    assert!(!refused.wait_exit(WAIT).success(), "{}", refused.transcript());
    assert!(refused.output().contains("bad user name or password"), "{}", refused.transcript());
}

/// What the broker answered one guessing connection: its CONNACK return code, or
/// `None` if it closed without one.
async fn guess(broker: std::net::SocketAddr, n: usize) -> Option<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // From another loopback address, so the guesser and the real client differ by address.
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(broker).await.ok()?;
    let connect = build::Connect::new(format!("guess-{n}")).username("ann").password(format!("wrong-{n}")).build();
    stream.write_all(&connect).await.ok()?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.ok()?;
    assert_eq!(connack[..2], [0x20, 2], "not a CONNACK");
    Some(connack[3])
}

/// One real login with rumqttc (an independent client): connect with the right password,
/// then a QoS 1 message to itself.
async fn real_login(port: u16, n: usize) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(format!("real-{n}"), "127.0.0.1", port);
    options.set_credentials("ann", "a2");
    let (client, mut events) = AsyncClient::new(options, 8);
    client.subscribe("real/t", QoS::AtLeastOnce).await.unwrap();
    client.publish("real/t", QoS::AtLeastOnce, false, format!("hello {n}")).await.unwrap();
    loop {
        match events.poll().await.expect("the real client's connection failed") {
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(p.payload, format!("hello {n}").as_bytes());
                break;
            }
            Event::Incoming(Packet::ConnAck(c)) => assert_eq!(c.code, rumqttc::ConnectReturnCode::Success),
            _ => {}
        }
    }
    client.disconnect().await.unwrap();
}

/// The first non-zero value of a `$SYS` counter, read with rumqttc as ann.
async fn sys_value(port: u16, topic: &str) -> u64 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("sys-reader", "127.0.0.1", port);
    options.set_credentials("ann", "a2");
    let (client, mut events) = AsyncClient::new(options, 8);
    client.subscribe(topic, QoS::AtMostOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("connection failed") {
            let value: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            if value > 0 {
                return value;
            }
        }
    }
}

/// Hundreds of wrong passwords from one address, all at once: the address is slowed
/// down (its attempts spaced, the excess refused unchecked with 3.1.1's "server
/// unavailable", v5's 0x9F), while a client from another address logs in and gets its
/// messages as usual, several times, before the guessing is over.
#[test]
fn hundreds_of_wrong_passwords_do_not_disturb_other_clients() {
    const GUESSES: usize = 300;
    let dir = TempDir::new("brute-force");
    let file = dir.join("passwords");
    let file = file.to_str().unwrap().to_owned();
    // argon2id: the slow hash is what a flood of guesses would otherwise monopolise.
    midge(&["passwd", "-c", "-b", &file, "ann", "a2"]);
    let broker = start_broker(&["--password-file", &file, "--sys-interval", "1"]);
    let addr = broker.addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let guesses: Vec<_> = (0..GUESSES)
            .map(|n| {
                let answered = answered.clone();
                tokio::spawn(async move { answered.send(guess(addr, n).await) })
            })
            .collect();
        assert!(
            broker.wait_for_log("repeated login failures", WAIT),
            "the guessing address was never slowed down: {}",
            broker.log()
        );
        for n in 0..5 {
            tokio::time::timeout(WAIT, real_login(addr.port(), n)).await.expect("a real login timed out");
        }
        // Spaced attempts are still waiting their turn: the real client did not wait for them.
        assert!(guesses.iter().any(|g| !g.is_finished()), "the guesses were not slowed down");
        // Guesses are checked and refused (4, bad user name or password) until the queue of
        // spaced attempts outgrows 30 s; the rest are refused unchecked (3, server unavailable).
        let mut seen = std::collections::BTreeMap::new();
        while !(seen.contains_key(&Some(3)) && seen.contains_key(&Some(4))) {
            let answer = tokio::time::timeout(WAIT, answers.recv()).await.expect("the guesses stopped being answered");
            *seen.entry(answer.unwrap()).or_insert(0) += 1;
            assert!(seen.keys().all(|a| matches!(a, Some(3 | 4))), "{seen:?}");
        }
        for g in guesses {
            g.abort();
        }
        // Both kinds of refusal are counted in $SYS.
        let counter = |topic: &'static str| sys_value(addr.port(), topic);
        assert!(tokio::time::timeout(WAIT, counter("$SYS/broker/logins/failed")).await.unwrap() >= 8);
        assert!(tokio::time::timeout(WAIT, counter("$SYS/broker/logins/throttled")).await.unwrap() >= 1);
    });
    let log = broker.log();
    assert!(log.contains("127.0.0.2"), "failures are logged with the address: {log}");
}

/// A burst on a topic one `#` subscriber may not read and another may, written at once
/// so the broker reads it together and queues it to both as one run: the one allowed
/// gets every message in order, the one denied none of them, only the message after
/// the burst on a topic it may read (mosquitto_sub for both).
#[test]
fn a_burst_on_a_denied_topic_reaches_only_the_subscriber_allowed_to_read_it() {
    let dir = TempDir::new("acl-burst");
    let file = password_file(&dir);
    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic read #\ntopic deny secret/#\n\nuser ann\ntopic readwrite #\n").unwrap();
    let broker = start_broker(&["--password-file", &file, "--acl-file", acl.to_str().unwrap()]);
    let port = broker.port().to_string();
    let subscriber = |user: &str, password: &str, count: &str| {
        // Line-buffered, so the SUBACK line is seen as it is printed.
        let mut sub = Command::new("stdbuf");
        sub.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-u", user, "-P", password]);
        sub.args(["-t", "#", "-C", count, "-d"]);
        sub.args(["-i", &format!("{user}-sub"), "-F", "MSG %t %p"]);
        let sub = Process::spawn(&format!("mosquitto_sub as {user}"), sub);
        sub.wait_for_stdout_line("received SUBACK", WAIT);
        sub
    };
    let mut alice = subscriber("alice", "secret", "1");
    let mut ann = subscriber("ann", "a2", "21");

    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(build::publish("secret/plans", format!("s{i:02}")));
    }
    burst.extend(build::publish("open/news", "after"));
    let connect = build::Connect::new("ann-pub").username("ann").password("a2");
    let (mut publisher, _) = midge_test_support::RawClient::handshake(broker.addr(), &connect);
    publisher.send(&burst);

    let messages = |sub: &Process| -> Vec<String> {
        sub.stdout_lines().into_iter().filter_map(|l| l.strip_prefix("MSG ").map(str::to_owned)).collect()
    };
    ann.wait_success(WAIT);
    let mut expected: Vec<String> = (0..20).map(|i| format!("secret/plans s{i:02}")).collect();
    expected.push("open/news after".into());
    assert_eq!(messages(&ann), expected, "{}", ann.transcript());
    alice.wait_success(WAIT);
    assert_eq!(messages(&alice), ["open/news after"], "alice may not read secret/#: {}", alice.transcript());
}
