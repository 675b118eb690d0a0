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
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{Store, StoreError, StoreOp, SyncPolicy, Table};
use crate::auth::BoxFuture;

/// How often the `never` policy still flushes: redb frees the pages of
/// deleted records only at a durable commit, so without one the file grows.
const NEVER_FLUSH: Duration = Duration::from_secs(30);

/// Writes taken into one transaction at most, so one commit stays short.
const MAX_BATCH: usize = 50_000;

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

enum Command {
    Op(StoreOp),
    Barrier(oneshot::Sender<Result<(), String>>),
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
    db: Arc<Database>,
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
        let db = Database::builder().create(path).map_err(|e| match e {
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
        let db = Arc::new(db);
        let progress = Arc::new(Progress::default());
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (db, progress) = (db.clone(), progress.clone());
            std::thread::Builder::new()
                .name("midge-store".into())
                .spawn(move || write_loop(&db, &rx, policy, &progress))
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

    fn load(&self, table: Table) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError(format!("reading {} from {}: {e}", table.name(), self.path.display()))
        };
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let t = txn.open_table(definition(table)).map_err(|e| fail(&e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| fail(&e))? {
            let (k, v) = entry.map_err(|e| fail(&e))?;
            out.push((k.value().to_vec(), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
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

/// The writer thread: waits for work, takes everything queued, commits it
/// as one transaction, then answers the barriers that were queued with it.
fn write_loop(db: &Database, rx: &Receiver<Command>, policy: SyncPolicy, progress: &Progress) {
    let flush_every = match policy {
        SyncPolicy::Always => None,
        SyncPolicy::Interval(every) => Some(every.max(Duration::from_millis(1))),
        SyncPolicy::Never => Some(NEVER_FLUSH),
    };
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    let mut batch = Vec::new();
    let mut barriers = Vec::new();
    let mut closing = None;
    loop {
        let first = match flush_every {
            None => rx.recv().ok(),
            Some(every) => {
                let wait = every.saturating_sub(last_flush.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => {
                        if unflushed {
                            let result = commit(db, &mut Vec::new(), Durability::Immediate);
                            if let Err(e) = result {
                                tracing::error!("store flush failed: {e}");
                            }
                            unflushed = false;
                        }
                        last_flush = Instant::now();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(first) = first else {
            // Every sender is gone without a close: flush what there is.
            let _ = commit(db, &mut batch, Durability::Immediate);
            return;
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(command) = next {
            match command {
                Command::Op(op) => {
                    batch.push(op);
                    taken += 1;
                }
                Command::Barrier(done) => barriers.push(done),
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
            commit(db, &mut batch, if durable { Durability::Immediate } else { Durability::None })
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
        if let Some(done) = closing.take() {
            let _ = done.send(result);
            return;
        }
    }
}

fn commit(db: &Database, batch: &mut Vec<StoreOp>, durability: Durability) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(durability).map_err(|e| e.to_string())?;
    {
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            tables.push(txn.open_table(definition(table)).map_err(|e| e.to_string())?);
        }
        let index = |table: Table| Table::ALL.iter().position(|t| *t == table).expect("every table is listed");
        for op in batch.drain(..) {
            match op {
                StoreOp::Put(table, key, value) => {
                    tables[index(table)].insert(key.as_slice(), &value[..]).map_err(|e| e.to_string())?;
                }
                StoreOp::Delete(table, key) => {
                    tables[index(table)].remove(key.as_slice()).map_err(|e| e.to_string())?;
                }
                StoreOp::DeletePrefix(table, prefix) => {
                    let t = &mut tables[index(table)];
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
}
