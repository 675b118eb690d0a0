//! `midge passwd` as a user meets it: mosquitto_passwd's flags, the file it
//! writes, its errors, and a file it wrote read by Mosquitto itself.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use midge_test_support::{Broker, Process, TempDir};

const WAIT: Duration = Duration::from_secs(30);

fn midge(args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(args).env("NO_COLOR", "1");
    Process::spawn(&format!("midge {}", args.join(" ")), command)
}

fn ok(args: &[&str]) {
    midge(args).wait_success(WAIT);
}

/// Runs and expects exit status 1 with `message` on stderr.
fn fails(args: &[&str], message: &str) {
    let mut p = midge(args);
    assert_eq!(p.wait_exit(WAIT).code(), Some(1), "{}", p.transcript());
    assert!(p.stderr().contains(message), "expected {message:?}: {}", p.transcript());
}

fn users(file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_once(':').unwrap().0.to_owned()).collect()
}

#[test]
fn create_add_update_and_delete_users() {
    let dir = TempDir::new("passwd-cadd");
    let file = dir.join("passwords");
    let f = file.to_str().unwrap();
    ok(&["passwd", "-c", "-b", f, "alice", "one"]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the file is readable by its owner only");
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(first.starts_with("alice:$argon2id$v=19$m=47104,t=1,p=1$"), "argon2id by default: {first}");
    ok(&["passwd", "-b", "-H", "scram-sha-256", f, "bob", "two"]);
    ok(&["passwd", "-b", "-H", "sha512-pbkdf2", "-I", "1000", f, "carol", "three"]);
    assert_eq!(users(&file), ["alice", "bob", "carol"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("bob:SCRAM-SHA-256$4096:"), "{text}");
    assert!(text.contains("carol:$7$1000$"), "{text}");
    // Updating replaces the line in place; salts are fresh each time.
    ok(&["passwd", "-b", f, "alice", "one"]);
    let updated = std::fs::read_to_string(&file).unwrap();
    assert_eq!(users(&file), ["alice", "bob", "carol"]);
    assert_ne!(updated.lines().next(), first.lines().next());
    ok(&["passwd", "-D", f, "bob"]);
    assert_eq!(users(&file), ["alice", "carol"]);
    fails(&["passwd", "-D", f, "bob"], "user bob not found");
    // -c starts over.
    ok(&["passwd", "-c", "-b", f, "dave", "four"]);
    assert_eq!(users(&file), ["dave"]);
}

#[test]
fn update_hashes_plain_text_lines_only() {
    let dir = TempDir::new("passwd-u");
    let file = dir.join("passwords");
    let f = file.to_str().unwrap();
    ok(&["passwd", "-c", "-b", f, "hashed", "x"]);
    let hashed_line = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("# users\n{hashed_line}plain:secret\n")).unwrap();
    ok(&["passwd", "-U", f]);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "# users");
    assert_eq!(format!("{}\n", lines[1]), hashed_line, "an already hashed line is left alone");
    assert!(lines[2].starts_with("plain:$argon2id$"), "{text}");
    // And the result serves: the broker loads it.
    let broker = Broker::start(env!("CARGO_BIN_EXE_midge"), &["--password-file", f]);
    assert!(broker.log().contains("2 users"), "{}", broker.log());
}

#[test]
fn a_password_from_a_pipe_is_asked_twice() {
    let dir = TempDir::new("passwd-pipe");
    let file = dir.join("passwords");
    for (input, good) in [("s3cret\ns3cret\n", true), ("s3cret\nother\n", false)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_midge"))
            .args(["passwd", "-c", file.to_str().unwrap(), "eve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), good, "{stderr}");
        if !good {
            assert!(stderr.contains("passwords do not match"), "{stderr}");
        }
    }
}

#[test]
fn mistakes_are_clear_errors() {
    let dir = TempDir::new("passwd-err");
    let f = dir.join("passwords");
    let f = f.to_str().unwrap();
    fails(&["passwd", f, "alice"], "cannot read");
    fails(&["passwd", "-c", f, "alice", "pw"], "a password on the command line needs -b");
    fails(&["passwd", "-c", "-b", f, "al:ice", "pw"], "invalid user name");
    fails(&["passwd", "-c", "-b", f, "alice"], "-b needs a password");
    // Usage errors are clap's: exit status 2.
    let mut p = midge(&["passwd", "-c", "-D", f, "alice"]);
    assert_eq!(p.wait_exit(WAIT).code(), Some(2), "{}", p.transcript());
}

/// A broker refuses to start on a password file it cannot use, naming the line.
#[test]
fn serve_names_a_bad_password_file_line() {
    let dir = TempDir::new("passwd-bad");
    let file = dir.join("passwords");
    std::fs::write(&file, "alice:plaintext\n").unwrap();
    let mut serve = midge(&["serve", "--in-memory", "--port", "0", "--password-file", file.to_str().unwrap()]);
    assert_eq!(serve.wait_exit(WAIT).code(), Some(1), "{}", serve.transcript());
    assert!(serve.stderr().contains("password file line 1: the password is not hashed"), "{}", serve.transcript());
}

/// Mosquitto 2.0 reads a `-H sha512-pbkdf2` file that midge wrote.
#[test]
fn mosquitto_reads_a_sha512_pbkdf2_file_midge_wrote() {
    let mosquitto = std::path::Path::new("/usr/sbin/mosquitto");
    assert!(mosquitto.exists(), "mosquitto is missing; run ./scripts/test, which installs it");
    let dir = TempDir::new("passwd-mosquitto");
    let file = dir.join("passwords");
    ok(&["passwd", "-c", "-b", "-H", "sha512-pbkdf2", file.to_str().unwrap(), "alice", "secret"]);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        // `user`: as root Mosquitto would switch to the mosquitto user, who
        // cannot read a file only its owner may read.
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nlog_dest stderr\nuser {}\n",
            file.display(),
            std::env::var("USER").unwrap_or_else(|_| "root".into())
        ),
    )
    .unwrap();
    let mut command = Command::new(mosquitto);
    command.args(["-c", conf.to_str().unwrap()]);
    let server = Process::spawn("mosquitto", command);
    server.wait_for_stderr_line("running", WAIT);
    let publish = |password: &str| {
        let mut command = Command::new("mosquitto_pub");
        command.args(["-h", "127.0.0.1", "-p", &port, "-u", "alice", "-P", password, "-t", "t", "-m", "x"]);
        let mut p = Process::spawn("mosquitto_pub", command);
        p.wait_exit(WAIT).success()
    };
    assert!(publish("secret"), "Mosquitto accepts the password: {}", server.transcript());
    assert!(!publish("wrong"), "and refuses a wrong one");
}
