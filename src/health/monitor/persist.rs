//! The state file: changes queued to its writer, one write at a time, and who waits for which write.

use std::time::SystemTime;

use super::{Monitor, Published};
use crate::health::handle::Applied;
use crate::health::status::EndpointStatus;
use crate::health::store::{self, EndpointRecord, FamilyRecord, LoadRecord, StateFile};

impl Monitor {
    /// The sequence number a change just made will be saved under (None: no state file).
    pub(super) fn saving(&self) -> Option<u64> {
        self.state.as_ref().map(|sink| sink.seq)
    }

    /// `applied` with the state file write that will hold it.
    pub(super) fn saved_by(&self, (status, published): (EndpointStatus, Published)) -> Applied {
        Applied {
            status,
            seq: self.saving(),
            published,
        }
    }

    /// A write finished: tell the waiting changes, and write again if more changed.
    pub(super) async fn on_written(&mut self, written: store::Written) {
        let Some(sink) = &mut self.state else {
            return;
        };
        sink.in_flight = false;
        sink.saved.send_replace(written);
        if sink.seq > sink.sent {
            self.persist().await;
        }
    }

    /// Records that the state changed; the writer saves it soon, coalescing changes that
    /// arrive while a write is under way into the next one.
    pub(super) async fn persist(&mut self) {
        let Some(sink) = &mut self.state else {
            return;
        };
        sink.seq += 1;
        if sink.in_flight {
            return;
        }
        let seq = sink.seq;
        let file = self.state_file_now();
        let Some(sink) = &mut self.state else {
            return;
        };
        sink.sent = seq;
        sink.in_flight = true;
        sink.writer.write(seq, file).await;
    }

    /// What the state file holds right now.
    pub(super) fn state_file_now(&self) -> StateFile {
        StateFile {
            runtime_members: self.runtime.clone(),
            version: store::VERSION,
            written: crate::time::unix(SystemTime::now()),
            members: self
                .order
                .iter()
                .filter_map(|key| {
                    let t = self.members.get(key)?;
                    Some(EndpointRecord {
                        pool: key.pool.clone(),
                        member: key.member.clone(),
                        health: t.main.hysteresis.state(),
                        since: crate::time::unix(t.main.since),
                        checked: t.main.last_check.map(crate::time::unix),
                        reason: t.main.last_error.clone(),
                        drained: t.drain.is_some(),
                        drained_until: t.drain.and_then(|d| d.until).map(crate::time::unix),
                        drained_by: t.drain.and(t.drain_note.by.clone()),
                        drain_reason: t.drain.and(t.drain_note.reason.clone()),
                        load: t.load.map(|l| LoadRecord {
                            sessions: l.sessions,
                            capacity: l.capacity,
                            at: crate::time::unix(l.at),
                        }),
                        window: t.window.as_ref().map(|w| store::WindowRecord {
                            from: crate::time::unix(w.from),
                            until: w.until.map(crate::time::unix),
                            by: w.note.by.clone(),
                            reason: w.note.reason.clone(),
                        }),
                        v6: t.v6.as_ref().map(|v6| FamilyRecord {
                            health: v6.hysteresis.state(),
                            since: crate::time::unix(v6.since),
                            checked: v6.last_check.map(crate::time::unix),
                            reason: v6.last_error.clone(),
                        }),
                    })
                })
                .collect(),
        }
    }

    /// Milliseconds since [`Monitor::epoch`], on tokio's clock (the heartbeats' unit).
    pub(super) fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
