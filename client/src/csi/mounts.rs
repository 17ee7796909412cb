//! What the CSI Node service does beside the node library: loop devices
//! and bind mounts for block access, the mount table, and usage figures.
//!
//! Blocking calls (mount(2), `losetup`): run them off the async
//! threads (`tokio::task::spawn_blocking`).

use std::io;
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

fn sys(what: &'static str, path: &Path, errno: rustix::io::Errno) -> MountError {
    MountError::Sys {
        what,
        path: path.to_owned(),
        source: io::Error::from_raw_os_error(errno.raw_os_error()),
    }
}

/// Bind-mounts `source` on `target`, read-only when asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
    use rustix::mount::MountFlags;
    rustix::mount::mount_bind(source, target).map_err(|e| sys("mount", target, e))?;
    if readonly {
        let flags = MountFlags::BIND | MountFlags::RDONLY;
        if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
            let _ = unmount(target);
            return Err(sys("mount", target, e));
        }
    }
    Ok(())
}

/// Unmounts `target`.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty())
        .map_err(|e| sys("unmount", target, e))
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
    let st = rustix::fs::statvfs(path).map_err(|e| sys("statvfs", path, e))?;
    let frsize = st.f_frsize;
    let total = st.f_blocks.saturating_mul(frsize);
    let free = st.f_bfree.saturating_mul(frsize);
    Ok(Usage {
        total_bytes: total,
        available_bytes: st.f_bavail.saturating_mul(frsize),
        used_bytes: total.saturating_sub(free),
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
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
