//! The configuration file of `midge serve` (TOML). Every top-level key is
//! also a flag; a flag given on the command line wins over the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::{SharedStrategyArg, SyncArg, WebhookCheck};

/// The whole file. Unknown keys are errors, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub(crate) sys_interval: Option<u64>,
    pub(crate) threads: Option<usize>,
    pub(crate) max_inflight: Option<u16>,
    pub(crate) max_queued_messages: Option<usize>,
    pub(crate) max_queued_in_memory: Option<u64>,
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) max_topic_levels: Option<u32>,
    pub(crate) max_topic_length: Option<u16>,
    pub(crate) packet_timeout: Option<u64>,
    pub(crate) topic_alias_maximum: Option<u16>,
    pub(crate) max_keep_alive: Option<u16>,
    pub(crate) shared_strategy: Option<SharedStrategyArg>,
    pub(crate) response_information: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) acl_file: Option<PathBuf>,
    pub(crate) allow_anonymous: Option<bool>,
    pub(crate) webhook: Option<String>,
    pub(crate) webhook_checks: Option<Vec<WebhookCheck>>,
    pub(crate) webhook_timeout_ms: Option<u64>,
    pub(crate) webhook_cache_seconds: Option<u64>,
    pub(crate) webhook_ca: Option<PathBuf>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) in_memory: Option<bool>,
    pub(crate) sync: Option<SyncArg>,
    pub(crate) sync_interval_ms: Option<u64>,
    pub(crate) log_level: Option<String>,
    #[serde(default)]
    pub(crate) listener: Vec<ListenerConfig>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// Default: every interface (`0.0.0.0`), as Mosquitto's `listener PORT`.
    #[serde(default = "any_address")]
    pub(crate) bind: IpAddr,
    pub(crate) port: u16,
    /// Only `mqtt` (MQTT over TCP, or over TLS with `tls_cert`) for now.
    #[serde(default = "mqtt")]
    pub(crate) protocol: String,
    pub(crate) allow_anonymous: Option<bool>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub(crate) require_certificate: bool,
    #[serde(default)]
    pub(crate) use_identity_as_username: bool,
}

fn any_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

fn mqtt() -> String {
    "mqtt".to_owned()
}

impl ConfigFile {
    /// Reads `path`; relative paths inside it are taken from its directory.
    pub(crate) fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut file: ConfigFile =
            toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        file.password_file.as_mut().map(resolve);
        file.acl_file.as_mut().map(resolve);
        file.webhook_ca.as_mut().map(resolve);
        file.data_dir.as_mut().map(resolve);
        for (i, listener) in file.listener.iter_mut().enumerate() {
            if listener.protocol != "mqtt" {
                anyhow::bail!(
                    "config file {}: listener {} has protocol {:?}; only \"mqtt\" is supported",
                    path.display(),
                    i + 1,
                    listener.protocol
                );
            }
            if listener.tls_cert.is_some() != listener.tls_key.is_some() {
                anyhow::bail!("config file {}: listener {} needs both tls_cert and tls_key", path.display(), i + 1);
            }
            if listener.tls_cert.is_none() && (listener.tls_ca.is_some() || listener.require_certificate) {
                anyhow::bail!(
                    "config file {}: listener {} sets client certificate options without tls_cert/tls_key",
                    path.display(),
                    i + 1
                );
            }
            if listener.use_identity_as_username && !listener.require_certificate {
                anyhow::bail!(
                    "config file {}: listener {} uses use_identity_as_username without require_certificate",
                    path.display(),
                    i + 1
                );
            }
            for p in [&mut listener.tls_cert, &mut listener.tls_key, &mut listener.tls_ca].into_iter().flatten() {
                resolve(p);
            }
        }
        Ok(file)
    }
}
