//! SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, as an MQTT 5 enhanced
//! authentication method (section 4.12):
//!
//! ```text
//! CONNECT  Authentication Method=SCRAM-SHA-256  Data=client-first   n,,n=user,r=cnonce
//! AUTH 0x18                                     Data=server-first   r=cnonce+snonce,s=salt,i=4096
//! AUTH 0x18                                     Data=client-final   c=biws,r=cnonce+snonce,p=proof
//! CONNACK 0x00                                  Data=server-final   v=signature
//! ```
//!
//! The server never sees the password, and what it stores (StoredKey,
//! ServerKey) does not let anyone log in: a leaked file is not a leaked
//! password. Credentials are written as RFC 5803 strings,
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the form
//! PostgreSQL uses, so one line of a password file holds them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use midge_codec::ReasonCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthExchange, AuthStep, BoxFuture};

/// The method name clients put in CONNECT's Authentication Method.
pub const METHOD: &str = "SCRAM-SHA-256";

/// Iterations `midge passwd --scram` uses: RFC 7677's minimum is 4096;
/// the client pays them once per connect, the server never.
pub const DEFAULT_ITERATIONS: u32 = 4096;

const PREFIX: &str = "SCRAM-SHA-256$";

/// What the server keeps for one user.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length (RFC 2104 hashes long ones, pads short
    // ones): hmac 0.13's new_from_slice has no error path, only the
    // signature of a trait made for fixed-size-key MACs.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl ScramCredentials {
    /// Derives the credentials for `password` (RFC 5802 section 3).
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramCredentials {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Checks a plain password against the credentials, so a SCRAM user can
    /// also log in with CONNECT's User Name and Password. Costs the
    /// iterations: call it off the async threads.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let derived = ScramCredentials::from_password(password, &self.salt, self.iterations);
        bool::from(derived.stored_key.ct_eq(&self.stored_key))
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<ScramCredentials> {
        let rest = s.strip_prefix(PREFIX)?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
        Some(ScramCredentials {
            iterations,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

impl fmt::Display for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Stand-in credentials for a user that does not exist (or has no SCRAM
/// entry): the exchange runs to the end and fails there, so a client cannot
/// tell unknown users from wrong passwords (RFC 5802 section 5.1). The salt
/// is derived from a per-process secret so it is stable per name.
pub fn decoy_credentials(secret: &[u8; 32], username: &str) -> ScramCredentials {
    let salt = hmac(secret, &[b"salt", username.as_bytes()]);
    ScramCredentials {
        iterations: DEFAULT_ITERATIONS,
        salt: salt[..16].to_vec(),
        stored_key: hmac(secret, &[b"stored", username.as_bytes()]),
        server_key: hmac(secret, &[b"server", username.as_bytes()]),
    }
}

enum State {
    /// Waiting for client-first.
    Start,
    /// server-first sent; waiting for client-final.
    Challenged {
        username: String,
        credentials: ScramCredentials,
        /// False for decoy credentials: fails whatever the proof.
        known: bool,
        gs2_header: String,
        nonce: String,
        /// client-first-bare + "," + server-first, the start of AuthMessage.
        auth_message: String,
    },
    Done,
}

/// One SCRAM-SHA-256 conversation. `lookup` finds a user's credentials;
/// `None` runs the exchange on decoy credentials to a failure.
pub struct ScramExchange<F> {
    lookup: F,
    secret: [u8; 32],
    state: State,
}

impl<F> ScramExchange<F>
where
    F: Fn(&str) -> Option<ScramCredentials> + Send,
{
    /// A new conversation; `secret` seeds decoy credentials for unknown users.
    pub fn new(lookup: F, secret: [u8; 32]) -> Self {
        ScramExchange { lookup, secret, state: State::Start }
    }

    fn advance(&mut self, data: &[u8]) -> Result<AuthStep, Failure> {
        let data = std::str::from_utf8(data).map_err(|_| Failure::Malformed("not UTF-8"))?;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => self.client_first(data),
            State::Challenged { username, credentials, known, gs2_header, nonce, auth_message } => {
                let signature = client_final(data, &credentials, &gs2_header, &nonce, auth_message)?;
                if !known {
                    return Err(Failure::Credentials(username));
                }
                Ok(AuthStep::Success {
                    data: Some(Bytes::from(format!("v={}", B64.encode(signature)))),
                    username: Some(username),
                })
            }
            State::Done => Err(Failure::Malformed("exchange already finished")),
        }
    }

    fn client_first(&mut self, data: &str) -> Result<AuthStep, Failure> {
        // gs2-header: channel binding flag, optional authzid. We offer no
        // channel binding (no -PLUS method), so "p=" is refused.
        let mut parts = data.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Failure::Malformed("client-first has no GS2 header"));
        };
        if cbind != "n" && cbind != "y" {
            return Err(Failure::Malformed("channel binding is not supported"));
        }
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(Failure::Malformed("bad authzid"));
        }
        let mut fields = bare.split(',');
        let username = fields
            .next()
            .and_then(|f| f.strip_prefix("n="))
            .and_then(decode_saslname)
            .ok_or(Failure::Malformed("client-first has no user name"))?;
        let client_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(Failure::Malformed("client-first has no nonce"))?;
        // A mandatory extension we do not know must fail (RFC 5802 5.1).
        if fields.any(|f| f.starts_with("m=")) {
            return Err(Failure::Malformed("mandatory extension not supported"));
        }
        let (credentials, known) = match (self.lookup)(&username) {
            Some(c) => (c, true),
            None => (decoy_credentials(&self.secret, &username), false),
        };
        let mut server_nonce = [0u8; 18];
        getrandom::fill(&mut server_nonce).map_err(|_| Failure::Malformed("no randomness"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&credentials.salt), credentials.iterations);
        let auth_message = format!("{bare},{server_first}");
        let gs2_header = format!("{cbind},{authzid},");
        self.state = State::Challenged { username, credentials, known, gs2_header, nonce, auth_message };
        Ok(AuthStep::Continue(Bytes::from(server_first)))
    }
}

/// Checks client-final; returns the ServerSignature for server-final.
fn client_final(
    data: &str,
    credentials: &ScramCredentials,
    gs2_header: &str,
    nonce: &str,
    mut auth_message: String,
) -> Result<[u8; 32], Failure> {
    let (without_proof, proof) = data.rsplit_once(",p=").ok_or(Failure::Malformed("client-final has no proof"))?;
    let mut fields = without_proof.split(',');
    let binding = fields.next().and_then(|f| f.strip_prefix("c=")).ok_or(Failure::Malformed("no channel binding"))?;
    if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
        return Err(Failure::Malformed("channel binding does not match the GS2 header"));
    }
    if fields.next().and_then(|f| f.strip_prefix("r=")) != Some(nonce) {
        return Err(Failure::Malformed("nonce does not match"));
    }
    let proof: [u8; 32] = B64
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or(Failure::Malformed("proof is not 32 bytes of base64"))?;
    auth_message.push(',');
    auth_message.push_str(without_proof);
    let client_signature = hmac(&credentials.stored_key, &[auth_message.as_bytes()]);
    let mut client_key = proof;
    for (k, s) in client_key.iter_mut().zip(client_signature) {
        *k ^= s;
    }
    if !bool::from(sha256(&client_key).ct_eq(&credentials.stored_key)) {
        return Err(Failure::Proof);
    }
    Ok(hmac(&credentials.server_key, &[auth_message.as_bytes()]))
}

/// `=2C` is `,` and `=3D` is `=`; any other `=` is malformed (RFC 5802 5.1).
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((plain, escaped)) = rest.split_once('=') {
        out.push_str(plain);
        rest = if let Some(after) = escaped.strip_prefix("2C") {
            out.push(',');
            after
        } else if let Some(after) = escaped.strip_prefix("3D") {
            out.push('=');
            after
        } else {
            return None;
        };
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

enum Failure {
    Malformed(&'static str),
    Proof,
    /// Proof checked against decoy credentials: the user has no SCRAM entry.
    Credentials(String),
}

impl<F> AuthExchange for ScramExchange<F>
where
    F: Fn(&str) -> Option<ScramCredentials> + Send,
{
    fn step(&mut self, data: Option<Bytes>) -> BoxFuture<'_, AuthStep> {
        let step = match self.advance(data.as_deref().unwrap_or_default()) {
            Ok(step) => step,
            Err(Failure::Malformed(why)) => {
                tracing::info!(why, "SCRAM-SHA-256: malformed exchange");
                AuthStep::Failure(ReasonCode::NotAuthorized)
            }
            Err(Failure::Proof) => {
                tracing::info!("SCRAM-SHA-256: wrong password");
                AuthStep::Failure(ReasonCode::BadUserNameOrPassword)
            }
            Err(Failure::Credentials(username)) => {
                tracing::info!(username, "SCRAM-SHA-256: no SCRAM credentials for this user");
                AuthStep::Failure(ReasonCode::BadUserNameOrPassword)
            }
        };
        Box::pin(async move { step })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3's example: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_NONCE_FULL: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credentials() -> ScramCredentials {
        ScramCredentials::from_password(b"pencil", &B64.decode(SALT).unwrap(), 4096)
    }

    #[test]
    fn rfc7677_example_verifies_and_signs() {
        // The server nonce is random, so drive the second half directly
        // with the RFC's nonce.
        let creds = rfc_credentials();
        let auth_message = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,r={SERVER_NONCE_FULL},s={SALT},i=4096");
        let signature = client_final(CLIENT_FINAL, &creds, "n,,", SERVER_NONCE_FULL, auth_message).ok().unwrap();
        assert_eq!(format!("v={}", B64.encode(signature)), SERVER_FINAL);
    }

    #[test]
    fn wrong_proof_fails() {
        let creds = ScramCredentials::from_password(b"pen", &B64.decode(SALT).unwrap(), 4096);
        let auth_message = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,r={SERVER_NONCE_FULL},s={SALT},i=4096");
        assert!(matches!(
            client_final(CLIENT_FINAL, &creds, "n,,", SERVER_NONCE_FULL, auth_message),
            Err(Failure::Proof)
        ));
    }

    #[test]
    fn credentials_round_trip_and_verify_password() {
        let creds = rfc_credentials();
        let text = creds.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        let parsed = ScramCredentials::parse(&text).unwrap();
        assert_eq!(parsed, creds);
        assert!(parsed.verify_password(b"pencil"));
        assert!(!parsed.verify_password(b"pencil "));
        assert!(ScramCredentials::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_none());
        assert!(ScramCredentials::parse("$7$101$abc$def").is_none());
    }

    #[test]
    fn first_step_answers_with_salt_iterations_and_extended_nonce() {
        let creds = rfc_credentials();
        let mut exchange = ScramExchange::new(move |u: &str| (u == "user").then(|| creds.clone()), [7; 32]);
        let AuthStep::Continue(first) = exchange.advance(CLIENT_FIRST.as_bytes()).ok().unwrap() else { panic!() };
        let first = std::str::from_utf8(&first).unwrap();
        assert!(first.starts_with("r=rOprNGfwEbeRWgbNEkqO"), "{first}");
        assert!(first.ends_with(&format!(",s={SALT},i=4096")), "{first}");
    }

    #[test]
    fn unknown_user_gets_a_stable_decoy_salt() {
        let a = decoy_credentials(&[1; 32], "nobody");
        let b = decoy_credentials(&[1; 32], "nobody");
        assert_eq!(a, b);
        assert_ne!(a.salt, decoy_credentials(&[1; 32], "other").salt);
    }

    #[test]
    fn malformed_first_messages_fail() {
        for bad in ["", "n=user,r=abc", "p=tls-unique,,n=user,r=abc", "n,,n=,r=abc", "n,,n=us=er,r=abc", "n,,n=user"] {
            let mut exchange = ScramExchange::new(|_: &str| None, [0; 32]);
            assert!(matches!(exchange.advance(bad.as_bytes()), Err(Failure::Malformed(_))), "{bad}");
        }
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("=2C=3D").as_deref(), Some(",="));
        // A cut or unknown escape, even one ending inside a character.
        for bad in ["a=", "a=2", "a=2c", "a=é", "a=2é", "=3", ""] {
            assert_eq!(decode_saslname(bad), None, "{bad}");
        }
    }
}
