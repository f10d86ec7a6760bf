//! The prepared wire form of answers, built with each config's snapshot: the bytes the
//! UDP fast path (`dns::fast`) copies per query.
//!
//! For static names: the whole answer/authority/additional tail of each type (and the
//! NODATA tail), encoded once with hickory's own encoder from the general lookup of this
//! snapshot, so the fast path's answers are byte for byte the general path's. For GSLB
//! names: each address record in its first-in-the-answer form and in its compressed form
//! (owner name as a pointer to the first answer).

use std::collections::HashMap;

use hickory_proto::rr::{LowerName, Name, Record};
use hickory_proto::serialize::binary::BinEncodable;

pub(crate) use super::encode::encode_tail;
pub use super::encode::{Tail, WireRecord, gslb_question, wire_records};

/// What the fast path knows of one name.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A name with a CNAME (its chains), or at or below a delegation: the general path
    /// answers.
    General,
    /// A GSLB name: service index, the NODATA tail for other types, and whether its zone
    /// is signed (then a query with DO gets the answer's signatures appended, and NODATA
    /// from the general path).
    Gslb {
        service: usize,
        nodata: Tail,
        signed: bool,
        /// Signed NODATA tails by the families the name can answer now (A, AAAA).
        signed_nodata: Box<[((bool, bool), Tail)]>,
    },
    /// A static name: the tail per type it has, and the NODATA tail for the rest; in a
    /// signed zone the same with DNSSEC records, for queries with DO.
    Static {
        types: Box<[(u16, Tail)]>,
        nodata: Tail,
        signed: Option<Box<SignedTails>>,
    },
}

/// The tails of a static name for queries with DO.
#[derive(Debug)]
pub(crate) struct SignedTails {
    pub(crate) types: Box<[(u16, Tail)]>,
    pub(crate) nodata: Tail,
}

/// Names the fast path can answer, keyed by their lower-cased wire form. Hashed with
/// foldhash (seeded per process): several times faster than SipHash on short keys, and the
/// map is only read per query, never grown by it.
#[derive(Debug, Default)]
pub struct FastIndex {
    pub(crate) names: HashMap<Box<[u8]>, Entry, foldhash::fast::RandomState>,
    /// Zones, most specific first.
    pub(crate) zones: Vec<FastZone>,
}

/// What the fast path knows of a zone, for names it does not index.
#[derive(Debug)]
pub(crate) struct FastZone {
    /// The lower-cased wire origin.
    pub(crate) origin: Box<[u8]>,
    /// The SOA of negative answers.
    pub(crate) soa: Record,
    /// No wildcards and no delegations: a name under the origin that is not indexed does
    /// not exist (NXDOMAIN). Otherwise the general path answers such names.
    pub(crate) plain: bool,
    /// The zone's signatures when it is signed: the denial of a name that does not exist
    /// comes from its cache.
    pub(crate) signing: Option<std::sync::Arc<crate::routing::ZoneSigning>>,
}

impl FastIndex {
    /// Number of indexed names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Lower-cased wire form of a name (the index key).
pub fn key_of(name: &LowerName) -> Vec<u8> {
    Name::from(name).to_bytes().unwrap_or_default()
}
