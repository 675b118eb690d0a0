//! `midge serve` as a user meets it: where it listens by default, its start-up
//! lines, and the errors and exit codes a script can rely on.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use std::net::SocketAddr;

use midge_test_support::{Broker, Process, RawClient, RecvError, build};

const WAIT: Duration = Duration::from_secs(30);

fn midge(args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(args).env("NO_COLOR", "1");
    Process::spawn(&format!("midge {}", args.join(" ")), command)
}

/// With no `--bind`, midge listens on the loopback addresses only (as Mosquitto 2
/// does with no configuration): 127.0.0.1, and ::1 where the machine has IPv6.
#[test]
fn serve_listens_on_loopback_only_by_default() {
    let mut serve = midge(&["serve", "--in-memory", "--port", "0"]);
    serve.wait_for_stderr_line("listening on mqtt://127.0.0.1:", WAIT);
    let ipv6 = TcpListener::bind("[::1]:0").is_ok();
    if ipv6 {
        serve.wait_for_stderr_line("listening on mqtt://[::1]:", WAIT);
    }
    let log = serve.stderr();
    assert!(log.contains("midge 0.1.0 starting"), "{log}");
    let listeners = log.lines().filter(|l| l.contains("listening on mqtt://")).count();
    assert_eq!(listeners, if ipv6 { 2 } else { 1 }, "{log}");
    assert!(!log.contains("not loopback"), "{log}");
    assert!(serve.terminate(WAIT).success(), "SIGTERM ends it cleanly: {}", serve.transcript());
}

/// By default midge serves on one thread per CPU it may run on, CPU affinity
/// included: confined to one CPU with `taskset` (util-linux), it says it runs on
/// one thread, and `--threads` overrides that.
#[test]
fn serve_runs_one_thread_per_cpu_it_may_use() {
    let start = |extra: &[&str]| {
        let mut command = Command::new("taskset");
        command
            .args([
                "-c",
                "0",
                env!("CARGO_BIN_EXE_midge"),
                "serve",
                "--in-memory",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args(extra)
            .env("NO_COLOR", "1");
        let serve = Process::spawn("taskset -c 0 midge serve", command);
        serve.wait_for_stderr_line("listening on mqtt://", WAIT);
        serve
    };
    let mut pinned = start(&[]);
    assert!(pinned.stderr().contains("midge 0.1.0 starting on 1 thread\n"), "{}", pinned.transcript());
    assert!(pinned.terminate(WAIT).success(), "{}", pinned.transcript());
    let mut told = start(&["--threads", "3"]);
    assert!(told.stderr().contains("midge 0.1.0 starting on 3 threads"), "{}", told.transcript());
    assert!(told.terminate(WAIT).success(), "{}", told.transcript());
}

/// The port in a `listening on mqtt://IP:PORT` start-up line.
fn listening_port(line: &str) -> u16 {
    let rest = &line[line.find("mqtt://").expect("a listening line") + 7..];
    let addr = &rest[..rest.find(' ').unwrap_or(rest.len())];
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Secure default: a listener on a non-loopback address refuses anonymous clients
/// (CONNACK 5), says so at start-up, and warns that without a password file nobody
/// can connect. `--allow-anonymous` opens it, with a warning.
#[test]
fn a_non_loopback_listener_refuses_anonymous_clients_unless_allowed() {
    let serve = midge(&["serve", "--in-memory", "--bind", "0.0.0.0", "--port", "0"]);
    let line = serve.wait_for_stderr_line("listening on mqtt://0.0.0.0:", WAIT);
    assert!(line.contains("anonymous clients refused"), "{line}");
    serve.wait_for_stderr_line("no client can connect", WAIT);
    let addr = SocketAddr::from(([127, 0, 0, 1], listening_port(&line)));
    let mut client = RawClient::connect(addr);
    client.send(&build::Connect::new("anon").build());
    assert_eq!(client.expect_connack().return_code, 5, "anonymous: not authorized");
    client.expect_closed_soon();

    let mut open = midge(&["serve", "--in-memory", "--bind", "0.0.0.0", "--port", "0", "--allow-anonymous"]);
    open.wait_for_stderr_line("is not loopback and anonymous clients are allowed", WAIT);
    let line = open.wait_for_stderr_line("listening on mqtt://0.0.0.0:", WAIT);
    let addr = SocketAddr::from(([127, 0, 0, 1], listening_port(&line)));
    let (_client, connack) = RawClient::handshake(addr, &build::Connect::new("anon"));
    assert_eq!(connack.return_code, 0);
    open.terminate(WAIT);
}

/// A port already in use: an error naming the address, exit status 1.
#[test]
fn a_port_in_use_is_an_error_with_exit_status_1() {
    let broker = Broker::start(env!("CARGO_BIN_EXE_midge"), &[]);
    let port = broker.port().to_string();
    let mut serve = midge(&["serve", "--in-memory", "--bind", "127.0.0.1", "--port", &port]);
    let status = serve.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", serve.transcript());
    assert!(
        serve.stderr().contains(&format!("midge: error: cannot listen on 127.0.0.1:{port}")),
        "{}",
        serve.transcript()
    );
}

/// A malformed flag value is refused before anything starts, with clap's usage
/// error (exit status 2).
#[test]
fn a_bad_flag_value_is_refused_with_exit_status_2() {
    let mut serve = midge(&["serve", "--in-memory", "--max-inflight", "0"]);
    assert_eq!(serve.wait_exit(WAIT).code(), Some(2), "{}", serve.transcript());
    assert!(serve.stderr().contains("--max-inflight"), "{}", serve.transcript());
}

/// `midge serve` with a soft open-file limit of `limit`, once it listens;
/// with the address of its IPv4 listener.
#[cfg(target_os = "linux")]
fn serve_under_file_limit(limit: u32) -> (Process, SocketAddr) {
    let script = format!(r#"ulimit -Sn {limit} && exec "$0" serve --in-memory --port 0"#);
    let mut command = Command::new("sh");
    command.args(["-c", &script, env!("CARGO_BIN_EXE_midge")]);
    let serve = Process::spawn(&format!("midge serve under ulimit -Sn {limit}"), command);
    let line = serve.wait_for_stderr_line("listening on mqtt://127.0.0.1:", WAIT);
    let addr = SocketAddr::from(([127, 0, 0, 1], listening_port(&line)));
    (serve, addr)
}

/// The descriptor table is sized for the file limit before the runtime's
/// threads start: growing it later, with threads sharing it, makes the
/// thread inside `accept` wait an RCU grace period per doubling.
/// /proc/PID/status reports the table's slots as FDSize.
#[cfg(target_os = "linux")]
#[test]
fn the_descriptor_table_is_sized_for_the_file_limit_at_start() {
    let (mut serve, _) = serve_under_file_limit(3000);
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.pid())).unwrap();
    let slots: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no FDSize in {status}"));
    // The kernel rounds the table up to a power of two.
    assert_eq!(slots, 4096, "{status}");
    assert!(serve.terminate(WAIT).success(), "{}", serve.transcript());
}

/// The next `$SYS/broker/connections/total` routed live (RETAIN 0), skipping
/// the retained value a new subscription gets first.
fn next_connections_total(observer: &mut RawClient) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(std::time::Instant::now() < deadline, "no live $SYS/broker/connections/total within {WAIT:?}");
        let publish = observer.expect_publish();
        if !publish.retain {
            return String::from_utf8(publish.payload).unwrap();
        }
    }
}

/// TCP_DEFER_ACCEPT: a connection is handed to midge with its first bytes.
/// One that has said nothing yet is not a connection midge has accepted
/// (`$SYS/broker/connections/total` counts accepts), and when its CONNECT
/// does come, late, it is served like any other.
#[cfg(target_os = "linux")]
#[test]
fn a_connection_reaches_the_broker_with_its_first_bytes() {
    let broker = Broker::start(env!("CARGO_BIN_EXE_midge"), &["--sys-interval", "1"]);
    // The kernel completes the handshake; the client says nothing yet.
    let mut late = RawClient::connect(broker.addr()).named("late");
    let mut observer = RawClient::connected(broker.addr(), "observer");
    observer.subscribe(1, &[("$SYS/broker/connections/total", 0)]);
    // The kernel keeps a silent connection for about 15 s (10 s rounded up
    // to its SYN-ACK retransmissions); the next $SYS tick is within 1 s.
    assert_eq!(next_connections_total(&mut observer), "1", "only the observer was accepted");

    late.send(&build::Connect::new("late").build());
    assert_eq!(late.expect_connack().return_code, 0);
    // A tick taken just before the late accept may still say 1.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match next_connections_total(&mut observer).as_str() {
            "2" => break,
            "1" => assert!(std::time::Instant::now() < deadline, "the late client was never counted"),
            other => panic!("connections/total {other}: only the observer and the late client connected"),
        }
    }
}

/// At the open-file limit a listener cannot accept: clients beyond it wait
/// in the kernel's queue. midge says so once, not at each retry (every
/// 50 ms), keeps serving the clients it has, and takes a waiting one as
/// soon as a descriptor frees up.
#[cfg(target_os = "linux")]
#[test]
fn at_the_open_file_limit_a_waiting_client_is_served_once_a_descriptor_frees_up() {
    let (mut serve, addr) = serve_under_file_limit(24);
    let mut served = Vec::new();
    let mut waiting = loop {
        assert!(served.len() < 24, "all {} clients served under a limit of 24 descriptors", served.len());
        let mut client = RawClient::connect(addr).named(&format!("client {}", served.len()));
        client.send(&build::Connect::new(format!("c{}", served.len())).build());
        match client.recv_packet(Duration::from_secs(2)) {
            Ok(packet) => {
                assert_eq!(packet.packet_type(), 2, "CONNACK expected: {packet:?}");
                served.push(client);
            }
            Err(RecvError::TimedOut) => break client,
            Err(e) => panic!("{e:?}; {}", serve.transcript()),
        }
    };
    assert!(!served.is_empty(), "{}", serve.transcript());
    serve.wait_for_stderr_line("accept failed", WAIT);
    served[0].ping();
    // Ten retries later, still one line.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(serve.stderr().matches("accept failed").count(), 1, "{}", serve.transcript());

    served.pop().unwrap().disconnect();
    assert_eq!(waiting.expect_connack().return_code, 0);
    serve.wait_for_stderr_line("accepting connections again", WAIT);
    assert!(serve.terminate(WAIT).success(), "{}", serve.transcript());
}
