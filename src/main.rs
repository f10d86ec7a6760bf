//! The `gto` binary: parses the command line and hands it to [`gto::cli::run::main`]
//! (logging, loading the config with exit 64 if it is bad, serving until a signal says
//! stop).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not the system allocator: glibc keeps what a reload frees in per-thread arenas
/// (each reload reads in a new thread), so a 200k-record zone grew RSS by a zone's worth
/// per reload; mimalloc reuses and returns it (figures in the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    return_freed_memory_promptly();
    gto::cli::run::main(gto::cli::Cli::parse())
}

/// mimalloc's `purge_delay` (its option 15; the Rust binding names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc give freed pages back to the system at once (purge delay 0; its default is
/// 1 s, and a thread purges only when it next allocates): building a big zone's snapshot
/// frees tens of MiB of scratch in threads that then sit idle, and kept them. A
/// 200,000-record zone: RSS 145 MiB after the first load with the default, 109 MiB with
/// this (`benches/bigzone/run.py`).
#[allow(unsafe_code)]
fn return_freed_memory_promptly() {
    // SAFETY: sets one of mimalloc's global options (a plain integer store); no pointer
    // is passed, and the option only changes when freed memory is returned.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}
