//! Authentication end to end: a password file made by `midge passwd` and by
//! Debian's `mosquitto_passwd`, plain logins with paho-mqtt, and MQTT 5
//! enhanced authentication (SCRAM-SHA-256, re-authentication) with an
//! independent SCRAM client written in Python (`tests/python/auth_v5.py`).

mod interop_support;

use std::process::Command;

use interop_support::{TestBroker, WAIT, require_paho, require_success, start_broker, tests_dir};
use midge_test_support::{Process, TempDir};

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
    let mut command = Command::new("python3");
    command
        .arg("-u")
        .arg(tests_dir().join("python").join("auth_v5.py"))
        .args(["127.0.0.1", &broker.port().to_string(), scenario])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut script = Process::spawn(&format!("auth {scenario}"), command);
    script.wait_success(WAIT);
    let passed = format!("passed: {scenario}");
    assert!(script.stdout().contains(&passed), "the script did not report {passed:?}; {}", script.transcript());
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
    let mut command = Command::new("python3");
    command
        .arg("-u")
        .arg(tests_dir().join("python").join("auth_v5.py"))
        .args(["127.0.0.1", &broker.port().to_string(), "acl"])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut script = Process::spawn("auth acl", command);
    script.wait_success(WAIT);
    assert!(script.stdout().contains("passed: acl"), "{}", script.transcript());
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
