//! The open-file limit: raised to its hard limit at start, and the budget that sizes the
//! default TCP connection cap, so that idle connections from the internet can never take
//! the descriptors that health probes, the admin API and file writes need.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but TCP clients and probes: listeners, UDP workers,
/// the state file, zone and config reads, the runtime's own.
pub const RESERVED: u64 = 128;
/// The TCP connection cap never defaults above this.
pub const MAX_DEFAULT_TCP_CONNECTIONS: usize = 1024;
/// ... nor below this.
pub const MIN_DEFAULT_TCP_CONNECTIONS: usize = 16;

/// Raises the soft open-file limit to the hard limit; returns the soft limit now in force
/// (None when it cannot be read).
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Out of descriptors, buffers or memory here: a failure of this process's resources, not
/// of the peer (a probe's endpoint, a TCP client).
pub fn is_exhausted(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The soft open-file limit in force.
pub fn nofile() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The TCP connection cap when none is configured: what `nofile` descriptors leave after
/// the probes' (`probes`), the admin API's (`admin`) and [`RESERVED`], within
/// [`MIN_DEFAULT_TCP_CONNECTIONS`]..=[`MAX_DEFAULT_TCP_CONNECTIONS`].
pub fn default_tcp_connections(nofile: u64, probes: usize, admin: usize) -> usize {
    let spare = nofile.saturating_sub(RESERVED + probes as u64 + admin as u64);
    usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .clamp(MIN_DEFAULT_TCP_CONNECTIONS, MAX_DEFAULT_TCP_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_probes_and_admin() {
        // 1024 descriptors: 512 probes, 64 admin, 128 reserved leave 320.
        assert_eq!(default_tcp_connections(1024, 512, 64), 320);
        assert_eq!(default_tcp_connections(1 << 20, 512, 64), 1024);
        assert_eq!(default_tcp_connections(256, 512, 64), 16);
    }
}
