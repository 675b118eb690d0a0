//! midge-client: an async (tokio) MQTT client for MQTT 3.1, 3.1.1 and 5.0,
//! built on the one codec of the project, [`midge_codec`].
//!
//! ```text
//!  your code ──Client::publish / subscribe──▶ driver task ──▶ midge-codec ──▶ TCP | TLS | WebSocket
//!  your code ◀──Events (Message, Reconnected, Disconnected)── driver task ◀──────────────┘
//! ```
//!
//! - Transports: TCP (`mqtt://`), TLS with a CA file or directory and a
//!   client certificate (`mqtts://`), WebSocket (`ws://`, subprotocol `mqtt`)
//!   and WebSocket over TLS (`wss://`).
//! - Publish at QoS 0, 1 and 2 with retain and v5 properties;
//!   [`Client::publish`] returns once the broker has acknowledged.
//! - Subscribe; messages arrive through [`Events`], which is also a
//!   [`futures_util::Stream`].
//! - Keep-alive: PINGREQ when idle, the connection counts as lost without
//!   PINGRESP.
//! - Automatic reconnect ([`ConnectOptions::reconnect`]): the session is
//!   resumed (`clean_start(false)`, v5 session expiry), unacknowledged
//!   publishes are re-sent with DUP and their packet ids, subscriptions
//!   the broker forgot are renewed, and publishes made while offline wait
//!   in a bounded buffer.
//!
//! ```no_run
//! use std::time::Duration;
//! use midge_client::{Client, ConnectOptions, Event, Message, ProtocolVersion, QoS, Reconnect};
//!
//! # async fn run() -> Result<(), midge_client::ClientError> {
//! let options = ConnectOptions::new("localhost", 1883)
//!     .client_id("thermostat")
//!     .protocol(ProtocolVersion::V5)
//!     .clean_start(false)
//!     .session_expiry_interval(3600)
//!     .keep_alive(Duration::from_secs(30))
//!     .reconnect(Some(Reconnect::default()));
//! let (client, mut events) = Client::connect(options).await?;
//! client.subscribe("home/+/temperature", QoS::AtLeastOnce).await?;
//! client.publish(Message::new("home/hall/temperature", "21.5").qos(QoS::AtLeastOnce).retain(true)).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)),
//!         Event::Disconnected(why) => eprintln!("connection lost ({why}), reconnecting"),
//!         Event::Reconnected { session_present } => eprintln!("back (session present: {session_present})"),
//!         Event::ReconnectFailed(why) => eprintln!("reconnecting failed ({why}), trying again"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod client;
mod error;
mod options;
mod tls;
mod transport;

pub use client::{Client, Delivery, Event, Events, Message};
pub use error::{ClientError, reason_text};
pub use midge_codec::{
    ConnAck, DisconnectProperties, ProtocolVersion, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubscribeProperties, Subscription, SubscriptionOptions, UserProperty, WillProperties,
};
pub use options::{ConnectOptions, Reconnect, TlsOptions, Transport, Url};
