//! File operations with crash guarantees, shared by the file-based drivers.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{DriverError, DriverResult};

/// Writes `bytes` to `path` so that after a crash the file holds either its
/// old contents or all of the new ones (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> DriverResult<()> {
    let tmp = path.with_extension("tmp");
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

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> DriverResult<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DriverError::io(format!("syncing directory {}", dir.display()), e))
}

/// Copies one file, leaving holes where the source reads as zeros, so sparse
/// images stay sparse. The copy is fsynced.
pub fn copy_sparse(from: &Path, to: &Path) -> DriverResult<()> {
    const CHUNK: usize = 1 << 20;
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
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let want = CHUNK.min((len - pos) as usize);
        src.read_exact(&mut buf[..want]).map_err(fail)?;
        if buf[..want].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(pos)).map_err(fail)?;
            dst.write_all(&buf[..want]).map_err(fail)?;
        }
        pos += want as u64;
    }
    dst.set_len(len).map_err(fail)?;
    dst.sync_all().map_err(fail)
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
