//! Client affinity by weighted rendezvous hashing (HRW).
//!
//! Each (client prefix, endpoint) pair gets a pseudo-random score scaled by the endpoint's
//! weight; the client takes the best-scoring endpoint. The same client always gets the
//! same order, an endpoint that leaves moves only its own clients, and over many clients
//! each endpoint wins a share proportional to its weight. The hash is spelled out here
//! (FNV-1a and SplitMix64), so every gto instance and every version agrees on it.

use std::net::IpAddr;

/// FNV-1a over bytes: a stable per-endpoint seed from its identity.
pub fn seed(pool: &str, member: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pool.bytes().chain([b'/']).chain(member.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of a 64-bit value.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash of a client's prefix (`v4`/`v6` bits of its address; the family is mixed in).
pub fn client_key(addr: IpAddr, v4: u8, v6: u8) -> u64 {
    let (bits, prefix, family) = match addr {
        IpAddr::V4(ip) => (u128::from(u32::from(ip)) << 96, v4.min(32), 4u64),
        IpAddr::V6(ip) => (u128::from(ip), v6.min(128), 6u64),
    };
    let masked = if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    };
    mix(mix((masked >> 64) as u64 ^ family) ^ masked as u64)
}

/// The weighted rendezvous score of an endpoint for a client: higher wins.
pub fn score(client: u64, seed: u64, weight: f64) -> f64 {
    // A uniform value in (0, 1) from the top 53 bits.
    let unit = ((mix(client ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_group_clients() {
        let a = client_key("198.51.100.7".parse().unwrap(), 24, 56);
        let b = client_key("198.51.100.200".parse().unwrap(), 24, 56);
        let c = client_key("198.51.101.7".parse().unwrap(), 24, 56);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let x = client_key("2001:db8:0:100::1".parse().unwrap(), 24, 56);
        let y = client_key("2001:db8:0:1ff::1".parse().unwrap(), 24, 56);
        assert_eq!(x, y, "same /56");
        assert_eq!(seed("p", "m"), seed("p", "m"));
        assert_ne!(seed("p", "m1"), seed("p", "m2"));
    }

    #[test]
    fn the_hash_is_pinned() {
        // Instances must agree: these values may never change.
        assert_eq!(seed("sma", "fra-1"), 0x669c_dfe1_93f2_f456);
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix(1), 0x910a_2dec_8902_5cc1);
    }
}
