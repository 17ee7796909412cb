//! A private `etcd` for the tests of several controllers (`--store
//! etcd://`): temp data directory, loopback ports, stopped on drop. Without
//! an `etcd` binary, or without the `etcd` cargo feature, [`Etcd::start`]
//! says so in one line and the test skips, unless `BERTH_REQUIRE_ETCD=1`
//! (CI), which makes that a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private etcd on loopback.
pub struct Etcd {
    child: Option<Child>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    /// Starts etcd, or says why the test is skipped (`None`).
    pub fn start() -> Option<Self> {
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
        };
        etcd.launch();
        Some(etcd)
    }

    /// `127.0.0.1:PORT` of its client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// Starts (again) the etcd process and waits (bounded) for it to be healthy.
    pub fn launch(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg("berth-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("berth-test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// etcd's own `/health` answers `"health":"true"`.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.client
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Kills the etcd process (its data directory stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
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
