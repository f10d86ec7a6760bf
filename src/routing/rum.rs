//! A latency service's rankings by real-user measurements: one per client prefix with
//! fresh measurements of its endpoints, found per query by longest prefix match in a
//! few binary searches (one per prefix length), with the ECS scope an answer outside
//! every prefix needs so that a resolver does not cache it for clients inside one.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::Ranking;

/// One client prefix's ranking.
#[derive(Debug, Clone)]
pub struct RumCell {
    /// The client prefix.
    pub prefix: IpNet,
    /// Its endpoints (indices into the node's members) by its measurements, then the rest.
    pub ranking: Ranking,
    /// The measured round trip (µs) of each member, by index (None: not measured).
    pub rtts: Vec<Option<u32>>,
}

/// Prefixes of one family and length, sorted by network.
#[derive(Debug, Clone)]
struct Group {
    v6: bool,
    len: u8,
    /// (network bits, cell index), sorted.
    networks: Vec<(u128, usize)>,
}

/// The cells of one node and their lookup.
#[derive(Debug, Clone, Default)]
pub struct RumIndex {
    /// Every prefix's cell.
    pub cells: Vec<RumCell>,
    /// Longest prefixes first.
    groups: Vec<Group>,
}

fn bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn width(v6: bool) -> u32 {
    if v6 { 128 } else { 32 }
}

fn mask(v6: bool, len: u8) -> u128 {
    let width = width(v6);
    let len = u32::from(len).min(width);
    if len == 0 {
        return 0;
    }
    let all = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    all & !(all >> len)
}

impl RumIndex {
    /// The index of `cells`.
    pub fn new(cells: Vec<RumCell>) -> Self {
        let mut groups: Vec<Group> = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let (v6, network) = bits(cell.prefix.network());
            let len = cell.prefix.prefix_len();
            match groups.iter_mut().find(|g| g.v6 == v6 && g.len == len) {
                Some(group) => group.networks.push((network, i)),
                None => groups.push(Group {
                    v6,
                    len,
                    networks: vec![(network, i)],
                }),
            }
        }
        for group in &mut groups {
            group.networks.sort_unstable();
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.len));
        Self { cells, groups }
    }

    /// Whether it holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The cell of the longest prefix holding `addr` and its length; else None and the
    /// shortest prefix of `addr` that overlaps none of the cells (the ECS scope its
    /// answer needs).
    pub fn lookup(&self, addr: IpAddr) -> (Option<&RumCell>, u8) {
        let (v6, value) = bits(addr);
        let mut scope = 0u8;
        for group in self.groups.iter().filter(|g| g.v6 == v6) {
            let masked = value & mask(v6, group.len);
            let at = group.networks.partition_point(|(n, _)| *n < masked);
            if let Some(&(network, cell)) = group.networks.get(at)
                && network == masked
            {
                return (self.cells.get(cell), group.len);
            }
            // The nearest networks share the most leading bits with the address.
            let neighbours = [at.checked_sub(1), Some(at)];
            for &(network, _) in neighbours
                .iter()
                .flatten()
                .filter_map(|&i| group.networks.get(i))
            {
                let shared = (value ^ network).leading_zeros() - (128 - width(v6));
                let needed = u8::try_from(shared + 1).unwrap_or(u8::MAX).min(group.len);
                scope = scope.max(needed);
            }
        }
        (None, scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(prefix: &str) -> RumCell {
        RumCell {
            prefix: prefix.parse().unwrap(),
            ranking: Ranking::default(),
            rtts: Vec::new(),
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_outsiders_get_a_separating_scope() {
        let index = RumIndex::new(vec![
            cell("10.1.0.0/16"),
            cell("10.1.5.0/24"),
            cell("2001:db8::/48"),
        ]);
        let found = |a: &str| {
            let (cell, scope) = index.lookup(a.parse().unwrap());
            (cell.map(|c| c.prefix.to_string()), scope)
        };
        assert_eq!(found("10.1.5.9"), (Some("10.1.5.0/24".into()), 24));
        assert_eq!(found("10.1.7.9"), (Some("10.1.0.0/16".into()), 16));
        assert_eq!(found("2001:db8:0:1::1"), (Some("2001:db8::/48".into()), 48));
        // 10.0.0.0 shares 15 bits with 10.1.0.0/16: /16 tells them apart.
        assert_eq!(found("10.0.0.1"), (None, 16));
        // 192.0.2.1 shares no leading bit with 10/8: /1 suffices.
        assert_eq!(found("192.0.2.1"), (None, 1));
        assert_eq!(found("2001:db9::1"), (None, 32));
        assert_eq!(RumIndex::default().lookup("10.0.0.1".parse().unwrap()).1, 0);
    }
}
