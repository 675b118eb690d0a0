//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 section 4.8.2,
//! offered to 3.1.1 clients too): each message matching the filter goes to
//! one member of the group.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::broker::SessionRef;
use crate::router::Grant;

/// How a group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedStrategy {
    /// Members in turn (the default, as EMQX and HiveMQ do).
    #[default]
    RoundRobin,
    /// A member at random.
    Random,
    /// The same member until it leaves or goes offline.
    Sticky,
}

/// One share group on one topic filter.
#[derive(Debug)]
pub(crate) struct SharedGroup {
    /// `{group}/{filter}`: how stored deliveries name it.
    pub(crate) name: Arc<str>,
    members: Mutex<Vec<(SessionRef, Grant)>>,
    cursor: AtomicUsize,
    sticky: Mutex<Option<SessionRef>>,
    random: AtomicU64,
}

impl SharedGroup {
    pub(crate) fn new(name: &str) -> SharedGroup {
        SharedGroup {
            name: name.into(),
            members: Mutex::new(Vec::new()),
            cursor: AtomicUsize::new(0),
            sticky: Mutex::new(None),
            // xorshift needs a non-zero state.
            random: AtomicU64::new(crate::random_u64() | 1),
        }
    }

    /// Adds a member or replaces its grant.
    pub(crate) fn join(&self, member: SessionRef, grant: Grant) {
        let mut members = self.members.lock();
        match members.iter_mut().find(|(m, _)| *m == member) {
            Some(entry) => entry.1 = grant,
            None => members.push((member, grant)),
        }
    }

    /// Removes a member; returns whether the group is now empty. A member
    /// that leaves is no longer kept as the sticky one either: the group
    /// would otherwise keep its session alive.
    pub(crate) fn leave(&self, member: &SessionRef) -> bool {
        let mut members = self.members.lock();
        members.retain(|(m, _)| m != member);
        let mut sticky = self.sticky.lock();
        if sticky.as_ref() == Some(member) {
            *sticky = None;
        }
        members.is_empty()
    }

    /// Lets go of every member. A member's queue may hold messages that
    /// name this group, and the group holds the member: a cycle of
    /// reference counts that only this breaks, when the broker is dropped.
    pub(crate) fn disband(&self) {
        self.members.lock().clear();
        self.sticky.lock().take();
    }

    /// The member that gets the next message: an online one if there is
    /// any (a message should reach a client that can take it now), else any
    /// member, whose session queues it. `except` is left out (a member
    /// whose connection just ended).
    pub(crate) fn pick(&self, strategy: SharedStrategy, except: Option<&SessionRef>) -> Option<(SessionRef, Grant)> {
        let members = self.members.lock();
        let candidates: Vec<&(SessionRef, Grant)> = members.iter().filter(|(m, _)| Some(m) != except).collect();
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        let online = |i: usize| candidates.get(i % n).is_some_and(|(m, _)| m.0.is_online());
        let chosen = match strategy {
            SharedStrategy::Sticky => {
                let mut sticky = self.sticky.lock();
                if let Some(current) = sticky.as_ref()
                    && let Some(entry) = candidates.iter().find(|(m, _)| m == current && m.0.is_online())
                {
                    return Some((entry.0.clone(), entry.1));
                }
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let i = (start..start + n).find(|&i| online(i)).unwrap_or(start) % n;
                *sticky = candidates.get(i).map(|(m, _)| m.clone());
                i
            }
            SharedStrategy::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let i = (start..start + n).find(|&i| online(i)).unwrap_or(start) % n;
                // Continue after the one chosen, so skipped offline members
                // do not make one online member take two turns in a row.
                self.cursor.store(i + 1, Ordering::Relaxed);
                i
            }
            SharedStrategy::Random => {
                // Reduced first: a random start near usize::MAX would overflow `start + n`.
                let start = self.next_random() as usize % n;
                (start..start + n).find(|&i| online(i)).unwrap_or(start) % n
            }
        };
        candidates.get(chosen).map(|(m, grant)| (m.clone(), *grant))
    }

    /// xorshift64*: enough to spread messages, no `rand` dependency.
    fn next_random(&self) -> u64 {
        let mut x = self.random.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 16
    }
}

impl PartialEq for SharedGroup {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// What a topic-index entry stands for.
#[derive(Debug, Clone)]
pub(crate) enum Subscriber {
    /// A session's own subscription.
    Session(SessionRef),
    /// A share group: one member gets each message.
    Shared(Arc<SharedGroup>),
}

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Subscriber::Session(a), Subscriber::Session(b)) => a == b,
            (Subscriber::Shared(a), Subscriber::Shared(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
