//! A subscriber that survives broker restarts: a persistent session
//! (clean start off, v5 session expiry), QoS 1, automatic reconnect.
//!
//! ```text
//! cargo run -p midge-client --example resilient_subscriber -- localhost 1883 'sensors/#'
//! ```

use std::time::Duration;

use midge_client::{Client, ConnectOptions, Event, ProtocolVersion, QoS, Reconnect};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let port = args.next().map(|p| p.parse()).transpose()?.unwrap_or(1883);
    let filter = args.next().unwrap_or_else(|| "#".into());
    let options = ConnectOptions::new(host, port)
        .client_id("midge-resilient-example")
        .protocol(ProtocolVersion::V5)
        .clean_start(false)
        .session_expiry_interval(3600)
        .keep_alive(Duration::from_secs(10))
        .reconnect(Some(Reconnect { min_delay: Duration::from_millis(200), max_delay: Duration::from_secs(5) }));
    let (client, mut events) = Client::connect(options).await?;
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(m) => println!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)),
            Event::Disconnected(why) => eprintln!("connection lost: {why}; reconnecting"),
            Event::Reconnected { session_present } => eprintln!("reconnected (session present: {session_present})"),
            Event::ReconnectFailed(why) => eprintln!("reconnecting failed: {why}; trying again"),
        }
    }
    Ok(())
}
