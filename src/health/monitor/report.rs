//! Status as the admin API, the page and the fleet read it, built on request.

use std::collections::HashMap;

use tokio::time::Instant;

use super::Monitor;
use super::tracked::CheckState;
use crate::config::Probe;
use crate::health::scheduler::TargetId;
use crate::health::status::{EndpointStatus, Family, FamilyStatus};
use crate::routing::EndpointKey;

impl Monitor {
    /// One endpoint's status (a change's reply: not the whole list, which at 10,000
    /// endpoints would cost more than the change).
    pub(super) fn status_of(&self, key: &EndpointKey) -> Option<EndpointStatus> {
        let target = self
            .targets
            .values()
            .find(|t| t.members.iter().any(|(k, _)| k == key))
            .map(|t| t.id);
        self.member_status(key, target)
    }

    pub(super) fn status(&self) -> Vec<EndpointStatus> {
        let target_of: HashMap<&EndpointKey, TargetId> = self
            .targets
            .values()
            .flat_map(|t| t.members.iter().map(move |(m, _)| (m, t.id)))
            .collect();
        self.order
            .iter()
            .filter_map(|key| self.member_status(key, target_of.get(key).copied()))
            .collect()
    }

    pub(super) fn member_status(
        &self,
        key: &EndpointKey,
        target: Option<TargetId>,
    ) -> Option<EndpointStatus> {
        let t = self.members.get(key)?;
        let state = |s: &CheckState, family: Family, probe: &Probe| FamilyStatus {
            family,
            address: probe.target(),
            health: s.effective,
            local: s.hysteresis.state(),
            since: s.effective_since,
            last_check: s.last_check,
            last_error: s.last_error.clone(),
        };
        let families = match (&t.v6, &t.check.probe_v6) {
            (Some(v6), Some(probe_v6)) => vec![
                state(&t.main, Family::V4, &t.check.probe),
                state(v6, Family::V6, probe_v6),
            ],
            _ => Vec::new(),
        };
        // The last error of a check that says down (the main one's otherwise).
        let failing =
            t.v6.as_ref()
                .filter(|v6| v6.last_error.is_some() && t.main.last_error.is_none())
                .unwrap_or(&t.main);
        Some(EndpointStatus {
            key: key.clone(),
            health: t.effective(),
            local: t.local(),
            votes: self
                .tables
                .get(&key.pool)
                .into_iter()
                .flat_map(|table| table.votes(t.seat))
                .map(|(voter, vote)| (self.voters.name(voter).to_string(), vote.clone()))
                .collect(),
            tally: t.main.tally,
            rule: t.rule,
            voting: self.voter.is_some() && self.voting,
            fleet: self.voter.is_some(),
            since: t.effective_since(),
            last_check: t.main.last_check,
            last_error: failing.last_error.clone(),
            stale: t.stale,
            probe: t.check.probe.kind(),
            target,
            drain: t.drain,
            load: t.load,
            load_smoothed: t.tracker.view(Instant::now()).ratio(),
            overloaded: t.sent.overloaded,
            cert: t.main.cert,
            drain_note: t.drain_note.clone(),
            window: t.window.clone(),
            families,
            timings: t.main.timings,
            rtt_smoothed: t.rtt.published(),
        })
    }

    /// The fleet simulator's outcomes as reports of each endpoint's main-check probe.
    pub(super) fn simulated(
        &mut self,
        outcomes: Vec<(EndpointKey, bool, u32)>,
    ) -> Vec<crate::health::scheduler::Report> {
        if self.simulated_targets.is_none() {
            let index = self
                .targets
                .values()
                .flat_map(|t| {
                    t.members
                        .iter()
                        .filter(|(_, which)| *which == super::tracked::Which::Main)
                        .map(move |(key, _)| (key.clone(), t.id))
                })
                .collect();
            self.simulated_targets = Some(index);
        }
        let Some(index) = &self.simulated_targets else {
            return Vec::new();
        };
        let at = std::time::SystemTime::now();
        outcomes
            .into_iter()
            .filter_map(|(key, up, count)| Some((*index.get(&key)?, up, count)))
            .flat_map(|(target, up, count)| {
                (0..count).map(move |_| crate::health::scheduler::Report {
                    target,
                    result: if up {
                        Ok(())
                    } else {
                        Err(crate::health::probe::ProbeError::Refused)
                    },
                    load: None,
                    cert: None,
                    at,
                    rtt: None,
                    timings: Default::default(),
                })
            })
            .collect()
    }
}
