//! Listeners: plain TCP and TLS (rustls), each with its admission policy.
//! TLS certificates are re-read on SIGHUP without dropping connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use midge_broker::{AcceptFailures, Broker, BrokerConfig, ListenerPolicy, Origin};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use swap::SwapCell;
use tokio::net::{TcpListener, TcpSocket};

/// TLS settings of one listener.
#[derive(Debug, Clone)]
pub(crate) struct TlsSpec {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) require_certificate: bool,
}

/// One listener to open.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<TlsSpec>,
    pub(crate) policy: ListenerPolicy,
    /// A default loopback listener that may be skipped where IPv6 is missing.
    pub(crate) optional: bool,
}

/// A TLS listener's current configuration, replaced on reload.
pub(crate) type TlsCell = Arc<SwapCell<Arc<ServerConfig>>>;

/// A bound listener, with its TLS configuration if any.
pub(crate) struct Bound {
    pub(crate) spec: ListenerSpec,
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<TlsCell>,
}

impl Bound {
    /// What the start-up line says about this listener.
    pub(crate) fn describe(&self, access: &str) -> anyhow::Result<String> {
        let local = self.listener.local_addr().context("reading the bound address")?;
        let (scheme, transport) = match &self.spec.tls {
            None => ("mqtt", String::new()),
            Some(tls) => (
                "mqtts",
                format!(
                    " over TLS{}",
                    match (&tls.ca, tls.require_certificate) {
                        (Some(_), true) => ", client certificate required",
                        (Some(_), false) => ", client certificate optional",
                        (None, _) => "",
                    }
                ),
            ),
        };
        let policy = &self.spec.policy;
        let who = if policy.use_identity_as_username {
            "user name from the client certificate".to_owned()
        } else if policy.allow_anonymous {
            format!("{access}; anonymous clients allowed")
        } else {
            format!("{access}; anonymous clients refused")
        };
        Ok(format!("listening on {scheme}://{local} (MQTT 3.1, 3.1.1, 5.0{transport}; {who})"))
    }
}

/// Binds every listener; TLS files are read now, so a mistake stops start-up.
pub(crate) async fn bind(specs: Vec<ListenerSpec>) -> anyhow::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    for mut spec in specs {
        // The default ::1 listener follows 127.0.0.1's ephemeral port, so
        // `--port 0` gives one port on both loopbacks.
        if spec.optional
            && spec.addr.port() == 0
            && let Some(port) = bound.last().and_then(|b: &Bound| b.listener.local_addr().ok()).map(|a| a.port())
        {
            spec.addr.set_port(port);
        }
        let tls = match &spec.tls {
            Some(tls) => Some(Arc::new(SwapCell::new(server_config(tls)?))),
            None => None,
        };
        match listen(spec.addr) {
            Ok(listener) => bound.push(Bound { spec, listener, tls }),
            Err(e) if spec.optional => tracing::debug!(error = %e, "skipping {}", spec.addr),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot listen on {}", spec.addr))),
        }
    }
    Ok(bound)
}

/// Connections the kernel may hold for us before we accept them. Tokio's
/// default (1024) overflows when thousands of clients connect at once (a
/// fleet reconnecting after an outage): the dropped SYNs are retried after
/// a second. The kernel caps it at net.core.somaxconn (4096 by default).
const BACKLOG: u32 = 4096;

#[cfg(target_os = "linux")]
mod defer {
    use nix::{libc, setsockopt_impl, sockopt_impl};
    // nix has no Linux TCP_DEFER_ACCEPT; its macro defines the option.
    sockopt_impl!(TcpDeferAccept, SetOnly, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, u32);
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As TcpListener::bind does: a restarted broker can take its port back
    // while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // The kernel keeps a new connection to itself until its first bytes
    // arrive (TCP_DEFER_ACCEPT). An MQTT client speaks first (CONNECT, or a
    // TLS ClientHello), so the broker is woken once per client with the
    // CONNECT readable, instead of once to accept and again to read it; a
    // connection that never speaks costs a request socket in the kernel,
    // not a task here. For as long as the CONNECT timeout (retransmitted
    // SYN-ACKs round it up), after which a silent one is handed over anyway
    // and meets that timeout.
    #[cfg(target_os = "linux")]
    {
        let secs = u32::try_from(BrokerConfig::default().connect_timeout.as_secs()).unwrap_or(u32::MAX);
        nix::sys::socket::setsockopt(&socket, defer::TcpDeferAccept, &secs)?;
    }
    socket.listen(BACKLOG)
}

/// Builds the rustls configuration: TLS 1.2 and 1.3, the ring provider,
/// client certificates verified against `ca` when one is given.
pub(crate) fn server_config(spec: &TlsSpec) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&spec.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate {}", spec.cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", spec.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&spec.key)
        .with_context(|| format!("cannot read the private key {}", spec.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?;
    let builder = match &spec.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            for cert in cas {
                roots.add(cert).with_context(|| format!("bad CA certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if spec.require_certificate { verifier.build() } else { verifier.allow_unauthenticated().build() };
            builder.with_client_cert_verifier(verifier.context("client certificate verifier")?)
        }
        None if spec.require_certificate => {
            bail!("require_certificate needs tls_ca (the CA that signs client certificates)")
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).with_context(|| {
        format!("the key {} does not fit the certificate {}", spec.key.display(), spec.cert.display())
    })?;
    Ok(Arc::new(config))
}

/// Serves a bound listener until the task is aborted.
pub(crate) async fn serve(broker: Broker, bound: Bound) {
    let policy = Arc::new(bound.spec.policy.clone());
    let Some(tls) = bound.tls else {
        broker.serve_tcp_with(bound.listener, policy).await;
        return;
    };
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, peer) = match bound.listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                failures.failed(&e).await;
                continue;
            }
        };
        failures.succeeded();
        if broker.is_shutting_down() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let (broker, policy) = (broker.clone(), policy.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let certificate_identity = stream.get_ref().1.peer_certificates().and_then(identity);
                    broker.serve_connection_from(stream, Origin { peer, certificate_identity, policy });
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The identity of a verified client certificate: the subject's CN, else
/// its first DNS name.
fn identity(chain: &[CertificateDer<'_>]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}

/// Re-reads every TLS listener's files; a listener whose files fail keeps
/// its old configuration. New connections use the new one, existing ones
/// are untouched.
pub(crate) fn reload(bound: &[(ListenerSpec, Option<TlsCell>)]) {
    for (spec, cell) in bound {
        let (Some(tls), Some(cell)) = (&spec.tls, cell) else { continue };
        match server_config(tls) {
            Ok(config) => {
                cell.set(config);
                tracing::info!("reloaded TLS certificate {} for {}", tls.cert.display(), spec.addr);
            }
            Err(e) => tracing::error!("keeping the old TLS certificate for {}: {e:#}", spec.addr),
        }
    }
}

/// A value swapped whole under a lock held only to clone or replace it.
mod swap {
    use std::sync::RwLock;

    pub(crate) struct SwapCell<T: Clone>(RwLock<T>);

    impl<T: Clone> SwapCell<T> {
        pub(crate) fn new(value: T) -> Self {
            SwapCell(RwLock::new(value))
        }

        pub(crate) fn get(&self) -> T {
            self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
        }

        pub(crate) fn set(&self, value: T) {
            *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
        }
    }
}
