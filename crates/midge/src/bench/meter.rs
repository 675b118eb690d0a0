//! Who used the CPU during a run: this generator, the broker, and everything
//! else (the noise figure), read from /proc; and the broker's memory.

use std::time::Instant;

/// Nanoseconds per clock tick of /proc's CPU times (USER_HZ is 100 on Linux).
const NANOS_PER_TICK: u64 = 10_000_000;

/// One reading of the CPU counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    at: Instant,
    /// CPU time of this process, in nanoseconds.
    own: u64,
    /// CPU time of the broker, in nanoseconds.
    broker: Option<u64>,
    /// Busy time of the whole machine (all CPUs), in nanoseconds (10 ms resolution).
    busy: Option<u64>,
}

/// CPU used between two samples, in percent of one CPU.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct CpuUse {
    /// This generator (all its threads).
    pub(crate) generator_pct: f64,
    /// The broker, when its pid was given.
    pub(crate) broker_pct: Option<f64>,
    /// Every other process: the noise figure. Without --broker-pid the broker is in it.
    pub(crate) others_pct: Option<f64>,
    /// CPUs this generator may run on (its affinity).
    pub(crate) generator_cpus: usize,
    /// CPUs of the machine.
    pub(crate) machine_cpus: usize,
}

impl CpuSample {
    pub(crate) fn now(broker_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            own: process_cpu_nanos("self").unwrap_or(0),
            broker: broker_pid.and_then(|pid| process_cpu_nanos(&pid.to_string())),
            busy: machine_busy_nanos(),
        }
    }

    /// CPU used from `earlier` to `self`.
    pub(crate) fn since(&self, earlier: &CpuSample) -> CpuUse {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let pct = |nanos: u64| nanos as f64 / 1e9 / secs * 100.0;
        let own = self.own.saturating_sub(earlier.own);
        let broker = match (self.broker, earlier.broker) {
            (Some(now), Some(then)) => Some(now.saturating_sub(then)),
            _ => None,
        };
        let others = match (self.busy, earlier.busy) {
            (Some(now), Some(then)) => {
                Some(now.saturating_sub(then).saturating_sub(own).saturating_sub(broker.unwrap_or(0)))
            }
            _ => None,
        };
        CpuUse {
            generator_pct: round1(pct(own)),
            broker_pct: broker.map(|b| round1(pct(b))),
            others_pct: others.map(|o| round1(pct(o))),
            generator_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            machine_cpus: machine_cpus(),
        }
    }
}

pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// CPU time of a process in nanoseconds: the sum of its threads' run times
/// (/proc/PID/task/*/schedstat), which are exact, unlike the 10 ms ticks of
/// /proc/PID/stat that quantise a short phase (a 0.1 s connect burst) into
/// steps of 10%; falls back to those ticks.
fn process_cpu_nanos(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok();
    let from_schedstat = tasks.and_then(|tasks| {
        let mut sum = 0u64;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            sum += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(sum)
    });
    from_schedstat.or_else(|| process_ticks(pid).map(|t| t * NANOS_PER_TICK))
}

/// utime + stime of /proc/PID/stat, in ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of all CPUs together, in nanoseconds: the `cpu` line of /proc/stat less idle and
/// iowait (counted in 10 ms ticks).
fn machine_busy_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle) * NANOS_PER_TICK)
}

fn machine_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| s.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count())
        .unwrap_or(0)
}

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
