//! An optional MaxMind-format database (GeoLite2 or DB-IP, City or Country), read with the
//! `maxminddb` crate. City databases give coordinates; Country databases give the ISO
//! country code, used as a region name (so `[[geo.region]] name = "DE"` works).

use std::net::IpAddr;
use std::path::Path;

use maxminddb::{PathElement, Reader};

use super::{Found, GeoError, GeoLookup};
use crate::config::Location;

/// An opened database.
pub struct Mmdb {
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for Mmdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmdb")
            .field("type", &self.reader.metadata().database_type)
            .finish()
    }
}

impl Mmdb {
    /// Opens and checks a database file.
    pub fn open(path: &Path, limit: u64) -> Result<Self, GeoError> {
        let bytes = crate::files::read(path, limit).map_err(|e| GeoError::Mmdb {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let reader = Reader::from_source(bytes).map_err(|e| GeoError::Mmdb {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { reader })
    }

    /// The prefix length of the database network holding `addr`, data or not.
    pub fn network_prefix(&self, addr: IpAddr) -> Option<u8> {
        let result = self.reader.lookup(addr).ok()?;
        result.network().ok().map(|n| n.prefix())
    }
}

impl GeoLookup for Mmdb {
    fn locate(&self, addr: IpAddr) -> Option<Found> {
        let result = self.reader.lookup(addr).ok()?;
        if !result.has_data() {
            return None;
        }
        let lat: Option<f64> = result
            .decode_path(&[PathElement::Key("location"), PathElement::Key("latitude")])
            .ok()
            .flatten();
        let lon: Option<f64> = result
            .decode_path(&[PathElement::Key("location"), PathElement::Key("longitude")])
            .ok()
            .flatten();
        let country: Option<String> = result
            .decode_path(&[PathElement::Key("country"), PathElement::Key("iso_code")])
            .ok()
            .flatten();
        let coordinates = lat
            .zip(lon)
            .filter(|(lat, lon)| (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon));
        if coordinates.is_none() && country.is_none() {
            return None;
        }
        let prefix = result.network().ok().map_or(0, |n| n.prefix());
        Some(Found {
            location: Location {
                coordinates,
                region: country,
            },
            prefix,
            network: None,
        })
    }
}
