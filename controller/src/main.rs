//! `berthd`: the Berth controller with the built-in drivers.

fn main() -> anyhow::Result<()> {
    berth_controller::cli::main(berth_drivers::DriverRegistry::with_builtin())
}
