//! `midge certs`: a CA, a server and a client certificate for trying TLS, in
//! one command instead of a page of openssl steps.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA certificate's lifetime, in days (longer if `--days` is).
const CA_DAYS: u32 = 3650;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The names every server certificate carries, before the `--host` ones.
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Writes ca.key, ca.crt, server.key, server.crt, client.key and client.crt (ECDSA P-256 keys, PEM),\n",
    "then prints how to use them with midge and with mosquitto_pub and mosquitto_sub.\n",
    "\n",
    "Examples:\n",
    "  midge certs                                    in ./certs, for localhost\n",
    "  midge certs --host mqtt.example.com --host 192.0.2.10\n",
    "                                                 also valid for that name and address\n",
    "  midge certs --client-cn alice --force          a new set over the old one",
))]
pub(crate) struct CertsArgs {
    /// Directory to write the files to; created if missing.
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    out: PathBuf,
    /// Another name or IP address clients reach the broker by; repeat for several.
    /// The server certificate is always valid for localhost, 127.0.0.1 and ::1;
    /// its CN is the first --host (or localhost).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Common name (CN) of the client certificate, which the broker may take as the user name.
    #[arg(long, value_name = "NAME", default_value = "midge-client")]
    client_cn: String,
    /// Days the server and client certificates are valid for, counted from yesterday
    /// (so that a machine whose clock is a little behind accepts them). The CA
    /// certificate is valid for 3650 days, or for --days if longer.
    #[arg(long, value_name = "N", default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
    /// Overwrite files of a previous run instead of refusing to.
    #[arg(long)]
    force: bool,
}

/// One file to write: its name in the output directory, its text, and whether it
/// is a private key (readable by its owner only).
struct Output {
    name: &'static str,
    text: String,
    secret: bool,
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let sans = subject_alt_names(&args.hosts)?;
    check_client_cn(&args.client_cn)?;
    const NAMES: [&str; 6] = ["ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt"];
    if !args.force {
        for name in NAMES {
            let path = args.out.join(name);
            if path.symlink_metadata().is_ok() {
                bail!("{} already exists; pass --force to replace it and the rest of the set", path.display());
            }
        }
    }

    let now = rcgen::date_time_ymd(1970, 1, 1)
        + SystemTime::now().duration_since(UNIX_EPOCH).context("the system clock is before 1970")?;
    let not_before = now - DAY;
    let leaf_until = not_before + DAY * args.days;
    let ca_until = not_before + DAY * args.days.max(CA_DAYS);

    let mut ca = CertificateParams::default();
    ca.distinguished_name = common_name("midge CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = ca_until;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA certificate")?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = leaf_until;
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params.signed_by(&key, &issuer).with_context(|| format!("signing the certificate of {cn}"))?;
        Ok((key.serialize_pem(), cert.pem()))
    };
    let server_cn = args.hosts.first().map_or("localhost", String::as_str);
    let (server_key, server_cert) = leaf(server_cn, sans.clone(), ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_key, client_cert) = leaf(&args.client_cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;

    let outputs = [
        Output { name: "ca.key", text: ca_key_pem, secret: true },
        Output { name: "ca.crt", text: ca_cert.pem(), secret: false },
        Output { name: "server.key", text: server_key, secret: true },
        Output { name: "server.crt", text: server_cert, secret: false },
        Output { name: "client.key", text: client_key, secret: true },
        Output { name: "client.crt", text: client_cert, secret: false },
    ];
    debug_assert!(outputs.iter().map(|o| o.name).eq(NAMES));
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let dir = std::fs::canonicalize(&args.out).with_context(|| format!("cannot open {}", args.out.display()))?;
    for output in &outputs {
        crate::files::write_atomically(
            &dir.join(output.name),
            output.text.as_bytes(),
            if output.secret { 0o600 } else { 0o644 },
        )?;
    }

    let names: Vec<String> = sans.iter().map(san_text).collect();
    print!(
        "{}",
        instructions(&dir, &names, &args.client_cn, &leaf_until.date().to_string(), &ca_until.date().to_string())
    );
    Ok(())
}

/// localhost, 127.0.0.1, ::1 and every `--host`, without repeats; addresses as
/// IP SANs, the rest as DNS names.
fn subject_alt_names(hosts: &[String]) -> anyhow::Result<Vec<SanType>> {
    let mut sans: Vec<SanType> = Vec::new();
    for host in DEFAULT_SANS.iter().copied().chain(hosts.iter().map(String::as_str)) {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let valid = !host.is_empty()
                    && !host.starts_with('.')
                    && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*'));
                if !valid {
                    bail!(
                        "invalid --host {host:?}: give a DNS name (letters, digits, '-', '.', a leading '*.') or an IP address"
                    );
                }
                SanType::DnsName(Ia5String::try_from(host.to_ascii_lowercase())?)
            }
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn check_client_cn(cn: &str) -> anyhow::Result<()> {
    if cn.is_empty() || cn.chars().any(char::is_control) {
        bail!("invalid --client-cn {cn:?}: it must be non-empty, without control characters");
    }
    Ok(())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

fn san_text(san: &SanType) -> String {
    match san {
        SanType::IpAddress(ip) => ip.to_string(),
        SanType::DnsName(name) => name.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

fn instructions(dir: &Path, names: &[String], client_cn: &str, leaf_until: &str, ca_until: &str) -> String {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let toml = |name: &str| toml_string(&file(name));
    let sh = |name: &str| shell_word(&file(name));
    let mut text = String::new();
    let _ = writeln!(text, "Wrote in {}:", dir.display());
    let _ = writeln!(
        text,
        "  ca.crt                   the CA certificate (CN \"midge CA\", valid until {ca_until}): clients trust it"
    );
    let _ = writeln!(text, "  ca.key                   the CA's private key: keep it secret; needed only to sign more");
    let _ = writeln!(text, "  server.crt, server.key   the broker's certificate and key, for {}", names.join(", "));
    let _ = writeln!(text, "  client.crt, client.key   a client certificate and key, CN \"{client_cn}\"");
    let _ = writeln!(text, "The server and client certificates are valid until {leaf_until}.");
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "With midge: put this in a configuration file (say midge.toml) and run `midge serve -c midge.toml`;"
    );
    let _ = writeln!(text, "clients then log in with their certificate, its CN as user name:");
    let _ = writeln!(text);
    let _ = writeln!(text, "[[listener]]");
    let _ = writeln!(text, "port = 8883");
    let _ = writeln!(text, "tls_cert = {}", toml("server.crt"));
    let _ = writeln!(text, "tls_key = {}", toml("server.key"));
    let _ = writeln!(text, "tls_ca = {}", toml("ca.crt"));
    let _ = writeln!(text, "require_certificate = true");
    let _ = writeln!(text, "use_identity_as_username = true");
    let _ = writeln!(text);
    let _ = writeln!(text, "With Mosquitto's clients, subscribe in one terminal and publish in another:");
    let _ = writeln!(text);
    let tls = format!("--cafile {} --cert {} --key {}", sh("ca.crt"), sh("client.crt"), sh("client.key"));
    let _ = writeln!(text, "mosquitto_sub -h localhost -p 8883 {tls} -t hello -v");
    let _ = writeln!(text, "mosquitto_pub -h localhost -p 8883 {tls} -t hello -m hi");
    text
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as one shell word: as is when it is safe, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@,=%".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_paths_only_when_needed() {
        assert_eq!(shell_word("/tmp/certs/ca.crt"), "/tmp/certs/ca.crt");
        assert_eq!(shell_word("/tmp/my certs/ca.crt"), "'/tmp/my certs/ca.crt'");
        assert_eq!(shell_word("/tmp/it's/ca.crt"), "'/tmp/it'\\''s/ca.crt'");
        assert_eq!(toml_string("C:\\a\"b"), "\"C:\\\\a\\\"b\"");
    }

    #[test]
    fn names_and_addresses_are_told_apart_and_not_repeated() {
        let hosts = ["mqtt.example.com".to_owned(), "192.0.2.10".to_owned(), "::1".to_owned(), "LOCALHOST".to_owned()];
        let sans = subject_alt_names(&hosts).unwrap();
        let texts: Vec<String> = sans.iter().map(san_text).collect();
        assert_eq!(texts, ["localhost", "127.0.0.1", "::1", "mqtt.example.com", "192.0.2.10"]);
        assert!(matches!(sans[4], SanType::IpAddress(_)));
        assert!(subject_alt_names(&["bad name".to_owned()]).is_err());
        assert!(subject_alt_names(&[String::new()]).is_err());
    }
}
