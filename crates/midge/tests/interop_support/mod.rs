//! Shared by the `interop_*` tests: the broker under test, and other programs (MQTT
//! command-line clients, Python and Node scripts) run as child processes whose output
//! a test waits on.
//!
//! Every wait is bounded and waits for the thing itself (a line of output, an exit),
//! never for a fixed time. A [`Program`] is killed when dropped, so a failing test
//! leaves no client behind.

// Each interop test file is its own crate and uses a different part of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use midge_test_support::Broker;

/// How long a test waits for an external client to do something that should happen.
/// Generous: starting Python or Node on a machine busy compiling can take seconds.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

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

/// Fails the test unless `path` exists.
pub(crate) fn require_file(path: &Path, installs: &str) {
    assert!(path.exists(), "{} is missing\nrun ./scripts/test, which installs {installs}", path.display());
}

/// A child process whose stdout and stderr are read into buffers by background
/// threads (so its pipes never fill), and that is killed when dropped.
pub(crate) struct Program {
    name: String,
    command_line: String,
    child: Option<Child>,
    output: Arc<Output>,
    /// Set once the process has been reaped.
    status: Option<ExitStatus>,
}

struct Output {
    state: Mutex<Captured>,
    changed: Condvar,
}

#[derive(Default)]
struct Captured {
    stdout: String,
    stderr: String,
    /// How many of the two pipes have reached end of stream.
    closed: u8,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Which of a program's output streams to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Program {
    /// Spawns `command` with stdin closed and stdout and stderr captured; `name` says
    /// in failure messages which program this is.
    pub(crate) fn spawn(name: &str, mut command: Command) -> Program {
        let command_line = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {name} ({command_line}): {err}"));
        let output = Arc::new(Output { state: Mutex::new(Captured::default()), changed: Condvar::new() });
        drain(child.stdout.take().expect("piped stdout"), Arc::clone(&output), Stream::Stdout);
        drain(child.stderr.take().expect("piped stderr"), Arc::clone(&output), Stream::Stderr);
        Program { name: name.to_owned(), command_line, child: Some(child), output, status: None }
    }

    /// Everything written to stdout so far.
    pub(crate) fn stdout(&self) -> String {
        self.output.lock().stdout.clone()
    }

    /// Everything written to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.output.lock().stderr.clone()
    }

    /// The complete lines written to stdout so far, without their line ends.
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        complete_lines(&self.output.lock().stdout)
    }

    /// What the program is and printed, for failure messages.
    pub(crate) fn transcript(&self) -> String {
        let captured = self.output.lock();
        let mut text = format!("{} ({})", self.name, self.command_line);
        if let Some(status) = self.status {
            let _ = write!(text, " exited with {status}");
        }
        let _ = write!(text, "\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---", captured.stdout, captured.stderr);
        text
    }

    /// Waits (at most `timeout`) until a complete line of `stream` contains `needle`,
    /// and returns that line.
    ///
    /// # Panics
    /// If no such line appears in time, or the stream ends without one; the message
    /// holds everything the program printed.
    pub(crate) fn wait_for_line(&self, stream: Stream, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut captured = self.output.lock();
        loop {
            let text = match stream {
                Stream::Stdout => &captured.stdout,
                Stream::Stderr => &captured.stderr,
            };
            if let Some(line) = complete_lines(text).into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            let now = Instant::now();
            if now >= deadline || captured.closed == 2 {
                let why =
                    if now >= deadline { format!("within {timeout:?}") } else { "before it closed its output".into() };
                drop(captured);
                panic!("{} printed no {stream:?} line containing {needle:?} {why}; {}", self.name, self.transcript());
            }
            captured = self.output.changed.wait_timeout(captured, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// [`Program::wait_for_line`] on stdout.
    pub(crate) fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(Stream::Stdout, needle, timeout)
    }

    /// [`Program::wait_for_line`] on stderr.
    pub(crate) fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(Stream::Stderr, needle, timeout)
    }

    /// Waits (at most `timeout`) for the program to exit and for its output to be
    /// read to the end; returns its exit status.
    ///
    /// # Panics
    /// If it is still running at the deadline (it is then killed).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        if let Some(status) = self.status {
            return status;
        }
        let child = self.child.as_mut().expect("a running program");
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                // std cannot wait for a child with a time limit: poll its status.
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    self.kill();
                    panic!("{} still running after {timeout:?}; it was killed; {}", self.name, self.transcript());
                }
                Err(err) => panic!("cannot wait for {}: {err}", self.name),
            }
        };
        self.child = None;
        self.status = Some(status);
        // The pipes close when the process exits, unless it left a child holding them.
        let mut captured = self.output.lock();
        while captured.closed < 2 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            captured = self.output.changed.wait_timeout(captured, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        status
    }

    /// Waits (at most `timeout`) for the program to exit successfully.
    ///
    /// # Panics
    /// If it does not exit in time or exits with a failure; the message holds its
    /// output.
    pub(crate) fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "{} failed; {}", self.name, self.transcript());
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; reaping it is what matters.
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The complete (newline-terminated) lines of `text`, without their line ends.
fn complete_lines(text: &str) -> Vec<String> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return Vec::new(),
    };
    complete.split('\n').map(|line| line.trim_end_matches('\r').to_owned()).collect()
}

/// Copies `pipe` into `output` on a background thread until end of stream.
fn drain(pipe: impl Read + Send + 'static, output: Arc<Output>, stream: Stream) {
    thread::Builder::new()
        .name(format!("drain-{stream:?}"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let mut captured = output.lock();
                        match stream {
                            Stream::Stdout => captured.stdout.push_str(&text),
                            Stream::Stderr => captured.stderr.push_str(&text),
                        }
                        drop(captured);
                        output.changed.notify_all();
                    }
                }
            }
            output.lock().closed += 1;
            output.changed.notify_all();
        })
        .expect("spawn an output drain thread");
}
