//! The routing table: one immutable [`Snapshot`] holding everything a query needs, built by
//! a single builder task and published through an [`arc_swap::ArcSwap`].
//!
//! ```text
//! config + zones ──┐
//! member state ────┼─> Builder (only writer) ─> Arc<Snapshot> ─> RoutingHandle ─> query path
//! (health, drains) ┘
//! ```
//!
//! The query path does one [`RoutingHandle::load`] per query and takes no lock. Every input
//! that changes an answer (a reload, an endpoint going up or down) reaches the builder as a
//! [`BuildEvent`]; the builder rebuilds the whole snapshot off the query path and swaps it
//! in with one atomic store, so a query never sees half of a change.

mod build;
mod builder;
mod decorate;
mod encode;
pub mod explain;
mod gslb;
mod handle;
mod index;
mod node;
pub mod parent;
pub mod resign;
pub mod rrl;
pub mod rum;
mod shares;
pub mod signing;
mod table;
pub mod wire;
mod zones;

pub use crate::dnssec::CO_FLAG;
pub use build::{
    EndpointState, EndpointStates, Prepared, Withheld, build, build_prepared, prepare,
};
pub use builder::{BuildEvent, Builder, Change, Rekeyed};
pub use decorate::decorate;
pub use gslb::{
    Choice, Client, Endpoint, EndpointInfo, EndpointKey, GslbNode, OverrideRanking, Scratch,
    Selection, Signature,
};
pub use handle::{RoutingHandle, WeakRouting};
pub use node::{Node, Nodes};
pub use resign::status_json;
pub use signing::{ZoneContent, ZoneSigning};
pub use table::{Outcome, Resolution, ServiceInfo, Snapshot, ZoneTable, rcode_name};
