//! Shared by the `interop_*` tests: the broker under test, and checks that the other
//! programs they run (MQTT command-line clients, Python and Node scripts) are
//! installed. Those programs run as [`midge_test_support::Process`]es: every wait on
//! them is bounded and waits for the thing itself (a line of output, an exit), never
//! for a fixed time, and each is killed when dropped, so a failing test leaves no
//! client behind.

// Each interop test file is its own crate and uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use midge_test_support::{Broker, Process};

/// How long a test waits for an external client to do something that should happen.
/// Generous: starting Python or Node on a machine busy compiling can take seconds.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Fails the test unless python3 can import paho-mqtt 2.x.
pub(crate) fn require_paho() {
    require_success(
        "python3",
        &[
            "-c",
            "import sys, paho.mqtt; sys.exit(0 if paho.mqtt.__version__.startswith('2.') else 'paho-mqtt 2.x needed')",
        ],
        "paho-mqtt>=2,<3 (with pip)",
    );
}

/// Starts `midge serve --bind 127.0.0.1 --port 0 ARGS…` (the binary Cargo built for
/// these tests) and waits for its listener.
pub(crate) fn start_broker(args: &[&str]) -> TestBroker {
    TestBroker(Broker::start(env!("CARGO_BIN_EXE_midge"), args))
}

/// The broker under test; if the test fails, its log is printed (the test harness
/// shows it with the failure), and the process is killed either way.
pub(crate) struct TestBroker(Broker);

impl std::ops::Deref for TestBroker {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        &self.0
    }
}

impl std::ops::DerefMut for TestBroker {
    fn deref_mut(&mut self) -> &mut Broker {
        &mut self.0
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- midge log ---\n{}--- end of midge log ---", self.0.log());
        }
    }
}

/// The directory of this crate's tests (`crates/midge/tests`).
pub(crate) fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Fails the test unless `program ARGS…` can be started and exits successfully: an
/// external client that is missing must fail the test, never skip it.
pub(crate) fn require_success(program: &str, args: &[&str], installs: &str) {
    let status =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output();
    match status {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`{program} {}` failed ({}): {}\nrun ./scripts/test, which installs {installs}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(err) => panic!("cannot run {program}: {err}\nrun ./scripts/test, which installs {installs}"),
    }
}

/// Runs `python3 -u tests/python/SCRIPT ARGS…` to the end and fails the test unless
/// it exits 0 and prints the line `passed` (each script says so only after its last
/// check). Unbuffered, so a script stopped at the time limit has shown its progress.
pub(crate) fn run_python(script: &str, args: &[&str], passed: &str) -> Process {
    let mut command = Command::new("python3");
    command.arg("-u").arg(tests_dir().join("python").join(script)).args(args).env("PYTHONDONTWRITEBYTECODE", "1");
    let mut process = Process::spawn(&format!("{script} {}", args.join(" ")), command);
    process.wait_success(WAIT);
    assert!(process.stdout().contains(passed), "the script did not report {passed:?}; {}", process.transcript());
    process
}

/// Fails the test unless `path` exists.
pub(crate) fn require_file(path: &Path, installs: &str) {
    assert!(path.exists(), "{} is missing\nrun ./scripts/test, which installs {installs}", path.display());
}
