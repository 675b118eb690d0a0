//! The `midge` command: `midge serve` runs the broker, `midge passwd`
//! manages password files.

mod bench;
mod certs;
mod client_cli;
mod config;
mod fdtable;
mod files;
mod listener;
mod passwd;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use listener::{ListenerSpec, TlsSpec};
use midge_broker::auth::{AclFile, PasswordFile, Webhook, WebhookChecks, WebhookConfig};
use midge_broker::store::{RedbStore, Store, SyncPolicy};
use midge_broker::{Broker, BrokerConfig, Hooks, ListenerPolicy, SharedStrategy};
use tracing_subscriber::EnvFilter;

/// mimalloc frees across threads without a lock; glibc's malloc made two
/// worker threads route fewer messages than one (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<ServeArgs>),
    /// Add, update or delete users of a password file (mosquitto_passwd's flags).
    Passwd(passwd::PasswdArgs),
    /// Make a CA, a server and a client certificate for TLS (the openssl steps in one command).
    Certs(certs::CertsArgs),
    /// Load generator for any MQTT broker: conn, pub, sub, fan-in, fan-out, pairs, shared.
    Bench(bench::BenchArgs),
    /// Publish MQTT messages to any broker (mosquitto_pub's flags).
    Pub(client_cli::publish::PubArgs),
    /// Subscribe and print MQTT messages from any broker (mosquitto_sub's flags).
    Sub(client_cli::subscribe::SubArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML): any flag below as a key, and `[[listener]]`
    /// tables for more listeners, TLS and client certificates. Flags given
    /// on the command line win over the file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Threads serving clients; 0: one per CPU midge may run on. With one,
    /// midge runs a single-threaded scheduler, which does less work per
    /// message than a multi-threaded one with a single worker.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Unacknowledged outbound QoS 1/2 messages per client.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    max_inflight: u16,
    /// Messages queued per session beyond the in-flight window; when full,
    /// new messages for that session are dropped.
    #[arg(long, default_value_t = 1000)]
    max_queued_messages: usize,
    /// Of a persistent session's queue, the messages kept in memory; the
    /// rest wait in the store (not with --in-memory) and are read back as
    /// the client takes them.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    max_queued_in_memory: u64,
    /// Largest packet accepted from a client, in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(16..=268_435_460))]
    max_packet_size: u32,
    /// Most levels a topic name or filter may have; deeper ones are refused
    /// (MQTT 5: SUBACK 0x8F, PUBACK 0x90; 3.1.1: SUBACK 0x80, or the
    /// connection is closed for a PUBLISH or will).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_topic_levels: u32,
    /// Longest topic name or filter in bytes; longer ones are refused as
    /// too-deep ones are.
    #[arg(long, default_value_t = 65535, value_parser = clap::value_parser!(u16).range(1..))]
    max_topic_length: u16,
    /// Seconds a packet that has begun to arrive may take to arrive whole,
    /// plus one per KiB of its length; a client slower than that is
    /// disconnected. 0: no limit.
    #[arg(long, default_value_t = 30)]
    packet_timeout: u64,
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
    /// URL of an HTTP(S) service that decides logins, publishes and
    /// subscriptions: each question is a POST of a JSON object; a 2xx answer
    /// with an empty body or {"result": "allow"} allows, anything else
    /// (including a timeout) denies. See docs/security.md.
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// The questions the webhook answers, any of connect, publish, subscribe
    /// (default: all three).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CHECKS")]
    webhook_checks: Vec<WebhookCheck>,
    /// Milliseconds a webhook question may take before it is denied.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    webhook_timeout_ms: u64,
    /// Seconds publish and subscribe answers are reused; 0 asks every time.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    webhook_cache_seconds: u64,
    /// PEM CA certificates to trust for an https webhook instead of the system's.
    #[arg(long, value_name = "FILE")]
    webhook_ca: Option<PathBuf>,
    /// Let clients without a user name in on every listener. By default they
    /// are let in only on loopback listeners, and only without --password-file
    /// or a --webhook deciding logins.
    #[arg(long)]
    allow_anonymous: bool,
    /// Directory of the persistent store (created if missing): persistent
    /// sessions, their queued and in-flight QoS 1/2 messages, and retained
    /// messages survive restarts and crashes. See docs/persistence.md.
    #[arg(long, default_value = "midge-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Keep everything in memory only: nothing survives a restart.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// When a QoS 1/2 message counts as stored, and so is acknowledged:
    /// `always` (on disk, fsync'd, shared by concurrent messages), `interval`
    /// (flushed every --sync-interval-ms; a crash loses up to that much),
    /// `never` (flushed when the store needs it and at shutdown).
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Milliseconds between flushes with `--sync interval`.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    sync_interval_ms: u64,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info", env = "MIDGE_LOG")]
    log_level: String,
    /// `[[listener]]`s from the config file.
    #[arg(skip)]
    listeners: Vec<config::ListenerConfig>,
    /// Whether the --bind/--port listener(s) are opened (always without a
    /// config file listener).
    #[arg(skip = true)]
    default_listener: bool,
    /// Whether allow_anonymous was set explicitly (flag or file).
    #[arg(skip)]
    anonymous_given: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SyncArg {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WebhookCheck {
    Connect,
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve(mut args) => {
            let serve_matches = matches.subcommand_matches("serve").expect("serve was parsed");
            apply_config_file(&mut args, serve_matches).and_then(|()| serve(*args))
        }
        Command::Passwd(args) => passwd::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Bench(args) => bench::run(args),
        // pub and sub print their own errors and have their own exit codes.
        Command::Pub(args) => return client_cli::publish::run(args),
        Command::Sub(args) => return client_cli::subscribe::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("midge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fills from the config file every setting not given on the command line.
fn apply_config_file(args: &mut ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let Some(path) = &args.config else { return Ok(()) };
    let file = config::ConfigFile::load(path)?;
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    };
    macro_rules! take {
        ($($field:ident),*) => {$(
            if !given(stringify!($field)) && let Some(value) = file.$field {
                args.$field = value;
            }
        )*};
    }
    take!(sys_interval, max_inflight, max_queued_messages, max_packet_size, topic_alias_maximum, max_keep_alive);
    take!(shared_strategy, log_level, allow_anonymous, webhook_timeout_ms, webhook_cache_seconds);
    take!(data_dir, in_memory, sync, sync_interval_ms, max_queued_in_memory, threads);
    take!(max_topic_levels, max_topic_length, packet_timeout);
    if !given("webhook_checks")
        && let Some(checks) = file.webhook_checks
    {
        args.webhook_checks = checks;
    }
    if args.webhook.is_none() {
        args.webhook = file.webhook;
    }
    if args.webhook_ca.is_none() {
        args.webhook_ca = file.webhook_ca;
    }
    if args.response_information.is_none() {
        args.response_information = file.response_information;
    }
    if args.password_file.is_none() {
        args.password_file = file.password_file;
    }
    if args.acl_file.is_none() {
        args.acl_file = file.acl_file;
    }
    if args.max_inflight == 0 {
        anyhow::bail!("max_inflight must be at least 1");
    }
    if args.max_topic_levels == 0 || args.max_topic_length == 0 {
        anyhow::bail!("max_topic_levels and max_topic_length must be at least 1");
    }
    if !(16..=268_435_460).contains(&args.max_packet_size) {
        anyhow::bail!("max_packet_size must be between 16 and 268435460");
    }
    args.listeners = file.listener;
    args.default_listener = given("bind") || given("port") || args.listeners.is_empty();
    args.anonymous_given = given("allow_anonymous") || file.allow_anonymous.is_some();
    Ok(())
}

/// The scheduler for `threads` threads (0: one per CPU this process may run
/// on, which `taskset` and CPU affinity narrow).
///
/// One thread gets tokio's current-thread scheduler. A multi-threaded one
/// with a single worker still keeps its work-stealing queues and times every
/// batch of polls to tune itself: on one pinned CPU that was 18% of the
/// instructions a lone message costs (callgrind, docs/PERFORMANCE.md).
pub(crate) fn runtime(threads: usize) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    Ok((runtime?, threads))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(&args.log_level).with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    fdtable::presize();
    let (runtime, threads) = runtime(args.threads).context("starting the runtime")?;
    runtime.block_on(async move {
        let config = BrokerConfig {
            max_inflight: args.max_inflight,
            max_queued_messages: args.max_queued_messages,
            max_queued_in_memory: usize::try_from(args.max_queued_in_memory).unwrap_or(usize::MAX),
            max_packet_size: args.max_packet_size,
            topic_alias_maximum: args.topic_alias_maximum,
            max_topic_levels: usize::try_from(args.max_topic_levels).unwrap_or(usize::MAX),
            max_topic_length: usize::from(args.max_topic_length),
            packet_timeout: (args.packet_timeout > 0).then(|| Duration::from_secs(args.packet_timeout)),
            shared_strategy: args.shared_strategy.into(),
            max_keep_alive: args.max_keep_alive,
            sys_interval: (args.sys_interval > 0).then(|| Duration::from_secs(args.sys_interval)),
            response_information: args.response_information.clone(),
            ..BrokerConfig::default()
        };
        let mut signals = Signals::install()?;
        let mut hooks = Hooks::default();
        let mut access = match &args.password_file {
            Some(path) => {
                // Whether clients without a user name get in is each
                // listener's decision (ListenerPolicy), not the file's.
                let file = PasswordFile::load(path)?.allow_anonymous(true);
                let access =
                    format!("password file {} with {} users ({} with SCRAM-SHA-256)", path.display(), file.len(), file.scram_users());
                hooks.authenticator = Arc::new(file);
                access
            }
            None => "no password file".to_owned(),
        };
        if let Some(path) = &args.acl_file {
            let acl = AclFile::load(path)?;
            access.push_str(&format!("; ACL file {} with rules for {} users", path.display(), acl.users()));
            hooks.authorizer = Arc::new(acl);
        }
        if let Some(webhook) = webhook(&args)? {
            let checks = webhook.checks;
            let webhook = Arc::new(Webhook::new(webhook)?);
            let asked: Vec<&str> = [(checks.connect, "logins"), (checks.publish, "publishes"), (checks.subscribe, "subscriptions")]
                .into_iter()
                .filter_map(|(on, what)| on.then_some(what))
                .collect();
            access.push_str(&format!("; webhook {} decides {}", args.webhook.as_deref().unwrap_or_default(), asked.join(", ")));
            if checks.connect {
                hooks.authenticator = webhook.clone();
            }
            if checks.publish || checks.subscribe {
                hooks.authorizer = webhook;
            }
        }
        let broker = match open_store(&args)? {
            Some(store) => Broker::with_store(config, hooks, store),
            None => Broker::with_hooks(config, hooks),
        };
        if !args.in_memory {
            let found = broker.recover()?;
            tracing::info!(
                "store {}: recovered {} sessions ({} subscriptions, {} queued messages) and {} retained messages in {} ms",
                args.data_dir.display(),
                found.sessions,
                found.subscriptions,
                found.queued,
                found.retained,
                found.elapsed.as_millis()
            );
        } else {
            tracing::info!("in memory only (--in-memory): nothing survives a restart");
        }
        let bound = listener::bind(listener_specs(&args)).await?;
        tracing::info!("{} starting on {threads} thread{}", midge_broker::VERSION, if threads == 1 { "" } else { "s" });
        let mut accepts = Vec::new();
        let mut tls_cells = Vec::new();
        for bound in bound {
            tracing::info!("{}", bound.describe(&access)?);
            let local = bound.listener.local_addr().context("reading the bound address")?;
            let policy = &bound.spec.policy;
            if policy.allow_anonymous && !local.ip().is_loopback() && !policy.use_identity_as_username {
                tracing::warn!(
                    "listener {local} is not loopback and anonymous clients are allowed: anyone who can reach it can publish and subscribe"
                );
            }
            if !policy.allow_anonymous && !checks_logins(&args) && !policy.use_identity_as_username {
                tracing::warn!(
                    "listener {local} refuses anonymous clients and there is no password file: no client can connect \
                     (set --password-file or --webhook, or allow_anonymous = true)"
                );
            }
            tls_cells.push((bound.spec.clone(), bound.tls.clone()));
            accepts.push(tokio::spawn(listener::serve(broker.clone(), bound)));
        }
        broker.start_sys();
        signals.wait(|| listener::reload(&tls_cells)).await;
        tracing::info!("shutting down");
        broker.shutdown(Duration::from_secs(5)).await;
        accepts.iter().for_each(|a| a.abort());
        tracing::info!("stopped");
        Ok(())
    })
}

/// Opens the store in --data-dir, unless --in-memory.
fn open_store(args: &ServeArgs) -> anyhow::Result<Option<Arc<dyn Store>>> {
    if args.in_memory {
        return Ok(None);
    }
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let policy = match args.sync {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::Interval => SyncPolicy::Interval(Duration::from_millis(args.sync_interval_ms)),
        SyncArg::Never => SyncPolicy::Never,
    };
    let store = RedbStore::open(&dir.join("midge.redb"), policy)?;
    Ok(Some(Arc::new(store)))
}

/// Whether user names are checked (password file, or a webhook deciding logins).
fn checks_logins(args: &ServeArgs) -> bool {
    let webhook_connect = args.webhook.is_some()
        && (args.webhook_checks.is_empty() || args.webhook_checks.contains(&WebhookCheck::Connect));
    args.password_file.is_some() || webhook_connect
}

/// The webhook's settings, if there is one; refuses a webhook and a file
/// that would both decide the same question.
fn webhook(args: &ServeArgs) -> anyhow::Result<Option<WebhookConfig>> {
    let Some(url) = &args.webhook else {
        if !args.webhook_checks.is_empty() || args.webhook_ca.is_some() {
            anyhow::bail!("webhook_checks and webhook_ca need a webhook URL (--webhook)");
        }
        return Ok(None);
    };
    let checks = if args.webhook_checks.is_empty() {
        WebhookChecks::ALL
    } else {
        let has = |c| args.webhook_checks.contains(&c);
        WebhookChecks {
            connect: has(WebhookCheck::Connect),
            publish: has(WebhookCheck::Publish),
            subscribe: has(WebhookCheck::Subscribe),
        }
    };
    if checks.connect && args.password_file.is_some() {
        anyhow::bail!(
            "both the password file and the webhook would decide logins; \
             leave connect out of webhook_checks (for example --webhook-checks publish,subscribe)"
        );
    }
    if (checks.publish || checks.subscribe) && args.acl_file.is_some() {
        anyhow::bail!(
            "both the ACL file and the webhook would decide publishes and subscriptions; \
             use --webhook-checks connect to keep the ACL file for those"
        );
    }
    Ok(Some(WebhookConfig {
        checks,
        timeout: Duration::from_millis(args.webhook_timeout_ms.max(1)),
        cache_ttl: Duration::from_secs(args.webhook_cache_seconds),
        ca_file: args.webhook_ca.clone(),
        ..WebhookConfig::new(url.clone())
    }))
}

/// The listeners to open: `--bind`/`--port` (both loopbacks on 1883 by
/// default) unless the config file has `[[listener]]`s and neither flag was
/// given, plus those. Anonymous clients are allowed by default only on
/// loopback listeners of a broker that checks no logins.
fn listener_specs(args: &ServeArgs) -> Vec<ListenerSpec> {
    let explicit_anonymous = args.anonymous_given || args.allow_anonymous;
    let anonymous = |ip: IpAddr, own: Option<bool>| {
        own.unwrap_or(if explicit_anonymous { args.allow_anonymous } else { ip.is_loopback() && !checks_logins(args) })
    };
    let mut specs = Vec::new();
    if args.default_listener {
        let defaulted = args.bind.is_empty();
        let addrs: Vec<IpAddr> = if defaulted {
            vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]
        } else {
            args.bind.clone()
        };
        for ip in addrs {
            specs.push(ListenerSpec {
                addr: SocketAddr::new(ip, args.port),
                tls: None,
                policy: ListenerPolicy { allow_anonymous: anonymous(ip, None), use_identity_as_username: false },
                // A machine without IPv6 still starts on 127.0.0.1.
                optional: defaulted && ip.is_ipv6(),
            });
        }
    }
    for l in &args.listeners {
        let tls = l.tls_cert.clone().zip(l.tls_key.clone()).map(|(cert, key)| TlsSpec {
            cert,
            key,
            ca: l.tls_ca.clone(),
            require_certificate: l.require_certificate,
        });
        specs.push(ListenerSpec {
            addr: SocketAddr::new(l.bind, l.port),
            tls,
            policy: ListenerPolicy {
                allow_anonymous: anonymous(l.bind, l.allow_anonymous),
                use_identity_as_username: l.use_identity_as_username,
            },
            optional: false,
        });
    }
    specs
}

/// The signals `midge serve` handles, installed before it says it listens,
/// so a SIGTERM sent right after that line still stops it cleanly.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; on SIGHUP calls `reload` and goes on waiting.
    async fn wait(&mut self, reload: impl Fn()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => reload(),
            }
        }
    }
}
