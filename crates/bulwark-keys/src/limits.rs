//! Rate limits and budget periods. Pure: every function takes the time as an argument.
//!
//! Request limits are an exact sliding window (the times of the requests admitted in the
//! last window): at no instant have more than `limit` requests been admitted within one
//! window, whatever the concurrency, because admission happens under one lock. A token
//! bucket or fixed windows would admit up to twice the limit across a boundary.
//! Token limits use the same window over recorded token counts; tokens are known only
//! when an answer ends, so requests already in flight when the limit is reached still
//! finish (the overshoot is at most what those requests use).

use std::collections::VecDeque;
use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub const WINDOW: Duration = Duration::from_secs(60);

/// At most `limit` events per [`WINDOW`], each event weighing `weight`.
#[derive(Debug, Default)]
pub struct SlidingWindow {
    events: VecDeque<(Millis, u64)>,
    total: u64,
}

impl SlidingWindow {
    fn expire(&mut self, now: Millis) {
        let window = WINDOW.as_millis() as u64;
        while let Some(&(at, w)) = self.events.front() {
            if at + window > now {
                break;
            }
            self.events.pop_front();
            self.total -= w;
        }
    }

    /// The total weight inside the window ending at `now`.
    pub fn total(&mut self, now: Millis) -> u64 {
        self.expire(now);
        self.total
    }

    /// Ms until the total drops below `limit`, or `None` if it already is.
    pub fn wait(&mut self, limit: u64, now: Millis) -> Option<Millis> {
        self.expire(now);
        if self.total < limit {
            return None;
        }
        let window = WINDOW.as_millis() as u64;
        let mut total = self.total;
        for &(at, w) in &self.events {
            total -= w;
            if total < limit {
                return Some((at + window).saturating_sub(now).max(1));
            }
        }
        Some(window)
    }

    /// Records an event of `weight` at `now` (events are assumed to come in time order).
    /// Events of the same millisecond share one entry, so a window never holds more
    /// than 60,000 entries (under 1 MiB) however high the limit.
    pub fn add(&mut self, weight: u64, now: Millis) {
        if weight == 0 {
            return;
        }
        self.total += weight;
        match self.events.back_mut() {
            Some((at, w)) if *at >= now => *w += weight,
            _ => self.events.push_back((now, weight)),
        }
    }

    /// Admits one request if fewer than `limit` were admitted within the window,
    /// else says how long to wait.
    pub fn admit(&mut self, limit: u64, now: Millis) -> Result<(), Millis> {
        match self.wait(limit, now) {
            Some(ms) => Err(ms),
            None => {
                self.add(1, now);
                Ok(())
            }
        }
    }
}

/// How long a token budget lasts before it starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" | "daily" => Some(Period::Day),
            "month" | "monthly" => Some(Period::Month),
            _ => None,
        }
    }
}

impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Period::parse(s).ok_or_else(|| format!("`{s}` is not a budget period; use day or month"))
    }
}

impl Period {
    /// The first day (UTC) of the period containing `day`.
    pub fn start(self, day: Day) -> Day {
        match self {
            Period::Day => day,
            Period::Month => Day::from_civil(day.civil().0, day.civil().1, 1),
        }
    }

    /// The first day (UTC) of the next period.
    pub fn next(self, day: Day) -> Day {
        match self {
            Period::Day => Day(day.0 + 1),
            Period::Month => {
                let (y, m, _) = day.civil();
                if m == 12 {
                    Day::from_civil(y + 1, 1, 1)
                } else {
                    Day::from_civil(y, m + 1, 1)
                }
            }
        }
    }
}

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

const MS_PER_DAY: i64 = 86_400_000;

impl Day {
    pub fn of(now: Millis) -> Day {
        Day((now as i64).div_euclid(MS_PER_DAY))
    }

    pub fn start_ms(self) -> Millis {
        (self.0 * MS_PER_DAY).max(0) as Millis
    }

    // Civil-from-days and its inverse: Howard Hinnant's algorithms, exact for the
    // proleptic Gregorian calendar; a few lines instead of a date-time dependency.
    pub fn civil(self) -> (i64, u32, u32) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    pub fn from_civil(y: i64, m: u32, d: u32) -> Day {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Day(era * 146_097 + doe - 719_468)
    }

    /// `YYYY-MM-DD`, the form stored in the usage table.
    pub fn iso(self) -> String {
        let (y, m, d) = self.civil();
        format!("{y:04}-{m:02}-{d:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Millis = 60_000;

    #[test]
    fn admits_exactly_the_limit_within_a_window() {
        let mut w = SlidingWindow::default();
        let t0 = 1_000_000;
        for i in 0..5 {
            assert_eq!(w.admit(5, t0 + i), Ok(()));
        }
        // The sixth waits until the first leaves the window.
        assert_eq!(w.admit(5, t0 + 10), Err(MIN - 10));
        assert_eq!(w.admit(5, t0 + MIN - 1), Err(1));
        assert_eq!(w.admit(5, t0 + MIN), Ok(()));
        assert_eq!(w.admit(5, t0 + MIN), Err(1));
    }

    #[test]
    fn token_window_waits_for_enough_to_expire() {
        let mut w = SlidingWindow::default();
        w.add(600, 0);
        w.add(600, 10_000);
        assert_eq!(w.wait(1000, 20_000), Some(40_000));
        assert_eq!(w.wait(1000, 60_000), None);
        assert_eq!(w.total(60_000), 600);
        assert_eq!(w.total(70_000), 0);
    }

    proptest! {
        /// Whatever the arrival times, no window of 60 s ever holds more admissions
        /// than the limit.
        #[test]
        fn never_more_than_the_limit_in_any_window(
            limit in 1u64..20,
            gaps in proptest::collection::vec(0u64..20_000, 1..300),
        ) {
            let mut w = SlidingWindow::default();
            let mut now = 0;
            let mut admitted = Vec::new();
            for g in gaps {
                now += g;
                if w.admit(limit, now).is_ok() {
                    admitted.push(now);
                }
            }
            for (i, &t) in admitted.iter().enumerate() {
                let within = admitted[i..].iter().take_while(|&&u| u < t + MIN).count();
                prop_assert!(within as u64 <= limit);
            }
        }

        #[test]
        fn civil_round_trips(days in -1_000_000i64..1_000_000) {
            let d = Day(days);
            let (y, m, dd) = d.civil();
            prop_assert_eq!(Day::from_civil(y, m, dd), d);
            prop_assert!(Period::Month.start(d) <= d && d < Period::Month.next(d));
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(Day(0).iso(), "1970-01-01");
        let d = Day::of(1_795_000_000_000); // 2026-11-18T...
        assert_eq!(d.iso(), "2026-11-18");
        assert_eq!(Period::Month.start(d).iso(), "2026-11-01");
        assert_eq!(Period::Month.next(d).iso(), "2026-12-01");
        assert_eq!(
            Period::Month.next(Day::from_civil(2026, 12, 31)).iso(),
            "2027-01-01"
        );
        assert_eq!(Period::Day.next(d).iso(), "2026-11-19");
        assert_eq!(Day::from_civil(2024, 2, 29).iso(), "2024-02-29");
    }
}
