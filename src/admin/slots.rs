//! [`Slots`]: a bounded set of admin connections (or event streams) that makes room for a
//! newcomer by evicting, never by making it wait.
//!
//! Why: the admin API must stay reachable while someone holds its connections open and
//! silent (a slow-loris, or 16 event streams that never read). When every slot is taken,
//! a new arrival evicts an idle holder (one not in the middle of a request) of the
//! source address that holds the most slots, its oldest first. So one source can never
//! lock others out: its own connections go first, and a newcomer from another source
//! always finds room. Legitimate clients lose at most an idle keep-alive connection
//! (they reconnect) or an event stream (an `EventSource` reconnects and resumes by id).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// One holder of a slot.
#[derive(Debug)]
struct Holder {
    source: IpAddr,
    /// Requests in progress on it (a busy holder is never evicted).
    busy: Arc<AtomicUsize>,
    /// Cancelled when it is evicted.
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    /// By admission order: the smallest id is the oldest.
    holders: std::collections::BTreeMap<u64, Holder>,
    next: u64,
}

/// A bounded set of slots; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
    /// What evictions are counted as (`connection`, `event_stream`).
    kind: &'static str,
}

/// A taken slot: given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Slots,
    id: u64,
    /// Requests in progress on this holder.
    pub(crate) busy: Arc<AtomicUsize>,
    /// Cancelled when another arrival evicted this holder.
    pub(crate) evicted: CancellationToken,
}

impl Slots {
    /// `capacity` slots (at least 1).
    pub(crate) fn new(capacity: usize, kind: &'static str) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
            kind,
        }
    }

    /// A slot for a holder from `source`: a free one, or one made by evicting an idle
    /// holder of the source with the most slots (its oldest). None when every holder is
    /// busy.
    pub(crate) fn admit(&self, source: IpAddr) -> Option<Slot> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        if inner.holders.len() >= self.capacity {
            let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
            for holder in inner.holders.values() {
                *per_source.entry(holder.source).or_default() += 1;
            }
            // The oldest idle holder of the heaviest source (ties: the oldest overall).
            let victim = inner
                .holders
                .iter()
                .filter(|(_, h)| h.busy.load(Ordering::Acquire) == 0)
                .max_by_key(|(id, h)| (per_source[&h.source], std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)?;
            if let Some(holder) = inner.holders.remove(&victim) {
                holder.evict.cancel();
                metrics::counter!(crate::metrics::ADMIN_EVICTED_TOTAL, "kind" => self.kind)
                    .increment(1);
            }
        }
        let id = inner.next;
        inner.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let evicted = CancellationToken::new();
        inner.holders.insert(
            id,
            Holder {
                source,
                busy: busy.clone(),
                evict: evicted.clone(),
            },
        );
        Some(Slot {
            slots: self.clone(),
            id,
            busy,
            evicted,
        })
    }

    /// Slots taken now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.holders.len())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.slots.inner.lock() {
            inner.holders.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn the_heaviest_source_loses_its_oldest_idle_slot() {
        let slots = Slots::new(4, "connection");
        let a1 = slots.admit(ip(1)).unwrap();
        let a2 = slots.admit(ip(1)).unwrap();
        let a3 = slots.admit(ip(1)).unwrap();
        let b1 = slots.admit(ip(2)).unwrap();
        // Full: a newcomer from a third source evicts a1 (source 1 holds three).
        let c1 = slots.admit(ip(3)).unwrap();
        assert!(a1.evicted.is_cancelled());
        assert!(!a2.evicted.is_cancelled() && !b1.evicted.is_cancelled());
        drop(a1);
        assert_eq!(slots.len(), 4);
        // A busy holder is never evicted: a2 busy, so a3 goes.
        a2.busy.fetch_add(1, Ordering::AcqRel);
        let d1 = slots.admit(ip(4)).unwrap();
        assert!(a3.evicted.is_cancelled() && !a2.evicted.is_cancelled());
        drop(a3);
        // Every holder busy: no room.
        for slot in [&a2, &b1, &c1, &d1] {
            slot.busy.fetch_add(1, Ordering::AcqRel);
        }
        assert!(slots.admit(ip(5)).is_none());
        // A slot given back is free again.
        drop(c1);
        assert!(slots.admit(ip(5)).is_some());
    }
}
