//! What the node does to the host: mount syscalls (through `rustix`), the
//! mount table (`/proc/self/mountinfo`), and the util-linux and filesystem
//! tools run as processes with bounded waits (`losetup`, `blkid`,
//! `mkfs.*`, `qemu-nbd`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::NodeError;

/// How long a quick tool (`losetup`, `blkid`, `qemu-nbd`) may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long making a filesystem may take.
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(300);

/// The mount points of this mount namespace, unescaped.
pub fn mount_points() -> Result<Vec<PathBuf>, NodeError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| NodeError::io("reading /proc/self/mountinfo", e))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect())
}

/// Whether `path` is a mount point now.
pub fn is_mount_point(path: &Path) -> Result<bool, NodeError> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let b = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(b) = u8::try_from(b) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_error(action: &str, path: &Path, e: Errno) -> NodeError {
    match e {
        Errno::PERM | Errno::ACCESS => NodeError::NotPermitted {
            action: action.to_owned(),
            path: path.to_owned(),
        },
        Errno::BUSY => NodeError::Busy {
            path: path.to_owned(),
        },
        e => NodeError::io(format!("{action} {}", path.display()), e.into()),
    }
}

/// Bind-mounts `source` at `target`, read-only if asked (a bind mount is
/// made read-only by remounting it, per mount).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), NodeError> {
    rustix::mount::mount_bind(source, target).map_err(|e| mount_error("mounting", target, e))?;
    if read_only {
        let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(mount_error("making read-only", target, e));
        }
    }
    Ok(())
}

/// Mounts the filesystem `fs_type` of `device` at `target`.
pub fn mount_fs(device: &str, target: &Path, fs_type: &str) -> Result<(), NodeError> {
    rustix::mount::mount(
        device,
        target,
        fs_type,
        MountFlags::NOSUID | MountFlags::NODEV,
        None,
    )
    .map_err(|e| mount_error(&format!("mounting {device} ({fs_type}) at"), target, e))
}

/// Unmounts `target`; `lazy` detaches it now and lets the kernel finish
/// when it is no longer busy (`umount -l`).
pub fn unmount(target: &Path, lazy: bool) -> Result<(), NodeError> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    match rustix::mount::unmount(target, flags) {
        Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(mount_error("unmounting", target, e)),
    }
}

/// Whether a program is on `PATH` (or in the sbin directories, which a
/// non-login root shell may lack).
pub fn have_tool(name: &str) -> bool {
    find_tool(name).is_some()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A finished tool run.
pub struct ToolOutput {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr, trimmed.
    pub stderr: String,
}

/// Runs a tool with no input, waiting at most `timeout` (then it is killed).
pub async fn run(tool: &str, args: &[&str], timeout: Duration) -> Result<ToolOutput, NodeError> {
    let program = find_tool(tool).ok_or_else(|| NodeError::MissingTool {
        tool: tool.to_owned(),
    })?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NodeError::io(format!("running {tool}"), e))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| NodeError::io(format!("running {tool}"), e))?,
        Err(_) => {
            return Err(NodeError::Tool {
                tool: tool.to_owned(),
                message: format!("no answer within {}s; it was stopped", timeout.as_secs()),
            })
        }
    };
    Ok(ToolOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
    })
}

/// Runs a tool that must succeed and returns its stdout.
pub async fn run_ok(tool: &str, args: &[&str], timeout: Duration) -> Result<String, NodeError> {
    let out = run(tool, args, timeout).await?;
    if out.code != Some(0) {
        return Err(NodeError::Tool {
            tool: tool.to_owned(),
            message: format!(
                "`{tool} {}` failed ({}): {}",
                args.join(" "),
                out.code
                    .map(|c| format!("exit {c}"))
                    .unwrap_or_else(|| "killed".into()),
                out.stderr
            ),
        });
    }
    Ok(out.stdout)
}

/// Text on one line, at most 300 characters.
pub fn one_line(text: &str) -> String {
    let mut s: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > 300 {
        s = s.chars().take(300).collect::<String>() + "...";
    }
    s
}

/// The loop devices backed by `file` (`losetup -j`).
pub async fn loops_of(file: &str) -> Result<Vec<String>, NodeError> {
    let out = run_ok("losetup", &["-n", "-O", "NAME", "-j", file], TOOL_TIMEOUT).await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A loop device over `file`: the one that exists (left by an interrupted
/// call), else a new one.
pub async fn loop_for(file: &str) -> Result<String, NodeError> {
    if let Some(first) = loops_of(file).await?.into_iter().next() {
        return Ok(first);
    }
    let out = run_ok("losetup", &["--find", "--show", file], TOOL_TIMEOUT).await?;
    let dev = out.trim().to_owned();
    if !dev.starts_with("/dev/") {
        return Err(NodeError::Tool {
            tool: "losetup".into(),
            message: format!("unexpected answer {:?}", one_line(&out)),
        });
    }
    Ok(dev)
}

/// Releases every loop device over `file`.
pub async fn release_loops(file: &str) -> Result<(), NodeError> {
    for dev in loops_of(file).await? {
        let out = run("losetup", &["-d", &dev], TOOL_TIMEOUT).await?;
        // Gone already (another agent, autoclear): fine.
        if out.code != Some(0) && !out.stderr.contains("No such device") {
            return Err(NodeError::Tool {
                tool: "losetup".into(),
                message: format!("releasing {dev}: {}", out.stderr),
            });
        }
    }
    // The kernel detaches a loop device that something else still holds
    // open (udev's probe, a blkid) only at its last close: wait, bounded,
    // for that, so the release is done when the unmount answers.
    let until = std::time::Instant::now() + LOOP_RELEASE_WAIT;
    while !loops_of(file).await?.is_empty() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// How long a release waits for the kernel to detach a loop device that
/// another opener still held; past it the kernel finishes on its own.
const LOOP_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a block device holds, as `blkid -p` (low-level probe, no cache)
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// No signature at all: safe to format.
    Empty,
    /// A filesystem of this type.
    Filesystem(String),
    /// Something else: a partition table, RAID or LVM member...
    Other(String),
}

/// Probes a device.
pub async fn probe(device: &str) -> Result<Content, NodeError> {
    let out = run("blkid", &["-p", "-o", "export", device], TOOL_TIMEOUT).await?;
    match out.code {
        Some(2) => Ok(Content::Empty),
        Some(0) => {
            let field = |k: &str| {
                out.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(str::to_owned))
            };
            match (field("TYPE="), field("USAGE="), field("PTTYPE=")) {
                (Some(t), Some(u), _) if u == "filesystem" => Ok(Content::Filesystem(t)),
                (Some(t), _, _) => Ok(Content::Other(t)),
                (None, _, Some(pt)) => Ok(Content::Other(format!("a {pt} partition table"))),
                _ => Ok(Content::Other("an unknown signature".into())),
            }
        }
        _ => Err(NodeError::Tool {
            tool: "blkid".into(),
            message: format!("probing {device}: {}", out.stderr),
        }),
    }
}

/// Makes a filesystem of type `fs` on `device`.
pub async fn mkfs(device: &str, fs: &str) -> Result<(), NodeError> {
    let tool = format!("mkfs.{fs}");
    let args: Vec<&str> = match fs {
        "ext4" => vec!["-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", device],
        _ => vec!["-q", device],
    };
    run_ok(&tool, &args, MKFS_TIMEOUT).await.map(drop)
}

/// The network block devices of this kernel (`/dev/nbd*`).
pub fn nbd_devices() -> Vec<String> {
    let mut devs: Vec<String> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix("nbd")
                        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    devs.sort();
    devs
}

/// Whether an nbd device is connected (the kernel shows a `pid` for it).
fn nbd_in_use(dev: &str) -> bool {
    let name = dev.trim_start_matches("/dev/");
    Path::new(&format!("/sys/block/{name}/pid")).exists()
}

/// Connects `file` (qcow2) to a free nbd device with `qemu-nbd`.
pub async fn nbd_connect(file: &str) -> Result<String, NodeError> {
    for dev in nbd_devices() {
        if nbd_in_use(&dev) {
            continue;
        }
        let connect = format!("--connect={dev}");
        run_ok(
            "qemu-nbd",
            &["--format=qcow2", &connect, file],
            TOOL_TIMEOUT,
        )
        .await?;
        return Ok(dev);
    }
    Err(NodeError::Tool {
        tool: "qemu-nbd".into(),
        message: "every /dev/nbd* device is in use".into(),
    })
}

/// Disconnects an nbd device.
pub async fn nbd_disconnect(dev: &str) -> Result<(), NodeError> {
    if !nbd_in_use(dev) {
        return Ok(());
    }
    run_ok("qemu-nbd", &["--disconnect", dev], TOOL_TIMEOUT)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")).expect("mountinfo"));
    }
}
