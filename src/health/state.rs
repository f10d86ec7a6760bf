//! The health state of one endpoint: a pure hysteresis machine (gdnsd-style rise/fall).
//!
//! `fall` failures in a row take an up endpoint down; `rise` successes in a row bring a
//! down one up. A result that agrees with the current state resets the opposite count, so
//! one lost probe never flips anything. Only a flip is reported.

/// Up or down, as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not answered (unless every endpoint is down and the service fails open).
    Down,
    /// Answered.
    Up,
}

impl Health {
    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Down => "down",
            Health::Up => "up",
        }
    }
}

/// Consecutive-result hysteresis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    state: Health,
    rise: u8,
    fall: u8,
    /// Results in a row that disagree with `state`.
    streak: u8,
}

impl Hysteresis {
    /// Starts in `state` with no streak. `rise` and `fall` are at least 1.
    pub fn new(state: Health, rise: u8, fall: u8) -> Self {
        Self {
            state,
            rise: rise.max(1),
            fall: fall.max(1),
            streak: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// True while results disagree with the state but have not flipped it yet.
    pub fn is_changing(&self) -> bool {
        self.streak > 0
    }

    /// Keeps the state and streak but takes new thresholds (after a reload).
    pub fn set_thresholds(&mut self, rise: u8, fall: u8) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Folds one probe result in; returns the new state when it flipped.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        let (agrees, needed, next) = match self.state {
            Health::Up => (ok, self.fall, Health::Down),
            Health::Down => (!ok, self.rise, Health::Up),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        if self.streak >= needed {
            self.state = next;
            self.streak = 0;
            return Some(next);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lost_probe_never_flips() {
        let mut h = Hysteresis::new(Health::Up, 2, 2);
        for _ in 0..10 {
            assert_eq!(h.observe(false), None);
            assert_eq!(h.observe(true), None);
        }
        assert_eq!(h.state(), Health::Up);
    }

    #[test]
    fn fall_failures_in_a_row_go_down_and_rise_successes_come_back() {
        let mut h = Hysteresis::new(Health::Up, 3, 2);
        assert_eq!(h.observe(false), None);
        assert!(h.is_changing());
        assert_eq!(h.observe(false), Some(Health::Down));
        assert!(!h.is_changing());
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None, "a failure resets the rise streak");
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(Health::Up));
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut h = Hysteresis::new(Health::Down, 1, 1);
        assert_eq!(h.observe(true), Some(Health::Up));
        assert_eq!(h.observe(false), Some(Health::Down));
    }

    #[test]
    fn any_sequence_flips_only_after_full_streaks() {
        // Exhaustive over all sequences of 10 results: a flip happens exactly when the
        // last `needed` results disagree with the state before them.
        for bits in 0u32..1024 {
            let mut h = Hysteresis::new(Health::Up, 2, 3);
            let mut run = 0;
            let mut state = Health::Up;
            for i in 0..10 {
                let ok = bits & (1 << i) != 0;
                let disagrees = (state == Health::Up) != ok;
                run = if disagrees { run + 1 } else { 0 };
                let needed = if state == Health::Up { 3 } else { 2 };
                let flipped = h.observe(ok);
                if run == needed {
                    state = if state == Health::Up {
                        Health::Down
                    } else {
                        Health::Up
                    };
                    run = 0;
                    assert_eq!(flipped, Some(state));
                } else {
                    assert_eq!(flipped, None);
                }
                assert_eq!(h.state(), state);
            }
        }
    }
}
