//! Interoperability with the Eclipse Paho Python client (paho-mqtt 2.x).
//!
//! Run with `cargo test -p midge --test interop_paho`; `./scripts/test` installs
//! paho-mqtt first. Each test starts a broker and runs one scenario of
//! `tests/python/paho_interop.py` against it; the script checks what its clients
//! receive, prints an `ok:` line per check, and exits non-zero with a `FAIL:` line on
//! the first that does not hold. The script can also be run by hand:
//! `python3 crates/midge/tests/python/paho_interop.py 127.0.0.1 1883 roundtrip`.

mod interop_support;

use interop_support::{require_paho, run_python, start_broker};

/// Runs `paho_interop.py 127.0.0.1 PORT SCENARIO --protocol PROTOCOL` against a
/// fresh broker and fails the test unless the script passes.
fn run_scenario(scenario: &str, protocol: &str) {
    require_paho();
    let broker = start_broker(&[]);
    let port = broker.port().to_string();
    let passed = format!("passed: {scenario} over MQTT {protocol}");
    run_python("paho_interop.py", &["127.0.0.1", &port, scenario, "--protocol", protocol], &passed);
}

#[test]
fn paho_round_trips_qos_0_1_and_2_messages_over_mqtt_3_1_1() {
    run_scenario("roundtrip", "311");
}

#[test]
fn paho_round_trips_qos_0_1_and_2_messages_over_mqtt_3_1() {
    run_scenario("roundtrip", "31");
}

#[test]
fn paho_late_subscriber_receives_a_retained_message_over_mqtt_3_1_1() {
    run_scenario("retained", "311");
}

#[test]
fn paho_late_subscriber_receives_a_retained_message_over_mqtt_3_1() {
    run_scenario("retained", "31");
}

#[test]
fn paho_client_will_is_published_when_its_connection_drops_over_mqtt_3_1_1() {
    run_scenario("will", "311");
}

#[test]
fn paho_client_will_is_published_when_its_connection_drops_over_mqtt_3_1() {
    run_scenario("will", "31");
}

#[test]
fn paho_persistent_session_receives_messages_queued_while_offline_over_mqtt_3_1_1() {
    run_scenario("persistent", "311");
}

#[test]
fn paho_persistent_session_receives_messages_queued_while_offline_over_mqtt_3_1() {
    run_scenario("persistent", "31");
}
