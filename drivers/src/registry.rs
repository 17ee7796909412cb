//! Driver names to factories, and the options a factory is given.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::{DriverError, DriverResult, VolumeDriver};

/// A service's driver options, as written in the controller's config
/// (`[services.options]`), every value as a string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverOptions(BTreeMap<String, String>);

impl DriverOptions {
    /// Wraps a map of options.
    pub fn new(options: BTreeMap<String, String>) -> Self {
        Self(options)
    }

    /// One option, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// One option that must be given.
    pub fn require(&self, key: &str) -> DriverResult<&str> {
        self.get(key).ok_or_else(|| DriverError::InvalidOption {
            option: key.to_owned(),
            reason: "is required".to_owned(),
        })
    }

    /// Refuses any option not in `known`, so a typo stops start-up instead of
    /// being ignored.
    pub fn only(&self, known: &[&str]) -> DriverResult<()> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(DriverError::InvalidOption {
                option: unknown.clone(),
                reason: format!(
                    "is not an option of this driver (known: {})",
                    known.join(", ")
                ),
            }),
            None => Ok(()),
        }
    }

    /// Every option.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Builds a driver instance for one service from its options.
pub type DriverFactory =
    Arc<dyn Fn(&DriverOptions) -> DriverResult<Arc<dyn VolumeDriver>> + Send + Sync>;

/// Checks a service's driver options without building the driver or
/// touching storage (for `berthd check-config`).
pub type OptionsCheck = Arc<dyn Fn(&DriverOptions) -> DriverResult<()> + Send + Sync>;

/// Driver name to factory. The controller builds one driver per configured
/// service through it; custom controller binaries register their own drivers
/// next to the built-ins.
#[derive(Clone, Default)]
pub struct DriverRegistry {
    factories: BTreeMap<String, DriverFactory>,
    checks: BTreeMap<String, OptionsCheck>,
}

impl DriverRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the built-in drivers (`vfs`, `image`).
    pub fn with_builtin() -> Self {
        let mut registry = Self::new();
        registry.register_checked(
            crate::vfs::DRIVER_NAME,
            |options| {
                Ok(Arc::new(crate::vfs::VfsDriver::from_options(options)?)
                    as Arc<dyn VolumeDriver>)
            },
            crate::vfs::VfsDriver::check_options,
        );
        registry.register_checked(
            crate::image::DRIVER_NAME,
            |options| {
                Ok(Arc::new(crate::image::ImageDriver::from_options(options)?)
                    as Arc<dyn VolumeDriver>)
            },
            crate::image::ImageDriver::check_options,
        );
        registry
    }

    /// Registers (or replaces) the factory for `driver`. Its options are
    /// checked only when it is built ([`check`](Self::check) accepts any);
    /// [`register_checked`](Self::register_checked) adds a check that
    /// needs no storage.
    pub fn register<F>(&mut self, driver: &str, factory: F) -> &mut Self
    where
        F: Fn(&DriverOptions) -> DriverResult<Arc<dyn VolumeDriver>> + Send + Sync + 'static,
    {
        self.factories.insert(driver.to_owned(), Arc::new(factory));
        self.checks.remove(driver);
        self
    }

    /// Registers (or replaces) the factory for `driver` with `check`, which
    /// refuses bad options the way the factory would, without creating or
    /// touching anything (`berthd check-config` calls it).
    pub fn register_checked<F, C>(&mut self, driver: &str, factory: F, check: C) -> &mut Self
    where
        F: Fn(&DriverOptions) -> DriverResult<Arc<dyn VolumeDriver>> + Send + Sync + 'static,
        C: Fn(&DriverOptions) -> DriverResult<()> + Send + Sync + 'static,
    {
        self.register(driver, factory);
        self.checks.insert(driver.to_owned(), Arc::new(check));
        self
    }

    /// Checks `options` for `driver` without building it: `None` if no such
    /// driver is registered, `Ok(())` for a driver registered without a
    /// check.
    pub fn check(&self, driver: &str, options: &DriverOptions) -> Option<DriverResult<()>> {
        self.factories.get(driver)?;
        Some(match self.checks.get(driver) {
            Some(check) => check(options),
            None => Ok(()),
        })
    }

    /// The registered driver names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds a `driver` instance with `options`; `None` if no such driver is
    /// registered.
    pub fn build(
        &self,
        driver: &str,
        options: &DriverOptions,
    ) -> Option<DriverResult<Arc<dyn VolumeDriver>>> {
        self.factories.get(driver).map(|factory| factory(options))
    }
}

impl fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}
