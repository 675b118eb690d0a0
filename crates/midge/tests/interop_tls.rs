//! TLS listeners end to end, with certificates made by `midge certs` and Debian's
//! `mosquitto_pub`/`mosquitto_sub` (OpenSSL) as the independent clients: the
//! handshake, a wrong CA, a missing client certificate, identity-as-username with an
//! ACL, and new certificates picked up on SIGHUP without dropping connections.

mod interop_support;

use std::process::Command;

use interop_support::{WAIT, require_paho, run_python};
use midge_test_support::{Process, TempDir};

fn midge(args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(args).env("NO_COLOR", "1");
    Process::spawn(&format!("midge {}", args.join(" ")), command)
}

/// `midge certs --out DIR/NAME`; returns that directory as a string.
fn certs(dir: &TempDir, name: &str, force: bool) -> String {
    let out = dir.join(name).to_str().unwrap().to_owned();
    let mut args = vec!["certs", "--out", out.as_str()];
    if force {
        args.push("--force");
    }
    midge(&args).wait_success(WAIT);
    out
}

/// Starts `midge serve -c` with one TLS listener on an ephemeral loopback port,
/// `extra` appended to its `[[listener]]` table; returns the broker and the port.
fn serve_tls(dir: &TempDir, certs: &str, extra: &str, top: &str) -> (Process, String) {
    let conf = dir.join("midge.toml");
    std::fs::write(
        &conf,
        format!(
            "{top}\n[[listener]]\nbind = \"127.0.0.1\"\nport = 0\ntls_cert = \"{certs}/server.crt\"\n\
             tls_key = \"{certs}/server.key\"\ntls_ca = \"{certs}/ca.crt\"\n{extra}\n"
        ),
    )
    .unwrap();
    let serve = midge(&["serve", "--in-memory", "-c", conf.to_str().unwrap()]);
    let line = serve.wait_for_stderr_line("listening on mqtts://127.0.0.1:", WAIT);
    let rest = &line[line.find("127.0.0.1:").unwrap() + 10..];
    let port = rest[..rest.find(' ').unwrap()].to_owned();
    (serve, port)
}

/// mosquitto_pub/mosquitto_sub arguments for TLS with the files in `ca` and `client`.
fn tls_args(port: &str, ca: &str, client: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["-h", "127.0.0.1", "-p", port, "--cafile"].iter().map(|s| s.to_string()).collect();
    args.push(format!("{ca}/ca.crt"));
    if let Some(client) = client {
        args.extend([
            "--cert".to_owned(),
            format!("{client}/client.crt"),
            "--key".to_owned(),
            format!("{client}/client.key"),
        ]);
    }
    args
}

fn mosquitto(program: &str, base: &[String], rest: &[&str]) -> Process {
    let mut command = Command::new(program);
    command.args(base).args(rest);
    Process::spawn(program, command)
}

/// Publishes retained `payload` on `topic`; true if mosquitto_pub succeeded.
fn publish(base: &[String], topic: &str, payload: &str) -> (bool, String) {
    let mut p = mosquitto("mosquitto_pub", base, &["-t", topic, "-m", payload, "-r", "-q", "1"]);
    let ok = p.wait_exit(WAIT).success();
    (ok, p.transcript())
}

/// The first message on `topic` (retained ones included) read with mosquitto_sub.
fn receive_one(base: &[String], topic: &str) -> String {
    let mut sub = mosquitto("mosquitto_sub", base, &["-t", topic, "-C", "1"]);
    sub.wait_success(WAIT);
    sub.stdout().trim().to_owned()
}

#[test]
fn mosquitto_clients_connect_over_tls_with_midge_certs_output() {
    let dir = TempDir::new("tls-ok");
    let certs = certs(&dir, "certs", false);
    let (serve, port) = serve_tls(&dir, &certs, "require_certificate = true\nallow_anonymous = true", "");
    let line = serve.stderr();
    assert!(line.contains("over TLS, client certificate required"), "{line}");
    let base = tls_args(&port, &certs, Some(&certs));
    let (ok, transcript) = publish(&base, "tls/hello", "over tls");
    assert!(ok, "{transcript}\n{}", serve.transcript());
    assert_eq!(receive_one(&base, "tls/hello"), "over tls");
    // Exactly TLS 1.3 and exactly 1.2 both work (openssl s_client pins the version);
    // 1.1 is refused.
    for (flag, version, works) in
        [("-tls1_3", "TLSv1.3", true), ("-tls1_2", "TLSv1.2", true), ("-tls1_1", "TLSv1.1", false)]
    {
        let mut command = Command::new("openssl");
        command.args(["s_client", "-brief", flag, "-connect", &format!("127.0.0.1:{port}"), "-CAfile"]).args([
            format!("{certs}/ca.crt"),
            "-cert".to_owned(),
            format!("{certs}/client.crt"),
            "-key".to_owned(),
            format!("{certs}/client.key"),
        ]);
        let mut client = Process::spawn("openssl s_client", command);
        let status = client.wait_exit(WAIT);
        let negotiated = client.output().contains(&format!("Protocol version: {version}"));
        assert_eq!(status.success() && negotiated, works, "{version}: {}", client.transcript());
    }
}

#[test]
fn a_client_trusting_another_ca_or_without_a_certificate_is_refused() {
    let dir = TempDir::new("tls-bad");
    let certs = certs(&dir, "certs", false);
    let other = self::certs(&dir, "other", false);
    let (serve, port) = serve_tls(&dir, &certs, "require_certificate = true\nallow_anonymous = true", "");
    // The client does not trust the server's CA: it refuses the handshake.
    let (ok, transcript) = publish(&tls_args(&port, &other, Some(&certs)), "tls/x", "x");
    assert!(!ok, "a wrong CA must fail: {transcript}");
    // A client certificate from another CA: the broker refuses it.
    let (ok, transcript) = publish(&tls_args(&port, &certs, Some(&other)), "tls/x", "x");
    assert!(!ok, "a client certificate from another CA must fail: {transcript}");
    // No client certificate although one is required.
    let (ok, transcript) = publish(&tls_args(&port, &certs, None), "tls/x", "x");
    assert!(!ok, "a missing client certificate must fail: {transcript}");
    serve.wait_for_stderr_line("TLS handshake failed", WAIT);
}

#[test]
fn identity_as_username_combines_with_the_acl() {
    let dir = TempDir::new("tls-identity");
    let certs = certs(&dir, "certs", false);
    let acl = dir.join("acl");
    // `midge certs` gives the client certificate CN midge-client.
    std::fs::write(&acl, "user midge-client\ntopic readwrite devices/#\n").unwrap();
    let top = format!("acl_file = \"{}\"", acl.display());
    let (serve, port) = serve_tls(&dir, &certs, "require_certificate = true\nuse_identity_as_username = true", &top);
    assert!(serve.stderr().contains("user name from the client certificate"), "{}", serve.stderr());
    let base = tls_args(&port, &certs, Some(&certs));
    let (ok, transcript) = publish(&base, "devices/1", "allowed");
    assert!(ok, "{transcript}");
    assert_eq!(receive_one(&base, "devices/1"), "allowed");
    // Outside its ACL the same identity may not subscribe (SUBACK 0x80).
    let mut sub = mosquitto("mosquitto_sub", &base, &["-t", "other/#", "-C", "1"]);
    // mosquitto_sub reports the refusal (and exits 0 all the same).
    sub.wait_exit(WAIT);
    assert!(sub.output().contains("All subscription requests were denied"), "{}", sub.transcript());
}

#[test]
fn sighup_picks_up_new_certificates_without_dropping_connections() {
    let dir = TempDir::new("tls-reload");
    let old = certs(&dir, "certs", false);
    // Keep the old CA to connect with before the reload.
    let old_ca = dir.join("old-ca");
    std::fs::create_dir_all(&old_ca).unwrap();
    for file in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(format!("{old}/{file}"), old_ca.join(file)).unwrap();
    }
    let old_ca = old_ca.to_str().unwrap().to_owned();
    let (serve, port) = serve_tls(&dir, &old, "require_certificate = true\nallow_anonymous = true", "");
    // A subscriber connected with the old certificates stays connected.
    let sub =
        mosquitto("mosquitto_sub", &tls_args(&port, &old_ca, Some(&old_ca)), &["-t", "reload/t", "-C", "1", "-d"]);
    // New CA and certificates in the same files, then SIGHUP.
    certs(&dir, "certs", true);
    let status = Command::new("kill").args(["-HUP", &serve.pid().to_string()]).status().unwrap();
    assert!(status.success());
    serve.wait_for_stderr_line("reloaded TLS certificate", WAIT);
    // The old CA no longer verifies the server; the new one does.
    let (ok, _) = publish(&tls_args(&port, &old_ca, Some(&old_ca)), "reload/x", "x");
    assert!(!ok, "after the reload the server presents the new certificate");
    let (ok, transcript) = publish(&tls_args(&port, &old, Some(&old)), "reload/t", "after reload");
    assert!(ok, "{transcript}\n{}", serve.transcript());
    // The subscriber from before the reload gets it: its connection was kept.
    sub.wait_for_stdout_line("after reload", WAIT);
}

#[test]
fn config_file_mistakes_are_clear_errors() {
    let dir = TempDir::new("tls-conf");
    let conf = dir.join("bad.toml");
    for (text, message) in [
        ("max_inflite = 3", "unknown field `max_inflite`"),
        ("[[listener]]\nport = 1\ntls_cert = \"x\"", "needs both tls_cert and tls_key"),
        ("[[listener]]\nport = 1\nprotocol = \"websockets\"", "only \"mqtt\" is supported"),
        (
            "[[listener]]\nport = 0\ntls_cert = \"missing.crt\"\ntls_key = \"missing.key\"",
            "cannot read the certificate",
        ),
    ] {
        std::fs::write(&conf, text).unwrap();
        let mut serve = midge(&["serve", "--in-memory", "-c", conf.to_str().unwrap()]);
        assert_eq!(serve.wait_exit(WAIT).code(), Some(1), "{text}: {}", serve.transcript());
        assert!(serve.stderr().contains(message), "{text}: expected {message:?}: {}", serve.transcript());
    }
}

/// What `midge certs` prints works as printed: its `[[listener]]` snippet as the
/// config file (on an ephemeral port) and its mosquitto_pub line as the client.
#[test]
fn the_snippet_midge_certs_prints_works() {
    let dir = TempDir::new("tls-snippet");
    let out = dir.join("certs");
    let mut certs = midge(&["certs", "--out", out.to_str().unwrap()]);
    certs.wait_success(WAIT);
    let printed = certs.stdout();
    let start = printed.find("[[listener]]").expect("a [[listener]] snippet");
    let snippet: String = printed[start..].lines().take_while(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n");
    let conf = dir.join("midge.toml");
    std::fs::write(&conf, snippet.replace("port = 8883", "port = 0")).unwrap();
    let serve = midge(&["serve", "--in-memory", "-c", conf.to_str().unwrap()]);
    let line = serve.wait_for_stderr_line("listening on mqtts://0.0.0.0:", WAIT);
    let rest = &line[line.find("0.0.0.0:").unwrap() + 8..];
    let port = &rest[..rest.find(' ').unwrap()];
    let pub_line = printed.lines().find(|l| l.starts_with("mosquitto_pub ")).expect("a mosquitto_pub line");
    let args: Vec<String> =
        pub_line.split_whitespace().skip(1).map(|w| w.trim_matches('\'').replace("8883", port)).collect();
    let mut publish = Command::new("mosquitto_pub");
    publish.args(&args);
    Process::spawn("mosquitto_pub", publish).wait_success(WAIT);
}

/// Runs `tests/python/tls.py` (paho-mqtt over Python's ssl) against `port`.
fn paho(port: &str, scenario: &str, ca: &str, client: Option<&str>, protocol: &str) {
    require_paho();
    let ca = format!("{ca}/ca.crt");
    let mut args = vec!["127.0.0.1", port, scenario, "--ca", &ca, "--protocol", protocol];
    let files = client.map(|c| (format!("{c}/client.crt"), format!("{c}/client.key")));
    if let Some((cert, key)) = &files {
        args.extend(["--cert", cert, "--key", key]);
    }
    run_python("tls.py", &args, &format!("passed: {scenario}"));
}

/// Python paho (OpenSSL underneath) with `midge certs` output: 3.1.1 and 5 work with a
/// client certificate; a wrong CA, a client certificate from another CA, and none at
/// all are refused.
#[test]
fn paho_connects_over_tls_and_bad_certificates_are_refused() {
    let dir = TempDir::new("tls-paho");
    let certs = certs(&dir, "certs", false);
    let other = self::certs(&dir, "other", false);
    let (_serve, port) = serve_tls(&dir, &certs, "require_certificate = true\nallow_anonymous = true", "");
    paho(&port, "roundtrip", &certs, Some(&certs), "311");
    paho(&port, "roundtrip", &certs, Some(&certs), "5");
    paho(&port, "refused", &other, Some(&certs), "311");
    paho(&port, "refused", &certs, Some(&other), "311");
    paho(&port, "refused", &certs, None, "5");
}

/// Identity-as-username with an ACL through paho: the ACL's codes arrive over TLS
/// (SUBACK 0x80 for 3.1.1, 0x87 for 5).
#[test]
fn paho_identity_as_username_meets_the_acl() {
    let dir = TempDir::new("tls-paho-acl");
    let certs = certs(&dir, "certs", false);
    let acl = dir.join("acl");
    std::fs::write(&acl, "user midge-client\ntopic readwrite devices/#\n").unwrap();
    let top = format!("acl_file = \"{}\"", acl.display());
    let (_serve, port) = serve_tls(&dir, &certs, "require_certificate = true\nuse_identity_as_username = true", &top);
    paho(&port, "acl", &certs, Some(&certs), "311");
    paho(&port, "acl", &certs, Some(&certs), "5");
}

/// rumqttc with its own rustls setup (`TlsConfiguration::Simple`, PEM files as given):
/// connects with a client certificate and round-trips a QoS 1 message; a wrong CA and a
/// missing client certificate fail.
#[test]
fn rumqttc_connects_over_tls_and_bad_certificates_are_refused() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

    fn options(port: u16, ca: &str, client: Option<&str>) -> MqttOptions {
        let read = |path: String| std::fs::read(path).unwrap();
        let mut options = MqttOptions::new("rumqttc-tls", "localhost", port);
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: read(format!("{ca}/ca.crt")),
            alpn: None,
            client_auth: client.map(|c| (read(format!("{c}/client.crt")), read(format!("{c}/client.key")))),
        }));
        options
    }

    /// Runs the client until it has its message back (Ok) or its connection fails (Err).
    async fn roundtrip(options: MqttOptions) -> Result<(), String> {
        let (client, mut events) = AsyncClient::new(options, 8);
        client.subscribe("tls/rumqttc", QoS::AtLeastOnce).await.unwrap();
        client.publish("tls/rumqttc", QoS::AtLeastOnce, false, "over tls").await.unwrap();
        loop {
            match events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"over tls");
                    return Ok(());
                }
                Event::Incoming(Packet::ConnAck(c)) if c.code != rumqttc::ConnectReturnCode::Success => {
                    return Err(format!("{:?}", c.code));
                }
                _ => {}
            }
        }
    }

    let dir = TempDir::new("tls-rumqttc");
    let certs = certs(&dir, "certs", false);
    let other = self::certs(&dir, "other", false);
    let (serve, port) = serve_tls(&dir, &certs, "require_certificate = true\nallow_anonymous = true", "");
    let port: u16 = port.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let run = |options| tokio::time::timeout(WAIT, roundtrip(options));
        let ok = run(options(port, &certs, Some(&certs))).await.expect("timed out");
        assert_eq!(ok, Ok(()), "{}", serve.transcript());
        let wrong_ca = run(options(port, &other, Some(&certs))).await.expect("timed out");
        assert!(wrong_ca.as_ref().is_err_and(|e| e.contains("certificate")), "{wrong_ca:?}");
        let foreign_cert = run(options(port, &certs, Some(&other))).await.expect("timed out");
        assert!(foreign_cert.is_err(), "a client certificate from another CA must fail");
        let no_cert = run(options(port, &certs, None)).await.expect("timed out");
        assert!(no_cert.is_err(), "a missing client certificate must fail");
    });
}
