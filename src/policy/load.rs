//! Load of one endpoint: reports smoothed by an EWMA, a high/low watermark hysteresis, a
//! slow-start ramp after recovery, and staleness. Pure: the caller passes the time.

use tokio::time::Instant;

use crate::config::LoadSettings;

/// What ranking sees of an endpoint's load, in coarse steps so that small wobbles do not
/// rebuild the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadView {
    /// Smoothed load in 5 % steps (20 = full); None when unknown or stale.
    pub steps: Option<u16>,
    /// Over the high-watermark and not yet back under the low one.
    pub overloaded: bool,
    /// Slow-start progress in tenths (10 = full share).
    pub ramp: u8,
}

impl LoadView {
    /// The unknown-load view: full share, not overloaded.
    pub const UNKNOWN: LoadView = LoadView {
        steps: None,
        overloaded: false,
        ramp: 10,
    };

    /// The load as a ratio.
    pub fn ratio(&self) -> Option<f64> {
        self.steps.map(|s| f64::from(s) / 20.0)
    }

    /// The share multiplier of the slow-start ramp (0.1..=1).
    pub fn ramp_factor(&self) -> f64 {
        f64::from(self.ramp.clamp(1, 10)) / 10.0
    }
}

/// Load state of one endpoint.
#[derive(Debug, Clone)]
pub struct LoadTracker {
    settings: LoadSettings,
    smoothed: Option<f64>,
    reported: Option<Instant>,
    overloaded: bool,
    recovered: Option<Instant>,
}

impl LoadTracker {
    /// No reports yet.
    pub fn new(settings: LoadSettings) -> Self {
        Self {
            settings,
            smoothed: None,
            reported: None,
            overloaded: false,
            recovered: None,
        }
    }

    /// Keeps the state, takes new settings (after a reload).
    pub fn set_settings(&mut self, settings: LoadSettings) {
        self.settings = settings;
    }

    /// The smoothed ratio, if any report was made.
    pub fn smoothed(&self) -> Option<f64> {
        self.smoothed
    }

    /// Folds in a report of `ratio` (sessions / capacity) made at `now`.
    pub fn observe(&mut self, ratio: f64, now: Instant) {
        let ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.0
        };
        let stale = self.is_stale(now);
        self.smoothed = Some(match self.smoothed {
            // After a silence the old value is not trusted either.
            Some(previous) if !stale => previous + self.settings.smoothing * (ratio - previous),
            _ => ratio,
        });
        self.reported = Some(now);
        let value = self.smoothed.unwrap_or(ratio);
        if !self.overloaded && value > self.settings.high {
            self.overloaded = true;
            self.recovered = None;
        } else if self.overloaded && value < self.settings.low {
            self.overloaded = false;
            self.recovered = Some(now);
        }
    }

    fn is_stale(&self, now: Instant) -> bool {
        self.reported
            .is_none_or(|at| now.saturating_duration_since(at) > self.settings.stale_after)
    }

    /// What ranking sees at `now`.
    pub fn view(&self, now: Instant) -> LoadView {
        if self.is_stale(now) {
            // A report that is too old is ignored, not trusted.
            return LoadView::UNKNOWN;
        }
        let ramp = match self.recovered {
            Some(at) if !self.settings.slow_start.is_zero() => {
                let progress = now.saturating_duration_since(at).as_secs_f64()
                    / self.settings.slow_start.as_secs_f64();
                (progress * 10.0).floor().clamp(1.0, 10.0) as u8
            }
            _ => 10,
        };
        LoadView {
            steps: self
                .smoothed
                .map(|v| (v * 20.0).round().clamp(0.0, f64::from(u16::MAX)) as u16),
            overloaded: self.overloaded,
            ramp,
        }
    }

    /// True while a slow start is still ramping at `now` (its view changes with time).
    pub fn ramping(&self, now: Instant) -> bool {
        self.recovered
            .is_some_and(|at| now.saturating_duration_since(at) < self.settings.slow_start)
            && !self.is_stale(now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> LoadSettings {
        LoadSettings {
            low: 0.7,
            high: 0.9,
            slow_start: Duration::from_secs(10),
            stale_after: Duration::from_secs(30),
            smoothing: 1.0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn watermarks_have_hysteresis_and_recovery_ramps() {
        let mut load = LoadTracker::new(settings());
        let t0 = Instant::now();
        load.observe(0.5, t0);
        assert_eq!(
            load.view(t0),
            LoadView {
                steps: Some(10),
                overloaded: false,
                ramp: 10
            }
        );
        load.observe(0.95, t0);
        assert!(load.view(t0).overloaded);
        load.observe(0.8, t0);
        assert!(
            load.view(t0).overloaded,
            "between the watermarks it stays overloaded"
        );
        load.observe(0.6, t0);
        let view = load.view(t0);
        assert!(!view.overloaded);
        assert_eq!(view.ramp, 1, "slow start begins");
        assert!(load.ramping(t0));
        assert_eq!(load.view(t0 + Duration::from_secs(5)).ramp, 5);
        assert_eq!(load.view(t0 + Duration::from_secs(10)).ramp, 10);
        assert!(!load.ramping(t0 + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_load_is_ignored_and_smoothing_averages() {
        let mut s = settings();
        s.smoothing = 0.5;
        let mut load = LoadTracker::new(s);
        let t0 = Instant::now();
        load.observe(1.0, t0);
        load.observe(0.0, t0);
        assert_eq!(load.smoothed(), Some(0.5));
        assert_eq!(load.view(t0 + Duration::from_secs(31)), LoadView::UNKNOWN);
        // After a silence, the first new report stands alone.
        load.observe(0.2, t0 + Duration::from_secs(40));
        assert_eq!(load.smoothed(), Some(0.2));
    }
}
