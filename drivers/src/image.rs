//! The `image` driver: each volume is a disk-image file of the requested
//! size, usable as a loop device or a VM disk.
//!
//! Service options: `root` (required), the directory holding the images;
//! `format`, `raw` (default: sparse raw files) or `qcow2` (made with
//! `qemu-img`, which must be installed). Volumes need a size and take one
//! volume option, `fs` (`ext4` or `xfs`): the filesystem `berth volume
//! mount` makes on first use (the driver only records it). Snapshots and copies are sparse-aware copies of the
//! image. Attaching returns the image's path; one instance at a time.
//!
//! A size is refused with `OutOfRange`, before anything is written, when it
//! is larger than the largest file the filesystem holding the root accepts
//! (measured once at open, see [`crate::file::durable::max_file_size`]; 16 TiB
//! less 4 KiB on ext4 with 4 KiB blocks, 2^63 - 1 bytes on XFS or tmpfs),
//! for qcow2 too: its file can never hold more than that. Work in progress
//! lives in `staging/` and is removed on every failure path.
//!
//! ```text
//! <root>/<name>.img|.qcow2              the image
//! <root>/.berth/volumes/<name>          metadata; the volume exists exactly when this file does
//! <root>/.berth/snapshots/<snap>.<ext>  a snapshot's image
//! <root>/.berth/snapshot-meta/<snap>    its metadata
//! <root>/.berth/staging/, trash/        work in progress
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::file::durable::{check_size, copy_sparse, max_file_size, sync_dir, Staged};
use crate::file::layout::{blocking, Dirs};
use crate::file::meta::{self, stamp};
use crate::file::store::{file_driver, FileStore};
use crate::{
    CreateRequest, DriverError, DriverOptions, DriverResult, DriverSnapshot, DriverVolume,
    VolumeName,
};

/// The name the `image` driver is registered under.
pub const DRIVER_NAME: &str = "image";

/// The on-disk format of the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Sparse raw files.
    Raw,
    /// qcow2, through `qemu-img`.
    Qcow2,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Raw => "img",
            Format::Qcow2 => "qcow2",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// Volumes as image files under a root.
#[derive(Debug, Clone)]
pub struct ImageDriver {
    inner: Arc<Layout>,
}

#[derive(Debug)]
struct Layout {
    dirs: Dirs,
    format: Format,
    /// The largest file the root's filesystem accepts, in bytes.
    max_size: u64,
}

impl std::ops::Deref for Layout {
    type Target = Dirs;

    fn deref(&self) -> &Dirs {
        &self.dirs
    }
}

/// Whether `qemu-img` can be run.
pub fn qemu_img_available() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl ImageDriver {
    /// Opens (creating) an image store at `root`.
    pub fn open(root: impl Into<PathBuf>, format: Format) -> DriverResult<Self> {
        if format == Format::Qcow2 && !qemu_img_available() {
            return Err(DriverError::InvalidOption {
                option: "format".into(),
                reason: "qcow2 needs `qemu-img`, which is not installed (Debian: apt-get install qemu-utils); use format = \"raw\" or install it".into(),
            });
        }
        let mut layout = Layout {
            dirs: Dirs::create(root.into())?,
            format,
            max_size: 0,
        };
        for dir in [&layout.staging, &layout.trash] {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        layout.max_size = max_file_size(&layout.staging).map_err(|e| {
            DriverError::io(
                format!(
                    "measuring the largest file {} accepts",
                    layout.staging.display()
                ),
                e,
            )
        })?;
        tracing::debug!(root = %layout.root.display(), max_size = layout.max_size,
            "largest image this filesystem holds");
        Ok(Self {
            inner: Arc::new(layout),
        })
    }

    /// The largest image size this driver accepts, in bytes: the largest
    /// file the root's filesystem holds.
    pub fn max_size(&self) -> u64 {
        self.inner.max_size
    }

    /// Builds the driver from a service's options (`root`, `format`).
    pub fn from_options(options: &DriverOptions) -> DriverResult<Self> {
        let format = Self::checked_format(options)?;
        Self::open(options.require("root")?, format)
    }

    /// Refuses options [`from_options`](Self::from_options) would refuse,
    /// creating nothing: unknown keys, a missing or empty `root` (or one
    /// that exists and is not a directory), a `format` other than `raw` or
    /// `qcow2`.
    pub fn check_options(options: &DriverOptions) -> DriverResult<()> {
        Self::checked_format(options).map(|_| ())
    }

    fn checked_format(options: &DriverOptions) -> DriverResult<Format> {
        options.only(&["root", "format"])?;
        crate::file::layout::check_root(options.require("root")?)?;
        match options.get("format").unwrap_or("raw") {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(DriverError::InvalidOption {
                option: "format".into(),
                reason: format!("{} is not a format (raw or qcow2)", crate::echo(other)),
            }),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> DriverResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Layout) -> DriverResult<T> + Send + 'static,
    {
        blocking(DRIVER_NAME, &self.inner, f).await
    }
}

/// The filesystems a volume's `fs` option may name: what the node makes on
/// the image's first mount.
pub const FILESYSTEMS: &[&str] = &["ext4", "xfs"];

/// The one volume option: `fs`, the filesystem the node makes on first use.
fn check_options(request: &CreateRequest) -> DriverResult<()> {
    for (k, v) in &request.options {
        if k != "fs" {
            return Err(DriverError::InvalidArgument(format!(
                "the image driver has no volume option {} (only fs); set the format on the service",
                crate::echo(k)
            )));
        }
        if !FILESYSTEMS.contains(&v.as_str()) {
            return Err(DriverError::InvalidArgument(format!(
                "fs {} is not a filesystem the node makes; use one of {}",
                crate::echo(v),
                FILESYSTEMS.join(", ")
            )));
        }
    }
    Ok(())
}

impl Layout {
    fn file(&self, dir: &Path, name: &VolumeName) -> DriverResult<PathBuf> {
        let plain = meta::child(dir, name.as_str())?;
        Ok(plain.with_file_name(format!("{name}.{}", self.format.extension())))
    }

    fn existing(&self, request: &CreateRequest) -> DriverResult<Option<DriverVolume>> {
        meta::existing(self.size_of(&request.name)?, request, |size| {
            self.volume(&request.name, size)
        })
    }

    fn check(&self, request: &CreateRequest) -> DriverResult<()> {
        check_options(request)?;
        if request.size_bytes == 0 {
            return Err(DriverError::InvalidArgument(
                "an image volume needs a size (--size), e.g. 10GiB".into(),
            ));
        }
        self.check_size(request.size_bytes)
    }

    /// Refuses a size no image file under the root can have.
    fn check_size(&self, size_bytes: u64) -> DriverResult<()> {
        check_size(
            size_bytes,
            self.max_size,
            &format!("a file on the filesystem holding {}", self.root.display()),
        )
    }

    /// The error for a failed resize: `OutOfRange` when the filesystem says
    /// the file would be too large (`EFBIG`), I/O otherwise.
    fn sizing_error(&self, image: &Path, size_bytes: u64, e: io::Error) -> DriverError {
        if e.raw_os_error() == Some(libc::EFBIG) {
            return DriverError::OutOfRange(format!(
                "size {size_bytes} bytes is larger than a file on the filesystem holding {} can be; ask for a smaller size",
                self.root.display()
            ));
        }
        DriverError::io(format!("sizing {}", image.display()), e)
    }

    /// Puts a finished staged image in place and records it.
    fn install(&self, staged: &Path, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let target = self.file(&self.root, &request.name)?;
        fs::rename(staged, &target)
            .map_err(|e| DriverError::io(format!("moving {} into place", target.display()), e))?;
        sync_dir(&self.root)?;
        sync_dir(&self.staging)?;
        meta::write_volume(&self.meta, &request.name, request.size_bytes)?;
        self.volume(&request.name, request.size_bytes)
    }

    fn staged(&self, name: &VolumeName) -> PathBuf {
        self.staging.join(format!("{name}.{}", stamp()))
    }

    /// Grows a copied image to `size_bytes` (a restore may ask for more
    /// than the snapshot had; the controller never asks for less).
    fn grow(&self, image: &Path, size_bytes: u64) -> DriverResult<()> {
        match self.format {
            Format::Raw => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(image)
                    .map_err(|e| DriverError::io(format!("opening {}", image.display()), e))?;
                let len = file
                    .metadata()
                    .map_err(|e| DriverError::io(format!("reading {}", image.display()), e))?
                    .len();
                if len < size_bytes {
                    file.set_len(size_bytes)
                        .map_err(|e| self.sizing_error(image, size_bytes, e))?;
                    file.sync_all()
                        .map_err(|e| DriverError::io(format!("syncing {}", image.display()), e))?;
                }
                Ok(())
            }
            Format::Qcow2 => {
                let out = Command::new("qemu-img")
                    .args(["resize", "-q", "-f", "qcow2"])
                    .arg(image)
                    .arg(size_bytes.to_string())
                    .output()
                    .map_err(|e| DriverError::io("running qemu-img", e))?;
                if !out.status.success() {
                    return Err(DriverError::Internal(format!(
                        "qemu-img resize failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                Ok(())
            }
        }
    }

    fn discard(&self, path: &Path) -> DriverResult<()> {
        match fs::remove_file(path) {
            Ok(()) => path.parent().map(sync_dir).unwrap_or(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(format!("removing {}", path.display()), e)),
        }
    }
}

impl FileStore for Layout {
    fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    fn data(&self, dir: &Path, name: &VolumeName) -> DriverResult<PathBuf> {
        self.file(dir, name)
    }

    fn attachment_fields(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("format".to_owned(), self.format.name().to_owned())])
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
        let target = self.file(&self.snapshots, snapshot)?;
        self.discard(&target)?;
        let staged = Staged::new(self.staged(snapshot));
        copy_sparse(&self.file(&self.root, volume)?, staged.path())?;
        fs::rename(staged.path(), &target)
            .map_err(|e| DriverError::io(format!("moving {} into place", target.display()), e))?;
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
        self.discard(&meta::child(&self.snapshot_meta, snapshot.as_str())?)?;
        self.discard(&self.file(&self.snapshots, snapshot)?)
    }

    fn volume(&self, name: &VolumeName, size_bytes: u64) -> DriverResult<DriverVolume> {
        Ok(DriverVolume {
            name: name.clone(),
            size_bytes,
            fields: BTreeMap::from([
                (
                    "path".to_owned(),
                    self.file(&self.root, name)?.display().to_string(),
                ),
                ("format".to_owned(), self.format.name().to_owned()),
            ]),
        })
    }

    fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        self.check(request)?;
        if let Some(v) = self.existing(request)? {
            return Ok(v);
        }
        let guard = Staged::new(self.staged(&request.name));
        let staged = guard.path();
        match self.format {
            Format::Raw => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(staged)
                    .map_err(|e| DriverError::io(format!("creating {}", staged.display()), e))?;
                file.set_len(request.size_bytes)
                    .map_err(|e| self.sizing_error(staged, request.size_bytes, e))?;
                file.sync_all()
                    .map_err(|e| DriverError::io(format!("syncing {}", staged.display()), e))?;
            }
            Format::Qcow2 => {
                let out = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(staged)
                    .arg(request.size_bytes.to_string())
                    .output()
                    .map_err(|e| DriverError::io("running qemu-img", e))?;
                if !out.status.success() {
                    return Err(DriverError::Internal(format!(
                        "qemu-img create failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                fs::File::open(staged)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| DriverError::io(format!("syncing {}", staged.display()), e))?;
            }
        }
        let volume = self.install(staged, request)?;
        guard.keep();
        Ok(volume)
    }

    fn create_copy(&self, source: &Path, request: &CreateRequest) -> DriverResult<DriverVolume> {
        if let Some(k) = request.options.keys().next() {
            return Err(DriverError::InvalidArgument(format!(
                "the image driver has no volume option {}",
                crate::echo(k)
            )));
        }
        if let Some(v) = self.existing(request)? {
            return Ok(v);
        }
        self.check_size(request.size_bytes)?;
        let guard = Staged::new(self.staged(&request.name));
        copy_sparse(source, guard.path())?;
        self.grow(guard.path(), request.size_bytes)?;
        let volume = self.install(guard.path(), request)?;
        guard.keep();
        Ok(volume)
    }

    fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        // Metadata first: once it is gone the volume no longer exists, and a
        // leftover image file is replaced by the next create.
        self.discard(&meta::child(&self.meta, name.as_str())?)?;
        self.discard(&self.file(&self.root, name)?)
    }
}

file_driver!(ImageDriver);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VolumeDriver;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn raw_images_are_sparse_and_copies_stay_sparse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = ImageDriver::open(dir.path(), Format::Raw).expect("open");
        let name = VolumeName::parse("disk").expect("name");
        let req = CreateRequest {
            name: name.clone(),
            size_bytes: 64 << 20,
            options: BTreeMap::new(),
        };
        let v = driver.create(&req).await.expect("create");
        let meta = fs::metadata(&v.fields["path"]).expect("image");
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "a new image must be sparse");
        let copy = CreateRequest {
            name: VolumeName::parse("copy").expect("name"),
            ..req
        };
        let c = driver.copy(&name, &copy).await.expect("copy");
        let meta = fs::metadata(&c.fields["path"]).expect("copy");
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "a copy must stay sparse");
    }

    #[tokio::test]
    async fn the_fs_option_is_the_only_volume_option() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = ImageDriver::open(dir.path(), Format::Raw).expect("open");
        let req = |k: &str, v: &str| CreateRequest {
            name: VolumeName::parse("disk").expect("name"),
            size_bytes: 1 << 20,
            options: BTreeMap::from([(k.to_owned(), v.to_owned())]),
        };
        for fs in FILESYSTEMS {
            let name = VolumeName::parse(&format!("disk-{fs}")).expect("name");
            let r = CreateRequest {
                name,
                ..req("fs", fs)
            };
            driver.create(&r).await.expect("fs accepted");
        }
        for (k, v) in [("fs", "ntfs"), ("fs", ""), ("mode", "0755")] {
            let err = driver.create(&req(k, v)).await.expect_err("refused");
            assert!(
                matches!(err, DriverError::InvalidArgument(_)),
                "{k}={v}: {err:?}"
            );
        }
        assert_eq!(driver.get(&req("fs", "x").name).await.expect("get"), None);
    }

    #[tokio::test]
    async fn impossible_sizes_are_out_of_range_and_leave_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = ImageDriver::open(dir.path(), Format::Raw).expect("open");
        let max = driver.max_size();
        assert!(max >= 1 << 20, "max {max}");
        for size in [max + 1, (1 << 63) + 5, u64::MAX] {
            let req = CreateRequest {
                name: VolumeName::parse("big").expect("name"),
                size_bytes: size,
                options: BTreeMap::new(),
            };
            let err = driver.create(&req).await.expect_err("too big");
            assert!(matches!(err, DriverError::OutOfRange(_)), "{size}: {err:?}");
            assert_eq!(driver.get(&req.name).await.expect("get"), None);
        }
        // The largest size the filesystem accepts is accepted.
        let req = CreateRequest {
            name: VolumeName::parse("largest").expect("name"),
            size_bytes: max,
            options: BTreeMap::new(),
        };
        let v = driver.create(&req).await.expect("the largest size");
        assert_eq!(fs::metadata(&v.fields["path"]).expect("image").len(), max);
        assert!(fs::read_dir(dir.path().join(".berth/staging"))
            .expect("staging")
            .next()
            .is_none());
    }

    #[tokio::test]
    async fn snapshots_keep_the_bytes_of_their_time() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = ImageDriver::open(dir.path(), Format::Raw).expect("open");
        let name = VolumeName::parse("disk").expect("name");
        let req = CreateRequest {
            name: name.clone(),
            size_bytes: 32 << 20,
            options: BTreeMap::new(),
        };
        let v = driver.create(&req).await.expect("create");
        let write = |bytes: &[u8]| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(&v.fields["path"])
                .expect("open image");
            f.seek(SeekFrom::Start(10 << 20)).expect("seek");
            f.write_all(bytes).expect("write");
        };
        write(b"before");
        let snap = VolumeName::parse("s").expect("name");
        driver
            .create_snapshot(&name, &snap)
            .await
            .expect("snapshot");
        write(b"after!");
        let restored = CreateRequest {
            name: VolumeName::parse("r").expect("name"),
            ..req
        };
        let r = driver
            .create_from_snapshot(&snap, &restored)
            .await
            .expect("restore");
        let bytes = fs::read(&r.fields["path"]).expect("read");
        assert_eq!(bytes.len(), 32 << 20);
        assert_eq!(&bytes[10 << 20..(10 << 20) + 6], b"before");
    }
}
