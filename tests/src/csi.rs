//! CSI plumbing shared by the CSI suite and the benchmark: `berth plugin
//! csi` as a process, a gRPC channel over a unix socket, the reference
//! `hostpathplugin`, and CreateVolume's p50 through any of them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_proto::csi::v1 as csi;
use csi::controller_client::ControllerClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::Berthd;

/// How long a plugin (or the reference driver) may take to start serving.
pub const START: Duration = Duration::from_secs(30);
/// The node id every plugin here runs with.
pub const NODE: &str = "n1";
const MIB: i64 = 1 << 20;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A 1 MiB single-node-writer filesystem volume named `name`.
fn create_request(name: &str) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }],
        ..Default::default()
    }
}

/// A running `berth plugin csi`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Plugin {
    /// The process, until stopped.
    pub child: Option<Child>,
    /// Its unix socket.
    pub socket: PathBuf,
    /// What it wrote so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Reads `child`'s stdout and stderr into `log` and waits (at most
/// [`START`]) for a stdout line starting with `prefix`; whether it came.
pub fn wait_line(
    child: &mut Child,
    prefix: &'static str,
    log: std::sync::Arc<std::sync::Mutex<String>>,
) -> bool {
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let out_log = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                let _ = tx.send(());
            }
            if let Ok(mut l) = out_log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    rx.recv_timeout(START).is_ok()
}

impl Plugin {
    /// Starts `berth [global] plugin csi --endpoint unix://DIR/csi-*.sock
    /// --node-id n1 --mount-root DIR/mounts [extra]` against `d` and waits
    /// until it says it listens.
    pub fn start(d: &Berthd, dir: &Path, global: &[&str], extra: &[&str]) -> Self {
        let socket = dir.join(format!(
            "csi-{}.sock",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_nanos())
                .unwrap_or(0)
        ));
        let endpoint = format!("unix://{}", s(&socket));
        let mut args: Vec<&str> = global.to_vec();
        let mount_root = dir.join("mounts");
        args.extend(["plugin", "csi", "--endpoint", &endpoint, "--node-id", NODE]);
        args.extend(["--mount-root", s(&mount_root)]);
        args.extend_from_slice(extra);
        let mut cmd = d.berth_cmd(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn berth plugin csi");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let up = wait_line(
            &mut child,
            "berth plugin csi listening on",
            std::sync::Arc::clone(&log),
        );
        let mut me = Self {
            child: Some(child),
            socket,
            log,
        };
        if !up {
            me.stop();
            panic!("the plugin did not start:\n{}", me.log());
        }
        me
    }

    /// What the plugin wrote so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Its endpoint, `unix://PATH`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", s(&self.socket))
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gRPC channel over a unix socket.
pub async fn connect(socket: &Path) -> Channel {
    let path = socket.to_owned();
    Endpoint::from_static("http://csi.invalid")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to the CSI socket")
}

/// A running hostpathplugin (the reference driver), killed on drop.
pub struct Hostpath(Child);

impl Hostpath {
    /// Starts `binary` serving on `DIR/hostpath.sock` with its state in
    /// `dir`; returns it and its endpoint.
    pub fn start(binary: &Path, dir: &Path) -> (Self, String) {
        let socket = dir.join("hostpath.sock");
        let endpoint = format!("unix://{}", s(&socket));
        let child = Command::new(binary)
            .arg("--endpoint")
            .arg(&endpoint)
            .arg("--nodeid")
            .arg(NODE)
            .arg("--statedir")
            .arg(dir.join("hostpath-state"))
            .arg("--drivername")
            .arg("hostpath.csi.k8s.io")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hostpathplugin");
        let deadline = Instant::now() + START;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "hostpathplugin did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        (Self(child), endpoint)
    }
}

impl Drop for Hostpath {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The p50 of `n` CreateVolume calls (each a new volume), then deletes them.
pub async fn create_p50(channel: Channel, params: HashMap<String, String>, n: usize) -> Duration {
    let mut c = ControllerClient::new(channel);
    let mut times = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut req = create_request(&format!("p50-{i}"));
        req.parameters = params.clone();
        let t = Instant::now();
        let v = c.create_volume(req).await.expect("create").into_inner();
        times.push(t.elapsed());
        ids.push(v.volume.expect("volume").volume_id);
    }
    for id in ids {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .expect("delete");
    }
    times.sort();
    times[n / 2]
}
