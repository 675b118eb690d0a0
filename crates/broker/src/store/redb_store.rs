//! The on-disk store: one redb file, written by one thread that commits
//! whatever has queued up since its last commit as one transaction (group
//! commit). Why redb: docs/persistence.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use tokio::sync::oneshot;

use super::{Records, Store, StoreError, StoreOp, SyncPolicy, Table};
use crate::auth::BoxFuture;

/// How often the `never` policy still flushes: redb frees the pages of
/// deleted records only at a durable commit, so without one the file grows.
const NEVER_FLUSH: Duration = Duration::from_secs(30);

/// Memory redb may use to cache pages. Its default (1 GiB) would let the
/// broker's memory grow with the traffic it stores; the backlog is read
/// sequentially and the OS caches the file anyway.
const CACHE_SIZE: usize = 32 * 1024 * 1024;

/// After deletes, how long the store must be idle before the writer
/// considers compacting the file.
const IDLE_BEFORE_COMPACTING: Duration = Duration::from_secs(2);

/// Files smaller than this are not compacted: the space is reused anyway.
const COMPACT_ABOVE: u64 = 16 * 1024 * 1024;

/// Nor are files with more live data than this: compacting copies it, and
/// writes wait meanwhile.
const COMPACT_AT_MOST: u64 = 256 * 1024 * 1024;

/// Writes taken into one transaction at most, so one commit stays short.
const MAX_BATCH: usize = 50_000;

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A [`Store::scan`], answered by the writer after it commits what was
/// queued before it, so the read sees those writes.
struct Scan {
    table: Table,
    start: Vec<u8>,
    end: Vec<u8>,
    limit: usize,
    done: oneshot::Sender<Result<Records, String>>,
}

enum Command {
    Op(StoreOp),
    Barrier(oneshot::Sender<Result<(), String>>),
    Scan(Scan),
    Close(mpsc::Sender<Result<(), String>>),
}

/// Writes queued and writes made good, so that [`Store::durable`] can
/// answer at once, without a trip to the writer, when nothing is pending:
/// the usual case for a publisher whose messages went to no stored session.
#[derive(Debug, Default)]
struct Progress {
    /// Writes queued (counted before each is sent).
    queued: AtomicU64,
    /// Writes whose commit satisfies the sync policy.
    done: AtomicU64,
}

/// The redb store.
pub struct RedbStore {
    path: PathBuf,
    policy: SyncPolicy,
    /// Shared by reads and the writer; the writer takes it alone only to
    /// compact the file.
    db: Arc<RwLock<Database>>,
    progress: Arc<Progress>,
    tx: Mutex<Option<Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).field("policy", &self.policy).finish()
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`. A file redb cannot
    /// read is an error, never an empty start.
    pub fn open(path: &Path, policy: SyncPolicy) -> Result<RedbStore, StoreError> {
        let db = Database::builder().set_cache_size(CACHE_SIZE).create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                "the store {} is in use by another process (one broker per data directory)",
                path.display()
            )),
            e => StoreError(format!(
                "cannot open the store {}: {e}. If the file is damaged, move it (or its directory) aside and \
                 start again; see docs/persistence.md",
                path.display()
            )),
        })?;
        // Every table exists from the start, so reads never meet a missing one.
        let txn = db.begin_write().map_err(|e| StoreError(format!("store {}: {e}", path.display())))?;
        for table in Table::ALL {
            txn.open_table(definition(table)).map_err(|e| StoreError(format!("store {}: {e}", path.display())))?;
        }
        txn.commit().map_err(|e| StoreError(format!("store {}: {e}", path.display())))?;
        let db = Arc::new(RwLock::new(db));
        let progress = Arc::new(Progress::default());
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (db, progress) = (db.clone(), progress.clone());
            let path = path.to_owned();
            std::thread::Builder::new()
                .name("midge-store".into())
                .spawn(move || write_loop(&db, &path, &rx, policy, &progress))
                .map_err(|e| StoreError(format!("cannot start the store writer: {e}")))?
        };
        Ok(RedbStore {
            path: path.to_owned(),
            policy,
            db,
            progress,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, command: Command) -> bool {
        self.tx.lock().as_ref().is_some_and(|tx| tx.send(command).is_ok())
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // The writer commits what it has and lets go of the file.
        self.tx.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Store for RedbStore {
    fn write(&self, op: StoreOp) {
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        if !self.send(Command::Op(op)) {
            tracing::error!("store is closed; a write was dropped");
        }
    }

    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        // Every write queued before this call is already made good.
        let caught_up = self.progress.done.load(Ordering::SeqCst) >= self.progress.queued.load(Ordering::SeqCst);
        if self.policy == SyncPolicy::Never || caught_up {
            return Box::pin(async { Ok(()) });
        }
        let (done, wait) = oneshot::channel();
        let sent = self.send(Command::Barrier(done));
        Box::pin(async move {
            if !sent {
                return Err(StoreError("the store is closed".into()));
            }
            match wait.await {
                Ok(result) => result.map_err(StoreError),
                Err(_) => Err(StoreError("the store writer stopped".into())),
            }
        })
    }

    fn read(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        read(&self.db.read(), table, start, end, visit)
            .map_err(|e| StoreError(format!("reading {} from {}: {e}", table.name(), self.path.display())))
    }

    fn last_key(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError(format!("reading {} from {}: {e}", table.name(), self.path.display()))
        };
        let txn = self.db.read().begin_read().map_err(|e| fail(&e))?;
        let t = txn.open_table(definition(table)).map_err(|e| fail(&e))?;
        let last = t.range(start..end).map_err(|e| fail(&e))?.next_back();
        match last {
            None => Ok(None),
            Some(entry) => Ok(Some(entry.map_err(|e| fail(&e))?.0.value().to_vec())),
        }
    }

    fn scan(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Records, StoreError>> {
        let (done, wait) = oneshot::channel();
        let sent = self.send(Command::Scan(Scan { table, start, end, limit, done }));
        let path = self.path.clone();
        Box::pin(async move {
            if !sent {
                return Err(StoreError("the store is closed".into()));
            }
            match wait.await {
                Ok(result) => {
                    result.map_err(|e| StoreError(format!("reading {} from {}: {e}", table.name(), path.display())))
                }
                Err(_) => Err(StoreError("the store writer stopped".into())),
            }
        })
    }

    fn close(&self) -> Result<(), StoreError> {
        let (done, wait) = mpsc::channel();
        let sent = self.send(Command::Close(done));
        // No more writes after this one.
        self.tx.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        if sent { wait.recv().unwrap_or(Ok(())).map_err(StoreError) } else { Ok(()) }
    }
}

fn read(
    db: &Database,
    table: Table,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let t = txn.open_table(definition(table)).map_err(|e| e.to_string())?;
    let range = match end {
        Some(end) => t.range(start..end),
        None => t.range(start..),
    };
    for entry in range.map_err(|e| e.to_string())? {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        if !visit(k.value(), v.value()) {
            break;
        }
    }
    Ok(())
}

fn answer(db: &Database, scan: Scan) {
    let mut found = Vec::new();
    let result = read(db, scan.table, &scan.start, Some(&scan.end), &mut |key, value| {
        found.push((key.to_vec(), Bytes::copy_from_slice(value)));
        found.len() < scan.limit
    });
    let _ = scan.done.send(result.map(|()| found));
}

/// The writer thread: waits for work, takes everything queued, commits it
/// as one transaction, then answers the barriers and scans that were
/// queued with it.
///
/// When deletes have freed much of the file and the store has been idle
/// for a while, it compacts the file, so disk use follows the live data
/// rather than the largest backlog there ever was.
fn write_loop(db: &RwLock<Database>, path: &Path, rx: &Receiver<Command>, policy: SyncPolicy, progress: &Progress) {
    let flush_every = match policy {
        SyncPolicy::Always => None,
        SyncPolicy::Interval(every) => Some(every.max(Duration::from_millis(1))),
        SyncPolicy::Never => Some(NEVER_FLUSH),
    };
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    let mut batch = Vec::new();
    let mut barriers = Vec::new();
    let mut scans = Vec::new();
    let mut closing = None;
    // Deletes were committed since the file was last looked at for compaction.
    let mut deleted = false;
    let mut last_command = Instant::now();
    loop {
        let flush_in = flush_every.map(|every| every.saturating_sub(last_flush.elapsed()));
        let wait = match (flush_in, deleted) {
            (Some(flush), true) => Some(flush.min(IDLE_BEFORE_COMPACTING)),
            (Some(flush), false) => Some(flush),
            (None, true) => Some(IDLE_BEFORE_COMPACTING),
            (None, false) => None,
        };
        let first = match wait {
            None => rx.recv().ok(),
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(command) => {
                    last_command = Instant::now();
                    Some(command)
                }
                Err(RecvTimeoutError::Timeout) => {
                    if flush_every.is_some_and(|every| last_flush.elapsed() >= every) {
                        if unflushed {
                            let result = commit(&db.read(), &mut Vec::new(), Durability::Immediate);
                            if let Err(e) = result {
                                tracing::error!("store flush failed: {e}");
                            }
                            unflushed = false;
                        }
                        last_flush = Instant::now();
                    }
                    if deleted && last_command.elapsed() >= IDLE_BEFORE_COMPACTING {
                        compact_if_worth_it(&mut db.write(), path);
                        deleted = false;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            },
        };
        let Some(first) = first else {
            // Every sender is gone without a close: flush what there is.
            let _ = commit(&db.read(), &mut batch, Durability::Immediate);
            return;
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(command) = next {
            match command {
                Command::Op(op) => {
                    deleted |= !matches!(op, StoreOp::Put(..));
                    batch.push(op);
                    taken += 1;
                }
                Command::Barrier(done) => barriers.push(done),
                Command::Scan(scan) => scans.push(scan),
                Command::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        let durable = closing.is_some()
            || match flush_every {
                None => true,
                Some(every) => last_flush.elapsed() >= every,
            };
        let result = if batch.is_empty() && !(durable && unflushed) {
            Ok(())
        } else {
            commit(&db.read(), &mut batch, if durable { Durability::Immediate } else { Durability::None })
        };
        if result.is_ok() {
            progress.done.fetch_add(taken, Ordering::SeqCst);
        }
        match &result {
            Ok(()) if durable => {
                unflushed = false;
                last_flush = Instant::now();
            }
            Ok(()) => unflushed = true,
            Err(e) => tracing::error!("store commit failed: {e}; the writes in it are not acknowledged"),
        }
        for done in barriers.drain(..) {
            let _ = done.send(result.clone());
        }
        for scan in scans.drain(..) {
            match &result {
                Ok(()) => answer(&db.read(), scan),
                Err(e) => {
                    let _ = scan.done.send(Err(e.clone()));
                }
            }
        }
        if let Some(done) = closing.take() {
            let _ = done.send(result);
            return;
        }
    }
}

/// Compacts the file if less than half of it is in use (and what is in use
/// is small enough to copy quickly).
fn compact_if_worth_it(db: &mut Database, path: &Path) {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if size < COMPACT_ABOVE {
        return;
    }
    let stats = db.begin_write().and_then(|txn| {
        let stats = txn.stats();
        txn.abort()?;
        Ok(stats?)
    });
    let used = match stats {
        Ok(stats) => stats.allocated_pages() * stats.page_size() as u64,
        Err(e) => {
            tracing::warn!("store: cannot read its statistics: {e}");
            return;
        }
    };
    if used * 2 > size || used > COMPACT_AT_MOST {
        return;
    }
    let started = Instant::now();
    match db.compact() {
        Ok(_) => {
            let after = std::fs::metadata(path).map_or(0, |m| m.len());
            tracing::info!(
                "store compacted from {} to {} MiB in {} ms",
                size >> 20,
                after >> 20,
                started.elapsed().as_millis()
            );
        }
        Err(e) => tracing::warn!("store compaction failed: {e}"),
    }
}

fn commit(db: &Database, batch: &mut Vec<StoreOp>, durability: Durability) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(durability).map_err(|e| e.to_string())?;
    {
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            tables.push((table, txn.open_table(definition(table)).map_err(|e| e.to_string())?));
        }
        for op in batch.drain(..) {
            match op {
                StoreOp::Put(table, key, value) => {
                    opened(&mut tables, table)?.insert(key.as_slice(), &value[..]).map_err(|e| e.to_string())?;
                }
                StoreOp::Delete(table, key) => {
                    opened(&mut tables, table)?.remove(key.as_slice()).map_err(|e| e.to_string())?;
                }
                StoreOp::DeletePrefix(table, prefix) => {
                    let t = opened(&mut tables, table)?;
                    let mut end = prefix.clone();
                    // The smallest key after every key with the prefix (the
                    // prefixes used are session numbers, never all 0xFF).
                    if let Some(last) = end.iter_mut().rev().find(|b| **b != 0xFF) {
                        *last += 1;
                    }
                    t.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// The open table for `table` (every table is opened, so never an error).
fn opened<T>(tables: &mut [(Table, T)], table: Table) -> Result<&mut T, String> {
    let found = tables.iter_mut().find(|(t, _)| *t == table).map(|(_, open)| open);
    found.ok_or_else(|| format!("the {} table is not open", table.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("midge-redb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn writes_survive_reopening_and_prefixes_delete_one_session() {
        let dir = dir("reopen");
        let path = dir.join("store.redb");
        let store = RedbStore::open(&path, SyncPolicy::Always).unwrap();
        let key = |sid: u64, seq: u64| [sid.to_be_bytes(), seq.to_be_bytes()].concat();
        for seq in 0..100 {
            store.write(StoreOp::Put(Table::Queue, key(1, seq), Bytes::from(format!("m{seq}"))));
            store.write(StoreOp::Put(Table::Queue, key(2, seq), Bytes::from(format!("n{seq}"))));
        }
        store.write(StoreOp::Delete(Table::Queue, key(1, 0)));
        store.write(StoreOp::DeletePrefix(Table::Queue, 2u64.to_be_bytes().to_vec()));
        store.write(StoreOp::Put(Table::Retained, b"a/b".to_vec(), Bytes::from_static(b"r")));
        store.durable().await.unwrap();
        drop(store);
        let store = RedbStore::open(&path, SyncPolicy::Always).unwrap();
        let queue = store.load(Table::Queue).unwrap();
        assert_eq!(queue.len(), 99);
        assert_eq!(queue[0], (key(1, 1), Bytes::from_static(b"m1")));
        assert_eq!(store.load(Table::Retained).unwrap().len(), 1);
        store.close().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_start() {
        let dir = dir("damaged");
        let path = dir.join("store.redb");
        std::fs::write(&path, vec![0x5Au8; 64 * 1024]).unwrap();
        let error = RedbStore::open(&path, SyncPolicy::Always).unwrap_err();
        assert!(error.0.contains("move it (or its directory) aside"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_file_shrinks_once_a_backlog_is_gone() {
        let dir = dir("compact");
        let path = dir.join("store.redb");
        let store = RedbStore::open(&path, SyncPolicy::Always).unwrap();
        let key = |seq: u64| [1u64.to_be_bytes(), seq.to_be_bytes()].concat();
        let value = Bytes::from(vec![7u8; 1000]);
        for seq in 0..24_000 {
            store.write(StoreOp::Put(Table::Queue, key(seq), value.clone()));
        }
        store.durable().await.unwrap();
        let full = std::fs::metadata(&path).unwrap().len();
        assert!(full > COMPACT_ABOVE, "{full}");
        store.write(StoreOp::DeletePrefix(Table::Queue, 1u64.to_be_bytes().to_vec()));
        store.write(StoreOp::Put(Table::Queue, key(1), value.clone()));
        store.durable().await.unwrap();
        // The writer compacts after IDLE_BEFORE_COMPACTING without writes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let size = loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size < full / 4 || Instant::now() > deadline {
                break size;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(size < full / 4, "still {size} bytes of {full}");
        assert_eq!(store.load(Table::Queue).unwrap(), vec![(key(1), value)], "what was live is still there");
        store.close().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
