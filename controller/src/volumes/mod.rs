//! Volume and snapshot operations: validation, idempotency, per-volume
//! serialisation and crash safety around the drivers. Knows nothing of gRPC
//! or identities.
//!
//! Every operation that changes a driver's storage follows one pattern:
//! take the object's lock, check the records, write and flush an intent,
//! call the driver, then commit the record change and drop the intent in one
//! atomic batch and flush before answering. [`Volumes::reconcile`] settles
//! intents a crash left behind. Attachments are recorded after the driver
//! attached; drivers make attach and detach idempotent, so a crash between
//! the two is settled by the next attach or detach.

pub mod backend;
pub mod catalog;
pub mod encoding;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod journal;
pub mod locks;
pub mod records;
pub mod shared_storage;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_drivers::{echo, CreateRequest, DriverError, Progress, VolumeName};

use crate::volumes::catalog::{Catalog, Service};
use crate::volumes::journal::{Change, Journal, JournalError};
use crate::volumes::locks::KeyedLocks;
use crate::volumes::records::{Fence, Records};
use crate::volumes::store::{
    AttachmentRecord, Intent, Kind, Page, SnapshotRecord, Store, StoreError, VolumeKey,
    VolumeRecord,
};

/// The most records one listing call examines (at least its page size):
/// a filter that skips most records ends the page early rather than scan
/// on. Bounds the work of every call, so listings stay on the async
/// workers without holding one up.
pub const SCAN_BUDGET: usize = 4096;

/// Why a volume operation failed. Each variant maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The request is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such service, volume or snapshot.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken by something else.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not now: attached, has snapshots, attached elsewhere.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The service's driver does not support it.
    #[error("{0}")]
    Unimplemented(String),
    /// The driver refused or failed.
    #[error("service {service}: {source}")]
    Driver {
        /// The service whose driver it was.
        service: String,
        /// What the driver said.
        #[source]
        source: DriverError,
    },
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The most options one volume may carry.
pub const MAX_OPTIONS: usize = 32;
/// The longest option key, in bytes.
pub const MAX_OPTION_KEY: usize = 128;
/// The longest option value, in bytes.
pub const MAX_OPTION_VALUE: usize = 4096;

/// Refuses options past the bounds above, and keys that are empty or hold
/// control characters, before anything else sees them. Messages show at
/// most a short, escaped prefix of what was sent ([`echo`]).
pub fn check_options(options: &BTreeMap<String, String>) -> Result<(), VolumeError> {
    let bad = |m: String| Err(VolumeError::InvalidArgument(m));
    if options.len() > MAX_OPTIONS {
        return bad(format!(
            "{} options given; a volume takes at most {MAX_OPTIONS}",
            options.len()
        ));
    }
    for (key, value) in options {
        if key.is_empty() {
            return bad("option keys must not be empty".into());
        }
        if key.len() > MAX_OPTION_KEY {
            return bad(format!(
                "option key {} is {} bytes, longer than the limit of {MAX_OPTION_KEY}",
                echo(key),
                key.len()
            ));
        }
        if key.chars().any(char::is_control) {
            return bad(format!(
                "option key {} holds a control character; keys are plain words such as `mode`",
                echo(key)
            ));
        }
        if value.len() > MAX_OPTION_VALUE {
            return bad(format!(
                "option {}: its value is {} bytes, longer than the limit of {MAX_OPTION_VALUE}: {}",
                echo(key),
                value.len(),
                echo(value)
            ));
        }
    }
    Ok(())
}

/// Options as an error message shows them: each value through [`echo`].
fn shown_options(options: &BTreeMap<String, String>) -> String {
    let shown: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{}={}", echo(k), echo(v)))
        .collect();
    format!("{{{}}}", shown.join(", "))
}

/// A create request, not yet validated.
pub struct NewVolume {
    /// The service to create it in.
    pub service: String,
    /// The volume name.
    pub name: String,
    /// The size; 0 with a snapshot means the snapshot's size.
    pub size_bytes: u64,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// Restore this snapshot into the new volume.
    pub from_snapshot: Option<String>,
}

/// One volume of a batch create ([`Volumes::create_many`]), not yet
/// validated.
pub struct VolumeSpec {
    /// The volume name.
    pub name: String,
    /// The size in bytes.
    pub size_bytes: u64,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

/// The most volumes one batch create takes.
pub const MAX_BATCH: usize = 1000;

/// Which volumes a listing keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachmentFilter {
    /// Every volume.
    Any,
    /// Volumes attached somewhere.
    Attached,
    /// Volumes attached nowhere.
    Available,
}

/// The volume manager.
pub struct Volumes {
    catalog: Arc<Catalog>,
    store: Arc<dyn Records>,
    journal: Journal,
    locks: KeyedLocks<VolumeKey>,
    snapshot_locks: KeyedLocks<VolumeKey>,
}

/// A driver call, timed into `berth_driver_operation_seconds` (the
/// journal runs it as it is).
fn timed<'a, T: 'a, E: 'a>(
    service: &'a Service,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, E>> + 'a,
) -> impl std::future::Future<Output = Result<T, E>> + 'a {
    crate::metrics::driver_op(&service.name, &service.driver_name, operation, call)
}

fn journal_error(service: &Service) -> impl FnOnce(JournalError) -> VolumeError + '_ {
    move |e| match e {
        JournalError::Driver(source) => driver_error(service)(source),
        JournalError::Store(e) => VolumeError::Store(e),
    }
}

fn driver_error(service: &Service) -> impl FnOnce(DriverError) -> VolumeError + '_ {
    move |source| VolumeError::Driver {
        service: service.name.clone(),
        source,
    }
}

impl Volumes {
    /// A volume manager over the configured services and the sled record
    /// store.
    pub fn new(catalog: Arc<Catalog>, store: Store) -> Self {
        Self::with_records(catalog, Arc::new(store))
    }

    /// A volume manager over the configured services and any record store
    /// (sled, or a store shared by several controllers).
    pub fn with_records(catalog: Arc<Catalog>, store: Arc<dyn Records>) -> Self {
        Self {
            catalog,
            journal: Journal::new(Arc::clone(&store)),
            store,
            locks: KeyedLocks::default(),
            snapshot_locks: KeyedLocks::default(),
        }
    }

    /// The configured services.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The configured services, shared.
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
        // The message does not list the configured services: a caller may
        // see only some of them (`berth service list` shows which).
        self.catalog.get(name).ok_or_else(|| {
            VolumeError::NotFound(format!(
                "service {} does not exist; `berth service list` shows the services you may use",
                echo(name)
            ))
        })
    }

    fn name(what: &str, name: &str) -> Result<VolumeName, VolumeError> {
        VolumeName::parse(name).map_err(|e| VolumeError::InvalidArgument(format!("{what} {e}")))
    }

    fn require(service: &Service, supported: bool, operation: &str) -> Result<(), VolumeError> {
        if supported {
            Ok(())
        } else {
            Err(VolumeError::Unimplemented(format!(
                "service {} (driver {}) does not support {operation}",
                service.name, service.driver_name
            )))
        }
    }

    /// The record of `name`, which the driver is also told about
    /// ([`berth_drivers::VolumeDriver::recall`]): in a store shared by
    /// several controllers, another controller may have made the volume
    /// since this one started, and a driver that keeps its own handle for
    /// it (a CSI plugin's volume id) learns it here before it is asked to act.
    async fn record(
        &self,
        service: &Service,
        name: &VolumeName,
    ) -> Result<VolumeRecord, VolumeError> {
        let record = self
            .store
            .get(&VolumeKey::new(&service.name, name.as_str()))
            .await?
            .ok_or_else(|| {
                VolumeError::NotFound(format!(
                    "volume {name} does not exist in service {}",
                    service.name
                ))
            })?;
        service.driver.recall(name, &record.fields);
        Ok(record)
    }

    /// The record of one volume.
    pub async fn get(&self, service: &str, name: &str) -> Result<VolumeRecord, VolumeError> {
        let service = self.service(service)?;
        let name = Self::name("volume", name)?;
        self.record(service, &name).await
    }

    /// The bytes the volume of `record` uses on its storage, if its driver
    /// can tell; a driver error is logged and reads as unknown (a listing
    /// never fails for it).
    pub async fn used_bytes(&self, record: &VolumeRecord) -> Option<u64> {
        let service = self.catalog.get(&record.service)?;
        let name = VolumeName::parse(&record.name).ok()?;
        match service.driver.used_bytes(&name).await {
            Ok(used) => used,
            Err(e) => {
                tracing::debug!(service = %record.service, volume = %record.name, error = %e, "cannot measure the space a volume uses");
                None
            }
        }
    }

    /// One page of the records of `services`; see [`Store::page`].
    pub async fn page(
        &self,
        services: &[&str],
        after: Option<&VolumeKey>,
        limit: usize,
        keep: impl Fn(&VolumeRecord) -> bool + Send + Sync,
    ) -> Result<Page, VolumeError> {
        Ok(self
            .store
            .page(services, after, limit, SCAN_BUDGET.max(limit), &keep)
            .await?)
    }

    /// Creates a volume (empty, or from a snapshot); idempotent on
    /// (service, name).
    pub async fn create(&self, new: NewVolume) -> Result<VolumeRecord, VolumeError> {
        self.create_with_progress(new, Progress::none()).await
    }

    /// [`create`](Self::create), the driver reporting to `progress` while
    /// it restores a snapshot.
    pub async fn create_with_progress(
        &self,
        new: NewVolume,
        progress: Progress,
    ) -> Result<VolumeRecord, VolumeError> {
        let service = Arc::clone(self.service(&new.service)?);
        let name = Self::name("volume", &new.name)?;
        check_options(&new.options)?;
        let snapshot = match &new.from_snapshot {
            Some(s) => {
                Self::require(
                    &service,
                    service.capabilities().create_from_snapshot,
                    "creating volumes from snapshots",
                )?;
                Some(Self::name("snapshot", s)?)
            }
            None => None,
        };
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.locks.lock(key.clone()).await;
        let fence = self.take(Kind::Volume, &key, true).await?;
        let (_snap_guard, _snap_fence) = match &snapshot {
            Some(s) => {
                let snap_key = VolumeKey::new(&service.name, s.as_str());
                let guard = self.snapshot_locks.lock(snap_key.clone()).await;
                let fence = self.take(Kind::Snapshot, &snap_key, true).await?;
                (Some(guard), Some(fence))
            }
            None => (None, None),
        };
        let source = snapshot.as_ref().map(|s| format!("snapshot:{s}"));
        // An existing volume answers a retry even if its snapshot has been
        // removed since (size 0 means "the snapshot's size").
        if let Some(existing) = self.store.get(&key).await? {
            let size = if new.size_bytes == 0 && source.is_some() {
                existing.size_bytes
            } else {
                new.size_bytes
            };
            return Self::same(existing, &service, &name, size, &new.options, &source);
        }
        let mut size_bytes = new.size_bytes;
        if let Some(s) = &snapshot {
            let snap = self.snapshot_record(&service, s).await?;
            if size_bytes == 0 {
                size_bytes = snap.size_bytes;
            } else if size_bytes < snap.size_bytes {
                return Err(VolumeError::InvalidArgument(format!(
                    "size {size_bytes} bytes is smaller than snapshot {s} ({} bytes)",
                    snap.size_bytes
                )));
            }
        }
        let record = self.new_record(&service, &name, size_bytes, new.options, source);
        let request = CreateRequest {
            name,
            size_bytes,
            options: record.options.clone(),
        };
        let driver = Arc::clone(&service.driver);
        let operation = match &snapshot {
            Some(_) => "create_from_snapshot",
            None => "create",
        };
        let call = timed(&service, operation, async move {
            match &snapshot {
                Some(s) => {
                    driver
                        .create_from_snapshot_with_progress(s, &request, &progress)
                        .await
                }
                None => driver.create(&request).await,
            }
        });
        self.run_create(&service, &fence, &key, record, call).await
    }

    /// Creates a batch of volumes in one service, each as [`Volumes::create`]
    /// would (idempotent on its name), journaled together: one durable write
    /// of the intents, one of the records ([`Journal::create_many`]).
    /// Returns each volume's outcome in `specs` order; the call itself fails
    /// only for an unknown service, an empty or too large batch, or a store
    /// error (then nothing of the batch was acknowledged).
    pub async fn create_many(
        &self,
        service: &str,
        specs: Vec<VolumeSpec>,
    ) -> Result<Vec<Result<VolumeRecord, VolumeError>>, VolumeError> {
        let service = Arc::clone(self.service(service)?);
        if specs.is_empty() {
            return Err(VolumeError::InvalidArgument(
                "no volumes given: name at least one volume to create".into(),
            ));
        }
        if specs.len() > MAX_BATCH {
            return Err(VolumeError::InvalidArgument(format!(
                "{} volumes given; one call creates at most {MAX_BATCH}: split the batch",
                specs.len()
            )));
        }
        let mut outcomes: Vec<Option<Result<VolumeRecord, VolumeError>>> =
            specs.iter().map(|_| None).collect();
        let mut first_at: BTreeMap<String, usize> = BTreeMap::new();
        let mut valid = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let name = match Self::name("volume", &spec.name)
                .and_then(|name| check_options(&spec.options).map(|()| name))
            {
                Ok(name) => name,
                Err(e) => {
                    outcomes[i] = Some(Err(e));
                    continue;
                }
            };
            if let Some(first) = first_at.get(name.as_str()) {
                outcomes[i] = Some(Err(VolumeError::InvalidArgument(format!(
                    "volume {name} is named twice in this batch (items {first} and {i}); name each volume once"
                ))));
                continue;
            }
            first_at.insert(name.to_string(), i);
            valid.push((i, name, spec));
        }
        // Locks in key order, as every operation holding several takes
        // them, so batches and copies cannot deadlock one another.
        valid.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
        let keys: Vec<VolumeKey> = valid
            .iter()
            .map(|(_, name, _)| VolumeKey::new(&service.name, name.as_str()))
            .collect();
        let mut guards = Vec::with_capacity(keys.len());
        let mut fences = Vec::with_capacity(keys.len());
        for key in &keys {
            guards.push(self.locks.lock(key.clone()).await);
            fences.push(self.store.lock(Kind::Volume, key, true).await?);
        }
        let mut creating = Vec::new();
        let mut created_at = Vec::new();
        for (j, (i, name, spec)) in valid.into_iter().enumerate() {
            if let Some(existing) = self.store.get(&keys[j]).await? {
                outcomes[i] = Some(Self::same(
                    existing,
                    &service,
                    &name,
                    spec.size_bytes,
                    &spec.options,
                    &None,
                ));
                continue;
            }
            let record = self.new_record(&service, &name, spec.size_bytes, spec.options, None);
            let request = CreateRequest {
                name: name.clone(),
                size_bytes: spec.size_bytes,
                options: record.options.clone(),
            };
            let (driver, undo_driver) = (Arc::clone(&service.driver), Arc::clone(&service.driver));
            let call = timed(
                &service,
                "create",
                async move { driver.create(&request).await },
            );
            let undo = async move { undo_driver.delete(&name).await };
            creating.push(journal::Creating {
                fence: &fences[j],
                key: &keys[j],
                record,
                call,
                undo,
            });
            created_at.push(i);
        }
        if !creating.is_empty() {
            let done = self.journal.create_many(creating).await?;
            for (i, outcome) in created_at.into_iter().zip(done) {
                outcomes[i] = Some(outcome.map_err(driver_error(&service)));
            }
        }
        drop(guards);
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(VolumeError::InvalidArgument(
                        "this item was not examined; retry it".into(),
                    ))
                })
            })
            .collect())
    }

    /// Creates `name` as a copy of `source` in the same service.
    pub async fn copy(
        &self,
        service: &str,
        source: &str,
        name: &str,
    ) -> Result<VolumeRecord, VolumeError> {
        self.copy_with_progress(service, source, name, Progress::none())
            .await
    }

    /// [`copy`](Self::copy), the driver reporting to `progress`.
    pub async fn copy_with_progress(
        &self,
        service: &str,
        source: &str,
        name: &str,
        progress: Progress,
    ) -> Result<VolumeRecord, VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let source = Self::name("source volume", source)?;
        let name = Self::name("volume", name)?;
        Self::require(&service, service.capabilities().copy, "copying volumes")?;
        if source == name {
            return Err(VolumeError::InvalidArgument(format!(
                "cannot copy volume {name} onto itself"
            )));
        }
        let (src_key, key) = (
            VolumeKey::new(&service.name, source.as_str()),
            VolumeKey::new(&service.name, name.as_str()),
        );
        // Two locks, always in key order, so opposite copies cannot deadlock.
        let (first, second) = if src_key < key {
            (src_key.clone(), key.clone())
        } else {
            (key.clone(), src_key.clone())
        };
        let _g1 = self.locks.lock(first.clone()).await;
        let _g2 = self.locks.lock(second.clone()).await;
        let f1 = self.take(Kind::Volume, &first, true).await?;
        let f2 = self.take(Kind::Volume, &second, true).await?;
        let fence = if first == key { &f1 } else { &f2 };
        let src = self.record(&service, &source).await?;
        let origin = Some(format!("volume:{source}"));
        if let Some(existing) = self.store.get(&key).await? {
            return Self::same(
                existing,
                &service,
                &name,
                src.size_bytes,
                &src.options,
                &origin,
            );
        }
        let record = self.new_record(&service, &name, src.size_bytes, src.options.clone(), origin);
        let request = CreateRequest {
            name,
            size_bytes: src.size_bytes,
            options: BTreeMap::new(),
        };
        let driver = Arc::clone(&service.driver);
        let call = timed(&service, "copy", async move {
            driver
                .copy_with_progress(&source, &request, &progress)
                .await
        });
        self.run_create(&service, fence, &key, record, call).await
    }

    fn same(
        existing: VolumeRecord,
        service: &Service,
        name: &VolumeName,
        size_bytes: u64,
        options: &BTreeMap<String, String>,
        source: &Option<String>,
    ) -> Result<VolumeRecord, VolumeError> {
        if existing.size_bytes == size_bytes
            && &existing.options == options
            && &existing.source == source
        {
            return Ok(existing);
        }
        Err(VolumeError::AlreadyExists(format!(
            "volume {name} already exists in service {} with different parameters \
             (size {} bytes, options {}{}); remove it first or use another name",
            service.name,
            existing.size_bytes,
            shown_options(&existing.options),
            existing
                .source
                .as_deref()
                .map(|s| format!(", from {s}"))
                .unwrap_or_default()
        )))
    }

    fn new_record(
        &self,
        service: &Service,
        name: &VolumeName,
        size_bytes: u64,
        options: BTreeMap<String, String>,
        source: Option<String>,
    ) -> VolumeRecord {
        VolumeRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            service: service.name.clone(),
            driver: service.driver_name.clone(),
            size_bytes,
            created_at_ms: now_ms(),
            options,
            fields: BTreeMap::new(),
            attachments: Vec::new(),
            source,
        }
    }

    /// A journaled create: the driver's answer fills in the record.
    async fn run_create(
        &self,
        service: &Service,
        fence: &Fence,
        key: &VolumeKey,
        record: VolumeRecord,
        call: impl std::future::Future<Output = Result<berth_drivers::DriverVolume, DriverError>>,
    ) -> Result<VolumeRecord, VolumeError> {
        // The store has no record under this name, so whatever the driver
        // made of it before failing is an orphan: undo it.
        let undo = VolumeName::parse(&key.name)
            .ok()
            .map(|name| async move { service.driver.delete(&name).await });
        let intent = Intent::Create {
            record: record.clone(),
        };
        let mut record = record;
        self.journal
            .run(fence, key, &intent, call, undo, |created| {
                record.size_bytes = created.size_bytes;
                record.fields = created.fields;
                (Some(record.clone()), record)
            })
            .await
            .map_err(journal_error(service))
    }

    /// Deletes a volume and its data. Attached volumes need `force` (they
    /// are detached first); volumes with snapshots cannot be deleted.
    pub async fn delete(&self, service: &str, name: &str, force: bool) -> Result<(), VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let name = Self::name("volume", name)?;
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.locks.lock(key.clone()).await;
        let fence = self.take(Kind::Volume, &key, true).await?;
        let mut record = self.record(&service, &name).await?;
        let snapshots = self
            .store
            .snapshots(&[service.name.as_str()], &|s| s.volume == name.as_str())
            .await?;
        if !snapshots.is_empty() {
            return Err(VolumeError::FailedPrecondition(format!(
                "volume {name} has snapshots ({}); remove them first",
                snapshots
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !record.attachments.is_empty() {
            if !force {
                return Err(VolumeError::FailedPrecondition(format!(
                    "volume {name} is attached to {}; detach it first or remove with --force",
                    holders(&record)
                )));
            }
            self.detach_all(&service, &fence, &name, &key, &mut record)
                .await?;
        }
        // A failed delete leaves the volume there: nothing to undo.
        self.journal
            .run(
                &fence,
                &key,
                &Intent::Delete { record },
                timed(&service, "delete", service.driver.delete(&name)),
                None::<std::future::Ready<Result<(), DriverError>>>,
                |()| (None::<VolumeRecord>, ()),
            )
            .await
            .map_err(journal_error(&service))
    }

    async fn detach_all(
        &self,
        service: &Service,
        fence: &Fence,
        name: &VolumeName,
        key: &VolumeKey,
        record: &mut VolumeRecord,
    ) -> Result<(), VolumeError> {
        while let Some(a) = record.attachments.first().cloned() {
            timed(service, "detach", service.driver.detach(name, &a.instance))
                .await
                .map_err(driver_error(service))?;
            record.attachments.remove(0);
            self.store
                .commit(fence, key, Change::Volume(Some(record)))
                .await?;
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Attaches a volume to `instance`.
    pub async fn attach(
        &self,
        service: &str,
        name: &str,
        instance: &str,
    ) -> Result<(VolumeRecord, AttachmentRecord), VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let name = Self::name("volume", name)?;
        check_instance(instance)?;
        Self::require(&service, service.capabilities().attach, "attaching volumes")?;
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.locks.lock(key.clone()).await;
        let fence = self.take(Kind::Volume, &key, true).await?;
        let mut record = self.record(&service, &name).await?;
        if let Some(existing) = record.attachments.iter().find(|a| a.instance == instance) {
            let existing = existing.clone();
            return Ok((record, existing));
        }
        if !record.attachments.is_empty() && !service.capabilities().multi_attach {
            return Err(VolumeError::FailedPrecondition(format!(
                "volume {name} is attached to {}; detach it there first (or detach --force)",
                holders(&record)
            )));
        }
        let attached = timed(&service, "attach", service.driver.attach(&name, instance))
            .await
            .map_err(driver_error(&service))?;
        let attachment = AttachmentRecord {
            instance: instance.to_owned(),
            device: attached.device,
            fields: attached.fields,
        };
        record.attachments.push(attachment.clone());
        self.store
            .commit(&fence, &key, Change::Volume(Some(&record)))
            .await?;
        self.store.flush().await?;
        Ok((record, attachment))
    }

    /// Detaches a volume from `instance`; with `force`, from whichever
    /// instances hold it. Not attached there: nothing to do.
    pub async fn detach(
        &self,
        service: &str,
        name: &str,
        instance: &str,
        force: bool,
    ) -> Result<VolumeRecord, VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let name = Self::name("volume", name)?;
        if !force {
            check_instance(instance)?;
        }
        Self::require(&service, service.capabilities().attach, "detaching volumes")?;
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.locks.lock(key.clone()).await;
        let fence = self.take(Kind::Volume, &key, true).await?;
        let mut record = self.record(&service, &name).await?;
        if record.attachments.is_empty() {
            return Ok(record);
        }
        let here = record
            .attachments
            .iter()
            .position(|a| a.instance == instance);
        match (here, force) {
            (Some(i), _) => {
                timed(&service, "detach", service.driver.detach(&name, instance))
                    .await
                    .map_err(driver_error(&service))?;
                record.attachments.remove(i);
                self.store
                    .commit(&fence, &key, Change::Volume(Some(&record)))
                    .await?;
                self.store.flush().await?;
            }
            (None, true) => {
                self.detach_all(&service, &fence, &name, &key, &mut record)
                    .await?
            }
            (None, false) => {
                return Err(VolumeError::FailedPrecondition(format!(
                    "volume {name} is attached to {}, not to {}; name that instance or use --force",
                    holders(&record),
                    echo(instance)
                )))
            }
        }
        Ok(record)
    }

    /// The record of snapshot `name`, which the driver is also told about
    /// (see [`Volumes::record`]).
    async fn snapshot_record(
        &self,
        service: &Service,
        name: &VolumeName,
    ) -> Result<SnapshotRecord, VolumeError> {
        let record = self
            .store
            .snapshot(&VolumeKey::new(&service.name, name.as_str()))
            .await?
            .ok_or_else(|| {
                VolumeError::NotFound(format!(
                    "snapshot {name} does not exist in service {}",
                    service.name
                ))
            })?;
        if let Ok(volume) = VolumeName::parse(&record.volume) {
            service.driver.recall_snapshot(name, &volume);
        }
        Ok(record)
    }

    /// The record of one snapshot.
    pub async fn get_snapshot(
        &self,
        service: &str,
        name: &str,
    ) -> Result<SnapshotRecord, VolumeError> {
        let service = self.service(service)?;
        let name = Self::name("snapshot", name)?;
        self.snapshot_record(service, &name).await
    }

    /// Snapshots of `services`, of `volume` if given.
    pub async fn list_snapshots(
        &self,
        services: &[&str],
        volume: Option<&str>,
    ) -> Result<Vec<SnapshotRecord>, VolumeError> {
        Ok(self
            .store
            .snapshots(services, &|s| volume.is_none_or(|v| s.volume == v))
            .await?)
    }

    /// Takes a snapshot; idempotent on (service, name).
    pub async fn create_snapshot(
        &self,
        service: &str,
        volume: &str,
        name: &str,
    ) -> Result<SnapshotRecord, VolumeError> {
        self.create_snapshot_with_progress(service, volume, name, Progress::none())
            .await
    }

    /// [`create_snapshot`](Self::create_snapshot), the driver reporting to
    /// `progress`.
    pub async fn create_snapshot_with_progress(
        &self,
        service: &str,
        volume: &str,
        name: &str,
        progress: Progress,
    ) -> Result<SnapshotRecord, VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let volume = Self::name("volume", volume)?;
        let name = Self::name("snapshot", name)?;
        Self::require(&service, service.capabilities().snapshot, "snapshots")?;
        let vol_key = VolumeKey::new(&service.name, volume.as_str());
        let _vol_guard = self.locks.lock(vol_key.clone()).await;
        let _vol_fence = self.take(Kind::Volume, &vol_key, true).await?;
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.snapshot_locks.lock(key.clone()).await;
        let fence = self.take(Kind::Snapshot, &key, true).await?;
        if let Some(existing) = self.store.snapshot(&key).await? {
            if existing.volume == volume.as_str() {
                return Ok(existing);
            }
            return Err(VolumeError::AlreadyExists(format!(
                "snapshot {name} already exists in service {}, of volume {}; use another name",
                service.name, existing.volume
            )));
        }
        let vol = self.record(&service, &volume).await?;
        let record = SnapshotRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            service: service.name.clone(),
            volume: volume.to_string(),
            size_bytes: vol.size_bytes,
            created_at_ms: now_ms(),
        };
        let intent = Intent::CreateSnapshot {
            record: record.clone(),
        };
        let mut record = record;
        // Undo what the driver may have made, as for volumes.
        let undo = Some(service.driver.delete_snapshot(&name));
        self.journal
            .run(
                &fence,
                &key,
                &intent,
                timed(
                    &service,
                    "create_snapshot",
                    service
                        .driver
                        .create_snapshot_with_progress(&volume, &name, &progress),
                ),
                undo,
                |taken| {
                    record.size_bytes = taken.size_bytes;
                    (Some(record.clone()), record)
                },
            )
            .await
            .map_err(journal_error(&service))
    }

    /// Deletes a snapshot; journaled like every change.
    pub async fn delete_snapshot(&self, service: &str, name: &str) -> Result<(), VolumeError> {
        let service = Arc::clone(self.service(service)?);
        let name = Self::name("snapshot", name)?;
        let key = VolumeKey::new(&service.name, name.as_str());
        let _guard = self.snapshot_locks.lock(key.clone()).await;
        let fence = self.take(Kind::Snapshot, &key, true).await?;
        let record = self.snapshot_record(&service, &name).await?;
        self.journal
            .run(
                &fence,
                &key,
                &Intent::DeleteSnapshot { record },
                timed(
                    &service,
                    "delete_snapshot",
                    service.driver.delete_snapshot(&name),
                ),
                None::<std::future::Ready<Result<(), DriverError>>>,
                |()| (None::<SnapshotRecord>, ()),
            )
            .await
            .map_err(journal_error(&service))
    }

    /// Finishes or undoes operations a crash interrupted, then reports
    /// drift between the store and the drivers. Runs before serving.
    pub async fn reconcile(&self) -> Result<(), VolumeError> {
        self.recall().await?;
        for (key, intent) in self.store.intents().await? {
            self.settle(&key, intent.kind(), Scan::Start).await?;
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Compares each service's records with the volumes its driver holds and
    /// warns of every difference: a volume the driver holds without a
    /// record, a record whose volume the driver lacks. Only warns; changes
    /// nothing.
    ///
    /// The controller runs it in the background once it serves, so start-up
    /// does not grow with the number of volumes. Because operations run
    /// meanwhile, each difference is looked at again under the volume's lock
    /// (the record, and the driver's own answer for that name) and reported
    /// only if it is still there. Logs one line per service saying how much
    /// it compared, and one when it is done.
    pub async fn report_drift(&self) {
        for service in self.catalog.iter() {
            // The driver first: a driver that cannot list costs nothing more.
            let mut held: Vec<String> = match service.driver.list().await {
                Ok(held) => held.into_iter().map(|v| v.name.to_string()).collect(),
                Err(e) => {
                    tracing::warn!(service = %service.name, error = %e, "cannot list the driver's volumes");
                    continue;
                }
            };
            held.sort_unstable();
            let known = match self.store.volume_names(&service.name).await {
                Ok(known) => known,
                Err(e) => {
                    tracing::warn!(service = %service.name, error = %e, "cannot read the volume records to compare them with the driver");
                    continue;
                }
            };
            // Both in byte order of the name: walk them side by side.
            let (mut h, mut k) = (held.iter().peekable(), known.iter().peekable());
            let mut differ = Vec::new();
            loop {
                match (h.peek(), k.peek()) {
                    (Some(a), Some(b)) if a == b => {
                        h.next();
                        k.next();
                    }
                    (Some(a), Some(b)) if a < b => differ.extend(h.next()),
                    (Some(_), None) => differ.extend(h.next()),
                    (_, Some(_)) => differ.extend(k.next()),
                    (None, None) => break,
                }
            }
            let mut reported = 0usize;
            for name in differ {
                if self.still_differs(service, name).await {
                    reported += 1;
                }
            }
            tracing::info!(service = %service.name, records = known.len(), held = held.len(), differences = reported,
                "compared the volume records with the driver's volumes");
        }
        tracing::info!("finished comparing the volume records with the drivers");
    }

    /// Whether `name` still differs between the records and the driver,
    /// looked at under its lock; warns if it does.
    async fn still_differs(&self, service: &Service, name: &str) -> bool {
        let Ok(volume) = VolumeName::parse(name) else {
            return false;
        };
        let key = VolumeKey::new(&service.name, name);
        let _guard = self.locks.lock(key.clone()).await;
        let Ok(_fence) = self.store.lock(Kind::Volume, &key, false).await else {
            // Under way on another controller: not a difference to report.
            return false;
        };
        let recorded = matches!(self.store.get(&key).await, Ok(Some(_)));
        let held = match service.driver.get(&volume).await {
            Ok(held) => held.is_some(),
            Err(_) => return false,
        };
        match (recorded, held) {
            (false, true) => tracing::warn!(service = %service.name, volume = %name,
                "the driver holds a volume the controller has no record of; it is not listed"),
            (true, false) => tracing::warn!(service = %service.name, volume = %name,
                "a recorded volume is missing from its driver"),
            _ => return false,
        }
        true
    }

    /// Settles the intent of one object left by an operation that ended
    /// without settling it, if there still is one once the object's lock is
    /// held: a create is undone (it was never acknowledged), a delete is
    /// finished (the client asked for it). Whether it settled one.
    async fn settle(&self, key: &VolumeKey, kind: Kind, scan: Scan) -> Result<bool, VolumeError> {
        let Some(service) = self.catalog.get(&key.service) else {
            if scan == Scan::Start {
                tracing::warn!(service = %key.service, name = %key.name,
                    "an interrupted operation names a service that is no longer configured; leaving it");
            }
            return Ok(false);
        };
        // In a shared store, an intent whose lock is held belongs to an
        // operation under way (on this or another controller): not ours to
        // settle. Its lock goes with its controller's lease.
        let fence = match self.store.lock(kind, key, false).await {
            Ok(fence) => fence,
            Err(StoreError::Contended(_)) => {
                if scan == Scan::Start {
                    tracing::info!(service = %key.service, name = %key.name,
                        "an operation is under way on another controller; leaving its intent");
                }
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        // Read again under the lock: the operation may have ended between
        // the listing and the lock, and another may have left another
        // intent since.
        let Some(intent) = self.store.intent(kind, key).await? else {
            return Ok(false);
        };
        self.settle_held(service, &fence, key, intent, scan).await?;
        Ok(true)
    }

    /// Settles `intent`, left over on `key`, whose lock `fence` is held.
    async fn settle_held(
        &self,
        service: &Service,
        fence: &Fence,
        key: &VolumeKey,
        intent: Intent,
        scan: Scan,
    ) -> Result<(), VolumeError> {
        let name = Self::name("name", &key.name)?;
        let after = match scan {
            Scan::Start => "a crash",
            Scan::Orphan => "its controller's death (its lease expired)",
        };
        if let Intent::CreateSnapshot { record } = &intent {
            if let Ok(volume) = VolumeName::parse(&record.volume) {
                service.driver.recall_snapshot(&name, &volume);
            }
        }
        // A driver whose storage is away (a CSI plugin that is down) must
        // not stop the controller: the intent stays for a later try, and
        // the service reports itself unavailable.
        let kept = |e: DriverError| -> Result<(), VolumeError> {
            match &e {
                DriverError::Unavailable(why) => {
                    tracing::warn!(service = %key.service, name = %key.name, op = intent.op(), error = %why,
                        "cannot settle an interrupted operation now; it is kept for a later try");
                    Ok(())
                }
                _ => Err(driver_error(service)(e)),
            }
        };
        match &intent {
            // Never acknowledged: undo, so the driver holds nothing the
            // store does not know.
            Intent::Create { .. } => {
                tracing::info!(service = %key.service, volume = %key.name, "undoing a create interrupted by {after}");
                if let Err(e) = service.driver.delete(&name).await {
                    return kept(e);
                }
                self.journal.abandon(fence, Kind::Volume, key).await?;
            }
            // The client asked for it to go: finish.
            Intent::Delete { .. } => {
                tracing::info!(service = %key.service, volume = %key.name, "finishing a delete interrupted by {after}");
                if let Err(e) = service.driver.delete(&name).await {
                    return kept(e);
                }
                self.journal
                    .settle(fence, key, Change::Volume(None))
                    .await?;
            }
            Intent::CreateSnapshot { .. } => {
                tracing::info!(service = %key.service, snapshot = %key.name, "undoing a snapshot interrupted by {after}");
                if let Err(e) = service.driver.delete_snapshot(&name).await {
                    return kept(e);
                }
                self.journal.abandon(fence, Kind::Snapshot, key).await?;
            }
            Intent::DeleteSnapshot { .. } => {
                tracing::info!(service = %key.service, snapshot = %key.name, "finishing a snapshot delete interrupted by {after}");
                if let Err(e) = service.driver.delete_snapshot(&name).await {
                    return kept(e);
                }
                self.journal
                    .settle(fence, key, Change::Snapshot(None))
                    .await?;
            }
        }
        Ok(())
    }

    /// Tells every driver what is on record for its volumes and snapshots
    /// ([`berth_drivers::VolumeDriver::recall`]), one page at a time.
    async fn recall(&self) -> Result<(), VolumeError> {
        for service in self.catalog.iter() {
            let services = [service.name.as_str()];
            let mut after: Option<VolumeKey> = None;
            loop {
                let page = self
                    .store
                    .page(&services, after.as_ref(), SCAN_BUDGET, SCAN_BUDGET, &|_| {
                        true
                    })
                    .await?;
                for record in &page.records {
                    if let Ok(name) = VolumeName::parse(&record.name) {
                        service.driver.recall(&name, &record.fields);
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            for snapshot in self.store.snapshots(&services, &|_| true).await? {
                if let (Ok(name), Ok(volume)) = (
                    VolumeName::parse(&snapshot.name),
                    VolumeName::parse(&snapshot.volume),
                ) {
                    service.driver.recall_snapshot(&name, &volume);
                }
            }
        }
        Ok(())
    }

    /// Takes the store lock of one object for an operation. In a store
    /// shared by several controllers, an intent found under the lock was
    /// left by an operation that ended unsettled (its controller died): it
    /// is settled first, so that this operation starts from what the
    /// earlier one asked for (a delete finished, a create undone) and a
    /// late settling cannot undo this one.
    async fn take(&self, kind: Kind, key: &VolumeKey, wait: bool) -> Result<Fence, VolumeError> {
        let fence = self.store.lock(kind, key, wait).await?;
        if self.store.shared() {
            if let Some(intent) = self.store.intent(kind, key).await? {
                let service = self.service(&key.service)?;
                self.settle_held(service, &fence, key, intent, Scan::Orphan)
                    .await?;
            }
        }
        Ok(fence)
    }

    /// One look, while serving, for intents that no live operation holds
    /// (their controller died and its lease expired, or their undo failed)
    /// and settles them as [`Volumes::reconcile`] does at start. Only for a
    /// store shared by several controllers. How many it settled.
    pub async fn settle_orphans(&self) -> Result<usize, VolumeError> {
        let mut settled = 0;
        for (key, intent) in self.store.intents().await? {
            match self.settle(&key, intent.kind(), Scan::Orphan).await {
                Ok(true) => settled += 1,
                Ok(false) => {}
                // One that cannot be settled now (its driver fails) does
                // not keep the others waiting; the next look tries again.
                Err(e) => tracing::warn!(service = %key.service, name = %key.name, error = %e,
                    "cannot settle an operation a dead controller left; trying again later"),
            }
        }
        Ok(settled)
    }

    /// Runs [`Volumes::settle_orphans`] in the background as often as the
    /// store asks ([`Records::orphan_scan`]), or not at all (`None`) for a
    /// store with one controller. The task ends when aborted.
    pub fn spawn_orphan_settler(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.store.orphan_scan()?;
        let volumes = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                match volumes.settle_orphans().await {
                    Ok(n) => {
                        if failing {
                            tracing::info!("the record store answers again; looking for left-over operations resumed");
                        }
                        failing = false;
                        if n > 0 {
                            tracing::info!(
                                settled = n,
                                "settled operations a dead controller left"
                            );
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot look for operations a dead controller left; retrying");
                        }
                        failing = true;
                    }
                }
            }
        }))
    }

    /// Volume and snapshot records by configured service, for the
    /// `berth_volumes` and `berth_snapshots` gauges (volume keys only are
    /// read; snapshot records are decoded).
    pub async fn counts(&self) -> Result<Vec<(String, usize, usize)>, VolumeError> {
        let mut out = Vec::new();
        for service in self.catalog.iter() {
            let volumes = self.store.volume_names(&service.name).await?.len();
            let snapshots = self
                .store
                .snapshots(&[service.name.as_str()], &|_| true)
                .await?
                .len();
            out.push((service.name.clone(), volumes, snapshots));
        }
        Ok(out)
    }

    /// Makes every record written so far durable.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        Ok(self.store.flush().await?)
    }
}

/// Which look settles left-over intents: at start (every intent not held
/// is a crash's) or while serving (a dead controller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    Start,
    Orphan,
}

/// Whether a record passes a listing's attachment filter.
pub fn passes(filter: AttachmentFilter, record: &VolumeRecord) -> bool {
    match filter {
        AttachmentFilter::Any => true,
        AttachmentFilter::Attached => !record.attachments.is_empty(),
        AttachmentFilter::Available => record.attachments.is_empty(),
    }
}

fn holders(record: &VolumeRecord) -> String {
    record
        .attachments
        .iter()
        .map(|a| a.instance.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_instance(instance: &str) -> Result<(), VolumeError> {
    if instance.is_empty()
        || instance.len() > 253
        || instance
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(VolumeError::InvalidArgument(format!(
            "instance {} must be 1 to 253 characters without spaces or control characters",
            echo(instance)
        )));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;

    fn open(dir: &std::path::Path) -> Volumes {
        let services = vec![ServiceConfig {
            name: "local".into(),
            driver: "vfs".into(),
            options: [(
                "root".to_owned(),
                toml::Value::String(dir.join("root").display().to_string()),
            )]
            .into(),
            allow: vec![],
            deny: vec![],
        }];
        let catalog = Catalog::build(
            &berth_drivers::DriverRegistry::with_builtin(),
            &services,
            std::path::Path::new("test"),
        )
        .expect("catalog");
        let store = Store::open(&dir.join("db")).expect("store");
        Volumes::new(Arc::new(catalog), store)
    }

    fn new_volume(name: &str) -> NewVolume {
        NewVolume {
            service: "local".into(),
            name: name.into(),
            size_bytes: 0,
            options: BTreeMap::new(),
            from_snapshot: None,
        }
    }

    /// A crash after the intent was flushed and before the record changed:
    /// the next start finishes deletes and undoes creates.
    #[tokio::test]
    async fn reconcile_finishes_interrupted_deletes_and_undoes_interrupted_creates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        {
            let volumes = open(dir.path());
            let kept = volumes.create(new_volume("doomed")).await.expect("create");
            // Interrupted delete: intent written, driver and record untouched.
            volumes
                .store
                .begin(
                    &Fence::none(),
                    &VolumeKey::new("local", "doomed"),
                    &Intent::Delete { record: kept },
                )
                .await
                .expect("intent");
            // Interrupted create: intent written, driver done, no record.
            let name = VolumeName::parse("half").expect("name");
            let record = volumes.new_record(
                volumes.service("local").expect("service"),
                &name,
                0,
                BTreeMap::new(),
                None,
            );
            volumes
                .store
                .begin(
                    &Fence::none(),
                    &VolumeKey::new("local", "half"),
                    &Intent::Create { record },
                )
                .await
                .expect("intent");
            let service = Arc::clone(volumes.service("local").expect("service"));
            service
                .driver
                .create(&CreateRequest {
                    name,
                    size_bytes: 0,
                    options: BTreeMap::new(),
                })
                .await
                .expect("driver create");
            volumes.flush().await.expect("flush");
            assert!(root.join("doomed").is_dir() && root.join("half").is_dir());
        }
        let volumes = open(dir.path());
        volumes.reconcile().await.expect("reconcile");
        assert!(
            !root.join("doomed").exists(),
            "the interrupted delete was finished"
        );
        assert!(
            !root.join("half").exists(),
            "the interrupted create was undone"
        );
        assert!(volumes.get("local", "doomed").await.is_err());
        assert!(volumes.get("local", "half").await.is_err());
        assert!(volumes.store.intents().await.expect("intents").is_empty());
    }
}
