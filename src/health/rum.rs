//! Real-user measurements (`POST /v1/rtt`): round trips that something measuring clients
//! (a VPN appliance's own session RTTs, a web beacon) reports per client prefix and
//! endpoint. Kept in memory only, bounded (`[latency] rum_max_prefixes`; the prefix
//! reported least recently goes first) and aged out (`rum_max_age`); while fresh they
//! rank a latency service's endpoints for clients in the prefix ahead of the vantages'
//! measurements.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use tokio::time::Instant;

use crate::routing::EndpointKey;

/// A batch as posted: `{"measurements": [{"prefix", "pool", "member", "rtt_ms"}, ...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RumBatch {
    /// The measurements, at most [`MAX_BATCH`] (and the admin API takes 64 KiB bodies).
    pub measurements: Vec<RawMeasurement>,
}

/// One measurement as posted, checked by [`RumBatch::check`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeasurement {
    /// The client prefix, e.g. "198.51.100.0/24" (an address is its /32 or /128).
    pub prefix: String,
    /// The endpoint's pool.
    pub pool: String,
    /// The endpoint.
    pub member: String,
    /// The round trip in milliseconds (0 < rtt_ms <= 60,000).
    pub rtt_ms: f64,
}

/// Measurements in one batch at most.
pub const MAX_BATCH: usize = 1_000;

/// A checked measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The client prefix (host bits cleared).
    pub prefix: IpNet,
    /// The endpoint.
    pub key: EndpointKey,
    /// Microseconds.
    pub micros: u32,
}

impl RumBatch {
    /// The measurements, or every problem with its position. `known` says whether an
    /// endpoint exists.
    pub fn check(
        self,
        known: impl Fn(&EndpointKey) -> bool,
    ) -> Result<Vec<Measurement>, Vec<String>> {
        if self.measurements.len() > MAX_BATCH {
            return Err(vec![format!(
                "{} measurements in one batch; at most {MAX_BATCH}",
                self.measurements.len()
            )]);
        }
        let mut errors = Vec::new();
        let mut checked = Vec::with_capacity(self.measurements.len());
        for (i, m) in self.measurements.into_iter().enumerate() {
            let prefix = m
                .prefix
                .parse::<IpNet>()
                .or_else(|_| m.prefix.parse::<std::net::IpAddr>().map(IpNet::from));
            let prefix = match prefix {
                Ok(prefix) => prefix.trunc(),
                Err(_) => {
                    errors.push(format!(
                        "measurements[{i}].prefix: {:?} is not a prefix (e.g. 198.51.100.0/24)",
                        m.prefix
                    ));
                    continue;
                }
            };
            let key = EndpointKey {
                pool: m.pool,
                member: m.member,
            };
            if !known(&key) {
                errors.push(format!(
                    "measurements[{i}]: no endpoint {}/{}",
                    key.pool, key.member
                ));
                continue;
            }
            if !(m.rtt_ms.is_finite() && m.rtt_ms > 0.0 && m.rtt_ms <= 60_000.0) {
                errors.push(format!(
                    "measurements[{i}].rtt_ms: {} is not a round trip (0 < rtt_ms <= 60000)",
                    m.rtt_ms
                ));
                continue;
            }
            checked.push(Measurement {
                prefix,
                key,
                micros: (m.rtt_ms * 1000.0).round() as u32,
            });
        }
        if errors.is_empty() {
            Ok(checked)
        } else {
            Err(errors)
        }
    }
}

/// One client prefix's fresh measurements, as the builder gets them.
#[derive(Debug, Clone, PartialEq)]
pub struct RumPrefix {
    /// The client prefix.
    pub prefix: IpNet,
    /// Round trips (µs) by endpoint.
    pub rtts: BTreeMap<EndpointKey, u32>,
}

#[derive(Debug)]
struct Entry {
    rtts: BTreeMap<EndpointKey, u32>,
    /// Last reported.
    at: Instant,
    /// Position in the recency order.
    seq: u64,
}

/// The measurements kept, bounded and aged.
#[derive(Debug, Default)]
pub struct RumStore {
    entries: HashMap<IpNet, Entry>,
    /// Prefixes by last report, oldest first.
    order: BTreeMap<u64, IpNet>,
    next: u64,
}

impl RumStore {
    /// Takes a batch at `now`; keeps at most `max_prefixes` (the least recently reported
    /// go). A prefix's report replaces its earlier value for that endpoint.
    pub fn add(&mut self, batch: Vec<Measurement>, now: Instant, max_prefixes: usize) {
        for m in batch {
            let seq = self.next;
            self.next += 1;
            let entry = self.entries.entry(m.prefix).or_insert_with(|| Entry {
                rtts: BTreeMap::new(),
                at: now,
                seq,
            });
            self.order.remove(&entry.seq);
            entry.seq = seq;
            entry.at = now;
            entry.rtts.insert(m.key, m.micros);
            self.order.insert(seq, m.prefix);
        }
        while self.entries.len() > max_prefixes.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    /// Drops what was reported more than `max_age` before `now`; true when anything went.
    pub fn expire(&mut self, now: Instant, max_age: std::time::Duration) -> bool {
        let mut any = false;
        while let Some((&seq, &prefix)) = self.order.first_key_value() {
            let stale = self
                .entries
                .get(&prefix)
                .is_none_or(|e| now.saturating_duration_since(e.at) > max_age);
            if !stale {
                break;
            }
            self.order.remove(&seq);
            self.entries.remove(&prefix);
            any = true;
        }
        any
    }

    /// Forgets the endpoints `keep` refuses (a reload removed them).
    pub fn retain_endpoints(&mut self, keep: impl Fn(&EndpointKey) -> bool) {
        for entry in self.entries.values_mut() {
            entry.rtts.retain(|key, _| keep(key));
        }
        // A prefix left with nothing goes.
        let order = &mut self.order;
        self.entries.retain(|_, entry| {
            let kept = !entry.rtts.is_empty();
            if !kept {
                order.remove(&entry.seq);
            }
            kept
        });
    }

    /// Every prefix kept, for the builder.
    pub fn prefixes(&self) -> Arc<[RumPrefix]> {
        let mut prefixes: Vec<RumPrefix> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.rtts.is_empty())
            .map(|(prefix, e)| RumPrefix {
                prefix: *prefix,
                rtts: e.rtts.clone(),
            })
            .collect();
        prefixes.sort_by_key(|p| p.prefix);
        prefixes.into()
    }

    /// Prefixes kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(member: &str) -> EndpointKey {
        EndpointKey {
            pool: "p".into(),
            member: member.into(),
        }
    }

    fn at(prefix: &str, member: &str, ms: f64) -> RawMeasurement {
        RawMeasurement {
            prefix: prefix.into(),
            pool: "p".into(),
            member: member.into(),
            rtt_ms: ms,
        }
    }

    #[test]
    fn batches_are_checked_whole() {
        let known = |k: &EndpointKey| k.member != "zz";
        let good = RumBatch {
            measurements: vec![
                at("198.51.100.77/24", "a", 12.5),
                at("2001:db8::1", "b", 3.0),
            ],
        };
        let checked = good.check(known).unwrap();
        assert_eq!(checked[0].prefix.to_string(), "198.51.100.0/24");
        assert_eq!(checked[0].micros, 12_500);
        assert_eq!(checked[1].prefix.to_string(), "2001:db8::1/128");
        let bad = RumBatch {
            measurements: vec![
                at("x", "a", 1.0),
                at("10.0.0.0/8", "zz", 1.0),
                at("10.0.0.0/8", "a", f64::NAN),
                at("10.0.0.0/8", "a", 0.0),
            ],
        };
        assert_eq!(bad.check(known).unwrap_err().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn prefixes_are_bounded_and_age_out() {
        let mut store = RumStore::default();
        let m = |prefix: &str, member: &str| Measurement {
            prefix: prefix.parse().unwrap(),
            key: key(member),
            micros: 1000,
        };
        store.add(
            vec![m("10.0.0.0/24", "a"), m("10.0.1.0/24", "a")],
            Instant::now(),
            2,
        );
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        // A third prefix evicts the least recently reported; reporting one again keeps it.
        store.add(vec![m("10.0.0.0/24", "b")], Instant::now(), 2);
        store.add(vec![m("10.0.2.0/24", "a")], Instant::now(), 2);
        let kept: Vec<String> = store
            .prefixes()
            .iter()
            .map(|p| p.prefix.to_string())
            .collect();
        assert_eq!(kept, ["10.0.0.0/24", "10.0.2.0/24"]);
        assert_eq!(store.prefixes()[0].rtts.len(), 2);
        let max_age = std::time::Duration::from_secs(10);
        assert!(!store.expire(Instant::now(), max_age));
        tokio::time::advance(std::time::Duration::from_secs(11)).await;
        assert!(store.expire(Instant::now(), max_age));
        assert!(store.is_empty());
        // Endpoints a reload removed take their prefixes with them when nothing is left.
        store.add(
            vec![m("10.0.3.0/24", "a"), m("10.0.4.0/24", "b")],
            Instant::now(),
            10,
        );
        store.retain_endpoints(|k| k.member == "b");
        let kept: Vec<String> = store
            .prefixes()
            .iter()
            .map(|p| p.prefix.to_string())
            .collect();
        assert_eq!((kept, store.len()), (vec!["10.0.4.0/24".to_string()], 1));
    }
}
