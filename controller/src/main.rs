//! `berthd`: the Berth controller with the built-in drivers.

#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: listing a million volumes spent
/// half of berthd's time in glibc's allocator (a few short-lived strings
/// per record); see the README's Performance section for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match berth_controller::cli::main(berth_drivers::DriverRegistry::with_builtin()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", berth_controller::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
