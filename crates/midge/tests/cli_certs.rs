//! `midge certs` as a user meets it: the files it writes, what it prints, and
//! the certificates checked by an independent implementation, openssl: its
//! `verify` and `x509` commands, and a real TLS handshake between
//! `openssl s_server` and `openssl s_client` using nothing but those files.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use midge_test_support::{Process, TempDir};

const WAIT: Duration = Duration::from_secs(60);

const FILES: [&str; 6] = ["ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt"];

fn midge(args: &[&str]) -> Process {
    midge_in(None, args)
}

fn midge_in(cwd: Option<&Path>, args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(args).env("NO_COLOR", "1");
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    Process::spawn(&format!("midge {}", args.join(" ")), command)
}

/// Runs `midge certs --out DIR EXTRA…`, which must succeed; returns what it printed.
fn certs(out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["certs", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut p = midge(&args);
    p.wait_success(WAIT);
    p.stdout()
}

/// The openssl program. The tests need it: without it they fail, saying so.
fn openssl_command() -> Command {
    let found = Command::new("openssl").arg("version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "these tests check midge's certificates with openssl, which is not installed or does not run ({:?}); \
         install it (apt-get install openssl; ./scripts/test does)",
        found.err()
    );
    Command::new("openssl")
}

/// Runs `openssl ARGS…` to the end; returns its exit status and the process, for its output.
fn openssl(args: &[&str]) -> (ExitStatus, Process) {
    let mut command = openssl_command();
    command.args(args);
    let mut p = Process::spawn(&format!("openssl {}", args.join(" ")), command);
    let status = p.wait_exit(WAIT);
    (status, p)
}

/// Runs `openssl ARGS…`, which must succeed; returns its stdout.
fn openssl_ok(args: &[&str]) -> String {
    let (status, p) = openssl(args);
    assert!(status.success(), "{}", p.transcript());
    p.stdout()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn writes_the_files_and_prints_how_to_use_them() {
    let dir = TempDir::new("certs-files");
    // Without --out: ./certs, created.
    let mut p = midge_in(Some(dir.path()), &["certs"]);
    p.wait_success(WAIT);
    let out = std::fs::canonicalize(dir.join("certs")).unwrap();
    for name in FILES {
        let file = out.join(name);
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        if name.ends_with(".key") {
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8 PEM in {name}: {text}");
            assert_eq!(mode, 0o600, "{name} is readable by its owner only: {mode:o}");
        } else {
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"), "PEM certificate in {name}: {text}");
            assert_eq!(mode & 0o077, mode & 0o044, "{name} is writable by its owner only: {mode:o}");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), FILES.len(), "nothing else in the directory: {leftovers:?}");

    let d = out.display();
    let printed = p.stdout();
    let lines: Vec<&str> = printed.lines().collect();
    let tls = format!("--cafile {d}/ca.crt --cert {d}/client.crt --key {d}/client.key");
    for expected in [
        format!("mosquitto_pub -h localhost -p 8883 {tls} -t hello -m hi"),
        format!("mosquitto_sub -h localhost -p 8883 {tls} -t hello -v"),
        "[[listener]]".to_owned(),
        "port = 8883".to_owned(),
        format!("tls_cert = \"{d}/server.crt\""),
        format!("tls_key = \"{d}/server.key\""),
        format!("tls_ca = \"{d}/ca.crt\""),
        "require_certificate = true".to_owned(),
    ] {
        assert!(lines.contains(&expected.as_str()), "a line {expected:?} in:\n{printed}");
    }
    assert!(printed.contains("midge-client"), "the default client CN is shown:\n{printed}");
    assert_eq!(p.stderr(), "", "{}", p.transcript());
}

#[test]
fn openssl_verifies_the_chain_the_names_and_the_usages() {
    let dir = TempDir::new("certs-verify");
    let out = dir.join("tls");
    certs(&out, &["--host", "mqtt.example.test", "--host", "192.0.2.7", "--client-cn", "alice", "--days", "30"]);
    let f = |name: &str| out.join(name).to_str().unwrap().to_owned();
    let (ca, server, client) = (f("ca.crt"), f("server.crt"), f("client.crt"));

    let verified = openssl_ok(&["verify", "-CAfile", &ca, "-purpose", "sslserver", &server]);
    assert!(verified.contains(": OK"), "{verified}");
    let verified = openssl_ok(&["verify", "-CAfile", &ca, "-purpose", "sslclient", &client]);
    assert!(verified.contains(": OK"), "{verified}");
    // Each for its own purpose only.
    let (status, p) = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslserver", &client]);
    assert!(!status.success(), "a client certificate is no server certificate: {}", p.transcript());

    let ca_ext = openssl_ok(&[
        "x509",
        "-in",
        &ca,
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-ext",
        "basicConstraints,keyUsage",
    ]);
    assert!(ca_ext.contains("subject=CN=midge CA"), "{ca_ext}");
    assert!(ca_ext.contains("CA:TRUE"), "{ca_ext}");
    assert!(ca_ext.contains("Certificate Sign, CRL Sign"), "{ca_ext}");

    let sans = openssl_ok(&["x509", "-in", &server, "-noout", "-ext", "subjectAltName"]);
    for name in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:mqtt.example.test",
        "IP Address:192.0.2.7",
    ] {
        assert!(sans.contains(name), "{name} in:\n{sans}");
    }
    let eku = openssl_ok(&["x509", "-in", &server, "-noout", "-ext", "extendedKeyUsage"]);
    assert!(eku.contains("TLS Web Server Authentication") && !eku.contains("Client"), "{eku}");
    let eku = openssl_ok(&["x509", "-in", &client, "-noout", "-ext", "extendedKeyUsage"]);
    assert!(eku.contains("TLS Web Client Authentication") && !eku.contains("Server"), "{eku}");

    let subject = openssl_ok(&["x509", "-in", &server, "-noout", "-subject", "-nameopt", "RFC2253"]);
    assert_eq!(subject.trim(), "subject=CN=mqtt.example.test", "the server's CN is the first --host");
    let subject = openssl_ok(&["x509", "-in", &client, "-noout", "-subject", "-nameopt", "RFC2253"]);
    assert_eq!(subject.trim(), "subject=CN=alice", "the client's CN is --client-cn");

    // ECDSA P-256 keys.
    let text = openssl_ok(&["x509", "-in", &server, "-noout", "-text"]);
    assert!(text.contains("id-ecPublicKey") && text.contains("prime256v1"), "{text}");
    let key = openssl_ok(&["pkey", "-in", &f("client.key"), "-noout", "-text"]);
    assert!(key.contains("prime256v1"), "{key}");

    // --days 30, from yesterday: still valid in 28 days, no longer in 30; the CA lasts ten years.
    let day = 24 * 60 * 60;
    for cert in [&server, &client] {
        openssl_ok(&["x509", "-in", cert, "-noout", "-checkend", &(28 * day).to_string()]);
        let (status, p) = openssl(&["x509", "-in", cert, "-noout", "-checkend", &(30 * day).to_string()]);
        assert!(!status.success(), "expired 30 days from yesterday: {}", p.transcript());
    }
    openssl_ok(&["x509", "-in", &ca, "-noout", "-checkend", &(3640 * day).to_string()]);
    // Valid since yesterday: a client whose clock is a little behind accepts it.
    let (status, p) = openssl(&["verify", "-CAfile", &ca, "-attime", &(now_secs() - 12 * 3600).to_string(), &server]);
    assert!(status.success(), "valid 12 hours ago: {}", p.transcript());
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// `openssl s_server` requiring a client certificate signed by the CA of `dir`,
/// listening on 127.0.0.1; returns it with its port.
fn tls_server(dir: &Path) -> (Process, u16) {
    let f = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    // The port is free when picked but may be taken before s_server binds it: retry.
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = openssl_command();
        command.args(["s_server", "-accept", &format!("127.0.0.1:{port}")]);
        command.args(["-cert", &f("server.crt"), "-key", &f("server.key"), "-CAfile", &f("ca.crt")]);
        command.args(["-Verify", "1", "-www"]);
        let server = Process::spawn("openssl s_server", command);
        let ready = server.wait_until(WAIT, |captured| {
            if captured.stdout().contains("ACCEPT") {
                Some(true)
            } else if captured.all_closed() {
                Some(false)
            } else {
                None
            }
        });
        match ready {
            Some(true) => return (server, port),
            Some(false) => continue,
            None => panic!("openssl s_server did not start within {WAIT:?}; {}", server.transcript()),
        }
    }
    panic!("openssl s_server could not listen on a free port in 5 tries");
}

/// `openssl s_client` to 127.0.0.1:`port` with stdin closed, trusting `ca` and
/// presenting the client certificate of `client_dir`.
fn tls_client(port: u16, ca: &Path, client_dir: &Path) -> (ExitStatus, Process) {
    let cert = client_dir.join("client.crt");
    let key = client_dir.join("client.key");
    openssl(&[
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-CAfile",
        path_str(ca),
        "-cert",
        path_str(&cert),
        "-key",
        path_str(&key),
        "-verify_return_error",
    ])
}

#[test]
fn a_tls_handshake_with_the_files_succeeds_and_another_ca_is_refused() {
    let dir = TempDir::new("certs-tls");
    let (ours, theirs): (PathBuf, PathBuf) = (dir.join("certs"), dir.join("other"));
    certs(&ours, &["--client-cn", "tls-client"]);
    certs(&theirs, &["--client-cn", "stranger"]);
    let (server, port) = tls_server(&ours);

    let (status, client) = tls_client(port, &ours.join("ca.crt"), &ours);
    let printed = client.stdout();
    assert!(status.success(), "{}\n{}", client.transcript(), server.transcript());
    assert!(printed.contains("Verify return code: 0 (ok)"), "{}", client.transcript());
    assert!(printed.contains("CN = midge CA"), "the chain ends at our CA: {}", client.transcript());
    // The server checked the client certificate and accepted it.
    let accepted = server.wait_until(WAIT, |captured| {
        let output = captured.output();
        (output.contains("CN = tls-client") && output.contains("verify return:1")).then_some(())
    });
    assert!(accepted.is_some(), "s_server verified the client certificate: {}", server.transcript());

    // The client does not trust a server certificate from another CA.
    let (status, client) = tls_client(port, &theirs.join("ca.crt"), &ours);
    assert!(!status.success(), "refused with another CA: {}", client.transcript());
    assert!(!client.stdout().contains("Verify return code: 0 (ok)"), "{}", client.transcript());
    assert!(client.output().contains("verify error"), "{}", client.transcript());

    // Nor does the server trust a client certificate from another CA.
    let (_, client) = tls_client(port, &ours.join("ca.crt"), &theirs);
    let refused = server.wait_until(WAIT, |captured| {
        let output = captured.output();
        output.find("CN = stranger").is_some_and(|at| output[at..].contains("verify error")).then_some(())
    });
    assert!(
        refused.is_some(),
        "s_server refused the other CA's client: {}\n{}",
        server.transcript(),
        client.transcript()
    );
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = TempDir::new("certs-force");
    let out = dir.join("certs");
    let o = path_str(&out);
    certs(&out, &[]);
    let before = std::fs::read_to_string(out.join("ca.key")).unwrap();

    let mut p = midge(&["certs", "--out", o]);
    assert_eq!(p.wait_exit(WAIT).code(), Some(1), "{}", p.transcript());
    assert!(p.stderr().contains(&format!("{o}/ca.key already exists")), "{}", p.transcript());
    assert!(p.stderr().contains("--force"), "{}", p.transcript());
    assert_eq!(std::fs::read_to_string(out.join("ca.key")).unwrap(), before, "left alone");

    // Any one file of the set is enough to refuse, and the message names it.
    for name in FILES.iter().filter(|n| **n != "server.crt") {
        std::fs::remove_file(out.join(name)).unwrap();
    }
    let mut p = midge(&["certs", "--out", o]);
    assert_eq!(p.wait_exit(WAIT).code(), Some(1), "{}", p.transcript());
    assert!(p.stderr().contains("server.crt already exists"), "{}", p.transcript());
    assert!(!out.join("ca.key").exists(), "nothing written when refusing");

    certs(&out, &["--force"]);
    let after = std::fs::read_to_string(out.join("ca.key")).unwrap();
    assert_ne!(after, before, "a new CA key");
    let mode = std::fs::metadata(out.join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let verified = openssl_ok(&["verify", "-CAfile", path_str(&out.join("ca.crt")), path_str(&out.join("server.crt"))]);
    assert!(verified.contains(": OK"), "the new set belongs together: {verified}");
}

#[test]
fn bad_arguments_are_refused() {
    let dir = TempDir::new("certs-bad");
    let out = dir.join("certs");
    let o = path_str(&out);
    for (args, message) in [
        (vec!["--host", "not a name"], "invalid --host"),
        (vec!["--client-cn", ""], "invalid --client-cn"),
        (vec!["--days", "0"], "--days"),
    ] {
        let mut all = vec!["certs", "--out", o];
        all.extend(args);
        let mut p = midge(&all);
        let status = p.wait_exit(WAIT);
        assert!(!status.success(), "{}", p.transcript());
        assert!(p.stderr().contains(message), "{message:?}: {}", p.transcript());
    }
    assert!(!out.exists(), "nothing written");
}

#[test]
fn help_describes_the_flags() {
    let mut p = midge(&["certs", "--help"]);
    p.wait_success(WAIT);
    let help = p.stdout();
    for flag in ["--out", "--host", "--client-cn", "--days", "--force", "./certs", "825"] {
        assert!(help.contains(flag), "{flag} in:\n{help}");
    }
    let mut p = midge(&["--help"]);
    p.wait_success(WAIT);
    assert!(p.stdout().contains("certs"), "{}", p.transcript());
}
