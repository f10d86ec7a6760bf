//! The recorder gto installs ([`Forwarding`]): it is in place at once, and forwards to
//! the Prometheus recorder once that is built. Building it calibrates the `quanta` clock
//! the exporter keeps time with, which on a CPU with an invariant TSC spins for 1-200 ms
//! (once per process); with this recorder nothing at start waits for it. A handle made
//! before the Prometheus recorder is ready ([`Late`]) keeps what it is given and hands
//! it over when the recorder is ready; handles made after are Prometheus's own.
//! `/metrics` sees the recorder only once everything kept is handed over and every
//! metric described ([`show`]), so a scrape in the first moments never misses a series.

use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::Kind;

/// Samples a histogram handle made before the recorder is ready keeps (the rest of a
/// burst in that time is dropped).
const LATE_SAMPLES: usize = 4096;

/// The Prometheus recorder, once built: handles forward to it from then on.
static READY: OnceLock<PrometheusRecorder> = OnceLock::new();

/// The Prometheus recorder, once what was kept before it was ready is handed over and
/// the metrics are described: what `/metrics` renders.
static SHOWN: OnceLock<&'static PrometheusRecorder> = OnceLock::new();

/// What was registered or described before the recorder was ready, handed over when it
/// is.
static WAITING: Mutex<Waiting> = Mutex::new(Waiting::new());

/// What waits for the recorder.
#[derive(Debug)]
struct Waiting {
    handles: Vec<Arc<Late>>,
    descriptions: Vec<Description>,
}

/// A description given before the recorder was ready.
#[derive(Debug)]
struct Description {
    kind: Kind,
    key: KeyName,
    unit: Option<Unit>,
    text: SharedString,
}

impl Waiting {
    /// Nothing waiting.
    const fn new() -> Self {
        Self {
            handles: Vec::new(),
            descriptions: Vec::new(),
        }
    }
}

impl Description {
    /// Gives the description to `recorder`.
    fn give(self, recorder: &PrometheusRecorder) {
        match self.kind {
            Kind::Counter => recorder.describe_counter(self.key, self.unit, self.text),
            Kind::Gauge => recorder.describe_gauge(self.key, self.unit, self.text),
            Kind::Histogram => recorder.describe_histogram(self.key, self.unit, self.text),
        }
    }
}

/// The recorder installed as the global one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forwarding;

/// The metadata a late handle registers with (the Prometheus recorder does not read it).
fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

/// Makes `recorder` the one every handle forwards to, and hands over what the handles
/// made before kept and the descriptions given before. Once per process; a second call
/// is ignored. `/metrics` does not see it until [`show`].
pub(super) fn ready(recorder: PrometheusRecorder) {
    if READY.set(recorder).is_err() {
        return;
    }
    let Waiting {
        handles,
        descriptions,
    } = std::mem::replace(
        &mut *WAITING.lock().unwrap_or_else(|e| e.into_inner()),
        Waiting::new(),
    );
    for late in handles {
        late.hand_over();
    }
    if let Some(recorder) = READY.get() {
        for description in descriptions {
            description.give(recorder);
        }
    }
}

/// Lets `/metrics` render the recorder: called after [`ready`] and the descriptions, so
/// a scrape sees every series counted before (not some of them, mid-hand-over).
pub(super) fn show() {
    if let Some(recorder) = READY.get() {
        let _ = SHOWN.set(recorder);
    }
}

/// The Prometheus recorder, once shown.
pub(super) fn recorder() -> Option<&'static PrometheusRecorder> {
    SHOWN.get().copied()
}

/// Waits until the Prometheus recorder is shown (at most its clock's calibration,
/// 200 ms) and returns it.
pub(super) fn wait() -> &'static PrometheusRecorder {
    SHOWN.wait()
}

/// Gives `description` to the recorder, or keeps it until the recorder is ready.
fn describe(description: Description) {
    if let Some(recorder) = READY.get() {
        return description.give(recorder);
    }
    let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
    // Looked at again under the lock `ready` drains under.
    match READY.get() {
        Some(recorder) => {
            drop(waiting);
            description.give(recorder);
        }
        None => waiting.descriptions.push(description),
    }
}

/// What a handle made before the recorder was ready keeps, by kind.
#[derive(Debug)]
enum Kept {
    Counter { increments: u64, absolute: u64 },
    Gauge { set: Option<f64>, delta: f64 },
    Histogram(Vec<f64>),
}

/// A handle made before the Prometheus recorder was ready: what it is given goes into
/// [`Kept`] until then, and to the recorder's own handle after.
#[derive(Debug)]
struct Late {
    key: Key,
    kept: Mutex<Kept>,
    handle: OnceLock<Handle>,
}

/// The Prometheus recorder's handle a late one hands over to.
#[derive(Debug)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Late {
    /// A late handle of `kind` for `key`, waiting for the recorder; None when the recorder
    /// is ready (the caller registers with it).
    fn waiting(key: &Key, kept: Kept) -> Option<Arc<Self>> {
        let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        // Looked at under the lock that `ready` drains under: a handle is either in the
        // list it drains or made after the recorder was set.
        if READY.get().is_some() {
            return None;
        }
        let late = Arc::new(Self {
            key: key.clone(),
            kept: Mutex::new(kept),
            handle: OnceLock::new(),
        });
        waiting.handles.push(late.clone());
        Some(late)
    }

    /// The recorder's handle, registered on first need, once the recorder is ready.
    fn handle(&self) -> Option<&Handle> {
        if let Some(handle) = self.handle.get() {
            return Some(handle);
        }
        let recorder = READY.get()?;
        Some(self.handle.get_or_init(|| {
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            match &*kept {
                Kept::Counter { .. } => {
                    Handle::Counter(recorder.register_counter(&self.key, &metadata()))
                }
                Kept::Gauge { .. } => {
                    Handle::Gauge(recorder.register_gauge(&self.key, &metadata()))
                }
                Kept::Histogram(_) => {
                    Handle::Histogram(recorder.register_histogram(&self.key, &metadata()))
                }
            }
        }))
    }

    /// Gives what was kept to the recorder's handle (none before the recorder is ready).
    fn hand_over(&self) {
        let Some(handle) = self.handle() else {
            return;
        };
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match (&mut *kept, handle) {
            (
                Kept::Counter {
                    increments,
                    absolute,
                },
                Handle::Counter(counter),
            ) => {
                if *absolute > 0 {
                    counter.absolute(std::mem::take(absolute));
                }
                if *increments > 0 {
                    counter.increment(std::mem::take(increments));
                }
            }
            (Kept::Gauge { set, delta }, Handle::Gauge(gauge)) => {
                if let Some(value) = set.take() {
                    gauge.set(value);
                }
                if *delta != 0.0 {
                    gauge.increment(std::mem::take(delta));
                }
            }
            (Kept::Histogram(samples), Handle::Histogram(histogram)) => {
                for sample in samples.drain(..) {
                    histogram.record(sample);
                }
            }
            _ => {}
        }
    }

    /// Keeps `change` until the recorder is ready, then hands it over: a change kept while
    /// the recorder became ready is handed over here, not left behind.
    fn keep(&self, change: impl FnOnce(&mut Kept)) {
        change(&mut self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        if READY.get().is_some() {
            self.hand_over();
        }
    }
}

impl CounterFn for Late {
    fn increment(&self, value: u64) {
        match self.handle.get() {
            Some(Handle::Counter(counter)) => counter.increment(value),
            _ => self.keep(|kept| {
                if let Kept::Counter { increments, .. } = kept {
                    *increments += value;
                }
            }),
        }
    }

    fn absolute(&self, value: u64) {
        match self.handle.get() {
            Some(Handle::Counter(counter)) => counter.absolute(value),
            _ => self.keep(|kept| {
                if let Kept::Counter { absolute, .. } = kept {
                    *absolute = (*absolute).max(value);
                }
            }),
        }
    }
}

impl GaugeFn for Late {
    fn increment(&self, value: f64) {
        match self.handle.get() {
            Some(Handle::Gauge(gauge)) => gauge.increment(value),
            _ => self.keep(|kept| {
                if let Kept::Gauge { delta, .. } = kept {
                    *delta += value;
                }
            }),
        }
    }

    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }

    fn set(&self, value: f64) {
        match self.handle.get() {
            Some(Handle::Gauge(gauge)) => gauge.set(value),
            _ => self.keep(|kept| {
                if let Kept::Gauge { set, delta } = kept {
                    *set = Some(value);
                    *delta = 0.0;
                }
            }),
        }
    }
}

impl HistogramFn for Late {
    fn record(&self, value: f64) {
        match self.handle.get() {
            Some(Handle::Histogram(histogram)) => histogram.record(value),
            _ => self.keep(|kept| {
                if let Kept::Histogram(samples) = kept
                    && samples.len() < LATE_SAMPLES
                {
                    samples.push(value);
                }
            }),
        }
    }
}

/// The recorder's own handle for `key` once it is ready; before, a late one keeping
/// `kept`.
fn register<H>(
    key: &Key,
    kept: Kept,
    late: impl FnOnce(Arc<Late>) -> H,
    own: impl Fn(&PrometheusRecorder) -> H,
) -> H {
    if let Some(recorder) = READY.get() {
        return own(recorder);
    }
    match Late::waiting(key, kept) {
        Some(waiting) => late(waiting),
        // Ready since the look above.
        None => own(READY.wait()),
    }
}

impl Recorder for Forwarding {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        describe(Description {
            kind: Kind::Counter,
            key,
            unit,
            text,
        });
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        describe(Description {
            kind: Kind::Gauge,
            key,
            unit,
            text,
        });
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        describe(Description {
            kind: Kind::Histogram,
            key,
            unit,
            text,
        });
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let kept = Kept::Counter {
            increments: 0,
            absolute: 0,
        };
        register(key, kept, Counter::from_arc, |recorder| {
            recorder.register_counter(key, metadata)
        })
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let kept = Kept::Gauge {
            set: None,
            delta: 0.0,
        };
        register(key, kept, Gauge::from_arc, |recorder| {
            recorder.register_gauge(key, metadata)
        })
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let kept = Kept::Histogram(Vec::new());
        register(key, kept, Histogram::from_arc, |recorder| {
            recorder.register_histogram(key, metadata)
        })
    }
}

#[cfg(test)]
mod tests {
    use metrics::Label;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// The value of the series `series` (name and labels as rendered) in `text`.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// What handles made before the recorder is ready are given (one dropped at once,
    /// others used by threads while it becomes ready) is all handed over, exactly; handles
    /// made after are the recorder's own and count into the same series.
    #[test]
    fn what_is_counted_before_the_recorder_is_ready_is_handed_over() {
        let labelled = Key::from_parts("early_total", vec![Label::new("kind", "a")]);
        Forwarding.describe_counter(
            KeyName::from("early_total"),
            Some(Unit::Count),
            SharedString::from("Counted early."),
        );
        let counter = Forwarding.register_counter(&labelled, &metadata());
        counter.increment(3);
        let gauge = Forwarding.register_gauge(&Key::from_name("early_gauge"), &metadata());
        gauge.set(5.0);
        gauge.increment(2.0);
        let histogram =
            Forwarding.register_histogram(&Key::from_name("early_seconds"), &metadata());
        histogram.record(0.5);
        histogram.record(1.5);
        // A handle used once and dropped before the recorder is ready.
        Forwarding
            .register_counter(&Key::from_name("once_total"), &metadata())
            .increment(7);

        // Threads count while the recorder becomes ready.
        let busy = Forwarding.register_counter(&Key::from_name("busy_total"), &metadata());
        let start = std::sync::Barrier::new(5);
        let prometheus = PrometheusBuilder::new().build_recorder();
        let handle = prometheus.handle();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    start.wait();
                    for _ in 0..50_000 {
                        busy.increment(1);
                    }
                });
            }
            start.wait();
            ready(prometheus);
        });
        // Not rendered until shown (after the descriptions).
        assert!(recorder().is_none());
        show();
        assert!(recorder().is_some());

        counter.increment(1);
        Forwarding
            .register_counter(&labelled, &metadata())
            .increment(10);
        let text = handle.render();
        assert_eq!(value(&text, "early_total{kind=\"a\"}"), 14.0);
        assert!(text.contains("# HELP early_total Counted early."), "{text}");
        assert_eq!(value(&text, "early_gauge"), 7.0);
        assert_eq!(value(&text, "early_seconds_count"), 2.0);
        assert_eq!(value(&text, "early_seconds_sum"), 2.0);
        assert_eq!(value(&text, "once_total"), 7.0);
        assert_eq!(value(&text, "busy_total"), 200_000.0);
    }
}
