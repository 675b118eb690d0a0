//! Fuzz targets for midge: functions of `&[u8]` that panic only when an
//! invariant breaks.
//!
//! ```text
//!   cargo test -p midge-fuzz ─┐                       ┌─▶ codec::codec   (decode every version, round trip)
//!   (corpus, regressions,     ├─▶ &[u8] ─▶ target ───┤
//!    mutations, generation)   │                       └─▶ broker::broker (clients' streams against one Broker)
//!   cargo fuzz run (libFuzzer)┘
//! ```
//!
//! The same functions serve the stable driver in `tests/fuzz.rs` and the
//! cargo-fuzz project in `cargo-fuzz/`, so a crash found by either replays in
//! the other. Each target also reports [`Features`]: coarse facts about what
//! an input reached (packet types decoded, errors, broker answers), which the
//! stable driver uses as a poor man's coverage signal to keep inputs worth
//! mutating.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

pub mod broker;
pub mod codec;
pub mod panics;

/// What one input reached, as hashed tags. Only the stable driver reads it.
#[derive(Debug, Default)]
pub struct Features(HashSet<u64>);

impl Features {
    /// Notes one fact about the input.
    pub fn add(&mut self, tag: impl Hash) {
        let mut h = DefaultHasher::new();
        tag.hash(&mut h);
        self.0.insert(h.finish());
    }

    /// The facts noted.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().copied()
    }

    /// How many distinct facts were noted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The targets by name, as the corpus directories and cargo-fuzz name them.
pub const TARGETS: &[&str] = &["codec", "broker"];

/// Runs the target `name` on `data`; `None` for an unknown name.
pub fn run(name: &str, data: &[u8], features: &mut Features) -> Option<()> {
    match name {
        "codec" => codec::codec_with(data, features),
        "broker" => broker::broker_with(data, features),
        _ => return None,
    }
    Some(())
}
