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
//! member state (health, drains) ──> routing::BuildEvent ──> routing::Builder (only writer)
//!                                                            │ one atomic store
//!                                                            ▼
//!                           routing::RoutingHandle (ArcSwap<Snapshot>)
//!                                                            │ one load per query
//!                                                            ▼
//!                         dns::Handler (hickory-server, UDP + TCP) ──> answers
//! ```
//!
//! - [`config`]: TOML in two stages (raw serde, then a compile step that collects every
//!   problem with its file, line and path), plus the zone files it names.
//! - [`zone`]: RFC 1035 master files, parsed entry by entry so each bad line is reported.
//! - [`routing`]: the immutable [`routing::Snapshot`], its builder task and its handle.
//! - [`geo`]: where a client is (networks table, optional MaxMind database).
//! - [`policy`]: pure ranking of a pool's endpoints (geo, failover, weighted, least-load),
//!   rendezvous affinity, load watermarks.
//! - [`health`]: probes, rise/fall hysteresis, the state file, flips into the builder.
//! - [`dns`]: listeners and the query path.
//! - [`admin`]: the HTTP admin API (status, drain, load, explain, reload, metrics).
//! - [`reload`]: config reloads (SIGHUP, `POST /v1/reload`).
//! - [`app`]: start and shutdown.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dns;
pub mod files;
pub mod geo;
pub mod health;
pub mod loaded;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod reload;
pub mod rlimit;
pub mod routing;
pub mod shutdown;
pub mod zone;

pub use app::App;
pub use loaded::{ConfigSource, Loaded};

/// Exit code for a config that does not load (`EX_USAGE` from sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;
