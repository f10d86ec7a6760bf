//! DNS serving: listeners ([`server`]), the general query path ([`handler`]) and EDNS
//! Client Subnet handling ([`ecs`]), the UDP fast path ([`fast`], [`udp`]), TCP ([`tcp`]) and
//! response rate limiting ([`crate::routing::rrl`]).

pub mod ecs;
pub mod fast;
pub mod handler;
pub mod server;
pub mod tcp;
pub mod udp;

pub use handler::Handler;
pub use server::{DnsError, DnsServer};
