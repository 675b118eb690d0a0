//! Login throttling per client address, so that password guessing from one
//! address costs the guesser time and cannot crowd out everyone else.
//!
//! Two rules, both per address (IPv4 address, IPv6 /64):
//! - at most [`LoginLimits::concurrent`] logins from it are checked at a
//!   time; the rest wait their turn. Password hashing is slow on purpose and
//!   runs on a few threads; without this, one address opening hundreds of
//!   connections at once would queue hundreds of hash checks ahead of
//!   every other client.
//! - after a failed login, further attempts from it are spaced: the gap
//!   doubles with each failure, from [`LoginLimits::initial_delay`] up to
//!   [`LoginLimits::max_delay`]. An attempt that would wait longer than
//!   [`LoginLimits::max_wait`] is refused at once (v5 0x9F Connection rate
//!   exceeded, 3.x "server unavailable"). Failures are forgotten
//!   [`LoginLimits::forget_after`] the last one. A success does not clear
//!   them, so one known account cannot be used to reset the count.
//!
//! Addresses with no failures and no login in progress take no memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock, so tests can run it paused.
use tokio::time::Instant;

/// Limits on login attempts from one address. See the module notes.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Logins from one address checked at the same time. Default 8.
    pub concurrent: usize,
    /// Gap between attempts after the first failure; doubles per failure.
    /// Default 100 ms. Zero turns the spacing off.
    pub initial_delay: Duration,
    /// Largest gap between attempts. Default 5 s.
    pub max_delay: Duration,
    /// An attempt that would have to wait longer is refused at once.
    /// Default 30 s.
    pub max_wait: Duration,
    /// Failures are forgotten this long after the last one. Default 5 min.
    pub forget_after: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            concurrent: 8,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_wait: Duration::from_secs(30),
            forget_after: Duration::from_secs(300),
        }
    }
}

impl LoginLimits {
    /// The gap after `failures` recent failures.
    fn spacing(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doubled = self.initial_delay.saturating_mul(1 << (failures - 1).min(20));
        doubled.min(self.max_delay)
    }
}

/// The part of an address that identifies one client network: an IPv6 host
/// can pick any address in its /64, so that is the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AddressKey(IpAddr);

impl AddressKey {
    pub(crate) fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(_) => AddressKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    AddressKey(IpAddr::V6(Ipv6Addr::from(bits)))
                }
            },
        }
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    gate: Arc<Semaphore>,
    failures: u32,
    last_failure: Instant,
    /// The earliest time the next attempt may be checked.
    next_slot: Instant,
}

/// What [`LoginThrottle::admit`] decided.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Check the login now; report the outcome on the ticket.
    Go(Ticket),
    /// Too many recent failures from this address: refuse without checking.
    Refuse,
}

/// Per-address login state, shared by all listeners.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    limits: LoginLimits,
    entries: Mutex<HashMap<AddressKey, Entry>>,
}

impl LoginThrottle {
    pub(crate) fn new(limits: LoginLimits) -> Arc<LoginThrottle> {
        Arc::new(LoginThrottle { limits, entries: Mutex::new(HashMap::new()) })
    }

    /// Waits for this address's turn to have a login checked.
    pub(crate) async fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let key = AddressKey::of(ip);
        let deadline = Instant::now() + self.limits.max_wait;
        let gate = {
            let mut entries = self.entries.lock();
            let entry = entries.entry(key).or_insert_with(|| Entry {
                gate: Arc::new(Semaphore::new(self.limits.concurrent.max(1))),
                failures: 0,
                last_failure: Instant::now(),
                next_slot: Instant::now(),
            });
            entry.gate.clone()
        };
        // The slot is taken only once through the gate, so that attempts
        // queued there see the failures of those before them.
        let permit = match tokio::time::timeout_at(deadline, gate.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                self.tidy(key);
                return Admission::Refuse;
            }
        };
        let ticket = Ticket { throttle: self.clone(), key, permit: Some(permit) };
        let now = Instant::now();
        let slot = self.entries.lock().get_mut(&key).map(|entry| {
            if entry.failures > 0 && now.duration_since(entry.last_failure) >= self.limits.forget_after {
                entry.failures = 0;
            }
            let slot = entry.next_slot.max(now);
            if slot <= deadline {
                entry.next_slot = slot + self.limits.spacing(entry.failures);
            }
            slot
        });
        // (The entry is there: the ticket's permit keeps it.)
        let slot = slot.unwrap_or(now);
        if slot > deadline {
            return Admission::Refuse;
        }
        tokio::time::sleep_until(slot).await;
        Admission::Go(ticket)
    }

    /// Drops the address's entry once it holds nothing worth keeping.
    fn tidy(&self, key: AddressKey) {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get(&key)
            && entry.failures == 0
            && entry.gate.available_permits() == self.limits.concurrent.max(1)
        {
            entries.remove(&key);
        }
    }

    fn failed(&self, key: AddressKey) -> u32 {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        // The entry exists: the failing login's ticket still holds a permit.
        let Some(entry) = entries.get_mut(&key) else { return 0 };
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        // Let the next attempt wait at least the new gap.
        entry.next_slot = entry.next_slot.max(now + self.limits.spacing(entry.failures));
        entry.failures
    }
}

/// A login being checked; dropping it lets the address's next one in.
#[derive(Debug)]
pub(crate) struct Ticket {
    throttle: Arc<LoginThrottle>,
    key: AddressKey,
    permit: Option<OwnedSemaphorePermit>,
}

impl Ticket {
    /// Records a failed login; returns the address's recent failures and
    /// the gap now imposed on its attempts.
    pub(crate) fn failed(&self) -> (u32, Duration) {
        let failures = self.throttle.failed(self.key);
        (failures, self.throttle.limits.spacing(failures))
    }

    pub(crate) fn address(&self) -> AddressKey {
        self.key
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.throttle.tidy(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            concurrent: 2,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_wait: Duration::from_secs(1),
            forget_after: Duration::from_secs(60),
        }
    }

    fn go(admission: Admission) -> Ticket {
        match admission {
            Admission::Go(ticket) => ticket,
            Admission::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn ipv6_addresses_are_grouped_by_64_and_mapped_v4_is_v4() {
        let a = AddressKey::of("2001:db8::1".parse().unwrap());
        let b = AddressKey::of("2001:db8::ffff:1234".parse().unwrap());
        let c = AddressKey::of("2001:db8:0:1::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(AddressKey::of("::ffff:10.0.0.1".parse().unwrap()), AddressKey::of("10.0.0.1".parse().unwrap()));
        assert_eq!(a.to_string(), "2001:db8::/64");
    }

    #[test]
    fn spacing_doubles_up_to_the_maximum() {
        let l = limits();
        assert_eq!(l.spacing(0), Duration::ZERO);
        assert_eq!(l.spacing(1), Duration::from_millis(100));
        assert_eq!(l.spacing(2), Duration::from_millis(200));
        assert_eq!(l.spacing(3), Duration::from_millis(400));
        assert_eq!(l.spacing(60), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_space_attempts_and_a_long_queue_is_refused() {
        let throttle = LoginThrottle::new(limits());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let start = tokio::time::Instant::now();
        let first = go(throttle.admit(ip).await);
        assert_eq!(first.failed(), (1, Duration::from_millis(100)));
        drop(first);
        // Another address is not affected.
        drop(go(throttle.admit(other).await));
        assert_eq!(start.elapsed(), Duration::ZERO);
        let second = go(throttle.admit(ip).await);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(second.failed().0, 2);
        drop(second);
        // Queued attempts take 200 ms slots; those past max_wait (1 s) are refused at once.
        let attempts: Vec<_> = (0..10)
            .map(|_| {
                let throttle = throttle.clone();
                tokio::spawn(async move { matches!(throttle.admit(ip).await, Admission::Go(_)) })
            })
            .collect();
        let mut refused = 0;
        for attempt in attempts {
            if !attempt.await.unwrap() {
                refused += 1;
            }
        }
        assert_eq!(refused, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_logins_per_address_are_limited() {
        let throttle = LoginThrottle::new(limits());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let a = go(throttle.admit(ip).await);
        let b = go(throttle.admit(ip).await);
        let third = tokio::spawn({
            let throttle = throttle.clone();
            async move { matches!(throttle.admit(ip).await, Admission::Go(_)) }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        assert!(third.await.unwrap());
        drop(b);
        assert!(throttle.entries.lock().is_empty(), "no failures, nothing in flight: no entry kept");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_forgotten() {
        let throttle = LoginThrottle::new(limits());
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let ticket = go(throttle.admit(ip).await);
        ticket.failed();
        drop(ticket);
        tokio::time::advance(Duration::from_secs(61)).await;
        let start = tokio::time::Instant::now();
        let ticket = go(throttle.admit(ip).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(ticket.failed().0, 1);
    }
}
