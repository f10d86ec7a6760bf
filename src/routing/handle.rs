//! [`RoutingHandle`]: the shared, lock-free pointer to the current [`Snapshot`].

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::Snapshot;

/// Cheap to clone; every clone sees the same current snapshot.
#[derive(Clone, Debug)]
pub struct RoutingHandle(Arc<ArcSwap<Snapshot>>);

impl RoutingHandle {
    /// Wraps the first snapshot.
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The current snapshot, for the duration of one query. Do not hold across `.await`.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// The current snapshot as an owned `Arc`, for work that spans an `.await`.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Publishes a new snapshot. Only the builder calls this.
    pub(crate) fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}
