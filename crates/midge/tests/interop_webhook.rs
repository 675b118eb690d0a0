//! The HTTP webhook policy end to end: `midge serve --webhook URL` asks a small web
//! service written with Python's http.server (`tests/python/webhook_server.py`), and
//! paho-mqtt (`tests/python/auth_v5.py webhook`) and Mosquitto's clients see its
//! decisions: logins, publishes, subscriptions, denials on errors and timeouts, the
//! answer cache, https with a CA file, and mistakes in the settings.

mod interop_support;

use std::process::Command;

use interop_support::{WAIT, require_paho, run_python, start_broker, tests_dir};
use midge_test_support::{Process, TempDir};

/// Starts the webhook service (https with `tls`: certificate and key files); returns
/// it and its port.
fn webhook_server(tls: Option<(&str, &str)>) -> (Process, String) {
    let mut command = Command::new("python3");
    command.arg("-u").arg(tests_dir().join("python").join("webhook_server.py")).env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some((cert, key)) = tls {
        command.args(["--cert", cert, "--key", key]);
    }
    let server = Process::spawn("webhook server", command);
    let line = server.wait_for_stdout_line("listening ", WAIT);
    let port = line.trim().trim_start_matches("listening ").to_owned();
    (server, port)
}

/// The questions the service got, as JSON text.
fn requests(server: &Process) -> Vec<String> {
    server.stdout_lines().into_iter().filter_map(|l| l.strip_prefix("request: ").map(str::to_owned)).collect()
}

fn mosquitto(program: &str, args: &[&str]) -> Process {
    let mut command = Command::new(program);
    command.args(args);
    Process::spawn(program, command)
}

/// Every rule of the answer format through paho 5 and 3.1.1, then what the service saw:
/// the password in the connect question, one publish question for a repeated topic
/// (the cache), and a warning in the broker's log for the slow answer.
#[test]
fn the_webhook_decides_logins_publishes_and_subscriptions() {
    require_paho();
    let (server, port) = webhook_server(None);
    let url = format!("http://127.0.0.1:{port}/mqtt");
    let broker = start_broker(&["--webhook", &url, "--webhook-timeout-ms", "500"]);
    assert!(
        broker.log().contains("decides logins, publishes, subscriptions; anonymous clients refused"),
        "{}",
        broker.log()
    );
    run_python("auth_v5.py", &["127.0.0.1", &broker.port().to_string(), "webhook"], "passed: webhook");

    let seen = requests(&server);
    let login =
        seen.iter().find(|r| r.contains(r#""password": "secret""#)).expect("no connect question with the password");
    assert!(login.contains(r#""action": "connect""#) && login.contains(r#""username": "alice""#), "{login}");
    assert!(login.contains(r#""protocol": "5.0""#) && login.contains(r#""peer": "127.0.0.1:"#), "{login}");
    let repeated = seen.iter().filter(|r| r.contains(r#""topic": "allowed/1""#)).count();
    assert_eq!(repeated, 1, "two publishes to allowed/1 within the cache time ask once: {seen:#?}");
    assert!(seen.iter().any(|r| r.contains(r#""action": "subscribe""#) && r.contains(r#""topic": "denied/#""#)));
    assert!(broker.wait_for_log("webhook timed out", WAIT), "{}", broker.log());
    assert!(broker.log().contains("is not {\"result\""), "a malformed answer is logged: {}", broker.log());
}

/// A service that is down denies (fail closed) and says why in the log.
#[test]
fn a_webhook_that_is_down_denies() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let broker = start_broker(&["--webhook", &url]);
    let port = broker.port().to_string();
    let mut publish = mosquitto("mosquitto_pub", &["-p", &port, "-u", "alice", "-P", "secret", "-t", "t", "-m", "x"]);
    assert!(!publish.wait_exit(WAIT).success(), "{}", publish.transcript());
    assert!(publish.output().contains("bad user name or password"), "{}", publish.transcript());
    assert!(broker.wait_for_log("webhook request failed", WAIT), "{}", broker.log());
}

/// https with the CA from `midge certs`, set in a config file: the webhook decides only
/// logins (`webhook_checks = ["connect"]`) while an ACL file decides topics.
#[test]
fn an_https_webhook_for_logins_alongside_an_acl_file() {
    let dir = TempDir::new("webhook-https");
    let certs = dir.join("certs");
    let certs = certs.to_str().unwrap();
    let mut make = Command::new(env!("CARGO_BIN_EXE_midge"));
    make.args(["certs", "--out", certs]);
    Process::spawn("midge certs", make).wait_success(WAIT);
    let (cert, key) = (format!("{certs}/server.crt"), format!("{certs}/server.key"));
    let (server, port) = webhook_server(Some((&cert, &key)));
    std::fs::write(dir.join("acl"), "user alice\ntopic readwrite alice/#\n").unwrap();
    let config = dir.join("midge.toml");
    std::fs::write(
        &config,
        format!(
            "acl_file = \"acl\"\nwebhook = \"https://localhost:{port}/auth\"\nwebhook_checks = [\"connect\"]\n\
             webhook_ca = \"certs/ca.crt\"\n"
        ),
    )
    .unwrap();
    let broker = start_broker(&["-c", config.to_str().unwrap()]);
    assert!(broker.log().contains("decides logins;"), "{}", broker.log());
    let port = broker.port().to_string();
    let login = ["-p", &port, "-u", "alice", "-P", "secret"];
    let mut publish =
        mosquitto("mosquitto_pub", &[&login[..], &["-t", "alice/x", "-m", "kept", "-r", "-q", "1"]].concat());
    publish.wait_success(WAIT);
    let mut sub = mosquitto("mosquitto_sub", &[&login[..], &["-t", "alice/x", "-C", "1"]].concat());
    sub.wait_success(WAIT);
    assert_eq!(sub.stdout().trim(), "kept");
    // The ACL file, not the webhook, refuses this subscription.
    let mut denied = mosquitto("mosquitto_sub", &[&login[..], &["-t", "other/#", "-C", "1"]].concat());
    denied.wait_exit(WAIT);
    assert!(denied.output().contains("All subscription requests were denied"), "{}", denied.transcript());
    let seen = requests(&server);
    assert!(!seen.is_empty() && seen.iter().all(|r| r.contains(r#""action": "connect""#)), "{seen:#?}");
}

/// Settings that cannot work stop the broker with a clear message.
#[test]
fn webhook_setting_mistakes_are_clear_errors() {
    let dir = TempDir::new("webhook-mistakes");
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--webhook", "ftp://example.com/"], "must start with http:// or https://"),
        (
            &["--webhook", "http://127.0.0.1:1/", "--password-file", passwords.to_str().unwrap()],
            "both the password file and the webhook would decide logins",
        ),
        (&["--webhook-checks", "connect"], "need a webhook URL"),
        (&["--webhook", "https://127.0.0.1:1/", "--webhook-ca", "/nonexistent/ca.crt"], "webhook CA file"),
    ];
    for (args, message) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
        command.args(["serve", "--in-memory", "--port", "0"]).args(args);
        let mut serve = Process::spawn("midge serve", command);
        assert!(!serve.wait_exit(WAIT).success(), "{args:?} must fail");
        assert!(serve.stderr().contains(message), "{args:?}: {}", serve.transcript());
    }
}
