//! Ranking policies: pure functions from a pool's up endpoints to an order.
//!
//! No I/O and no clock here: the builder calls [`rank`] while it builds a snapshot, so the
//! query path only reads the result.

use crate::config::{Member, Policy};

/// Orders the endpoints a service may answer, best first.
pub fn rank(policy: Policy, members: Vec<&Member>) -> Vec<&Member> {
    match policy {
        // Config order is the priority order: the list arrives in it already.
        Policy::Failover => members,
    }
}
