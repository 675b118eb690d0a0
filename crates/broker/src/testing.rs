//! Helpers the unit tests of the trees over topic levels share.

/// Runs `f` on a thread with a 64 KiB stack: any recursion over a deep
/// topic or filter overflows it and fails the test (issue 21: one
/// 10,000-level SUBSCRIBE overflowed the broker's stack).
pub(crate) fn on_a_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(64 * 1024).spawn(f).unwrap().join().unwrap();
}

/// A small xorshift generator from `seed`: `next(n)` is in `0..n`. The
/// same seed gives the same sequence, so a failure replays.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}
