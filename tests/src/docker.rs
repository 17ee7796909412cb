//! Docker plumbing shared by the Docker suite and the benchmark: a private
//! Docker Engine the caller starts itself (Debian's `docker.io`: its own
//! `--data-root`, `--exec-root`, socket and pid file; no iptables, no
//! bridge, the `vfs` storage driver), a tiny image imported from Debian's
//! `busybox-static` (no registry needs to be reachable), the uniquely named
//! spec file in `/etc/docker/plugins/` through which that engine finds
//! `berth plugin docker`, and the plugin as a process.
//!
//! Every piece undoes itself on drop, whatever failed: [`Dockerd`] removes
//! its containers, stops the engine (and its containerd) and unmounts what
//! it left; [`PluginSpec`] removes the spec file; [`DockerPlugin`] stops the
//! plugin; [`MountSweep`] unmounts what is left under a mount root. Declare
//! them so that the engine goes first (its containers' unmounts still reach
//! the plugin): sweep, plugin, spec, then the engine.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::node::{is_root, mounts_under, tool_exists};
use crate::process::collect;
use crate::Berthd;

/// How long one docker command may take.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the engine, and the plugin, may take to start serving.
pub const DOCKER_START: Duration = Duration::from_secs(60);

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
pub fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command with its output collected, killing it after `timeout`
/// (the output then says how it ended; never a panic, so guards may use
/// it while they drop).
fn run_killed_after(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Output {
                status: failed_status(),
                stdout: Vec::new(),
                stderr: format!("cannot run {cmd:?}: {e}").into_bytes(),
            }
        }
    };
    let out = collect(&mut child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap_or_else(|_| failed_status());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = out.finish();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The status of a process that could not run (as `false` exits).
fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    std::process::ExitStatus::from_raw(1 << 8)
}

/// The docker CLI matching Debian's daemon, else whatever is installed.
fn docker_cli() -> Option<PathBuf> {
    ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Debian's static busybox.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A unique name for a plugin (and its spec file): `PREFIX-PID-NANOS`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// A private Docker Engine, stopped on drop with everything it started.
pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    cli: PathBuf,
}

impl Dockerd {
    /// Starts the engine and waits (at most [`DOCKER_START`]) until it
    /// answers; or says in one line why it cannot run here (no root,
    /// `dockerd` or the CLI missing, the engine did not come up).
    pub fn start() -> Result<Self, String> {
        if !is_root() {
            return Err("dockerd needs root".into());
        }
        if !tool_exists("dockerd") {
            return Err("dockerd is not installed (Debian: apt-get install docker.io)".into());
        }
        let cli = docker_cli().ok_or("the docker CLI is not installed")?;
        // Short paths: unix socket names are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("bdk")
            .tempdir_in("/tmp")
            .map_err(|e| format!("tempdir: {e}"))?;
        let p = |rel: &str| dir.path().join(rel);
        std::fs::write(p("daemon.json"), "{}").map_err(|e| e.to_string())?;
        let log = std::fs::File::create(p("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(p("daemon.json"))
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("x"))
            .arg("-H")
            .arg(format!("unix://{}", p("d.sock").display()))
            .arg("--pidfile")
            .arg(p("d.pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--userland-proxy=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run dockerd: {e}"))?;
        let log_path = p("dockerd.log");
        let mut me = Self { child, dir, cli };
        let deadline = Instant::now() + DOCKER_START;
        loop {
            if me
                .docker(&["info", "--format", "{{.ServerVersion}}"])
                .status
                .success()
            {
                return Ok(me);
            }
            if Instant::now() > deadline || matches!(me.child.try_wait(), Ok(Some(_))) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = log.lines().last().unwrap_or("").to_owned();
                return Err(format!("dockerd did not start: {last}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The docker CLI aimed at this engine, not yet run.
    fn cli_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("d.sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.path().join("cli"));
        cmd
    }

    /// Runs `docker ARGS` against this engine (killed after
    /// [`DOCKER_TIMEOUT`]).
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = self.cli_cmd();
        cmd.args(args);
        run_killed_after(cmd, DOCKER_TIMEOUT)
    }

    /// Runs `docker ARGS`: its stdout, or one line saying what failed.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "docker {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs `docker ARGS`, asserting success; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `docker ARGS`, asserting failure; its stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(!out.status.success(), "docker {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Imports an image holding only `busybox` (with the applets `sh`,
    /// `cat`, `echo`, `sleep`, `true`, `ls`, `test`) and returns its name.
    pub fn busybox_image(&self, busybox: &Path) -> Result<String, String> {
        let img = self.dir.path().join("img");
        let root = img.join("bin");
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&root)?;
            std::fs::copy(busybox, root.join("busybox"))?;
            for applet in ["sh", "cat", "echo", "sleep", "true", "ls", "test"] {
                std::os::unix::fs::symlink("busybox", root.join(applet))?;
            }
            Ok(())
        })();
        made.map_err(|e| format!("cannot lay out the image in {}: {e}", img.display()))?;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&img)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        let name = "berth-test-busybox:1";
        let mut import = self.cli_cmd();
        import.args(["import", "-", name]).stdout(Stdio::null());
        if let Some(out) = tar.stdout.take() {
            import.stdin(out);
        }
        let imported = import.status();
        let tarred = tar.wait();
        match (tarred, imported) {
            (Ok(t), Ok(i)) if t.success() && i.success() => Ok(name.to_owned()),
            (t, i) => Err(format!("docker import failed: tar {t:?}, import {i:?}")),
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        stop(&mut self.child, Duration::from_secs(30));
        // dockerd's own containerd, should it outlive dockerd.
        let pidfile = self.dir.path().join("x/containerd/containerd.pid");
        if let Ok(pid) = std::fs::read_to_string(pidfile) {
            let pid = pid.trim();
            if !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        // dockerd binds its data root onto itself (and mounts layers and
        // container state below); one that failed half-way leaves them.
        for mount in mounts_under(self.dir.path()).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

/// The plugin's spec file in `/etc/docker/plugins/`, named uniquely (the
/// plugin's name for Docker, `docker volume create -d NAME`), removed on
/// drop.
pub struct PluginSpec {
    /// The spec file.
    pub path: PathBuf,
    name: String,
}

impl PluginSpec {
    /// Writes `/etc/docker/plugins/<name>.spec` pointing at `socket`, with
    /// `name` from [`unique_name`]`(prefix)`.
    pub fn install(prefix: &str, socket: &Path) -> Result<Self, String> {
        let name = unique_name(prefix);
        let dir = Path::new("/etc/docker/plugins");
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{name}.spec"));
        // Owned before it is written: a failed write is still removed.
        let me = Self { path, name };
        std::fs::write(&me.path, format!("unix://{}\n", socket.display()))
            .map_err(|e| format!("cannot write {}: {e}", me.path.display()))?;
        Ok(me)
    }

    /// The plugin's name for Docker.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PluginSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running `berth plugin docker`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct DockerPlugin {
    /// The process, until stopped.
    pub child: Option<Child>,
    /// Its unix socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl DockerPlugin {
    /// Starts `berth --config CONFIG --timeout 3s plugin docker --socket
    /// SOCKET` against `d`, its stderr in the file `log`, and waits (at
    /// most [`DOCKER_START`]) until the socket accepts connections.
    pub fn start(d: &Berthd, config: &Path, socket: &Path, log: &Path) -> Result<Self, String> {
        let mut cmd = d.berth_cmd(&[
            "--config",
            &config.display().to_string(),
            "--timeout",
            "3s",
            "plugin",
            "docker",
            "--socket",
            &socket.display().to_string(),
        ]);
        let log_file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        cmd.stdout(Stdio::null()).stderr(log_file);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run berth plugin docker: {e}"))?;
        let me = Self {
            child: Some(child),
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + DOCKER_START;
        while Instant::now() < deadline {
            if UnixStream::connect(socket).is_ok() {
                return Ok(me);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the plugin did not start: {}", me.log().trim()))
    }

    /// What the plugin wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (by name, e.g. "HUP", "TERM") to the plugin.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for DockerPlugin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, Duration::from_secs(10));
        }
    }
}

/// Unmounts (lazily) whatever is mounted at or under a directory when
/// dropped: what a plugin mounted under its mount root and did not undo.
pub struct MountSweep(pub PathBuf);

impl Drop for MountSweep {
    fn drop(&mut self) {
        for mount in mounts_under(&self.0).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}
