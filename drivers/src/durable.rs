//! File operations with crash guarantees, shared by the file-based drivers.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

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

/// Copies a directory tree (files, directories, symlinks as links) into
/// `to`, which must not exist. File data goes through `std::fs::copy`, which
/// on Linux uses `copy_file_range` and so shares extents (reflinks) where the
/// filesystem offers them (btrfs, XFS), and copies otherwise.
pub fn copy_tree(from: &Path, to: &Path) -> DriverResult<()> {
    let fail = |p: &Path, e: io::Error| DriverError::io(format!("copying {}", p.display()), e);
    let meta = fs::symlink_metadata(from).map_err(|e| fail(from, e))?;
    fs::create_dir(to).map_err(|e| fail(to, e))?;
    fs::set_permissions(to, meta.permissions()).map_err(|e| fail(to, e))?;
    for entry in fs::read_dir(from).map_err(|e| fail(from, e))? {
        let entry = entry.map_err(|e| fail(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| fail(&src, e))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| fail(&src, e))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|e| fail(&dst, e))?;
        } else {
            fs::copy(&src, &dst).map_err(|e| fail(&src, e))?;
            fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| fail(&dst, e))?;
        }
    }
    sync_dir(to)
}
