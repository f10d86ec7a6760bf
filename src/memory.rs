//! Giving freed memory back to the system after the big, rare jobs (loading a zone,
//! building a preparation and its index): the binary's allocator keeps freed pages for a
//! while (reused at once by the query path, which is what keeps its latency low), so
//! whoever frees a zone's worth asks it to return what it holds then. The binary sets
//! how ([`set_trim`]); the library has no allocator of its own and no `unsafe` code.

use std::sync::OnceLock;

static TRIM: OnceLock<fn()> = OnceLock::new();

/// Sets what [`trim`] does: the binary's allocator returns the freed pages of the calling
/// thread (and those left by threads that ended). Once per process; later calls do nothing.
pub fn set_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Returns the calling thread's freed memory to the system, if the binary said how. Call
/// after a big job, never on the query path.
pub fn trim() {
    if let Some(trim) = TRIM.get() {
        trim();
    }
}
