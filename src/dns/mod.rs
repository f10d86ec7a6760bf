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

use hickory_proto::rr::RecordType;

/// The `qtype` label values of `gto_dns_queries_total`, one table for the fast and the
/// general path, so a query type counts under the same series whichever path answers it.
pub const QTYPE_LABELS: [&str; 16] = [
    "A", "AAAA", "ANY", "CNAME", "HTTPS", "MX", "NS", "PTR", "SOA", "SRV", "SVCB", "TXT", "AXFR",
    "IXFR", "other", "none",
];

/// The index of a query type's label in [`QTYPE_LABELS`] (`None`: no question).
pub fn qtype_index(qtype: Option<RecordType>) -> usize {
    match qtype {
        Some(RecordType::A) => 0,
        Some(RecordType::AAAA) => 1,
        Some(RecordType::ANY) => 2,
        Some(RecordType::CNAME) => 3,
        Some(RecordType::HTTPS) => 4,
        Some(RecordType::MX) => 5,
        Some(RecordType::NS) => 6,
        Some(RecordType::PTR) => 7,
        Some(RecordType::SOA) => 8,
        Some(RecordType::SRV) => 9,
        Some(RecordType::SVCB) => 10,
        Some(RecordType::TXT) => 11,
        Some(RecordType::AXFR) => 12,
        Some(RecordType::IXFR) => 13,
        Some(_) => 14,
        None => 15,
    }
}
