//! The broker under test as a child process.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// What the broker prints once its MQTT listener is bound.
const LISTENING: &str = "listening on mqtt://";

/// How long the broker may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the broker may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `midge serve` child process bound to an ephemeral port on 127.0.0.1.
///
/// Its stdout and stderr are drained by background threads into one shared log, so
/// the pipes never fill and block the broker; [`Broker::log`] reads it and
/// [`Broker::wait_for_log`] waits for a line. Dropping a `Broker` kills the process.
pub struct Broker {
    /// `None` once the process has been reaped by `kill` or `stop`.
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    log: Arc<Log>,
}

/// The captured output, shared with the drain threads: they append under the mutex
/// and notify the condvar; waiters re-check their condition on each notification.
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

struct LogState {
    text: String,
    /// How many of the two pipes have reached end of stream.
    closed_pipes: u8,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panicking waiter must not make the log unreadable for the others.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `done` holds for the state or `deadline` passes; returns the last
    /// value `done` produced.
    fn wait_until<T>(&self, deadline: Instant, mut done: impl FnMut(&LogState) -> Option<T>) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(found) = done(&state) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }
}

impl Broker {
    /// Runs `bin serve --bind 127.0.0.1 --port 0 ARGS…` and waits (at most 30 s) for
    /// its `listening on mqtt://IP:PORT` line.
    ///
    /// # Panics
    /// If the process cannot be spawned, exits, or does not report a listener in
    /// time; the message includes everything it logged.
    pub fn start(bin: &str, args: &[&str]) -> Broker {
        let mut child = Command::new(bin)
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .args(args)
            // Plain text, whatever the terminal: the log is searched for strings.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {bin}: {err}"));
        let pid = child.id();
        let log = Arc::new(Log {
            state: Mutex::new(LogState { text: String::new(), closed_pipes: 0 }),
            changed: Condvar::new(),
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        drain(stdout, Arc::clone(&log), format!("midge-{pid}-stdout"));
        drain(stderr, Arc::clone(&log), format!("midge-{pid}-stderr"));

        let deadline = Instant::now() + START_TIMEOUT;
        let found = log.wait_until(deadline, |state| {
            if let Some(addr) = listening_addr(&state.text) {
                Some(Ok(addr))
            } else if state.closed_pipes == 2 {
                Some(Err("it closed its output"))
            } else {
                None
            }
        });
        let mut broker = Broker { child: Some(child), pid, addr: SocketAddr::from(([0, 0, 0, 0], 0)), log };
        match found {
            Some(Ok(addr)) => {
                broker.addr = addr;
                broker
            }
            Some(Err(why)) => {
                let status = broker.reap_within(Duration::from_secs(2));
                panic!(
                    "{bin} (pid {pid}) did not report `{LISTENING}`: {why}, exit status {status:?}; its log:\n{}",
                    broker.log()
                );
            }
            None => {
                broker.kill();
                panic!(
                    "{bin} (pid {pid}) did not report `{LISTENING}` within {START_TIMEOUT:?}; its log:\n{}",
                    broker.log()
                );
            }
        }
    }

    /// The address of the MQTT listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of the MQTT listener.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the broker has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().text.clone()
    }

    /// Waits (at most `timeout`) until the log contains `needle`; returns whether it did.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.log.wait_until(deadline, |state| state.text.contains(needle).then_some(())).is_some()
    }

    /// Kills the process with SIGKILL and reaps it, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; reaping is what matters.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit (at most 10 s); returns its
    /// exit status.
    ///
    /// # Panics
    /// If it is still running after 10 s (it is then killed), or was already reaped.
    pub fn stop(&mut self) -> ExitStatus {
        assert!(self.child.is_some(), "the broker was already stopped or killed");
        // std has no way to send SIGTERM without `unsafe`; the `kill` utility does.
        // If it fails, the process has exited already; reaping it tells how it ended.
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).stderr(Stdio::null()).status();
        match self.reap_within(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "midge (pid {}) still running {STOP_TIMEOUT:?} after SIGTERM; its log:\n{}",
                    self.pid,
                    self.log()
                );
            }
        }
    }

    /// Waits for the process to exit by itself, polling its status; `None` if it is
    /// still running at the deadline.
    fn reap_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(err) => panic!("cannot wait for midge (pid {}): {err}", self.pid),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("pid", &self.pid).field("addr", &self.addr).finish()
    }
}

/// Copies `pipe` into `log` line by line on a background thread until end of stream.
fn drain(pipe: impl Read + Send + 'static, log: Arc<Log>, name: String) {
    let spawned = thread::Builder::new().name(name).spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&line));
                    log.lock().text.push_str(&text);
                    log.changed.notify_all();
                }
            }
        }
        log.lock().closed_pipes += 1;
        log.changed.notify_all();
    });
    spawned.expect("spawn a log drain thread");
}

/// Finds the address in the first `listening on mqtt://IP:PORT` line.
fn listening_addr(text: &str) -> Option<SocketAddr> {
    let start = text.find(LISTENING)? + LISTENING.len();
    let rest = &text[start..];
    let end =
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))).unwrap_or(rest.len());
    // A line still being written may end mid-address: only accept a terminated one.
    if end == rest.len() {
        return None;
    }
    rest[..end].parse().ok()
}

/// Removes ANSI escape sequences (colours), in case the broker colours its log anyway.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_address_in_a_log_line() {
        let log = "2025-01-01T00:00:00Z  INFO midge: listening on mqtt://127.0.0.1:40123 (tcp)\n";
        assert_eq!(listening_addr(log), Some("127.0.0.1:40123".parse().unwrap()));
        let at_end_of_line = "INFO listening on mqtt://127.0.0.1:1883\n";
        assert_eq!(listening_addr(at_end_of_line), Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(listening_addr("INFO listening on mqtt://127.0.0.1:18"), None);
    }

    #[test]
    fn strips_colour_codes() {
        assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m listening"), " INFO listening");
    }
}
