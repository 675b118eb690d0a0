//! Helpers of `cli_pub_sub.rs`: run `midge pub` / `midge sub`, midge and
//! Mosquitto brokers, and TLS material from `midge certs`. Every wait is
//! bounded and waits for the event itself; every process is killed on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use midge_test_support::{Broker, Process, TempDir};

/// How long a test waits for something that should happen.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Runs `midge ARGS…`.
pub(crate) fn midge(args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(args).env("NO_COLOR", "1");
    Process::spawn(&format!("midge {}", args.first().copied().unwrap_or_default()), command)
}

/// A midge broker on an ephemeral port with its own data directory.
pub(crate) fn midge_broker(args: &[&str]) -> Broker {
    Broker::start(env!("CARGO_BIN_EXE_midge"), args)
}

/// `midge sub -d -h 127.0.0.1 -p PORT ARGS…`, once its subscriptions are acknowledged.
pub(crate) fn sub(port: u16, args: &[&str]) -> Process {
    sub_with_host("127.0.0.1", port, args)
}

/// `midge sub -d -h HOST -p PORT ARGS…`, once its subscriptions are acknowledged.
pub(crate) fn sub_with_host(host: &str, port: u16, args: &[&str]) -> Process {
    let port = port.to_string();
    let mut full = vec!["sub", "-d", "-h", host, "-p", &port];
    full.extend_from_slice(args);
    let process = midge(&full);
    process.wait_for_stderr_line("received SUBACK", WAIT);
    process
}

/// Runs `midge pub -h 127.0.0.1 -p PORT ARGS…` to a successful end.
pub(crate) fn publish(port: u16, args: &[&str]) -> Process {
    publish_with_host("127.0.0.1", port, args)
}

/// Runs `midge pub -h HOST -p PORT ARGS…` to a successful end.
pub(crate) fn publish_with_host(host: &str, port: u16, args: &[&str]) -> Process {
    let port = port.to_string();
    let mut full = vec!["pub", "-h", host, "-p", &port];
    full.extend_from_slice(args);
    let mut process = midge(&full);
    process.wait_success(WAIT);
    process
}

/// Waits for a subscriber to exit successfully by itself; returns its stdout lines.
pub(crate) fn finished(mut sub: Process) -> Vec<String> {
    sub.wait_success(WAIT);
    sub.stdout_lines()
}

/// Runs a shell pipeline to a successful end (for stdin-fed `midge pub`).
pub(crate) fn shell(script: &str) {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    Process::spawn("sh", command).wait_success(WAIT);
}

/// A port nothing listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `midge serve` on a port we choose (0: any), with a given data directory,
/// so a test can stop it and start another on the same port and store.
pub(crate) struct Served {
    process: Process,
    port: u16,
}

impl Served {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// SIGTERM, and wait for the exit.
    pub(crate) fn stop(&mut self) {
        self.process.terminate(WAIT);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- midge serve log ---\n{}", self.process.output());
        }
    }
}

/// `midge serve --bind 127.0.0.1 --port PORT --data-dir DATA`, once it listens.
pub(crate) fn serve_on(port: u16, data: &TempDir) -> Served {
    let port_arg = port.to_string();
    let dir = data.path().to_str().unwrap().to_owned();
    let process = midge(&["serve", "--bind", "127.0.0.1", "--port", &port_arg, "--data-dir", &dir]);
    let line = process.wait_for_stderr_line("listening on mqtt://127.0.0.1:", WAIT);
    let port = port_after(&line, "127.0.0.1:");
    Served { process, port }
}

fn port_after(line: &str, marker: &str) -> u16 {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// `midge certs --out DIR/certs`; returns that directory.
pub(crate) fn make_certs(dir: &TempDir) -> String {
    make_certs_named(dir, "certs")
}

/// `midge certs --out DIR/NAME`; returns that directory.
pub(crate) fn make_certs_named(dir: &TempDir, name: &str) -> String {
    let out = dir.join(name).to_str().unwrap().to_owned();
    midge(&["certs", "--out", &out]).wait_success(WAIT);
    out
}

/// A midge TLS listener (client certificates required) bound to `bind`; returns it and its port.
pub(crate) fn serve_tls(dir: &TempDir, certs: &str, bind: &str) -> (Process, u16) {
    let conf = dir.join("midge.toml");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous = true\n[[listener]]\nbind = \"{bind}\"\nport = 0\ntls_cert = \"{certs}/server.crt\"\n\
             tls_key = \"{certs}/server.key\"\ntls_ca = \"{certs}/ca.crt\"\nrequire_certificate = true\n"
        ),
    )
    .unwrap();
    let serve = midge(&["serve", "--in-memory", "-c", conf.to_str().unwrap()]);
    let marker = format!("listening on mqtts://{bind}:");
    let line = serve.wait_for_stderr_line(&marker, WAIT);
    let port = port_after(&line, &format!("{bind}:"));
    (serve, port)
}

/// Eclipse Mosquitto on two ephemeral ports: MQTT over TCP and over WebSocket.
pub(crate) struct Mosquitto {
    _process: Process,
    _dir: TempDir,
    pub(crate) port: u16,
    pub(crate) ws_port: u16,
}

impl Mosquitto {
    /// Starts `/usr/sbin/mosquitto -c CONF`; `deny_anonymous` refuses clients without a login.
    pub(crate) fn start(deny_anonymous: bool) -> Mosquitto {
        Mosquitto::start_with(deny_anonymous, "")
    }

    /// Mosquitto whose WebSocket listener speaks TLS with the `midge certs` files in `certs`.
    pub(crate) fn start_wss(certs: &str, dir: &TempDir) -> Mosquitto {
        // Started as root, Mosquitto reads the key after dropping to its own
        // user: a world-readable copy (a throwaway test key) lets it.
        let key = dir.join("mosquitto-server.key");
        std::fs::copy(format!("{certs}/server.key"), &key).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let tls = format!("certfile {certs}/server.crt\nkeyfile {}\n", key.display());
        Mosquitto::start_with(false, &tls)
    }

    fn start_with(deny_anonymous: bool, ws_tls: &str) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing\nrun ./scripts/test, which installs the Debian package mosquitto"
        );
        let dir = TempDir::new("mosquitto");
        // Ports picked by binding port 0 and releasing it: another process could
        // take one in between, which the start-up check below would report.
        let (port, ws_port) = (free_port(), free_port());
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "log_dest stderr\nlog_type all\npersistence false\nallow_anonymous {}\n\
                 listener {port} 127.0.0.1\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n{ws_tls}",
                !deny_anonymous
            ),
        )
        .unwrap();
        let mut command = Command::new(MOSQUITTO);
        command.arg("-c").arg(&conf);
        let process = Process::spawn("mosquitto", command);
        process.wait_for_stderr_line(" running", WAIT);
        Mosquitto { _process: process, _dir: dir, port, ws_port }
    }
}
