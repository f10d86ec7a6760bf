//! What the fleet's store holds, as values: each instance's record, drains and load
//! reports (validated when read), the mirror of votes and members that decides which votes
//! count, and the key segments names are escaped into.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::routing::EndpointKey;

/// What an instance tells the fleet about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceInfo {
    /// gto's version.
    pub version: String,
    /// DNS listen addresses.
    pub listen: Vec<String>,
    /// The admin API's address.
    pub admin: Option<String>,
    /// Start time (Unix seconds).
    pub started: u64,
    /// Digest of what its config and zones mean for answers ([`crate::loaded::meaning_digest`]).
    pub config_digest: String,
    /// That digest per section, so that drift can name where two configs differ.
    #[serde(default)]
    pub config_sections: BTreeMap<String, String>,
    /// When it last said it is alive (Unix seconds): its record is written again every
    /// half lease, so a dead instance's `last_seen` stops moving at once and it shows as
    /// gone once that is a lease old, before its lease even expires.
    #[serde(default)]
    pub heartbeat: u64,
    /// Per signed zone: whether its DNSSEC keys are the fleet's, and which it lacks.
    #[serde(default)]
    pub keysets: BTreeMap<String, super::keys::KeysetState>,
}

impl InstanceInfo {
    /// This process's record as it starts: its version, DNS listeners and config digest.
    pub fn starting(loaded: &crate::loaded::Loaded, listen: &[std::net::SocketAddr]) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            listen: listen.iter().map(ToString::to_string).collect(),
            admin: None,
            started: crate::time::unix_now(),
            config_digest: loaded.digest().to_string(),
            config_sections: loaded.digest_sections().clone(),
            heartbeat: 0,
            keysets: BTreeMap::new(),
        }
    }
}

/// An instance as this one sees it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) info: InstanceInfo,
    /// When its record last changed, as seen here.
    pub(super) seen: SystemTime,
}

/// A drain as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct DrainValue {
    pub(super) since: u64,
    pub(super) until: Option<u64>,
    /// The instance that wrote it.
    pub(super) by: String,
    /// Who asked (token name and address), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) caller: Option<String>,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    /// A maintenance window: when the drain starts (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<u64>,
}

impl DrainValue {
    /// A window not begun yet: every instance begins it at `from` by its own clock.
    pub(super) fn is_window(&self) -> bool {
        self.from
            .is_some_and(|from| from > crate::time::unix(std::time::SystemTime::now()))
    }

    /// The drain as the health monitor takes it.
    pub(super) fn planned(&self) -> crate::health::Planned {
        crate::health::Planned {
            from: self.from.map(crate::time::from_unix_clamped),
            until: self.until.map(crate::time::from_unix_clamped),
            note: self.note(),
        }
    }

    /// The window it is, as the endpoint's status shows it.
    pub(super) fn window(&self) -> crate::health::Window {
        let planned = self.planned();
        crate::health::Window {
            from: planned.from.unwrap_or(std::time::UNIX_EPOCH),
            until: planned.until,
            note: planned.note,
        }
    }

    /// Who drained and why, for the endpoint's status.
    pub(super) fn note(&self) -> crate::health::DrainNote {
        crate::health::DrainNote {
            by: self.caller.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A load report as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LoadValue {
    pub(super) sessions: u32,
    pub(super) capacity: u32,
    pub(super) at_ms: u64,
    pub(super) by: String,
}

/// What the store holds of votes and members (see [`Inner::mirror`]).
#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// Votes by pool and voter (a voter's document on a pool), with the lease each
    /// document lives under.
    pub(super) votes: std::collections::HashMap<(String, String), super::votes::StoredVotes>,
    /// Members (instances and probe agents) by name, with their registration's lease.
    pub(super) members: std::collections::HashMap<String, i64>,
    /// Keys already warned about.
    pub(super) warned: std::collections::HashSet<String>,
    /// The document a read replaced, its buffers kept for the next read to fill: a mass
    /// outage reads thousands of documents a second, and fresh buffers for each were
    /// fresh memory (zeroed by the kernel) where these are still in the cache.
    pub(super) spare: super::votes::HeldDocument,
}

impl Mirror {
    /// Whether a vote by `voter` under `lease` counts: the voter is a member, and the vote
    /// lives under the member's own (live) lease.
    pub(super) fn counts(&self, voter: &str, lease: i64) -> bool {
        lease != 0 && self.members.get(voter) == Some(&lease)
    }

    /// What changes in the votes that count when `voter`'s membership lease was `before`
    /// and is now what the mirror holds: its votes that start counting (Some) or stop
    /// (None), the other voters' untouched.
    pub(super) fn recount(
        &self,
        voter: &str,
        before: Option<i64>,
    ) -> Vec<crate::health::PoolVoteChanges> {
        let mut changes = Vec::new();
        for ((pool, owner), stored) in &self.votes {
            if owner != voter {
                continue;
            }
            let lease = stored.lease;
            let was = lease != 0 && before == Some(lease);
            let is = self.counts(voter, lease);
            if was == is {
                continue;
            }
            // Checked when stored: it reads.
            let votes = stored.document.votes();
            let mut members =
                crate::health::PoolVoteChanges::with_capacity(pool.clone(), votes.len());
            for (member, vote) in votes {
                members.push(&member, is.then_some(vote));
            }
            changes.push(members);
        }
        changes
    }

    /// The votes that count, by endpoint and voter.
    pub(super) fn counted(
        &self,
    ) -> std::collections::HashMap<EndpointKey, BTreeMap<String, crate::health::votes::Vote>> {
        let mut counted: std::collections::HashMap<EndpointKey, BTreeMap<_, _>> =
            std::collections::HashMap::new();
        for ((pool, voter), stored) in &self.votes {
            if !self.counts(voter, stored.lease) {
                continue;
            }
            for (member, vote) in stored.document.votes() {
                let key = EndpointKey {
                    pool: pool.clone(),
                    member,
                };
                counted.entry(key).or_default().insert(voter.clone(), vote);
            }
        }
        counted
    }
}

/// The sections (`pool sma`, `zone gto.example.com.`, ...) in which two configs differ:
/// present in one only, or with different digests.
pub(super) fn differing_sections(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .filter(|section| a.get(*section) != b.get(*section))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Percent-encodes `/` and `%` so that a name is one key segment.
pub(super) fn segment(text: &str) -> String {
    text.replace('%', "%25").replace('/', "%2F")
}

pub(super) fn unsegment(text: &str) -> String {
    text.replace("%2F", "/").replace("%25", "%")
}
