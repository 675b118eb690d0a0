//! Mosquitto's password file: one `username:hash` per line.
//!
//! Hashes understood (files written by Debian's `mosquitto_passwd` work
//! unchanged):
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, 64-byte hash
//!   (Mosquitto 2.0 writes 101 iterations and a 12-byte salt, 2.1 210,000
//!   and 64 bytes);
//! - `$6$<salt>$<hash>`: one SHA-512 of password‖salt (old files; verify only);
//! - `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`: argon2id as Mosquitto 2.1
//!   writes it, and what `midge passwd` writes;
//! - `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5803):
//!   lets the user authenticate with the MQTT 5 `SCRAM-SHA-256` method, and
//!   with a plain password too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use midge_codec::ReasonCode;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::scram::{self, ScramCredentials, ScramExchange};
use super::{AuthExchange, Authenticator, BoxFuture, ClientInfo, Verdict};

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line is not `username:hash` with a hash midge understands.
    #[error("password file line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

#[derive(Clone)]
enum Hash {
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    Pbkdf2Sha512 { iterations: u32, salt: Vec<u8>, hash: Vec<u8> },
    Argon2id(String),
    Scram(ScramCredentials),
}

impl Hash {
    fn parse(s: &str) -> Result<Hash, String> {
        let b64 = |part: &str, what: &str| B64.decode(part).map_err(|_| format!("{what} is not base64"));
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash is $7$<iterations>$<salt>$<hash>".into());
            };
            let iterations = iterations.parse().ok().filter(|&i: &u32| i > 0).ok_or("bad iteration count")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err("a $7$ hash is 64 bytes".into());
            }
            Ok(Hash::Pbkdf2Sha512 { iterations, salt: b64(salt, "salt")?, hash })
        } else if let Some(rest) = s.strip_prefix("$6$") {
            let (salt, hash) = rest.split_once('$').ok_or("a $6$ hash is $6$<salt>$<hash>")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err("a $6$ hash is 64 bytes".into());
            }
            Ok(Hash::Sha512 { salt: b64(salt, "salt")?, hash })
        } else if s.starts_with("$argon2id$") {
            PasswordHash::new(s).map_err(|e| format!("bad argon2id hash: {e}"))?;
            Ok(Hash::Argon2id(s.to_owned()))
        } else if s.starts_with("SCRAM-SHA-256$") {
            ScramCredentials::parse(s).map(Hash::Scram).ok_or_else(|| "bad SCRAM-SHA-256 credentials".into())
        } else {
            Err("the password is not hashed or the hash type is unknown \
                 (expected $7$, $6$, $argon2id$ or SCRAM-SHA-256$; hash it with `midge passwd -U FILE`)"
                .into())
        }
    }

    /// Slow by design for all but `$6$`: run it on a blocking thread.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                bool::from(h.finalize().as_slice().ct_eq(hash))
            }
            Hash::Pbkdf2Sha512 { iterations, salt, hash } => {
                let mut derived = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                bool::from(derived.ct_eq(hash.as_slice()))
            }
            Hash::Argon2id(phc) => PasswordHash::new(phc)
                .map(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
                .unwrap_or(false),
            Hash::Scram(credentials) => credentials.verify_password(password),
        }
    }
}

/// The hash `midge passwd` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// `$argon2id$`, Mosquitto 2.1's parameters (m=47104, t=1, p=1): the default.
    Argon2id,
    /// `SCRAM-SHA-256$`: also usable with MQTT 5's SCRAM-SHA-256 method.
    ScramSha256,
    /// `$7$`: PBKDF2-SHA512 with a 12-byte salt, for files Mosquitto 2.0
    /// must read too.
    Pbkdf2Sha512,
}

impl HashKind {
    /// Iterations used when none are given: RFC 7677's 4096 for SCRAM,
    /// Mosquitto 2.1's 210,000 for PBKDF2-SHA512; argon2id has none.
    pub fn default_iterations(self) -> u32 {
        match self {
            HashKind::Argon2id => 1,
            HashKind::ScramSha256 => scram::DEFAULT_ITERATIONS,
            HashKind::Pbkdf2Sha512 => 210_000,
        }
    }
}

/// Hashes `password` for a password file line, with a fresh random salt.
pub fn hash_password(password: &[u8], kind: HashKind, iterations: Option<u32>) -> Result<String, String> {
    let iterations = iterations.unwrap_or(kind.default_iterations()).max(1);
    match kind {
        HashKind::Argon2id => {
            let salt = random_salt::<16>()?;
            let params = argon2::Params::new(47104, 1, 1, None).map_err(|e| e.to_string())?;
            let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            argon.hash_password_into(password, &salt, &mut out).map_err(|e| e.to_string())?;
            // PHC strings use base64 without padding.
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
            Ok(format!("$argon2id$v=19$m=47104,t=1,p=1${}${}", b64.encode(salt), b64.encode(out)))
        }
        HashKind::ScramSha256 => {
            Ok(ScramCredentials::from_password(password, &random_salt::<16>()?, iterations).to_string())
        }
        HashKind::Pbkdf2Sha512 => {
            // Mosquitto 2.0 reads only 12-byte salts (it fails on 2.1's 64).
            let salt = random_salt::<12>()?;
            let mut out = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut out);
            Ok(format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(out)))
        }
    }
}

fn random_salt<const N: usize>() -> Result<[u8; N], String> {
    let mut salt = [0u8; N];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    Ok(salt)
}

/// True if `s` is a hash [`PasswordFile`] understands (for `midge passwd -U`,
/// which hashes only the plain-text lines).
pub fn is_hash(s: &str) -> bool {
    Hash::parse(s).is_ok()
}

struct Inner {
    users: HashMap<String, Hash>,
    /// Seeds SCRAM decoy credentials for unknown users.
    secret: [u8; 32],
    /// Bounds concurrent hash checks: each costs up to ~100 ms of CPU and,
    /// for argon2id, ~46 MiB; a CONNECT flood must queue, not exhaust memory.
    hashing: Semaphore,
}

/// Users and hashes from a Mosquitto-format password file. Clients must give
/// a known user name and its password; anonymous clients (no user name) are
/// refused unless allowed, as in Mosquitto when a password file is set.
#[derive(Clone)]
pub struct PasswordFile {
    inner: Arc<Inner>,
    allow_anonymous: bool,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.inner.users.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl PasswordFile {
    /// Reads and checks the whole file; any bad line is an error naming it.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PasswordFileError::Io { path: path.display().to_string(), source })?;
        PasswordFile::parse(&text)
    }

    /// Parses the file's text. Blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| PasswordFileError::Line { line: line_no, why };
            let (user, hash) = line.split_once(':').ok_or_else(|| err("expected username:hash".into()))?;
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(err)?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(err(format!("user {user:?} appears twice")));
            }
        }
        let mut secret = [0u8; 32];
        // Without randomness decoys are merely predictable, not unsafe.
        let _ = getrandom::fill(&mut secret);
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(PasswordFile {
            inner: Arc::new(Inner { users, secret, hashing: Semaphore::new(permits) }),
            allow_anonymous: false,
        })
    }

    /// Lets clients without a user name in (Mosquitto's `allow_anonymous`).
    pub fn allow_anonymous(self, allow: bool) -> PasswordFile {
        PasswordFile { allow_anonymous: allow, ..self }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.inner.users.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.inner.users.is_empty()
    }

    /// Users with SCRAM-SHA-256 credentials.
    pub fn scram_users(&self) -> usize {
        self.inner.users.values().filter(|h| matches!(h, Hash::Scram(_))).count()
    }
}

impl Authenticator for PasswordFile {
    fn authenticate<'a>(&'a self, client: &'a ClientInfo, password: Option<&'a [u8]>) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let Some(username) = &client.username else {
                if self.allow_anonymous {
                    return Verdict::Allow;
                }
                tracing::info!(peer = %client.peer, client_id = client.client_id, "anonymous client refused");
                return Verdict::Deny(ReasonCode::NotAuthorized);
            };
            let (Some(hash), Some(password)) = (self.inner.users.get(username), password) else {
                tracing::info!(peer = %client.peer, client_id = client.client_id, username, "unknown user or no password");
                return Verdict::Deny(ReasonCode::BadUserNameOrPassword);
            };
            let ok = match self.inner.hashing.acquire().await {
                Ok(_permit) => {
                    let (hash, password) = (hash.clone(), password.to_vec());
                    tokio::task::spawn_blocking(move || hash.verify(&password)).await.unwrap_or(false)
                }
                Err(_) => false,
            };
            if ok {
                Verdict::Allow
            } else {
                tracing::info!(peer = %client.peer, client_id = client.client_id, username, "wrong password");
                Verdict::Deny(ReasonCode::BadUserNameOrPassword)
            }
        })
    }

    fn start_exchange(&self, method: &str, _client: &ClientInfo) -> Option<Box<dyn AuthExchange>> {
        if method != scram::METHOD {
            return None;
        }
        let inner = self.inner.clone();
        let lookup = move |user: &str| match inner.users.get(user) {
            Some(Hash::Scram(credentials)) => Some(credentials.clone()),
            _ => None,
        };
        Some(Box::new(ScramExchange::new(lookup, self.inner.secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(username: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: "c".into(),
            username: username.map(str::to_owned),
            peer: "127.0.0.1:1".parse().unwrap(),
            protocol_version: midge_codec::ProtocolVersion::V3_1_1,
        }
    }

    // Written by Debian's mosquitto_passwd 2.0.11 (`-b f alice secret`).
    const MOSQUITTO_7: &str = "alice:$7$101$LI/mbWMGg8mR45Rc$rJnyRUmegjVI53NLzgwBu3TUboCK/9Tj2ND3+XdaCdFfsBlhZb8iNGE42ZMxCOC1lOIWVqF73sFrRNu3uP8eVw==";

    #[tokio::test]
    async fn every_hash_kind_verifies() {
        let scram = hash_password(b"s3", HashKind::ScramSha256, None).unwrap();
        let argon = hash_password(b"a2", HashKind::Argon2id, None).unwrap();
        let pbkdf2 = hash_password(b"p7", HashKind::Pbkdf2Sha512, Some(1000)).unwrap();
        // $6$: SHA-512(password ‖ salt).
        let mut h = Sha512::new();
        h.update(b"six");
        h.update(b"saltsalt");
        let six = format!("$6${}${}", B64.encode(b"saltsalt"), B64.encode(h.finalize()));
        let file = PasswordFile::parse(&format!(
            "{MOSQUITTO_7}\n# comment\n\nsam:{scram}\nann:{argon}\nold:{six}\npat:{pbkdf2}\n"
        ))
        .unwrap();
        assert_eq!(file.len(), 5);
        assert_eq!(file.scram_users(), 1);
        for (user, good, bad) in [
            ("alice", "secret", "Secret"),
            ("sam", "s3", "s4"),
            ("ann", "a2", "a3"),
            ("old", "six", "sox"),
            ("pat", "p7", "p8"),
        ] {
            let c = client(Some(user));
            assert_eq!(file.authenticate(&c, Some(good.as_bytes())).await, Verdict::Allow, "{user}");
            assert_eq!(
                file.authenticate(&c, Some(bad.as_bytes())).await,
                Verdict::Deny(ReasonCode::BadUserNameOrPassword),
                "{user}"
            );
        }
        assert_eq!(
            file.authenticate(&client(Some("alice")), None).await,
            Verdict::Deny(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            file.authenticate(&client(Some("bob")), Some(b"x")).await,
            Verdict::Deny(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(file.authenticate(&client(None), None).await, Verdict::Deny(ReasonCode::NotAuthorized));
        let open = file.allow_anonymous(true);
        assert_eq!(open.authenticate(&client(None), None).await, Verdict::Allow);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [
            ("alice:secret", 1),
            ("ok:$6$AAAA$AAAA\n", 1),
            ("# c\nnocolon", 2),
            (":$7$1$AA==$AA==", 1),
            ("a:$7$x$AA==$AA==", 1),
            (&format!("{MOSQUITTO_7}\n{MOSQUITTO_7}"), 2),
            ("a:$argon2id$nonsense", 1),
        ] {
            match PasswordFile::parse(text) {
                Err(PasswordFileError::Line { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn scram_exchange_only_for_scram_method() {
        let file = PasswordFile::parse("").unwrap();
        assert!(file.start_exchange("SCRAM-SHA-1", &client(None)).is_none());
        assert!(file.start_exchange("SCRAM-SHA-256", &client(None)).is_some());
    }
}
