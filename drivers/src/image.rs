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
//! (measured once at open, see [`crate::durable::max_file_size`]; 16 TiB
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
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use async_trait::async_trait;

use crate::durable::{check_size, copy_sparse, max_file_size, sync_dir, Staged};
use crate::meta::{self, names_in, stamp};
use crate::{
    Attachment, Capabilities, CreateRequest, DriverError, DriverOptions, DriverResult,
    DriverSnapshot, DriverVolume, VolumeDriver, VolumeName,
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
    root: PathBuf,
    format: Format,
    meta: PathBuf,
    snapshots: PathBuf,
    snapshot_meta: PathBuf,
    staging: PathBuf,
    trash: PathBuf,
    /// The largest file the root's filesystem accepts, in bytes.
    max_size: u64,
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
        let root = root.into();
        let hidden = root.join(".berth");
        let layout = Layout {
            meta: hidden.join("volumes"),
            snapshots: hidden.join("snapshots"),
            snapshot_meta: hidden.join("snapshot-meta"),
            staging: hidden.join("staging"),
            trash: hidden.join("trash"),
            root,
            format,
            max_size: 0,
        };
        for dir in [
            &layout.root,
            &layout.meta,
            &layout.snapshots,
            &layout.snapshot_meta,
            &layout.staging,
            &layout.trash,
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
        }
        for dir in [&layout.staging, &layout.trash] {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        crate::durable::remove_temporaries(&layout.meta);
        crate::durable::remove_temporaries(&layout.snapshot_meta);
        let mut layout = layout;
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
        options.only(&["root", "format"])?;
        let root = options.require("root")?;
        let format = match options.get("format").unwrap_or("raw") {
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            other => {
                return Err(DriverError::InvalidOption {
                    option: "format".into(),
                    reason: format!("{other:?} is not a format (raw or qcow2)"),
                })
            }
        };
        Self::open(root, format)
    }

    async fn blocking<T, F>(&self, f: F) -> DriverResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Layout) -> DriverResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| DriverError::Internal(format!("image worker failed: {e}")))?
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

    fn size_of(&self, name: &VolumeName) -> DriverResult<Option<u64>> {
        meta::volume_size(&self.meta, name)
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

    fn copy_into(&self, source: &Path, request: &CreateRequest) -> DriverResult<DriverVolume> {
        check_options(request)?;
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

    fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        // Metadata first: once it is gone the volume no longer exists, and a
        // leftover image file is replaced by the next create.
        self.discard(&meta::child(&self.meta, name.as_str())?)?;
        self.discard(&self.file(&self.root, name)?)
    }

    fn snapshot(&self, snap: &VolumeName) -> DriverResult<Option<DriverSnapshot>> {
        meta::snapshot(&self.snapshot_meta, snap)
    }
}

#[async_trait]
impl VolumeDriver for ImageDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            attach: true,
            multi_attach: false,
            snapshot: true,
            copy: true,
            create_from_snapshot: true,
        }
    }

    async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let request = request.clone();
        self.blocking(move |l| l.create(&request)).await
    }

    async fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        let name = name.clone();
        self.blocking(move |l| l.delete(&name)).await
    }

    async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
        let name = name.clone();
        self.blocking(move |l| match l.size_of(&name)? {
            Some(size) => l.volume(&name, size).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        self.blocking(|l| {
            let mut out = Vec::new();
            for name in names_in(&l.meta)? {
                if let Some(size) = l.size_of(&name)? {
                    out.push(l.volume(&name, size)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn attach(&self, name: &VolumeName, instance: &str) -> DriverResult<Attachment> {
        let (name, instance) = (name.clone(), instance.to_owned());
        self.blocking(move |l| {
            if l.size_of(&name)?.is_none() {
                return Err(DriverError::NotFound(format!("volume {name}")));
            }
            Ok(Attachment {
                instance,
                device: l.file(&l.root, &name)?.display().to_string(),
                fields: BTreeMap::from([("format".to_owned(), l.format.name().to_owned())]),
            })
        })
        .await
    }

    async fn detach(&self, _name: &VolumeName, _instance: &str) -> DriverResult<()> {
        Ok(())
    }

    async fn create_snapshot(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
    ) -> DriverResult<DriverSnapshot> {
        let (volume, snapshot) = (volume.clone(), snapshot.clone());
        self.blocking(move |l| {
            if let Some(existing) = l.snapshot(&snapshot)? {
                if existing.volume == volume {
                    return Ok(existing);
                }
                return Err(DriverError::AlreadyExists(format!(
                    "snapshot {snapshot} already exists, of volume {}",
                    existing.volume
                )));
            }
            let Some(size_bytes) = l.size_of(&volume)? else {
                return Err(DriverError::NotFound(format!("volume {volume}")));
            };
            let target = l.file(&l.snapshots, &snapshot)?;
            l.discard(&target)?;
            let staged = Staged::new(l.staged(&snapshot));
            copy_sparse(&l.file(&l.root, &volume)?, staged.path())?;
            fs::rename(staged.path(), &target).map_err(|e| {
                DriverError::io(format!("moving {} into place", target.display()), e)
            })?;
            staged.keep();
            sync_dir(&l.snapshots)?;
            let taken = DriverSnapshot {
                name: snapshot,
                volume,
                size_bytes,
            };
            meta::write_snapshot(&l.snapshot_meta, &taken)?;
            Ok(taken)
        })
        .await
    }

    async fn delete_snapshot(&self, snapshot: &VolumeName) -> DriverResult<()> {
        let snapshot = snapshot.clone();
        self.blocking(move |l| {
            l.discard(&meta::child(&l.snapshot_meta, snapshot.as_str())?)?;
            l.discard(&l.file(&l.snapshots, &snapshot)?)
        })
        .await
    }

    async fn list_snapshots(&self) -> DriverResult<Vec<DriverSnapshot>> {
        self.blocking(|l| {
            let mut out = Vec::new();
            for name in names_in(&l.snapshot_meta)? {
                if let Some(s) = l.snapshot(&name)? {
                    out.push(s);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create_from_snapshot(
        &self,
        snapshot: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        let (snapshot, request) = (snapshot.clone(), request.clone());
        self.blocking(move |l| {
            if l.snapshot(&snapshot)?.is_none() {
                return Err(DriverError::NotFound(format!("snapshot {snapshot}")));
            }
            let source = l.file(&l.snapshots, &snapshot)?;
            l.copy_into(&source, &request)
        })
        .await
    }

    async fn copy(
        &self,
        source: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        let (source, request) = (source.clone(), request.clone());
        self.blocking(move |l| {
            if l.size_of(&source)?.is_none() {
                return Err(DriverError::NotFound(format!("volume {source}")));
            }
            let from = l.file(&l.root, &source)?;
            l.copy_into(&from, &request)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
