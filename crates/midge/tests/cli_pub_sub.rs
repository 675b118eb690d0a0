//! `midge pub` and `midge sub` end to end: the built binary against midge and
//! against Eclipse Mosquitto (`/usr/sbin/mosquitto`, with a WebSocket listener),
//! over TCP, TLS and WebSocket; flags, output formats, exit codes, and a
//! persistent subscriber that survives a broker restart.
//!
//! A subscriber runs with `-d`, whose `received SUBACK` line (on stderr) says
//! its subscriptions are in place: tests wait for that line, never sleep.

mod cli_pub_sub_support;

use cli_pub_sub_support::*;
use midge_test_support::TempDir;

#[test]
fn sub_prints_what_pub_sends_plain_and_verbose() {
    let broker = midge_broker(&[]);
    let plain = sub(broker.port(), &["-t", "hello", "-C", "1"]);
    let verbose = sub(broker.port(), &["-t", "hello", "-v", "-C", "1"]);

    publish(broker.port(), &["-t", "hello", "-m", "GDGNatal"]);

    assert_eq!(finished(plain), ["GDGNatal"]);
    assert_eq!(finished(verbose), ["hello GDGNatal"]);
}

/// The talk's two commands, with `-h` as the host, as MQTT.js and Mosquitto spell it.
#[test]
fn h_is_the_host_and_help_is_still_there() {
    let broker = midge_broker(&[]);
    let sub = sub_with_host("localhost", broker.port(), &["-t", "hello", "-v", "-C", "1"]);
    publish_with_host("localhost", broker.port(), &["-t", "hello", "-m", "GDGNatal"]);
    assert_eq!(finished(sub), ["hello GDGNatal"]);

    let mut help = midge(&["pub", "--help"]);
    help.wait_success(WAIT);
    assert!(help.stdout().contains("--will-topic"), "{}", help.transcript());
}

#[test]
fn qos_1_and_2_arrive_at_their_qos_with_several_topics_and_a_format() {
    let broker = midge_broker(&[]);
    let sub = sub(broker.port(), &["-t", "q/one", "-t", "q/two", "-q", "2", "-F", "%q %r %t %p %l", "-C", "2"]);

    let qos1 = publish(broker.port(), &["-d", "-t", "q/one", "-q", "1", "-m", "at least once"]);
    let qos2 = publish(broker.port(), &["-d", "-t", "q/two", "-q", "2", "-m", "exactly once"]);

    assert!(qos1.stderr().contains("received PUBACK"), "{}", qos1.transcript());
    assert!(qos2.stderr().contains("received PUBCOMP"), "{}", qos2.transcript());
    assert_eq!(finished(sub), ["1 0 q/one at least once 13", "2 0 q/two exactly once 12"]);
}

#[test]
fn mqtt_5_properties_set_with_d_reach_the_subscriber() {
    let broker = midge_broker(&[]);
    let sub = sub(broker.port(), &["-V", "5", "-t", "v5/#", "-q", "1", "-F", "%t|%p|%P|%C|%R|%D|%E|%F", "-C", "1"]);

    #[rustfmt::skip]
    publish(broker.port(), &[
        "-V", "mqttv5", "-t", "v5/props", "-q", "1", "-m", "{}",
        "-D", "publish", "user-property", "k", "v",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "response-topic", "v5/reply",
        "-D", "publish", "correlation-data", "abc",
        "-D", "publish", "message-expiry-interval", "3600",
        "-D", "publish", "payload-format-indicator", "1",
    ]);

    let line = finished(sub).join("\n");
    // The broker counts the expiry down from 3600 while the message waits.
    let (before, after) = line.rsplit_once('|').unwrap();
    assert_eq!(after, "1");
    assert!(before.starts_with("v5/props|{}|k:v|application/json|v5/reply|abc|"), "{line}");
}

#[test]
fn e_shows_the_response_topic_and_json_has_the_v5_properties() {
    let broker = midge_broker(&[]);
    let shown = sub(broker.port(), &["-V", "5", "-t", "rr/request", "-e", "-C", "1"]);
    let json = sub(broker.port(), &["-V", "5", "-t", "rr/request", "--json", "-C", "1"]);

    #[rustfmt::skip]
    publish(broker.port(), &[
        "-V", "5", "-t", "rr/request", "-m", "ping",
        "-D", "publish", "response-topic", "rr/response", "-D", "publish", "correlation-data", "42",
    ]);

    assert_eq!(finished(shown), ["rr/request ping (response topic rr/response, correlation 42)"]);
    let line = finished(json).join("\n");
    assert!(line.starts_with("{\"tst\":\""), "{line}");
    assert!(
        line.ends_with(
            "\"topic\":\"rr/request\",\"qos\":0,\"retain\":0,\"payloadlen\":4,\"response-topic\":\"rr/response\",\
             \"correlation-data\":\"42\",\"payload\":\"ping\"}"
        ),
        "{line}"
    );
}

#[test]
fn retained_messages_retained_only_and_no_stale() {
    let broker = midge_broker(&[]);
    publish(broker.port(), &["-t", "state/door", "-r", "-q", "1", "-m", "open"]);
    publish(broker.port(), &["-t", "state/lamp", "-r", "-m", "on"]);

    // --retained-only prints the retained messages and exits at the first live one.
    let retained = sub(broker.port(), &["-t", "state/#", "--retained-only", "-F", "%r %t %p"]);
    retained.wait_for_stdout_line("state/lamp", WAIT);
    publish(broker.port(), &["-t", "state/live", "-m", "now"]);
    let mut lines = finished(retained);
    lines.sort();
    assert_eq!(lines, ["1 state/door open", "1 state/lamp on"]);

    // -R skips the retained ones and prints the live one.
    let fresh = sub(broker.port(), &["-t", "state/#", "-R", "-v", "-C", "1"]);
    publish(broker.port(), &["-t", "state/live", "-m", "again"]);
    assert_eq!(finished(fresh), ["state/live again"]);
}

#[test]
fn stdin_lines_stdin_file_null_message_and_repeat() {
    let broker = midge_broker(&[]);
    let dir = TempDir::new("pub-sources");
    let file = dir.join("payload.txt");
    std::fs::write(&file, "from a file").unwrap();
    let sub = sub(broker.port(), &["-t", "src/#", "-F", "%t [%p]", "-C", "8", "-q", "1"]);
    let port = broker.port().to_string();
    let midge_bin = env!("CARGO_BIN_EXE_midge");

    shell(&format!("printf 'one\\n\\nthree\\n' | {midge_bin} pub -p {port} -t src/l -l -q 1"));
    shell(&format!("printf 'all\\nof it' | {midge_bin} pub -p {port} -t src/s -s"));
    publish(broker.port(), &["-t", "src/f", "-f", file.to_str().unwrap()]);
    publish(broker.port(), &["-t", "src/n", "-n"]);
    publish(broker.port(), &["-t", "src/r", "-m", "again", "--repeat", "2", "--repeat-delay", "0.01", "-q", "1"]);

    assert_eq!(
        finished(sub).join("\n"),
        "src/l [one]\nsrc/l []\nsrc/l [three]\nsrc/s [all\nof it]\nsrc/f [from a file]\nsrc/n []\nsrc/r [again]\nsrc/r [again]"
    );
}

#[test]
fn hex_no_eol_and_filtered_out_topics() {
    let broker = midge_broker(&[]);
    let hex = sub(broker.port(), &["-t", "h/#", "-T", "h/skip/#", "-x", "-N", "-C", "2"]);

    publish(broker.port(), &["-t", "h/skip/me", "-m", "no"]);
    publish(broker.port(), &["-t", "h/a", "-m", "AB"]);
    publish(broker.port(), &["-t", "h/b", "-m", "\n"]);

    let mut hex = hex;
    hex.wait_success(WAIT);
    assert_eq!(hex.stdout(), "41420a");
}

/// The will of a client that vanishes is published, with the flags of mosquitto_pub.
#[test]
fn a_killed_client_s_will_is_published() {
    let broker = midge_broker(&[]);
    let watcher = sub(broker.port(), &["-t", "wills/#", "-v", "-C", "1"]);
    let mut doomed =
        sub(broker.port(), &["-t", "x", "--will-topic", "wills/doomed", "--will-payload", "gone", "--will-qos", "1"]);

    doomed.kill();

    assert_eq!(finished(watcher), ["wills/doomed gone"]);
}

/// SIGTERM (as Ctrl-C) ends `midge sub` with DISCONNECT and exit code 0: no will.
#[test]
fn a_terminated_subscriber_disconnects_cleanly_and_its_will_is_not_published() {
    let broker = midge_broker(&[]);
    let mut polite =
        sub(broker.port(), &["-t", "x", "--will-topic", "wills/polite", "--will-payload", "gone", "--will-retain"]);

    assert_eq!(polite.terminate(WAIT).code(), Some(0), "{}", polite.transcript());
    assert!(polite.stderr().contains("sending DISCONNECT"), "{}", polite.transcript());
    // The will was retained had it been published: a late subscriber would get it at once.
    let port = broker.port().to_string();
    let mut late = midge(&["sub", "-h", "127.0.0.1", "-p", &port, "-t", "wills/#", "-W", "1"]);
    assert_eq!(late.wait_exit(WAIT).code(), Some(27), "{}", late.transcript());
    assert_eq!(late.stdout(), "");
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let broker = midge_broker(&[]);
    let port = broker.port();

    // Nothing listens: 3.
    let closed = free_port();
    let mut refused = midge(&["pub", "-h", "127.0.0.1", "-p", &closed.to_string(), "-t", "t", "-m", "m"]);
    assert_eq!(refused.wait_exit(WAIT).code(), Some(3), "{}", refused.transcript());
    assert!(refused.stderr().contains("Connection refused"), "{}", refused.transcript());

    // -W expires: 27, as mosquitto_sub.
    let mut waited = midge(&["sub", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "nothing", "-W", "0.2"]);
    assert_eq!(waited.wait_exit(WAIT).code(), Some(27), "{}", waited.transcript());
    assert!(waited.stderr().contains("timed out"), "{}", waited.transcript());

    // Usage errors: 2.
    for args in [
        vec!["pub", "-t", "t"],                                                  // nothing to send
        vec!["pub", "-t", "a/#", "-m", "m"],                                     // wildcard topic
        vec!["pub", "-t", "t", "-m", "m", "-D", "publish", "content-type", "x"], // -D without -V 5
        vec!["sub", "-t", "a/#/b"],                                              // bad filter
        vec!["sub", "-t", "t", "-c"],                                            // -c without -i
        vec!["sub", "-t", "t", "-F", "%z"],                                      // unknown format code
        vec!["pub", "-t", "t", "-m", "m", "-V", "6"],                            // bad version
    ] {
        let mut p = midge(&args);
        assert_eq!(p.wait_exit(WAIT).code(), Some(2), "{args:?}: {}", p.transcript());
    }
}

#[test]
fn a_persistent_subscriber_resumes_after_a_broker_restart_without_losing_a_qos_1_message() {
    let data = TempDir::new("restart");
    let mut first = serve_on(0, &data);
    let port = first.port();
    #[rustfmt::skip]
    let subscriber = sub(port, &[
        "-c", "-q", "1", "-i", "resume-me", "-t", "resume/#", "-v", "-C", "2", "-k", "5",
    ]);
    publish(port, &["-t", "resume/before", "-q", "1", "-m", "one"]);
    subscriber.wait_for_stdout_line("resume/before one", WAIT);

    first.stop();
    subscriber.wait_for_stderr_line("connection lost", WAIT);
    // Published while the subscriber is offline, to a broker that knows its session.
    let second = serve_on(port, &data);
    let mut offline = midge(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "resume/during",
        "-q",
        "1",
        "-m",
        "two",
        "-i",
        "restart-publisher",
    ]);
    offline.wait_success(WAIT);

    subscriber.wait_for_stderr_line("reconnected (session present: 1)", WAIT);
    assert_eq!(finished(subscriber), ["resume/before one", "resume/during two"]);
    drop(second);
}

#[test]
fn tls_with_a_ca_file_client_certificate_url_and_insecure() {
    let dir = TempDir::new("cli-tls");
    let certs = make_certs(&dir);
    // On all addresses, so that 127.0.0.2 reaches it under a name its certificate lacks.
    let (_serve, port) = serve_tls(&dir, &certs, "0.0.0.0");
    let ca = format!("{certs}/ca.crt");
    let cert = format!("{certs}/client.crt");
    let key = format!("{certs}/client.key");
    let tls = ["--cafile", ca.as_str(), "--cert", cert.as_str(), "--key", key.as_str()];

    let mut sub_args = vec!["-t", "tls/#", "-v", "-C", "2"];
    sub_args.extend(tls);
    let sub = sub(port, &sub_args);

    let mut pub_args = vec!["-t", "tls/flags", "-m", "over tls", "-q", "1"];
    pub_args.extend(tls);
    publish(port, &pub_args);
    let url = format!("mqtts://127.0.0.1:{port}/tls/url");
    let mut by_url = midge(&["pub", "-L", &url, "-m", "by url", "--cafile", &ca, "--cert", &cert, "--key", &key]);
    by_url.wait_success(WAIT);
    assert_eq!(finished(sub), ["tls/flags over tls", "tls/url by url"]);

    // 127.0.0.2 is not a name in the server certificate: refused, unless --insecure.
    let port_s = port.to_string();
    let base = ["pub", "-h", "127.0.0.2", "-p", port_s.as_str(), "-t", "tls/x", "-m", "x"];
    let mut strict = midge(&[&base[..], &tls[..]].concat());
    assert_eq!(strict.wait_exit(WAIT).code(), Some(3), "{}", strict.transcript());
    let mut insecure = midge(&[&base[..], &tls[..], &["--insecure"]].concat());
    insecure.wait_success(WAIT);
    // Trusting another CA: refused.
    let other = make_certs_named(&dir, "other");
    let other_ca = format!("{other}/ca.crt");
    let mut wrong_ca = midge(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &port_s,
        "-t",
        "t",
        "-m",
        "m",
        "--cafile",
        &other_ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert_eq!(wrong_ca.wait_exit(WAIT).code(), Some(3), "{}", wrong_ca.transcript());
}

#[test]
fn against_mosquitto_over_tcp_in_every_protocol_version_and_over_websocket() {
    let mosquitto = Mosquitto::start(false);
    let tcp = mosquitto.port;
    for version in ["31", "311", "5"] {
        let topic = format!("m/{version}");
        let sub = sub(tcp, &["-V", version, "-t", &topic, "-q", "2", "-F", "%q %t %p", "-C", "1"]);
        publish(tcp, &["-V", version, "-t", &topic, "-q", "2", "-m", "to mosquitto"]);
        assert_eq!(finished(sub), [format!("2 {topic} to mosquitto")]);
    }

    let ws_url = format!("ws://127.0.0.1:{}/mqtt", mosquitto.ws_port);
    let mut ws_sub = midge(&["sub", "-L", &ws_url, "-t", "ws/t", "-v", "-C", "1", "-d", "-V", "5"]);
    ws_sub.wait_for_stderr_line("received SUBACK", WAIT);
    let mut ws_pub = midge(&[
        "pub",
        "-L",
        &format!("ws://127.0.0.1:{}", mosquitto.ws_port),
        "-t",
        "ws/t",
        "-m",
        "over websocket",
        "-q",
        "1",
    ]);
    ws_pub.wait_success(WAIT);
    ws_sub.wait_success(WAIT);
    assert_eq!(ws_sub.stdout_lines(), ["ws/t over websocket"]);
}

#[test]
fn mosquitto_refusing_anonymous_clients_gives_not_authorized() {
    let mosquitto = Mosquitto::start(true);
    for version in ["311", "5"] {
        let mut p =
            midge(&["pub", "-h", "127.0.0.1", "-p", &mosquitto.port.to_string(), "-V", version, "-t", "t", "-m", "m"]);
        assert_eq!(p.wait_exit(WAIT).code(), Some(4), "{}", p.transcript());
        assert!(p.stderr().contains("not authorized"), "{}", p.transcript());
    }
}

/// A quiet subscriber sends PINGREQs, so a broker that enforces keep-alive keeps
/// it: three keep-alive periods of silence end with -W (27), not a lost
/// connection (the broker closes a silent client after 1.5 keep-alive periods).
#[test]
fn keep_alive_pings_keep_a_quiet_subscriber_connected() {
    let broker = midge_broker(&["--max-keep-alive", "1"]);
    let port = broker.port().to_string();
    let mut quiet = midge(&["sub", "-h", "127.0.0.1", "-p", &port, "-t", "never", "-k", "1", "-W", "3"]);
    assert_eq!(quiet.wait_exit(WAIT).code(), Some(27), "{}", quiet.transcript());
    assert!(!quiet.stderr().contains("connection lost"), "{}", quiet.transcript());
}

#[test]
fn logins_acl_refusals_and_wrong_passwords_have_their_exit_codes() {
    let dir = TempDir::new("cli-logins");
    let file = dir.join("passwords").to_str().unwrap().to_owned();
    midge(&["passwd", "-c", "-b", &file, "alice", "s3cret"]).wait_success(WAIT);
    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite login/#\n").unwrap();
    let broker = midge_broker(&["--password-file", &file, "--acl-file", acl.to_str().unwrap()]);
    let port = broker.port();

    let sub = sub(port, &["-u", "alice", "-P", "s3cret", "-t", "login/#", "-v", "-C", "1"]);
    let url = format!("mqtt://alice:s3cret@127.0.0.1:{port}/login/url");
    midge(&["pub", "-L", &url, "-m", "by url", "-V", "5"]).wait_success(WAIT);
    assert_eq!(finished(sub), ["login/url by url"]);

    for version in ["311", "5"] {
        let mut wrong = midge(&[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-u",
            "alice",
            "-P",
            "nope",
            "-t",
            "t",
            "-m",
            "m",
        ]);
        assert_eq!(wrong.wait_exit(WAIT).code(), Some(4), "{}", wrong.transcript());
    }
    let mut anonymous = midge(&["sub", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "t", "--quiet"]);
    assert_eq!(anonymous.wait_exit(WAIT).code(), Some(4), "{}", anonymous.transcript());
    assert_eq!(anonymous.stderr(), "", "--quiet prints nothing");

    // Outside alice's ACL: an MQTT 5 publish is refused in PUBACK, a subscription in SUBACK: 7.
    let login = ["-h", "127.0.0.1", "-u", "alice", "-P", "s3cret"];
    let port = port.to_string();
    let mut refused =
        midge(&[&["pub", "-p", &port], &login[..], &["-V", "5", "-q", "1", "-t", "secret", "-m", "m"]].concat());
    assert_eq!(refused.wait_exit(WAIT).code(), Some(7), "{}", refused.transcript());
    assert!(refused.stderr().contains("not authorized"), "{}", refused.transcript());
    let mut refused = midge(&[&["sub", "-p", &port], &login[..], &["-t", "secret/#"]].concat());
    assert_eq!(refused.wait_exit(WAIT).code(), Some(7), "{}", refused.transcript());
}

/// -E makes a persistent session and exits; messages for it are queued; -U
/// unsubscribes. -I builds the client id from a prefix.
#[test]
fn exit_after_subscribe_unsubscribe_and_id_prefix() {
    let broker = midge_broker(&[]);
    let port = broker.port();
    let mut create = midge(&[
        "sub",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        "-i",
        "later",
        "-q",
        "1",
        "-t",
        "queued/a",
        "-t",
        "queued/b",
        "-E",
    ]);
    create.wait_success(WAIT);
    publish(port, &["-t", "queued/a", "-q", "1", "-m", "kept for later"]);

    // Back with the same id: the queued message arrives; -U drops queued/b.
    let back = sub(port, &["-c", "-i", "later", "-q", "1", "-t", "queued/a", "-U", "queued/b", "-v", "-C", "1"]);
    assert_eq!(finished(back), ["queued/a kept for later"]);

    let prefixed = sub(port, &["-I", "pre-", "-t", "x", "-C", "1"]);
    let pid = prefixed.pid();
    assert!(prefixed.stderr().contains(&format!("Client pre-{pid} sending CONNECT")), "{}", prefixed.transcript());
}

#[test]
fn wss_and_capath_against_mosquitto() {
    let dir = TempDir::new("cli-wss");
    let certs = make_certs(&dir);
    let mosquitto = Mosquitto::start_wss(&certs, &dir);
    let url = format!("wss://localhost:{}/mqtt", mosquitto.ws_port);

    let mut sub = midge(&["sub", "-d", "-L", &url, "--capath", &certs, "-t", "wss/t", "-v", "-C", "1"]);
    sub.wait_for_stderr_line("received SUBACK", WAIT);
    let ca = format!("{certs}/ca.crt");
    midge(&["pub", "-L", &url, "--cafile", &ca, "-t", "wss/t", "-m", "over wss", "-q", "2"]).wait_success(WAIT);
    sub.wait_success(WAIT);
    assert_eq!(sub.stdout_lines(), ["wss/t over wss"]);
}
