//! A circuit breaker per upstream: after `threshold` consecutive failures the upstream is
//! skipped for `cooldown`; then one probe request is let through, and its outcome closes
//! the circuit again or re-opens it for another cooldown.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over and one probe is in flight.
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update; the state is a
        // plain value and still usable.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Would a request be let through now (without claiming the half-open probe)?
    pub fn available_at(&self, now: Instant) -> bool {
        self.with(|s| match *s {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen => false,
        })
    }

    /// May a request go to the upstream now? When the cooldown has passed, the first
    /// caller gets the single probe.
    pub fn allow_at(&self, now: Instant) -> bool {
        self.with(|s| match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        })
    }

    /// Records the outcome of a request that [`Breaker::allow_at`] let through.
    pub fn record_at(&self, success: bool, now: Instant) {
        let (threshold, cooldown) = (self.threshold, self.cooldown);
        self.with(|s| {
            *s = match (*s, success) {
                (_, true) => State::Closed { failures: 0 },
                (State::Closed { failures }, false) if failures + 1 < threshold => State::Closed {
                    failures: failures + 1,
                },
                (_, false) => State::Open {
                    until: now + cooldown,
                },
            }
        });
    }

    pub fn record(&self, success: bool) {
        self.record_at(success, Instant::now());
    }

    /// `closed`, `open` or `half_open`, for metrics and logs.
    pub fn state(&self) -> &'static str {
        self.with(|s| match s {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_and_closes() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow_at(t0));
            b.record_at(false, t0);
        }
        assert_eq!(b.state(), "closed");
        b.record_at(false, t0);
        assert_eq!(b.state(), "open");
        assert!(!b.allow_at(t0 + Duration::from_secs(9)));
        // Cooldown over: exactly one probe.
        assert!(b.allow_at(t0 + Duration::from_secs(10)));
        assert!(!b.allow_at(t0 + Duration::from_secs(10)));
        assert_eq!(b.state(), "half_open");
        b.record_at(true, t0 + Duration::from_secs(11));
        assert_eq!(b.state(), "closed");
        assert!(b.allow_at(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.record_at(false, t0);
        assert!(b.allow_at(t0 + Duration::from_secs(5)));
        b.record_at(false, t0 + Duration::from_secs(5));
        assert_eq!(b.state(), "open");
        assert!(!b.allow_at(t0 + Duration::from_secs(9)));
        assert!(b.allow_at(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        b.record_at(false, t0);
        b.record_at(true, t0);
        b.record_at(false, t0);
        assert_eq!(b.state(), "closed");
    }
}
