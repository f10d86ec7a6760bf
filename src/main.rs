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
    gto::cli::run::main(gto::cli::Cli::parse())
}
