//! Interoperability with MQTT.js (the npm package `mqtt`, v5): its `mqtt` command-line
//! client and its library.
//!
//! Run with `cargo test -p midge --test interop_mqttjs`; `./scripts/test` runs
//! `npm ci` in `crates/midge/tests/js` first, which installs MQTT.js there.
//!
//! The first test is the demonstration this project grew from: `mqtt sub` on topic
//! `hello`, `mqtt pub -m GDGNatal`, and the subscriber prints `hello GDGNatal`. The
//! others run scenarios of `tests/js/mqttjs_interop.mjs`, which checks what its
//! clients receive, prints an `ok:` line per check, and exits non-zero with a `FAIL:`
//! line on the first that does not hold.

mod interop_support;

use std::path::PathBuf;
use std::process::Command;

use interop_support::{WAIT, require_file, require_success, start_broker, tests_dir};
use midge_test_support::Process;

const INSTALLS: &str = "MQTT.js (npm ci in crates/midge/tests/js)";

fn js_dir() -> PathBuf {
    tests_dir().join("js")
}

/// Fails the test unless Node.js runs and MQTT.js is installed in `tests/js`.
fn require_mqttjs() {
    require_success("node", &["--version"], "Node.js and MQTT.js (npm ci in crates/midge/tests/js)");
    require_file(&js_dir().join("node_modules").join("mqtt").join("package.json"), INSTALLS);
    require_file(&mqtt_cli(), INSTALLS);
}

/// The `mqtt` command that MQTT.js installs.
fn mqtt_cli() -> PathBuf {
    js_dir().join("node_modules").join(".bin").join("mqtt")
}

/// `mqtt ARGS…`, run in `tests/js`.
fn mqtt(args: &[&str]) -> Command {
    let mut command = Command::new(mqtt_cli());
    command.current_dir(js_dir()).args(args);
    command
}

#[test]
fn mqtt_sub_prints_hello_gdgnatal_when_mqtt_pub_sends_gdgnatal_to_localhost() {
    require_mqttjs();
    let broker = start_broker(&[]);
    let port = broker.port().to_string();

    // MQTT.js logs through the `debug` package: with DEBUG set it tells on stderr when
    // the SUBACK has come, so the test publishes only once the subscription exists.
    let mut sub_command = mqtt(&["sub", "-h", "localhost", "-p", &port, "-t", "hello", "-v"]);
    sub_command.env("DEBUG", "mqttjs*");
    let sub = Process::spawn("mqtt sub", sub_command);
    sub.wait_for_stderr_line("packet type suback", WAIT);

    let mut publisher =
        Process::spawn("mqtt pub", mqtt(&["pub", "-h", "localhost", "-p", &port, "-t", "hello", "-m", "GDGNatal"]));
    publisher.wait_success(WAIT);
    // `mqtt pub` exits with status 0 even when it cannot connect; it prints the error.
    assert!(!publisher.stderr().contains("Error"), "mqtt pub reported an error; {}", publisher.transcript());

    let line = sub.wait_for_stdout_line("GDGNatal", WAIT);
    assert_eq!(line, "hello GDGNatal", "{}", sub.transcript());
}

/// Runs `node mqttjs_interop.mjs 127.0.0.1 PORT SCENARIO --protocol PROTOCOL` against
/// a fresh broker and fails the test unless the script passes.
fn scenario(scenario: &str, protocol: &str) {
    require_mqttjs();
    let broker = start_broker(&[]);
    let mut command = Command::new("node");
    command.current_dir(js_dir()).arg("mqttjs_interop.mjs").args([
        "127.0.0.1",
        &broker.port().to_string(),
        scenario,
        "--protocol",
        protocol,
    ]);
    let mut script = Process::spawn(&format!("MQTT.js {scenario} over MQTT {protocol}"), command);
    script.wait_success(WAIT);
    let passed = format!("passed: {scenario} over MQTT {protocol}");
    assert!(script.stdout().contains(&passed), "the script did not report {passed:?}; {}", script.transcript());
}

#[test]
fn mqttjs_round_trips_qos_0_1_and_2_messages_over_mqtt_3_1_1() {
    scenario("roundtrip", "311");
}

#[test]
fn mqttjs_round_trips_qos_0_1_and_2_messages_over_mqtt_3_1() {
    scenario("roundtrip", "31");
}

#[test]
fn mqttjs_late_subscriber_receives_a_retained_message() {
    scenario("retained", "311");
}

#[test]
fn mqttjs_client_will_is_published_when_its_connection_drops() {
    scenario("will", "311");
}

/// v5 section 3.3.2.3.4: MQTT.js sets a topic alias and then publishes by alias
/// alone; midge resolves it, and towards a subscriber that accepts aliases it sends
/// the topic once and the alias alone afterwards.
#[test]
fn mqttjs_topic_aliases_work_in_both_directions() {
    require_mqttjs();
    let broker = start_broker(&[]);
    let mut command = Command::new("node");
    command.current_dir(js_dir()).arg("mqttjs_v5.mjs").args(["127.0.0.1", &broker.port().to_string(), "topic_aliases"]);
    let mut script = Process::spawn("mqttjs v5 topic_aliases", command);
    script.wait_success(WAIT);
    assert!(script.stdout().contains("passed: topic_aliases"), "{}", script.transcript());
}
