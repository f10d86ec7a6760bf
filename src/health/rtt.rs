//! Round trips as ranking sees them: each probe's round trip to an endpoint goes into a
//! window, whose least value is the smoothed one — queueing on the path and a busy
//! prober's scheduling only ever add to a round trip, so the least of the last few probes
//! is the path's own (the minimum filter of TCP's and BBR's round-trip estimates); that
//! value is published (shared with the fleet, ranked by) only when it moves beyond a band,
//! relative and absolute (`[latency] relative_band`, `absolute_band`), so jitter moves
//! nobody and a steady fleet writes nothing. A real rise shows once a window of probes
//! saw it; a fall at once.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::LatencySettings;

/// One endpoint's round trips as one vantage sees them.
#[derive(Debug, Clone, Default)]
pub struct RttFilter {
    /// The last probes' round trips (µs), oldest first.
    samples: VecDeque<u32>,
    /// The value ranking uses (µs): the window's least when it last moved beyond the band.
    published: Option<u32>,
}

/// Microseconds of a duration, saturating.
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Whether `new` is beyond the band around `old`: it differs by more than both the
/// relative and the absolute band.
pub fn beyond_band(old: u32, new: u32, settings: &LatencySettings) -> bool {
    let diff = f64::from(old.abs_diff(new));
    let absolute = settings.absolute_band.as_secs_f64() * 1e6;
    diff > absolute && diff > settings.relative_band * f64::from(old)
}

impl RttFilter {
    /// Takes one probe's round trip; true when the published value moved (first value
    /// included). The first probe's is published at once, so that it travels with the
    /// endpoint's first verdict (one write to the fleet, not two); the window's least
    /// replaces it only beyond the band, as any later value.
    pub fn observe(&mut self, sample: Duration, settings: &LatencySettings) -> bool {
        let window = settings.window.max(1);
        while self.samples.len() >= window {
            self.samples.pop_front();
        }
        self.samples.push_back(micros(sample));
        let Some(least) = self.smoothed() else {
            return false;
        };
        match self.published {
            Some(old) if !beyond_band(old, least, settings) => false,
            _ => {
                self.published = Some(least);
                true
            }
        }
    }

    /// The least round trip of the window.
    pub fn smoothed(&self) -> Option<u32> {
        self.samples.iter().copied().min()
    }

    /// The value ranking uses (µs), once there is one.
    pub fn published(&self) -> Option<u32> {
        self.published
    }

    /// Forgets everything (the check changed: its round trips are another's).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    #[test]
    fn jitter_inside_the_band_moves_nothing_over_a_hundred_probes() {
        let settings = LatencySettings::default();
        let mut filter = RttFilter::default();
        let mut moved = 0;
        // 5 ms ± 2 ms, with a spike of 60 ms every 10th probe (a busy prober).
        for i in 0..100u32 {
            let jitter = f64::from((i * 7919) % 41) / 10.0 - 2.0;
            let sample = if i % 10 == 9 { 60.0 } else { 5.0 + jitter };
            moved += usize::from(filter.observe(ms(sample), &settings));
        }
        assert_eq!(moved, 1, "published once, never moved by jitter");
        let published = filter.published().expect("published");
        assert!((3_000..=7_000).contains(&published), "{published}");
    }

    #[test]
    fn a_real_change_moves_it_within_a_few_probes() {
        let settings = LatencySettings::default();
        let mut filter = RttFilter::default();
        for _ in 0..5 {
            filter.observe(ms(5.0), &settings);
        }
        assert_eq!(filter.published(), Some(5_000));
        // 150 ms from now on: it moves once a window (five) saw nothing lower.
        let moved: Vec<bool> = (0..5)
            .map(|_| filter.observe(ms(150.0), &settings))
            .collect();
        assert_eq!(moved, [false, false, false, false, true]);
        assert_eq!(filter.published(), Some(150_000));
        // Back to 5 ms: at once.
        assert!(filter.observe(ms(5.0), &settings));
        assert_eq!(filter.published(), Some(5_000));
    }

    #[test]
    fn the_band_is_relative_and_absolute() {
        let settings = LatencySettings::default(); // 20 % and 5 ms
        // 100 ms to 115 ms: 15 ms is beyond 5 ms but within 20 %.
        assert!(!beyond_band(100_000, 115_000, &settings));
        assert!(beyond_band(100_000, 121_000, &settings));
        // 1 ms to 4 ms: 300 % but within 5 ms.
        assert!(!beyond_band(1_000, 4_000, &settings));
        assert!(beyond_band(1_000, 6_500, &settings));
    }
}
