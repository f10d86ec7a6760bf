//! EDNS Client Subnet (RFC 7871): reading the option from a query and checking it.
//!
//! The subnet, when present and non-empty, stands for the client in place of the
//! resolver's address. The echo in the answer carries the same family, source prefix and
//! address with a scope prefix: the number of leading bits the answer depended on (0 while
//! no policy looks at the client, so resolvers may cache the answer for everyone).

use std::net::IpAddr;

use hickory_proto::op::Edns;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};

/// Why an ECS option is refused with FORMERR (RFC 7871 section 7.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EcsError {
    /// SOURCE PREFIX-LENGTH longer than the address family allows.
    #[error("source prefix longer than the address")]
    PrefixTooLong,
    /// ADDRESS has bits set beyond SOURCE PREFIX-LENGTH.
    #[error("address bits set beyond the source prefix")]
    HostBitsSet,
}

impl EcsError {
    /// Stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EcsError::HostBitsSet => "ecs_host_bits",
            EcsError::PrefixTooLong => "ecs_prefix",
        }
    }
}

/// The query's ECS option, checked. `Ok(None)` when there is none.
pub fn client_subnet(edns: Option<&Edns>) -> Result<Option<ClientSubnet>, EcsError> {
    let Some(EdnsOption::Subnet(subnet)) = edns.and_then(|e| e.option(EdnsCode::Subnet)) else {
        return Ok(None);
    };
    // Both families as the top bits of a u128, so one mask serves.
    let (bits, address) = match subnet.addr() {
        IpAddr::V4(v4) => (32, u128::from(u32::from(v4)) << 96),
        IpAddr::V6(v6) => (128, u128::from(v6)),
    };
    if subnet.source_prefix() > bits {
        return Err(EcsError::PrefixTooLong);
    }
    if mask(address, subnet.source_prefix()) != address {
        return Err(EcsError::HostBitsSet);
    }
    Ok(Some(*subnet))
}

/// The address the answer is chosen for: the ECS subnet when given (and not /0, which asks
/// for no tailoring), else the resolver's address.
pub fn client_address(subnet: Option<&ClientSubnet>, source: IpAddr) -> IpAddr {
    match subnet {
        Some(subnet) if subnet.source_prefix() > 0 => subnet.addr(),
        _ => source,
    }
}

/// The echo for the answer: the query's option with `scope` set.
pub fn echo(subnet: &ClientSubnet, scope: u8) -> EdnsOption {
    let mut echo = *subnet;
    echo.set_scope_prefix(scope);
    EdnsOption::Subnet(echo)
}

/// Keeps the first `prefix` bits of a 128-bit address.
fn mask(address: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => address,
        p => address & (u128::MAX << (128 - u32::from(p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edns_with(subnet: ClientSubnet) -> Edns {
        let mut edns = Edns::new();
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
        edns
    }

    #[test]
    fn accepts_clean_subnets_and_rejects_host_bits() {
        let ok = ClientSubnet::new("198.51.100.0".parse().unwrap(), 24, 0);
        assert_eq!(client_subnet(Some(&edns_with(ok))), Ok(Some(ok)));
        let dirty = ClientSubnet::new("198.51.100.7".parse().unwrap(), 24, 0);
        assert_eq!(
            client_subnet(Some(&edns_with(dirty))),
            Err(EcsError::HostBitsSet)
        );
        let v6 = ClientSubnet::new("2001:db8:1::".parse().unwrap(), 48, 0);
        assert_eq!(client_subnet(Some(&edns_with(v6))), Ok(Some(v6)));
        let v6_dirty = ClientSubnet::new("2001:db8:1::1".parse().unwrap(), 48, 0);
        assert_eq!(
            client_subnet(Some(&edns_with(v6_dirty))),
            Err(EcsError::HostBitsSet)
        );
        assert_eq!(client_subnet(None), Ok(None));
    }

    #[test]
    fn zero_prefix_means_the_resolver_address() {
        let source: IpAddr = "192.0.2.1".parse().unwrap();
        let zero = ClientSubnet::new("0.0.0.0".parse().unwrap(), 0, 0);
        assert_eq!(client_address(Some(&zero), source), source);
        let net = ClientSubnet::new("203.0.113.0".parse().unwrap(), 24, 0);
        assert_eq!(
            client_address(Some(&net), source),
            "203.0.113.0".parse::<IpAddr>().unwrap()
        );
    }
}
