//! The `contact-sync` binary: parse the command line, start logging, hand over to the
//! library. A panicking actor aborts the process (`panic = "abort"`), so systemd restarts
//! the whole unit instead of leaving a ghost.

use clap::Parser;

fn main() {
    let cli = contact_sync::cli::Cli::parse();
    let logging = contact_sync::logging::init();
    let code = contact_sync::app::run(cli, logging);
    std::process::exit(code);
}
