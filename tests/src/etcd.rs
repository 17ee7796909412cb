//! A private `etcd` for the tests that run controllers on it: its own data
//! directory, loopback ports, stopped with the test. Plaintext by default;
//! with client TLS (and a client certificate required) when asked.
//!
//! Without an `etcd` binary, or without the `etcd` cargo feature,
//! [`Etcd::start`] says so in one line and the test is skipped, unless
//! `BERTH_REQUIRE_ETCD=1` (CI), which makes that a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check after a start.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Client TLS for etcd: its server certificate and the CA that must sign
/// client certificates.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA that signs client certificates (`--trusted-ca-file`).
    pub client_ca: PathBuf,
}

/// A private etcd on loopback.
pub struct Etcd {
    child: Option<Child>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The client port.
    pub client: u16,
    peer: u16,
    metrics: u16,
    tls: Option<EtcdTls>,
}

/// A free loopback port (free when asked; etcd binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    /// Starts a plaintext etcd, or says why the test is skipped (`None`).
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts etcd, serving clients over TLS when `tls` is given, or says
    /// why the test is skipped (`None`).
    pub fn start_with(tls: Option<EtcdTls>) -> Option<Self> {
        let required = std::env::var("BERTH_REQUIRE_ETCD").is_ok_and(|v| v == "1");
        let skip = |why: &str| {
            assert!(!required, "BERTH_REQUIRE_ETCD=1 but {why}");
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                println!("skipped: {why} (set BERTH_REQUIRE_ETCD=1 to make this a failure)");
            });
            None
        };
        if !cfg!(feature = "etcd") {
            return skip("berth-tests was built without the `etcd` feature");
        }
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let Some(bin) = bin else {
            return skip("no etcd binary (apt install etcd-server)");
        };
        let mut etcd = Self {
            child: None,
            bin,
            dir: tempfile::tempdir().expect("tempdir"),
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
            tls,
        };
        etcd.launch();
        Some(etcd)
    }

    /// `HOST:PORT` of its client port.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// Its data directory's parent (a place for test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts (or starts again) the etcd process on the same ports and
    /// data, and waits until it is healthy.
    pub fn launch(&mut self) {
        self.launch_with(&[]);
    }

    /// [`Etcd::launch`] with extra etcd arguments.
    pub fn launch_with(&mut self, extra: &[&str]) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let metrics = format!("http://127.0.0.1:{}", self.metrics);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg("berth-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("berth-test={peer}")])
            .args(["--listen-metrics-urls", &metrics])
            .args(extra);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in {} s",
                ETCD_START_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// etcd's own `/health` (on its plaintext metrics port) answers
    /// `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.metrics
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Sends a signal (by name: `STOP` freezes it, `CONT` resumes it).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("etcd running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Stops etcd (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A frozen etcd dies all the same, but resume it first.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fingerprint clients pin for `d` (its `tls/fingerprint` file).
pub fn fingerprint(d: &crate::Berthd) -> String {
    let path = d.data_dir.join("tls").join("fingerprint");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// `berthd join --data-dir DATA_DIR --from FROM --fingerprint FP
/// --token-file TOKEN_FILE`, run to completion (bounded).
pub fn join_with(
    from: &crate::Berthd,
    data_dir: &std::path::Path,
    fingerprint: &str,
    token_file: &std::path::Path,
) -> crate::Run {
    let mut cmd = Command::new(crate::bin("berthd"));
    from.env(&mut cmd);
    cmd.arg("join")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--from")
        .arg(from.addr.to_string())
        .arg("--fingerprint")
        .arg(fingerprint)
        .arg("--token-file")
        .arg(token_file)
        .stdin(Stdio::null());
    crate::Run(crate::process::run_bounded(cmd, Duration::from_secs(30)))
}

/// Joins a new controller to `from`'s cluster (with `from`'s pin and
/// bootstrap admin token) in `data_dir`, then starts it with `args`.
pub fn start_joined(
    from: &crate::Berthd,
    data_dir: &std::path::Path,
    args: &[&str],
) -> crate::Berthd {
    join_with(from, data_dir, &fingerprint(from), &from.admin_token_path()).success();
    crate::Berthd::start_in(data_dir, args, "info,berthd::request=debug")
}
