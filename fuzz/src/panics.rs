//! Counting panics that nobody sees.
//!
//! Tokio catches a panic in a spawned task and turns it into a `JoinError`
//! that only the task's `JoinHandle` would show; the broker's connection
//! tasks live in its own `TaskTracker`, so a panic there would pass
//! silently. The panic hook runs before the unwinding is caught, so a hook
//! that counts panics sees them. The count is per thread: the broker target
//! runs every task on one current-thread runtime, so a panic on this thread
//! during an input is that input's, even while other tests run in parallel.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Installs the counting hook once; the previous hook (the default one
/// printing the message, or libFuzzer's that aborts) still runs after it.
pub fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|count| count.set(count.get() + 1));
            previous(info);
        }));
    });
}

/// Panics seen on this thread since the hook was installed.
pub fn count() -> u64 {
    PANICS.with(Cell::get)
}
