//! store-compare: redb vs fjall on midge's persistent message-store workload.
//!
//! Records are queued messages: key = session (u64 BE) ++ sequence (u64 BE), value ~100 bytes.
//! See README.md for the scenarios and how to run; results land in RESULTS.md.

use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
use std::error::Error;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;
type Key = [u8; 16];

const LIVE: u64 = 1000; // K: records in flight per session (the rolling queue's length)
const SYNC_INTERVAL: Duration = Duration::from_millis(100); // scenario B's durable point
const PAGE: usize = 1000;

fn key(session: u64, seq: u64) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &Key) -> u64 {
    u64::from_be_bytes(k[8..].try_into().unwrap())
}

/// xorshift64*: payload bytes that LZ4 cannot shrink, and the random kill moment.
struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        Rng(t.as_nanos() as u64 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// ~100-byte stored message: 8-byte header (qos, flags, expiry, topic length), topic, 64-byte payload.
fn value(rng: &mut Rng, seq: u64) -> Vec<u8> {
    let topic = format!("sensors/site-{:03}/dev-{:05}/temp", seq % 100, seq % 100_000);
    let mut v = Vec::with_capacity(8 + topic.len() + 64);
    v.extend_from_slice(&[1, 0]);
    v.extend_from_slice(&3600u32.to_be_bytes());
    v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    v.extend_from_slice(topic.as_bytes());
    for _ in 0..8 {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v
}

trait Store {
    /// One atomic transaction: insert `ins`, delete `del`; `durable` = fsync before returning.
    fn commit(&mut self, ins: &[(Key, Vec<u8>)], del: &[Key], durable: bool) -> R<()>;
    /// Make every earlier commit durable.
    fn sync(&mut self) -> R<()>;
    fn count(&self) -> R<u64>;
    /// Up to `limit` records of `session` after key `after`, in key order: (key, value length).
    fn page(&self, session: u64, after: Option<Key>, limit: usize, out: &mut Vec<(Key, usize)>) -> R<()>;
    /// Move data out of memory into the engine's on-disk structures (fjall: flush the memtable).
    fn flush_to_disk(&mut self) -> R<()> {
        Ok(())
    }
}

fn bounds(session: u64, after: &Option<Key>) -> (Key, Key) {
    (after.unwrap_or(key(session, 0)), key(session + 1, 0))
}
fn lower<'a>(after: &Option<Key>, lo: &'a Key) -> Bound<&'a [u8]> {
    if after.is_some() { Bound::Excluded(&lo[..]) } else { Bound::Included(&lo[..]) }
}

// ---------------------------------------------------------------- redb
const MSGS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("msgs");

struct RedbStore(redb::Database);

impl RedbStore {
    fn open(dir: &Path) -> R<Self> {
        let path = dir.join("queue.redb");
        let fresh = !path.exists();
        let db = redb::Database::create(&path)?;
        if fresh {
            let tx = db.begin_write()?;
            tx.open_table(MSGS)?;
            tx.commit()?;
        }
        Ok(RedbStore(db))
    }
}

impl Store for RedbStore {
    fn commit(&mut self, ins: &[(Key, Vec<u8>)], del: &[Key], durable: bool) -> R<()> {
        let mut tx = self.0.begin_write()?;
        tx.set_durability(if durable { redb::Durability::Immediate } else { redb::Durability::None })?;
        {
            let mut t = tx.open_table(MSGS)?;
            for (k, v) in ins {
                t.insert(&k[..], &v[..])?;
            }
            for k in del {
                t.remove(&k[..])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn sync(&mut self) -> R<()> {
        // An empty Immediate commit makes all earlier Durability::None commits durable.
        let mut tx = self.0.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }
    fn count(&self) -> R<u64> {
        Ok(self.0.begin_read()?.open_table(MSGS)?.len()?)
    }
    fn page(&self, session: u64, after: Option<Key>, limit: usize, out: &mut Vec<(Key, usize)>) -> R<()> {
        let (lo, hi) = bounds(session, &after);
        let tx = self.0.begin_read()?;
        let t = tx.open_table(MSGS)?;
        for r in t.range::<&[u8]>((lower(&after, &lo), Bound::Excluded(&hi[..])))?.take(limit) {
            let (k, v) = r?;
            out.push((k.value().try_into()?, v.value().len()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- fjall
struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
    mode: fjall::PersistMode, // what a durable commit uses: SyncAll (fsync) or SyncData (fdatasync)
}

impl FjallStore {
    fn open(dir: &Path, mode: fjall::PersistMode) -> R<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let ks = db.keyspace("msgs", fjall::KeyspaceCreateOptions::default)?;
        Ok(FjallStore { db, ks, mode })
    }
}

impl Store for FjallStore {
    fn commit(&mut self, ins: &[(Key, Vec<u8>)], del: &[Key], durable: bool) -> R<()> {
        // Trap: a WriteBatch with durability None leaves the journal in a user-space BufWriter
        // (lost on a process crash); Some(Buffer) at least hands it to the OS on every commit.
        let mode = if durable { self.mode } else { fjall::PersistMode::Buffer };
        let mut b = self.db.batch().durability(Some(mode));
        for (k, v) in ins {
            b.insert(&self.ks, &k[..], &v[..]);
        }
        for k in del {
            b.remove(&self.ks, &k[..]);
        }
        b.commit()?;
        Ok(())
    }
    fn sync(&mut self) -> R<()> {
        Ok(self.db.persist(self.mode)?)
    }
    fn count(&self) -> R<u64> {
        Ok(self.ks.len()? as u64)
    }
    fn page(&self, session: u64, after: Option<Key>, limit: usize, out: &mut Vec<(Key, usize)>) -> R<()> {
        let (lo, hi) = bounds(session, &after);
        for g in self.ks.range::<&[u8], _>((lower(&after, &lo), Bound::Excluded(&hi[..]))).take(limit) {
            let (k, v) = g.into_inner()?;
            out.push((k[..].try_into()?, v.len()));
        }
        Ok(())
    }
    fn flush_to_disk(&mut self) -> R<()> {
        Ok(self.ks.rotate_memtable_and_wait()?)
    }
}

// ---------------------------------------------------------------- engines
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Redb,
    Fjall,
    FjallSyncData,
}

impl Engine {
    const ALL: [Engine; 3] = [Engine::Redb, Engine::Fjall, Engine::FjallSyncData];
    /// (table name, command-line name)
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Engine::Redb => ("redb", "redb"),
            Engine::Fjall => ("fjall", "fjall"),
            Engine::FjallSyncData => ("fjall (SyncData)", "fjall-syncdata"),
        }
    }
    fn name(self) -> &'static str {
        self.names().0
    }
    fn arg(self) -> &'static str {
        self.names().1
    }
    fn open(self, dir: &Path) -> R<Box<dyn Store>> {
        std::fs::create_dir_all(dir)?;
        Ok(match self {
            Engine::Redb => Box::new(RedbStore::open(dir)?),
            Engine::Fjall => Box::new(FjallStore::open(dir, fjall::PersistMode::SyncAll)?),
            Engine::FjallSyncData => Box::new(FjallStore::open(dir, fjall::PersistMode::SyncData)?),
        })
    }
}

// ---------------------------------------------------------------- rolling queue
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Durable,  // fsync on every commit
    Interval, // no fsync per commit; one durable point every SYNC_INTERVAL
}

enum Limit {
    Time(Duration),
    Records(u64),
}

struct Run {
    records: u64,
    commits: u64,
    elapsed: Duration,
    lat_us: Vec<u64>,
    written: u64, // bytes this process sent towards the disk (/proc/self/io), background threads included
}

/// write_bytes - cancelled_write_bytes from /proc/self/io (0 where unavailable).
fn io_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| -> i64 { io.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0) };
    (field("write_bytes:") - field("cancelled_write_bytes:")).max(0) as u64
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        self.lat_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

const SESSION: u64 = 7;

/// Prefills LIVE records, then each transaction inserts `batch` new records and deletes the
/// `batch` records inserted LIVE records earlier (the acks), so the live set stays at LIVE.
fn rolling(store: &mut dyn Store, batch: u64, mode: Mode, limit: Limit) -> R<Run> {
    let mut rng = Rng::new();
    let mut next = 1;
    while next <= LIVE {
        let ins: Vec<_> =
            (next..(next + PAGE as u64).min(LIVE + 1)).map(|s| (key(SESSION, s), value(&mut rng, s))).collect();
        store.commit(&ins, &[], false)?;
        next += ins.len() as u64;
    }
    store.sync()?;
    let (mut lat_us, mut commits) = (Vec::new(), 0u64);
    let (start, io0) = (Instant::now(), io_written());
    let mut last_sync = start;
    loop {
        let done = match limit {
            Limit::Time(d) => start.elapsed() >= d,
            Limit::Records(n) => next - 1 - LIVE >= n,
        };
        if done {
            break;
        }
        let ins: Vec<_> = (next..next + batch).map(|s| (key(SESSION, s), value(&mut rng, s))).collect();
        let del: Vec<_> = (next - LIVE..next - LIVE + batch).map(|s| key(SESSION, s)).collect();
        let t0 = Instant::now();
        store.commit(&ins, &del, mode == Mode::Durable)?;
        if mode == Mode::Interval && t0.duration_since(last_sync) >= SYNC_INTERVAL {
            store.sync()?; // the writer thread pays for the periodic durable point
            last_sync = Instant::now();
        }
        lat_us.push(t0.elapsed().as_micros() as u64);
        next += batch;
        commits += 1;
    }
    let elapsed = start.elapsed();
    store.sync()?;
    lat_us.sort_unstable();
    Ok(Run { records: next - 1 - LIVE, commits, elapsed, lat_us, written: io_written() - io0 })
}

/// All (key, value length) of a session, read the way a reconnect does: pages of PAGE records.
fn scan(store: &dyn Store, session: u64) -> R<(Vec<Key>, u64)> {
    let (mut keys, mut bytes, mut page) = (Vec::new(), 0u64, Vec::with_capacity(PAGE));
    loop {
        page.clear();
        store.page(session, keys.last().copied(), PAGE, &mut page)?;
        if page.is_empty() {
            return Ok((keys, bytes));
        }
        for (k, n) in &page {
            if keys.last().is_some_and(|l| l >= k) {
                return Err("scan returned keys out of order".into());
            }
            keys.push(*k);
            bytes += *n as u64;
        }
    }
}

/// (allocated bytes, apparent bytes) of a directory tree, as `du` reports them.
fn du(dir: &Path) -> (u64, u64) {
    let d = dir.to_str().unwrap();
    let n = |args: &[&str]| sh("du", args).split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (n(&["-s", "-B1", d]), n(&["-s", "-B1", "--apparent-size", d]))
}

/// Progress on stderr, the table row into the report.
fn row(out: &mut String, line: String) {
    eprint!("{line}");
    out.push_str(&line);
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------- scenarios
/// Every (B, engine) cell is run `repeat` times, interleaved so both engines see the same
/// background noise; the row shown is the median run by records/s, with the min-max range.
fn scenario_ab(out: &mut String, root: &Path, mode: Mode, secs: f64, repeat: usize, engines: &[Engine]) -> R<()> {
    let _ = write!(
        out,
        "| engine | B | records/s (median of {repeat}) | min - max | commits/s | p50 ms | p99 ms | max ms | bytes written/record |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let batches = [1u64, 10, 100];
    let mut runs: Vec<Vec<Run>> = (0..batches.len() * engines.len()).map(|_| Vec::new()).collect();
    for rep in 0..repeat {
        for (bi, &b) in batches.iter().enumerate() {
            for (ei, &e) in engines.iter().enumerate() {
                let dir = root.join(format!("ab-{}-{b}-{rep}", e.arg()));
                let mut s = e.open(&dir)?;
                let r = rolling(s.as_mut(), b, mode, Limit::Time(Duration::from_secs_f64(secs)))?;
                drop(s);
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!("  {} B={b} run {rep}: {:.0} records/s", e.name(), r.per_s(r.records));
                runs[bi * engines.len() + ei].push(r);
            }
        }
    }
    for (i, cell) in runs.iter_mut().enumerate() {
        let (b, e) = (batches[i / engines.len()], engines[i % engines.len()]);
        cell.sort_by(|x, y| x.per_s(x.records).total_cmp(&y.per_s(y.records)));
        let r = &cell[cell.len() / 2];
        let max = r.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0;
        let line = format!(
            "| {} | {b} | {:.0} | {:.0} - {:.0} | {:.0} | {:.3} | {:.3} | {max:.1} | {} |\n",
            e.name(),
            r.per_s(r.records),
            cell[0].per_s(cell[0].records),
            cell[cell.len() - 1].per_s(cell[cell.len() - 1].records),
            r.per_s(r.commits),
            r.pct(0.5),
            r.pct(0.99),
            r.written / r.records.max(1)
        );
        row(out, line);
    }
    Ok(())
}

fn scenario_c(out: &mut String, root: &Path, total: u64, engines: &[Engine]) -> R<()> {
    out.push_str("| engine | records written | write s | MiB written | du after write (apparent) | reopen ms | live records (want 1000) | scan of live set ms | du after reopen |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &e in engines {
        let dir = root.join(format!("c-{}", e.arg()));
        let mut s = e.open(&dir)?;
        let r = rolling(s.as_mut(), 100, Mode::Durable, Limit::Records(total))?;
        let (blocks, apparent) = du(&dir);
        drop(s);
        let t = Instant::now();
        let s = e.open(&dir)?;
        let reopen = t.elapsed();
        let live = s.count()?;
        // Reading the live set back: an LSM tree has to step over the tombstones of the acked records.
        let t = Instant::now();
        let (keys, _) = scan(s.as_ref(), SESSION)?;
        let scan_took = t.elapsed();
        let want: Vec<Key> = (r.records + 1..=r.records + LIVE).map(|q| key(SESSION, q)).collect();
        let live = if live == LIVE && keys == want { format!("{live} ok") } else { format!("{live} FAIL") };
        let (blocks2, _) = du(&dir);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
        let line = format!(
            "| {} | {} | {:.1} | {:.0} | {} ({}) | {} | {live} | {} | {} |\n",
            e.name(),
            r.records,
            r.elapsed.as_secs_f64(),
            r.written as f64 / 1048576.0,
            mib(blocks),
            mib(apparent),
            ms(reopen),
            ms(scan_took),
            mib(blocks2)
        );
        row(out, line);
    }
    Ok(())
}

fn scenario_d(out: &mut String, root: &Path, n: u64, engines: &[Engine]) -> R<()> {
    out.push_str("| engine | records | du | reopen ms | scan ms | records/s | MB/s (values) |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for &e in engines {
        let dir = root.join(format!("d-{}", e.arg()));
        let mut s = e.open(&dir)?;
        let mut rng = Rng::new();
        // Neighbouring sessions, so the scan has to find its range rather than read the whole store.
        for session in [6, 42, 43] {
            let count = if session == 42 { n } else { n / 10 };
            for start in (1..=count).step_by(PAGE) {
                let ins: Vec<_> = (start..(start + PAGE as u64).min(count + 1))
                    .map(|q| (key(session, q), value(&mut rng, q)))
                    .collect();
                s.commit(&ins, &[], false)?;
            }
        }
        s.sync()?;
        s.flush_to_disk()?;
        drop(s);
        let (blocks, _) = du(&dir);
        let t = Instant::now();
        let s = e.open(&dir)?;
        let reopen = t.elapsed();
        let t = Instant::now();
        let (keys, bytes) = scan(s.as_ref(), 42)?;
        let took = t.elapsed();
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
        let ok = keys.len() as u64 == n && keys.iter().enumerate().all(|(i, k)| *k == key(42, i as u64 + 1));
        if !ok {
            return Err(format!("{}: backlog scan returned {} records, want {n}", e.name(), keys.len()).into());
        }
        let line = format!(
            "| {} | {n} | {} | {} | {} | {:.0} | {:.1} |\n",
            e.name(),
            mib(blocks),
            ms(reopen),
            ms(took),
            n as f64 / took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64()
        );
        row(out, line);
    }
    Ok(())
}

const CRASH_BATCH: u64 = 10;

/// Child of scenario E: durable rolling writes, printing the last committed sequence after each commit.
fn child(engine: Engine, dir: &Path, backlog: u64) -> R<()> {
    let mut s = engine.open(dir)?;
    let mut rng = Rng::new();
    // Optionally an offline session's backlog first, so recovery has a bigger store to deal with.
    for start in (1..=backlog).step_by(PAGE) {
        let ins: Vec<_> =
            (start..(start + PAGE as u64).min(backlog + 1)).map(|q| (key(42, q), value(&mut rng, q))).collect();
        s.commit(&ins, &[], false)?;
    }
    s.sync()?;
    let mut stdout = std::io::stdout().lock();
    let (start, mut next) = (Instant::now(), 1u64);
    while start.elapsed() < Duration::from_secs(60) {
        let ins: Vec<_> = (next..next + CRASH_BATCH).map(|q| (key(SESSION, q), value(&mut rng, q))).collect();
        let del: Vec<_> = (next..next + CRASH_BATCH).filter(|q| *q > LIVE).map(|q| key(SESSION, q - LIVE)).collect();
        s.commit(&ins, &del, true)?;
        next += CRASH_BATCH;
        writeln!(stdout, "{}", next - 1)?;
        stdout.flush()?;
    }
    Ok(())
}

fn scenario_e(out: &mut String, root: &Path, backlog: u64, engines: &[Engine]) -> R<bool> {
    out.push_str("| engine | run | other session's backlog | killed after ms | commits acked | last acked seq | recovered max seq | reopen ms | result |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let (mut rng, mut all_ok) = (Rng::new(), true);
    for &e in engines {
        for (run, backlog) in [(1, 0), (2, 0), (3, 0), (4, backlog)] {
            let dir = root.join(format!("e-{}-{run}", e.arg()));
            let mut c = Command::new(std::env::current_exe()?)
                .args(["__child", e.arg(), dir.to_str().unwrap(), &backlog.to_string()])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut rd = BufReader::new(c.stdout.take().unwrap());
            let mut first = String::new();
            rd.read_line(&mut first)?; // the child is open and writing
            let wait = Duration::from_millis(300 + rng.next() % 1500);
            std::thread::sleep(wait);
            c.kill()?; // SIGKILL
            c.wait()?;
            let mut rest = String::new();
            rd.read_to_string(&mut rest)?;
            let text = first + &rest;
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let acked: Vec<u64> = complete.lines().map(|l| l.parse().unwrap()).collect();
            let last = acked.last().copied().unwrap_or(0);
            let t = Instant::now();
            let s = e.open(&dir)?;
            let reopen = t.elapsed();
            let (keys, _) = scan(s.as_ref(), SESSION)?;
            let backlog_ok = scan(s.as_ref(), 42)?.0.len() as u64 == backlog;
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
            // The recovered state must be exactly the state after one commit >= the last acked one:
            // live = (M - LIVE, M], with M a commit boundary.
            let m = keys.last().map_or(0, seq_of);
            let want: Vec<u64> = (m.saturating_sub(LIVE) + 1..=m).collect();
            let got: Vec<u64> = keys.iter().map(seq_of).collect();
            let ok = m >= last && m % CRASH_BATCH == 0 && got == want && backlog_ok;
            all_ok &= ok;
            let verdict = if ok {
                "ok: no acked record lost".to_string()
            } else {
                format!("FAIL: {} records, max {m}, acked {last}, backlog ok: {backlog_ok}", got.len())
            };
            let line = format!(
                "| {} | {run} | {backlog} | {} | {} | {last} | {m} | {} | {verdict} |\n",
                e.name(),
                wait.as_millis(),
                acked.len(),
                ms(reopen)
            );
            row(out, line);
        }
    }
    Ok(all_ok)
}

// ---------------------------------------------------------------- main
/// A snapshot for judging how noisy a section was: machine-wide user CPU and disk writes
/// against this process's own. User time only: the kernel's I/O work for our fsyncs is not noise.
struct Meter {
    user: u64, // user + nice ticks of the whole machine
    mine: u64, // utime + cutime of this process
    disk: u64, // bytes written to the data dir's block device
    io: u64,   // bytes this process sent towards the disk
    at: Instant,
}

fn meter(dev: &str) -> Meter {
    let nums = |l: &str, skip| -> Vec<u64> { l.split_whitespace().skip(skip).filter_map(|f| f.parse().ok()).collect() };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = me.rsplit(')').next().unwrap_or("").split_whitespace().collect(); // after "(comm)"
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let disks = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    let disk = disks.lines().find(|l| l.split_whitespace().nth(2) == Some(dev)).map_or(0, |l| nums(l, 3)[6] * 512);
    let user = nums(stat.lines().next().unwrap_or(""), 1).iter().take(2).sum();
    Meter { user, mine: field(11) + field(13), /* utime, cutime */ disk, io: io_written(), at: Instant::now() }
}

fn noise(out: &mut String, dev: &str, m0: &mut Meter) {
    let m1 = meter(dev);
    let other = (m1.user - m0.user).saturating_sub(m1.mine - m0.mine) as f64 / 100.0; // USER_HZ = 100
    let wall = m1.at.duration_since(m0.at).as_secs_f64();
    let _ = write!(
        out,
        "\n_Noise: other processes used {other:.1} CPU-s of user time in these {wall:.1} s ({:.0}% of one core); \
        the disk took {:.0} MiB of writes, {:.0} MiB of them from this process (reaped child processes included)._\n",
        other / wall * 100.0,
        (m1.disk - m0.disk) as f64 / 1048576.0,
        (m1.io - m0.io) as f64 / 1048576.0
    );
    *m0 = m1;
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn lock_version(name: &str) -> String {
    let lock = include_str!("../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle).map_or("?".into(), |i| lock[i + needle.len()..].split('"').next().unwrap().to_string())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__child") {
        let e = Engine::ALL.into_iter().find(|e| e.arg() == args[2]).ok_or("unknown engine")?;
        return child(e, Path::new(&args[3]), args.get(4).map_or(Ok(0), |n| n.parse())?);
    }
    let (mut parent, mut secs, mut total, mut backlog) = (PathBuf::from("/tmp"), 3.0, 1_000_000u64, 100_000u64);
    let (mut repeat, mut only, mut out_path) = (3usize, "ABCDE".to_string(), None);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => parent = PathBuf::from(v()?),
            "--secs" => secs = v()?.parse()?,
            "--records" => total = v()?.parse()?,
            "--backlog" => backlog = v()?.parse()?,
            "--repeat" => repeat = v()?.parse::<usize>()?.max(1),
            "--only" => only = v()?.to_uppercase(),
            "--out" => out_path = Some(PathBuf::from(v()?)),
            _ => {
                return Err(
                    "usage: store-compare [--dir PARENT] [--secs S] [--records N] [--backlog N] [--repeat N] [--only ABCDE] [--out FILE]".into()
                );
            }
        }
    }
    let root = parent.join(format!("store-compare-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let df = sh("df", &["-T", root.to_str().unwrap()]);
    let df: Vec<&str> = df.lines().nth(1).unwrap_or("").split_whitespace().collect();
    let (dev, fs) = (df.first().map_or("", |d| d.trim_start_matches("/dev/")), df.get(1).copied().unwrap_or(""));
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let both = [Engine::Redb, Engine::Fjall];
    let mut out = String::new();
    let mut m0 = meter(dev);
    let res = (|| -> R<bool> {
        let (run, mut ok) = (|c: char| only.contains(c), true);
        if run('A') {
            out.push_str("## A. Rolling queue, fsync on every commit\n\nEach transaction inserts B records and deletes the B inserted 1000 earlier; \
            redb `Durability::Immediate` (fdatasync), fjall `PersistMode::SyncAll` (fsync) or `SyncData` (fdatasync). Latency = whole transaction.\n\n");
            scenario_ab(
                &mut out,
                &root,
                Mode::Durable,
                secs,
                repeat,
                &[Engine::Redb, Engine::Fjall, Engine::FjallSyncData],
            )?;
            noise(&mut out, dev, &mut m0);
        }
        if run('B') {
            out.push_str("\n## B. Same, without per-commit fsync (durable point every 100 ms)\n\nredb `Durability::None` + an empty `Immediate` commit every 100 ms; \
            fjall batch `durability(Some(PersistMode::Buffer))` + `db.persist(SyncAll)` every 100 ms. The periodic sync is paid by the writer and shows in p99/max.\n\n");
            scenario_ab(&mut out, &root, Mode::Interval, secs, repeat, &both)?;
            noise(&mut out, dev, &mut m0);
        }
        if run('C') {
            let _ = write!(
                out,
                "\n## C. Disk use after {total} records through a 1000-record queue (B = 100, fsync per commit), then reopen\n\n"
            );
            scenario_c(&mut out, &root, total, &both)?;
            noise(&mut out, dev, &mut m0);
        }
        if run('D') {
            let _ = write!(
                out,
                "\n## D. Backlog scan: {backlog} records of one session (+10% each in two neighbour sessions), reopen, scan in pages of {PAGE}\n\n\
            fjall's memtable is flushed to a table file before closing, so the scan reads on-disk tables, not a journal replay. OS page cache is warm for both.\n\n"
            );
            scenario_d(&mut out, &root, backlog, &both)?;
            noise(&mut out, dev, &mut m0);
        }
        if run('E') {
            let _ = write!(
                out,
                "\n## E. Crash recovery: SIGKILL during durable rolling writes (B = 10), reopen, check\n\n\
                Run 4 first writes another session's backlog of {} records, so recovery faces a bigger store. Pass = the \
                recovered state is exactly the state after one commit at or after the last one the child reported as committed.\n\n",
                2 * backlog
            );
            ok = scenario_e(&mut out, &root, 2 * backlog, &both)?;
            noise(&mut out, dev, &mut m0);
        }
        Ok(ok)
    })();
    let _ = std::fs::remove_dir_all(&root);
    let all_ok = res?;
    let load1 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let header = format!(
        "# store-compare results\n\n- date: {}\n- redb {}, fjall {} (lsm-tree {}), rustc release build\n- nproc: {}\n\
        - data dir: {} (file system: {fs})\n- load average before / after: {} / {}\n- command: `{}\n\n",
        sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        lock_version("redb"),
        lock_version("fjall"),
        lock_version("lsm-tree"),
        sh("nproc", &[]),
        root.display(),
        load0.trim(),
        load1.trim(),
        args.join(" ") + if std::env::var_os("CARGO").is_some() { "` (launched by `cargo run`)" } else { "`" }
    );
    let doc = header + &out;
    println!("{doc}");
    std::fs::write(out_path.unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")), &doc)?;
    if !all_ok {
        return Err("crash recovery check failed".into());
    }
    Ok(())
}
