//! The broker under test as a child process.

use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::{Process, TempDir};

/// What the broker prints once its MQTT listener is bound.
const LISTENING: &str = "listening on mqtt://";

/// How long the broker may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the broker may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `midge serve` child process bound to an ephemeral port on 127.0.0.1.
///
/// It runs as a [`Process`], whose threads drain its stdout and stderr so the pipes
/// never fill and block the broker; [`Broker::log`] reads both as one log and
/// [`Broker::wait_for_log`] waits for a line. Dropping a `Broker` kills the process.
#[derive(Debug)]
pub struct Broker {
    process: Process,
    addr: SocketAddr,
    /// The store's directory, when this harness chose it (removed on drop,
    /// after the process).
    _data: Option<TempDir>,
}

impl Broker {
    /// Runs `bin serve --bind 127.0.0.1 --port 0 ARGS…` and waits (at most 30 s) for
    /// its `listening on mqtt://IP:PORT` line.
    ///
    /// # Panics
    /// If the process cannot be spawned, exits, or does not report a listener in
    /// time; the message includes everything it logged.
    ///
    /// Unless `args` say where the store is (`--data-dir` or `--in-memory`), the
    /// broker gets a fresh data directory of its own, so every test runs
    /// with persistence on, as `midge serve` does by default.
    pub fn start(bin: &str, args: &[&str]) -> Broker {
        let chooses_store = args.iter().any(|a| matches!(*a, "--data-dir" | "--in-memory"));
        let data = (!chooses_store).then(|| TempDir::new("data"));
        let mut command = Command::new(bin);
        command.args(["serve", "--bind", "127.0.0.1", "--port", "0"]);
        if let Some(data) = &data {
            command.arg("--data-dir").arg(data.path());
        }
        command
            .args(args)
            // Plain text, whatever the terminal: the log is searched for strings.
            .env("NO_COLOR", "1");
        let mut process = Process::spawn(bin, command);
        let pid = process.pid();

        let found = process.wait_until(START_TIMEOUT, |captured| {
            if let Some(addr) = listening_addr(&strip_ansi(captured.output())) {
                Some(Ok(addr))
            } else if captured.all_closed() {
                Some(Err("it closed its output"))
            } else {
                None
            }
        });
        match found {
            Some(Ok(addr)) => Broker { process, addr, _data: data },
            Some(Err(why)) => {
                let status = process.try_wait_exit(Duration::from_secs(2));
                panic!(
                    "{bin} (pid {pid}) did not report `{LISTENING}`: {why}, exit status {status:?}; its log:\n{}",
                    strip_ansi(&process.output())
                );
            }
            None => {
                process.kill();
                panic!(
                    "{bin} (pid {pid}) did not report `{LISTENING}` within {START_TIMEOUT:?}; its log:\n{}",
                    strip_ansi(&process.output())
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
        self.process.pid()
    }

    /// The broker's process, for what [`Broker`] does not offer itself (its stdout
    /// and stderr apart, say).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Everything the broker has written to stdout and stderr so far, interleaved
    /// line by line, without colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&self.process.output())
    }

    /// Waits (at most `timeout`) until the log contains `needle`; returns whether it did.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.process
            .wait_until(timeout, |captured| strip_ansi(captured.output()).contains(needle).then_some(()))
            .is_some()
    }

    /// Kills the process with SIGKILL and reaps it, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM and waits for the process to exit (at most 10 s); returns its
    /// exit status.
    ///
    /// # Panics
    /// If it is still running after 10 s (it is then killed), or was already reaped.
    pub fn stop(&mut self) -> ExitStatus {
        assert!(!self.process.is_reaped(), "the broker was already stopped or killed");
        match self.process.try_terminate(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "midge (pid {}) still running {STOP_TIMEOUT:?} after SIGTERM; its log:\n{}",
                    self.pid(),
                    self.log()
                );
            }
        }
    }
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
