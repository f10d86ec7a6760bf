//! Probe tasks: one per distinct target, each probing on its own jittered schedule under a
//! shared concurrency limit, and reporting every result to the monitor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::{CertExpiry, LoadSample, ProbeError, Prober};
use crate::metrics::{
    CHECK_EXEC_KILLED_TOTAL, PROBE_DURATION_SECONDS, PROBE_FAILURES_TOTAL, PROBE_UNKNOWN_TOTAL,
};

/// Identifies a probe task within one monitor.
pub type TargetId = u64;

/// One probe result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Which target.
    pub target: TargetId,
    /// How it went.
    pub result: Result<(), ProbeError>,
    /// Load the probe's body reported, if any.
    pub load: Option<LoadSample>,
    /// The server certificate's expiry (TLS and HTTPS probes that succeeded).
    pub cert: Option<CertExpiry>,
    /// When it finished (wall clock, for status and the state file).
    pub at: SystemTime,
    /// How long it took, when it succeeded.
    pub rtt: Option<std::time::Duration>,
    /// Its connect time and time to first byte, when it succeeded and has them.
    pub timings: Timings,
}

/// A successful probe's round trips ([`super::probe::ProbeOutcome`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// To the connection established (DNS, ICMP: to the answer).
    pub connect: Option<Duration>,
    /// To the first byte of the answer (TLS, HTTP(S)).
    pub first_byte: Option<Duration>,
}

/// How a target is probed.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Time between probes.
    pub interval: Duration,
    /// Per-probe timeout (shorter than the interval).
    pub timeout: Duration,
}

/// The delay before the next probe: the interval with ±10 % jitter, or a quarter of it right
/// after the first failure so a real outage is confirmed quickly. `unit` is uniform in 0..1.
pub fn next_delay(interval: Duration, was_ok: bool, ok: bool, unit: f64) -> Duration {
    if was_ok && !ok {
        interval / 4
    } else {
        interval.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
    }
}

/// The delay before a target's first probe: spread over a quarter interval so that many
/// targets do not start at the same instant, yet a restart re-checks everything soon.
pub fn first_delay(interval: Duration, unit: f64) -> Duration {
    (interval / 4).mul_f64(unit.clamp(0.0, 1.0))
}

/// Where a probe task notes when its last probe finished, so that the monitor can tell a
/// silent checker from a busy monitor.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// The origin of `millis`.
    pub epoch: Instant,
    /// Milliseconds since `epoch` at the end of the last probe.
    pub millis: Arc<AtomicU64>,
}

/// What every probe task shares with the monitor: the concurrency limit, where reports
/// go, and where it notes that it ran.
#[derive(Debug, Clone)]
pub struct Reporting {
    /// At most this many probes in flight, over all targets.
    pub limit: Arc<Semaphore>,
    /// The monitor's report queue.
    pub reports: mpsc::Sender<Report>,
    /// This target's heartbeat.
    pub heartbeat: Heartbeat,
}

/// Probes until cancelled or until the monitor goes away.
pub async fn probe_loop(
    target: TargetId,
    prober: Prober,
    kind: &'static str,
    schedule: Schedule,
    reporting: Reporting,
    token: CancellationToken,
) {
    let Reporting {
        limit,
        reports,
        heartbeat,
    } = reporting;
    let mut delay = first_delay(schedule.interval, rand::random());
    let mut was_ok = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = token.cancelled() => return,
        }
        let permit = tokio::select! {
            permit = limit.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // the semaphore is closed: shutting down
            },
            () = token.cancelled() => return,
        };
        let started = Instant::now();
        let (result, outcome) = match tokio::time::timeout(schedule.timeout, prober.run()).await {
            Ok(Ok(outcome)) => (Ok(()), outcome),
            Ok(Err(error)) => (Err(error), Default::default()),
            Err(_) => {
                let phase = prober.phase();
                if phase == super::probe::Phase::Running {
                    // Dropping the probe killed its command's process group.
                    metrics::counter!(CHECK_EXEC_KILLED_TOTAL, "reason" => "timeout").increment(1);
                }
                (Err(ProbeError::Timeout(phase)), Default::default())
            }
        };
        drop(permit);
        let rtt = started.elapsed();
        metrics::histogram!(PROBE_DURATION_SECONDS, "kind" => kind).record(rtt.as_secs_f64());
        heartbeat.millis.store(
            u64::try_from(heartbeat.epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match &result {
            Err(error) if error.is_local() => {
                metrics::counter!(PROBE_UNKNOWN_TOTAL, "kind" => kind, "reason" => error.as_str())
                    .increment(1);
            }
            Err(error) => {
                metrics::counter!(PROBE_FAILURES_TOTAL, "kind" => kind, "reason" => error.as_str())
                    .increment(1);
            }
            Ok(()) => {}
        }
        let ok = result.is_ok();
        let report = Report {
            target,
            rtt: result.is_ok().then_some(rtt),
            result,
            load: outcome.load,
            cert: outcome.cert,
            at: SystemTime::now(),
            timings: Timings {
                connect: outcome.connect,
                first_byte: outcome.first_byte,
            },
        };
        if reports.send(report).await.is_err() {
            return;
        }
        delay = next_delay(schedule.interval, was_ok, ok, rand::random());
        was_ok = ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_is_rechecked_fast_then_the_interval_resumes() {
        let interval = Duration::from_secs(2);
        assert_eq!(
            next_delay(interval, true, false, 0.5),
            Duration::from_millis(500)
        );
        assert_eq!(next_delay(interval, false, false, 0.5), interval);
        assert_eq!(next_delay(interval, false, true, 0.5), interval);
        for unit in [0.0, 0.3, 1.0] {
            let d = next_delay(interval, true, true, unit);
            assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
        }
        assert!(first_delay(interval, 1.0) <= Duration::from_millis(500));
    }
}
