//! Status as the admin API, the page and the fleet read it, built on request.

use std::collections::HashMap;

use tokio::time::Instant;

use super::Monitor;
use crate::health::scheduler::TargetId;
use crate::health::status::EndpointStatus;
use crate::routing::EndpointKey;

impl Monitor {
    /// One endpoint's status (a change's reply: not the whole list, which at 10,000
    /// endpoints would cost more than the change).
    pub(super) fn status_of(&self, key: &EndpointKey) -> Option<EndpointStatus> {
        let target = self
            .targets
            .values()
            .find(|t| t.members.contains(key))
            .map(|t| t.id);
        self.member_status(key, target)
    }

    pub(super) fn status(&self) -> Vec<EndpointStatus> {
        let target_of: HashMap<&EndpointKey, TargetId> = self
            .targets
            .values()
            .flat_map(|t| t.members.iter().map(move |m| (m, t.id)))
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
        Some(EndpointStatus {
            key: key.clone(),
            health: t.effective,
            local: t.hysteresis.state(),
            votes: t.votes.clone().into_iter().collect(),
            tally: t.tally,
            rule: t.rule,
            voting: self.voter.is_some() && self.voting,
            fleet: self.voter.is_some(),
            since: t.effective_since,
            last_check: t.last_check,
            last_error: t.last_error.clone(),
            stale: t.stale,
            probe: t.check.probe.kind(),
            target,
            drain: t.drain,
            load: t.load,
            load_smoothed: t.tracker.view(Instant::now()).ratio(),
            overloaded: t.sent.overloaded,
            cert: t.cert,
        })
    }
}
