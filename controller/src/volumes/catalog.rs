//! The configured services: each a name bound to a built driver instance.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use berth_drivers::{Capabilities, DriverOptions, DriverRegistry, VolumeDriver};

use crate::config::{ConfigError, ServiceConfig};

/// One configured service.
pub struct Service {
    /// The service name.
    pub name: String,
    /// The driver's registered name.
    pub driver_name: String,
    /// The driver instance built for this service.
    pub driver: Arc<dyn VolumeDriver>,
    /// Subjects allowed beyond their credential's scope.
    pub allow: Vec<String>,
    /// Subjects refused whatever their scope.
    pub deny: Vec<String>,
}

impl Service {
    /// What the driver supports now. Asked each time, not cached: a driver
    /// in front of another process (`csi`) learns its capabilities when
    /// that process answers, which may be after start-up.
    pub fn capabilities(&self) -> Capabilities {
        self.driver.capabilities()
    }

    /// Why the service cannot be used right now, or `None` when it can.
    pub fn unavailable(&self) -> Option<String> {
        self.driver.unavailable()
    }
}

/// Every configured service, by name.
#[derive(Default)]
pub struct Catalog {
    services: BTreeMap<String, Arc<Service>>,
}

impl Catalog {
    /// Builds every service's driver; the first failure stops start-up with
    /// an error naming the file, the service and the problem.
    pub fn build(
        registry: &DriverRegistry,
        services: &[ServiceConfig],
        source: &Path,
    ) -> Result<Self, ConfigError> {
        let mut catalog = Self::default();
        for config in services {
            let fail = |problem: String| ConfigError::Service {
                path: source.to_owned(),
                service: config.name.clone(),
                problem,
            };
            let options: DriverOptions = config.driver_options();
            let driver = match registry.build(&config.driver, &options) {
                None => {
                    let known: Vec<_> = registry.names().collect();
                    return Err(fail(format!(
                        "unknown driver {:?} (known drivers: {})",
                        config.driver,
                        known.join(", ")
                    )));
                }
                Some(Err(e)) => return Err(fail(format!("driver {}: {e}", config.driver))),
                Some(Ok(driver)) => driver,
            };
            let service = Service {
                name: config.name.clone(),
                driver_name: config.driver.clone(),
                driver,
                allow: config.allow.clone(),
                deny: config.deny.clone(),
            };
            catalog
                .services
                .insert(config.name.clone(), Arc::new(service));
        }
        Ok(catalog)
    }

    /// The service named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// The services, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The service names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }
}
