//! The `contact-sync` binary: parse the command line, start logging, hand over to the
//! library. A panicking actor aborts the process (`panic = "abort"`), so systemd restarts
//! the whole unit instead of leaving a ghost.

use clap::Parser;

/// mimalloc instead of glibc's malloc: planning and sled's copy-on-write pages allocate and
/// free small blocks at a high rate, and glibc's allocator took about a third of the CPU of
/// a round (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    contact_sync::alloc::tune();
    let cli = contact_sync::cli::Cli::parse();
    let logging = contact_sync::logging::init();
    let code = contact_sync::app::run(cli, logging);
    std::process::exit(code);
}
