//! The `midge` command: `midge serve` runs the broker, `midge passwd`
//! manages password files.

mod certs;
mod passwd;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use midge_broker::auth::{AclFile, PasswordFile};
use midge_broker::{Broker, BrokerConfig, Hooks, SharedStrategy};
use tracing_subscriber::EnvFilter;

/// midge: an MQTT broker and toolkit.
#[derive(Debug, Parser)]
#[command(name = "midge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MQTT broker (MQTT 3.1, 3.1.1 and 5.0 over TCP).
    Serve(ServeArgs),
    /// Add, update or delete users of a password file (mosquitto_passwd's flags).
    Passwd(passwd::PasswdArgs),
    /// Make a CA, a server and a client certificate for TLS (the openssl steps in one command).
    Certs(certs::CertsArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on; repeat for several. Without it midge listens on
    /// the loopback addresses only (127.0.0.1 and ::1), as Mosquitto 2 does
    /// with no configuration.
    #[arg(long)]
    bind: Vec<IpAddr>,
    /// TCP port for MQTT; 0 picks a free port (printed at startup).
    #[arg(long, short = 'p', default_value_t = 1883)]
    port: u16,
    /// Seconds between `$SYS` updates; 0 disables `$SYS`.
    #[arg(long, default_value_t = 10)]
    sys_interval: u64,
    /// Unacknowledged outbound QoS 1/2 messages per client.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    max_inflight: u16,
    /// Messages queued per session beyond the in-flight window; when full,
    /// new messages for that session are dropped.
    #[arg(long, default_value_t = 1000)]
    max_queued_messages: usize,
    /// Largest packet accepted from a client, in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(16..=268_435_460))]
    max_packet_size: u32,
    /// Topic aliases an MQTT 5 client may use towards the broker; 0 turns them off.
    #[arg(long, default_value_t = 10)]
    topic_alias_maximum: u16,
    /// Longest keep-alive (seconds) a client may ask for; MQTT 5 clients asking for
    /// more, or for none, are told this value; 3.1/3.1.1 clients asking for more are refused.
    #[arg(long, default_value_t = 65535)]
    max_keep_alive: u16,
    /// How a shared subscription group ($share/GROUP/FILTER) picks the member for each message.
    #[arg(long, value_enum, default_value_t = SharedStrategyArg::RoundRobin)]
    shared_strategy: SharedStrategyArg,
    /// Response Information sent to MQTT 5 clients that request it: the base
    /// of their reply topics; `%c` is replaced by the client id, `%u` by the
    /// user name (for example `reply/%c/`). Not sent by default.
    #[arg(long, value_name = "TEMPLATE")]
    response_information: Option<String>,
    /// Password file in Mosquitto's format (files from mosquitto_passwd work):
    /// clients must give a listed user name and its password. Users with
    /// SCRAM-SHA-256 entries (`midge passwd -H scram-sha-256`) may also use
    /// MQTT 5's SCRAM-SHA-256 authentication method.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's format (`user`, `topic [read|write|readwrite|deny]`,
    /// `pattern` with %c and %u): what each client may publish, subscribe to and
    /// receive. Without it every client may use every topic.
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// With --password-file, also let clients without a user name in.
    #[arg(long, requires = "password_file")]
    allow_anonymous: bool,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info", env = "MIDGE_LOG")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SharedStrategyArg {
    RoundRobin,
    Random,
    Sticky,
}

impl From<SharedStrategyArg> for SharedStrategy {
    fn from(arg: SharedStrategyArg) -> Self {
        match arg {
            SharedStrategyArg::RoundRobin => SharedStrategy::RoundRobin,
            SharedStrategyArg::Random => SharedStrategy::Random,
            SharedStrategyArg::Sticky => SharedStrategy::Sticky,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Passwd(args) => passwd::run(args),
        Command::Certs(args) => certs::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("midge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(&args.log_level).with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let config = BrokerConfig {
            max_inflight: args.max_inflight,
            max_queued_messages: args.max_queued_messages,
            max_packet_size: args.max_packet_size,
            topic_alias_maximum: args.topic_alias_maximum,
            shared_strategy: args.shared_strategy.into(),
            max_keep_alive: args.max_keep_alive,
            sys_interval: (args.sys_interval > 0).then(|| Duration::from_secs(args.sys_interval)),
            response_information: args.response_information.clone(),
            ..BrokerConfig::default()
        };
        let mut hooks = Hooks::default();
        let mut access = match &args.password_file {
            Some(path) => {
                let file = PasswordFile::load(path)?.allow_anonymous(args.allow_anonymous);
                let access = format!(
                    "password file {} with {} users ({} with SCRAM-SHA-256); anonymous clients {}",
                    path.display(),
                    file.len(),
                    file.scram_users(),
                    if args.allow_anonymous { "allowed" } else { "refused" }
                );
                hooks.authenticator = Arc::new(file);
                access
            }
            None => "anonymous clients allowed".to_owned(),
        };
        if let Some(path) = &args.acl_file {
            let acl = AclFile::load(path)?;
            access.push_str(&format!("; ACL file {} with rules for {} users", path.display(), acl.users()));
            hooks.authorizer = Arc::new(acl);
        }
        let broker = Broker::with_hooks(config, hooks);
        let anonymous = args.password_file.is_none() || args.allow_anonymous;
        let listeners = bind_listeners(&args.bind, args.port).await?;
        tracing::info!("{} starting", midge_broker::VERSION);
        let mut accepts = Vec::new();
        for listener in listeners {
            let local = listener.local_addr().context("reading the bound address")?;
            tracing::info!("listening on mqtt://{local} (MQTT 3.1, 3.1.1, 5.0; {access})");
            if anonymous && !local.ip().is_loopback() {
                tracing::warn!(
                    "listener {local} is not loopback and anonymous clients are allowed: anyone who can reach it can publish and subscribe"
                );
            }
            let serving = broker.clone();
            accepts.push(tokio::spawn(async move { serving.serve_tcp(listener).await }));
        }
        broker.start_sys();
        wait_for_signal().await?;
        tracing::info!("shutting down");
        broker.shutdown(Duration::from_secs(5)).await;
        accepts.iter().for_each(|a| a.abort());
        tracing::info!("stopped");
        Ok(())
    })
}

/// Binds every `--bind` address, or both loopbacks by default. With the
/// default, a machine without IPv6 still starts on 127.0.0.1.
async fn bind_listeners(binds: &[IpAddr], port: u16) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let defaulted = binds.is_empty();
    let addrs: Vec<IpAddr> = if defaulted {
        vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]
    } else {
        binds.to_vec()
    };
    let mut listeners = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if defaulted && ip.is_ipv6() => {
                tracing::debug!(error = %e, "IPv6 loopback unavailable; skipping {addr}")
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot listen on {addr}"))),
        }
    }
    Ok(listeners)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
