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
    /// ADDRESS has more or fewer octets than SOURCE PREFIX-LENGTH needs (RFC 7871
    /// section 6).
    #[error("address octets do not match the source prefix")]
    AddressLength,
}

impl EcsError {
    /// Stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EcsError::HostBitsSet => "ecs_host_bits",
            EcsError::PrefixTooLong => "ecs_prefix",
            EcsError::AddressLength => "ecs_address_length",
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

/// Checks the ECS option's data as the client sent it: ADDRESS must have exactly the
/// octets SOURCE PREFIX-LENGTH needs (RFC 7871 section 6: FORMERR otherwise). hickory
/// reads a longer ADDRESS without complaint, so the wire form is checked here.
pub fn check_raw(data: &[u8]) -> Result<(), EcsError> {
    match data.get(2) {
        Some(&source) if data.len() == 4 + usize::from(source).div_ceil(8) => Ok(()),
        _ => Err(EcsError::AddressLength),
    }
}

/// The echo of an option that is answered with FORMERR: FAMILY, SOURCE PREFIX-LENGTH
/// and ADDRESS copied byte for byte from the query, SCOPE PREFIX-LENGTH 0.
pub fn echo_raw(data: &[u8]) -> EdnsOption {
    let mut echo = data.to_vec();
    if let Some(scope) = echo.get_mut(3) {
        *scope = 0;
    }
    EdnsOption::Unknown(u16::from(EdnsCode::Subnet), echo)
}

/// The data of the first ECS option of a DNS message as it is on the wire, if the
/// message carries one: the header's counts are followed through the question and
/// records to the OPT record. None for a message that does not read that far.
pub fn raw_option(message: &[u8]) -> Option<&[u8]> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ])))
    };
    let skip_name = |mut pos: usize| -> Option<usize> {
        loop {
            let len = *message.get(pos)?;
            match len {
                0 => return Some(pos + 1),
                l if l & 0xc0 == 0xc0 => return Some(pos + 2),
                l if l > 63 => return None,
                l => pos += 1 + usize::from(l),
            }
        }
    };
    let (questions, answers, authorities, additionals) =
        (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(pos)? + 4;
    }
    for index in 0..answers + authorities + additionals {
        pos = skip_name(pos)?;
        let rtype = count(pos)?;
        let rdlength = count(pos + 8)?;
        let rdata = message.get(pos + 10..pos + 10 + rdlength)?;
        pos += 10 + rdlength;
        if index < answers + authorities || rtype != 41 {
            continue;
        }
        let mut at = 0;
        while at + 4 <= rdata.len() {
            let code = u16::from_be_bytes([rdata[at], rdata[at + 1]]);
            let len = usize::from(u16::from_be_bytes([rdata[at + 2], rdata[at + 3]]));
            let data = rdata.get(at + 4..at + 4 + len)?;
            if code == u16::from(EdnsCode::Subnet) {
                return Some(data);
            }
            at += 4 + len;
        }
        return None;
    }
    None
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
    fn raw_options_are_found_and_checked_as_sent() {
        // Header (1 question, 1 additional), question a. A IN, OPT with ECS 192.0.2/24
        // written with four address octets.
        let mut message = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        message.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
        message.extend_from_slice(&[0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 12]);
        message.extend_from_slice(&[0, 8, 0, 8, 0, 1, 24, 0, 192, 0, 2, 0]);
        let raw = raw_option(&message).unwrap();
        assert_eq!(raw, &[0, 1, 24, 0, 192, 0, 2, 0]);
        assert_eq!(check_raw(raw), Err(EcsError::AddressLength));
        assert_eq!(check_raw(&[0, 1, 24, 0, 192, 0, 2]), Ok(()));
        assert_eq!(check_raw(&[0, 1, 0, 0]), Ok(()));
        assert_eq!(
            check_raw(&[0, 1, 24, 0, 192, 0]),
            Err(EcsError::AddressLength)
        );
        let EdnsOption::Unknown(8, echoed) = echo_raw(&[0, 1, 24, 7, 192, 0, 2, 0]) else {
            panic!("not a raw option");
        };
        assert_eq!(echoed, vec![0, 1, 24, 0, 192, 0, 2, 0]);
        // Cut short anywhere: nothing, and no panic.
        for end in 0..message.len() {
            assert_eq!(raw_option(&message[..end]), None);
        }
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
