//! Where a client is: the config's networks table (longest prefix wins, [`cidr`]) and,
//! optionally, a MaxMind-format database ([`mmdb`]), behind one [`GeoLookup`] trait.
//!
//! [`GeoTable::place`] also says how much of the client's address the placement depends
//! on (the ECS scope a location-based answer must carry): a matched network's length, or
//! longer when more specific networks sit inside it; for an unmatched address, the longest
//! configured prefix of its family (every block that long is either wholly inside a network
//! or outside all of them).

pub mod cidr;
pub mod mmdb;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{GeoSettings, Location};
use cidr::CidrTable;
use mmdb::Mmdb;

/// Why a geo source could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    /// The MaxMind database could not be read.
    #[error("cannot open MaxMind database {path}: {reason}")]
    Mmdb {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A source of client locations.
pub trait GeoLookup: Send + Sync {
    /// Where `addr` is and the prefix length of the network that says so.
    fn locate(&self, addr: IpAddr) -> Option<Found>;
}

/// A location found for an address.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Where.
    pub location: Location,
    /// The length of the network the answer holds for.
    pub prefix: u8,
    /// The configured network's index, when it came from the networks table.
    pub network: Option<usize>,
}

/// Where a client was placed.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// A configured network (index into the networks table: a precomputed ranking cell).
    Network(usize),
    /// The MaxMind database.
    Database(Location),
    /// Nothing matched; the configured default location applies.
    Default,
    /// Nothing matched and there is no default.
    Unknown,
}

/// All geo sources of a snapshot.
#[derive(Clone, Default)]
pub struct GeoTable {
    cidr: CidrTable,
    mmdb: Option<Arc<Mmdb>>,
    default: Option<Location>,
}

impl std::fmt::Debug for GeoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoTable")
            .field("networks", &self.cidr.len())
            .field("mmdb", &self.mmdb.is_some())
            .field("default", &self.default)
            .finish()
    }
}

impl GeoTable {
    /// Builds the table from the config and an opened database.
    pub fn new(settings: &GeoSettings, mmdb: Option<Arc<Mmdb>>) -> Self {
        Self {
            cidr: CidrTable::new(&settings.networks),
            mmdb,
            default: settings.default.clone(),
        }
    }

    /// The configured networks' locations, by index (ranking cells).
    pub fn network_locations(&self) -> &[Location] {
        self.cidr.locations()
    }

    /// A configured network by index.
    pub fn network(&self, index: usize) -> Option<ipnet::IpNet> {
        self.cidr.nets().get(index).copied()
    }

    /// The default location, if configured.
    pub fn default_location(&self) -> Option<&Location> {
        self.default.as_ref()
    }

    /// True when nothing can place any client (rankings cannot depend on location).
    pub fn is_empty(&self) -> bool {
        self.cidr.len() == 0 && self.mmdb.is_none() && self.default.is_none()
    }

    /// Places `addr` and returns the prefix length the placement holds for.
    pub fn place(&self, addr: IpAddr) -> (Placement, u8) {
        // The networks table first, without copying the location (the query path).
        if let Some((network, scope)) = self.cidr.lookup(addr) {
            return (Placement::Network(network), scope);
        }
        let unmatched = self.cidr.unmatched_scope(addr);
        if let Some(found) = self.mmdb.as_ref().and_then(|db| db.locate(addr)) {
            return (
                Placement::Database(found.location),
                found.prefix.max(unmatched),
            );
        }
        // With a database that has no data for the address, its network still bounds it.
        let db_scope = self
            .mmdb
            .as_ref()
            .and_then(|db| db.network_prefix(addr))
            .unwrap_or(0);
        let scope = unmatched.max(db_scope);
        if self.default.is_some() {
            (Placement::Default, scope)
        } else {
            (Placement::Unknown, scope)
        }
    }

    /// The location a placement stands for.
    pub fn location_of<'a>(&'a self, placement: &'a Placement) -> Option<&'a Location> {
        match placement {
            Placement::Network(i) => self.cidr.locations().get(*i),
            Placement::Database(location) => Some(location),
            Placement::Default => self.default.as_ref(),
            Placement::Unknown => None,
        }
    }
}
