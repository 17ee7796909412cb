//! A custom controller: `berthd` with one more driver, registered next to
//! the built-ins. The driver is written against `berth-drivers` alone, as an
//! out-of-tree driver would be.
//!
//! ```sh
//! cargo run -p berth-controller --example custom_berthd -- --config scratch.toml
//! # scratch.toml:
//! #   [[services]]
//! #   name = "scratch"
//! #   driver = "counted"
//! #   [services.options]
//! #   root = "/tmp/scratch"
//! #   max_volumes = "3"
//! ```

use std::sync::Arc;

use berth_drivers::vfs::VfsDriver;
use berth_drivers::{
    async_trait, CreateRequest, DriverError, DriverOptions, DriverRegistry, DriverResult,
    DriverVolume, VolumeDriver, VolumeName,
};

/// Directories like `vfs`, but at most `max_volumes` of them.
struct CountedDriver {
    inner: VfsDriver,
    max: usize,
    /// The controller runs creates of different names in parallel; the
    /// count-then-create below must not.
    creating: tokio::sync::Mutex<()>,
}

impl CountedDriver {
    fn from_options(options: &DriverOptions) -> DriverResult<Self> {
        options.only(&["root", "max_volumes"])?;
        let max =
            options
                .require("max_volumes")?
                .parse()
                .map_err(|_| DriverError::InvalidOption {
                    option: "max_volumes".into(),
                    reason: "must be a whole number".into(),
                })?;
        let root =
            DriverOptions::new([("root".to_owned(), options.require("root")?.to_owned())].into());
        Ok(Self {
            inner: VfsDriver::from_options(&root)?,
            max,
            creating: tokio::sync::Mutex::new(()),
        })
    }
}

#[async_trait]
impl VolumeDriver for CountedDriver {
    fn name(&self) -> &str {
        "counted"
    }

    async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let _one_at_a_time = self.creating.lock().await;
        if self.inner.get(&request.name).await?.is_none()
            && self.inner.list().await?.len() >= self.max
        {
            return Err(DriverError::FailedPrecondition(format!(
                "this service holds at most {} volumes",
                self.max
            )));
        }
        self.inner.create(request).await
    }

    async fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        self.inner.delete(name).await
    }

    async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
        self.inner.get(name).await
    }

    async fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        self.inner.list().await
    }
}

fn main() -> anyhow::Result<()> {
    let mut registry = DriverRegistry::with_builtin();
    registry.register("counted", |options| {
        Ok(Arc::new(CountedDriver::from_options(options)?) as Arc<dyn VolumeDriver>)
    });
    berth_controller::cli::main(registry)
}
