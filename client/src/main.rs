//! `berth`: the Berth command-line client. The library (`berth_client`)
//! talks to the controller; this binary parses the command line
//! ([`cli`]), runs one command ([`commands`]) and reports how it went.

use std::process::ExitCode;

use berth_client::report;
use clap::Parser;

mod cli;
mod commands;
mod progress;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(&cli.globals, &cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Display only, never `{:?}`: a user error is never printed
            // with a backtrace, whatever RUST_BACKTRACE says.
            eprintln!("error: {}", report::for_person(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
