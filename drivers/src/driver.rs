//! The [`VolumeDriver`] trait and the types it speaks in.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::{DriverError, DriverResult, Progress, VolumeName};

/// Which optional operations a driver supports.
///
/// The controller reads this once per service; it answers `Unimplemented`
/// for an operation the driver does not declare, without calling the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`VolumeDriver::attach`] and [`VolumeDriver::detach`] work.
    pub attach: bool,
    /// A volume may be attached to several instances at once.
    pub multi_attach: bool,
    /// Snapshots can be taken, listed and removed.
    pub snapshot: bool,
    /// [`VolumeDriver::copy`] works.
    pub copy: bool,
    /// [`VolumeDriver::create_from_snapshot`] works.
    pub create_from_snapshot: bool,
}

/// A request to create one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    /// The volume's name, already validated.
    pub name: VolumeName,
    /// Requested size in bytes; 0 means "no particular size".
    pub size_bytes: u64,
    /// Per-volume options as given by the client. A driver must refuse
    /// options it does not know with [`DriverError::InvalidArgument`].
    pub options: BTreeMap<String, String>,
}

/// A volume as the driver sees it.
///
/// The controller keeps the rest of the record (id, creation time, service,
/// status); the driver reports what lives on its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverVolume {
    /// The volume's name.
    pub name: VolumeName,
    /// Its size in bytes (as recorded or measured by the driver).
    pub size_bytes: u64,
    /// Facts a user needs, shown in `berth volume inspect` (for example
    /// `path`). Never put secrets here.
    pub fields: BTreeMap<String, String>,
}

/// What an instance needs to use an attached volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The instance the volume is attached to.
    pub instance: String,
    /// Where the instance finds the volume: a directory, a device or an image
    /// file path.
    pub device: String,
    /// Extra facts (for example the image format).
    pub fields: BTreeMap<String, String>,
}

/// A point-in-time snapshot as the driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverSnapshot {
    /// The snapshot's name, unique within the driver.
    pub name: VolumeName,
    /// The volume it was taken from.
    pub volume: VolumeName,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// A volume driver: the storage behind one or more configured services.
///
/// # Contract
///
/// * **Names.** Every name reaching a driver is a [`VolumeName`]: the
///   controller has already refused anything else. Drivers still build paths
///   defensively, as a second wall.
/// * **Idempotency.** Orchestrators retry. [`create`](Self::create) of a name
///   that exists with the same size returns the existing volume; with a
///   different size it is [`DriverError::AlreadyExists`].
///   [`delete`](Self::delete) of a missing volume is `Ok(())`.
/// * **Durability.** When a method returns `Ok`, its effect must survive a
///   crash of the process the moment after (fsync what you wrote, and the
///   directory that names it). A crash *during* a call may leave partial
///   state behind, but a later call with the same arguments must finish or
///   undo it: the controller replays interrupted operations at start-up.
/// * **Concurrency.** The controller never runs two operations on the same
///   volume name at once, but runs operations on different names in
///   parallel; methods take `&self` and must be safe to call concurrently.
/// * **Errors.** Return the [`DriverError`] variant that tells the caller
///   what to do; its message is shown to a person. In short: a bad request
///   or option is `InvalidArgument`; a missing object in an operation that
///   needs it (attach, snapshot, restore, copy source) is `NotFound`; a name
///   taken with other parameters is `AlreadyExists`; a refused state change
///   is `FailedPrecondition`; a size the storage can never hold is
///   `OutOfRange` (refused before anything is written); storage that may
///   come back is `Unavailable`;
///   I/O failures are `Io`; an optional operation you do not implement is
///   `Unsupported` (the default methods do this for you). Show user input
///   in a message only through [`crate::echo`]. A failed call leaves no
///   partial files behind (staging is cleaned on every error path).
/// * **What the controller already did.** It validated every name, checked
///   the service's capabilities before calling an optional method, refused
///   a second attachment for a single-attach driver, refused to delete a
///   volume with snapshots or attachments, and recorded its intent durably.
///   A driver does not keep its own record of attachments.
///
/// Optional operations default to [`DriverError::Unsupported`]; declare the
/// ones you implement in [`capabilities`](Self::capabilities).
#[async_trait]
pub trait VolumeDriver: Send + Sync + 'static {
    /// The driver's registered name, for example `"vfs"`.
    fn name(&self) -> &str;

    /// The optional operations this driver supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Creates a volume, or returns it if it already exists with the same
    /// size (see the contract above).
    async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume>;

    /// Deletes a volume and its data. A missing volume is `Ok(())`.
    async fn delete(&self, name: &VolumeName) -> DriverResult<()>;

    /// One volume, or `None` if it does not exist.
    async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>>;

    /// Every volume the driver holds, in any order.
    async fn list(&self) -> DriverResult<Vec<DriverVolume>>;

    /// The bytes `name` occupies on its storage now, if the driver can tell
    /// cheaply (it is asked for every volume of a listing page): `None`
    /// means unknown, which is the default. The built-in drivers count the
    /// allocated blocks of the volume's file or directory tree.
    async fn used_bytes(&self, name: &VolumeName) -> DriverResult<Option<u64>> {
        let _ = name;
        Ok(None)
    }

    /// Makes a volume usable by `instance` and says how to reach it.
    /// Attaching again to the same instance returns the same answer. The
    /// controller enforces single attachment; the driver does the work.
    async fn attach(&self, name: &VolumeName, instance: &str) -> DriverResult<Attachment> {
        let _ = (name, instance);
        Err(self.unsupported("attach"))
    }

    /// Undoes [`attach`](Self::attach). Detaching a volume that is not
    /// attached to `instance` is `Ok(())`.
    async fn detach(&self, name: &VolumeName, instance: &str) -> DriverResult<()> {
        let _ = (name, instance);
        Err(self.unsupported("detach"))
    }

    /// Takes a point-in-time snapshot `snapshot` of `volume`. Idempotent like
    /// [`create`](Self::create): the same snapshot of the same volume again
    /// returns it.
    async fn create_snapshot(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
    ) -> DriverResult<DriverSnapshot> {
        let _ = (volume, snapshot);
        Err(self.unsupported("snapshots"))
    }

    /// Deletes a snapshot. A missing snapshot is `Ok(())`.
    async fn delete_snapshot(&self, snapshot: &VolumeName) -> DriverResult<()> {
        let _ = snapshot;
        Err(self.unsupported("snapshots"))
    }

    /// Every snapshot the driver holds.
    async fn list_snapshots(&self) -> DriverResult<Vec<DriverSnapshot>> {
        Err(self.unsupported("snapshots"))
    }

    /// Creates a new volume holding the snapshot's contents.
    async fn create_from_snapshot(
        &self,
        snapshot: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        let _ = (snapshot, request);
        Err(self.unsupported("creating volumes from snapshots"))
    }

    /// Creates `request.name` as a copy of `source`.
    async fn copy(
        &self,
        source: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        let _ = (source, request);
        Err(self.unsupported("copying volumes"))
    }

    /// [`copy`](Self::copy), reporting how far it has come to `progress`.
    /// The default reports nothing and calls `copy`.
    async fn copy_with_progress(
        &self,
        source: &VolumeName,
        request: &CreateRequest,
        progress: &Progress,
    ) -> DriverResult<DriverVolume> {
        let _ = progress;
        self.copy(source, request).await
    }

    /// [`create_from_snapshot`](Self::create_from_snapshot), reporting to
    /// `progress`. The default reports nothing.
    async fn create_from_snapshot_with_progress(
        &self,
        snapshot: &VolumeName,
        request: &CreateRequest,
        progress: &Progress,
    ) -> DriverResult<DriverVolume> {
        let _ = progress;
        self.create_from_snapshot(snapshot, request).await
    }

    /// [`create_snapshot`](Self::create_snapshot), reporting to `progress`.
    /// The default reports nothing.
    async fn create_snapshot_with_progress(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
        progress: &Progress,
    ) -> DriverResult<DriverSnapshot> {
        let _ = progress;
        self.create_snapshot(volume, snapshot).await
    }

    /// Why the driver cannot serve calls right now (its storage or the
    /// process behind it is unreachable), or `None` when it can. Shown by
    /// `berth service list`; a driver whose storage is always local keeps
    /// the default.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// The controller tells the driver what it has on record for one of its
    /// volumes: the `fields` the driver returned when it made it. Called at
    /// start-up for every recorded volume, before interrupted operations are
    /// settled. A driver that needs its own handle for a volume (for example
    /// an id given by an external system) keeps it in those fields and
    /// learns it back here; drivers whose storage is named by the volume
    /// name ignore it (the default).
    fn recall(&self, name: &VolumeName, fields: &BTreeMap<String, String>) {
        let _ = (name, fields);
    }

    /// Like [`recall`](Self::recall), for a recorded snapshot of `volume`.
    fn recall_snapshot(&self, snapshot: &VolumeName, volume: &VolumeName) {
        let _ = (snapshot, volume);
    }

    /// The error for an optional operation this driver does not support.
    fn unsupported(&self, operation: &'static str) -> DriverError {
        DriverError::Unsupported {
            driver: self.name().to_owned(),
            operation,
        }
    }
}
