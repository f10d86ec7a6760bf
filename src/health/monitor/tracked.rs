//! What the monitor keeps: per endpoint ([`Tracked`]), per probe target (shared by the
//! endpoints with the same check and address), and the state file's sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Check, Probe, VoteRule};
use crate::health::scheduler::TargetId;
use crate::health::state::{Health, Hysteresis};
use crate::health::status::{Drain, Load};
use crate::health::store;
use crate::health::votes::Vote;
use crate::policy::load::{LoadTracker, LoadView};
use crate::routing::EndpointKey;

/// What the monitor keeps per endpoint.
pub(super) struct Tracked {
    /// This instance's own verdict.
    pub(super) hysteresis: Hysteresis,
    /// When the own verdict last changed.
    pub(super) since: SystemTime,
    /// The health answers use: the own verdict, or the fleet's votes combined.
    pub(super) effective: Health,
    /// When `effective` last changed.
    pub(super) effective_since: SystemTime,
    /// Other instances' verdicts, by instance.
    pub(super) votes: BTreeMap<String, Vote>,
    /// The pool's rule for combining them.
    pub(super) rule: VoteRule,
    /// The last decision's tally (voters, down), when the votes decided.
    pub(super) tally: Option<(usize, usize)>,
    /// The last probe's round trip.
    pub(super) rtt: Option<Duration>,
    /// The server certificate's expiry, as the last TLS or HTTPS probe read it.
    pub(super) cert: Option<crate::health::probe::CertExpiry>,
    pub(super) last_check: Option<SystemTime>,
    pub(super) last_error: Option<String>,
    pub(super) stale: bool,
    pub(super) check: Check,
    pub(super) drain: Option<Drain>,
    pub(super) load: Option<Load>,
    /// Configured capacity, the default for load reports.
    pub(super) capacity: Option<u32>,
    /// Smoothing, watermarks, slow start.
    pub(super) tracker: LoadTracker,
    /// The load view the builder last got.
    pub(super) sent: LoadView,
}

/// A running probe task and the endpoints it serves.
pub(super) struct Target {
    pub(super) id: TargetId,
    pub(super) members: Vec<EndpointKey>,
    pub(super) token: CancellationToken,
    /// When its last probe finished, in ms since [`Monitor::epoch`]; written by the probe
    /// task itself, so staleness is about probes, not about how far behind the monitor is.
    pub(super) heartbeat: Arc<AtomicU64>,
}

/// Probe tasks are shared by endpoints with the same probe and schedule.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct TargetKey {
    pub(super) probe: Probe,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

/// The coalesced state file writer, and which changes it holds.
pub(super) struct StateSink {
    pub(super) writer: store::Writer,
    /// Sequence number of the newest change.
    pub(super) seq: u64,
    /// Sequence number of the newest change handed to the writer.
    pub(super) sent: u64,
    /// A write is under way.
    pub(super) in_flight: bool,
    /// Outcomes, for changes waiting to be acknowledged.
    pub(super) saved: watch::Sender<store::Written>,
}
