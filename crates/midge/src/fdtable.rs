//! Sizes the process's file descriptor table before any thread starts.
//!
//! Linux grows a process's descriptor table by doubling it when a new
//! descriptor does not fit. While more than one thread shares the table,
//! each growth first waits for an RCU grace period (`expand_fdtable` calls
//! `synchronize_rcu`): 9–23 ms on the two-core VM we measure on. The
//! thread that waits is the one opening the descriptor, here a runtime
//! worker inside `accept`, and it serves nobody meanwhile. Ten thousand
//! clients reconnecting at once cross seven doublings; traced, those waits
//! were the slow tail of midge's connect times (docs/PERFORMANCE.md,
//! "Connection floods"). One growth done while the process still has one
//! thread waits for nothing.

/// Descriptors prepared for at most: the table costs 8 bytes a slot, so
/// this bounds the memory spent up front at 512 KiB even where the limit
/// is a million. Beyond it the table doubles as before, each time at
/// least 65,536 connections after the last.
pub(crate) const MOST: u64 = 65_536;

/// Grows the table to hold as many descriptors as the soft
/// `RLIMIT_NOFILE` allows, up to [`MOST`]. Call it before starting threads;
/// it only ever spends memory, so a failure is ignored.
pub(crate) fn presize() {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{FcntlArg, fcntl};
        use nix::sys::resource::{Resource, getrlimit};

        let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
        let Ok(highest) = i32::try_from(soft.min(MOST).saturating_sub(1)) else { return };
        let Ok(probe) = std::fs::File::open("/dev/null") else { return };
        // F_DUPFD takes the lowest free descriptor at or above `highest`:
        // the kernel grows the table to fit it, and the table stays grown
        // after the copy is closed.
        if let Ok(copy) = fcntl(&probe, FcntlArg::F_DUPFD_CLOEXEC(highest)) {
            let _ = nix::unistd::close(copy);
        }
    }
}
