//! `berthd`: the Berth controller with the built-in drivers.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match berth_controller::cli::main(berth_drivers::DriverRegistry::with_builtin()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", berth_controller::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
