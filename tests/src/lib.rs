//! The end-to-end harness: real `berthd` and `berth` processes on loopback,
//! each controller with its own temporary data directory and home.
//!
//! Every test in `tests/tests/` goes through [`Berthd`]: start a controller
//! (`--listen 127.0.0.1:0`, the port read from its "listening on" line), run
//! the `berth` binary against it, kill or restart it.
//!
//! | module | what it is |
//! | --- | --- |
//! | this file | [`Berthd`] (start, restart, kill a controller), [`Run`] (a finished `berth`), [`home_env`], data-directory views, [`field_pairs`] of a JSON listing |
//! | [`csi`] | `berth plugin csi` as a process, unix-socket channels, the reference `hostpathplugin`, CreateVolume's p50 |
//! | [`docker`] | a private Docker Engine (its own data root, exec root, socket), a busybox image imported without a registry, the plugin's spec file and `berth plugin docker` as a process, each undone on drop; for the Docker suite and the benchmark |
//! | [`etcd`] | a private `etcd` on loopback (plaintext or TLS) for the several-controllers suites, started and stopped by the test, with `berthd join` helpers; or why they skip |
//! | [`grpc`] | plain tonic channels to a plaintext controller, with a bearer token |
//! | [`node`] | root, mount points and loop devices for the node and Docker suites |
//! | [`openssl`] | the stock `openssl` command: keys, requests and signing arguments, an operator CA, inspection |
//! | [`process`] | child processes run to completion within a bound |
//! | [`pty`] | `berth` on a pseudo-terminal (python3's `pty`): the trust prompt, progress bars |
//! | [`tokens`] | the bootstrap admin token, issued tokens, a token's claims |

pub mod csi;
pub mod docker;
pub mod etcd;
pub mod grpc;
pub mod node;
pub mod openssl;
pub mod process;
pub mod pty;
pub mod tokens;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

/// Gives `cmd` the user home `home` (`HOME`, and the XDG directories under
/// it) and clears the variables that would point it at another controller,
/// config, data directory or log filter.
pub fn home_env(cmd: &mut Command, home: &Path) {
    for var in [
        "BERTH_HOST",
        "BERTH_CONFIG",
        "BERTH_TOKEN",
        "BERTH_DATA_DIR",
        "BERTH_TIMEOUT",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"));
}

/// The line a controller logs (at `info`) once per start, when it has
/// compared its records with its drivers' volumes in the background.
pub const DRIFT_CHECKED: &str = "finished comparing the volume records with the drivers";

/// How long a controller may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the built `berthd` and `berth`, building them once
/// per test run (cargo does not build other packages' binaries for tests).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target directory")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--bins",
            "-p",
            "berth-controller",
            "-p",
            "berth-client",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        // Built with the same features as the tests, so the binaries are
        // not rebuilt back and forth.
        if cfg!(feature = "etcd") {
            build.args(["--features", "berth-controller/etcd"]);
        }
        // Without the variables cargo sets for this test's own package:
        // build scripts (ring's) that watch them would otherwise see them
        // change between this build and the test's, and both builds would
        // recompile half the tree every run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&key.as_ref())
            {
                build.env_remove(key.as_ref());
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building berthd and berth failed");
        dir
    })
}

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A running controller and the home directory its user (and the client)
/// live in.
pub struct Berthd {
    child: Option<Child>,
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `HOME`, `XDG_CONFIG_HOME` and `XDG_DATA_HOME` live under here.
    pub home: PathBuf,
    args: Vec<String>,
    log_filter: String,
    /// `ulimit` arguments for the controller (e.g. `-n 64`), when a test
    /// sets its limits.
    ulimit: Option<String>,
    /// The controller program and extra environment, when not `berthd`
    /// (a custom controller binary embedding `berth-controller`).
    program: Option<(PathBuf, Vec<(String, String)>)>,
    /// How many times it was started.
    launches: usize,
    _tmp: tempfile::TempDir,
    /// Everything the controller wrote to stderr so far (collected).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Berthd {
    /// Starts `berthd` with default settings on an ephemeral loopback port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts `berthd` with extra arguments.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_logging(args, "info,berthd::request=debug")
    }

    /// Starts a controller serving `fs` (vfs) and `img` (raw images), with
    /// both roots and its `berthd.toml` under `dir`, and `extra_services`
    /// (TOML) appended to that config.
    pub fn start_fs_and_img(dir: &Path, extra_services: &str) -> Self {
        let config = dir.join("berthd.toml");
        std::fs::write(
            &config,
            format!(
                "[[services]]\nname = \"fs\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n\n\
                 [[services]]\nname = \"img\"\ndriver = \"image\"\n[services.options]\nroot = {:?}\n{extra_services}",
                dir.join("fs"),
                dir.join("img"),
            ),
        )
        .expect("write config");
        Self::start_with(&["--config", &config.display().to_string()])
    }

    /// Starts `berthd` with extra arguments and a log filter (`RUST_LOG`).
    pub fn start_logging(args: &[&str], log_filter: &str) -> Self {
        Self::start_at(None, args, log_filter)
    }

    /// Starts `berthd` on an existing data directory (its home is new).
    pub fn start_in(data_dir: &Path, args: &[&str], log_filter: &str) -> Self {
        Self::start_at(Some(data_dir), args, log_filter)
    }

    /// Starts `berthd` with extra arguments under resource limits set by
    /// `ulimit ULIMIT` (e.g. `-n 64`) in a shell that then execs the
    /// controller, so [`Berthd::pid`] is the controller's.
    pub fn start_with_ulimit(args: &[&str], ulimit: &str) -> Self {
        Self::start_at_limited(None, args, "info,berthd::request=debug", Some(ulimit))
    }

    fn start_at(data_dir: Option<&Path>, args: &[&str], log_filter: &str) -> Self {
        Self::start_at_limited(data_dir, args, log_filter, None)
    }

    /// Starts a custom controller binary (one that embeds
    /// `berth-controller` and takes berthd's arguments) with `env` added,
    /// extra arguments and a log filter, as [`Berthd::start_logging`] starts
    /// `berthd`.
    pub fn start_program(
        program: &Path,
        env: &[(&str, &str)],
        args: &[&str],
        log_filter: &str,
    ) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_full(
            None,
            args,
            log_filter,
            None,
            Some((program.to_owned(), env)),
        )
    }

    fn start_at_limited(
        data_dir: Option<&Path>,
        args: &[&str],
        log_filter: &str,
        ulimit: Option<&str>,
    ) -> Self {
        Self::start_full(data_dir, args, log_filter, ulimit, None)
    }

    fn start_full(
        data_dir: Option<&Path>,
        args: &[&str],
        log_filter: &str,
        ulimit: Option<&str>,
        program: Option<(PathBuf, Vec<(String, String)>)>,
    ) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let data_dir = data_dir
            .map(Path::to_owned)
            .unwrap_or_else(|| tmp.path().join("data"));
        let mut me = Self {
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            data_dir,
            home,
            args: args.iter().map(|s| s.to_string()).collect(),
            log_filter: log_filter.to_owned(),
            ulimit: ulimit.map(str::to_owned),
            program,
            launches: 0,
            _tmp: tmp,
            log: Default::default(),
        };
        me.launch("127.0.0.1:0");
        me
    }

    /// A path under the test's temporary directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self._tmp.path().join(rel)
    }

    /// Sets the environment every process of this test shares.
    pub fn env(&self, cmd: &mut Command) {
        home_env(cmd, &self.home);
    }

    fn launch(&mut self, listen: &str) {
        self.launches += 1;
        let mut cmd = match (&self.ulimit, &self.program) {
            (_, Some((program, env))) => {
                let mut cmd = Command::new(program);
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
                cmd
            }
            (None, None) => Command::new(bin("berthd")),
            (Some(limits), None) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit {limits} && exec \"$0\" \"$@\""))
                    .arg(bin("berthd"));
                sh
            }
        };
        self.env(&mut cmd);
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn berthd");
        let rx = follow(&mut child, std::sync::Arc::clone(&self.log));
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => self.addr = addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berthd did not start; its log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (at most `timeout`) until the controller, since its latest
    /// start, has compared its records with its drivers ([`DRIFT_CHECKED`]
    /// logged once for every start so far); whether it has.
    pub fn wait_drift_checked(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log().matches(DRIFT_CHECKED).count() >= self.launches {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id of the running controller.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the controller with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (by name, e.g. "TERM", "HUP") to the controller.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the controller to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the controller again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.to_string();
        self.launch(&addr);
    }

    /// A `berth` command aimed at this controller, not yet run.
    pub fn berth_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("berth"));
        self.env(&mut cmd);
        cmd.arg("--host")
            .arg(self.addr.to_string())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `berth` with `args` against this controller, its stdout and
    /// stderr piped, without waiting for it.
    pub fn spawn_berth(&self, args: &[&str]) -> Child {
        self.berth_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth")
    }

    /// Runs `berth` with `args` against this controller.
    pub fn berth(&self, args: &[&str]) -> Run {
        Run(self.berth_cmd(args).output().expect("run berth"))
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Follows a spawned `berthd` with piped stdout and stderr: its stderr is
/// appended to `log` line by line, and each address of a "berthd listening
/// on ADDR" line on its stdout is sent on the returned channel.
pub fn follow(child: &mut Child, log: Arc<Mutex<String>>) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("berthd listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    rx
}

/// A finished `berth` run.
#[derive(Debug)]
pub struct Run(pub Output);

impl Run {
    pub fn ok(&self) -> bool {
        self.0.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn success(&self) -> String {
        assert!(
            self.ok(),
            "berth failed: {}\n{}",
            self.stderr(),
            self.stdout()
        );
        self.stdout()
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn failure(&self) -> String {
        assert!(
            !self.ok(),
            "berth should have failed but printed: {}",
            self.stdout()
        );
        self.stderr()
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.success()).expect("berth printed JSON")
    }
}

/// Names of the entries of a directory, sorted (hidden ones included).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every path under `root`, relative, recursively (hidden ones included).
pub fn tree(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for name in entries(&dir) {
            let rel = format!("{prefix}{name}");
            let path = dir.join(&name);
            if path.is_dir() {
                stack.push((path, format!("{rel}/")));
            }
            out.insert(rel);
        }
    }
    out
}

/// The default `local` service's vfs root of a controller.
pub fn vfs_root(d: &Berthd) -> PathBuf {
    d.data_dir.join("volumes")
}

/// Volume directories: the non-hidden entries of a vfs root.
pub fn volume_dirs(root: &Path) -> std::collections::BTreeSet<String> {
    entries(root)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// The vfs driver's metadata files (one per volume it holds).
pub fn vfs_metadata(root: &Path) -> std::collections::BTreeSet<String> {
    entries(&root.join(".berth/volumes")).into_iter().collect()
}

/// `berth volume list -o json` by name, asserting no name appears twice.
pub fn listed(d: &Berthd) -> std::collections::BTreeMap<String, serde_json::Value> {
    let list = d.berth(&["volume", "list", "-o", "json"]).json();
    let mut out = std::collections::BTreeMap::new();
    for v in list.as_array().expect("a JSON array") {
        let name = v["name"].as_str().expect("name").to_owned();
        assert!(
            out.insert(name.clone(), v.clone()).is_none(),
            "{name} listed twice"
        );
    }
    out
}

/// The string fields `a` and `b` of each object in the JSON array `list`
/// (a `-o json` listing), in the listing's order.
pub fn field_pairs(list: &serde_json::Value, a: &str, b: &str) -> Vec<(String, String)> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| {
            (
                v[a].as_str().expect(a).to_owned(),
                v[b].as_str().expect(b).to_owned(),
            )
        })
        .collect()
}
