//! What to connect to and how: [`ConnectOptions`] and its parts.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use midge_codec::{ProtocolVersion, QoS, UserProperty, Will, WillProperties};

use crate::error::ClientError;

/// How bytes reach the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP (`mqtt://`, port 1883 by default).
    Tcp,
    /// TLS over TCP (`mqtts://`, port 8883 by default).
    Tls(TlsOptions),
    /// WebSocket (`ws://`, port 8083 by default) on the given HTTP path, with the
    /// `mqtt` subprotocol.
    WebSocket {
        /// The HTTP path of the endpoint, `/mqtt` by default.
        path: String,
    },
    /// WebSocket over TLS (`wss://`, port 8084 by default).
    WebSocketTls {
        /// The HTTP path of the endpoint, `/mqtt` by default.
        path: String,
        /// Certificates to trust and to present.
        tls: TlsOptions,
    },
}

impl Transport {
    /// The TLS settings, for the transports that use TLS.
    pub fn tls(&self) -> Option<&TlsOptions> {
        match self {
            Transport::Tls(tls) | Transport::WebSocketTls { tls, .. } => Some(tls),
            _ => None,
        }
    }

    /// The TLS settings, mutable, for the transports that use TLS.
    pub fn tls_mut(&mut self) -> Option<&mut TlsOptions> {
        match self {
            Transport::Tls(tls) | Transport::WebSocketTls { tls, .. } => Some(tls),
            _ => None,
        }
    }
}

/// Certificates for a TLS connection. With neither `ca_file` nor `ca_path`
/// the operating system's trusted roots are used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the certificate authorities to trust (`--cafile`).
    pub ca_file: Option<PathBuf>,
    /// Directory whose PEM files (`*.pem`, `*.crt`) are trusted authorities (`--capath`).
    pub ca_path: Option<PathBuf>,
    /// PEM certificate chain presented to the broker (`--cert`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (`--key`).
    pub client_key: Option<PathBuf>,
    /// Accept a server certificate whose names do not match the host
    /// (`--insecure`); the chain is still verified against the trusted authorities.
    pub insecure: bool,
}

/// When the connection is lost, how long to wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Wait before the first attempt.
    pub min_delay: Duration,
    /// The wait doubles after each failed attempt, up to this.
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect { min_delay: Duration::from_millis(100), max_delay: Duration::from_secs(10) }
    }
}

/// Everything [`crate::Client::connect`] needs: where the broker is and the
/// CONNECT packet to send. Built with [`ConnectOptions::new`] or
/// [`ConnectOptions::from_url`] and the chained setters.
///
/// ```
/// use std::time::Duration;
/// use midge_client::{ConnectOptions, ProtocolVersion};
///
/// let options = ConnectOptions::from_url("mqtt://alice:secret@localhost:1883")?
///     .client_id("sensor-1")
///     .protocol(ProtocolVersion::V5)
///     .keep_alive(Duration::from_secs(30))
///     .clean_start(false)
///     .session_expiry_interval(3600);
/// assert_eq!(options.host(), "localhost");
/// # Ok::<(), midge_client::ClientError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) transport: Transport,
    pub(crate) client_id: String,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) keep_alive: u16,
    pub(crate) clean_start: bool,
    pub(crate) session_expiry_interval: Option<u32>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Bytes>,
    pub(crate) will: Option<Will>,
    pub(crate) user_properties: Vec<UserProperty>,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) offline_capacity: usize,
    pub(crate) max_inflight: u16,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_packet_size: u32,
    pub(crate) event_capacity: usize,
}

impl ConnectOptions {
    /// Plain TCP to `host:port`, MQTT 3.1.1, clean session, 60 s keep-alive,
    /// no automatic reconnect, an offline buffer of 1000 messages.
    pub fn new(host: impl Into<String>, port: u16) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            port,
            transport: Transport::Tcp,
            client_id: String::new(),
            protocol: ProtocolVersion::V3_1_1,
            keep_alive: 60,
            clean_start: true,
            session_expiry_interval: None,
            username: None,
            password: None,
            will: None,
            user_properties: Vec::new(),
            reconnect: None,
            offline_capacity: 1000,
            max_inflight: 64,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 268_435_460,
            event_capacity: 1024,
        }
    }

    /// Parses `mqtt://`, `mqtts://`, `ws://` or `wss://` URLs with optional
    /// `user:password@` and port; a WebSocket URL's path is the endpoint
    /// (`/mqtt` when empty). A path of an `mqtt(s)` URL is ignored here (the
    /// command-line clients read it as a topic).
    pub fn from_url(url: &str) -> Result<ConnectOptions, ClientError> {
        let parsed = Url::parse(url)?;
        let mut options = ConnectOptions::new(parsed.host, parsed.port);
        options.transport = parsed.transport;
        options.username = parsed.username;
        options.password = parsed.password.map(Bytes::from);
        Ok(options)
    }

    /// The broker's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The transport.
    pub fn transport_ref(&self) -> &Transport {
        &self.transport
    }

    /// The client identifier sent in CONNECT.
    pub fn client_id_ref(&self) -> &str {
        &self.client_id
    }

    /// The protocol version.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.protocol
    }

    /// Sets the host.
    pub fn host_name(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets the port.
    pub fn port_number(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the transport (TCP, TLS, WebSocket).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the client identifier; empty lets the broker assign one (3.1.1
    /// with a clean session, and 5.0).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Sets the protocol version (3.1, 3.1.1 or 5.0).
    pub fn protocol(mut self, protocol: ProtocolVersion) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the keep-alive interval (whole seconds, at most 65535); zero turns keep-alive off.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
        self
    }

    /// Clean Session (3.x) / Clean Start (5.0). With `false`, the broker
    /// keeps the session (subscriptions, queued messages) across connections.
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// v5 Session Expiry Interval in seconds (`u32::MAX`: never expires).
    pub fn session_expiry_interval(mut self, seconds: u32) -> Self {
        self.session_expiry_interval = Some(seconds);
        self
    }

    /// Sets the user name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: Option<impl Into<Bytes>>) -> Self {
        self.username = Some(username.into());
        self.password = password.map(Into::into);
        self
    }

    /// Sets the last will: published by the broker if the connection ends without DISCONNECT.
    pub fn will(
        mut self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: WillProperties,
    ) -> Self {
        self.will = Some(Will { topic: topic.into().into(), payload: payload.into(), qos, retain, properties });
        self
    }

    /// Adds a v5 user property to CONNECT.
    pub fn user_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((key.into(), value.into()));
        self
    }

    /// Reconnects automatically when the connection is lost, resuming the
    /// session and re-sending unacknowledged messages.
    pub fn reconnect(mut self, reconnect: Option<Reconnect>) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// How many publishes wait while the client is offline (or the in-flight
    /// window is full); beyond that [`crate::Client::publish`] fails with
    /// [`ClientError::OfflineBufferFull`].
    pub fn offline_capacity(mut self, capacity: usize) -> Self {
        self.offline_capacity = capacity.max(1);
        self
    }

    /// Most QoS 1/2 publishes awaiting acknowledgement at once (the broker's
    /// v5 Receive Maximum lowers it).
    pub fn max_inflight(mut self, max_inflight: u16) -> Self {
        self.max_inflight = max_inflight.max(1);
        self
    }

    /// How long connecting (transport and CONNACK) may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest packet accepted from the broker.
    pub fn max_packet_size(mut self, max: u32) -> Self {
        self.max_packet_size = max;
        self
    }
}

/// A broker URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The transport the scheme names.
    pub transport: Transport,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (the scheme's default when absent).
    pub port: u16,
    /// From `user:password@`.
    pub username: Option<String>,
    /// From `user:password@`.
    pub password: Option<String>,
    /// The path without its leading `/` (a topic for `mqtt(s)://`, as
    /// `mosquitto_pub -L` reads it).
    pub path: String,
}

impl Url {
    /// Parses `scheme://[user[:password]@]host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Url, ClientError> {
        let bad = |why: &str| ClientError::InvalidUrl(format!("{url}: {why}"));
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| bad("no scheme (mqtt://, mqtts://, ws://, wss://)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
                None => (Some(percent_decode(info)), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let end = stripped.find(']').ok_or_else(|| bad("unclosed ["))?;
            let after = &stripped[end + 1..];
            (stripped[..end].to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let (transport, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (Transport::Tcp, 1883),
            "mqtts" | "ssl" | "tls" => (Transport::Tls(TlsOptions::default()), 8883),
            "ws" => (Transport::WebSocket { path: format!("/{path}") }, 8083),
            "wss" => (Transport::WebSocketTls { path: format!("/{path}"), tls: TlsOptions::default() }, 8084),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let transport = match transport {
            Transport::WebSocket { path } if path == "/" => Transport::WebSocket { path: "/mqtt".into() },
            Transport::WebSocketTls { path, tls } if path == "/" => {
                Transport::WebSocketTls { path: "/mqtt".into(), tls }
            }
            t => t,
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None => default_port,
        };
        Ok(Url { transport, host, port, username, password, path: percent_decode(path) })
    }
}

/// Decodes `%XX` escapes (user names, passwords and topics may contain `@`, `:` or `/`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_transport_credentials_port_and_path() {
        let url = Url::parse("mqtts://al%40ice:p%3Ass@broker.example:8884/a/b").unwrap();
        assert_eq!(url.transport, Transport::Tls(TlsOptions::default()));
        assert_eq!((url.host.as_str(), url.port), ("broker.example", 8884));
        assert_eq!(url.username.as_deref(), Some("al@ice"));
        assert_eq!(url.password.as_deref(), Some("p:ss"));
        assert_eq!(url.path, "a/b");

        let ws = Url::parse("ws://[::1]").unwrap();
        assert_eq!(ws.transport, Transport::WebSocket { path: "/mqtt".into() });
        assert_eq!((ws.host.as_str(), ws.port), ("::1", 8083));
        assert_eq!(Url::parse("wss://h/ws").unwrap().port, 8084);
        assert!(Url::parse("http://h").is_err());
        assert!(Url::parse("localhost:1883").is_err());
    }
}
