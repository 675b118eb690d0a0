//! Broker settings that the protocol logic reads.

use std::time::Duration;

use crate::shared::SharedStrategy;
use crate::throttle::LoginLimits;

/// What a running broker is allowed to do. Every field has a default that
/// matches what a Mosquitto user would expect unless noted.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Unacknowledged outbound QoS 1/2 messages per client (Mosquitto's
    /// `max_inflight_messages`, default 20).
    pub max_inflight: u16,
    /// Messages held per session beyond the in-flight window, online or
    /// offline (Mosquitto's `max_queued_messages`, default 1000). When full,
    /// the newest message is dropped and counted, as Mosquitto does.
    pub max_queued_messages: usize,
    /// Messages of a stored session's queue kept in memory (default 1000);
    /// the rest of its backlog waits in the store and is read back as the
    /// client takes messages, so a long queue costs disk, not memory.
    /// Without a store every queued message is in memory.
    pub max_queued_in_memory: usize,
    /// Largest packet accepted from a client, fixed header included.
    /// Default 1 MiB; the protocol maximum is 268,435,460 bytes.
    pub max_packet_size: u32,
    /// Topic aliases a v5 client may use towards the broker (announced as
    /// Topic Alias Maximum; Mosquitto's `max_topic_alias`, default 10).
    pub topic_alias_maximum: u16,
    /// Longest keep-alive a client may ask for (Mosquitto's `max_keepalive`).
    /// A v5 client asking for more, or for none, is told this value in
    /// CONNACK's Server Keep Alive; a 3.x client asking for more is refused.
    pub max_keep_alive: u16,
    /// How a share group picks the member for each message.
    pub shared_strategy: SharedStrategy,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// How often `$SYS` topics are published; `None` disables them.
    pub sys_interval: Option<Duration>,
    /// Response Information for v5 clients that ask for it (Request Response
    /// Information = 1): the base of the topics they should use for replies.
    /// `%c` becomes the client id and `%u` the user name (as in Mosquitto's
    /// ACL patterns). `None` (the default) sends none, as Mosquitto does.
    pub response_information: Option<String>,
    /// How logins from one address are paced, and slowed after failures.
    pub login_limits: LoginLimits,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_inflight: 20,
            max_queued_messages: 1000,
            max_queued_in_memory: 1000,
            max_packet_size: 1024 * 1024,
            topic_alias_maximum: 10,
            shared_strategy: SharedStrategy::RoundRobin,
            max_keep_alive: u16::MAX,
            connect_timeout: Duration::from_secs(10),
            sys_interval: Some(Duration::from_secs(10)),
            response_information: None,
            login_limits: LoginLimits::default(),
        }
    }
}
