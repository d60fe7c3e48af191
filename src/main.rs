//! The one binary: parse the command line, load the settings, run the
//! command (`registrar::cli`).

use std::process::ExitCode;

use clap::Parser;
use registrar::{
    cli::{self, Cli},
    config::Settings,
};

/// mimalloc instead of the system allocator: the request path allocates
/// many small short-lived buffers, and glibc malloc showed as ~15% of the
/// server's CPU in a profile of the race benchmark (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (dir, env) = registrar::config::environment();
    for note in registrar::config::notes(&dir, &env) {
        eprintln!("warning: {note}");
    }
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
