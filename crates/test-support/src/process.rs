//! A child process whose output a test reads and waits on.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A child process with stdin closed and stdout and stderr captured; killed when
/// dropped, so a failing test leaves nothing running behind it.
///
/// Two background threads read the process's stdout and stderr to the end, line by
/// line, into buffers shared with the test, so the pipes never fill and block the
/// process. A test takes snapshots of what was printed so far ([`Process::stdout`],
/// [`Process::stderr`], [`Process::output`]) or waits for something to be printed
/// ([`Process::wait_for_stdout_line`], [`Process::wait_until`]) or for the process to
/// exit ([`Process::wait_exit`]).
///
/// Every wait takes a time limit and waits for the event itself, never for a fixed
/// time. The waits that must succeed (`wait_*`, [`Process::terminate`]) panic with
/// [`Process::transcript`] when they do not; the `try_*` forms return `None` instead.
/// The process is reaped (its exit status collected) by [`Process::wait_exit`],
/// [`Process::terminate`], [`Process::kill`] and their `try_*` forms; once it is, no
/// signal is sent to its process id any more.
///
/// Output is decoded as UTF-8, lossily; it is stored as printed (colour codes
/// included, if the program writes any into a pipe).
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use midge_test_support::Process;
///
/// let mut command = Command::new("sh");
/// command.args(["-c", "echo ready; echo oops >&2; read -r _ignored; exit 3"]);
/// let mut process = Process::spawn("sh", command);
/// let line = process.wait_for_stdout_line("ready", Duration::from_secs(5));
/// assert_eq!(line, "ready");
/// // stdin is closed, so `read` fails at once and the script goes on to exit.
/// let status = process.wait_exit(Duration::from_secs(5));
/// assert_eq!(status.code(), Some(3));
/// assert_eq!(process.stderr(), "oops\n");
/// ```
pub struct Process {
    /// Says in failure messages which program this is.
    name: String,
    /// The command as spawned (`Command`'s `Debug` form), for failure messages.
    command_line: String,
    pid: u32,
    /// `None` once the process has been reaped.
    child: Option<Child>,
    /// Set once the process has been reaped (unless reaping it failed).
    status: Option<ExitStatus>,
    captured: Arc<Shared>,
}

/// Which of a process's output streams to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What a [`Process`] has printed so far, as seen by a [`Process::wait_until`]
/// condition.
#[derive(Debug, Default)]
pub struct Captured {
    stdout: String,
    stderr: String,
    /// Both streams, line by line in the order they were read.
    output: String,
    stdout_closed: bool,
    stderr_closed: bool,
}

impl Captured {
    /// Everything written to stdout so far.
    pub fn stdout(&self) -> &str {
        &self.stdout
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> &str {
        &self.stderr
    }

    /// Everything written to `stream` so far.
    pub fn stream(&self, stream: Stream) -> &str {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Everything written to stdout and stderr so far, interleaved line by line in
    /// the order the lines were read (which, across the two pipes, is only roughly the
    /// order they were written in).
    pub fn output(&self) -> &str {
        &self.output
    }

    /// Whether `stream` has reached end of stream: the process (and any child that
    /// inherited the pipe) has closed it, and all of it has been read.
    pub fn is_closed(&self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout_closed,
            Stream::Stderr => self.stderr_closed,
        }
    }

    /// Whether both stdout and stderr have reached end of stream: nothing more will
    /// be printed.
    pub fn all_closed(&self) -> bool {
        self.stdout_closed && self.stderr_closed
    }
}

/// The captured output, shared with the drain threads: they append under the mutex
/// and notify the condvar; waiters re-check their condition on each notification.
struct Shared {
    state: Mutex<Captured>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A panicking waiter must not make the output unreadable for the others.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `done` produces a value or `deadline` passes; returns the value.
    fn wait_until<T>(&self, deadline: Instant, mut done: impl FnMut(&Captured) -> Option<T>) -> Option<T> {
        let mut captured = self.lock();
        loop {
            if let Some(found) = done(&captured) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            captured =
                self.changed.wait_timeout(captured, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }
}

impl Process {
    /// Spawns `command` with stdin closed (whatever `command` says) and stdout and
    /// stderr captured. `name` says in failure messages which program this is.
    ///
    /// # Panics
    /// If the process cannot be spawned (the program is missing, say).
    pub fn spawn(name: &str, mut command: Command) -> Process {
        let command_line = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {name} ({command_line}): {err}"));
        let pid = child.id();
        let captured = Arc::new(Shared { state: Mutex::new(Captured::default()), changed: Condvar::new() });
        drain(child.stdout.take().expect("piped stdout"), Arc::clone(&captured), Stream::Stdout, pid);
        drain(child.stderr.take().expect("piped stderr"), Arc::clone(&captured), Stream::Stderr, pid);
        Process { name: name.to_owned(), command_line, pid, child: Some(child), status: None, captured }
    }

    /// The name given to [`Process::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the process has been reaped; `None` while it may still
    /// be running.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Whether the process has been reaped (see [`Process`]): it is known to have
    /// ended, and no signal will be sent to its process id.
    pub fn is_reaped(&self) -> bool {
        self.child.is_none()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.captured.lock().stdout.clone()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.captured.lock().stderr.clone()
    }

    /// Everything written to stdout and stderr so far, interleaved line by line (see
    /// [`Captured::output`]).
    pub fn output(&self) -> String {
        self.captured.lock().output.clone()
    }

    /// The complete (newline-terminated) lines written to stdout so far, without their
    /// line ends (`\n` or `\r\n`).
    pub fn stdout_lines(&self) -> Vec<String> {
        complete_lines(&self.captured.lock().stdout)
    }

    /// The complete (newline-terminated) lines written to stderr so far, without their
    /// line ends (`\n` or `\r\n`).
    pub fn stderr_lines(&self) -> Vec<String> {
        complete_lines(&self.captured.lock().stderr)
    }

    /// What the process is, how it exited if it has, and everything it printed, for
    /// failure messages.
    pub fn transcript(&self) -> String {
        let captured = self.captured.lock();
        let mut text = format!("{} ({})", self.name, self.command_line);
        if let Some(status) = self.status {
            let _ = write!(text, " exited with {status}");
        }
        let _ = write!(text, "\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---", captured.stdout, captured.stderr);
        text
    }

    /// Waits (at most `timeout`) until `condition` returns a value for what has been
    /// captured, and returns that value; `None` if the time runs out first.
    ///
    /// `condition` runs under the lock the drain threads append under: first at once,
    /// then each time more output is read or a stream ends. It should be quick and
    /// must not call back into this `Process`. It decides itself whether the end of
    /// the output (see [`Captured::all_closed`]) ends the wait: return
    /// `Some(Err(…))` then, or the wait goes on to the deadline.
    pub fn wait_until<T>(&self, timeout: Duration, condition: impl FnMut(&Captured) -> Option<T>) -> Option<T> {
        self.captured.wait_until(Instant::now() + timeout, condition)
    }

    /// Waits (at most `timeout`) until a complete line of `stream` contains `needle`,
    /// and returns that line, without its line end.
    ///
    /// # Panics
    /// If no such line appears in time, or the process closes both stdout and stderr
    /// without one; the message holds [`Process::transcript`].
    pub fn wait_for_line(&self, stream: Stream, needle: &str, timeout: Duration) -> String {
        let found = self.wait_until(timeout, |captured| {
            if let Some(line) = complete_lines(captured.stream(stream)).into_iter().find(|line| line.contains(needle)) {
                Some(Ok(line))
            } else if captured.all_closed() {
                Some(Err("before it closed its output".to_owned()))
            } else {
                None
            }
        });
        match found.unwrap_or_else(|| Err(format!("within {timeout:?}"))) {
            Ok(line) => line,
            Err(why) => {
                panic!("{} printed no {stream:?} line containing {needle:?} {why}; {}", self.name, self.transcript())
            }
        }
    }

    /// [`Process::wait_for_line`] on stdout.
    pub fn wait_for_stdout_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(Stream::Stdout, needle, timeout)
    }

    /// [`Process::wait_for_line`] on stderr.
    pub fn wait_for_stderr_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(Stream::Stderr, needle, timeout)
    }

    /// Waits (at most `timeout`) for the process to exit and reaps it, then waits
    /// (within the same time limit) for its output to be read to the end; returns its
    /// exit status, or `None` if it is still running at the deadline (it is left
    /// running).
    ///
    /// The output ends soon after the process exits, unless the process left a child
    /// of its own holding the pipes; past the deadline, this returns without it.
    ///
    /// # Panics
    /// If the operating system cannot tell the process's status.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        if let Some(child) = self.child.as_mut() {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status,
                    // std cannot wait for a child with a time limit: poll its status.
                    Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                    Ok(None) => return None,
                    Err(err) => panic!("cannot wait for {} (pid {}): {err}", self.name, self.pid),
                }
            };
            self.child = None;
            self.status = Some(status);
        }
        self.captured.wait_until(deadline, |captured| captured.all_closed().then_some(()));
        self.status
    }

    /// [`Process::try_wait_exit`], for a process that must exit in time.
    ///
    /// # Panics
    /// If it is still running at the deadline (it is then killed); the message holds
    /// [`Process::transcript`].
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait_exit(timeout) {
            return status;
        }
        if self.is_reaped() {
            panic!("the exit status of {} is unknown: it was killed and could not be reaped", self.name);
        }
        self.kill();
        panic!("{} still running after {timeout:?}; it was killed; {}", self.name, self.transcript());
    }

    /// Waits (at most `timeout`) for the process to exit successfully.
    ///
    /// # Panics
    /// If it does not exit in time (it is then killed) or exits with a failure; the
    /// message holds [`Process::transcript`].
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "{} failed; {}", self.name, self.transcript());
    }

    /// Sends SIGTERM (the polite request to stop, as from `kill PID` or a service
    /// manager) and then [`Process::try_wait_exit`]s: returns the exit status, or
    /// `None` if the process is still running at the deadline (it is left running).
    /// Sends nothing if the process has been reaped already.
    pub fn try_terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.is_reaped() {
            // std has no way to send SIGTERM without `unsafe` (which this workspace
            // forbids); the `kill` utility does. If it fails, the process has exited
            // already; reaping it tells how it ended.
            let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).stderr(Stdio::null()).status();
        }
        self.try_wait_exit(timeout)
    }

    /// [`Process::try_terminate`], for a process that must stop in time.
    ///
    /// # Panics
    /// If it is still running at the deadline (it is then killed); the message holds
    /// [`Process::transcript`].
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_terminate(timeout) {
            return status;
        }
        if self.is_reaped() {
            panic!("the exit status of {} is unknown: it was killed and could not be reaped", self.name);
        }
        self.kill();
        panic!("{} still running {timeout:?} after SIGTERM; it was killed; {}", self.name, self.transcript());
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it. Does nothing if
    /// it has been reaped already. Does not wait for the output to be read to the end:
    /// [`Process::wait_exit`] afterwards does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; reaping it is what matters.
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish_non_exhaustive()
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

/// Copies `pipe` into `shared` line by line on a background thread until end of
/// stream.
fn drain(pipe: impl Read + Send + 'static, shared: Arc<Shared>, stream: Stream, pid: u32) {
    let name = match stream {
        Stream::Stdout => format!("{pid}-stdout"),
        Stream::Stderr => format!("{pid}-stderr"),
    };
    let spawned = thread::Builder::new().name(name).spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let mut captured = shared.lock();
                    match stream {
                        Stream::Stdout => captured.stdout.push_str(&text),
                        Stream::Stderr => captured.stderr.push_str(&text),
                    }
                    captured.output.push_str(&text);
                    drop(captured);
                    shared.changed.notify_all();
                }
            }
        }
        let mut captured = shared.lock();
        match stream {
            Stream::Stdout => captured.stdout_closed = true,
            Stream::Stderr => captured.stderr_closed = true,
        }
        drop(captured);
        shared.changed.notify_all();
    });
    spawned.expect("spawn an output drain thread");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> Process {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Process::spawn("sh", command)
    }

    #[test]
    fn complete_lines_leave_out_a_line_still_being_written() {
        assert_eq!(complete_lines(""), Vec::<String>::new());
        assert_eq!(complete_lines("partial"), Vec::<String>::new());
        assert_eq!(complete_lines("one\r\ntwo\nthr"), ["one", "two"]);
        assert_eq!(complete_lines("one\n\n"), ["one", ""]);
    }

    #[test]
    fn captures_stdout_and_stderr_apart_and_together() {
        let mut process = sh("echo out; echo err >&2; printf 'no newline'");
        let status = process.wait_exit(TIMEOUT);
        assert!(status.success(), "{}", process.transcript());
        assert_eq!(process.exit_status(), Some(status));
        assert!(process.is_reaped());
        assert_eq!(process.stdout(), "out\nno newline");
        assert_eq!(process.stdout_lines(), ["out"]);
        assert_eq!(process.stderr(), "err\n");
        assert_eq!(process.stderr_lines(), ["err"]);
        let output = process.output();
        assert!(output.contains("out\n") && output.contains("err\n") && output.contains("no newline"), "{output:?}");
        assert!(process.transcript().contains("--- stderr ---\nerr\n"), "{}", process.transcript());
    }

    #[test]
    fn waits_for_a_line_then_for_the_exit() {
        // stdin is closed: `read` ends at once, so the script exits after its lines.
        let mut process = sh("echo starting >&2; echo 'ready: yes'; read -r _line; exit 3");
        assert_eq!(process.wait_for_stderr_line("start", TIMEOUT), "starting");
        assert_eq!(process.wait_for_stdout_line("ready", TIMEOUT), "ready: yes");
        assert_eq!(process.wait_exit(TIMEOUT).code(), Some(3));
    }

    #[test]
    fn wait_until_sees_the_end_of_the_output() {
        let process = sh("echo a; echo b");
        let lines = process.wait_until(TIMEOUT, |captured| captured.all_closed().then(|| captured.stdout().to_owned()));
        assert_eq!(lines.as_deref(), Some("a\nb\n"));
        assert_eq!(
            process.wait_until(Duration::from_millis(50), |captured| captured.stdout().contains('z').then_some(())),
            None
        );
    }

    #[test]
    #[should_panic(expected = "printed no Stdout line containing \"never\" before it closed its output")]
    fn waiting_for_a_line_fails_when_the_output_ends_without_it() {
        sh("echo something else").wait_for_stdout_line("never", TIMEOUT);
    }

    #[test]
    fn a_process_still_running_is_reported_and_left_running() {
        let mut process = sh("exec sleep 30");
        assert_eq!(process.try_wait_exit(Duration::from_millis(50)), None);
        assert!(!process.is_reaped());
        let status = process.terminate(TIMEOUT);
        assert_eq!(status.signal(), Some(15), "{status:?}");
        // Reaped: no further signal goes to the process id.
        assert_eq!(process.try_terminate(TIMEOUT), Some(status));
    }

    #[test]
    fn kill_reaps_the_process() {
        let mut process = sh("exec sleep 30");
        process.kill();
        assert!(process.is_reaped());
        assert_eq!(process.exit_status().and_then(|status| status.signal()), Some(9));
        assert_eq!(process.wait_exit(TIMEOUT).signal(), Some(9));
    }
}
