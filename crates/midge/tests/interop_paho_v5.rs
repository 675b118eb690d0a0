//! MQTT 5 behaviour checked with the Eclipse Paho Python client (paho-mqtt 2.x).
//!
//! Each test starts a broker and runs one scenario of `tests/python/paho_v5.py`
//! against it (`python3 crates/midge/tests/python/paho_v5.py 127.0.0.1 1883 no_local`
//! runs one by hand). `./scripts/test` installs paho-mqtt first.

mod interop_support;

use interop_support::{require_paho, run_python, start_broker};

fn run_scenario(scenario: &str) {
    run_scenario_with(scenario, &[]);
}

fn run_scenario_with(scenario: &str, broker_args: &[&str]) {
    require_paho();
    let broker = start_broker(broker_args);
    run_python("paho_v5.py", &["127.0.0.1", &broker.port().to_string(), scenario], &format!("passed: {scenario}"));
}

/// v5 [MQTT-3.8.3-3]: with No Local, a client's own messages are not sent back to it.
#[test]
fn no_local_keeps_a_clients_own_messages_from_it() {
    run_scenario("no_local");
}

/// v5 section 3.8.3.1: Retain As Published keeps RETAIN=1 on live delivery; without it, RETAIN is 0.
#[test]
fn retain_as_published_keeps_the_retain_flag() {
    run_scenario("retain_as_published");
}

/// v5 section 3.8.3.1: Retain Handling 0 sends retained messages at every subscribe,
/// 1 only for a new subscription, 2 never.
#[test]
fn retain_handling_0_1_and_2_decide_when_retained_messages_are_sent() {
    run_scenario("retain_handling");
}

/// v5 section 3.4.2.1: PUBACK reason 0x10 when no subscription matched.
#[test]
fn puback_says_no_matching_subscribers() {
    run_scenario("no_matching_subscribers");
}

/// v5 [MQTT-3.1.4-3]: the older connection of a taken-over session gets DISCONNECT 0x8E.
#[test]
fn takeover_sends_session_taken_over_to_the_older_connection() {
    run_scenario("takeover");
}

/// v5 [MQTT-3.3.2-5], [MQTT-3.3.2-6]: an expired message is not delivered (queued
/// or retained), and the interval forwarded is the time the message has left.
#[test]
fn expired_messages_are_not_delivered_and_the_interval_forwarded_is_what_is_left() {
    run_scenario("message_expiry");
}

/// v5 [MQTT-3.1.2-25]: a PUBLISH larger than the client's Maximum Packet Size is
/// discarded, and the next one that fits is delivered.
#[test]
fn messages_over_the_clients_maximum_packet_size_are_not_sent() {
    run_scenario("maximum_packet_size");
}

/// v5 [MQTT-3.1.2-23]: a session outlives its connection for exactly its Session
/// Expiry Interval; absent means 0; DISCONNECT can lower it to 0.
#[test]
fn a_session_lives_for_its_expiry_interval_and_no_longer() {
    run_scenario("session_expiry");
}

/// v5 [MQTT-3.1.3-9]: a reconnect within the Will Delay Interval suppresses the
/// will; otherwise it is published when the delay has passed.
#[test]
fn the_will_waits_for_its_delay_and_a_reconnect_cancels_it() {
    run_scenario("will_delay");
}

/// v5 section 3.14.2.1: DISCONNECT with reason 0x04 publishes the will; a normal
/// DISCONNECT discards it [MQTT-3.1.2-10].
#[test]
fn disconnect_with_reason_0x04_publishes_the_will() {
    run_scenario("disconnect_with_will");
}

/// v5 [MQTT-3.3.4-3]: a message matching several subscriptions of one client is
/// sent once, carrying every matching Subscription Identifier.
#[test]
fn one_copy_carries_every_matching_subscription_identifier() {
    run_scenario("subscription_identifiers");
}

/// v5 section 3.3.2.3.4: a Topic Alias above the maximum the server announced ends the
/// connection with DISCONNECT 0x94.
#[test]
fn a_topic_alias_above_the_maximum_gets_disconnect_0x94() {
    run_scenario("topic_alias_invalid");
}

/// v5 section 4.8.2: each message to a share group reaches one member, in turns by
/// default; a 3.1.1 client can be a member; no retained messages at subscribe.
#[test]
fn a_share_group_gives_each_message_to_one_member_in_turns() {
    run_scenario("shared_round_robin");
}

/// `--shared-strategy sticky` keeps one member while it stays connected.
#[test]
fn the_sticky_strategy_keeps_to_one_member() {
    run_scenario_with("shared_sticky", &["--shared-strategy", "sticky"]);
}

/// `--shared-strategy random` spreads messages at random.
#[test]
fn the_random_strategy_spreads_messages_at_random() {
    run_scenario_with("shared_random", &["--shared-strategy", "random"]);
}

/// v5 section 4.8.2: QoS 1 messages sent to a member that disconnects before
/// acknowledging them, and messages queued for it, go to another member.
#[test]
fn messages_in_flight_to_a_member_that_leaves_go_to_another_member() {
    run_scenario("shared_inflight_moves");
}

/// v5 section 4.8.2: messages queued for a member whose session expires offline go to
/// another member of the group.
#[test]
fn shared_messages_of_an_expired_member_go_to_another() {
    run_scenario("shared_expiry_moves");
}

/// v5 [MQTT-3.1.4-1], [MQTT-3.2.2-6]: a v5 CONNECT the server refuses is answered with
/// CONNACK and the reason: Protocol Error 0x82, Malformed Packet 0x81, Topic Name invalid 0x90.
#[test]
fn refused_v5_connects_get_the_reason_code() {
    run_scenario("connect_refusals");
}

/// v5 section 3.2.2.3.15: `--response-information reply/%c/` is sent to a client that sets
/// Request Response Information, and only then [MQTT-3.1.2-28].
#[test]
fn response_information_is_sent_only_when_requested() {
    run_scenario_with("response_information", &["--response-information", "reply/%c/"]);
}

/// v5 [MQTT-3.2.2-21]: with --max-keep-alive 30, a v5 client asking for 100 s is told
/// Server Keep Alive 30; a 3.1.1 client asking for more is refused (as Mosquitto does).
#[test]
fn a_keep_alive_above_the_maximum_is_lowered_for_v5_and_refused_for_3_1_1() {
    run_scenario_with("server_keep_alive", &["--max-keep-alive", "30"]);
}

/// v5 section 3.3.2.3: Payload Format Indicator, Content Type, Response Topic,
/// Correlation Data and User Properties reach the subscriber unchanged.
#[test]
fn publish_properties_are_forwarded_unchanged() {
    run_scenario("passthrough");
}

/// v5 section 4.10: request/response through Response Topic and Correlation Data.
#[test]
fn request_response_works_end_to_end() {
    run_scenario("request_response");
}

/// v5 [MQTT-4.12.0-1]: a CONNECT naming an authentication method the server does
/// not offer gets CONNACK 0x8C and the connection is closed.
#[test]
fn an_unsupported_authentication_method_gets_connack_0x8c() {
    run_scenario("unsupported_auth_method");
}

/// v5 [MQTT-3.1.2-22]: a silent client is disconnected after 1.5 times its keep
/// alive, and a v5 client is told why with DISCONNECT 0x8D.
#[test]
fn a_silent_v5_client_gets_disconnect_0x8d_after_one_and_a_half_keep_alives() {
    run_scenario("keep_alive_timeout");
}

/// A client that goes on sending after it broke Receive Maximum still reads
/// DISCONNECT 0x93: the server shuts its side and reads on for a moment
/// instead of resetting the connection [MQTT-3.3.4-9] [MQTT-4.13.2-1].
#[test]
fn a_client_still_sending_reads_why_it_was_disconnected() {
    run_scenario("receive_maximum_flood");
}

/// Filters and topic names deeper than `max_topic_levels` (128 by default)
/// are refused with SUBACK 0x8F, PUBACK/PUBREC 0x90 and CONNACK 0x90 for a
/// will (3.1.1: SUBACK 0x80, a closed connection), counted in `$SYS`, and
/// never delivered.
#[test]
fn topics_beyond_the_depth_limit_are_refused_with_the_v5_codes() {
    run_scenario_with("topic_limits", &["--sys-interval", "1"]);
}

/// Issue 21's crash: one 10,000-level SUBSCRIBE overflowed the broker's
/// stack. With the depth limit raised out of the way, 10,000- and
/// 30,000-level filters are subscribed, dropped by vanishing and leaving
/// clients, matched and retained, and the broker keeps serving.
#[test]
fn deep_filters_subscribed_dropped_and_matched_do_not_crash_the_broker() {
    run_scenario_with("deep_structures", &["--max-topic-levels", "100000"]);
}

/// The topics midge keeps for the aliases it gives a subscriber are
/// bounded (64 KiB): a client allowing 65,535 aliases cannot make the
/// broker hold gigabytes of 64 KiB topics.
#[test]
fn outbound_topic_aliases_keep_at_most_64_kib_of_topics() {
    run_scenario("outbound_alias_bound");
}

/// [MQTT-3.1.2-24]: a client's Maximum Packet Size bounds CONNACK and
/// DISCONNECT too; they drop optional properties and the Reason String to
/// fit a client that allows 16 bytes.
#[test]
fn connack_and_disconnect_fit_a_tiny_maximum_packet_size() {
    run_scenario("tiny_maximum_packet_size");
}

/// A session taken over while the broker's write to its old connection is
/// half done: the old client reads the rest of the 6 MB PUBLISH, then
/// DISCONNECT 0x8E, never the start of it again (a torn stream before).
#[test]
fn a_connection_taken_over_mid_write_reads_an_intact_stream() {
    run_scenario_with("takeover_mid_write", &["--max-packet-size", "16000000"]);
}
