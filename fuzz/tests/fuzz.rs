//! The fuzz targets on stable Rust: the seed corpus and every regression
//! file first, then a time-bounded random exploration per target.
//!
//! `MIDGE_FUZZ_SECS` (default 5) is the exploration time per target;
//! `MIDGE_FUZZ_SEED` replays a run (the seed is printed either way). A
//! failing input is written under `target/midge-fuzz/` and printed in hex;
//! copying it into `fuzz/regressions/<target>/` makes it a regression test.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbitrary::Unstructured;
use midge_fuzz::{Features, codec};

mod seeds;

/// The broker's tasks run on the thread that runs the input: give it the
/// stack a tokio worker has, so depth-dependent crashes show as they would.
const STACK: usize = 2 * 1024 * 1024;

/// An input slower than this is reported as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Regression files that still fail until a fix elsewhere lands, replayed
/// only by the ignored test below. Empty: none pending.
const PENDING: &[&str] = &[];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where failing inputs are written: the workspace's target directory.
fn out_dir() -> PathBuf {
    let dir = fuzz_dir().join("../target/midge-fuzz");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).ok()?)))
        .collect();
    out.sort();
    out
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    files(&fuzz_dir().join("corpus").join(target))
}

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    files(&fuzz_dir().join("regressions").join(target))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Runs `data` through `target`, turning a panic into an error.
fn run_one(target: &str, data: &[u8], features: &mut Features) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| midge_fuzz::run(target, data, features))) {
        Ok(Some(())) => Ok(()),
        Ok(None) => Err(format!("no target named {target}")),
        Err(payload) => Err(panic_message(&*payload)),
    }
}

/// Writes a failing input where a developer finds it and says how.
fn report(target: &str, data: &[u8], why: &str) -> String {
    let path = out_dir().join(format!("crash-{target}-{:016x}", fxhash(data)));
    let _ = std::fs::write(&path, data);
    format!(
        "{target} failed: {why}\n  input written to {}\n  hex: {}\n  to keep it as a regression: cp {} fuzz/regressions/{target}/",
        path.display(),
        hex(data),
        path.display()
    )
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// Runs `work` on a thread with a tokio worker's stack, waiting for it
/// while watching for an input that hangs.
fn on_fuzz_thread<T: Send + 'static>(
    target: &'static str,
    current: Arc<(Mutex<Vec<u8>>, AtomicU64)>,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name(format!("fuzz-{target}")).stack_size(STACK).spawn(move || {
        let _ = tx.send(work());
    });
    assert!(spawned.is_ok(), "cannot start the fuzz thread");
    let epoch = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the fuzz thread died"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let started = current.1.load(Ordering::Relaxed);
                let running = epoch.elapsed().saturating_sub(Duration::from_millis(started));
                if started != 0 && running > HANG {
                    let input = current.0.lock().map(|i| i.clone()).unwrap_or_default();
                    panic!("{}", report(target, &input, &format!("an input ran for more than {HANG:?}")));
                }
            }
        }
    }
}

#[test]
fn codec_corpus_and_regressions_pass() {
    replay("codec");
}

#[test]
fn broker_corpus_and_regressions_pass() {
    replay("broker");
}

fn replay(target: &'static str) {
    let mut inputs = corpus(target);
    assert!(inputs.len() >= 10, "the {target} seed corpus is missing: run the seed test (see fuzz/README.md)");
    inputs.extend(regressions(target).into_iter().filter(|(name, _)| !PENDING.contains(&name.as_str())));
    let current = Arc::new((Mutex::new(Vec::new()), AtomicU64::new(0)));
    let failures = on_fuzz_thread(target, current, move || {
        let mut failures = Vec::new();
        for (name, data) in &inputs {
            if let Err(why) = run_one(target, data, &mut Features::default()) {
                failures.push(format!("{name}: {}", report(target, data, &why)));
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The regression files waiting for a fix elsewhere.
#[test]
#[ignore = "pending regression files fail until their fixes land; see PENDING"]
fn pending_regressions_pass() {
    for target in midge_fuzz::TARGETS {
        for (name, data) in regressions(target) {
            if PENDING.contains(&name.as_str()) {
                let result = run_one(target, &data, &mut Features::default());
                assert!(result.is_ok(), "{}", report(target, &data, &result.err().unwrap_or_default()));
            }
        }
    }
}

#[test]
fn codec_exploration_finds_no_failure() {
    explore("codec");
}

#[test]
fn broker_exploration_finds_no_failure() {
    explore("broker");
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

struct Stats {
    execs: u64,
    pool: usize,
    features: usize,
    failure: Option<(Vec<u8>, String)>,
}

fn explore(target: &'static str) {
    let secs = env_u64("MIDGE_FUZZ_SECS").unwrap_or(5);
    let seed = env_u64("MIDGE_FUZZ_SEED")
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    println!("{target}: exploring for {secs} s with MIDGE_FUZZ_SEED={seed}");
    let mut pool: Vec<Vec<u8>> = corpus(target).into_iter().chain(regressions(target)).map(|(_, d)| d).collect();
    pool.retain(|_| true);
    let current = Arc::new((Mutex::new(Vec::new()), AtomicU64::new(0)));
    let watched = current.clone();
    let started = Instant::now();
    let stats = on_fuzz_thread(target, watched, move || {
        let epoch = Instant::now();
        let deadline = epoch + Duration::from_secs(secs);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut seen = HashSet::new();
        let mut stats = Stats { execs: 0, pool: 0, features: 0, failure: None };
        // The seeds' features first: only inputs that reach further are kept.
        let mut queue: Vec<Vec<u8>> = std::mem::take(&mut pool);
        let last_input = out_dir().join(format!("last-input-{target}"));
        while let Some(input) =
            queue.pop().or_else(|| (Instant::now() < deadline).then(|| next_input(target, &mut rng, &pool)))
        {
            if let Ok(mut slot) = current.0.lock() {
                slot.clone_from(&input);
            }
            current.1.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            if target == "broker" {
                // A stack overflow aborts the process: this file is then
                // the input that did it.
                let _ = std::fs::write(&last_input, &input);
            }
            let mut features = Features::default();
            let result = run_one(target, &input, &mut features);
            stats.execs += 1;
            if let Err(why) = result {
                stats.failure = Some((input, why));
                break;
            }
            let before = seen.len();
            seen.extend(features.iter());
            if seen.len() > before && pool.len() < 4096 {
                pool.push(input);
            }
        }
        current.1.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_file(&last_input);
        stats.pool = pool.len();
        stats.features = seen.len();
        stats
    });
    let elapsed = started.elapsed();
    println!(
        "{target}: {} executions in {:.1} s ({:.0}/s), {} inputs kept, {} features, MIDGE_FUZZ_SEED={seed}",
        stats.execs,
        elapsed.as_secs_f64(),
        stats.execs as f64 / elapsed.as_secs_f64().max(1e-9),
        stats.pool,
        stats.features
    );
    if let Some((input, why)) = stats.failure {
        panic!("{}\n  replay the run with MIDGE_FUZZ_SEED={seed}", report(target, &input, &why));
    }
}

/// The next input: a mutation of a kept one, or one generated afresh.
fn next_input(target: &str, rng: &mut fastrand::Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    if pool.is_empty() || rng.u8(..4) == 0 {
        let random: Vec<u8> = (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect();
        if target == "codec" {
            return codec::arbitrary_stream(&mut Unstructured::new(&random)).unwrap_or(random);
        }
        return random;
    }
    let mut data = pool[rng.usize(..pool.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        mutate(target, rng, &mut data, pool);
    }
    data.truncate(if target == "codec" { 8192 } else { 4096 });
    data
}

/// Values that sit on the edges of MQTT's fields: zero, the one-byte
/// variable integer limits, all bits.
const INTERESTING: &[u8] = &[0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x30, 0x62, 0x82, 0xA2, 0xE0, 0xF0];

/// Remaining-length encodings at their limits: largest four-byte value,
/// five bytes (never valid), non-minimal zero, a 256 MB claim.
const LENGTHS: &[&[u8]] =
    &[&[0xFF, 0xFF, 0xFF, 0x7F], &[0x80, 0x80, 0x80, 0x80, 0x01], &[0x80, 0x00], &[0x80, 0x80, 0x80, 0x7F]];

fn mutate(target: &str, rng: &mut fastrand::Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = data.len();
    match rng.u8(..10) {
        0 if len > 0 => data[rng.usize(..len)] ^= 1 << rng.u8(..8),
        1 if len > 0 => data[rng.usize(..len)] = INTERESTING[rng.usize(..INTERESTING.len())],
        2 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..=8);
            data.splice(at..at, (0..n).map(|_| rng.u8(..)));
        }
        3 if len > 0 => {
            let at = rng.usize(..len);
            let n = rng.usize(1..=(len - at).min(16));
            data.drain(at..at + n);
        }
        4 if !pool.is_empty() => {
            let other = &pool[rng.usize(..pool.len())];
            let cut = rng.usize(..=len);
            let from = rng.usize(..=other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        5 if len > 0 => {
            let at = rng.usize(..len);
            let n = rng.usize(1..=(len - at).min(64));
            let chunk = data[at..at + n].to_vec();
            let to = rng.usize(..=len);
            data.splice(to..to, chunk);
        }
        6 => {
            // Replace what may be a remaining length (the byte after a
            // packet's first) by an encoding at the edge.
            let at = if len > 1 && rng.bool() { 1 } else { rng.usize(..=len) };
            let end = (at + 1).min(len);
            let edge = LENGTHS[rng.usize(..LENGTHS.len())];
            data.splice(at..end, edge.iter().copied());
        }
        7 if len > 1 => {
            // Nudge what may be a two-byte length or packet id.
            let at = rng.usize(..len - 1);
            let value = u16::from_be_bytes([data[at], data[at + 1]]);
            let nudged = match rng.u8(..4) {
                0 => value.wrapping_add(1),
                1 => value.wrapping_sub(1),
                2 => 0,
                _ => u16::MAX,
            };
            data[at..at + 2].copy_from_slice(&nudged.to_be_bytes());
        }
        8 if target == "codec" => {
            let random: Vec<u8> = (0..rng.usize(0..128)).map(|_| rng.u8(..)).collect();
            let packets = codec::arbitrary_stream(&mut Unstructured::new(&random)).unwrap_or_default();
            let at = rng.usize(..=len);
            data.splice(at..at, packets);
        }
        _ if len > 0 => data[rng.usize(..len)] = rng.u8(..),
        _ => data.push(rng.u8(..)),
    }
}

/// The committed codec seeds are the ones `seeds::codec` builds: a change
/// to the generator without regenerating the files fails here.
#[test]
fn codec_seed_corpus_is_up_to_date() {
    let committed: std::collections::HashMap<String, Vec<u8>> = corpus("codec").into_iter().collect();
    for (name, bytes) in seeds::codec() {
        assert_eq!(committed.get(&name), Some(&bytes), "fuzz/corpus/codec/{name} differs: run write_seed_corpus");
    }
}

/// Writes the seed corpus: `cargo test -p midge-fuzz --test fuzz write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/; run by hand when the seeds change"]
fn write_seed_corpus() {
    let dir = fuzz_dir().join("corpus/codec");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (name, bytes) in seeds::codec() {
        std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("writing a seed: {e}"));
    }
    let dir = fuzz_dir().join("corpus/broker");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (i, bytes) in seeds::broker().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), bytes).unwrap_or_else(|e| panic!("writing a seed: {e}"));
    }
}

/// The detector the broker target relies on: a panic in a spawned task,
/// which tokio swallows, is counted.
#[test]
fn a_panic_in_a_spawned_task_is_counted() {
    midge_fuzz::panics::install_hook();
    let before = midge_fuzz::panics::count();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let task = tokio::spawn(async { panic!("deliberate panic in a task") });
        assert!(task.await.is_err());
    });
    assert_eq!(midge_fuzz::panics::count(), before + 1);
}

/// The codec target fails on a broken invariant: its own checks are not
/// vacuous. A PUBLISH is fine; the same bytes with a trailing half packet
/// are fine too (need more); a target fed a lie about lengths would panic,
/// which `run_one` reports.
#[test]
fn a_failing_target_is_reported_with_its_input() {
    let out = report("codec", &[0x30, 0x03], "example");
    assert!(out.contains("3003") && out.contains("crash-codec-"), "{out}");
    assert!(run_one("codec", &[0x30, 0x03, 0x00, 0x01, b'a', 0x30], &mut Features::default()).is_ok());
    assert!(run_one("nonexistent", &[], &mut Features::default()).is_err());
}

/// Raw MQTT 5 bytes a client sends, for the regressions below.
fn v5_connect(client_id: &str, maximum_packet_size: Option<u32>) -> bytes::BytesMut {
    use midge_codec::*;
    let connect = Connect {
        protocol_version: ProtocolVersion::V5,
        clean_start: true,
        client_id: client_id.to_owned(),
        properties: ConnectProperties { maximum_packet_size, ..ConnectProperties::default() },
        ..Connect::default()
    };
    let mut buf = bytes::BytesMut::new();
    let encoded = encode(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5, &mut buf);
    assert!(encoded.is_ok());
    buf
}

/// Reads packets from `stream` until it closes or `limit` (virtual time).
async fn read_all(stream: &mut tokio::io::DuplexStream, limit: Duration) -> Vec<(usize, midge_codec::Packet)> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        loop {
            // Each packet's own size, however many one read brought.
            let mut before = buf.len();
            while let Ok(Some(p)) = midge_codec::decode(&mut buf, midge_codec::ProtocolVersion::V5, u32::MAX) {
                out.push((before - buf.len(), p));
                before = buf.len();
            }
            if stream.read_buf(&mut buf).await.map_or(true, |n| n == 0) {
                return;
            }
        }
    })
    .await;
    out
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Found by the broker target: a v5 client's Maximum Packet Size bounds
/// every packet the server sends it [MQTT-3.1.2-24]; the server drops the
/// Reason String and User Properties of CONNACK and DISCONNECT to fit
/// [MQTT-3.2.2-19] [MQTT-3.14.2-3]. midge sent a 20-byte CONNACK and a
/// 27-byte DISCONNECT ("server shutting down") to a client that allows 16.
#[test]
fn oversized_connack_and_disconnect() {
    paused_runtime().block_on(async {
        use tokio::io::AsyncWriteExt;
        let broker = midge_broker::Broker::new(midge_broker::BrokerConfig { sys_interval: None, ..Default::default() });
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        broker.serve_connection(theirs, std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
        let sent = ours.write_all(&v5_connect("small", Some(16))).await;
        assert!(sent.is_ok());
        // The CONNACK before the shutdown begins, which would otherwise race
        // the handshake; then the DISCONNECT.
        let mut answers = read_all(&mut ours, Duration::from_millis(100)).await;
        assert!(matches!(answers.first(), Some((_, midge_codec::Packet::ConnAck(_)))), "no CONNACK: {answers:?}");
        let shutdown = broker.shutdown(Duration::from_secs(1));
        let (rest, ()) = tokio::join!(read_all(&mut ours, Duration::from_secs(5)), shutdown);
        assert!(matches!(rest.first(), Some((_, midge_codec::Packet::Disconnect(_)))), "no DISCONNECT: {rest:?}");
        answers.extend(rest);
        for (size, packet) in answers {
            assert!(size <= 16, "a {size}-byte {} to a client that allows 16: {packet:?}", packet.name());
        }
    });
}

/// Issue 21's case through the same in-memory streams: one 10,000-level
/// SUBSCRIBE (the depth limit raised so it reaches the topic index), the
/// subscriber gone, a publish to a deep topic, and the broker still
/// serves. While the index recursed this overflowed the stack and aborted
/// the process.
#[test]
fn a_10000_level_subscribe_does_not_take_the_broker_down() {
    let done = std::thread::Builder::new().stack_size(STACK).spawn(|| {
        paused_runtime().block_on(async {
            use midge_codec::*;
            use tokio::io::AsyncWriteExt;
            let broker = midge_broker::Broker::new(midge_broker::BrokerConfig {
                sys_interval: None,
                max_topic_levels: 100_000,
                ..Default::default()
            });
            let filter = format!("{}#", "+/".repeat(9_999));
            let topic = format!("{}a", "a/".repeat(9_999));
            let (mut subscriber, theirs) = tokio::io::duplex(64 * 1024);
            broker.serve_connection(theirs, std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
            let mut bytes = v5_connect("deep", None);
            let subscribe = Subscribe {
                packet_id: PacketId::MIN,
                properties: SubscribeProperties::default(),
                subscriptions: vec![Subscription { topic_filter: filter, options: SubscriptionOptions::default() }],
            };
            assert!(encode(&Packet::Subscribe(subscribe), ProtocolVersion::V5, &mut bytes).is_ok());
            assert!(subscriber.write_all(&bytes).await.is_ok());
            let _ = read_all(&mut subscriber, Duration::from_secs(1)).await;
            drop(subscriber);
            let (mut publisher, theirs) = tokio::io::duplex(64 * 1024);
            broker.serve_connection(theirs, std::net::SocketAddr::from(([127, 0, 0, 1], 2)));
            let mut bytes = v5_connect("publisher", None);
            let publish = Publish { topic: topic.into(), ..Publish::default() };
            assert!(encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut bytes).is_ok());
            assert!(encode(&Packet::PingReq, ProtocolVersion::V5, &mut bytes).is_ok());
            assert!(publisher.write_all(&bytes).await.is_ok());
            let answers = read_all(&mut publisher, Duration::from_secs(5)).await;
            assert!(answers.iter().any(|(_, p)| *p == Packet::PingResp), "{answers:?}");
            broker.shutdown(Duration::from_secs(1)).await;
        });
    });
    let joined = done.map(|handle| handle.join());
    assert!(matches!(joined, Ok(Ok(()))), "the deep SUBSCRIBE run failed");
}

/// Found by the broker target: a connection ended (here taken over) while
/// a write to its client was half done wrote its whole buffer again, then
/// the DISCONNECT, so the client read the first part twice and a torn
/// stream. What was written must not be written again: the client reads
/// CONNACK, SUBACK, the whole PUBLISH, then DISCONNECT 0x8E.
#[test]
fn a_connection_taken_over_mid_write_does_not_repeat_what_it_wrote() {
    paused_runtime().block_on(async {
        use midge_codec::*;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let broker = midge_broker::Broker::new(midge_broker::BrokerConfig { sys_interval: None, ..Default::default() });
        let peer = |n: u8| std::net::SocketAddr::from(([127, 0, 0, n], 1));
        // A small pipe, which the old client does not read: the broker's
        // write of a large PUBLISH stops part way.
        let (mut old, theirs) = tokio::io::duplex(1024);
        broker.serve_connection(theirs, peer(1));
        let mut bytes = v5_connect("taken", None);
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            properties: SubscribeProperties::default(),
            subscriptions: vec![Subscription { topic_filter: "t".into(), options: SubscriptionOptions::default() }],
        };
        assert!(encode(&Packet::Subscribe(subscribe), ProtocolVersion::V5, &mut bytes).is_ok());
        assert!(old.write_all(&bytes).await.is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;

        let payload = bytes::Bytes::from(vec![b'x'; 100_000]);
        let (mut publisher, theirs) = tokio::io::duplex(256 * 1024);
        broker.serve_connection(theirs, peer(2));
        let mut bytes = v5_connect("publisher", None);
        let publish = Publish { topic: "t".into(), payload: payload.clone(), ..Publish::default() };
        assert!(encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut bytes).is_ok());
        assert!(publisher.write_all(&bytes).await.is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;

        // The takeover ends the old connection while its write waits.
        let (mut new, theirs) = tokio::io::duplex(64 * 1024);
        broker.serve_connection(theirs, peer(3));
        assert!(new.write_all(&v5_connect("taken", None)).await.is_ok());

        let mut stream = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut stream)).await;
        assert!(read.is_ok(), "the old connection was not closed");
        let mut buf = bytes::BytesMut::from(&stream[..]);
        let mut kinds = Vec::new();
        loop {
            match decode(&mut buf, ProtocolVersion::V5, u32::MAX) {
                Ok(Some(Packet::Publish(p))) => {
                    assert!(p.payload == payload, "a PUBLISH of {} bytes, not the one sent", p.payload.len());
                    kinds.push("PUBLISH".to_owned());
                }
                Ok(Some(Packet::Disconnect(d))) => kinds.push(format!("DISCONNECT {:#x}", d.reason_code.as_u8())),
                Ok(Some(p)) => kinds.push(p.name().to_owned()),
                Ok(None) => break,
                Err(e) => panic!("the old client read a torn stream after {kinds:?}: {e}"),
            }
        }
        assert!(buf.is_empty(), "{} bytes of a packet left after {kinds:?}", buf.len());
        assert_eq!(kinds, ["CONNACK", "SUBACK", "PUBLISH", "DISCONNECT 0x8e"]);
        broker.shutdown(Duration::from_secs(1)).await;
    });
}
