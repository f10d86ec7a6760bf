//! [`Events`]: what changed, as it happens — health flips, drains and undrains (and their
//! expiry), reloads (applied or rejected), load watermark crossings, fleet members joining
//! and leaving, config drift, and a region's best endpoint by latency changing. Each event has an id that only grows, across restarts
//! too: the first id of a run is the time it started in microseconds since the Unix epoch,
//! so a later run's ids are above every id of an earlier one (unless that one made more
//! than an event per microsecond). The last [`HISTORY`] are kept so that a client of
//! `GET /v1/events` (Server-Sent Events) can resume with `Last-Event-ID`; an id from
//! another run, or one this run has not reached, gets a `reset` (re-read the status). Memory is bounded: the history is a ring, and a consumer
//! that falls behind the broadcast buffer is told so and resumes from the history (or is
//! sent a `reset` when even that has moved on), never buffered without end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for resuming.
pub const HISTORY: usize = 1024;
/// Events buffered per live consumer before it counts as lagging.
const BUFFER: usize = 256;

/// One change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Grows by one per event, from the run's start time in microseconds.
    pub id: u64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// Its kind: `health`, `drain`, `reload`, `watermark`, `fleet`, `drift`, `cert`, `dnssec`,
    /// `latency`.
    pub kind: &'static str,
    /// What happened, by kind.
    pub data: serde_json::Value,
}

/// The event bus: cheap to clone, shared by everything that reports changes.
#[derive(Debug, Clone)]
pub struct Events(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    history: Mutex<History>,
    live: broadcast::Sender<Arc<Event>>,
}

#[derive(Debug, Default)]
struct History {
    /// The id of this run's first event.
    first: u64,
    next: u64,
    events: VecDeque<Arc<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// An empty bus whose first id is now, in microseconds since the Unix epoch.
    pub fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self::starting_at(now.max(1))
    }

    /// An empty bus whose first event gets id `first` (at least 1).
    pub fn starting_at(first: u64) -> Self {
        let first = first.max(1);
        let (live, _) = broadcast::channel(BUFFER);
        Self(Arc::new(Inner {
            history: Mutex::new(History {
                first,
                next: first,
                events: VecDeque::with_capacity(HISTORY),
            }),
            live,
        }))
    }

    /// Records and broadcasts an event.
    pub fn emit(&self, kind: &'static str, data: serde_json::Value) {
        let event = {
            let Ok(mut history) = self.0.history.lock() else {
                return;
            };
            let event = Arc::new(Event {
                id: history.next,
                at: crate::time::rfc3339(SystemTime::now()),
                kind,
                data,
            });
            history.next += 1;
            if history.events.len() == HISTORY {
                history.events.pop_front();
            }
            history.events.push_back(event.clone());
            event
        };
        // Nobody listening is fine.
        let _ = self.0.live.send(event);
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.live.subscribe()
    }

    /// The kept events after `last`, and whether they are all of them (false: some were
    /// already dropped from the history, or `last` is not an id of this run: one from an
    /// earlier run, or one this run has not reached).
    pub fn since(&self, last: u64) -> (Vec<Arc<Event>>, bool) {
        let Ok(history) = self.0.history.lock() else {
            return (Vec::new(), false);
        };
        let ours = last.saturating_add(1) >= history.first && last < history.next;
        let complete = ours
            && history
                .events
                .front()
                .is_none_or(|first| first.id <= last.saturating_add(1));
        let events = history
            .events
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        (events, complete)
    }

    /// The id of the newest event (the run's first id minus one: none yet).
    pub fn last_id(&self) -> u64 {
        self.0.history.lock().map_or(0, |h| h.next - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_another_run_or_the_future_are_incomplete() {
        let earlier = Events::starting_at(1_000);
        earlier.emit("health", serde_json::json!({}));
        let later = Events::starting_at(2_000);
        assert_eq!(later.last_id(), 1_999);
        // Nothing yet in this run: "from now" is complete, an old or future id is not.
        assert!(later.since(later.last_id()).1);
        assert!(!later.since(earlier.last_id()).1);
        assert!(!later.since(5_000).1);
        later.emit("drain", serde_json::json!({}));
        let (events, complete) = later.since(1_999);
        assert!(complete);
        assert_eq!(events[0].id, 2_000);
        assert!(!later.since(1_000).1);
        assert!(!later.since(2_001).1, "an id this run has not reached");
        let now = Events::new();
        assert!(
            now.last_id() > 1_700_000_000_000_000,
            "ids start at the run's time"
        );
    }

    #[test]
    fn history_is_bounded_and_resumes_by_id() {
        let events = Events::starting_at(1);
        for i in 0..(HISTORY + 10) {
            events.emit("health", serde_json::json!({ "i": i }));
        }
        assert_eq!(events.last_id(), (HISTORY + 10) as u64);
        let (recent, complete) = events.since(HISTORY as u64 + 5);
        assert!(complete);
        assert_eq!(recent.len(), 5);
        assert_eq!(recent[0].id, HISTORY as u64 + 6);
        let (all_kept, complete) = events.since(0);
        assert!(!complete, "the first 10 were dropped");
        assert_eq!(all_kept.len(), HISTORY);
    }
}
