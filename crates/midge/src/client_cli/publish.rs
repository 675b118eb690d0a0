//! `midge pub`: publishes one message, a file, stdin, or stdin line by line.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use midge_client::{Client, Delivery, Message, QoS};

use super::options::parse_qos;
use super::{ConnArgs, Failure, exit, finish, runtime};

/// QoS 1/2 publishes of `-l` allowed in flight before waiting for the oldest.
const WINDOW: usize = 64;

#[derive(Debug, clap::Args)]
#[command(
    disable_help_flag = true,
    group(clap::ArgGroup::new("source").required(true).args(["message", "file", "lines", "stdin", "null"])),
    after_help = concat!(
        "Exactly one of -m, -f, -l, -s, -n says what to publish.\n",
        "Exit codes: 0 published; 1 error; 2 usage; 3 broker unreachable; 4 not authorized;\n",
        "5 connection refused; 6 timeout; 7 publish refused; 8 connection lost (docs/clients.md).\n",
        "\n",
        "Examples:\n",
        "  midge pub -h localhost -t hello -m GDGNatal\n",
        "  midge pub -t sensors/t -q 1 -r -m 21.5\n",
        "  tail -f log | midge pub -t logs -l\n",
        "  midge pub -L mqtts://user:pass@broker:8883/hello --cafile ca.crt -m hi",
    ),
)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic to publish to (or the path of an mqtt:// -L URL).
    #[arg(short = 't', long = "topic", value_name = "TOPIC")]
    topic: Option<String>,
    /// The message payload.
    #[arg(short = 'm', long = "message", value_name = "MESSAGE")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send each line of stdin as a message (empty lines as empty messages).
    #[arg(short = 'l', long = "stdin-line")]
    lines: bool,
    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin: bool,
    /// Send an empty (zero-length) message.
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_name = "QOS", default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Publish the message this many times (not with -l).
    #[arg(long = "repeat", value_name = "COUNT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Seconds to wait between repeats (fractions allowed).
    #[arg(long = "repeat-delay", value_name = "SECONDS", default_value_t = 0.0)]
    repeat_delay: f64,
}

/// Runs `midge pub`.
pub(crate) fn run(args: PubArgs) -> ExitCode {
    let quiet = args.conn.quiet;
    finish("pub", quiet, publish(args))
}

fn publish(args: PubArgs) -> Result<(), Failure> {
    let resolved = args.conn.resolve("pub")?;
    let topic = args
        .topic
        .clone()
        .or(resolved.url_topic.clone())
        .ok_or_else(|| Failure::usage("no topic: give -t TOPIC (or a topic in the -L URL)"))?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(Failure::usage(format!("{topic:?} is not a topic name to publish to (empty, or has + or #)")));
    }
    if args.lines && args.repeat > 1 {
        return Err(Failure::usage("--repeat does not combine with -l"));
    }
    let payload: Option<Bytes> = if let Some(m) = &args.message {
        Some(Bytes::from(m.clone()))
    } else if let Some(file) = &args.file {
        let data = std::fs::read(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
        Some(Bytes::from(data))
    } else if args.stdin {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .map_err(|e| Failure::new(exit::ERROR, format!("reading stdin: {e}")))?;
        Some(Bytes::from(data))
    } else if args.null {
        Some(Bytes::new())
    } else {
        None
    };
    let debug = Debug { on: args.conn.debug, id: resolved.client_id.clone() };
    let template = Message::new(topic, Bytes::new())
        .qos(args.qos)
        .retain(args.retain)
        .properties(resolved.properties.publish.clone());
    runtime()?.block_on(async move {
        debug.line("sending CONNECT");
        let (client, _events) = Client::connect(resolved.options).await.map_err(Failure::connecting)?;
        debug.line(&format!("received CONNACK ({})", client.connack().reason_code.as_u8()));
        let mut window = VecDeque::new();
        match payload {
            Some(payload) => {
                for i in 0..args.repeat {
                    if i > 0 && args.repeat_delay > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay.min(86_400.0))).await;
                    }
                    let message = Message { payload: payload.clone(), ..template.clone() };
                    send(&client, &debug, message, &mut window).await?;
                }
            }
            None => {
                let mut lines = stdin_lines();
                while let Some(line) = lines.recv().await {
                    let line = line.map_err(|e| Failure::new(exit::ERROR, format!("reading stdin: {e}")))?;
                    let message = Message { payload: Bytes::from(line), ..template.clone() };
                    send(&client, &debug, message, &mut window).await?;
                }
            }
        }
        while let Some((qos, delivery)) = window.pop_front() {
            settle(&debug, qos, delivery).await?;
        }
        debug.line("sending DISCONNECT");
        client.disconnect_with(resolved.properties.disconnect.clone()).await.map_err(Failure::connected)
    })
}

/// Lines of stdin (bytes, without the end of line), read on a thread of
/// their own: stdin blocks, and a line may come at any time (`tail -f`).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(WINDOW);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match std::io::BufRead::read_until(&mut stdin, b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// Hands one message to the client; waits for the oldest once `WINDOW` are in flight.
async fn send(
    client: &Client,
    debug: &Debug,
    message: Message,
    window: &mut VecDeque<(QoS, Delivery)>,
) -> Result<(), Failure> {
    debug.line(&format!(
        "sending PUBLISH (d0, q{}, r{}, '{}', ... ({} bytes))",
        message.qos as u8,
        u8::from(message.retain),
        message.topic,
        message.payload.len()
    ));
    let qos = message.qos;
    let delivery = client.publish_queued(message).await.map_err(Failure::connected)?;
    window.push_back((qos, delivery));
    if window.len() >= WINDOW
        && let Some((qos, delivery)) = window.pop_front()
    {
        settle(debug, qos, delivery).await?;
    }
    Ok(())
}

async fn settle(debug: &Debug, qos: QoS, delivery: Delivery) -> Result<(), Failure> {
    delivery.wait().await.map_err(Failure::connected)?;
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => debug.line("received PUBACK"),
        QoS::ExactlyOnce => debug.line("received PUBREC, sending PUBREL, received PUBCOMP"),
    }
    Ok(())
}

/// `-d`: mosquitto-style `Client ID …` lines on stderr.
pub(crate) struct Debug {
    pub(crate) on: bool,
    pub(crate) id: String,
}

impl Debug {
    pub(crate) fn line(&self, what: &str) {
        if self.on {
            eprintln!("Client {} {what}", self.id);
        }
    }
}
