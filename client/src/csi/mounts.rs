//! What the CSI Node service does beside the node library: loop devices
//! and bind mounts for block access, the mount table, and usage figures.
//!
//! Blocking calls (mount(2), `losetup`): run them off the async
//! threads (`tokio::task::spawn_blocking`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A path holds a NUL byte.
    #[error("path {0:?} holds a NUL byte")]
    BadPath(PathBuf),
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A helper program failed.
    #[error("{program} failed: {message}")]
    Tool {
        /// The program.
        program: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
}

fn cpath(path: &Path) -> Result<CString, MountError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::BadPath(path.to_owned()))
}

fn sys(what: &'static str, path: &Path) -> MountError {
    MountError::Sys {
        what,
        path: path.to_owned(),
        source: io::Error::last_os_error(),
    }
}

/// Mounts `source` (a device, or a directory with `bind`) on `target`.
fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<(), MountError> {
    let (src, dst) = (cpath(source)?, cpath(target)?);
    let fs = fstype
        .map(|f| CString::new(f).map_err(|_| MountError::BadPath(PathBuf::from(f))))
        .transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call, or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(sys("mount", target));
    }
    Ok(())
}

/// Bind-mounts `source` on `target`, read-only when asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
    mount(source, target, None, libc::MS_BIND)?;
    if readonly {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        if let Err(e) = mount(source, target, None, flags) {
            let _ = unmount(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target`.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let dst = cpath(target)?;
    // SAFETY: `dst` is a valid NUL-terminated string.
    if unsafe { libc::umount2(dst.as_ptr(), 0) } != 0 {
        return Err(sys("unmount", target));
    }
    Ok(())
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of the mount table.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Where it is mounted.
    pub target: PathBuf,
    /// The mount source (a device, or the filesystem's source for binds).
    pub source: String,
    /// The filesystem type.
    pub fstype: String,
}

/// The mount table of this process.
pub fn table() -> Result<Vec<MountEntry>, MountError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| MountError::Sys {
        what: "read",
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some(MountEntry {
                target: PathBuf::from(unescape(target)),
                source: unescape(source),
                fstype: fstype.to_owned(),
            })
        })
        .collect())
}

/// The last mount on `path` (after resolving it), if any.
pub fn mounted_at(path: &Path) -> Result<Option<MountEntry>, MountError> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(None);
    };
    Ok(table()?.into_iter().rev().find(|m| m.target == real))
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, MountError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| MountError::Tool {
            program: program.into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(MountError::Tool {
            program: program.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The loop device backed by `file`, if one is set up.
pub fn loop_of(file: &Path) -> Result<Option<PathBuf>, MountError> {
    let out = run("losetup", &["-j".as_ref(), file.as_os_str()])?;
    Ok(out
        .lines()
        .next()
        .and_then(|l| l.split(':').next())
        .filter(|d| !d.is_empty())
        .map(PathBuf::from))
}

/// The loop device backed by `file`, setting one up when there is none.
pub fn attach_loop(file: &Path) -> Result<PathBuf, MountError> {
    if let Some(dev) = loop_of(file)? {
        return Ok(dev);
    }
    let dev = run(
        "losetup",
        &["--find".as_ref(), "--show".as_ref(), file.as_os_str()],
    )?;
    Ok(PathBuf::from(dev))
}

/// Detaches the loop device backed by `file`, if any.
pub fn detach_loop(file: &Path) -> Result<(), MountError> {
    if let Some(dev) = loop_of(file)? {
        run("losetup", &["-d".as_ref(), dev.as_os_str()])?;
    }
    Ok(())
}

/// Bytes and inodes of the filesystem holding `path`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes free for unprivileged users.
    pub available_bytes: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Total inodes.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

/// statvfs(3) of `path`.
pub fn usage(path: &Path) -> Result<Usage, MountError> {
    let p = cpath(path)?;
    // SAFETY: statvfs writes into the zeroed struct we own; `p` is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return Err(sys("statvfs", path));
    }
    let frsize = st.f_frsize as u64;
    let total = st.f_blocks as u64 * frsize;
    let free = st.f_bfree as u64 * frsize;
    Ok(Usage {
        total_bytes: total,
        available_bytes: st.f_bavail as u64 * frsize,
        used_bytes: total.saturating_sub(free),
        total_inodes: st.f_files as u64,
        free_inodes: st.f_ffree as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\"), r"/end\");
    }

    #[test]
    fn the_mount_table_reads() {
        let table = table().expect("mountinfo");
        assert!(table.iter().any(|m| m.target == Path::new("/")));
    }
}
