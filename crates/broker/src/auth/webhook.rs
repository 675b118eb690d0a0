//! An HTTP webhook policy: the broker asks a web service, in any language,
//! whether a client may connect, publish or subscribe.
//!
//! Each question is a `POST` of a JSON object to one URL:
//!
//! ```json
//! {"action": "connect", "client_id": "c1", "username": "alice", "password": "secret",
//!  "peer": "192.0.2.7:50312", "protocol": "5.0"}
//! {"action": "publish", "client_id": "c1", "username": "alice", "peer": "…", "protocol": "5.0", "topic": "a/b"}
//! {"action": "subscribe", "client_id": "c1", "username": "alice", "peer": "…", "protocol": "5.0", "topic": "a/#"}
//! ```
//!
//! (`username` is `null` for anonymous clients; a password that is not
//! UTF-8 is sent as `password_base64` instead.) The answer allows when the
//! status is 2xx and the body is empty or `{"result": "allow"}`; anything
//! else denies — a `{"result": "deny"}`, another status, a malformed body,
//! a timeout, a service that is down. Failing closed is the point of an
//! access policy; each such failure is logged.
//!
//! Publish and subscribe answers are cached per (action, client, user name,
//! topic) for [`WebhookConfig::cache_ttl`], so a device publishing to the
//! same topic every second costs one request a minute, not one a second.
//! Connect answers are never cached: each carries a password.
//!
//! Deliveries are not asked about ([`Authorizer::authorize_read`] must
//! answer at once): the subscription decides, as in EMQX.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use midge_codec::{ProtocolVersion, ReasonCode};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use super::{Authenticator, Authorizer, BoxFuture, Check, ClientInfo, Verdict};

/// Largest answer body read; a decision needs a few bytes.
const MAX_BODY: usize = 64 * 1024;

/// Which questions a [`Webhook`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookChecks {
    /// Logins (CONNECT without an Authentication Method).
    pub connect: bool,
    /// Publishes, wills included.
    pub publish: bool,
    /// Subscriptions.
    pub subscribe: bool,
}

impl WebhookChecks {
    /// Every question.
    pub const ALL: WebhookChecks = WebhookChecks { connect: true, publish: true, subscribe: true };
}

/// Where and how a [`Webhook`] asks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the questions are POSTed to.
    pub url: String,
    /// The questions asked; the rest are allowed without asking.
    pub checks: WebhookChecks,
    /// How long one question may take, connection included; then it is
    /// denied. Default 5 s.
    pub timeout: Duration,
    /// How long publish/subscribe answers are reused; zero turns the cache
    /// off. Default 60 s.
    pub cache_ttl: Duration,
    /// Most answers cached. Default 100,000.
    pub cache_size: usize,
    /// PEM file of CA certificates trusted for an `https` URL instead of
    /// the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl WebhookConfig {
    /// Asks `url` every question, with the default timeout and cache.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            checks: WebhookChecks::ALL,
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(60),
            cache_size: 100_000,
            ca_file: None,
        }
    }
}

/// Why a [`Webhook`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL does not parse or is not http/https.
    #[error("webhook URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("webhook CA file {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

#[derive(Serialize)]
struct Question<'a> {
    action: &'a str,
    client_id: &'a str,
    username: Option<&'a str>,
    peer: String,
    protocol: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_base64: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    subscribe: bool,
    client_id: String,
    username: Option<String>,
    topic: String,
}

/// The webhook policy; see the module notes for the protocol.
pub struct Webhook {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    config: WebhookConfig,
    cache: Mutex<HashMap<CacheKey, (bool, Instant)>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.config.url).finish()
    }
}

impl Webhook {
    /// Checks the URL (and reads the CA file); asks nothing yet.
    pub fn new(config: WebhookConfig) -> Result<Webhook, WebhookError> {
        let url_error = |why: &str| WebhookError::Url { url: config.url.clone(), why: why.to_owned() };
        let uri: Uri = config.url.parse().map_err(|e: hyper::http::uri::InvalidUri| url_error(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(url_error("must start with http:// or https://")),
        }
        if uri.host().is_none() {
            return Err(url_error("has no host"));
        }
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match (&config.ca_file, uri.scheme_str()) {
            (Some(path), _) => builder.with_tls_config(client_tls(path)?),
            (None, Some("https")) => builder
                .with_native_roots()
                .map_err(|e| WebhookError::Ca { path: "(system certificates)".to_owned(), why: e.to_string() })?,
            // Plain http: TLS is never used, trust nothing.
            (None, _) => builder.with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Webhook { client, uri, config, cache: Mutex::new(HashMap::new()) })
    }

    /// POSTs one question; true only for an explicit allow.
    async fn ask(&self, question: &Question<'_>) -> bool {
        let body = match serde_json::to_vec(question) {
            Ok(body) => body,
            Err(_) => return false,
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, crate::VERSION)
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else { return false };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let peer = &question.peer;
        let (action, client_id) = (question.action, question.client_id);
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Err(_) => {
                tracing::warn!(
                    url = self.config.url,
                    action,
                    client_id,
                    peer,
                    "webhook timed out after {:?}; denying",
                    self.config.timeout
                );
                false
            }
            Ok(Err(why)) => {
                tracing::warn!(url = self.config.url, action, client_id, peer, "webhook {why}; denying");
                false
            }
            Ok(Ok((status, body))) => match decide(status.as_u16(), &body) {
                Ok(allowed) => {
                    tracing::debug!(action, client_id, peer, topic = question.topic, allowed, "webhook answered");
                    allowed
                }
                Err(why) => {
                    tracing::warn!(
                        url = self.config.url,
                        action,
                        client_id,
                        peer,
                        status = status.as_u16(),
                        "webhook answer {why}; denying"
                    );
                    false
                }
            },
        }
    }

    fn question<'a>(action: &'a str, client: &'a ClientInfo, topic: Option<&'a str>) -> Question<'a> {
        Question {
            action,
            client_id: &client.client_id,
            username: client.username.as_deref(),
            peer: client.peer.to_string(),
            protocol: match client.protocol_version {
                ProtocolVersion::V3_1 => "3.1",
                ProtocolVersion::V3_1_1 => "3.1.1",
                ProtocolVersion::V5 => "5.0",
            },
            topic,
            password: None,
            password_base64: None,
        }
    }

    /// A publish or subscribe question, answered from the cache if it can be.
    fn authorize<'a>(&'a self, subscribe: bool, client: &'a ClientInfo, topic: &'a str) -> Check<'a> {
        let caching = !self.config.cache_ttl.is_zero();
        let key = caching.then(|| CacheKey {
            subscribe,
            client_id: client.client_id.clone(),
            username: client.username.clone(),
            topic: topic.to_owned(),
        });
        if let Some(key) = &key
            && let Some(&(allowed, until)) = self.cache.lock().get(key)
            && Instant::now() < until
        {
            return Check::Ready(allowed);
        }
        Check::Pending(Box::pin(async move {
            let action = if subscribe { "subscribe" } else { "publish" };
            let allowed = self.ask(&Webhook::question(action, client, Some(topic))).await;
            if let Some(key) = key {
                self.remember(key, allowed);
            }
            allowed
        }))
    }

    fn remember(&self, key: CacheKey, allowed: bool) {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if cache.len() >= self.config.cache_size {
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= self.config.cache_size {
                // Still full of live answers: start over rather than grow.
                cache.clear();
            }
        }
        if self.config.cache_size > 0 {
            cache.insert(key, (allowed, now + self.config.cache_ttl));
        }
    }
}

/// Reads a PEM CA file into a client TLS configuration.
fn client_tls(path: &std::path::Path) -> Result<rustls::ClientConfig, WebhookError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let ca_error = |why: String| WebhookError::Ca { path: path.display().to_string(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| ca_error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("no certificate in it".to_owned()));
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// The decision in an answer, or why the answer is not one.
fn decide(status: u16, body: &[u8]) -> Result<bool, String> {
    if !(200..300).contains(&status) {
        return Ok(false);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(true);
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        result: String,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("is not {{\"result\": \"allow\"|\"deny\"}} ({e})"))?;
    match answer.result.as_str() {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(format!("has result {other:?}, not \"allow\" or \"deny\"")),
    }
}

impl Authenticator for Webhook {
    fn authenticate<'a>(&'a self, client: &'a ClientInfo, password: Option<&'a [u8]>) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if !self.config.checks.connect {
                return Verdict::Allow;
            }
            let mut question = Webhook::question("connect", client, None);
            match password.map(std::str::from_utf8) {
                Some(Ok(text)) => question.password = Some(text),
                Some(Err(_)) => {
                    use base64::Engine;
                    question.password_base64 = password.map(|p| base64::engine::general_purpose::STANDARD.encode(p));
                }
                None => {}
            }
            if self.ask(&question).await {
                Verdict::Allow
            } else {
                tracing::info!(peer = %client.peer, client_id = client.client_id, username = client.username, "webhook refused the login");
                Verdict::Deny(if client.username.is_some() {
                    ReasonCode::BadUserNameOrPassword
                } else {
                    ReasonCode::NotAuthorized
                })
            }
        })
    }
}

impl Authorizer for Webhook {
    fn authorize_publish<'a>(&'a self, client: &'a ClientInfo, topic: &'a str) -> Check<'a> {
        if !self.config.checks.publish {
            return Check::Ready(true);
        }
        self.authorize(false, client, topic)
    }

    fn authorize_subscribe<'a>(&'a self, client: &'a ClientInfo, filter: &'a str) -> Check<'a> {
        if !self.config.checks.subscribe {
            return Check::Ready(true);
        }
        self.authorize(true, client, filter)
    }

    fn authorize_read(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(decide(200, b""), Ok(true));
        assert_eq!(decide(204, b""), Ok(true));
        assert_eq!(decide(200, br#"{"result": "allow"}"#), Ok(true));
        assert_eq!(decide(200, br#"{"result":"deny","reason":"no"}"#), Ok(false));
        assert_eq!(decide(403, br#"{"result": "allow"}"#), Ok(false));
        assert_eq!(decide(500, b""), Ok(false));
        assert!(decide(200, br#"{"result": "ignore"}"#).is_err());
        assert!(decide(200, b"allow").is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert!(Webhook::new(WebhookConfig::new("ftp://example.com/")).is_err());
        assert!(Webhook::new(WebhookConfig::new("not a url")).is_err());
        assert!(Webhook::new(WebhookConfig::new("/relative")).is_err());
    }

    #[test]
    fn questions_are_json_objects() {
        let client = ClientInfo {
            client_id: "c1".into(),
            username: None,
            peer: "192.0.2.7:5000".parse().unwrap(),
            protocol_version: ProtocolVersion::V3_1_1,
        };
        let q = Webhook::question("publish", &client, Some("a/b"));
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"action":"publish","client_id":"c1","username":null,"peer":"192.0.2.7:5000","protocol":"3.1.1","topic":"a/b"}"#
        );
    }
}
