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
    /// Most levels a topic name or filter may have (EMQX's
    /// `max_topic_levels`, default 128). Far deeper than any real topic
    /// tree; deeper ones are refused: SUBACK 0x8F, PUBACK/PUBREC 0x90, a
    /// closed connection where 3.x has no code (see [`BrokerConfig::check_topic`]).
    pub max_topic_levels: usize,
    /// Longest topic name or filter in bytes (HiveMQ's `max-topic-length`,
    /// default 65,535, the protocol's own limit), refused as above.
    pub max_topic_length: usize,
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
    /// How long a packet that has begun to arrive may take to arrive whole,
    /// plus a second per KiB of its declared length (default 30 s; `None`:
    /// no limit). Keep-alive counts bytes, not packets, so without it a
    /// client sending a byte now and then would hold its connection, and a
    /// buffer of up to `max_packet_size`, forever.
    pub packet_timeout: Option<Duration>,
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
            max_topic_levels: 128,
            max_topic_length: usize::from(u16::MAX),
            topic_alias_maximum: 10,
            shared_strategy: SharedStrategy::RoundRobin,
            max_keep_alive: u16::MAX,
            connect_timeout: Duration::from_secs(10),
            packet_timeout: Some(Duration::from_secs(30)),
            sys_interval: Some(Duration::from_secs(10)),
            response_information: None,
            login_limits: LoginLimits::default(),
        }
    }
}

/// Which topic limit a topic name or filter exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicLimit {
    /// More levels than `max_topic_levels`.
    Levels,
    /// Longer than `max_topic_length`.
    Length,
}

impl TopicLimit {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TopicLimit::Levels => "max_topic_levels",
            TopicLimit::Length => "max_topic_length",
        }
    }
}

impl BrokerConfig {
    /// Whether a topic name or filter lies within `max_topic_levels` and
    /// `max_topic_length`. A shared subscription is measured by its topic
    /// filter, without `$share/{group}/`.
    pub(crate) fn check_topic(&self, topic: &str) -> Result<(), TopicLimit> {
        if topic.len() > self.max_topic_length {
            return Err(TopicLimit::Length);
        }
        // A topic of n bytes has at most n + 1 levels: short ones, almost
        // every publish, need no count.
        if topic.len() < self.max_topic_levels {
            return Ok(());
        }
        let filter = match midge_codec::topic::SharedFilter::parse(topic) {
            Ok(Some(shared)) => shared.filter,
            _ => topic,
        };
        let levels = filter.bytes().filter(|&b| b == b'/').count() + 1;
        if levels > self.max_topic_levels { Err(TopicLimit::Levels) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_measured_in_levels_and_bytes() {
        let config = BrokerConfig { max_topic_levels: 3, max_topic_length: 12, ..BrokerConfig::default() };
        assert_eq!(config.check_topic("a/b/c"), Ok(()));
        assert_eq!(config.check_topic("a/b/c/d"), Err(TopicLimit::Levels));
        assert_eq!(config.check_topic("///"), Err(TopicLimit::Levels), "empty levels count");
        assert_eq!(config.check_topic("abcdefghijklm"), Err(TopicLimit::Length));
        let config = BrokerConfig { max_topic_levels: 3, ..BrokerConfig::default() };
        assert_eq!(config.check_topic("$share/group/a/+/#"), Ok(()), "the share prefix is not counted");
        assert_eq!(config.check_topic("$share/group/a/+/b/#"), Err(TopicLimit::Levels));
    }

    #[test]
    fn the_defaults_refuse_the_10000_level_filter_and_take_a_128_level_one() {
        let config = BrokerConfig::default();
        assert_eq!(config.check_topic(&(vec!["+"; 9_999].join("/") + "/#")), Err(TopicLimit::Levels));
        assert_eq!(config.check_topic(&vec!["a"; 128].join("/")), Ok(()));
        assert_eq!(config.check_topic(&vec!["a"; 129].join("/")), Err(TopicLimit::Levels));
    }
}
