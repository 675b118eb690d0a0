//! What a run prints: a progress line a second on stderr, and a summary on
//! stdout (text, or JSON with --json).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use midge_codec::ProtocolVersion;
use serde::Serialize;

use super::load::{Flow, Latencies};
use super::meter::{CpuSample, CpuUse, round1};
use super::opts::version_name;

/// The stderr progress line (unless --quiet).
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    on: bool,
    name: &'static str,
}

impl Progress {
    pub(crate) fn new(on: bool, name: &'static str) -> Progress {
        Progress { on, name }
    }

    /// One line on stderr; errors are printed even with --quiet.
    pub(crate) fn note(&self, line: &str) {
        if self.on || line.starts_with("error") {
            eprintln!("bench {}: {line}", self.name);
        }
    }

    /// Every second: what was sent and received, and the rates over that second.
    pub(crate) fn spawn_load(
        &self,
        flow: Arc<Flow>,
        start: Instant,
        broker_pid: Option<u32>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if !this.on {
                return;
            }
            let mut tick = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
            let (mut sent0, mut recv0, mut cpu0) = (0, 0, CpuSample::now(broker_pid));
            loop {
                tick.tick().await;
                let sent = flow.sent.load(Ordering::Relaxed);
                let recv = flow.received.load(Ordering::Relaxed);
                let cpu = CpuSample::now(broker_pid);
                let used = cpu.since(&cpu0);
                let broker = used.broker_pct.map(|b| format!(" broker {b:.0}%")).unwrap_or_default();
                let others = used.others_pct.map(|o| format!(" others {o:.0}%")).unwrap_or_default();
                eprintln!(
                    "bench {}: {:>4.0}s sent {sent} ({}/s) recv {recv} ({}/s) in flight {} cpu: generator {:.0}%{broker}{others}",
                    this.name,
                    start.elapsed().as_secs_f64(),
                    sent - sent0,
                    recv - recv0,
                    flow.outstanding_total(),
                    used.generator_pct,
                );
                (sent0, recv0, cpu0) = (sent, recv, cpu);
            }
        })
    }

    /// Every second: connections made so far.
    pub(crate) fn spawn_conn(&self, done: Arc<AtomicU64>, total: u64, start: Instant) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if !this.on {
                return;
            }
            let mut tick = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
            let mut before = 0;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "bench conn: {:>4.0}s {now}/{total} attempted ({}/s)",
                    start.elapsed().as_secs_f64(),
                    now - before
                );
                before = now;
            }
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct LatencyUs {
    pub(crate) count: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl LatencyUs {
    fn new(h: &Latencies) -> Option<LatencyUs> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| round1(ns as f64 / 1000.0);
        Some(LatencyUs {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: round1(h.mean() / 1000.0),
        })
    }
}

pub(crate) struct LoadInputs<'a> {
    pub(crate) scenario: &'static str,
    pub(crate) broker: String,
    pub(crate) version: ProtocolVersion,
    pub(crate) qos: u8,
    pub(crate) payload_bytes: Option<usize>,
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
    pub(crate) copies: u64,
    pub(crate) window: u64,
    pub(crate) connections: usize,
    pub(crate) connect_elapsed: Duration,
    pub(crate) start_nanos: u64,
    pub(crate) publish_elapsed: Duration,
    pub(crate) flow: &'a Flow,
    pub(crate) hist: &'a Latencies,
    pub(crate) cpu: CpuUse,
    pub(crate) errors: Vec<String>,
    pub(crate) interrupted: bool,
}

/// The summary of a publish/subscribe run.
#[derive(Debug, Serialize)]
pub(crate) struct LoadSummary {
    pub(crate) scenario: &'static str,
    pub(crate) broker: String,
    pub(crate) protocol: &'static str,
    pub(crate) qos: u8,
    pub(crate) payload_bytes: Option<usize>,
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
    /// Copies of each message the subscribers should receive between them.
    pub(crate) copies_per_message: u64,
    /// Messages in flight at most; 0: unbounded.
    pub(crate) window: u64,
    pub(crate) connections: usize,
    pub(crate) connect_rate: f64,
    /// Seconds from the start to the last publish.
    pub(crate) publish_seconds: f64,
    pub(crate) sent: u64,
    /// QoS 1/2 publishes acknowledged (PUBACK / PUBCOMP).
    pub(crate) acked: u64,
    /// Copies expected: sent × copies per message (null without subscribers here).
    pub(crate) expected: Option<u64>,
    pub(crate) received: u64,
    /// Expected copies that had not arrived after the drain period.
    pub(crate) lost: Option<u64>,
    /// Copies received beyond those expected (QoS 1 redelivery).
    pub(crate) duplicates: Option<u64>,
    /// Messages written per second (start to last write).
    pub(crate) sent_rate: f64,
    /// Copies received per second (start to last receipt).
    pub(crate) received_rate: f64,
    /// Latency from the publisher's write to the subscriber's read, µs.
    pub(crate) latency_us: Option<LatencyUs>,
    /// Times the window stalled a second and wrote off what was outstanding.
    pub(crate) window_stalls: u64,
    pub(crate) cpu: CpuUse,
    pub(crate) interrupted: bool,
    pub(crate) errors: Vec<String>,
}

impl LoadSummary {
    pub(crate) fn new(i: LoadInputs<'_>) -> LoadSummary {
        let sent = i.flow.sent.load(Ordering::SeqCst);
        let received = i.flow.received.load(Ordering::SeqCst);
        let expected = (i.copies > 0).then(|| sent * i.copies);
        // A subscriber-only run counts from its first message, not from when it subscribed.
        let from = if i.scenario == "sub" { i.flow.first_received_at.load(Ordering::Relaxed) } else { i.start_nanos };
        let secs_to = |at: &AtomicU64| {
            let at = at.load(Ordering::Relaxed);
            (at.saturating_sub(from) as f64 / 1e9).max(1e-9)
        };
        let rate = |n: u64, at: &AtomicU64| if n == 0 { 0.0 } else { (n as f64 / secs_to(at)).round() };
        LoadSummary {
            scenario: i.scenario,
            broker: i.broker,
            protocol: version_name(i.version),
            qos: i.qos,
            payload_bytes: i.payload_bytes,
            publishers: i.publishers,
            subscribers: i.subscribers,
            copies_per_message: i.copies,
            window: i.window,
            connections: i.connections,
            connect_rate: (i.connections as f64 / i.connect_elapsed.as_secs_f64().max(1e-9)).round(),
            publish_seconds: round3(i.publish_elapsed.as_secs_f64()),
            sent,
            acked: i.flow.acked.load(Ordering::Relaxed),
            expected,
            received,
            lost: expected.map(|e| e.saturating_sub(received)),
            duplicates: expected.map(|e| received.saturating_sub(e)),
            sent_rate: rate(sent, &i.flow.last_sent_at),
            received_rate: rate(received, &i.flow.last_received_at),
            latency_us: LatencyUs::new(i.hist),
            window_stalls: i.flow.stalls.load(Ordering::Relaxed),
            cpu: i.cpu,
            interrupted: i.interrupted,
            errors: i.errors,
        }
    }

    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer(&mut out, self)?;
            writeln!(out)?;
            return Ok(());
        }
        writeln!(
            out,
            "{}: {} publishers, {} subscribers, QoS {}, {} bytes, MQTT {}, broker {}",
            self.scenario,
            self.publishers,
            self.subscribers,
            self.qos,
            self.payload_bytes.map_or("-".to_owned(), |b| b.to_string()),
            self.protocol,
            self.broker
        )?;
        writeln!(out, "  connect     {} connections, {} conn/s", self.connections, self.connect_rate)?;
        writeln!(out, "  sent        {} msgs, {} msg/s (acked {})", self.sent, self.sent_rate, self.acked)?;
        writeln!(out, "  received    {} msgs, {} msg/s", self.received, self.received_rate)?;
        if let (Some(expected), Some(lost)) = (self.expected, self.lost) {
            let pct = if expected == 0 { 0.0 } else { lost as f64 * 100.0 / expected as f64 };
            writeln!(
                out,
                "  loss        {lost} of {expected} ({pct:.3}%), duplicates {}, window stalls {}",
                self.duplicates.unwrap_or(0),
                self.window_stalls
            )?;
        }
        match &self.latency_us {
            Some(l) => writeln!(
                out,
                "  latency µs  p50 {} p90 {} p99 {} p99.9 {} max {} (mean {}, {} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
            )?,
            None => writeln!(out, "  latency     n/a (no timestamped message from this process received)")?,
        }
        write_cpu(&mut out, &self.cpu)?;
        for e in &self.errors {
            writeln!(out, "  error       {e}")?;
        }
        Ok(())
    }
}

fn write_cpu(out: &mut impl Write, cpu: &CpuUse) -> std::io::Result<()> {
    let broker = cpu.broker_pct.map(|b| format!(", broker {b}%")).unwrap_or_default();
    let others = cpu.others_pct.map(|o| format!(", other processes {o}% (noise)")).unwrap_or_default();
    let saturated = if cpu.generator_pct >= 90.0 * cpu.generator_cpus as f64 {
        "  ← the generator was saturated: this measured the generator"
    } else {
        ""
    };
    writeln!(
        out,
        "  cpu         generator {}% of {} CPU(s){broker}{others}; {} CPUs in the machine{saturated}",
        cpu.generator_pct, cpu.generator_cpus, cpu.machine_cpus
    )
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub(crate) struct ConnInputs<'a> {
    pub(crate) broker: String,
    pub(crate) version: ProtocolVersion,
    pub(crate) requested: usize,
    pub(crate) connected: usize,
    pub(crate) failures: Vec<String>,
    pub(crate) closed_during_hold: usize,
    pub(crate) connect_elapsed: Duration,
    pub(crate) connect_times: &'a Latencies,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
    pub(crate) cpu: CpuUse,
}

/// The summary of `midge bench conn`.
#[derive(Debug, Serialize)]
pub(crate) struct ConnSummary {
    pub(crate) scenario: &'static str,
    pub(crate) broker: String,
    pub(crate) protocol: &'static str,
    pub(crate) requested: usize,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    /// Connections the broker closed while they were held.
    pub(crate) closed_during_hold: usize,
    pub(crate) connect_seconds: f64,
    /// Connections (successful) per second, to the last CONNACK.
    pub(crate) connect_rate: f64,
    /// Each connection's time from TCP connect to CONNACK, µs (a max near 1 s or
    /// 3 s is a SYN retransmitted after the broker's accept queue overflowed).
    pub(crate) connect_time_us: Option<LatencyUs>,
    pub(crate) broker_rss_before_kib: Option<u64>,
    pub(crate) broker_rss_after_kib: Option<u64>,
    /// Growth of the broker's VmRSS over the held connections, KiB each.
    pub(crate) memory_per_connection_kib: Option<f64>,
    /// CPU while connecting.
    pub(crate) cpu: CpuUse,
    /// The first few failures.
    pub(crate) failures: Vec<String>,
}

impl ConnSummary {
    pub(crate) fn new(i: ConnInputs<'_>) -> ConnSummary {
        let per_connection = match (i.rss_before, i.rss_after) {
            (Some(b), Some(a)) if i.connected > 0 => {
                Some((a.saturating_sub(b) as f64 / i.connected as f64 * 100.0).round() / 100.0)
            }
            _ => None,
        };
        let failed = i.failures.len();
        let mut failures = i.failures;
        failures.truncate(5);
        ConnSummary {
            scenario: "conn",
            broker: i.broker,
            protocol: version_name(i.version),
            requested: i.requested,
            connected: i.connected,
            failed,
            closed_during_hold: i.closed_during_hold,
            connect_seconds: round3(i.connect_elapsed.as_secs_f64()),
            connect_rate: (i.connected as f64 / i.connect_elapsed.as_secs_f64().max(1e-9)).round(),
            connect_time_us: LatencyUs::new(i.connect_times),
            broker_rss_before_kib: i.rss_before,
            broker_rss_after_kib: i.rss_after,
            memory_per_connection_kib: per_connection,
            cpu: i.cpu,
            failures,
        }
    }

    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer(&mut out, self)?;
            writeln!(out)?;
            return Ok(());
        }
        writeln!(out, "conn: {} connections, MQTT {}, broker {}", self.requested, self.protocol, self.broker)?;
        writeln!(
            out,
            "  connected   {} in {} s: {} conn/s; failed {}, closed while held {}",
            self.connected, self.connect_seconds, self.connect_rate, self.failed, self.closed_during_hold
        )?;
        if let Some(t) = &self.connect_time_us {
            writeln!(
                out,
                "  connect µs  p50 {} p90 {} p99 {} p99.9 {} max {} (TCP connect to CONNACK)",
                t.p50, t.p90, t.p99, t.p999, t.max
            )?;
        }
        if let (Some(b), Some(a)) = (self.broker_rss_before_kib, self.broker_rss_after_kib) {
            writeln!(
                out,
                "  memory      broker VmRSS {b} KiB → {a} KiB: {} KiB per connection",
                self.memory_per_connection_kib.unwrap_or(0.0)
            )?;
        }
        write_cpu(&mut out, &self.cpu)?;
        for f in &self.failures {
            writeln!(out, "  failure     {f}")?;
        }
        Ok(())
    }
}
