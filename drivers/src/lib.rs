//! `berth-drivers`: everything a Berth volume driver needs, and nothing else.
//!
//! A driver author depends on this crate alone: it holds the
//! [`VolumeDriver`] trait, the types the trait speaks in ([`CreateRequest`],
//! [`DriverVolume`], [`Capabilities`], [`VolumeName`]), its error type
//! [`DriverError`], the [`DriverRegistry`] through which the controller builds
//! drivers from configuration, and the built-in drivers ([`vfs`]). It has no
//! gRPC or server dependency.
//!
//! Read [`VolumeDriver`]'s contract first: idempotency, durability and
//! concurrency rules every driver keeps.

#[cfg(feature = "conformance")]
pub mod conformance;
mod driver;
pub mod durable;
mod error;
pub mod image;
mod name;
mod registry;
pub mod vfs;

pub use driver::{
    Attachment, Capabilities, CreateRequest, DriverSnapshot, DriverVolume, VolumeDriver,
};
pub use error::{DriverError, DriverResult};
pub use name::{InvalidName, VolumeName, MAX_NAME_LEN, NAME_RULE};
pub use registry::{DriverFactory, DriverOptions, DriverRegistry};

/// Re-exported so drivers implement the trait with the same macro version.
pub use async_trait::async_trait;
