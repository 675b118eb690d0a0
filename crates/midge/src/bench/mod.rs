//! `midge bench`: a load generator for any MQTT broker, in the spirit of
//! emqtt-bench.
//!
//! ```text
//!   opts ──▶ Plan (publishers' topics, subscribers' filters, copies per message)
//!        ──▶ connect subscribers, SUBSCRIBE; connect publishers   (client.rs)
//!        ──▶ publisher / subscriber tasks sharing one Flow        (load.rs)
//!        ──▶ drain, Summary: rates, loss, latency, CPU, memory    (report.rs, meter.rs)
//! ```
//!
//! It speaks MQTT through `midge-codec` directly (no client library in the
//! way), batches writes and keeps allocation out of the per-message path, so
//! the generator is not what is measured; its own CPU use is reported so a
//! saturated generator shows.

mod client;
mod load;
mod meter;
mod opts;
mod pace;
mod report;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::task::JoinSet;

use client::{Conn, Dialer};
use load::{Flow, PublisherPlan};
use meter::CpuSample;
pub(crate) use opts::BenchArgs;
use opts::{BenchCommand, ConnArgs, ConnectOpts, PubArgs, ScenarioArgs, SubArgs, TrafficOpts};
use report::{ConnSummary, LoadSummary};

/// Runs `midge bench …`.
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let connect = match &args.command {
        BenchCommand::Conn(a) => &a.connect,
        BenchCommand::Pub(a) => &a.connect,
        BenchCommand::Sub(a) => &a.connect,
        BenchCommand::FanIn(a) | BenchCommand::FanOut(a) | BenchCommand::Pairs(a) | BenchCommand::Shared(a) => {
            &a.connect
        }
    };
    // The generator opens as many sockets as the broker accepts.
    crate::fdtable::presize();
    // Chosen as for `midge serve`: none given is one thread per CPU it may use.
    let (runtime, _) = crate::runtime(connect.threads.map_or(0, |t| t as usize)).context("starting the runtime")?;
    runtime.block_on(async move {
        match args.command {
            BenchCommand::Conn(a) => conn(a).await,
            BenchCommand::Pub(a) => {
                let plan = Plan::publish(&a);
                load(&a.connect, Some(&a.traffic), plan).await
            }
            BenchCommand::Sub(a) => {
                let plan = Plan::subscribe(&a);
                load(&a.connect, None, plan).await
            }
            BenchCommand::FanIn(a) => scenario(Scenario::FanIn, a).await,
            BenchCommand::FanOut(a) => scenario(Scenario::FanOut, a).await,
            BenchCommand::Pairs(a) => scenario(Scenario::Pairs, a).await,
            BenchCommand::Shared(a) => scenario(Scenario::Shared, a).await,
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    FanIn,
    FanOut,
    Pairs,
    Shared,
}

/// Who connects, to what, and what a run expects.
#[derive(Debug)]
struct Plan {
    name: &'static str,
    /// One topic per publisher.
    publishers: Vec<String>,
    /// One filter per subscriber.
    subscribers: Vec<String>,
    /// Subscription QoS.
    sub_qos: u8,
    /// Copies of each message the subscribers receive between them (0: no subscriber here).
    copies: u64,
    /// `sub`: stop after this many messages in all.
    receive_count: Option<u64>,
    /// `sub`: stop after this long.
    receive_duration: Option<Duration>,
}

impl Plan {
    fn publish(a: &PubArgs) -> Plan {
        Plan {
            name: "pub",
            publishers: (0..a.clients).map(|i| indexed(&a.topic, i)).collect(),
            subscribers: Vec::new(),
            sub_qos: 0,
            copies: 0,
            receive_count: None,
            receive_duration: None,
        }
    }

    fn subscribe(a: &SubArgs) -> Plan {
        Plan {
            name: "sub",
            publishers: Vec::new(),
            subscribers: (0..a.clients).map(|i| indexed(&a.topic, i)).collect(),
            sub_qos: a.qos,
            copies: 0,
            receive_count: a.count,
            receive_duration: a.duration.map(Duration::from_secs_f64),
        }
    }
}

/// `pattern` with %i replaced by `index`.
fn indexed(pattern: &str, index: usize) -> String {
    pattern.replace("%i", &index.to_string())
}

async fn scenario(kind: Scenario, a: ScenarioArgs) -> anyhow::Result<()> {
    let (name, default_topic) = match kind {
        Scenario::FanIn => ("fan-in", "bench/fan-in/%i"),
        Scenario::FanOut => ("fan-out", "bench/fan-out"),
        Scenario::Pairs => ("pairs", "bench/pairs/%i"),
        Scenario::Shared => ("shared", "bench/shared/%i"),
    };
    let topic = a.topic.clone().unwrap_or_else(|| default_topic.to_owned());
    let wildcard = topic.replace("%i", "+");
    let (publishers, subscribers, copies) = match kind {
        Scenario::FanIn => {
            let p = a.publishers.or(a.pairs).unwrap_or(10);
            ((0..p).map(|i| indexed(&topic, i)).collect(), vec![wildcard], 1)
        }
        Scenario::FanOut => {
            let s = a.subscribers.or(a.pairs).unwrap_or(100);
            (vec![indexed(&topic, 0)], vec![wildcard; s], s as u64)
        }
        Scenario::Pairs => {
            let n = a.pairs.or(a.publishers).unwrap_or(50);
            ((0..n).map(|i| indexed(&topic, i)).collect(), (0..n).map(|i| indexed(&topic, i)).collect(), 1)
        }
        Scenario::Shared => {
            let p = a.publishers.unwrap_or(10);
            let s = a.subscribers.unwrap_or(10);
            let filter = format!("$share/{}/{wildcard}", a.group);
            ((0..p).map(|i| indexed(&topic, i)).collect(), vec![filter; s], 1)
        }
    };
    if publishers.is_empty() || subscribers.is_empty() {
        bail!("{name} needs at least one publisher and one subscriber");
    }
    let plan = Plan {
        name,
        publishers,
        subscribers,
        sub_qos: a.traffic.qos,
        copies,
        receive_count: None,
        receive_duration: None,
    };
    load(&a.connect, Some(&a.traffic), plan).await
}

/// Connects `ids` (bounded by --connect-concurrency, paced by --connect-rate);
/// returns each result in order.
async fn connect_all(dialer: &Arc<Dialer>, ids: Vec<String>, start: Instant) -> Vec<anyhow::Result<Conn>> {
    let mut set = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let dialer = dialer.clone();
        set.spawn(async move { (i, dialer.connect(id, start).await) });
    }
    let mut out: Vec<Option<anyhow::Result<Conn>>> = (0..set.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => out[i] = Some(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("connect task lost")))).collect()
}

/// The publish/subscribe runs: `pub`, `sub` and the scenarios.
async fn load(connect: &ConnectOpts, traffic: Option<&TrafficOpts>, plan: Plan) -> anyhow::Result<()> {
    if let Some(t) = traffic
        && t.phase_us.is_some()
        && !t.rate.or(t.total_rate).is_some_and(|r| r > 0.0)
    {
        bail!("--phase-us needs --rate or --total-rate");
    }
    let dialer = Arc::new(Dialer::new(connect).await?);
    let version = dialer.version;
    let timeout = Duration::from_secs_f64(connect.connect_timeout.max(0.001));
    let flow = Arc::new(Flow::new(plan.copies, traffic.map_or(0, |t| t.window)));
    let progress = report::Progress::new(!connect.quiet, plan.name);

    // Subscribers first, each subscribed before any publisher connects.
    let connect_start = Instant::now();
    let ids = (0..plan.subscribers.len()).map(|i| dialer.client_id("s", i)).collect();
    let mut subs = Vec::new();
    for (r, filter) in connect_all(&dialer, ids, connect_start).await.into_iter().zip(&plan.subscribers) {
        let mut conn = r?;
        tokio::time::timeout(timeout, conn.subscribe(filter, opts::qos(plan.sub_qos), version))
            .await
            .map_err(|_| anyhow::anyhow!("no SUBACK within {timeout:?} for {}", conn.client_id))??;
        subs.push(conn);
    }
    let ids = (0..plan.publishers.len()).map(|i| dialer.client_id("p", i)).collect();
    let mut pubs = Vec::new();
    for r in connect_all(&dialer, ids, connect_start).await {
        pubs.push(r?);
    }
    let connect_elapsed = connect_start.elapsed();
    let connections = subs.len() + pubs.len();
    progress.note(&format!(
        "{} subscribers subscribed, {} publishers connected to {} in {:.0} ms",
        subs.len(),
        pubs.len(),
        dialer.addr,
        connect_elapsed.as_secs_f64() * 1000.0
    ));

    let cpu_start = CpuSample::now(connect.broker_pid);
    let start = Instant::now();
    let start_nanos = load::now_nanos();
    let mut sub_tasks = JoinSet::new();
    for conn in subs {
        sub_tasks.spawn(load::subscriber(conn, version, dialer.keep_alive(), flow.clone()));
    }
    let mut pub_tasks = JoinSet::new();
    let mut drain = Duration::ZERO;
    if let Some(t) = traffic {
        let duration = match (t.duration, t.count) {
            (Some(d), _) => Some(Duration::from_secs_f64(d)),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        let publishers = plan.publishers.len().max(1) as f64;
        let rate = t.rate.or(t.total_rate.map(|r| r / publishers));
        drain = Duration::from_secs_f64(t.drain.max(0.0));
        let period = rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
        let first = match (period, t.phase_us) {
            (Some(period), Some(offset)) => pace::on_grid(period, Duration::from_micros(offset))?,
            _ => Instant::now(),
        };
        for (i, (conn, topic)) in pubs.into_iter().zip(&plan.publishers).enumerate() {
            let phase = period.map_or(Duration::ZERO, |p| p.mul_f64(i as f64 / publishers));
            let p = PublisherPlan {
                topic: topic.clone(),
                qos: t.qos(),
                size: t.size,
                rate,
                start: first + phase,
                count: t.count,
                deadline: duration.map(|d| start + d),
                inflight: t.inflight,
                batch: t.batch as usize,
                drain,
            };
            pub_tasks.spawn(load::publisher(conn, p, version, flow.clone()));
        }
    }

    // Run: publishers until done (or Ctrl-C); `sub` until its count or duration.
    let ticker = progress.spawn_load(flow.clone(), start, connect.broker_pid);
    let mut errors = Vec::new();
    let mut hist = load::new_histogram();
    let mut interrupted = false;
    if traffic.is_some() {
        let mut stall = (0, Instant::now());
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => flow.watch_stall(&mut stall),
                joined = pub_tasks.join_next() => match joined {
                    Some(r) => collect(r, &mut errors, &progress),
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => {
                    interrupted = true;
                    flow.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    } else {
        let until = plan.receive_duration.map(|d| start + d);
        loop {
            if plan.receive_count.is_some_and(|c| flow.received.load(Ordering::Relaxed) >= c) {
                break;
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
                joined = sub_tasks.join_next() => match joined {
                    Some(r) => absorb(r, &mut hist, &mut errors, &progress),
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => { interrupted = true; break; }
            }
        }
    }
    let publish_end = Instant::now();

    // Drain: wait (bounded) for every expected copy.
    if plan.copies > 0 && !interrupted {
        let until = publish_end + drain;
        while flow.outstanding_total() > 0 && Instant::now() < until && !sub_tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    flow.stop_subscribers.store(true, Ordering::Relaxed);
    while let Some(joined) = sub_tasks.join_next().await {
        absorb(joined, &mut hist, &mut errors, &progress);
    }
    ticker.abort();
    let cpu = CpuSample::now(connect.broker_pid).since(&cpu_start);
    let summary = LoadSummary::new(report::LoadInputs {
        scenario: plan.name,
        broker: dialer.addr.to_string(),
        version,
        qos: traffic.map_or(plan.sub_qos, |t| t.qos),
        payload_bytes: traffic.map(|t| t.size),
        publishers: plan.publishers.len(),
        subscribers: plan.subscribers.len(),
        copies: plan.copies,
        window: traffic.map_or(0, |t| t.window),
        connections,
        connect_elapsed,
        start_nanos,
        publish_elapsed: publish_end - start,
        flow: &flow,
        hist: &hist,
        cpu,
        errors,
        interrupted,
    });
    summary.print(connect.json)?;
    if let Some(first) = summary.errors.first() {
        bail!("{} connection(s) failed during the run; the first: {first}", summary.errors.len());
    }
    Ok(())
}

fn absorb(
    r: Result<anyhow::Result<load::Latencies>, tokio::task::JoinError>,
    hist: &mut load::Latencies,
    errors: &mut Vec<String>,
    progress: &report::Progress,
) {
    match r {
        Ok(Ok(h)) => hist.add(&h).unwrap_or(()),
        Ok(Err(e)) => {
            progress.note(&format!("error: {e:#}"));
            errors.push(format!("{e:#}"));
        }
        Err(e) => errors.push(format!("subscriber task failed: {e}")),
    }
}

fn collect(
    r: Result<anyhow::Result<()>, tokio::task::JoinError>,
    errors: &mut Vec<String>,
    progress: &report::Progress,
) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            progress.note(&format!("error: {e:#}"));
            errors.push(format!("{e:#}"));
        }
        Err(e) => errors.push(format!("publisher task failed: {e}")),
    }
}

/// `midge bench conn`: open, hold, measure.
async fn conn(a: ConnArgs) -> anyhow::Result<()> {
    let dialer = Arc::new(Dialer::new(&a.connect).await?);
    let version = dialer.version;
    let progress = report::Progress::new(!a.connect.quiet, "conn");
    let rss_before = a.connect.broker_pid.and_then(meter::rss_kib);
    let cpu_start = CpuSample::now(a.connect.broker_pid);
    let start = Instant::now();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = progress.spawn_conn(counter.clone(), a.clients as u64, start);
    let mut set = JoinSet::new();
    for i in 0..a.clients {
        let dialer = dialer.clone();
        let id = dialer.client_id("c", i);
        let counter = counter.clone();
        set.spawn(async move {
            let r = dialer.connect(id, start).await;
            counter.fetch_add(1, Ordering::Relaxed);
            r.map(|c| (c, Instant::now()))
        });
    }
    let mut conns = Vec::with_capacity(a.clients);
    let mut failures = Vec::new();
    let mut last_connack = start;
    let mut connect_times = load::new_histogram();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((c, at))) => {
                last_connack = last_connack.max(at);
                connect_times.saturating_record(c.connect_time.as_nanos().max(1) as u64);
                conns.push(c);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("connect task failed: {e}")),
        }
    }
    ticker.abort();
    let connect_elapsed = last_connack - start;
    progress.note(&format!(
        "{} of {} connected in {:.0} ms; holding {:.1} s",
        conns.len(),
        a.clients,
        connect_elapsed.as_secs_f64() * 1000.0,
        a.hold
    ));
    let cpu = CpuSample::now(a.connect.broker_pid).since(&cpu_start);
    // Hold: ping at half the keep alive, and read what the broker sends.
    let hold_until = Instant::now() + Duration::from_secs_f64(a.hold.max(0.0));
    let ping_every = Duration::from_secs(u64::from(dialer.keep_alive().max(2)) / 2);
    let mut next_ping = Instant::now() + ping_every;
    let mut lost = 0usize;
    loop {
        let now = Instant::now();
        if now >= hold_until {
            break;
        }
        if now >= next_ping {
            next_ping = now + ping_every;
            let mut ping = bytes::BytesMut::new();
            midge_codec::encode(&midge_codec::Packet::PingReq, version, &mut ping)?;
            for c in &conns {
                let _ = c.stream.try_write(&ping);
            }
        }
        tokio::time::sleep_until(hold_until.min(next_ping).into()).await;
    }
    for c in &mut conns {
        let mut scratch = [0u8; 256];
        if let Ok(0) = c.stream.try_read(&mut scratch) {
            lost += 1;
        }
    }
    let rss_after = a.connect.broker_pid.and_then(meter::rss_kib);
    let summary = ConnSummary::new(report::ConnInputs {
        broker: dialer.addr.to_string(),
        version,
        requested: a.clients,
        connected: conns.len(),
        failures,
        closed_during_hold: lost,
        connect_elapsed,
        connect_times: &connect_times,
        rss_before,
        rss_after,
        cpu,
    });
    for c in &mut conns {
        let _ = load::disconnect(c, version).await;
    }
    drop(conns);
    summary.print(a.connect.json)?;
    if summary.connected == 0 {
        bail!("no connection succeeded; the first error: {}", summary.failures.first().map_or("none", |s| s.as_str()));
    }
    if let Some(first) = summary.failures.first() {
        bail!("{} of {} connections failed; the first: {first}", summary.failed, a.clients);
    }
    Ok(())
}
