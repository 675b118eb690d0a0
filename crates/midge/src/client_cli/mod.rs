//! `midge pub` and `midge sub`: command-line clients with the flags of
//! `mosquitto_pub` and `mosquitto_sub`, on the `midge-client` crate.
//!
//! Flags are parsed by clap ([`ConnArgs`] is shared), then resolved into
//! [`midge_client::ConnectOptions`]; every failure is mapped once onto a
//! documented exit code ([`Failure`]).

mod format;
mod options;
pub(crate) mod publish;
pub(crate) mod subscribe;

use std::fmt;
use std::process::ExitCode;

use midge_client::{ClientError, ReasonCode};

pub(crate) use options::{ConnArgs, parse_version};

/// Exit codes of `midge pub` and `midge sub` (docs/clients.md lists them).
pub(crate) mod exit {
    /// A command-line or file problem (clap's own usage errors exit with 2 too).
    pub(crate) const USAGE: u8 = 2;
    /// Any other error (I/O on stdin or stdout, a broker breaking the protocol).
    pub(crate) const ERROR: u8 = 1;
    /// The broker could not be reached: connection refused, unknown host, TLS
    /// or WebSocket handshake failure.
    pub(crate) const UNREACHABLE: u8 = 3;
    /// The broker refused the credentials or the client (CONNACK bad user
    /// name or password, not authorized).
    pub(crate) const NOT_AUTHORIZED: u8 = 4;
    /// The broker refused the connection for another reason (unsupported
    /// protocol version, client id not valid, server unavailable, …).
    pub(crate) const REFUSED: u8 = 5;
    /// No CONNACK in time (`--connect-timeout`).
    pub(crate) const TIMEOUT: u8 = 6;
    /// `midge sub -W` expired: 27, as `mosquitto_sub` exits then.
    pub(crate) const WAIT_EXPIRED: u8 = 27;
    /// The broker refused a publish (v5 reason code) or every subscription.
    pub(crate) const REJECTED: u8 = 7;
    /// The connection was lost (`midge pub`; `midge sub` reconnects).
    pub(crate) const LOST: u8 = 8;
}

/// An error with its exit code; printed once, by [`finish`].
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure::new(exit::USAGE, message)
    }

    /// Classifies a client error met while connecting.
    pub(crate) fn connecting(error: ClientError) -> Failure {
        let code = match &error {
            ClientError::Refused(ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword, _) => {
                exit::NOT_AUTHORIZED
            }
            ClientError::Refused(..) => exit::REFUSED,
            ClientError::Timeout(..) => exit::TIMEOUT,
            ClientError::TlsConfig(_) | ClientError::InvalidUrl(_) => exit::USAGE,
            ClientError::Io { .. } | ClientError::WebSocket(_) | ClientError::Closed => exit::UNREACHABLE,
            _ => exit::ERROR,
        };
        Failure::new(code, error.to_string())
    }

    /// Classifies a client error met once connected.
    pub(crate) fn connected(error: ClientError) -> Failure {
        let code = match &error {
            ClientError::PublishRefused(_) => exit::REJECTED,
            ClientError::Io { .. }
            | ClientError::Closed
            | ClientError::Disconnected(..)
            | ClientError::KeepAliveTimeout
            | ClientError::Shutdown => exit::LOST,
            _ => exit::ERROR,
        };
        Failure::new(code, error.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Prints the error (unless `--quiet`) and turns the outcome into the exit code.
pub(crate) fn finish(program: &str, quiet: bool, result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !quiet {
                eprintln!("midge {program}: error: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// A single-threaded runtime: one connection needs no more.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::ERROR, format!("starting the runtime: {e}")))
}
