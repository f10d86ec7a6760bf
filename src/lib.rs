//! gto: a DNS-based Global Traffic Optimizer.
//!
//! gto is the authoritative DNS server of a delegated subzone (say `gto.example.com`).
//! For a GSLB name such as `vpn.gto.example.com` it answers each query with the addresses
//! of the endpoints best for that client; every other name comes from ordinary zone files.
//!
//! # Data flow
//!
//! ```text
//! config + zone files ──> loaded::ConfigSource::load ──> loaded::Loaded
//!                                                            │
//! endpoint state (health, drains, load) ──> routing::BuildEvent ──> routing::Builder
//!   (health monitor; admin API)                                     (only writer)
//!                                                            │ one atomic store: the
//!                                                            │ snapshot with its prepared
//!                                                            ▼ wire form (routing::wire)
//!                           routing::RoutingHandle (ArcSwap<Snapshot>)
//!                                          │ one load per query
//!                   ┌──────────────────────┴───────────────────────┐
//!                   ▼                                              ▼
//!     dns::fast (UDP workers: common queries     dns::handler (general path: TCP,
//!     answered from prepared bytes)               anything unusual; the reference)
//! ```
//!
//! Dependencies run one way, floor by floor, with no circle between modules or files:
//!
//! 1. [`files`], [`time`], [`rlimit`], [`shutdown`], [`notify`], [`events`] (the event
//!    bus), then [`metrics`];
//! 2. [`config`], [`zone`], [`dnssec`] (keys and signing primitives only), then [`geo`]
//!    and [`policy`];
//! 3. [`loaded`] (reads the zones, the database and the keys, once);
//! 4. [`routing`] (the snapshot, its build, and DNSSEC's upper floor: a zone's signatures,
//!    the signed form of answers, re-signing);
//! 5. [`health`], [`webhook`], then [`cluster`];
//! 6. [`dns`] (imports only `routing` of what is above `config`), [`reload`], then [`admin`];
//! 7. [`app`], [`agent`], then [`cli`] (`main.rs` only dispatches to it).
//!
//! - [`config`]: TOML in two stages (raw serde, then a compile step that collects every
//!   problem with its file, line and path).
//! - [`loaded`]: a config with the zone files and database it names, loaded together.
//! - [`zone`]: RFC 1035 master files (with `$INCLUDE`), parsed entry by entry so each bad
//!   line is reported; wildcards, delegations and occluded data are found here.
//! - [`cluster`]: the fleet — drains, load reports and presence shared through etcd, applied
//!   to the health monitor; never on the query path.
//! - [`routing`]: the immutable [`routing::Snapshot`] and its prepared wire form, its
//!   builder task and its handle; response rate limiting's table.
//! - [`geo`]: where a client is (networks table, optional MaxMind database).
//! - [`policy`]: pure ranking of a pool's endpoints (geo, failover, weighted, least-load),
//!   rendezvous affinity, load watermarks.
//! - [`health`]: probes, rise/fall hysteresis, the state file and its writer, flips into
//!   the builder.
//! - [`dns`]: listeners and the query path (fast path, general path, TCP).
//! - [`admin`]: the HTTP admin API (status, drain, load, explain, reload, metrics).
//! - [`reload`]: config reloads (SIGHUP, `POST /v1/reload`).
//! - [`dnssec`]: keys and signing primitives (the zones' signing is in [`routing`]).
//! - [`app`]: start and shutdown; [`notify`]: systemd readiness and watchdog;
//!   [`files`], [`time`], [`rlimit`]: bounded file reads, clock helpers and the
//!   open-file limit; [`cli`]: the commands.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod dnssec;
pub mod dnstap;
pub mod events;
pub mod files;
pub mod geo;
pub mod handover;
pub mod health;
pub mod loaded;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod reload;
pub mod rlimit;
pub mod routing;
pub mod runtime;
pub mod shutdown;
pub mod time;
pub mod webhook;
pub mod zone;

pub use app::App;
pub use loaded::{ConfigSource, Loaded};

/// Exit code for a config that does not load (`EX_USAGE` from sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;
