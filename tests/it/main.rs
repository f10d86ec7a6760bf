//! Integration tests: one binary, real sockets on loopback, real config and zone files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod admin;
mod authority;
mod check;
mod ctl;
mod dns;
mod dnssec;
mod dnstap;
mod edns;
mod events;
mod fast;
mod fleet;
mod geo;
mod health;

mod kinds;
mod knot;
mod latency;
mod lifecycle;
mod members;
mod metrics;
mod overrides;
mod package;
mod page;
mod partial;
// Beside the shared helpers, but declared here: it uses this binary's own modules.
#[path = "support/real.rs"]
mod real;
mod rrl;
mod support;
mod tcp;
mod votes;
mod webhook;
mod windows;
mod zonefile;
