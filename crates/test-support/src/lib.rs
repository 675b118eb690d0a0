//! Test harness for midge's end-to-end tests.
//!
//! Three pieces, all blocking and free of any async runtime:
//!
//! - [`Process`] runs any program as a child process, drains its stdout and stderr
//!   into buffers a test can read or wait on (for a line, for the end of the output,
//!   for the exit), and kills it when dropped.
//! - [`Broker`] runs the `midge` binary as a [`Process`] on an ephemeral port,
//!   waits for its `listening on mqtt://IP:PORT` line, lets a test read or wait on
//!   its log, and stops it with SIGTERM or kills it.
//! - [`TempDir`] is a scratch directory for files a test hands the broker.
//! - [`RawClient`] speaks MQTT as raw bytes over a [`std::net::TcpStream`]: the
//!   builders in [`build`] make the bytes a test sends, and [`RawPacket`] with its
//!   parsers ([`ConnAck`], [`SubAck`], [`Publish`]) reads what the broker answers.
//!
//! ```text
//!   test ──build::*──▶ bytes ──RawClient::send──▶ TCP ──▶ midge (child process)
//!   test ◀─ConnAck/SubAck/Publish◀─RawPacket◀─RawClient::recv_packet◀─ TCP ◀─┘
//!                                  Broker::log ◀─ Process ◀─ stdout/stderr drain threads
//! ```
//!
//! The framing and the parsers here are written from the MQTT 3.1.1 specification
//! and deliberately do not use `midge-codec`: a conformance test that decoded the
//! broker's answers with the broker's own codec could not catch a codec bug.
//!
//! Every wait is bounded. Waiting for something to happen means waiting for the
//! event itself (a packet, a log line, end of stream); only the proof that something
//! does *not* happen uses a short, bounded [`RawClient::expect_silence`].
#![warn(missing_docs)]

mod broker;
pub mod build;
mod client;
mod packet;
mod process;
mod tempdir;

pub use broker::Broker;
pub use client::{RawClient, RecvError};
pub use packet::{ConnAck, Publish, RawPacket, SubAck, packet_type};
pub use process::{Captured, Process, Stream};
pub use tempdir::TempDir;

use std::time::Duration;

/// How long a test waits for something that should happen (a packet, a close, a log
/// line) before it fails. Generous because the test machine may be busy compiling.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test watches for something that should *not* happen.
pub const DEFAULT_SILENCE: Duration = Duration::from_millis(500);
