//! The `vfs` driver: each volume is a real directory under a root.
//!
//! Service option: `root` (required), the directory holding the volumes.
//! Volume option: `mode`, the octal permissions of the volume directory
//! (default `0755`). The size is recorded as a quota hint; it is not
//! enforced, but a size above 2^63 - 1 bytes (the largest file size POSIX
//! can express) is refused with `OutOfRange`. Attaching returns the directory's path; a volume is attached to
//! one instance at a time. A snapshot is a point-in-time copy of the
//! directory tree (sharing extents where the filesystem supports reflinks).
//!
//! Layout under `root`:
//!
//! ```text
//! <root>/<name>/                       the volume's data
//! <root>/.berth/volumes/<name>         its metadata; the volume exists exactly when this file does
//! <root>/.berth/snapshots/<snap>/      a snapshot's data
//! <root>/.berth/snapshot-meta/<snap>   its metadata (volume, size)
//! <root>/.berth/staging/               copies being made
//! <root>/.berth/trash/                 data being deleted
//! ```
//!
//! Volume names never start with `.`, so `.berth` cannot collide with one.
//!
//! A volume's path is never reached through a symbolic link: an existing
//! directory left by an interrupted create is adopted only if it is a real
//! directory (opened with `O_NOFOLLOW | O_DIRECTORY`, its mode set with
//! `fchmod` on that descriptor); a link or a file planted at `<root>/<name>`
//! is refused with `FailedPrecondition` naming the path, and left alone.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::file::durable::{check_size, copy_tree, open_dir_nofollow, sync_dir, Staged, OFF_T_MAX};
use crate::file::layout::{blocking, Dirs};
use crate::file::meta::{self, stamp};
use crate::file::store::{file_driver, FileStore};
use crate::{
    CreateRequest, DriverError, DriverOptions, DriverResult, DriverSnapshot, DriverVolume,
    VolumeName,
};

/// The name the `vfs` driver is registered under.
pub const DRIVER_NAME: &str = "vfs";

const DEFAULT_MODE: u32 = 0o755;

/// Volumes as directories under a root.
#[derive(Debug, Clone)]
pub struct VfsDriver {
    inner: Arc<Layout>,
}

#[derive(Debug)]
struct Layout {
    dirs: Dirs,
}

impl std::ops::Deref for Layout {
    type Target = Dirs;

    fn deref(&self) -> &Dirs {
        &self.dirs
    }
}

impl VfsDriver {
    /// Opens (creating if needed) a `vfs` store rooted at `root`, and clears
    /// what a crash left half done.
    pub fn open(root: impl Into<PathBuf>) -> DriverResult<Self> {
        let layout = Layout {
            dirs: Dirs::create(root.into())?,
        };
        layout.empty(&layout.staging);
        layout.empty(&layout.trash);
        Ok(Self {
            inner: Arc::new(layout),
        })
    }

    /// Builds the driver from a service's options (`root`).
    pub fn from_options(options: &DriverOptions) -> DriverResult<Self> {
        Self::check_options(options)?;
        Self::open(options.require("root")?)
    }

    /// Refuses options [`from_options`](Self::from_options) would refuse,
    /// creating nothing: unknown keys, a missing or empty `root`, a `root`
    /// that exists and is not a directory.
    pub fn check_options(options: &DriverOptions) -> DriverResult<()> {
        options.only(&["root"])?;
        crate::file::layout::check_root(options.require("root")?)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, f: F) -> DriverResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Layout) -> DriverResult<T> + Send + 'static,
    {
        blocking(DRIVER_NAME, &self.inner, f).await
    }
}

impl Layout {
    /// The existing volume if it matches `request`, AlreadyExists if it
    /// differs, `None` if there is none.
    fn existing(&self, request: &CreateRequest) -> DriverResult<Option<DriverVolume>> {
        meta::existing(self.size_of(&request.name)?, request, |size| {
            self.volume(&request.name, size)
        })
    }

    fn record(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        meta::write_volume(&self.meta, &request.name, request.size_bytes)?;
        self.volume(&request.name, request.size_bytes)
    }

    /// Moves `path` to the trash (atomically out of sight) and makes that
    /// durable, then deletes it.
    fn discard(&self, path: &Path) -> DriverResult<()> {
        let doomed = self.hide(path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        self.remove_doomed(&doomed);
        Ok(())
    }

    /// Moves `path` to the trash, atomically out of sight, and returns its
    /// place there; not yet durable (sync `path`'s parent).
    ///
    /// Only the volume's leaving its parent must be durable. The trash
    /// entry is not synced: if it is lost in a crash the data is gone, which
    /// is what a delete wants (a rename is one journal transaction on
    /// journaling filesystems such as ext4 and xfs, so syncing the source
    /// commits the target too); whatever survives in the trash is emptied at
    /// start.
    fn hide(&self, path: &Path) -> DriverResult<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doomed = self.trash.join(format!("{name}.{}", stamp()));
        fs::rename(path, &doomed).map_err(|e| {
            DriverError::io(
                format!("moving {} to {}", path.display(), doomed.display()),
                e,
            )
        })?;
        Ok(doomed)
    }

    /// Deletes one entry this operation moved to the trash, and only that:
    /// the other entries there belong to deletes running now (sweeping them
    /// too raced those deletes, each warning about the entries another had
    /// just removed) or to a removal that failed, which the next start
    /// retries. Best effort: a failure is logged.
    fn remove_doomed(&self, doomed: &Path) {
        let gone = match fs::symlink_metadata(doomed) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(doomed),
            Ok(_) => fs::remove_file(doomed),
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %doomed.display(), error = %e, "could not clear a deleted volume's data; it goes at the next start")
            }
        }
    }

    fn remove_meta(&self, dir: &Path, name: &VolumeName) -> DriverResult<()> {
        if self.unlink_meta(dir, name)? {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Removes the metadata file of `name` in `dir`, not yet durably;
    /// whether there was one.
    fn unlink_meta(&self, dir: &Path, name: &VolumeName) -> DriverResult<bool> {
        let path = meta::child(dir, name.as_str())?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DriverError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Best effort: what fails to go now goes at the next start.
    fn empty(&self, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // The entry's own type: a link is removed, never followed.
            let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = gone {
                tracing::warn!(path = %path.display(), error = %e, "could not clear a leftover");
            }
        }
    }
}

/// Opens the existing `<root>/<name>` for adoption: a real directory only.
fn adoptable(data: &Path) -> DriverResult<fs::File> {
    match open_dir_nofollow(data) {
        Ok(dir) => Ok(dir),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            match fs::symlink_metadata(data) {
                Ok(meta) => Err(not_adoptable(data, &meta)),
                Err(e) => Err(DriverError::io(format!("inspecting {}", data.display()), e)),
            }
        }
        Err(e) => Err(DriverError::io(format!("opening {}", data.display()), e)),
    }
}

/// The refusal for something at a volume's path that berth did not make.
fn not_adoptable(data: &Path, meta: &fs::Metadata) -> DriverError {
    let what = if meta.file_type().is_symlink() {
        "a symbolic link; berth never follows a link at a volume's path"
    } else {
        "not a directory; berth adopts only a directory there"
    };
    DriverError::FailedPrecondition(format!(
        "{} exists and is {what}: remove or rename it, or choose another volume name",
        data.display()
    ))
}

fn parse_mode(options: &BTreeMap<String, String>) -> DriverResult<u32> {
    if let Some(unknown) = options.keys().find(|k| k.as_str() != "mode") {
        return Err(DriverError::InvalidArgument(format!(
            "the vfs driver has no volume option {} (known: mode)",
            crate::echo(unknown)
        )));
    }
    match options.get("mode") {
        None => Ok(DEFAULT_MODE),
        Some(text) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                DriverError::InvalidArgument(format!(
                    "option mode={} is not an octal permission from 0 to 0777, such as 0750",
                    crate::echo(text)
                ))
            }),
    }
}

impl FileStore for Layout {
    fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    fn data(&self, dir: &Path, name: &VolumeName) -> DriverResult<PathBuf> {
        meta::child(dir, name.as_str())
    }

    fn attachment_fields(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn volume(&self, name: &VolumeName, size_bytes: u64) -> DriverResult<DriverVolume> {
        let path = meta::child(&self.root, name.as_str())?;
        Ok(DriverVolume {
            name: name.clone(),
            size_bytes,
            fields: BTreeMap::from([("path".to_owned(), path.display().to_string())]),
        })
    }

    fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let mode = parse_mode(&request.options)?;
        check_size(request.size_bytes, OFF_T_MAX, "a vfs volume")?;
        if let Some(existing) = self.existing(request)? {
            return Ok(existing);
        }
        let data = meta::child(&self.root, request.name.as_str())?;
        // A directory without metadata is a create that a crash interrupted
        // before it was acknowledged: adopt it, but only a real directory,
        // and only through a descriptor that did not follow a link.
        match fs::DirBuilder::new().mode(mode).create(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DriverError::io(format!("creating {}", data.display()), e)),
        }
        let dir = adoptable(&data)?;
        dir.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| DriverError::io(format!("setting the mode of {}", data.display()), e))?;
        // Both entries are made before either directory is synced, and both
        // are synced before returning: what the create made is durable when
        // it returns, as before. On a journaling filesystem (ext4, xfs) the
        // metadata file's own fsync commits the `mkdir` with it, so the
        // root's sync finds nothing left to commit: one journal commit fewer
        // per create than syncing the root first. The order of the two
        // becoming durable does not matter: a crash before the create is
        // acknowledged leaves its intent, and the next start undoes
        // whatever part of it survived.
        let volume = self.record(request)?;
        sync_dir(&self.root)?;
        Ok(volume)
    }

    /// Creates `request.name` holding a copy of `source` (a directory).
    fn create_copy(&self, source: &Path, request: &CreateRequest) -> DriverResult<DriverVolume> {
        if !request.options.is_empty() {
            parse_mode(&request.options)?;
        }
        check_size(request.size_bytes, OFF_T_MAX, "a vfs volume")?;
        if let Some(existing) = self.existing(request)? {
            return Ok(existing);
        }
        let data = meta::child(&self.root, request.name.as_str())?;
        match fs::symlink_metadata(&data) {
            // Left by an interrupted create: it was never acknowledged.
            Ok(meta) if meta.is_dir() => self.discard(&data)?,
            Ok(meta) => return Err(not_adoptable(&data, &meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::io(format!("inspecting {}", data.display()), e)),
        }
        let staged = Staged::new(self.staging.join(format!("{}.{}", request.name, stamp())));
        copy_tree(source, staged.path())?;
        if let Some(mode) = request
            .options
            .get("mode")
            .map(|_| parse_mode(&request.options))
            .transpose()?
        {
            open_dir_nofollow(staged.path())
                .and_then(|dir| dir.set_permissions(fs::Permissions::from_mode(mode)))
                .map_err(|e| {
                    DriverError::io(
                        format!("setting the mode of {}", staged.path().display()),
                        e,
                    )
                })?;
        }
        fs::rename(staged.path(), &data)
            .map_err(|e| DriverError::io(format!("moving {} into place", data.display()), e))?;
        staged.keep();
        sync_dir(&self.root)?;
        sync_dir(&self.staging)?;
        self.record(request)
    }

    fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        let data = meta::child(&self.root, name.as_str())?;
        // symlink_metadata: whatever is there (a link too) is moved to the
        // trash as it is; nothing is followed.
        let doomed = match fs::symlink_metadata(&data) {
            Ok(_) => Some(self.hide(&data)?),
            Err(_) => None,
        };
        let unlinked = self.unlink_meta(&self.meta, name)?;
        // Both changes are made before either directory is synced, and both
        // are synced before returning: the delete is durable when it
        // returns, as before. On a journaling filesystem the first sync
        // commits both changes (one transaction), so the second finds
        // nothing left to commit: one journal commit per delete instead of
        // two. A crash before the delete is acknowledged leaves its intent,
        // and the next start finishes it whatever part survived.
        if doomed.is_some() {
            sync_dir(&self.root)?;
        }
        if unlinked {
            sync_dir(&self.meta)?;
        }
        if let Some(doomed) = doomed {
            self.remove_doomed(&doomed);
        }
        Ok(())
    }

    fn create_snapshot(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
    ) -> DriverResult<DriverSnapshot> {
        if let Some(existing) = self.retaken(volume, snapshot)? {
            return Ok(existing);
        }
        let Some(size_bytes) = self.size_of(volume)? else {
            return Err(DriverError::NotFound(format!("volume {volume}")));
        };
        let data = meta::child(&self.snapshots, snapshot.as_str())?;
        if fs::symlink_metadata(&data).is_ok() {
            self.discard(&data)?;
        }
        let staged = Staged::new(self.staging.join(format!("{snapshot}.{}", stamp())));
        copy_tree(&meta::child(&self.root, volume.as_str())?, staged.path())?;
        fs::rename(staged.path(), &data)
            .map_err(|e| DriverError::io(format!("moving {} into place", data.display()), e))?;
        staged.keep();
        sync_dir(&self.snapshots)?;
        let taken = DriverSnapshot {
            name: snapshot.clone(),
            volume: volume.clone(),
            size_bytes,
        };
        meta::write_snapshot(&self.snapshot_meta, &taken)?;
        Ok(taken)
    }

    fn delete_snapshot(&self, snapshot: &VolumeName) -> DriverResult<()> {
        let data = meta::child(&self.snapshots, snapshot.as_str())?;
        if fs::symlink_metadata(&data).is_ok() {
            self.discard(&data)?;
        }
        self.remove_meta(&self.snapshot_meta, snapshot)
    }
}

file_driver!(VfsDriver);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VolumeDriver;

    fn request(name: &str, size: u64) -> CreateRequest {
        CreateRequest {
            name: VolumeName::parse(name).expect("valid name"),
            size_bytes: size,
            options: BTreeMap::new(),
        }
    }

    /// A delete removes its own data from the trash and nothing else there:
    /// the other entries belong to deletes running at the same time (which
    /// each remove their own) or wait for the next start. Sweeping the whole
    /// trash on every delete raced concurrent deletes, and each lost race
    /// logged a warning.
    #[tokio::test]
    async fn a_delete_clears_only_its_own_trash_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        let v = driver.create(&request("gone", 1)).await.expect("create");
        fs::write(dir.path().join("gone/file"), b"x").expect("write");
        let trash = dir.path().join(".berth/trash");
        let other = trash.join("other.1.1");
        fs::create_dir(&other).expect("another delete's entry");
        driver.delete(&v.name).await.expect("delete");
        assert!(!dir.path().join("gone").exists());
        let left: Vec<_> = fs::read_dir(&trash)
            .expect("trash")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(
            left,
            vec![other],
            "the delete's own data is gone, and only it"
        );
        // The next start empties what is left.
        drop(driver);
        VfsDriver::open(dir.path()).expect("reopen");
        assert_eq!(fs::read_dir(&trash).expect("trash").count(), 0);
    }

    #[tokio::test]
    async fn volumes_are_directories_and_delete_removes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        let v = driver.create(&request("data", 10)).await.expect("create");
        assert_eq!(
            v.fields["path"],
            dir.path().join("data").display().to_string()
        );
        assert!(dir.path().join("data").is_dir());
        fs::write(dir.path().join("data/file"), b"x").expect("write");

        assert_eq!(driver.create(&request("data", 10)).await.expect("again"), v);
        assert!(matches!(
            driver.create(&request("data", 11)).await,
            Err(DriverError::AlreadyExists(_))
        ));

        driver.delete(&v.name).await.expect("delete");
        assert!(!dir.path().join("data").exists());
        assert_eq!(driver.get(&v.name).await.expect("get"), None);
        driver
            .delete(&v.name)
            .await
            .expect("delete of a missing volume is ok");
    }

    #[tokio::test]
    async fn snapshots_are_point_in_time_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        driver.create(&request("v", 1)).await.expect("create");
        fs::write(dir.path().join("v/f"), b"before").expect("write");
        let snap = VolumeName::parse("s1").expect("name");
        driver
            .create_snapshot(&request("v", 1).name, &snap)
            .await
            .expect("snapshot");
        fs::write(dir.path().join("v/f"), b"after").expect("write");
        driver
            .create_from_snapshot(&snap, &request("r", 1))
            .await
            .expect("restore");
        assert_eq!(fs::read(dir.path().join("r/f")).expect("read"), b"before");
        driver
            .copy(&request("v", 1).name, &request("c", 1))
            .await
            .expect("copy");
        assert_eq!(fs::read(dir.path().join("c/f")).expect("read"), b"after");
    }

    /// The permission bits of what `path` names (following links).
    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_link_or_file_at_a_volume_path_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let driver = VfsDriver::open(&root).expect("open");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("outside");
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::symlink(&outside, root.join("adoptme")).expect("link");
        fs::write(root.join("afile"), b"x").expect("file");
        fs::set_permissions(root.join("afile"), fs::Permissions::from_mode(0o600)).expect("chmod");
        let source = driver.create(&request("src", 0)).await.expect("source");

        for name in ["adoptme", "afile"] {
            let mut req = request(name, 0);
            req.options.insert("mode".into(), "0777".into());
            let err = driver.create(&req).await.expect_err(name);
            assert!(
                matches!(&err, DriverError::FailedPrecondition(m) if m.contains(name)),
                "{name}: {err:?}"
            );
            let err = driver.copy(&source.name, &req).await.expect_err(name);
            assert!(
                matches!(&err, DriverError::FailedPrecondition(_)),
                "copy onto {name}: {err:?}"
            );
            assert_eq!(driver.get(&req.name).await.expect("get"), None, "{name}");
        }
        assert_eq!(mode_of(&outside), 0o700, "the link's target was chmodded");
        assert_eq!(mode_of(&root.join("afile")), 0o600, "the file was chmodded");
        assert!(fs::symlink_metadata(root.join("adoptme"))
            .expect("the link stays")
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(root.join("afile")).expect("the file stays"), b"x");

        // A real directory left by an interrupted create is still adopted.
        fs::create_dir(root.join("left")).expect("leftover");
        let mut req = request("left", 0);
        req.options.insert("mode".into(), "0750".into());
        driver.create(&req).await.expect("adopt a real directory");
        assert_eq!(mode_of(&root.join("left")), 0o750);
    }

    #[tokio::test]
    async fn sizes_past_the_largest_file_are_out_of_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        let err = driver
            .create(&request("huge", OFF_T_MAX + 6))
            .await
            .expect_err("2^63 + 5 bytes");
        assert!(matches!(err, DriverError::OutOfRange(_)), "{err:?}");
        assert!(!dir.path().join("huge").exists());
        driver
            .create(&request("largest", OFF_T_MAX))
            .await
            .expect("2^63 - 1 bytes is a valid hint");
    }

    #[tokio::test]
    async fn bad_mode_is_refused_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        let mut req = request("m", 0);
        req.options.insert("mode".into(), "999".into());
        assert!(matches!(
            driver.create(&req).await,
            Err(DriverError::InvalidArgument(_))
        ));
        assert!(!dir.path().join("m").exists());
    }
}
