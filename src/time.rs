//! Wall-clock helpers every layer shares: Unix seconds, the latest time gto keeps
//! ([`MAX_UNIX`]) and RFC 3339 for people. At the ground: imports nothing of the crate.

use std::time::{Duration, SystemTime};

/// Seconds since the Unix epoch.
pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

/// The last second of the year 9999: the latest time gto keeps, shows or writes (RFC 3339
/// has four-digit years).
pub const MAX_UNIX: u64 = 253_402_300_799;

/// The time a Unix timestamp stands for, with times past [`MAX_UNIX`] taken as
/// [`MAX_UNIX`] (records are validated on load, so this only guards).
pub fn from_unix_clamped(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.min(MAX_UNIX))
}

/// RFC 3339 in UTC, to the second; times past [`MAX_UNIX`] (which never enter: drains are
/// bounded and state files are validated) show as its last second rather than panic.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time.min(max_time())).to_string()
}

/// [`rfc3339`] of a Unix timestamp.
pub fn rfc3339_unix(seconds: u64) -> String {
    rfc3339(from_unix_clamped(seconds))
}

/// The latest time gto accepts anywhere (see [`MAX_UNIX`]).
pub fn max_time() -> SystemTime {
    from_unix_clamped(MAX_UNIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_the_last_second_show_as_it() {
        assert_eq!(rfc3339_unix(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix(from_unix_clamped(1_700_000_000)), 1_700_000_000);
    }
}
