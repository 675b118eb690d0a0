//! `midge sub`: subscribes and prints messages, one per line, flushed as
//! each arrives (so a pipe sees every message at once).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use midge_client::{
    Client, Event, Events, Message, ProtocolVersion, QoS, Reconnect, RetainHandling, Subscription, SubscriptionOptions,
    reason_text,
};
use midge_codec::topic;
use tokio::time::{Instant, timeout_at};

use super::format::{Output, parse_format};
use super::options::parse_qos;
use super::publish::Debug;
use super::{ConnArgs, Failure, exit, finish, runtime};

#[derive(Debug, clap::Args)]
#[command(
    disable_help_flag = true,
    after_help = concat!(
        "Exit codes: 0 done (-C, -E, --retained-only, or the broker's DISCONNECT after -C); 1 error;\n",
        "2 usage; 3 broker unreachable; 4 not authorized; 5 connection refused; 6 connect timeout;\n",
        "7 every subscription refused; 8 connection lost; 27 -W expired (docs/clients.md).\n",
        "\n",
        "Examples:\n",
        "  midge sub -h localhost -t hello -v\n",
        "  midge sub -t 'sensors/#' -q 1 -c -i logger -F '%I %t %p'\n",
        "  midge sub -t status -C 1 -W 10 --json",
    ),
)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic filter to subscribe to; repeat for several.
    #[arg(short = 't', long = "topic", value_name = "FILTER")]
    topics: Vec<String>,
    /// Do not print messages whose topic matches this filter; repeat for several.
    #[arg(short = 'T', long = "filter-out", value_name = "FILTER")]
    filter_out: Vec<String>,
    /// Unsubscribe from this filter after subscribing (to clean a persistent session); repeat for several.
    #[arg(short = 'U', long = "unsubscribe", value_name = "FILTER")]
    unsubscribe: Vec<String>,
    /// Maximum QoS of the subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_name = "QOS", default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Print the topic before the payload.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit (with code 27, as mosquitto_sub) if this many seconds pass after connecting before -C
    /// messages arrived (or at all, without -C).
    #[arg(short = 'W', long = "timeout", value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Do not print retained (stale) messages.
    #[arg(short = 'R', long = "no-stale")]
    no_stale: bool,
    /// Do not add an end of line after each message.
    #[arg(short = 'N', long = "no-eol")]
    no_eol: bool,
    /// Output format with %-codes (see docs/clients.md), e.g. '%t %p'.
    #[arg(short = 'F', long = "format", value_name = "FORMAT", conflicts_with_all = ["json", "hex"])]
    format: Option<String>,
    /// Print one JSON object per message.
    #[arg(long = "json", conflicts_with = "hex")]
    json: bool,
    /// Print payloads as hexadecimal.
    #[arg(short = 'x', long = "hex")]
    hex: bool,
    /// Print only retained messages; exit at the first message that is not retained.
    #[arg(long = "retained-only")]
    retained_only: bool,
    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E', long = "exit-after-subscribe")]
    exit_after_subscribe: bool,
    /// MQTT 5: keep the retain flag as published instead of clearing it on live messages.
    #[arg(long = "retain-as-published")]
    retain_as_published: bool,
    /// MQTT 5: do not receive this client's own publishes.
    #[arg(long = "no-local")]
    no_local: bool,
    /// MQTT 5: print each message's response topic (and correlation data) too, as
    /// `-F '%t %p (response topic %R, correlation %D)'` would.
    #[arg(short = 'e', long = "show-response")]
    show_response: bool,
}

/// Runs `midge sub`.
pub(crate) fn run(args: SubArgs) -> ExitCode {
    let quiet = args.conn.quiet;
    finish("sub", quiet, subscribe(args))
}

fn subscribe(args: SubArgs) -> Result<(), Failure> {
    let mut resolved = args.conn.resolve("sub")?;
    let mut topics = args.topics.clone();
    if let Some(t) = resolved.url_topic.take() {
        topics.push(t);
    }
    if topics.is_empty() {
        return Err(Failure::usage("no topic: give -t FILTER (repeat for several)"));
    }
    for filter in topics.iter().chain(&args.filter_out).chain(&args.unsubscribe) {
        topic::validate_topic_filter(filter).map_err(|e| Failure::usage(format!("{filter:?}: {e}")))?;
    }
    let v5 = args.conn.version == ProtocolVersion::V5;
    if (args.retain_as_published || args.no_local) && !v5 {
        return Err(Failure::usage("--retain-as-published and --no-local are MQTT 5 options: add -V 5"));
    }
    let output = if let Some(format) = &args.format {
        Output::Format(parse_format(format).map_err(|e| Failure::usage(format!("-F: {e}")))?)
    } else if args.json {
        Output::Json
    } else if args.show_response {
        Output::Format(parse_format("%t %p (response topic %R, correlation %D)").map_err(Failure::usage)?)
    } else {
        Output::Plain { verbose: args.verbose, hex: args.hex }
    };
    let debug = Debug { on: args.conn.debug, id: resolved.client_id.clone() };
    // mosquitto_sub reconnects forever, and so do we: -c sessions resume.
    let options = resolved.options.clone().reconnect(Some(Reconnect::default()));
    let subscriptions: Vec<Subscription> = topics
        .iter()
        .map(|filter| Subscription {
            topic_filter: filter.clone(),
            options: SubscriptionOptions {
                qos: args.qos,
                no_local: args.no_local,
                retain_as_published: args.retain_as_published,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
        })
        .collect();
    runtime()?.block_on(async move {
        // Ctrl-C or SIGTERM end the subscriber with DISCONNECT, as mosquitto_sub
        // does, so the broker does not publish its will. Caught from the
        // start, so none is missed between subscribing and receiving.
        let mut stop = Stop::install()?;
        debug.line("sending CONNECT");
        let (client, mut events) = tokio::select! {
            connected = Client::connect(options) => connected.map_err(Failure::connecting)?,
            () = stop.signalled() => return Ok(()),
        };
        let connack = client.connack();
        debug.line(&format!(
            "received CONNACK ({}, session present: {})",
            connack.reason_code.as_u8(),
            u8::from(connack.session_present)
        ));
        let deadline = args.timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 31_536_000.0)));
        for s in &subscriptions {
            debug.line(&format!("sending SUBSCRIBE (topic {}, QoS {})", s.topic_filter, s.options.qos as u8));
        }
        let codes = tokio::select! {
            codes = client.subscribe_many(subscriptions.clone(), resolved.properties.subscribe.clone()) => {
                codes.map_err(Failure::connected)?
            }
            () = stop.signalled() => return disconnect(&client, &debug, &resolved.properties.disconnect).await,
        };
        let granted: Vec<String> = codes.iter().map(|c| c.as_u8().to_string()).collect();
        debug.line("received SUBACK");
        debug.line(&format!("subscribed: {}", granted.join(", ")));
        let refused: Vec<String> = subscriptions
            .iter()
            .zip(&codes)
            .filter(|(_, c)| c.is_error())
            .map(|(s, c)| format!("{} ({})", s.topic_filter, reason_text(*c)))
            .collect();
        if refused.len() == subscriptions.len() {
            return Err(Failure::new(exit::REJECTED, format!("subscription refused: {}", refused.join(", "))));
        } else if !refused.is_empty() && !args.conn.quiet {
            eprintln!("midge sub: warning: subscription refused: {}", refused.join(", "));
        }
        if !args.unsubscribe.is_empty() {
            debug.line("sending UNSUBSCRIBE");
            client.unsubscribe(args.unsubscribe.clone()).await.map_err(Failure::connected)?;
            debug.line("received UNSUBACK");
        }
        if args.exit_after_subscribe {
            return disconnect(&client, &debug, &resolved.properties.disconnect).await;
        }
        let result = receive(&args, &output, &debug, &mut events, deadline, &mut stop).await;
        match result {
            Ok(()) => disconnect(&client, &debug, &resolved.properties.disconnect).await,
            Err(failure) => {
                let _ = client.disconnect().await;
                Err(failure)
            }
        }
    })
}

async fn disconnect(
    client: &Client,
    debug: &Debug,
    properties: &midge_client::DisconnectProperties,
) -> Result<(), Failure> {
    debug.line("sending DISCONNECT");
    client.disconnect_with(properties.clone()).await.map_err(Failure::connected)
}

/// SIGTERM and SIGINT, caught.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> Result<Stop, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|e| Failure::new(exit::ERROR, format!("installing the SIGTERM handler: {e}")))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| Failure::new(exit::ERROR, format!("installing the SIGINT handler: {e}")))?;
        Ok(Stop { term, int })
    }

    /// Completes at the next SIGTERM or SIGINT (at once for one that came
    /// before).
    async fn signalled(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Prints messages until -C, --retained-only or -W says stop.
async fn receive(
    args: &SubArgs,
    output: &Output,
    debug: &Debug,
    events: &mut Events,
    deadline: Option<Instant>,
    stop: &mut Stop,
) -> Result<(), Failure> {
    let mut printed = 0;
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    loop {
        let next = async {
            match deadline {
                Some(deadline) => timeout_at(deadline, events.recv()).await.ok(),
                None => Some(events.recv().await),
            }
        };
        let event = tokio::select! {
            event = next => match event {
                Some(event) => event,
                None => {
                    return Err(Failure::new(
                        exit::WAIT_EXPIRED,
                        format!("timed out after {} s (-W) waiting for messages", args.timeout.unwrap_or_default()),
                    ));
                }
            },
            () = stop.signalled() => return Ok(()),
        };
        let message = match event {
            Some(Event::Message(message)) => message,
            Some(Event::Disconnected(why)) => {
                if !args.conn.quiet {
                    eprintln!("midge sub: connection lost ({why}); reconnecting");
                }
                continue;
            }
            Some(Event::ReconnectFailed(why)) => {
                debug.line(&format!("reconnecting failed ({why}); trying again"));
                continue;
            }
            Some(Event::Reconnected { session_present }) => {
                debug.line(&format!("reconnected (session present: {})", u8::from(session_present)));
                continue;
            }
            None => return Err(Failure::new(exit::LOST, "the connection ended")),
        };
        if args.retained_only && !message.retain {
            return Ok(());
        }
        if !shown(args, &message) {
            continue;
        }
        line.clear();
        output.render(&message, &mut line);
        if !args.no_eol {
            line.push(b'\n');
        }
        let mut out = stdout.lock();
        // A closed pipe (`| head -1`) ends the program quietly, as for other Unix tools.
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        printed += 1;
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
}

/// Whether -R and -T let the message through.
fn shown(args: &SubArgs, message: &Message) -> bool {
    if args.no_stale && message.retain {
        return false;
    }
    !args.filter_out.iter().any(|filter| topic::matches(filter, &message.topic))
}
