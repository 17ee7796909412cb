//! `berth`: the Berth command-line client. The library (`berth_client`)
//! talks to the controller; this binary parses the command line
//! ([`cli`]), runs one command ([`commands`]) and reports how it went.

use std::process::ExitCode;

use berth_client::report;
use clap::{CommandFactory as _, FromArgMatches as _};

mod cli;
mod commands;
mod progress;

fn main() -> ExitCode {
    let cli = parse_command_line();
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

/// What `Cli::parse()` does (the same help, errors and exit codes), but the
/// tree of every command and argument clap built is not freed: the process
/// ends soon after, and freeing it was a third of clap's cost in a cold
/// `berth volume list` (callgrind).
fn parse_command_line() -> cli::Cli {
    let mut command = cli::Cli::command();
    let mut matches = command.get_matches_mut();
    let parsed = cli::Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command));
    std::mem::forget(command);
    std::mem::forget(matches);
    parsed.unwrap_or_else(|e| e.exit())
}
