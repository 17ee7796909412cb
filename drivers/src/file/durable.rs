//! File operations shared by the file-based drivers: writes with crash
//! guarantees, opens that never follow a symbolic link, staging entries that
//! clean up after themselves, and the largest file a filesystem holds.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{DriverError, DriverResult};

/// The largest size a file can have on any POSIX system: the largest
/// `off_t`, 2^63 - 1 bytes. `ftruncate` refuses anything larger.
pub const OFF_T_MAX: u64 = i64::MAX as u64;

/// Writes `bytes` to `path` so that after a crash the file holds either its
/// old contents or all of the new ones (temp file, fsync, rename, fsync dir).
/// The temporary file is opened without following a symbolic link.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> DriverResult<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
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
/// Concurrent calls for one directory share an `fsync` that began after
/// each of them (see [`crate::file::dirsync`]), so 32 creates in one
/// directory do not queue 32 `fsync`s.
pub fn sync_dir(dir: &Path) -> DriverResult<()> {
    crate::file::dirsync::sync(dir, || {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| DriverError::io(format!("syncing directory {}", dir.display()), e))
    })
}

/// Opens the directory at `path` itself, never a symbolic link's target
/// (`O_NOFOLLOW | O_DIRECTORY`): a link fails with `ELOOP` (or `ENOTDIR`),
/// anything but a directory with `ENOTDIR`. What is done through the
/// returned descriptor (`fchmod`, `fsync`) reaches that directory only.
pub fn open_dir_nofollow(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// An entry in a staging directory that is removed when dropped, unless
/// [`Staged::keep`] says it has been moved into place. Every error path of
/// an operation that stages a file or a tree therefore cleans up.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    armed: bool,
}

impl Staged {
    /// Guards `path`, which does not exist yet or belongs to this operation.
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    /// The staged path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry was moved into place: leave whatever is at the path.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // symlink_metadata: a link is removed as a link, never followed.
        let gone = match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&self.path),
            Ok(_) => fs::remove_file(&self.path),
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "could not remove a staged leftover; it goes at the next start")
            }
        }
    }
}

/// The largest file the filesystem holding `dir` accepts, in bytes, found
/// by growing an empty probe file in `dir` with `ftruncate` (a binary
/// search: the filesystem refuses a size above its limit with `EFBIG`) and
/// capped by [`OFF_T_MAX`] and the process's `RLIMIT_FSIZE`. Sparse growth
/// allocates nothing, so the probe costs a few dozen system calls; where a
/// 1 MiB hole allocates blocks (the filesystem has no sparse files) it
/// stops and answers the cap, leaving the filesystem's own refusal to the
/// create. The probe is removed before returning.
#[allow(unsafe_code)] // getrlimit: see the SAFETY note on the call.
pub fn max_file_size(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    const PROBE_START: u64 = 1 << 20;
    let mut cap = OFF_T_MAX;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
    {
        cap = cap.min(limit.rlim_cur);
    }
    let probe = Staged::new(dir.join(format!(".max-size-probe.{}.tmp", std::process::id())));
    let _ = fs::remove_file(probe.path());
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(probe.path())?;
    if cap < PROBE_START {
        return Ok(cap);
    }
    file.set_len(PROBE_START)?;
    if file.metadata()?.blocks() > 0 {
        return Ok(cap);
    }
    let (mut fits, mut too_big) = (PROBE_START, cap.saturating_add(1));
    // Invariant: `fits` was accepted; `too_big` was refused or is past the cap.
    while too_big - fits > 1 {
        let mid = fits + (too_big - fits) / 2;
        match file.set_len(mid) {
            Ok(()) => fits = mid,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EFBIG) | Some(libc::EINVAL)) => {
                too_big = mid
            }
            Err(e) => return Err(e),
        }
    }
    file.set_len(0)?;
    Ok(fits)
}

/// Refuses a size larger than `max` (the largest file `what` can hold) with
/// [`DriverError::OutOfRange`], saying both sizes.
pub fn check_size(size_bytes: u64, max: u64, what: &str) -> DriverResult<()> {
    if size_bytes <= max {
        return Ok(());
    }
    Err(DriverError::OutOfRange(format!(
        "size {size_bytes} bytes ({}) is larger than {what} can hold ({max} bytes, {}, at most); ask for a smaller size",
        binary_units(size_bytes),
        binary_units(max)
    )))
}

/// `bytes` in the largest binary unit that keeps it at or above 1, with one
/// decimal (`16.0 TiB`), for messages.
fn binary_units(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Copies one file, leaving holes where the source has holes (found with
/// `SEEK_DATA`/`SEEK_HOLE`) or reads as zeros, so sparse images stay sparse.
/// The copy is fsynced. Inside a [`crate::Progress`] scope it reports the
/// file's length as its total and each megabyte (and each hole) as done.
pub fn copy_sparse(from: &Path, to: &Path) -> DriverResult<()> {
    let fail = |e: io::Error| {
        DriverError::io(format!("copying {} to {}", from.display(), to.display()), e)
    };
    let mut src = fs::File::open(from).map_err(fail)?;
    let len = src.metadata().map_err(fail)?.len();
    crate::progress::add_total(len);
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
        crate::progress::advance(start.saturating_sub(pos));
        copy_range(&mut src, &mut dst, start, end).map_err(fail)?;
        pos = end;
    }
    crate::progress::advance(len.saturating_sub(pos));
    dst.set_len(len).map_err(fail)?;
    dst.sync_all().map_err(fail)
}

/// The next data region at or after `pos`, as `(start, end)`; the whole rest
/// of the file where the filesystem cannot tell holes apart.
#[allow(unsafe_code)] // lseek(SEEK_DATA/SEEK_HOLE): see the SAFETY note on the call.
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
        crate::progress::advance(want as u64);
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
/// so shares extents (reflinks) where the filesystem offers them. Inside a
/// [`crate::Progress`] scope it reports the regular files' total length
/// first, then each file as it is copied.
pub fn copy_tree(from: &Path, to: &Path) -> DriverResult<()> {
    if crate::progress::listened() {
        crate::progress::add_total(tree_bytes(from));
    }
    copy_tree_inner(from, to)
}

/// The length of the regular files under `dir` (links not followed; what
/// cannot be read counts nothing: this is only a progress total).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

fn copy_tree_inner(from: &Path, to: &Path) -> DriverResult<()> {
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
            copy_tree_inner(&src, &dst).map_err(|e| match e {
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
            let copied = io::copy(&mut file, &mut out).map_err(|e| fail(&shown, e))?;
            out.sync_all().map_err(|e| fail(&dst, e))?;
            crate::progress::advance(copied);
        }
        // FIFOs, sockets and devices are not volume data: skipped.
    }
    sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_entries_go_unless_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, tree, kept) = (
            dir.path().join("f"),
            dir.path().join("t"),
            dir.path().join("k"),
        );
        {
            let f = Staged::new(file.clone());
            fs::write(f.path(), b"x").expect("file");
            let t = Staged::new(tree.clone());
            fs::create_dir_all(t.path().join("sub")).expect("tree");
            let k = Staged::new(kept.clone());
            fs::write(k.path(), b"x").expect("kept");
            k.keep();
        }
        assert!(!file.exists() && !tree.exists());
        assert!(kept.exists());
    }

    #[test]
    fn max_file_size_is_the_filesystems_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = max_file_size(dir.path()).expect("probe");
        assert!((1 << 20..=OFF_T_MAX).contains(&max), "{max}");
        assert!(
            fs::read_dir(dir.path()).expect("list").next().is_none(),
            "probe left"
        );
        let f = fs::File::create(dir.path().join("f")).expect("file");
        f.set_len(max).expect("the maximum fits");
        if max < OFF_T_MAX {
            assert!(f.set_len(max + 1).is_err(), "one more byte must not fit");
        }
    }

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
