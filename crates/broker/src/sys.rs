//! `$SYS` topics, in Mosquitto's names, published retained every interval.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_codec::{MqttStr, PublishProperties, QoS};

use crate::broker::Shared;
use crate::metrics::Metrics;
use crate::session::Message;

/// The broker's name and version, as `$SYS/broker/version` shows it.
pub const VERSION: &str = concat!("midge ", env!("CARGO_PKG_VERSION"));

pub(crate) async fn run(shared: Arc<Shared>, interval: Duration) {
    publish(&shared, "$SYS/broker/version", VERSION.to_owned());
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ticker.tick() => publish_all(&shared),
        }
    }
}

fn publish(shared: &Shared, topic: &'static str, value: String) {
    let message = Message::new(
        MqttStr::from_static(topic),
        Bytes::from(value),
        QoS::AtMostOnce,
        true,
        PublishProperties::default(),
    );
    shared.publish(message, None);
}

fn publish_all(shared: &Shared) {
    let m = &shared.metrics;
    let get = Metrics::get;
    let connected = get(&m.clients_connected);
    let total = shared.session_count() as u64;
    let values: [(&'static str, u64); 23] = [
        ("$SYS/broker/clients/connected", connected),
        ("$SYS/broker/clients/active", connected),
        ("$SYS/broker/clients/total", total.max(connected)),
        ("$SYS/broker/clients/disconnected", total.saturating_sub(connected)),
        ("$SYS/broker/clients/maximum", get(&m.clients_maximum)),
        ("$SYS/broker/messages/received", get(&m.packets_received)),
        ("$SYS/broker/messages/sent", get(&m.packets_sent)),
        ("$SYS/broker/publish/messages/received", get(&m.publish_received)),
        ("$SYS/broker/publish/messages/sent", get(&m.publish_sent)),
        ("$SYS/broker/publish/messages/dropped", m.dropped_total()),
        ("$SYS/broker/bytes/received", get(&m.bytes_received)),
        ("$SYS/broker/bytes/sent", get(&m.bytes_sent)),
        ("$SYS/broker/retained messages/count", shared.retained_count() as u64),
        ("$SYS/broker/subscriptions/count", shared.subscription_count() as u64),
        ("$SYS/broker/connections/total", get(&m.connections_total)),
        ("$SYS/broker/protocol/errors", get(&m.protocol_errors)),
        ("$SYS/broker/logins/failed", get(&m.login_failures)),
        ("$SYS/broker/logins/throttled", get(&m.logins_throttled)),
        ("$SYS/broker/publish/messages/denied", get(&m.publish_denied)),
        ("$SYS/broker/subscriptions/denied", get(&m.subscribe_denied)),
        ("$SYS/broker/deliveries/denied", get(&m.delivery_denied)),
        ("$SYS/broker/topics/refused", get(&m.topics_refused)),
        ("$SYS/broker/packets/timed out", get(&m.packet_timeouts)),
    ];
    publish(shared, "$SYS/broker/uptime", format!("{} seconds", shared.started.elapsed().as_secs()));
    for (topic, value) in values {
        publish(shared, topic, value.to_string());
    }
}
