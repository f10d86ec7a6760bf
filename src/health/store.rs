//! The state file: last known health of every endpoint, kept across restarts.
//!
//! JSON, written to a temporary file beside the target, synced, then renamed over it, so a
//! crash leaves either the old file or the new one, never half of one. A missing file is a
//! fresh start; an unreadable one is reported and ignored (every endpoint is re-checked).

use crate::time::{MAX_UNIX, from_unix_clamped};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::state::Health;

/// Largest state file read: about 200 bytes per endpoint, so room for a million.
const MAX_SIZE: u64 = 256 * 1024 * 1024;

/// Format version written into the file.
pub const VERSION: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a state file gto can read.
    #[error("state file {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// When it was written (seconds since the Unix epoch).
    pub written: u64,
    /// One record per endpoint.
    pub members: Vec<EndpointRecord>,
    /// Members added at run time ([`crate::runtime`]), merged into the config at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_members: Vec<crate::runtime::RuntimeMember>,
}

/// What is kept of one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Pool name.
    pub pool: String,
    /// Member name.
    pub member: String,
    /// Last known health.
    pub health: Health,
    /// When it last flipped (seconds since the Unix epoch).
    pub since: u64,
    /// When it was last probed, if ever.
    pub checked: Option<u64>,
    /// The last probe's failure, if it failed.
    pub reason: Option<String>,
    /// Drained by an operator: no new answers.
    #[serde(default)]
    pub drained: bool,
    /// When the drain ends by itself (seconds since the Unix epoch).
    #[serde(default)]
    pub drained_until: Option<u64>,
    /// Who drained it (token name and address), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_by: Option<String>,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_reason: Option<String>,
    /// Last reported load.
    #[serde(default)]
    pub load: Option<LoadRecord>,
    /// `family = "each"` on a dual-stack endpoint: its IPv6 address's check (the fields
    /// above are then its IPv4 address's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<FamilyRecord>,
    /// A maintenance window not yet begun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowRecord>,
}

/// What is kept of a maintenance window (times in seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// When the drain starts.
    pub from: u64,
    /// When it ends by itself, if ever.
    #[serde(default)]
    pub until: Option<u64>,
    /// Who set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WindowRecord {
    /// The window, unless it ended already (or its times are out of range).
    pub fn live(&self, now: SystemTime) -> Option<crate::health::Window> {
        if self.from > MAX_UNIX || self.until.is_some_and(|u| u > MAX_UNIX) {
            return None;
        }
        let until = self.until.map(from_unix_clamped);
        until
            .is_none_or(|u| u > now)
            .then(|| crate::health::Window {
                from: from_unix_clamped(self.from),
                until,
                note: crate::health::DrainNote {
                    by: self.by.clone(),
                    reason: self.reason.clone(),
                },
            })
    }
}

/// What is kept of one address family's own check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyRecord {
    /// Last known health.
    pub health: Health,
    /// When it last flipped (seconds since the Unix epoch).
    pub since: u64,
    /// When it was last probed, if ever.
    pub checked: Option<u64>,
    /// The last probe's failure, if it failed.
    pub reason: Option<String>,
}

impl EndpointRecord {
    /// Who drained it and why, as kept.
    pub fn drain_note(&self) -> crate::health::DrainNote {
        crate::health::DrainNote {
            by: self.drained_by.clone(),
            reason: self.drain_reason.clone(),
        }
    }

    /// Its main check's part (the IPv4 address's when the families are probed apart).
    pub fn main_check(&self) -> FamilyRecord {
        FamilyRecord {
            health: self.health,
            since: self.since,
            checked: self.checked,
            reason: self.reason.clone(),
        }
    }

    /// The drain this record still holds at `now`: None when not drained, or when its time
    /// ran out (while gto was stopped); else its end, if any.
    pub fn live_drain(&self, now: SystemTime) -> Option<Option<SystemTime>> {
        let until = self.drained_until.map(from_unix_clamped);
        (self.drained && until.is_none_or(|u| u > now)).then_some(until)
    }

    /// The first field out of range, if any: every timestamp must lie between the epoch
    /// and [`MAX_UNIX`], and a load's capacity must be positive.
    pub fn invalid_field(&self) -> Option<&'static str> {
        let bad = |t: u64| t > MAX_UNIX;
        if bad(self.since) {
            Some("since")
        } else if self.checked.is_some_and(bad) {
            Some("checked")
        } else if self
            .v6
            .as_ref()
            .is_some_and(|f| bad(f.since) || f.checked.is_some_and(bad))
        {
            Some("v6.since")
        } else if self.drained_until.is_some_and(bad) {
            Some("drained_until")
        } else if self.load.is_some_and(|l| bad(l.at)) {
            Some("load.at")
        } else if self.load.is_some_and(|l| l.capacity == 0) {
            Some("load.capacity")
        } else {
            None
        }
    }
}

/// A load report as kept in the file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadRecord {
    /// Active sessions.
    pub sessions: u32,
    /// Sessions the endpoint can carry.
    pub capacity: u32,
    /// When it was reported (seconds since the Unix epoch).
    pub at: u64,
}

/// Reads the state file when one is configured; a file that cannot be used is logged
/// (with `consequence`: what happens instead) and ignored.
pub fn load_or_ignore(path: Option<&Path>, consequence: &str) -> Option<StateFile> {
    match load(path?) {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(%error, "state file ignored; {consequence}");
            None
        }
    }
}

/// Reads the file; `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<StateFile>, StoreError> {
    let text = match crate::files::read_to_string(path, MAX_SIZE) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if file.version != VERSION {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("version {} is not {VERSION}", file.version),
        });
    }
    Ok(Some(validated(file, path)))
}

/// Drops (and logs) every record with a field out of range; keeps the rest.
fn validated(mut file: StateFile, path: &Path) -> StateFile {
    file.members.retain(|record| match record.invalid_field() {
        None => true,
        Some(field) => {
            tracing::warn!(
                path = %path.display(),
                pool = %record.pool,
                member = %record.member,
                field,
                "state file entry has a value out of range; entry dropped, the endpoint is re-checked"
            );
            false
        }
    });
    file
}

/// Least time between two writes: changes that arrive meanwhile share the next write (and
/// its fsync), so a burst of flips or drains costs a few writes, not one each.
pub const WRITE_GAP: Duration = Duration::from_millis(20);

/// The outcome of one write by the [`Writer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Sequence number of the newest change the written file holds.
    pub seq: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// A task that writes the state file off the monitor's path: the newest state wins, at
/// most one write per [`WRITE_GAP`], and always a last write when it is closed.
#[derive(Debug)]
pub struct Writer {
    files: tokio::sync::mpsc::Sender<(u64, StateFile)>,
    outcomes: tokio::sync::mpsc::Receiver<Written>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts the writer for `path`.
    pub fn spawn(path: PathBuf, follow_symlinks: bool) -> Self {
        let (files, mut pending) = tokio::sync::mpsc::channel::<(u64, StateFile)>(1);
        let (report, outcomes) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            while let Some((seq, file)) = pending.recv().await {
                let path = path.clone();
                let error =
                    match tokio::task::spawn_blocking(move || save(&path, &file, follow_symlinks))
                        .await
                    {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(error.to_string()),
                        Err(error) => Some(format!("state file writer failed: {error}")),
                    };
                if let Some(error) = &error {
                    metrics::counter!(crate::metrics::STATE_WRITE_FAILURES_TOTAL).increment(1);
                    tracing::warn!(%error, "could not write the state file");
                }
                // The monitor may be gone (shutdown): then nobody waits for the outcome.
                let _ = report.send(Written { seq, error }).await;
                tokio::time::sleep(WRITE_GAP).await;
            }
        });
        Self {
            files,
            outcomes,
            task,
        }
    }

    /// Hands the writer a file to write; it must be idle (its last outcome received).
    pub async fn write(&self, seq: u64, file: StateFile) {
        // A closed channel means the task ended, which only happens at shutdown.
        let _ = self.files.send((seq, file)).await;
    }

    /// The next outcome.
    pub async fn outcome(&mut self) -> Option<Written> {
        self.outcomes.recv().await
    }

    /// Writes `last` (if any) after what is pending, then stops.
    pub async fn close(self, last: Option<(u64, StateFile)>) {
        let Self {
            files,
            mut outcomes,
            task,
        } = self;
        let drain = tokio::spawn(async move { while outcomes.recv().await.is_some() {} });
        if let Some(last) = last {
            let _ = files.send(last).await;
        }
        drop(files);
        let _ = task.await;
        let _ = drain.await;
    }
}

/// Writes the file atomically (temporary file, fsync, rename).
pub fn save(path: &Path, file: &StateFile, follow_symlinks: bool) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Checked on every write: what is at the path may have changed since start.
    let path = &crate::files::replaceable(path, follow_symlinks)
        .map_err(|e| io(std::io::Error::other(e)))?;
    // Compact: a 10,000-endpoint file is written (and fsynced) in half the bytes.
    let mut text = serde_json::to_vec(file).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut out = std::fs::File::create(&temporary).map_err(io)?;
    out.write_all(&text).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gto.state");
        assert!(load(&path).unwrap().is_none());
        let file = StateFile {
            version: VERSION,
            written: 1,
            runtime_members: Vec::new(),
            members: vec![EndpointRecord {
                pool: "p".into(),
                member: "m".into(),
                health: Health::Down,
                since: 5,
                checked: Some(6),
                reason: Some("connection refused".into()),
                drained: true,
                drained_until: None,
                drained_by: Some("oncall@127.0.0.1".into()),
                drain_reason: Some("firmware".into()),
                load: Some(LoadRecord {
                    sessions: 10,
                    capacity: 100,
                    at: 6,
                }),
                window: None,
                v6: Some(FamilyRecord {
                    health: Health::Up,
                    since: 5,
                    checked: Some(6),
                    reason: None,
                }),
            }],
        };
        save(&path, &file, false).unwrap();
        assert_eq!(load(&path).unwrap(), Some(file));
        assert!(!dir.path().join("gto.state.tmp").exists());
        std::fs::write(&path, "{\"version\": 1, \"memb").unwrap();
        assert!(matches!(load(&path), Err(StoreError::Corrupt { .. })));
    }
}
