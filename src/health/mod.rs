//! Endpoint state: health checks (probe tasks per distinct target, a hysteresis machine per
//! endpoint), operator drains and reported load, owned by one monitor task that turns
//! changes into routing updates and keeps them in the state file.
//!
//! ```text
//! probe task (one per distinct target) ──Report──> monitor ──SetMemberUp──> routing builder
//!                                                     │ on flips
//!                                                     ├──> state file (atomic write)
//!                                                     └──> Flip broadcast, status, log, metrics
//! ```
//!
//! - A brand-new endpoint is up until its probes say otherwise, so a fresh install answers
//!   at once.
//! - At start, the last known state comes from the state file: endpoints that were down
//!   stay out of the first answers; everything restored is marked stale and re-checked at
//!   once (first probes within a quarter interval).
//! - On reload, an endpoint whose identity (pool name + member name) is unchanged keeps its
//!   state, even when its check changed; probe tasks whose target is unchanged keep running.
//! - An endpoint whose probes stop reporting for `2 x interval + timeout + 1 s` is marked
//!   stale (in status and in a warning log line); it keeps its last state, flagged, rather
//!   than looking healthy forever.

mod handle;
pub mod kinds;
mod monitor;
pub mod probe;
pub mod rtt;
pub mod rum;
pub mod scheduler;
#[doc(hidden)]
pub mod simulate;
pub mod state;
mod status;
pub mod store;
pub mod votes;

pub use handle::{HealthHandle, PoolVoteChanges, VoteChanges, name_at, name_ending};
pub use monitor::{START_GRACE, spawn};
pub use status::{
    Changed, ChangedMany, Drain, DrainNote, EndpointStatus, Family, FamilyStatus, Flip, Load,
    Planned, StateError, Window,
};

use std::time::SystemTime;

use crate::config::Probe;
use crate::loaded::Loaded;
use crate::routing::{EndpointKey, EndpointStates};
use state::Health;
use store::StateFile;

/// At most this many probes run at once, however many targets there are.
pub const MAX_CONCURRENT_PROBES: usize = 512;

/// What the first snapshot must know from the state file: endpoints that were down (and
/// are still checked) and endpoints that are drained (and whose drain has not ended).
pub fn restore(loaded: &Loaded, file: Option<&StateFile>) -> EndpointStates {
    let mut states = EndpointStates::default();
    let Some(file) = file else {
        return states;
    };
    let now = SystemTime::now();
    for record in &file.members {
        let Some(member) = loaded
            .config
            .pools
            .iter()
            .find(|p| p.name == record.pool)
            .and_then(|p| p.members.iter().find(|m| m.name == record.member))
        else {
            continue;
        };
        let key = EndpointKey {
            pool: record.pool.clone(),
            member: record.member.clone(),
        };
        let checked = member.check.probe != Probe::None;
        let main_down = record.health == Health::Down && checked;
        // With `family = "each"`, the endpoint is down when both families are.
        let v6_down = member.check.probe_v6.is_some().then(|| {
            checked
                && record
                    .v6
                    .as_ref()
                    .is_some_and(|v6| v6.health == Health::Down)
        });
        let down = main_down && v6_down.unwrap_or(true);
        let withheld = match v6_down {
            Some(v6_down) => crate::routing::Withheld {
                v4: main_down && !v6_down,
                v6: v6_down && !main_down,
            },
            None => crate::routing::Withheld::default(),
        };
        let drained = record.live_drain(now).is_some();
        states.update(key, |state| {
            state.down = down;
            state.drained = drained;
            state.withheld = withheld;
        });
    }
    states
}
