//! Geographic ranking keys: great-circle distance, or a region's preference list.

use crate::config::{Location, Region};

/// Mean Earth radius in km.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle distance in km between two (lat, lon) points in degrees (haversine).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// How far an endpoint is from a client, as a sortable key (lower is better), or None
/// when the two cannot be compared. A region preference list wins over coordinates when
/// the client's region has one; same region otherwise beats coordinates; distances are
/// whole kilometres, so endpoints on one site tie.
pub fn key(client: &Location, member: &Location, regions: &[Region]) -> Option<f64> {
    if let (Some(client_region), Some(member_region)) = (&client.region, &member.region) {
        if let Some(region) = regions.iter().find(|r| r.name == *client_region) {
            let position = region.prefer.iter().position(|r| r == member_region);
            return Some(position.unwrap_or(region.prefer.len()) as f64 * 1e6);
        }
        if client.coordinates.is_none() || member.coordinates.is_none() {
            return Some(if client_region == member_region {
                0.0
            } else {
                1e6
            });
        }
    }
    let (Some(c), Some(m)) = (client.coordinates, member.coordinates) else {
        return None;
    };
    Some(distance_km(c, m).round())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lon: f64) -> Location {
        Location {
            coordinates: Some((lat, lon)),
            region: None,
        }
    }

    fn region(name: &str) -> Location {
        Location {
            coordinates: None,
            region: Some(name.into()),
        }
    }

    #[test]
    fn distances_are_great_circle() {
        // Frankfurt to New York is about 6,200 km; a point to itself is 0.
        let d = distance_km((50.1, 8.7), (40.7, -74.0));
        assert!((6150.0..6250.0).contains(&d), "{d}");
        assert_eq!(distance_km((1.0, 2.0), (1.0, 2.0)), 0.0);
        assert!(
            key(&at(35.7, 139.7), &at(1.35, 103.8), &[]).unwrap()
                < key(&at(35.7, 139.7), &at(50.1, 8.7), &[]).unwrap()
        );
    }

    #[test]
    fn region_preference_lists_order_regions() {
        let regions = vec![Region {
            name: "ap".into(),
            prefer: vec!["ap".into(), "us".into(), "eu".into()],
        }];
        let client = region("ap");
        let keys: Vec<_> = ["eu", "us", "ap", "mars"]
            .iter()
            .map(|r| key(&client, &region(r), &regions).unwrap())
            .collect();
        assert!(
            keys[2] < keys[1] && keys[1] < keys[0] && keys[0] < keys[3],
            "{keys:?}"
        );
        // Without a list: same region first.
        assert!(key(&region("eu"), &region("eu"), &[]) < key(&region("eu"), &region("us"), &[]));
        assert_eq!(key(&region("eu"), &at(1.0, 1.0), &[]), None);
    }
}
