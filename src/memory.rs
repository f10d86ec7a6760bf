//! Giving freed memory back to the system after the big, rare jobs: the builder trims
//! once a preparation and its fast path's index are in place, and when it drops a
//! reload's old snapshot. The binary's allocator keeps freed pages for a while otherwise
//! (reused at once by the query path, which is what keeps that path free of system
//! calls), and an idle builder would hold a zone's worth of them. The binary sets how
//! ([`set_trim`]); the library has no allocator of its own and no `unsafe` code.

use std::sync::OnceLock;

static TRIM: OnceLock<fn()> = OnceLock::new();

/// Sets what [`trim`] does: the binary's allocator returns the free memory it holds.
/// Once per process; later calls do nothing.
pub fn set_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Returns freed memory to the system, if the binary said how. Call after a big job,
/// never on the query path.
pub fn trim() {
    if let Some(trim) = TRIM.get() {
        trim();
    }
}
