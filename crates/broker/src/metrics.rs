//! One set of counters feeds `$SYS`, and later Prometheus and the dashboard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Broker-wide counters. Relaxed atomics: each is an independent tally.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Network connections open now (before or after CONNECT).
    pub connections_current: AtomicU64,
    /// Clients connected now (CONNACK sent, not yet closed).
    pub clients_connected: AtomicU64,
    /// Highest `clients_connected` seen.
    pub clients_maximum: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Control packets received.
    pub packets_received: AtomicU64,
    /// Control packets sent.
    pub packets_sent: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// PUBLISH packets received from clients.
    pub publish_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub publish_sent: AtomicU64,
    /// Messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages not queued for an offline client.
    pub dropped_qos0_offline: AtomicU64,
    /// Messages larger than the receiving client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// PUBLISH packets (and wills) the authorizer refused.
    pub publish_denied: AtomicU64,
    /// Subscriptions the authorizer refused.
    pub subscribe_denied: AtomicU64,
    /// Messages not delivered because the subscriber may not read the topic.
    pub delivery_denied: AtomicU64,
    /// Logins refused: bad credentials, anonymous where not allowed, failed
    /// enhanced authentication.
    pub login_failures: AtomicU64,
    /// Logins refused unchecked because their address failed too often.
    pub logins_throttled: AtomicU64,
    /// Topic names and filters refused for exceeding `max_topic_levels` or
    /// `max_topic_length` (in PUBLISH, SUBSCRIBE, UNSUBSCRIBE or a will).
    pub topics_refused: AtomicU64,
    /// Connections closed because a packet they began did not arrive whole
    /// in time (`packet_timeout`).
    pub packet_timeouts: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub(crate) fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Relaxed);
    }

    /// Messages dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        Self::get(&self.dropped_queue_full) + Self::get(&self.dropped_qos0_offline) + Self::get(&self.dropped_too_large)
    }
}
