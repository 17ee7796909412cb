//! Helpers for the node suites (`node`, `docker`): a controller serving a
//! `vfs` and a raw `image` service, a client config naming a private mount
//! root, and the root/requirement checks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Berthd;

/// Set to `1` (as `.ci/run` does) to make the Docker suite, and the mount
/// suites that need root, fail instead of skipping.
pub const REQUIRE_ENV: &str = "BERTH_REQUIRE_DOCKER";

/// Whether skipping is forbidden.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Skips (one line, `false`) or fails, per [`required`], when `why` is
/// `Some`.
#[track_caller]
pub fn can_run(suite: &str, why: Option<String>) -> bool {
    match why {
        None => true,
        Some(why) if required() => panic!("{suite}: {why} ({REQUIRE_ENV}=1, so this fails)"),
        Some(why) => {
            println!("skipping {suite}: {why}");
            false
        }
    }
}

/// Why mounting cannot be tested here, if it cannot.
pub fn mount_blocker() -> Option<String> {
    if !is_root() {
        return Some("mounting needs root".into());
    }
    for tool in ["losetup", "blkid", "mkfs.ext4"] {
        if !tool_exists(tool) {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Whether a program is on PATH or in the sbin directories.
pub fn tool_exists(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|d| d.join(name).is_file())
}

/// A controller serving `fs` (vfs) and `img` (raw images), with the client
/// config pointing `mount_root` at a private directory and naming the
/// instance `node-a`.
pub struct NodeLab {
    /// The controller (declared first: killed before the directory goes).
    pub d: Berthd,
    /// Holds the config, both roots and the mount root.
    pub work: tempfile::TempDir,
}

impl NodeLab {
    /// Starts the controller with extra services appended to its config.
    pub fn start_with(extra_services: &str) -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let d = Berthd::start_fs_and_img(work.path(), extra_services);
        let lab = Self { d, work };
        lab.set_client_keys(&format!(
            "mount_root = {:?}\ninstance = \"node-a\"\n",
            lab.mount_root()
        ));
        lab
    }

    /// Starts the controller with the two services.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// The client config berthd installed for this test's user.
    pub fn client_config(&self) -> PathBuf {
        self.d.home.join(".config/berth/config.toml")
    }

    /// Puts top-level keys at the head of the client config (TOML puts
    /// keys after a table header into that table).
    pub fn set_client_keys(&self, keys: &str) {
        let path = self.client_config();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&path).expect("client config");
        std::fs::write(&path, format!("{keys}{text}")).expect("write client config");
    }

    /// The private mount root.
    pub fn mount_root(&self) -> PathBuf {
        self.work.path().join("mnt")
    }

    /// The default mount path of a volume.
    pub fn default_path(&self, service: &str, name: &str) -> PathBuf {
        self.mount_root().join(service).join(name)
    }

    /// The image file of an `img` volume.
    pub fn image(&self, name: &str) -> PathBuf {
        self.work.path().join("img").join(format!("{name}.img"))
    }

    /// The directory of an `fs` volume.
    pub fn vfs_dir(&self, name: &str) -> PathBuf {
        self.work.path().join("fs").join(name)
    }

    /// The node state file.
    pub fn state(&self) -> serde_json::Value {
        let path = self.mount_root().join(".berth/node.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).expect("node state is JSON"),
            Err(_) => serde_json::json!({"volumes": {}}),
        }
    }

    /// The instances a volume is attached to, from the controller.
    pub fn holders(&self, service: &str, name: &str) -> Vec<String> {
        let v = self
            .d
            .berth(&[
                "volume",
                "inspect",
                name,
                "--service",
                service,
                "-o",
                "json",
            ])
            .json();
        v["attachments"]
            .as_array()
            .expect("attachments")
            .iter()
            .map(|a| a["instance"].as_str().expect("instance").to_owned())
            .collect()
    }
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        // Never leave mounts or loop devices behind, whatever failed.
        let root = self.mount_root();
        for p in mounts_under(&root).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
        let img = self.work.path().join("img");
        if let Ok(out) = Command::new("losetup")
            .args(["-n", "-O", "NAME,BACK-FILE"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut parts = line.split_whitespace();
                if let (Some(dev), Some(file)) = (parts.next(), parts.next()) {
                    if Path::new(file).starts_with(&img) {
                        let _ = Command::new("losetup").arg("-d").arg(dev).status();
                    }
                }
            }
        }
    }
}

/// The mount points at or under `dir`, in mount-table order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(p) == path)
}

/// The loop devices over `file`.
pub fn loops_of(file: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["-n", "-O", "NAME", "-j"])
        .arg(file)
        .output()
        .expect("losetup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether `needle` occurs in the file's bytes (a file written through an
/// image's filesystem lands in the image).
pub fn file_holds(file: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(file).expect("read image");
    bytes.windows(needle.len()).any(|w| w == needle)
}
