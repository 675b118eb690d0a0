//! Waiting for a paced publisher's next send slot.
//!
//! Tokio's timer wheel has millisecond granularity and rounds a deadline up
//! to the next tick, so a publisher at 1,000 msg/s woke every 2 ms and sent
//! two messages at once: the latency scenario measured bursts, and the
//! second message of each waited behind the first. Publishers whose period
//! is short enough for that to matter wait on a timerfd armed at the exact
//! slot instead. Slower ones keep tokio's timer: one timerfd per publisher
//! would double the file descriptors of `bench pub -c 10000 --rate 1`.

use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// Periods below this get a timerfd: tokio's rounding (up to 1 ms) is then
/// a large share of the period and turns into catch-up bursts.
const PRECISE_BELOW: Duration = Duration::from_millis(10);

pub(crate) struct Pacer {
    start: Instant,
    wait: Wait,
}

enum Wait {
    Coarse(Pin<Box<Sleep>>),
    #[cfg(target_os = "linux")]
    Precise(precise::Timer),
}

impl Pacer {
    /// A pacer for slots measured from `start`, at `rate` messages a second.
    pub(crate) fn new(start: Instant, rate: Option<f64>) -> Pacer {
        let far = start + Duration::from_secs(86_400 * 365);
        let coarse = || Wait::Coarse(Box::pin(tokio::time::sleep_until(far.into())));
        let wait = match rate {
            #[cfg(target_os = "linux")]
            Some(rate) if rate > 0.0 && Duration::from_secs_f64(1.0 / rate) < PRECISE_BELOW => {
                // Out of file descriptors or no timerfd: tokio's timer still paces,
                // only less evenly.
                precise::Timer::new(start).map_or_else(|_| coarse(), Wait::Precise)
            }
            _ => coarse(),
        };
        Pacer { start, wait }
    }

    /// Sets the next wake-up to `at`, which may already have passed.
    pub(crate) fn arm(&mut self, at: Instant) -> std::io::Result<()> {
        match &mut self.wait {
            Wait::Coarse(sleep) => {
                sleep.as_mut().reset(at.into());
                Ok(())
            }
            #[cfg(target_os = "linux")]
            Wait::Precise(timer) => timer.arm(at.saturating_duration_since(self.start)),
        }
    }

    /// Resolves once the armed time has come.
    pub(crate) async fn wait(&mut self) -> std::io::Result<()> {
        match &mut self.wait {
            Wait::Coarse(sleep) => {
                sleep.as_mut().await;
                Ok(())
            }
            #[cfg(target_os = "linux")]
            Wait::Precise(timer) => timer.wait().await,
        }
    }

    #[cfg(test)]
    fn is_precise(&self) -> bool {
        !matches!(self.wait, Wait::Coarse(_))
    }
}

/// The first instant from now on that lies `offset` after a multiple of
/// `period` on CLOCK_MONOTONIC. That clock is the machine's, not the
/// process's: two generators that both start on the grid send at a fixed
/// offset from one another, whenever each was started. (A first slot that
/// has passed by the time its publisher starts is sent at once; the pacer's
/// later slots are still on the grid.)
#[cfg(target_os = "linux")]
pub(crate) fn on_grid(period: Duration, offset: Duration) -> std::io::Result<Instant> {
    // The clock first: `anchor` is then at or after `now`, and the instant
    // returned at or after the grid's point.
    let now = Duration::from(nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?).as_nanos();
    let anchor = Instant::now();
    let period = period.as_nanos().max(1);
    let offset = offset.as_nanos() % period;
    let at = now.saturating_sub(offset).div_ceil(period) * period + offset;
    Ok(anchor + Duration::from_nanos((at - now) as u64))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn on_grid(_period: Duration, _offset: Duration) -> std::io::Result<Instant> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "--phase-us needs Linux's CLOCK_MONOTONIC"))
}

#[cfg(target_os = "linux")]
mod precise {
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::net::unix::pipe;

    /// A one-shot timerfd on CLOCK_MONOTONIC (the clock `Instant` reads),
    /// armed at absolute times so that slots do not drift with wake-up delays.
    pub(super) struct Timer {
        timer: TimerFd,
        /// A duplicate of the timer's descriptor in tokio's reactor. Tokio's
        /// safe way to register a descriptor it did not open is the pipe
        /// receiver; all it does with it is wait for readability and read(2),
        /// which is how a timerfd reports an expiry (an 8-byte count).
        expiries: pipe::Receiver,
        /// CLOCK_MONOTONIC at the pacer's `start`.
        base: TimeSpec,
    }

    impl Timer {
        pub(super) fn new(start: Instant) -> std::io::Result<Timer> {
            let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
            let expiries = pipe::Receiver::from_owned_fd_unchecked(timer.as_fd().try_clone_to_owned()?)?;
            // Both readings are CLOCK_MONOTONIC. `Instant` is read first, so `base`
            // is at or just after `start` and a slot never fires early. `start`
            // may lie ahead (a publisher's phase).
            let anchor = Instant::now();
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
            let base = now + TimeSpec::from_duration(start.saturating_duration_since(anchor))
                - TimeSpec::from_duration(anchor.saturating_duration_since(start));
            Ok(Timer { timer, expiries, base })
        }

        pub(super) fn arm(&mut self, after_start: Duration) -> std::io::Result<()> {
            let at = self.base + TimeSpec::from_duration(after_start);
            // Re-arming also clears an expiry nobody read.
            self.timer.set(Expiration::OneShot(at), TimerSetTimeFlags::TFD_TIMER_ABSTIME)?;
            Ok(())
        }

        pub(super) async fn wait(&mut self) -> std::io::Result<()> {
            let mut count = [0u8; 8];
            loop {
                self.expiries.readable().await?;
                // WouldBlock: the readiness was stale (re-armed after it fired).
                match self.expiries.try_read(&mut count) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_rates_use_tokio_and_fast_ones_a_precise_timer() {
        let start = Instant::now();
        assert!(!Pacer::new(start, None).is_precise());
        assert!(!Pacer::new(start, Some(10.0)).is_precise());
        assert_eq!(Pacer::new(start, Some(1000.0)).is_precise(), cfg!(target_os = "linux"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_start_on_the_grid_lies_within_a_period_ahead_at_the_offset_into_it() {
        let period = Duration::from_secs(1);
        for offset in [Duration::ZERO, Duration::from_millis(300), Duration::from_millis(1300)] {
            let before = Instant::now();
            let at = on_grid(period, offset).unwrap();
            assert!(at >= before && at <= Instant::now() + period, "within the period ahead");
            // Where `at` lies on CLOCK_MONOTONIC: the clock now, plus how far ahead `at` is.
            let mono = Duration::from(nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap());
            let on_clock = mono + at.saturating_duration_since(Instant::now());
            let into_period = Duration::from_nanos((on_clock.as_nanos() % period.as_nanos()) as u64);
            let wanted = Duration::from_nanos((offset.as_nanos() % period.as_nanos()) as u64);
            // Off only by the moments between two readings of the clock.
            let off = into_period.abs_diff(wanted);
            assert!(
                off < Duration::from_millis(100) || off > period - Duration::from_millis(100),
                "offset {offset:?}: {into_period:?} into the period"
            );
        }
    }

    #[tokio::test]
    async fn a_wait_ends_no_earlier_than_the_armed_time() {
        for rate in [10.0, 1000.0] {
            let start = Instant::now();
            let mut pacer = Pacer::new(start, Some(rate));
            for slot in 1..=5u32 {
                let at = start + Duration::from_micros(700) * slot;
                pacer.arm(at).unwrap();
                tokio::time::timeout(Duration::from_secs(10), pacer.wait()).await.unwrap().unwrap();
                assert!(Instant::now() >= at, "rate {rate}, slot {slot} woke early");
            }
        }
    }

    #[tokio::test]
    async fn a_start_ahead_of_now_is_waited_for() {
        for rate in [10.0, 1000.0] {
            let start = Instant::now() + Duration::from_millis(20);
            let mut pacer = Pacer::new(start, Some(rate));
            pacer.arm(start).unwrap();
            tokio::time::timeout(Duration::from_secs(10), pacer.wait()).await.unwrap().unwrap();
            assert!(Instant::now() >= start, "rate {rate} woke before its start");
        }
    }

    #[tokio::test]
    async fn a_time_already_past_fires_at_once_and_rearming_discards_an_unread_expiry() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, Some(1000.0));
        pacer.arm(start).unwrap();
        tokio::time::timeout(Duration::from_secs(10), pacer.wait()).await.unwrap().unwrap();
        // Fires, is not read, and is re-armed an hour ahead: the wait must not end.
        pacer.arm(start).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        pacer.arm(start + Duration::from_secs(3600)).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), pacer.wait()).await.is_err());
    }
}
