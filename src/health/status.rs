//! What the health layer reports: an endpoint's status, drains, loads, flips, and why a
//! change was refused.

use std::time::SystemTime;

use super::state::Health;
use crate::routing::EndpointKey;

/// The health of one endpoint, as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    /// Which endpoint.
    pub key: EndpointKey,
    /// Up or down, as answers use it.
    pub health: Health,
    /// This instance's own verdict (the same as `health` without voting).
    pub local: Health,
    /// Other instances' verdicts, by instance.
    pub votes: Vec<(String, super::votes::Vote)>,
    /// When the votes decided: (fresh voters, how many said down).
    pub tally: Option<(usize, usize)>,
    /// The pool's voting rule.
    pub rule: crate::config::VoteRule,
    /// The fleet's votes count now (a fleet, and its store reachable).
    pub voting: bool,
    /// This instance is part of a fleet (`[cluster]`).
    pub fleet: bool,
    /// When it last flipped (or was first seen).
    pub since: SystemTime,
    /// When its last probe finished, if any has.
    pub last_check: Option<SystemTime>,
    /// The last probe's failure, when it failed.
    pub last_error: Option<String>,
    /// No fresh result: restored from the state file and not yet re-checked, or its probes
    /// stopped reporting.
    pub stale: bool,
    /// The probe kind ("tcp", "https", "none", ...).
    pub probe: &'static str,
    /// The probe task serving it; endpoints with the same probe and schedule share one.
    pub target: Option<u64>,
    /// The operator's drain, if drained.
    pub drain: Option<Drain>,
    /// The last reported load, if any.
    pub load: Option<Load>,
    /// The load as ranking sees it (smoothed, in 5 % steps; None: unknown or stale).
    pub load_smoothed: Option<f64>,
    /// Over its high-watermark: no new clients while another endpoint can serve.
    pub overloaded: bool,
    /// The server certificate's expiry, as the last TLS or HTTPS probe read it.
    pub cert: Option<crate::health::probe::CertExpiry>,
    /// Who drained it and why, when drained and known.
    pub drain_note: DrainNote,
    /// A maintenance window not yet begun.
    pub window: Option<Window>,
    /// `family = "each"` on a dual-stack endpoint: each address family's own check
    /// (IPv4 first); empty when one check governs every address.
    pub families: Vec<FamilyStatus>,
    /// The last successful probe's connect time and time to first byte.
    pub timings: crate::health::scheduler::Timings,
    /// This instance's smoothed round trip (µs), as published.
    pub rtt_smoothed: Option<u32>,
}

/// One address family's own check of an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyStatus {
    /// Which family.
    pub family: Family,
    /// The address probed.
    pub address: Option<std::net::SocketAddr>,
    /// Up or down, as answers of this family use it.
    pub health: Health,
    /// This instance's own verdict.
    pub local: Health,
    /// When it last flipped (or was first seen).
    pub since: SystemTime,
    /// When its last probe finished, if any has.
    pub last_check: Option<SystemTime>,
    /// The last probe's failure, when it failed.
    pub last_error: Option<String>,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: A records.
    V4,
    /// IPv6: AAAA records.
    V6,
}

impl Family {
    /// Stable label ("v4", "v6").
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Who asked for a drain and why, when known: shown in status, kept in the state file
/// and shared by the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainNote {
    /// The admin token's name and the client's address (`oncall@192.0.2.7`).
    pub by: Option<String>,
    /// The reason given with the drain.
    pub reason: Option<String>,
}

/// An operator's drain: the endpoint gets no new answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// When it was drained.
    pub since: SystemTime,
    /// When the drain ends by itself, if ever.
    pub until: Option<SystemTime>,
}

/// A maintenance window: a drain that starts at `from` (and ends at `until`, if set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// When the drain starts.
    pub from: SystemTime,
    /// When it ends by itself, if ever.
    pub until: Option<SystemTime>,
    /// Who set it and why.
    pub note: DrainNote,
}

/// A drain as asked for: from when (None: now), until when, who and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// When it starts (later than now: a maintenance window).
    pub from: Option<SystemTime>,
    /// When it ends by itself.
    pub until: Option<SystemTime>,
    /// Who asked and why.
    pub note: DrainNote,
}

/// A reported load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Active sessions.
    pub sessions: u32,
    /// Sessions the endpoint can carry.
    pub capacity: u32,
    /// When it was reported.
    pub at: SystemTime,
}

impl Load {
    /// sessions / capacity (1.0 is full).
    pub fn ratio(&self) -> f64 {
        f64::from(self.sessions) / f64::from(self.capacity.max(1))
    }
}

/// Why a change to an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No such pool or member in the running config.
    #[error("no endpoint {1:?} in pool {0:?}")]
    NotFound(String, String),
    /// A load report without a capacity, for an endpoint with none configured.
    #[error(
        "no capacity for {0}/{1}: the report gives none and the member has no `capacity` in \
         the config; send \"capacity\" (above 0) or configure it"
    )]
    NoCapacity(String, String),
    /// A load report whose capacity is 0.
    #[error(
        "capacity 0 for {0}/{1}: a capacity must be above 0 (sessions per capacity is the load)"
    )]
    ZeroCapacity(String, String),
    /// The monitor has stopped (shutting down).
    #[error("gto is shutting down")]
    Stopped,
}

/// A change of health, announced after the routing snapshot that reflects it is live.
#[derive(Debug, Clone, PartialEq)]
pub struct Flip {
    /// Which endpoint.
    pub key: EndpointKey,
    /// The state before.
    pub from: Health,
    /// The state now.
    pub to: Health,
    /// None: the endpoint's health changed; Some: only one address family's (the
    /// endpoint stays up; that family's records leave or rejoin the answers).
    pub family: Option<Family>,
    /// The probe result that flipped it.
    pub reason: String,
}

/// A change the monitor applied to several endpoints, and whether the state file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedMany {
    /// The endpoints' statuses after the change, in the order asked.
    pub statuses: Vec<EndpointStatus>,
    /// Why the change is not in the state file, as for [`Changed`].
    pub not_saved: Option<String>,
}

/// A change the monitor applied, and whether the state file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    /// The endpoint's status after the change.
    pub status: EndpointStatus,
    /// Why the change is not in the state file (it is applied and served, but a restart
    /// would lose it); None when saved, or when no state file is configured.
    pub not_saved: Option<String>,
}
