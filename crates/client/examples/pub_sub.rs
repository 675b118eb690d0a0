//! Subscribes to `midge/example/#`, publishes one message at each QoS and
//! prints what comes back.
//!
//! ```text
//! midge serve &
//! cargo run -p midge-client --example pub_sub -- localhost 1883
//! ```

use midge_client::{Client, ConnectOptions, Message, ProtocolVersion, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let port = args.next().map(|p| p.parse()).transpose()?.unwrap_or(1883);
    let options = ConnectOptions::new(host, port).protocol(ProtocolVersion::V5);
    let (client, mut events) = Client::connect(options).await?;
    client.subscribe("midge/example/#", QoS::ExactlyOnce).await?;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("midge/example/qos{}", qos as u8);
        client.publish(Message::new(topic, "hello").qos(qos)).await?;
    }
    for _ in 0..3 {
        if let Some(message) = events.next_message().await {
            println!("{} (QoS {}) {}", message.topic, message.qos as u8, String::from_utf8_lossy(&message.payload));
        }
    }
    client.disconnect().await?;
    Ok(())
}
