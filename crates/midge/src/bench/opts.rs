//! The flags of `midge bench`, in the spirit of emqtt-bench and the
//! Mosquitto clients (`-h` host, `-p` port, `-V` version, `-u`/`-P`).

use std::net::IpAddr;

use clap::ArgAction;
use midge_codec::{ProtocolVersion, QoS};

/// `midge bench`: a load generator for any MQTT broker.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Open N connections (at a rate), hold them, report the connect rate, failures and,
    /// with --broker-pid, the broker's memory per connection.
    Conn(ConnArgs),
    /// N publishers; no subscriber of our own (run `midge bench sub` beside it).
    Pub(PubArgs),
    /// N subscribers that count (and acknowledge) what they receive.
    Sub(SubArgs),
    /// N publishers, each on its own topic, to one subscriber of all of them.
    FanIn(ScenarioArgs),
    /// One publisher to N subscribers of its topic; counts every copy delivered.
    FanOut(ScenarioArgs),
    /// N publisher/subscriber pairs, each pair on a topic of its own.
    Pairs(ScenarioArgs),
    /// Publishers to a shared subscription group ($share/GROUP/...) of subscribers.
    Shared(ScenarioArgs),
}

/// How to reach the broker and how each connection behaves.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnectOpts {
    /// Broker host name or address.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub(crate) port: u16,
    /// MQTT version: 3 (3.1), 4 (3.1.1) or 5; mqttv31, mqttv311 and mqttv5 also work.
    #[arg(short = 'V', long = "protocol-version", default_value = "4", value_parser = crate::client_cli::parse_version)]
    pub(crate) version: ProtocolVersion,
    /// User name for every connection.
    #[arg(short = 'u', long)]
    pub(crate) username: Option<String>,
    /// Password for every connection.
    #[arg(short = 'P', long)]
    pub(crate) password: Option<String>,
    /// Local source addresses to spread connections over, round robin (comma-separated
    /// or repeated), e.g. 127.0.0.1,127.0.0.2: each gives another ~28k ephemeral ports.
    #[arg(long, value_delimiter = ',', value_name = "IP")]
    pub(crate) ifaddr: Vec<IpAddr>,
    /// Keep alive in seconds (subscribers ping at half of it).
    #[arg(short = 'k', long, default_value_t = 300)]
    pub(crate) keepalive: u16,
    /// Clean session (3.x) / clean start (5). `--clean false` keeps sessions, so the
    /// broker stores QoS 1/2 messages for its subscribers (the persistence scenario).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub(crate) clean: bool,
    /// MQTT 5 session expiry interval in seconds (default: 0, or 3600 with --clean false).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) session_expiry: Option<u32>,
    /// Client id prefix; each client is PREFIX plus its role and index (default: mb-PID-).
    #[arg(short = 'i', long = "client-id-prefix", value_name = "PREFIX")]
    pub(crate) client_id_prefix: Option<String>,
    /// Connections opened per second; 0: as fast as the broker accepts them.
    #[arg(long, default_value_t = 0.0, value_name = "PER_SECOND")]
    pub(crate) connect_rate: f64,
    /// Connections being opened at once, at most.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) connect_concurrency: u32,
    /// Seconds a connection (TCP, CONNACK, SUBACK) may take.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub(crate) connect_timeout: f64,
    /// The broker's process id: its CPU (and for `conn` its memory) is reported, and it
    /// is left out of the noise figure (CPU used by every other process).
    #[arg(long, value_name = "PID")]
    pub(crate) broker_pid: Option<u32>,
    /// Runtime worker threads (default: the CPUs this process may run on; 1 runs
    /// everything on one thread).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) threads: Option<u32>,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub(crate) help: Option<bool>,
}

/// What publishers send and how fast.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TrafficOpts {
    /// QoS of the publishes and subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Payload bytes per message; from 16 up the payload carries its send time, for latency.
    #[arg(short = 's', long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Messages per second per publisher (default: as fast as --window allows).
    #[arg(long, conflicts_with = "total_rate", value_name = "PER_SECOND")]
    pub(crate) rate: Option<f64>,
    /// Messages per second of all publishers together.
    #[arg(long, value_name = "PER_SECOND")]
    pub(crate) total_rate: Option<f64>,
    /// Messages per publisher, then stop.
    #[arg(short = 'C', long)]
    pub(crate) count: Option<u64>,
    /// Seconds to publish (default: 10, or until --count).
    #[arg(short = 'd', long, value_name = "SECONDS")]
    pub(crate) duration: Option<f64>,
    /// Messages in flight at most (sent, not yet received by every subscriber), for all
    /// publishers together; 0: unbounded (open loop: the kernel's socket buffers fill).
    #[arg(long, default_value_t = 1000)]
    pub(crate) window: u64,
    /// Unacknowledged QoS 1/2 messages per publisher, at most (and at most the
    /// broker's MQTT 5 receive maximum).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) inflight: u16,
    /// Messages encoded into one write, at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: u32,
    /// Seconds to wait after the last publish for outstanding messages and acks;
    /// what has not arrived by then is lost.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub(crate) drain: f64,
    /// With a rate: send on the grid of the machine's monotonic clock, this many
    /// microseconds after each multiple of the period. Generators in separate
    /// processes then send at fixed offsets from one another (side-by-side latency).
    #[arg(long, value_name = "MICROSECONDS")]
    pub(crate) phase_us: Option<u64>,
}

/// `midge bench conn`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectOpts,
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub(crate) clients: usize,
    /// Seconds to hold the connections after the last CONNACK; the broker's memory
    /// is read at the end of it.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub(crate) hold: f64,
}

/// `midge bench pub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectOpts,
    #[command(flatten)]
    pub(crate) traffic: TrafficOpts,
    /// Publishers.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub(crate) clients: usize,
    /// Topic; %i is the publisher's index.
    #[arg(short = 't', long, default_value = "bench/%i")]
    pub(crate) topic: String,
}

/// `midge bench sub`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectOpts,
    /// Subscribers.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub(crate) clients: usize,
    /// Topic filter; %i is the subscriber's index.
    #[arg(short = 't', long, default_value = "bench/#")]
    pub(crate) topic: String,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Stop once this many messages have been received (by all subscribers together).
    #[arg(short = 'C', long)]
    pub(crate) count: Option<u64>,
    /// Stop after this many seconds (default: at --count, or Ctrl-C).
    #[arg(short = 'd', long, value_name = "SECONDS")]
    pub(crate) duration: Option<f64>,
}

/// The scenarios: fan-in, fan-out, pairs and shared.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct ScenarioArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectOpts,
    #[command(flatten)]
    pub(crate) traffic: TrafficOpts,
    /// Publishers (fan-in: 10; fan-out: always 1; shared: 10).
    #[arg(long)]
    pub(crate) publishers: Option<usize>,
    /// Subscribers (fan-in: always 1; fan-out: 100; shared: 10).
    #[arg(long)]
    pub(crate) subscribers: Option<usize>,
    /// Publisher/subscriber pairs (pairs: 50).
    #[arg(long)]
    pub(crate) pairs: Option<usize>,
    /// Publishers' topic; %i is the publisher's index (subscribers use + in its place).
    /// Default: bench/SCENARIO/%i (fan-out: bench/fan-out).
    #[arg(short = 't', long)]
    pub(crate) topic: Option<String>,
    /// Shared subscription group name (shared).
    #[arg(long, default_value = "bench")]
    pub(crate) group: String,
}

impl TrafficOpts {
    pub(crate) fn qos(&self) -> QoS {
        qos(self.qos)
    }
}

pub(crate) fn qos(v: u8) -> QoS {
    QoS::from_u8(v).unwrap_or_default()
}

pub(crate) fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}
