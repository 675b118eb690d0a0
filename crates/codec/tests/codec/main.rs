//! Integration tests of midge-codec: one test binary, grouped by area.

mod decode_errors;
mod proptests;
mod round_trip;
mod spec_examples;
mod support;
mod topic;
