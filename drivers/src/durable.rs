//! File operations with crash guarantees, shared by the file-based drivers.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{DriverError, DriverResult};

/// Writes `bytes` to `path` so that after a crash the file holds either its
/// old contents or all of the new ones (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> DriverResult<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| DriverError::io(format!("writing {}", path.display()), e))?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// A temporary sibling of `path`, unique to this write. Its name starts with
/// `.` and ends with `.tmp`, so it can never be taken for a volume (names
/// never start with `.`) and [`remove_temporaries`] finds it after a crash.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()))
}

/// Removes what interrupted [`write_atomic`] calls left in `dir`.
pub fn remove_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> DriverResult<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DriverError::io(format!("syncing directory {}", dir.display()), e))
}

/// Copies one file, leaving holes where the source has holes (found with
/// `SEEK_DATA`/`SEEK_HOLE`) or reads as zeros, so sparse images stay sparse.
/// The copy is fsynced.
pub fn copy_sparse(from: &Path, to: &Path) -> DriverResult<()> {
    let fail = |e: io::Error| {
        DriverError::io(format!("copying {} to {}", from.display(), to.display()), e)
    };
    let mut src = fs::File::open(from).map_err(fail)?;
    let len = src.metadata().map_err(fail)?.len();
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(fail)?;
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = next_data(&src, pos, len).map_err(fail)? else {
            break;
        };
        copy_range(&mut src, &mut dst, start, end).map_err(fail)?;
        pos = end;
    }
    dst.set_len(len).map_err(fail)?;
    dst.sync_all().map_err(fail)
}

/// The next data region at or after `pos`, as `(start, end)`; the whole rest
/// of the file where the filesystem cannot tell holes apart.
fn next_data(file: &fs::File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a valid descriptor we own, with no memory access.
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    match seek(pos, libc::SEEK_DATA) {
        Ok(Some(start)) => {
            let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
            Ok(Some((start, end)))
        }
        Ok(None) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some((pos, len))),
        Err(e) => Err(e),
    }
}

/// Copies `[start, end)` at the same offsets, skipping all-zero chunks.
fn copy_range(src: &mut fs::File, dst: &mut fs::File, start: u64, end: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    src.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    while pos < end {
        let want = CHUNK.min((end - pos) as usize);
        src.read_exact(&mut buf[..want])?;
        if buf[..want].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..want])?;
        }
        pos += want as u64;
    }
    Ok(())
}

/// Copies a directory tree into `to`, which must not exist, without ever
/// following a link out of it: each directory is opened once with
/// `O_NOFOLLOW` and read through its descriptor, each file is opened with
/// `O_NOFOLLOW` and checked to be a regular file, so a symlink swapped in
/// while the copy runs is copied as a link, never read through. Symlinks are
/// recreated as links; FIFOs, sockets and device nodes are skipped; modes
/// keep only the permission bits (no setuid, setgid or sticky). File data
/// goes through `std::io::copy`, which on Linux uses `copy_file_range` and
/// so shares extents (reflinks) where the filesystem offers them.
pub fn copy_tree(from: &Path, to: &Path) -> DriverResult<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |p: &Path, e: io::Error| DriverError::io(format!("copying {}", p.display()), e);
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(from)
        .map_err(|e| fail(from, e))?;
    let mode = dir
        .metadata()
        .map_err(|e| fail(from, e))?
        .permissions()
        .mode()
        & 0o777;
    // Children are reached through the open directory, not the path.
    let pinned = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    fs::create_dir(to).map_err(|e| fail(to, e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(|e| fail(to, e))?;
    for entry in fs::read_dir(&pinned).map_err(|e| fail(from, e))? {
        let entry = entry.map_err(|e| fail(from, e))?;
        let name = entry.file_name();
        let (src, shown, dst) = (pinned.join(&name), from.join(&name), to.join(&name));
        let kind = entry.file_type().map_err(|e| fail(&shown, e))?;
        if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| fail(&shown, e))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|e| fail(&dst, e))?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst).map_err(|e| match e {
                DriverError::Io { source, .. } => fail(&shown, source),
                other => other,
            })?;
        } else if kind.is_file() {
            let opened = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&src);
            let mut file = match opened {
                Ok(f) => f,
                // Replaced by a symlink since it was listed: copy nothing.
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
                Err(e) => return Err(fail(&shown, e)),
            };
            let meta = file.metadata().map_err(|e| fail(&shown, e))?;
            if !meta.is_file() {
                continue;
            }
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(meta.permissions().mode() & 0o777)
                .open(&dst)
                .map_err(|e| fail(&dst, e))?;
            io::copy(&mut file, &mut out).map_err(|e| fail(&shown, e))?;
            out.sync_all().map_err(|e| fail(&dst, e))?;
        }
        // FIFOs, sockets and devices are not volume data: skipped.
    }
    sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_never_reads_through_links_and_drops_special_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let secret = dir.path().join("secret");
        fs::write(&secret, b"host secret").expect("secret");
        fs::create_dir_all(src.join("sub")).expect("src");
        fs::write(src.join("sub/data"), b"volume data").expect("data");
        fs::set_permissions(src.join("sub/data"), fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        std::os::unix::fs::symlink(&secret, src.join("link")).expect("link");
        std::os::unix::fs::symlink(dir.path(), src.join("dirlink")).expect("dirlink");
        copy_tree(&src, &dst).expect("copy");
        assert_eq!(
            fs::read(dst.join("sub/data")).expect("data"),
            b"volume data"
        );
        let mode = fs::metadata(dst.join("sub/data"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid dropped");
        // Links are copied as links, never as the files they point to.
        assert!(fs::symlink_metadata(dst.join("link"))
            .expect("link")
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(dst.join("dirlink"))
            .expect("dirlink")
            .file_type()
            .is_symlink());
        // A source that is itself a link is refused.
        assert!(copy_tree(&src.join("dirlink"), &dir.path().join("dst2")).is_err());
    }
}
