//! Persistence [DESIGN seam 6]: what the broker must not lose goes through a
//! [`Store`], an ordered key-value store with group commit.
//!
//! The broker encodes its own records (sessions, queued and in-flight
//! messages, inbound QoS 2 packet ids, retained messages; see
//! `persist.rs`) and hands the store writes in the order they happened.
//! Before it acknowledges anything to a client (PUBACK, PUBREC, PUBCOMP,
//! SUBACK) it waits on [`Store::durable`], which resolves once every write
//! it made before is durable under the store's [`SyncPolicy`]. Many
//! clients' writes share one commit, so waiting costs one disk flush per
//! batch, not per message.
//!
//! [`RedbStore`] keeps the data in one redb file; [`MemoryStore`] keeps it
//! in memory (for tests, and to show what a store must do).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::auth::BoxFuture;

mod redb_store;

pub use redb_store::RedbStore;

/// Records as read: (key, value) in key order.
pub type Records = Vec<(Vec<u8>, Bytes)>;

/// The tables of the store. Keys sort bytewise, so a session's records
/// (keyed by its 8-byte big-endian number first) are one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Session number → the session (client id, expiry, subscriptions, delayed will).
    Sessions,
    /// (session, sequence) → a message queued for the session.
    Queue,
    /// (session, sequence) → packet id and state of a queued message that was sent.
    Inflight,
    /// (session, packet id) → nothing: an inbound QoS 2 message awaiting PUBREL.
    AwaitingRel,
    /// Topic → the retained message.
    Retained,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [Table::Sessions, Table::Queue, Table::Inflight, Table::AwaitingRel, Table::Retained];

    /// The table's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Queue => "queue",
            Table::Inflight => "inflight",
            Table::AwaitingRel => "awaiting_rel",
            Table::Retained => "retained",
        }
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace.
    Put(Table, Vec<u8>, Bytes),
    /// Remove, if present.
    Delete(Table, Vec<u8>),
    /// Remove every key of the table starting with the prefix (a session's
    /// records when it ends).
    DeletePrefix(Table, Vec<u8>),
}

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Acknowledge after the commit holding the write is on disk (fsync).
    /// Commits are shared by everything written meanwhile (group commit).
    Always,
    /// Acknowledge after the write is committed in the process; flush to
    /// disk at this interval. A crash loses at most that much.
    Interval(Duration),
    /// Acknowledge without waiting; commits are flushed to disk when the
    /// engine needs it and at shutdown. A crash may lose recent messages.
    Never,
}

/// A store failure. The broker stops acknowledging rather than pretend.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// An ordered, durable key-value store with group commit.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Queues a write. Writes are applied in the order they are queued.
    fn write(&self, op: StoreOp);

    /// Resolves once every write queued before this call is durable under
    /// the store's sync policy; fails if the store cannot make it so.
    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Calls `visit` with the records of `table` whose keys are in
    /// `start..end` (`end` `None`: to the end of the table), in key order,
    /// until it returns false. Sees what is committed: use it at start-up,
    /// or [`Store::scan`] to see every write queued before.
    fn read(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// The greatest key of `table` in `start..end` (committed, as
    /// [`Store::read`]).
    fn last_key(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` records of `table` with keys in `start..end`, in key
    /// order, including every write queued before this call (a session's
    /// backlog paged back in while new messages are still being written).
    fn scan(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Records, StoreError>>;

    /// Every record of `table`, in key order (at start-up).
    fn load(&self, table: Table) -> Result<Records, StoreError> {
        let mut out = Vec::new();
        self.read(table, &[], None, &mut |key, value| {
            out.push((key.to_vec(), Bytes::copy_from_slice(value)));
            true
        })?;
        Ok(out)
    }

    /// Applies every queued write and makes it durable (at shutdown).
    fn close(&self) -> Result<(), StoreError>;
}

/// A store in memory: nothing survives the process, but a broker built on
/// the same `MemoryStore` finds what the previous one left, which is how
/// recovery is tested without a disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<BTreeMap<(Table, Vec<u8>), Bytes>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Number of records in `table`.
    pub fn len(&self, table: Table) -> usize {
        self.tables.lock().keys().filter(|(t, _)| *t == table).count()
    }

    /// True if the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.tables.lock().is_empty()
    }
}

impl Store for MemoryStore {
    fn write(&self, op: StoreOp) {
        let mut tables = self.tables.lock();
        match op {
            StoreOp::Put(table, key, value) => {
                tables.insert((table, key), value);
            }
            StoreOp::Delete(table, key) => {
                tables.remove(&(table, key));
            }
            StoreOp::DeletePrefix(table, prefix) => {
                tables.retain(|(t, key), _| *t != table || !key.starts_with(&prefix));
            }
        }
    }

    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn read(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let tables = self.tables.lock();
        for ((t, key), value) in tables.range((table, start.to_vec())..) {
            if *t != table || end.is_some_and(|end| key.as_slice() >= end) || !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tables = self.tables.lock();
        Ok(tables.range((table, start.to_vec())..(table, end.to_vec())).next_back().map(|((_, key), _)| key.clone()))
    }

    fn scan(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Records, StoreError>> {
        let tables = self.tables.lock();
        let found = tables
            .range((table, start)..(table, end))
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect();
        Box::pin(async { Ok(found) })
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
