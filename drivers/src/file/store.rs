//! The one `VolumeDriver` of the file-backed drivers. A driver says what is
//! its own (how data is made, copied and removed, where it lives) by
//! implementing [`FileStore`] on its layout; [`file_driver!`] then writes
//! its `VolumeDriver` impl: every call runs on the blocking pool, and
//! listing, lookup, attach and the copy-based creates are shared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::file::layout::Dirs;
use crate::file::meta;
use crate::{
    Attachment, CreateRequest, DriverError, DriverResult, DriverSnapshot, DriverVolume, VolumeName,
};

/// What a file-backed driver does its own way. All calls block.
pub(crate) trait FileStore: Send + Sync + 'static {
    /// Its directories.
    fn dirs(&self) -> &Dirs;
    /// Where the data of `name` lives in `dir` (the root or the snapshots).
    fn data(&self, dir: &Path, name: &VolumeName) -> DriverResult<PathBuf>;
    /// The volume as the driver reports it.
    fn volume(&self, name: &VolumeName, size_bytes: u64) -> DriverResult<DriverVolume>;
    /// Facts an attachment carries besides its device.
    fn attachment_fields(&self) -> BTreeMap<String, String>;
    /// Creates an empty volume; idempotent.
    fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume>;
    /// Creates a volume holding a copy of the data at `source`; idempotent.
    fn create_copy(&self, source: &Path, request: &CreateRequest) -> DriverResult<DriverVolume>;
    /// Deletes a volume; deleting what is not there is fine.
    fn delete(&self, name: &VolumeName) -> DriverResult<()>;
    /// Takes a snapshot of `volume`; idempotent.
    fn create_snapshot(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
    ) -> DriverResult<DriverSnapshot>;
    /// Deletes a snapshot; deleting what is not there is fine.
    fn delete_snapshot(&self, snapshot: &VolumeName) -> DriverResult<()>;

    /// A volume's size, from its metadata file; `None` if there is none.
    fn size_of(&self, name: &VolumeName) -> DriverResult<Option<u64>> {
        meta::volume_size(&self.dirs().meta, name)
    }

    /// A snapshot, from its metadata file; `None` if there is none.
    fn snapshot(&self, snapshot: &VolumeName) -> DriverResult<Option<DriverSnapshot>> {
        meta::snapshot(&self.dirs().snapshot_meta, snapshot)
    }

    /// A snapshot already taken under this name: `Some` when it is of
    /// `volume` (a retry answers it), AlreadyExists when of another.
    fn retaken(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
    ) -> DriverResult<Option<DriverSnapshot>> {
        match self.snapshot(snapshot)? {
            Some(existing) if &existing.volume == volume => Ok(Some(existing)),
            Some(existing) => Err(DriverError::AlreadyExists(format!(
                "snapshot {snapshot} already exists, of volume {}",
                existing.volume
            ))),
            None => Ok(None),
        }
    }

    /// The bytes a volume's data occupies on disk (allocated blocks, so a
    /// sparse image counts what it holds); `None` if there is no such
    /// volume or its tree is too large to walk for a listing.
    fn used_bytes(&self, name: &VolumeName) -> DriverResult<Option<u64>> {
        if self.size_of(name)?.is_none() {
            return Ok(None);
        }
        Ok(allocated(&self.data(&self.dirs().root, name)?))
    }

    /// A volume, if it exists.
    fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
        match self.size_of(name)? {
            Some(size) => self.volume(name, size).map(Some),
            None => Ok(None),
        }
    }

    /// Every volume with a metadata file.
    fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        let mut volumes = Vec::new();
        for name in meta::names_in(&self.dirs().meta)? {
            if let Some(size) = self.size_of(&name)? {
                volumes.push(self.volume(&name, size)?);
            }
        }
        Ok(volumes)
    }

    /// Every snapshot with a metadata file.
    fn list_snapshots(&self) -> DriverResult<Vec<DriverSnapshot>> {
        let mut out = Vec::new();
        for name in meta::names_in(&self.dirs().snapshot_meta)? {
            if let Some(s) = self.snapshot(&name)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The attachment of an existing volume: its data path is the device.
    fn attach(&self, name: &VolumeName, instance: String) -> DriverResult<Attachment> {
        if self.size_of(name)?.is_none() {
            return Err(DriverError::NotFound(format!("volume {name}")));
        }
        Ok(Attachment {
            instance,
            device: self.data(&self.dirs().root, name)?.display().to_string(),
            fields: self.attachment_fields(),
        })
    }

    /// A new volume holding a snapshot's data.
    fn create_from_snapshot(
        &self,
        snapshot: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        if self.snapshot(snapshot)?.is_none() {
            return Err(DriverError::NotFound(format!("snapshot {snapshot}")));
        }
        let source = self.data(&self.dirs().snapshots, snapshot)?;
        self.create_copy(&source, request)
    }

    /// A new volume holding a copy of another's data.
    fn copy(&self, source: &VolumeName, request: &CreateRequest) -> DriverResult<DriverVolume> {
        if self.size_of(source)?.is_none() {
            return Err(DriverError::NotFound(format!("volume {source}")));
        }
        let from = self.data(&self.dirs().root, source)?;
        self.create_copy(&from, request)
    }
}

/// The most entries [`allocated`] examines before it calls the answer
/// unknown: a listing must stay cheap whatever a volume holds.
pub(crate) const USAGE_WALK_LIMIT: usize = 10_000;

/// Allocated bytes of a file, or of a directory tree (links not followed,
/// each entry's own blocks), `None` past [`USAGE_WALK_LIMIT`] entries or
/// when `path` cannot be read.
pub(crate) fn allocated(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut total = meta.blocks() * 512;
    if !meta.is_dir() {
        return Some(total);
    }
    let (mut pending, mut seen) = (vec![path.to_owned()], 0usize);
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()? {
            seen += 1;
            if seen > USAGE_WALK_LIMIT {
                return None;
            }
            let entry = entry.ok()?;
            let meta = entry.metadata().ok()?;
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Some(total)
}

/// Writes `impl VolumeDriver for $driver`, where `$driver` has
/// `fn blocking(&self, f: impl FnOnce(&Layout) -> DriverResult<T>)` over a
/// layout implementing [`FileStore`], and the module has `DRIVER_NAME`.
/// Both built-in file drivers support everything but multi-attach.
macro_rules! file_driver {
    ($driver:ty) => {
        #[async_trait::async_trait]
        impl $crate::VolumeDriver for $driver {
            fn name(&self) -> &str {
                DRIVER_NAME
            }

            fn capabilities(&self) -> $crate::Capabilities {
                $crate::Capabilities {
                    attach: true,
                    multi_attach: false,
                    snapshot: true,
                    copy: true,
                    create_from_snapshot: true,
                }
            }

            async fn create(
                &self,
                request: &$crate::CreateRequest,
            ) -> $crate::DriverResult<$crate::DriverVolume> {
                let request = request.clone();
                self.blocking(move |l| l.create(&request)).await
            }

            async fn delete(&self, name: &$crate::VolumeName) -> $crate::DriverResult<()> {
                let name = name.clone();
                self.blocking(move |l| l.delete(&name)).await
            }

            async fn get(
                &self,
                name: &$crate::VolumeName,
            ) -> $crate::DriverResult<Option<$crate::DriverVolume>> {
                let name = name.clone();
                self.blocking(move |l| l.get(&name)).await
            }

            async fn list(&self) -> $crate::DriverResult<Vec<$crate::DriverVolume>> {
                self.blocking(|l| l.list()).await
            }

            async fn used_bytes(
                &self,
                name: &$crate::VolumeName,
            ) -> $crate::DriverResult<Option<u64>> {
                let name = name.clone();
                self.blocking(move |l| l.used_bytes(&name)).await
            }

            async fn attach(
                &self,
                name: &$crate::VolumeName,
                instance: &str,
            ) -> $crate::DriverResult<$crate::Attachment> {
                let (name, instance) = (name.clone(), instance.to_owned());
                self.blocking(move |l| l.attach(&name, instance)).await
            }

            async fn detach(
                &self,
                _name: &$crate::VolumeName,
                _instance: &str,
            ) -> $crate::DriverResult<()> {
                // A directory or an image file needs nothing undone.
                Ok(())
            }

            async fn create_snapshot(
                &self,
                volume: &$crate::VolumeName,
                snapshot: &$crate::VolumeName,
            ) -> $crate::DriverResult<$crate::DriverSnapshot> {
                self.create_snapshot_with_progress(volume, snapshot, &$crate::Progress::none())
                    .await
            }

            async fn create_snapshot_with_progress(
                &self,
                volume: &$crate::VolumeName,
                snapshot: &$crate::VolumeName,
                progress: &$crate::Progress,
            ) -> $crate::DriverResult<$crate::DriverSnapshot> {
                let (volume, snapshot) = (volume.clone(), snapshot.clone());
                let progress = progress.clone();
                self.blocking(move |l| progress.scope(|| l.create_snapshot(&volume, &snapshot)))
                    .await
            }

            async fn delete_snapshot(
                &self,
                snapshot: &$crate::VolumeName,
            ) -> $crate::DriverResult<()> {
                let snapshot = snapshot.clone();
                self.blocking(move |l| l.delete_snapshot(&snapshot)).await
            }

            async fn list_snapshots(&self) -> $crate::DriverResult<Vec<$crate::DriverSnapshot>> {
                self.blocking(|l| l.list_snapshots()).await
            }

            async fn create_from_snapshot(
                &self,
                snapshot: &$crate::VolumeName,
                request: &$crate::CreateRequest,
            ) -> $crate::DriverResult<$crate::DriverVolume> {
                self.create_from_snapshot_with_progress(
                    snapshot,
                    request,
                    &$crate::Progress::none(),
                )
                .await
            }

            async fn create_from_snapshot_with_progress(
                &self,
                snapshot: &$crate::VolumeName,
                request: &$crate::CreateRequest,
                progress: &$crate::Progress,
            ) -> $crate::DriverResult<$crate::DriverVolume> {
                let (snapshot, request) = (snapshot.clone(), request.clone());
                let progress = progress.clone();
                self.blocking(move |l| {
                    progress.scope(|| l.create_from_snapshot(&snapshot, &request))
                })
                .await
            }

            async fn copy(
                &self,
                source: &$crate::VolumeName,
                request: &$crate::CreateRequest,
            ) -> $crate::DriverResult<$crate::DriverVolume> {
                self.copy_with_progress(source, request, &$crate::Progress::none())
                    .await
            }

            async fn copy_with_progress(
                &self,
                source: &$crate::VolumeName,
                request: &$crate::CreateRequest,
                progress: &$crate::Progress,
            ) -> $crate::DriverResult<$crate::DriverVolume> {
                let (source, request) = (source.clone(), request.clone());
                let progress = progress.clone();
                self.blocking(move |l| progress.scope(|| l.copy(&source, &request)))
                    .await
            }
        }
    };
}
pub(crate) use file_driver;
