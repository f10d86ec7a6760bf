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

    /// A handle that does not keep the table alive (for what the snapshots themselves
    /// hold, such as the dnstap writer).
    pub fn downgrade(&self) -> WeakRouting {
        WeakRouting(Arc::downgrade(&self.0))
    }

    /// Publishes a new snapshot and returns the one it replaces. Only the builder calls
    /// this.
    pub(crate) fn swap(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.0.swap(Arc::new(snapshot))
    }
}

/// A [`RoutingHandle`] that does not keep the table alive.
#[derive(Clone, Debug)]
pub struct WeakRouting(std::sync::Weak<ArcSwap<Snapshot>>);

impl WeakRouting {
    /// The handle, while the table lives.
    pub fn upgrade(&self) -> Option<RoutingHandle> {
        self.0.upgrade().map(RoutingHandle)
    }
}
