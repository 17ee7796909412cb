//! `berth-drivers`: everything a Berth volume driver needs, and nothing else.
//!
//! A driver author depends on this crate alone: it holds the
//! [`VolumeDriver`] trait, the types the trait speaks in ([`CreateRequest`],
//! [`DriverVolume`], [`Capabilities`], [`Attachment`], [`DriverSnapshot`],
//! [`VolumeName`]), its error type [`DriverError`], the [`DriverRegistry`]
//! through which the controller builds drivers from configuration, the
//! built-in drivers ([`vfs`], [`image`]) and, behind the `conformance`
//! feature, the [`conformance`] kit that tells you whether your driver
//! behaves. It has no gRPC or server dependency.
//!
//! # Where things live
//!
//! | module | what it is |
//! | --- | --- |
//! | `driver` | the [`VolumeDriver`] trait and the types it speaks in |
//! | `error` | [`DriverError`], and [`echo`] for quoting input in messages |
//! | `name` | [`VolumeName`]: the one naming rule |
//! | `progress` | [`Progress`]: how a long operation reports bytes done |
//! | `registry` | [`DriverRegistry`]: building drivers from configuration |
//! | [`file`] | what the file-backed drivers share: layout, metadata files, durable writes |
//! | [`vfs`] | the built-in `vfs` driver: volumes as directories |
//! | [`image`] | the built-in `image` driver: volumes as raw or qcow2 image files |
//! | `conformance` | (feature `conformance`) the checks every driver must pass |
//!
//! Unsafe code is denied crate-wide; two functions in [`file::durable`]
//! allow it, each for one documented libc call (`getrlimit`, and `lseek`
//! with `SEEK_DATA`).
//!
//! # A complete driver
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//!
//! use berth_drivers::{
//!     async_trait, echo, CreateRequest, DriverError, DriverOptions, DriverRegistry, DriverResult,
//!     DriverVolume, VolumeDriver, VolumeName,
//! };
//!
//! /// Volumes that live in memory: a toy, but a correct one.
//! #[derive(Default)]
//! pub struct MemoryDriver {
//!     volumes: Mutex<BTreeMap<VolumeName, u64>>,
//! }
//!
//! impl MemoryDriver {
//!     fn volume(name: &VolumeName, size_bytes: u64) -> DriverVolume {
//!         DriverVolume { name: name.clone(), size_bytes, fields: BTreeMap::new() }
//!     }
//! }
//!
//! #[async_trait]
//! impl VolumeDriver for MemoryDriver {
//!     fn name(&self) -> &str {
//!         "memory"
//!     }
//!
//!     async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
//!         if let Some(key) = request.options.keys().next() {
//!             // Echo user input through `echo`: quoted, escaped, cut short.
//!             return Err(DriverError::InvalidArgument(format!("unknown option {}", echo(key))));
//!         }
//!         let mut volumes = self.volumes.lock().map_err(|_| DriverError::Internal("poisoned".into()))?;
//!         match volumes.get(&request.name) {
//!             // Idempotent: the same request again returns the same volume.
//!             Some(&size) if size == request.size_bytes => Ok(Self::volume(&request.name, size)),
//!             Some(&size) => Err(DriverError::AlreadyExists(format!(
//!                 "volume {} exists with size {size}",
//!                 request.name
//!             ))),
//!             None => {
//!                 volumes.insert(request.name.clone(), request.size_bytes);
//!                 Ok(Self::volume(&request.name, request.size_bytes))
//!             }
//!         }
//!     }
//!
//!     async fn delete(&self, name: &VolumeName) -> DriverResult<()> {
//!         // Deleting what is not there is fine: orchestrators retry.
//!         self.volumes.lock().map_err(|_| DriverError::Internal("poisoned".into()))?.remove(name);
//!         Ok(())
//!     }
//!
//!     async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
//!         let volumes = self.volumes.lock().map_err(|_| DriverError::Internal("poisoned".into()))?;
//!         Ok(volumes.get(name).map(|&size| Self::volume(name, size)))
//!     }
//!
//!     async fn list(&self) -> DriverResult<Vec<DriverVolume>> {
//!         let volumes = self.volumes.lock().map_err(|_| DriverError::Internal("poisoned".into()))?;
//!         Ok(volumes.iter().map(|(n, &s)| Self::volume(n, s)).collect())
//!     }
//!     // attach, snapshots and copy are optional: the defaults answer
//!     // `DriverError::Unsupported`, and `capabilities()` says none.
//! }
//!
//! // A controller builds one instance per configured service from its options.
//! let mut registry = DriverRegistry::with_builtin();
//! registry.register("memory", |options: &DriverOptions| {
//!     options.only(&[])?; // this driver takes no options: refuse typos
//!     Ok(Arc::new(MemoryDriver::default()) as Arc<dyn VolumeDriver>)
//! });
//! assert!(registry.names().any(|n| n == "memory"));
//! ```
//!
//! To serve it, a custom controller binary passes that registry to
//! `berth_controller::cli::main` (see `controller/examples/custom_berthd.rs`
//! in the repository); to test it, run [`conformance::run`] from a test with
//! the `conformance` feature on.
//!
//! # The contract, method by method
//!
//! Read [`VolumeDriver`]'s documentation: which calls must be idempotent,
//! which error to return when, what must be durable before returning, and
//! what may run concurrently.

#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod driver;
mod error;
pub mod file;
pub mod image;
mod name;
mod progress;
mod registry;
pub mod vfs;

pub use driver::{
    Attachment, Capabilities, CreateRequest, DriverSnapshot, DriverVolume, VolumeDriver,
};
pub use error::{echo, DriverError, DriverResult, ECHO_LIMIT};
pub use name::{InvalidName, VolumeName, MAX_NAME_LEN, NAME_RULE};
pub use progress::Progress;
pub use registry::{DriverFactory, DriverOptions, DriverRegistry, OptionsCheck};

/// Re-exported so drivers implement the trait with the same macro version.
pub use async_trait::async_trait;
