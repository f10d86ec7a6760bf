//! The config's `[[geo.network]]` table in a prefix trie (longest prefix wins).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::{Found, GeoLookup};
use crate::config::{GeoNetwork, Location};

/// Networks by family, each with its location index and the scope its answers need.
#[derive(Clone, Default)]
pub struct CidrTable {
    v4: PrefixMap<Ipv4Net, (usize, u8)>,
    v6: PrefixMap<Ipv6Net, (usize, u8)>,
    locations: Vec<Location>,
    nets: Vec<IpNet>,
    /// The longest configured prefix per family: the scope of an unmatched address.
    longest_v4: u8,
    longest_v6: u8,
}

impl CidrTable {
    /// Builds the trie. A network's scope is the longest prefix among the networks inside
    /// it (itself included), so a cached answer never covers a more specific network.
    pub fn new(networks: &[GeoNetwork]) -> Self {
        let mut table = Self::default();
        for (index, network) in networks.iter().enumerate() {
            let scope = networks
                .iter()
                .filter(|other| network.net.contains(&other.net))
                .map(|other| other.net.prefix_len())
                .max()
                .unwrap_or(network.net.prefix_len());
            match network.net {
                IpNet::V4(net) => {
                    table.v4.insert(net, (index, scope));
                    table.longest_v4 = table.longest_v4.max(net.prefix_len());
                }
                IpNet::V6(net) => {
                    table.v6.insert(net, (index, scope));
                    table.longest_v6 = table.longest_v6.max(net.prefix_len());
                }
            }
            table.locations.push(network.location.clone());
            table.nets.push(network.net);
        }
        table
    }

    /// Number of networks.
    pub fn len(&self) -> usize {
        self.locations.len()
    }

    /// True without networks.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// Locations by network index.
    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// The matching network's index and scope, without copying its location.
    pub fn lookup(&self, addr: IpAddr) -> Option<(usize, u8)> {
        match addr {
            IpAddr::V4(v4) => self.v4.get_lpm(&Ipv4Net::from(v4)).map(|(_, v)| *v),
            IpAddr::V6(v6) => self.v6.get_lpm(&Ipv6Net::from(v6)).map(|(_, v)| *v),
        }
    }

    /// Networks by index.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The scope of an address no network matches.
    pub fn unmatched_scope(&self, addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            self.longest_v4
        } else {
            self.longest_v6
        }
    }
}

impl GeoLookup for CidrTable {
    fn locate(&self, addr: IpAddr) -> Option<Found> {
        let (index, scope) = self.lookup(addr)?;
        Some(Found {
            location: self.locations.get(index)?.clone(),
            prefix: scope,
            network: Some(index),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(cidr: &str, region: &str) -> GeoNetwork {
        GeoNetwork {
            net: cidr.parse().unwrap(),
            location: Location {
                coordinates: None,
                region: Some(region.into()),
            },
        }
    }

    #[test]
    fn longest_prefix_wins_and_scope_covers_nested_networks() {
        let table = CidrTable::new(&[
            net("10.0.0.0/8", "eu"),
            net("10.1.0.0/16", "us"),
            net("2001:db8::/32", "ap"),
        ]);
        let found = table.locate("10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(
            (
                found.location.region.as_deref(),
                found.prefix,
                found.network
            ),
            (Some("us"), 16, Some(1))
        );
        let found = table.locate("10.2.3.4".parse().unwrap()).unwrap();
        // 10.0.0.0/8 holds the more specific /16: an answer for 10.2.3.4 holds for its /16.
        assert_eq!(
            (found.location.region.as_deref(), found.prefix),
            (Some("eu"), 16)
        );
        assert_eq!(
            table
                .locate("2001:db8:1::1".parse().unwrap())
                .unwrap()
                .prefix,
            32
        );
        assert!(table.locate("192.0.2.1".parse().unwrap()).is_none());
        assert_eq!(table.unmatched_scope("192.0.2.1".parse().unwrap()), 16);
        assert_eq!(table.unmatched_scope("2001:db9::1".parse().unwrap()), 32);
    }
}
