//! [`Events`]: what changed, as it happens — health flips, drains and undrains (and their
//! expiry), reloads (applied or rejected), load watermark crossings, fleet members joining
//! and leaving, and config drift. Each event has an id that only grows; the last
//! [`HISTORY`] are kept so that a client of `GET /v1/events` (Server-Sent Events) can
//! resume with `Last-Event-ID`. Memory is bounded: the history is a ring, and a consumer
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
    /// Grows by one per event, from 1.
    pub id: u64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// Its kind: `health`, `drain`, `reload`, `watermark`, `fleet`, `drift`.
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
    next: u64,
    events: VecDeque<Arc<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// An empty bus.
    pub fn new() -> Self {
        let (live, _) = broadcast::channel(BUFFER);
        Self(Arc::new(Inner {
            history: Mutex::new(History {
                next: 1,
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
                at: crate::health::store::rfc3339(SystemTime::now()),
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
    /// already dropped from the history).
    pub fn since(&self, last: u64) -> (Vec<Arc<Event>>, bool) {
        let Ok(history) = self.0.history.lock() else {
            return (Vec::new(), false);
        };
        let complete = history
            .events
            .front()
            .is_none_or(|first| first.id <= last + 1);
        let events = history
            .events
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        (events, complete)
    }

    /// The id of the newest event (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.0.history.lock().map_or(0, |h| h.next - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_resumes_by_id() {
        let events = Events::new();
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
