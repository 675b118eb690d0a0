//! `midge bench`, the load generator, checked for what it counts, not for how
//! fast anything is: exact counts at QoS 1 and 2, every copy of a fan-out,
//! the JSON summary's fields, a run against Mosquitto, and clear failures.
//! No test asserts a timing; every wait is bounded.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use midge_test_support::{Broker, Process, TempDir};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Starts `midge bench ARGS…`.
fn bench(args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.arg("bench").args(args).env("NO_COLOR", "1");
    Process::spawn(&format!("midge bench {}", args.join(" ")), command)
}

/// Runs `midge bench ARGS… --json` to success and returns its summary.
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let mut p = bench(&all);
    p.wait_success(WAIT);
    summary(&p)
}

/// The JSON summary a finished run printed on stdout.
fn summary(p: &Process) -> Value {
    let out = p.stdout();
    let line = out.lines().last().unwrap_or_else(|| panic!("no summary on stdout; {}", p.transcript()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {line}"))
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} is not a count in {v}"))
}

fn midge() -> Broker {
    Broker::start(env!("CARGO_BIN_EXE_midge"), &["--in-memory"])
}

#[test]
fn a_subscriber_receives_exactly_the_500_qos1_messages_a_publisher_sends() {
    let broker = midge();
    let port = broker.port().to_string();
    let mut sub = bench(&["sub", "-p", &port, "-t", "count/500", "-q", "1", "--count", "500", "--json"]);
    sub.wait_for_stderr_line("subscribed", WAIT);
    let publisher = bench_json(&["pub", "-p", &port, "-t", "count/500", "-q", "1", "--count", "500"]);
    assert_eq!(u64_of(&publisher, "sent"), 500);
    assert_eq!(u64_of(&publisher, "acked"), 500);
    sub.wait_success(WAIT);
    let received = summary(&sub);
    assert_eq!(u64_of(&received, "received"), 500, "{received}");
}

#[test]
fn fan_out_to_three_subscribers_counts_every_copy() {
    let broker = midge();
    let port = broker.port().to_string();
    let s = bench_json(&["fan-out", "-p", &port, "--subscribers", "3", "-q", "1", "--count", "200"]);
    assert_eq!(u64_of(&s, "sent"), 200);
    assert_eq!(u64_of(&s, "copies_per_message"), 3);
    assert_eq!(u64_of(&s, "expected"), 600);
    assert_eq!(u64_of(&s, "received"), 600, "{s}");
    assert_eq!(u64_of(&s, "lost"), 0);
}

#[test]
fn qos2_pairs_lose_nothing_and_the_json_summary_has_every_field() {
    let broker = midge();
    let port = broker.port().to_string();
    let s = bench_json(&["pairs", "-p", &port, "--pairs", "3", "-q", "2", "--count", "100", "-V", "5"]);
    assert_eq!(s["scenario"], "pairs");
    assert_eq!(s["protocol"], "5.0");
    assert_eq!(u64_of(&s, "sent"), 300);
    assert_eq!(u64_of(&s, "acked"), 300);
    assert_eq!(u64_of(&s, "received"), 300, "{s}");
    assert_eq!(u64_of(&s, "lost"), 0);
    assert_eq!(u64_of(&s, "duplicates"), 0);
    for field in ["sent_rate", "received_rate", "connect_rate", "publish_seconds"] {
        assert!(s[field].is_number(), "{field} missing in {s}");
    }
    let latency = &s["latency_us"];
    assert_eq!(u64_of(latency, "count"), 300, "every message carried its send time: {s}");
    for field in ["p50", "p90", "p99", "p999", "max"] {
        assert!(latency[field].as_f64().is_some_and(|v| v > 0.0), "latency {field} missing in {s}");
    }
    assert!(s["cpu"]["generator_pct"].is_number(), "{s}");
    assert!(s["errors"].as_array().is_some_and(|e| e.is_empty()), "{s}");
}

#[test]
fn paced_publishers_count_exactly_on_both_timers() {
    // 1,000 msg/s paces on a timerfd, 50 msg/s on tokio's timer; a paced
    // publisher reads its acknowledgements only at its send slots and at the end.
    let broker = midge();
    let port = broker.port().to_string();
    for (rate, qos) in [("1000", "1"), ("1000", "2"), ("50", "1")] {
        let s = bench_json(&["pairs", "-p", &port, "--pairs", "2", "-q", qos, "--total-rate", rate, "-C", "20"]);
        assert_eq!(u64_of(&s, "sent"), 40, "rate {rate}, QoS {qos}: {s}");
        assert_eq!(u64_of(&s, "acked"), 40, "rate {rate}, QoS {qos}: {s}");
        assert_eq!(u64_of(&s, "received"), 40, "rate {rate}, QoS {qos}: {s}");
        assert_eq!(u64_of(&s, "lost"), 0, "rate {rate}, QoS {qos}: {s}");
    }
}

#[test]
fn publishers_on_the_clock_grid_count_exactly_and_a_grid_needs_a_rate() {
    // `--phase-us` is how the harness runs two generators half a period apart.
    let broker = midge();
    let port = broker.port().to_string();
    let s = bench_json(&[
        "pairs",
        "-p",
        &port,
        "--pairs",
        "2",
        "-q",
        "1",
        "--total-rate",
        "1000",
        "--phase-us",
        "500",
        "-C",
        "20",
    ]);
    assert_eq!(u64_of(&s, "sent"), 40, "{s}");
    assert_eq!(u64_of(&s, "received"), 40, "{s}");
    assert_eq!(u64_of(&s, "lost"), 0, "{s}");

    let mut p = bench(&["pairs", "-p", &port, "--pairs", "1", "--phase-us", "500", "-C", "1"]);
    let status = p.wait_exit(WAIT);
    assert!(!status.success(), "{}", p.transcript());
    assert!(p.stderr().contains("--phase-us needs --rate or --total-rate"), "{}", p.transcript());
}

#[test]
fn a_shared_subscription_group_receives_each_message_once() {
    let broker = midge();
    let port = broker.port().to_string();
    let s = bench_json(&["shared", "-p", &port, "--publishers", "2", "--subscribers", "3", "-q", "1", "-C", "150"]);
    assert_eq!(u64_of(&s, "expected"), 300);
    assert_eq!(u64_of(&s, "received"), 300, "{s}");
}

#[test]
fn fan_in_with_a_window_and_a_duration_accounts_for_every_message() {
    let broker = midge();
    let port = broker.port().to_string();
    let s = bench_json(&["fan-in", "-p", &port, "--publishers", "4", "-q", "1", "--duration", "0.5", "--window", "50"]);
    assert!(u64_of(&s, "sent") > 0, "{s}");
    assert_eq!(u64_of(&s, "received") + u64_of(&s, "lost"), u64_of(&s, "sent"), "{s}");
    assert_eq!(u64_of(&s, "lost"), 0, "QoS 1 on loopback loses nothing: {s}");
}

#[test]
fn persistent_qos1_sessions_are_counted_like_any_other() {
    let data = TempDir::new("bench-data");
    let dir = data.path().to_str().expect("utf-8 path").to_owned();
    let broker = Broker::start(env!("CARGO_BIN_EXE_midge"), &["--data-dir", &dir, "--sync", "never"]);
    let port = broker.port().to_string();
    let s = bench_json(&["pairs", "-p", &port, "--pairs", "2", "-q", "1", "-C", "100", "--clean", "false"]);
    assert_eq!(u64_of(&s, "received"), 200, "{s}");
}

#[test]
fn conn_opens_and_holds_connections_and_reports_the_brokers_memory() {
    let broker = midge();
    let port = broker.port().to_string();
    let pid = broker.pid().to_string();
    let s = bench_json(&[
        "conn",
        "-p",
        &port,
        "-c",
        "60",
        "--hold",
        "0.2",
        "--broker-pid",
        &pid,
        "--ifaddr",
        "127.0.0.1,127.0.0.2",
    ]);
    assert_eq!(u64_of(&s, "connected"), 60, "{s}");
    assert_eq!(u64_of(&s, "failed"), 0);
    assert_eq!(u64_of(&s["connect_time_us"], "count"), 60, "{s}");
    assert!(s["memory_per_connection_kib"].is_number(), "{s}");
    assert!(s["broker_rss_after_kib"].is_number(), "{s}");
    assert!(s["cpu"]["broker_pct"].is_number(), "{s}");
}

/// Mosquitto on a free port, with the harness's settings.
struct Mosquitto {
    process: Process,
    port: u16,
    _dir: TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "this test runs the bench against Mosquitto, which is not installed: apt-get install mosquitto \
             (./scripts/test does)"
        );
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = TempDir::new("mosquitto");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\nset_tcp_nodelay true\n\
                 max_queued_messages 100000\nlog_dest stderr\n"
            ),
        )
        .expect("writing mosquitto.conf");
        let mut command = Command::new(MOSQUITTO);
        command.arg("-c").arg(&conf);
        let process = Process::spawn("mosquitto", command);
        process.wait_for_stderr_line("running", WAIT);
        Mosquitto { process, port, _dir: dir }
    }
}

#[test]
fn the_bench_counts_the_same_against_mosquitto() {
    let mosquitto = Mosquitto::start();
    let port = mosquitto.port.to_string();
    let pid = mosquitto.process.pid().to_string();
    let s = bench_json(&["pairs", "-p", &port, "--pairs", "4", "-q", "1", "-C", "250", "--broker-pid", &pid]);
    assert_eq!(u64_of(&s, "sent"), 1000);
    assert_eq!(u64_of(&s, "received"), 1000, "{s}");
    assert!(s["cpu"]["broker_pct"].is_number(), "{s}");
    let s = bench_json(&["fan-out", "-p", &port, "--subscribers", "3", "-q", "1", "-C", "100"]);
    assert_eq!(u64_of(&s, "received"), 300, "{s}");
    let s = bench_json(&["conn", "-p", &port, "-c", "40", "--hold", "0.1", "--broker-pid", &pid]);
    assert_eq!(u64_of(&s, "connected"), 40, "{s}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port().to_string();
    for scenario in [&["pairs", "--pairs", "1", "-C", "1"][..], &["conn", "-c", "3"]] {
        let mut args = scenario.to_vec();
        args.extend(["-p", &port, "--connect-timeout", "5"]);
        let mut p = bench(&args);
        let status = p.wait_exit(WAIT);
        assert!(!status.success(), "{}", p.transcript());
        let err = p.stderr();
        assert!(err.contains("midge: error:") && err.contains(&format!("127.0.0.1:{port}")), "{}", p.transcript());
    }
}

#[test]
fn a_bad_flag_is_refused_with_a_message() {
    for args in [&["pub", "--qos", "3"][..], &["fan-in", "--no-such-flag"], &["pub", "-V", "7"]] {
        let mut p = bench(args);
        let status = p.wait_exit(WAIT);
        assert!(!status.success(), "{}", p.transcript());
        assert!(p.stderr().contains("error"), "{}", p.transcript());
    }
}

#[test]
fn help_is_long_only_because_dash_h_is_the_host() {
    let mut p = bench(&["pub", "--help"]);
    p.wait_success(WAIT);
    let out = p.stdout();
    assert!(out.contains("-h, --host"), "{out}");
    assert!(out.contains("--window"), "{out}");
}
