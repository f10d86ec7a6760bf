//! Response rate limiting (RRL) on UDP: a fixed-size, lock-free table of rate buckets.
//!
//! Why: an authoritative server answers whoever asks, and over UDP the asker's address can
//! be forged, so a flood of small queries "from" a victim turns into a flood of larger
//! answers at the victim. RRL caps what one client prefix gets for one kind of response;
//! limited responses are dropped, except every `slip`-th which goes out empty with TC set,
//! so that a real client (whose address was not forged) retries over TCP and is answered.
//! See [`RrlSettings`] for the knobs and their defaults.
//!
//! How: each key (client prefix, response class, and for answers and NODATA the name and
//! type) hashes with a per-process random key to one slot of a table of `AtomicU64`s. A
//! slot holds a 16-bit tag of the key and the key's *theoretical arrival time* in
//! microseconds (GCRA, the token bucket written as one timestamp): a response is allowed
//! when that time is at most `burst - 1` intervals ahead of now, and then moves it one
//! interval on. One compare-and-swap per response, no lock, no allocation, and memory fixed
//! at 8 bytes per slot whatever the traffic (random sources or names only churn slots). A
//! key that finds another key's tag takes the slot over with a full bucket.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::rr::Name;
use ipnet::IpNet;
use tokio::time::Instant;

use crate::config::RrlSettings;

/// Bits of a slot holding the theoretical arrival time (µs since the limiter started:
/// about 8.9 years).
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// What kind of response a key counts, as BIND's RRL classes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// NOERROR with records in the answer section: keyed by name and type.
    Answer,
    /// Any other response code (REFUSED, FORMERR, NOTIMP, ...): keyed by prefix only.
    Error,
    /// NOERROR without answers: keyed by name.
    NoData,
    /// NXDOMAIN: keyed by prefix only, so a flood of random names shares one bucket.
    NxDomain,
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it: send nothing.
    Drop,
    /// Send it.
    Send,
    /// Send it empty with TC set.
    Slip,
}

/// The rate limiter one config's snapshots share.
#[derive(Debug)]
pub struct RateLimiter {
    slots: Box<[AtomicU64]>,
    /// Keyed per process (foldhash with a random seed: a few nanoseconds per response
    /// rather than SipHash's few dozen; a collision only lets two keys share a slot).
    hasher: foldhash::quality::RandomState,
    /// Microseconds per response at the allowed rate.
    interval: u64,
    /// How far ahead of now a key's time may run and still send: `(burst - 1) × interval`.
    tolerance: u64,
    slip: u64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    exempt: Exempt,
    /// Limited responses so far, to pick every `slip`-th.
    limited: AtomicU64,
    started: Instant,
}

/// Networks whose clients are never limited, as (network, mask) bits per family: a
/// check per response is a few integer comparisons.
#[derive(Debug, Default)]
struct Exempt {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Exempt {
    fn new(nets: &[IpNet]) -> Self {
        let mut exempt = Self::default();
        for net in nets {
            match net {
                IpNet::V4(net) => exempt
                    .v4
                    .push((u32::from(net.network()), u32::from(net.netmask()))),
                IpNet::V6(net) => exempt
                    .v6
                    .push((u128::from(net.network()), u128::from(net.netmask()))),
            }
        }
        exempt
    }

    fn holds(&self, source: IpAddr) -> bool {
        match source {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip);
                self.v4.iter().any(|&(net, mask)| bits & mask == net)
            }
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                self.v6.iter().any(|&(net, mask)| bits & mask == net)
            }
        }
    }
}

impl RateLimiter {
    /// A limiter for `settings`, or None when rate limiting is off.
    pub fn new(settings: &RrlSettings) -> Option<Self> {
        if !settings.enabled {
            return None;
        }
        let interval = 1_000_000 / u64::from(settings.responses_per_second.max(1));
        Some(Self {
            slots: (0..settings.buckets.max(1).next_power_of_two())
                .map(|_| AtomicU64::new(0))
                .collect(),
            hasher: foldhash::quality::RandomState::default(),
            interval: interval.max(1),
            tolerance: interval * u64::from(settings.burst.max(1) - 1),
            slip: u64::from(settings.slip),
            ipv4_prefix: settings.ipv4_prefix,
            ipv6_prefix: settings.ipv6_prefix,
            exempt: Exempt::new(&settings.exempt),
            limited: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// The verdict for one response to `source`. `name` is the lower-cased wire form of
    /// the query name (as the fast path keys its index); it and `qtype` count only for the
    /// classes keyed by them.
    pub fn check(&self, source: IpAddr, class: ResponseClass, name: &[u8], qtype: u16) -> Verdict {
        if self.exempt.holds(source) {
            return Verdict::Send;
        }
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.check_at(source, class, name, qtype, now)
    }

    /// [`RateLimiter::check`] at `now` microseconds after the limiter started.
    pub fn check_at(
        &self,
        source: IpAddr,
        class: ResponseClass,
        name: &[u8],
        qtype: u16,
        now: u64,
    ) -> Verdict {
        let hash = self.key_hash(source, class, name, qtype);
        let tag = hash >> TIME_BITS;
        let mask = self.slots.len() - 1;
        let Some(slot) = self.slots.get((hash as usize) & mask) else {
            return Verdict::Send;
        };
        let now = now & TIME_MASK;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            // A slot of another key (or empty) starts full: its time is now.
            let arrival = if current >> TIME_BITS == tag && current != 0 {
                (current & TIME_MASK).max(now)
            } else {
                now
            };
            if arrival > now + self.tolerance {
                return self.limit();
            }
            let next = (tag << TIME_BITS) | ((arrival + self.interval) & TIME_MASK);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Verdict::Send,
                Err(seen) => current = seen,
            }
        }
    }

    fn limit(&self) -> Verdict {
        let count = self.limited.fetch_add(1, Ordering::Relaxed);
        if self.slip > 0 && count.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    fn key_hash(&self, source: IpAddr, class: ResponseClass, name: &[u8], qtype: u16) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        match source {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip)
                    & u32::MAX
                        .checked_shl(32 - u32::from(self.ipv4_prefix))
                        .unwrap_or(0);
                hasher.write_u8(4);
                hasher.write_u32(bits);
            }
            IpAddr::V6(ip) => {
                let shift = 128 - u32::from(self.ipv6_prefix);
                let bits = u128::from(ip) & u128::MAX.checked_shl(shift).unwrap_or(0);
                hasher.write_u8(6);
                hasher.write_u128(bits);
            }
        }
        match class {
            ResponseClass::Answer => {
                hasher.write_u8(0);
                hasher.write(name);
                hasher.write_u16(qtype);
            }
            ResponseClass::NoData => {
                hasher.write_u8(1);
                hasher.write(name);
            }
            ResponseClass::NxDomain => hasher.write_u8(2),
            ResponseClass::Error => hasher.write_u8(3),
        }
        hasher.finish()
    }
}

/// The lower-cased wire form of `name`, as the fast path keys names.
pub fn name_key(name: &Name) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        key.push(label.len() as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key.push(0);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, slip: u32) -> RateLimiter {
        let settings = RrlSettings {
            responses_per_second: rate,
            burst,
            slip,
            exempt: Vec::new(),
            ..RrlSettings::default()
        };
        RateLimiter::new(&settings).unwrap()
    }

    const NAME: &[u8] = b"\x03vpn\x03gto\x07example\x03com\x00";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_key_sends_its_burst_then_its_rate() {
        let rrl = limiter(10, 5, 0);
        let client = ip("192.0.2.1");
        let sent = |now| rrl.check_at(client, ResponseClass::Answer, NAME, 1, now);
        for _ in 0..5 {
            assert_eq!(sent(0), Verdict::Send);
        }
        assert_eq!(sent(0), Verdict::Drop);
        // One interval (100 ms) later exactly one more is allowed.
        assert_eq!(sent(99_999), Verdict::Drop);
        assert_eq!(sent(100_000), Verdict::Send);
        assert_eq!(sent(100_000), Verdict::Drop);
        // Over ten seconds of steady asking, ten per second.
        let mut count = 0;
        for step in 0..10_000u64 {
            if sent(1_000_000 + step * 1_000) == Verdict::Send {
                count += 1;
            }
        }
        assert!((100..=105).contains(&count), "{count} sent in 10 s at 10/s");
    }

    #[test]
    fn keys_are_prefixes_names_and_classes() {
        let rrl = limiter(1, 1, 0);
        let send = |source: &str, class, name: &[u8], qtype| {
            rrl.check_at(ip(source), class, name, qtype, 0)
        };
        assert_eq!(
            send("192.0.2.1", ResponseClass::Answer, NAME, 1),
            Verdict::Send
        );
        // Same /24: the same client.
        assert_eq!(
            send("192.0.2.200", ResponseClass::Answer, NAME, 1),
            Verdict::Drop
        );
        // Another /24, another type, another name, another class: other keys.
        assert_eq!(
            send("192.0.3.1", ResponseClass::Answer, NAME, 1),
            Verdict::Send
        );
        assert_eq!(
            send("192.0.2.1", ResponseClass::Answer, NAME, 28),
            Verdict::Send
        );
        assert_eq!(
            send("192.0.2.1", ResponseClass::Answer, b"\x01x\x00", 1),
            Verdict::Send
        );
        assert_eq!(
            send("192.0.2.1", ResponseClass::NxDomain, NAME, 1),
            Verdict::Send
        );
        // NXDOMAIN ignores the name: random names share the bucket.
        assert_eq!(
            send("192.0.2.1", ResponseClass::NxDomain, b"\x01y\x00", 1),
            Verdict::Drop
        );
        // IPv6 clients are /56s.
        assert_eq!(
            send("2001:db8:0:1::1", ResponseClass::Error, b"", 0),
            Verdict::Send
        );
        assert_eq!(
            send("2001:db8:0:ff::2", ResponseClass::Error, b"", 0),
            Verdict::Drop
        );
        assert_eq!(
            send("2001:db8:0:100::1", ResponseClass::Error, b"", 0),
            Verdict::Send
        );
    }

    #[test]
    fn slip_truncates_every_nth_limited_response() {
        let rrl = limiter(1, 1, 3);
        let client = ip("198.51.100.7");
        assert_eq!(
            rrl.check_at(client, ResponseClass::Answer, NAME, 1, 0),
            Verdict::Send
        );
        let verdicts: Vec<Verdict> = (0..6)
            .map(|_| rrl.check_at(client, ResponseClass::Answer, NAME, 1, 0))
            .collect();
        use Verdict::{Drop, Slip};
        assert_eq!(verdicts, [Slip, Drop, Drop, Slip, Drop, Drop]);
        let all = limiter(1, 1, 1);
        all.check_at(client, ResponseClass::Answer, NAME, 1, 0);
        assert!((0..5).all(|_| all.check_at(client, ResponseClass::Answer, NAME, 1, 0) == Slip));
    }

    #[test]
    fn exempt_sources_and_disabled_limiting_always_send() {
        let settings = RrlSettings {
            responses_per_second: 1,
            burst: 1,
            ..RrlSettings::default()
        };
        let rrl = RateLimiter::new(&settings).unwrap();
        for source in ["127.0.0.1", "127.9.9.9", "::1"] {
            assert!((0..100).all(|_| rrl.check(ip(source), ResponseClass::Answer, NAME, 1)
                == Verdict::Send));
        }
        // Just outside the exempt networks: limited after the burst.
        for source in ["128.0.0.1", "126.255.255.255", "::2", "2001:db8::1"] {
            assert!(
                (0..100).any(|_| rrl.check(ip(source), ResponseClass::Answer, NAME, 1)
                    != Verdict::Send),
                "{source}"
            );
        }
        let off = RrlSettings {
            enabled: false,
            ..settings
        };
        assert!(RateLimiter::new(&off).is_none());
    }

    #[test]
    fn memory_stays_fixed_under_random_keys() {
        let rrl = limiter(5, 5, 2);
        let slots = rrl.slots.len();
        let mut sent = 0;
        for i in 0..200_000u32 {
            let source = IpAddr::from((0xC000_0000u32 | i << 8).to_be_bytes());
            let name = i.to_be_bytes();
            if rrl.check_at(source, ResponseClass::Answer, &name, 1, u64::from(i)) == Verdict::Send
            {
                sent += 1;
            }
        }
        // Every key is new, so every response is sent; the table did not grow.
        assert_eq!(sent, 200_000);
        assert_eq!(rrl.slots.len(), slots);
    }

    #[test]
    fn name_keys_are_lower_cased_wire_names() {
        let name = Name::from_ascii("VPN.Gto.example.COM.").unwrap();
        assert_eq!(name_key(&name), NAME);
        assert_eq!(name_key(&Name::root()), b"\x00");
    }
}
