//! Drivers hosted out of process: storage served by another program that
//! `berthd` talks to, put behind Berth's TLS, credentials, authorisation,
//! catalogue and journal.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`csi`] | the `csi` driver: any CSI plugin's controller service on a unix socket |
//!
//! They live in the controller, not in `berth-drivers`, so that a Rust
//! driver author's crate does not carry a gRPC client. [`register`] adds
//! them to a registry.

pub mod csi;

use berth_drivers::DriverRegistry;

/// Adds the hosted drivers (`csi`) to `registry`, unless a driver of the
/// same name is already registered there (a custom controller's own wins).
pub fn register(registry: &mut DriverRegistry) {
    if !registry.names().any(|n| n == csi::DRIVER_NAME) {
        registry.register(csi::DRIVER_NAME, csi::CsiDriver::factory);
    }
}
