//! The connection flags `midge pub` and `midge sub` share, and how they
//! become [`ConnectOptions`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use midge_client::{
    ConnectOptions, DisconnectProperties, ProtocolVersion, PublishProperties, QoS, SubscribeProperties, TlsOptions,
    Transport, Url, WillProperties,
};

use super::Failure;

/// Connection flags, as `mosquitto_pub` and `mosquitto_sub` spell them.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnArgs {
    /// Broker host name or address.
    #[arg(short = 'h', long = "host", value_name = "HOST", default_value = "localhost")]
    pub(crate) host: String,
    /// Broker port [default: 1883, or 8883 with TLS].
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub(crate) port: Option<u16>,
    /// Broker (and topic) as a URL: mqtt://, mqtts://, ws://, wss://, with
    /// optional user:password@ and port. For mqtt(s) the path is the topic;
    /// for ws(s) it is the WebSocket endpoint (default /mqtt).
    #[arg(short = 'L', long = "url", value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Client identifier [default: midge-pub-PID / midge-sub-PID].
    #[arg(short = 'i', long = "id", value_name = "ID")]
    pub(crate) id: Option<String>,
    /// Client identifier prefix: the process id is appended.
    #[arg(short = 'I', long = "id-prefix", value_name = "PREFIX", conflicts_with = "id")]
    pub(crate) id_prefix: Option<String>,
    /// Keep-alive interval in seconds; 0 turns keep-alive off.
    #[arg(short = 'k', long = "keepalive", value_name = "SECONDS", default_value_t = 60)]
    pub(crate) keepalive: u16,
    /// User name.
    #[arg(short = 'u', long = "username", value_name = "USER")]
    pub(crate) username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw", value_name = "PASSWORD")]
    pub(crate) password: Option<String>,
    /// MQTT version: 31, 311 or 5 (also mqttv31, mqttv311, mqttv5).
    #[arg(short = 'V', long = "protocol-version", value_name = "VERSION", default_value = "311", value_parser = parse_version)]
    pub(crate) version: ProtocolVersion,
    /// Disable clean session / clean start: the broker keeps the session
    /// (subscriptions, queued QoS 1/2 messages) after disconnecting. Needs -i.
    /// With -V 5 the session never expires unless --session-expiry says otherwise.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub(crate) persistent: bool,
    /// MQTT 5 session expiry interval in seconds (CONNECT property).
    #[arg(long = "session-expiry", value_name = "SECONDS")]
    pub(crate) session_expiry: Option<u32>,
    /// Print what is sent and received (on stderr).
    #[arg(short = 'd', long = "debug")]
    pub(crate) debug: bool,
    /// Print no error messages (the exit code still tells).
    #[arg(long = "quiet")]
    pub(crate) quiet: bool,
    /// MQTT 5 property: -D COMMAND IDENTIFIER VALUE (user-property takes KEY VALUE).
    /// COMMAND is connect, publish, subscribe, disconnect or will; see docs/clients.md.
    #[arg(short = 'D', long = "property", value_names = ["COMMAND", "IDENTIFIER", "VALUE"], num_args = 3..=4, action = clap::ArgAction::Append)]
    pub(crate) properties: Vec<String>,
    /// Topic of the will, published by the broker if this client vanishes.
    #[arg(long = "will-topic", value_name = "TOPIC")]
    pub(crate) will_topic: Option<String>,
    /// Payload of the will.
    #[arg(long = "will-payload", value_name = "PAYLOAD", requires = "will_topic")]
    pub(crate) will_payload: Option<String>,
    /// QoS of the will.
    #[arg(long = "will-qos", value_name = "QOS", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain", requires = "will_topic")]
    pub(crate) will_retain: bool,
    /// PEM file of certificate authorities to trust; turns TLS on.
    #[arg(long = "cafile", value_name = "FILE")]
    pub(crate) cafile: Option<PathBuf>,
    /// Directory of PEM certificate authorities to trust; turns TLS on.
    #[arg(long = "capath", value_name = "DIR")]
    pub(crate) capath: Option<PathBuf>,
    /// Trust the operating system's certificate authorities; turns TLS on.
    #[arg(long = "tls-use-os-certs")]
    pub(crate) os_certs: bool,
    /// Client certificate (PEM) to present.
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Do not check that the server certificate names the host (the chain is still checked).
    #[arg(long = "insecure")]
    pub(crate) insecure: bool,
    /// Seconds to wait for the connection (transport and CONNACK).
    #[arg(long = "connect-timeout", value_name = "SECONDS", default_value_t = 10.0)]
    pub(crate) connect_timeout: f64,
    /// Print help (`-h` is the host, as in mosquitto_pub).
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub(crate) help: Option<bool>,
}

/// Parses `-V` for every midge client command: mosquitto's spellings (31,
/// 311, 5, mqttv311…) and emqtt-bench's protocol levels (3, 4, 5).
pub(crate) fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s.to_ascii_lowercase().as_str() {
        "31" | "mqttv31" | "3.1" | "3" => Ok(ProtocolVersion::V3_1),
        "311" | "mqttv311" | "3.1.1" | "4" => Ok(ProtocolVersion::V3_1_1),
        "5" | "mqttv5" | "5.0" => Ok(ProtocolVersion::V5),
        _ => Err("must be 31, 311 or 5 (or mqttv31, mqttv311, mqttv5; or the protocol levels 3, 4, 5)".into()),
    }
}

/// Parses a QoS flag value.
pub(crate) fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>().ok().and_then(QoS::from_u8).ok_or_else(|| "must be 0, 1 or 2".into())
}

/// The -D properties, sorted by the packet they go in.
#[derive(Debug, Default)]
pub(crate) struct Properties {
    pub(crate) publish: PublishProperties,
    pub(crate) subscribe: SubscribeProperties,
    pub(crate) disconnect: DisconnectProperties,
    will: WillProperties,
    connect_user: Vec<(String, String)>,
    connect_session_expiry: Option<u32>,
}

/// Everything the flags resolve to.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) options: ConnectOptions,
    /// The topic from an mqtt(s):// URL path.
    pub(crate) url_topic: Option<String>,
    pub(crate) properties: Properties,
    pub(crate) client_id: String,
}

impl ConnArgs {
    /// Resolves the flags into connect options; `program` is `pub` or `sub`.
    pub(crate) fn resolve(&self, program: &str) -> Result<Resolved, Failure> {
        let properties = self.parse_properties()?;
        let mut transport = Transport::Tcp;
        let mut host = self.host.clone();
        let mut port = self.port;
        let mut username = self.username.clone();
        let mut password = self.password.clone();
        let mut url_topic = None;
        if let Some(url) = &self.url {
            let url = Url::parse(url).map_err(|e| Failure::usage(e.to_string()))?;
            host = url.host;
            port = Some(url.port);
            username = url.username.or(username);
            password = url.password.or(password);
            if matches!(url.transport, Transport::Tcp | Transport::Tls(_)) && !url.path.is_empty() {
                url_topic = Some(url.path);
            }
            transport = url.transport;
        }
        let tls_options = TlsOptions {
            ca_file: self.cafile.clone(),
            ca_path: self.capath.clone(),
            client_cert: self.cert.clone(),
            client_key: self.key.clone(),
            insecure: self.insecure,
        };
        let wants_tls = self.cafile.is_some() || self.capath.is_some() || self.os_certs || self.cert.is_some();
        transport = match transport {
            Transport::Tcp if wants_tls => Transport::Tls(tls_options),
            Transport::Tls(_) => Transport::Tls(tls_options),
            Transport::WebSocketTls { path, .. } => Transport::WebSocketTls { path, tls: tls_options },
            other => other,
        };
        let port = port.unwrap_or(if transport.tls().is_some() { 8883 } else { 1883 });
        let client_id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{}", std::process::id()),
            (None, None) if self.persistent => {
                return Err(Failure::usage("-c (a persistent session) needs a client id: give -i ID"));
            }
            (None, None) => format!("midge-{program}-{}", std::process::id()),
        };
        let v5 = self.version == ProtocolVersion::V5;
        let mut options = ConnectOptions::new(host, port)
            .transport(transport)
            .client_id(client_id.clone())
            .protocol(self.version)
            .keep_alive(Duration::from_secs(u64::from(self.keepalive)))
            .clean_start(!self.persistent)
            .connect_timeout(Duration::from_secs_f64(self.connect_timeout.clamp(0.001, 86_400.0)));
        let session_expiry = self.session_expiry.or(properties.connect_session_expiry);
        if let Some(seconds) = session_expiry {
            if !v5 {
                return Err(Failure::usage("--session-expiry is an MQTT 5 property: add -V 5"));
            }
            options = options.session_expiry_interval(seconds);
        } else if v5 && self.persistent {
            // What -c means for 3.1.1: the session outlives the connection.
            options = options.session_expiry_interval(u32::MAX);
        }
        for (key, value) in &properties.connect_user {
            options = options.user_property(key.clone(), value.clone());
        }
        if let Some(user) = username {
            options = options.credentials(user, password.map(Bytes::from));
        } else if password.is_some() {
            return Err(Failure::usage("-P needs -u (a password without a user name)"));
        }
        if let Some(topic) = &self.will_topic {
            let qos = QoS::from_u8(self.will_qos).unwrap_or_default();
            let payload = self.will_payload.clone().unwrap_or_default();
            options = options.will(topic.clone(), payload, qos, self.will_retain, properties.will.clone());
        }
        Ok(Resolved { options, url_topic, properties, client_id })
    }

    fn parse_properties(&self) -> Result<Properties, Failure> {
        let mut p = Properties::default();
        if !self.properties.is_empty() && self.version != ProtocolVersion::V5 {
            return Err(Failure::usage("-D sets MQTT 5 properties: add -V 5"));
        }
        // clap hands every -D's values over as one list; each -D is three
        // values, or four for user-property, so the list splits unambiguously.
        let mut flat = self.properties.as_slice();
        while !flat.is_empty() {
            let take = if flat.get(1).is_some_and(|i| i == "user-property") { 4 } else { 3 };
            let (values, tail) = flat.split_at(take.min(flat.len()));
            flat = tail;
            let [command, identifier, rest @ ..] = values else {
                return Err(Failure::usage("-D needs COMMAND IDENTIFIER VALUE"));
            };
            let bad = |why: &str| Failure::usage(format!("-D {}: {why}", values.join(" ")));
            let value = rest.first().ok_or_else(|| bad("no value"))?.clone();
            if identifier == "user-property" {
                let [key, value] = rest else { return Err(bad("user-property needs KEY VALUE")) };
                let pair = (key.clone(), value.clone());
                match command.as_str() {
                    "connect" => p.connect_user.push(pair),
                    "publish" => p.publish.user_properties.push(pair),
                    "subscribe" => p.subscribe.user_properties.push(pair),
                    "disconnect" => p.disconnect.user_properties.push(pair),
                    "will" => p.will.user_properties.push(pair),
                    _ => return Err(bad("COMMAND must be connect, publish, subscribe, disconnect or will")),
                }
                continue;
            }
            if rest.len() != 1 {
                return Err(bad("one value expected"));
            }
            let number = |max: u64| -> Result<u64, Failure> {
                value.parse::<u64>().ok().filter(|v| *v <= max).ok_or_else(|| bad(&format!("value must be 0..={max}")))
            };
            match (command.as_str(), identifier.as_str()) {
                ("connect", "session-expiry-interval") => {
                    p.connect_session_expiry = Some(number(u32::MAX.into())? as u32)
                }
                ("disconnect", "session-expiry-interval") => {
                    p.disconnect.session_expiry_interval = Some(number(u32::MAX.into())? as u32)
                }
                ("publish", "payload-format-indicator") => p.publish.payload_format_indicator = Some(number(1)? as u8),
                ("publish", "message-expiry-interval") => {
                    p.publish.message_expiry_interval = Some(number(u32::MAX.into())? as u32)
                }
                ("publish", "content-type") => p.publish.content_type = Some(value),
                ("publish", "response-topic") => p.publish.response_topic = Some(value),
                ("publish", "correlation-data") => p.publish.correlation_data = Some(Bytes::from(value)),
                ("subscribe", "subscription-identifier") => {
                    let id = number(268_435_455)? as u32;
                    if id == 0 {
                        return Err(bad("subscription-identifier must be 1..=268435455"));
                    }
                    p.subscribe.subscription_identifier = Some(id);
                }
                ("will", "will-delay-interval") => p.will.will_delay_interval = Some(number(u32::MAX.into())? as u32),
                ("will", "payload-format-indicator") => p.will.payload_format_indicator = Some(number(1)? as u8),
                ("will", "message-expiry-interval") => {
                    p.will.message_expiry_interval = Some(number(u32::MAX.into())? as u32)
                }
                ("will", "content-type") => p.will.content_type = Some(value),
                ("will", "response-topic") => p.will.response_topic = Some(value),
                ("will", "correlation-data") => p.will.correlation_data = Some(Bytes::from(value)),
                _ => return Err(bad("unknown or unsupported COMMAND IDENTIFIER pair (see docs/clients.md)")),
            }
        }
        Ok(p)
    }
}
