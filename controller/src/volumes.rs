//! Volume operations: validation, idempotency, per-volume serialisation and
//! crash safety around the drivers. Knows nothing of gRPC or identities.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_drivers::{CreateRequest, DriverError, VolumeName};

use crate::catalog::{Catalog, Service};
use crate::locks::KeyedLocks;
use crate::store::{Intent, Store, StoreError, VolumeKey, VolumeRecord};

/// Why a volume operation failed. Each variant maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("service {service}: {source}")]
    Driver {
        service: String,
        #[source]
        source: DriverError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A validated create request.
pub struct NewVolume {
    pub service: String,
    pub name: String,
    pub size_bytes: u64,
    pub options: BTreeMap<String, String>,
}

/// The volume manager.
pub struct Volumes {
    catalog: Arc<Catalog>,
    store: Store,
    locks: KeyedLocks<VolumeKey>,
}

impl Volumes {
    pub fn new(catalog: Arc<Catalog>, store: Store) -> Self {
        Self {
            catalog,
            store,
            locks: KeyedLocks::default(),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn catalog_arc(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The service named `name`, or NotFound listing the configured ones.
    pub fn service(&self, name: &str) -> Result<&Arc<Service>, VolumeError> {
        if name.is_empty() {
            return Err(VolumeError::InvalidArgument(
                "service is required: name one of the configured services".into(),
            ));
        }
        self.catalog.get(name).ok_or_else(|| {
            VolumeError::NotFound(format!(
                "service {name:?} does not exist (configured: {})",
                self.catalog.names().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    fn name(name: &str) -> Result<VolumeName, VolumeError> {
        VolumeName::parse(name).map_err(|e| VolumeError::InvalidArgument(format!("volume {e}")))
    }

    pub fn get(&self, service: &str, name: &str) -> Result<VolumeRecord, VolumeError> {
        self.service(service)?;
        let name = Self::name(name)?;
        self.store
            .get(&VolumeKey::new(service, name.as_str()))?
            .ok_or_else(|| {
                VolumeError::NotFound(format!("volume {name} does not exist in service {service}"))
            })
    }

    /// One page of records; see [`Store::page`].
    pub fn page(
        &self,
        service: Option<&str>,
        after: Option<&VolumeKey>,
        limit: usize,
        keep: impl Fn(&VolumeRecord) -> bool,
    ) -> Result<(Vec<VolumeRecord>, bool), VolumeError> {
        if let Some(service) = service {
            self.service(service)?;
        }
        Ok(self.store.page(service, after, limit, keep)?)
    }

    /// Creates a volume; idempotent on (service, name).
    pub async fn create(&self, new: NewVolume) -> Result<VolumeRecord, VolumeError> {
        let service = Arc::clone(self.service(&new.service)?);
        let name = Self::name(&new.name)?;
        for key in new.options.keys() {
            if key.is_empty() {
                return Err(VolumeError::InvalidArgument(
                    "option keys must not be empty".into(),
                ));
            }
        }
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.locks.lock(key.clone()).await;

        if let Some(existing) = self.store.get(&key)? {
            if existing.size_bytes == new.size_bytes && existing.options == new.options {
                return Ok(existing);
            }
            return Err(VolumeError::AlreadyExists(format!(
                "volume {name} already exists in service {} with different parameters \
                 (size {} bytes, options {:?}); remove it first or use another name",
                service.name, existing.size_bytes, existing.options
            )));
        }

        let mut record = VolumeRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            service: service.name.clone(),
            driver: service.driver_name.clone(),
            size_bytes: new.size_bytes,
            created_at_ms: now_ms(),
            options: new.options,
            fields: BTreeMap::new(),
            attachments: Vec::new(),
        };
        self.store.begin(
            &key,
            &Intent::Create {
                record: record.clone(),
            },
        )?;
        self.store.flush().await?;

        let request = CreateRequest {
            name,
            size_bytes: record.size_bytes,
            options: record.options.clone(),
        };
        match service.driver.create(&request).await {
            Ok(created) => {
                record.size_bytes = created.size_bytes;
                record.fields = created.fields;
                self.store.commit(&key, Some(&record))?;
                self.store.flush().await?;
                Ok(record)
            }
            Err(source) => {
                self.store.abandon(&key)?;
                self.store.flush().await?;
                Err(VolumeError::Driver {
                    service: service.name.clone(),
                    source,
                })
            }
        }
    }

    /// Deletes a volume and its data.
    pub async fn delete(&self, service: &str, name: &str) -> Result<(), VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let name = Self::name(name)?;
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.locks.lock(key.clone()).await;

        let Some(record) = self.store.get(&key)? else {
            return Err(VolumeError::NotFound(format!(
                "volume {name} does not exist in service {}",
                service.name
            )));
        };
        if !record.attachments.is_empty() {
            return Err(VolumeError::FailedPrecondition(format!(
                "volume {name} is attached to {}; detach it first",
                record.attachments.join(", ")
            )));
        }
        self.store.begin(&key, &Intent::Delete { record })?;
        self.store.flush().await?;
        if let Err(source) = service.driver.delete(&name).await {
            // The volume is still there: forget the intent and report.
            self.store.abandon(&key)?;
            self.store.flush().await?;
            return Err(VolumeError::Driver {
                service: service.name.clone(),
                source,
            });
        }
        self.store.commit(&key, None)?;
        self.store.flush().await?;
        Ok(())
    }

    /// Finishes or undoes operations a crash interrupted, then reports
    /// drift between the store and the drivers. Runs before serving.
    pub async fn reconcile(&self) -> Result<(), VolumeError> {
        for (key, intent) in self.store.intents()? {
            let Some(service) = self.catalog.get(&key.service) else {
                tracing::warn!(service = %key.service, volume = %key.name,
                    "an interrupted operation names a service that is no longer configured; leaving it");
                continue;
            };
            let name = Self::name(&key.name)?;
            match intent {
                // Never acknowledged: undo, so the driver holds nothing the
                // store does not know.
                Intent::Create { .. } => {
                    tracing::info!(service = %key.service, volume = %key.name, "undoing an interrupted create");
                    service
                        .driver
                        .delete(&name)
                        .await
                        .map_err(|source| VolumeError::Driver {
                            service: key.service.clone(),
                            source,
                        })?;
                    self.store.abandon(&key)?;
                }
                // The client asked for it to go: finish.
                Intent::Delete { .. } => {
                    tracing::info!(service = %key.service, volume = %key.name, "finishing an interrupted delete");
                    service
                        .driver
                        .delete(&name)
                        .await
                        .map_err(|source| VolumeError::Driver {
                            service: key.service.clone(),
                            source,
                        })?;
                    self.store.commit(&key, None)?;
                }
            }
        }
        self.store.flush().await?;

        for service in self.catalog.iter() {
            let known: std::collections::BTreeSet<String> = self
                .store
                .page(Some(&service.name), None, usize::MAX, |_| true)?
                .0
                .into_iter()
                .map(|r| r.name)
                .collect();
            match service.driver.list().await {
                Ok(held) => {
                    for volume in held.iter().filter(|v| !known.contains(v.name.as_str())) {
                        tracing::warn!(service = %service.name, volume = %volume.name,
                            "the driver holds a volume the controller has no record of; it is not listed");
                    }
                    let held: std::collections::BTreeSet<&str> =
                        held.iter().map(|v| v.name.as_str()).collect();
                    for name in known.iter().filter(|n| !held.contains(n.as_str())) {
                        tracing::warn!(service = %service.name, volume = %name,
                            "a recorded volume is missing from its driver");
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %service.name, error = %e, "cannot list the driver's volumes")
                }
            }
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), VolumeError> {
        Ok(self.store.flush().await?)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
