//! A CSI plugin hosted as a Berth service (`driver = "csi"`): a real
//! `berthd` in front of a real plugin process on a private unix socket.
//!
//! Every test runs against `csi-test-plugin` (a small plugin built with the
//! tests, `tests/src/bin/csi-test-plugin.rs`), so the mapping is checked on
//! any machine. With `BERTH_CSI_HOSTPATH=PATH` the command and conformance
//! tests also run against the reference plugin (kubernetes-csi hostpath),
//! and the create+delete rate through Berth is measured against the
//! plugin's own; unset, those parts print one line and are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_controller::hosted::csi::{CsiDriver, VOLUME_ID};
use berth_drivers::DriverOptions;
use berth_proto::csi::v1 as csi;
use berth_tests::Berthd;
use csi::controller_client::ControllerClient;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

/// How long a plugin may take to start serving.
const START: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A plugin process on `socket`, killed on drop.
struct PluginProcess {
    child: Option<Child>,
    socket: PathBuf,
    command: Vec<String>,
}

impl PluginProcess {
    /// `csi-test-plugin` with its state under `dir/plugin-root`.
    fn test_plugin(dir: &Path, extra: &[&str]) -> Self {
        let socket = dir.join("test-plugin.sock");
        let mut command = vec![
            env!("CARGO_BIN_EXE_csi-test-plugin").to_owned(),
            "--endpoint".into(),
            format!("unix://{}", s(&socket)),
            "--root".into(),
            s(&dir.join("plugin-root")).to_owned(),
        ];
        command.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(socket, command)
    }

    /// The reference plugin, with its state under `dir/hostpath-state`.
    fn hostpath(binary: &Path, dir: &Path) -> Self {
        let socket = dir.join("hostpath.sock");
        let command = vec![
            s(binary).to_owned(),
            "--endpoint".into(),
            format!("unix://{}", s(&socket)),
            "--nodeid".into(),
            "n1".into(),
            "--statedir".into(),
            s(&dir.join("hostpath-state")).to_owned(),
            "--drivername".into(),
            "hostpath.csi.k8s.io".into(),
        ];
        Self::spawn(socket, command)
    }

    fn spawn(socket: PathBuf, command: Vec<String>) -> Self {
        let mut p = Self {
            child: None,
            socket,
            command,
        };
        p.start();
        p
    }

    /// Starts it (again), waiting for its socket.
    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the plugin");
        self.child = Some(child);
        let deadline = Instant::now() + START;
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "the plugin did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", s(&self.socket))
    }

    async fn client(&self) -> ControllerClient<Channel> {
        let path = self.socket.clone();
        let channel = Endpoint::from_static("http://csi.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("connect to the plugin");
        ControllerClient::new(channel)
    }

    /// The volume ids the plugin holds, asked directly.
    async fn volume_ids(&self) -> BTreeSet<String> {
        let answer = self
            .client()
            .await
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner();
        assert!(answer.next_token.is_empty(), "one page is enough here");
        answer
            .entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect()
    }

    async fn snapshot_ids(&self) -> BTreeSet<String> {
        self.client()
            .await
            .list_snapshots(csi::ListSnapshotsRequest::default())
            .await
            .expect("ListSnapshots")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.snapshot.map(|s| s.snapshot_id))
            .collect()
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The reference plugin, when `BERTH_CSI_HOSTPATH` names it.
fn hostpath() -> Option<PathBuf> {
    let value = std::env::var_os("BERTH_CSI_HOSTPATH")?;
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "BERTH_CSI_HOSTPATH={} does not name a file (unset it to skip)",
        path.display()
    );
    Some(path)
}

/// A controller with one `csi` service `name` in front of `endpoint`.
fn berthd(dir: &Path, name: &str, endpoint: &str) -> Berthd {
    let config = dir.join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "[[services]]\nname = {name:?}\ndriver = \"csi\"\n[services.options]\nendpoint = {endpoint:?}\n"
        ),
    )
    .expect("write config");
    Berthd::start_with(&["--config", s(&config)])
}

fn id_of(volume: &Value) -> String {
    volume["fields"][VOLUME_ID]
        .as_str()
        .unwrap_or_else(|| panic!("no {VOLUME_ID} in {volume}"))
        .to_owned()
}

fn service_entry(d: &Berthd, name: &str) -> Value {
    let list = d.berth(&["service", "list", "-o", "json"]).json();
    list.as_array()
        .expect("a list")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no service {name} in {list}"))
}

fn has_cap(service: &Value, cap: &str) -> bool {
    service["capabilities"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == cap))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Every `berth volume` and `berth snapshot` command through service `svc`,
/// checked against what the plugin itself holds. `data` is the plugin's
/// directory of volume data when the test can see it (the test plugin).
async fn every_command(d: &Berthd, svc: &str, plugin: &PluginProcess, data: Option<&Path>) {
    let entry = service_entry(d, svc);
    assert_eq!(entry["driver"], "csi", "{entry}");
    assert_eq!(entry["available"], true, "{entry}");
    assert!(has_cap(&entry, "attach"), "{entry}");
    assert!(has_cap(&entry, "snapshot"), "{entry}");
    let table = d.berth(&["service", "list"]).success();
    assert!(
        table.contains("STATUS") && table.contains("available"),
        "{table}"
    );

    let v1 = d
        .berth(&[
            "volume", "create", "v1", "-s", svc, "--size", "4MiB", "-o", "json",
        ])
        .json();
    assert_eq!(v1["name"], "v1");
    assert_eq!(v1["size_bytes"].as_u64(), Some(4 * MIB), "{v1}");
    let id1 = id_of(&v1);
    assert_eq!(plugin.volume_ids().await, BTreeSet::from([id1.clone()]));
    // Idempotent through the catalogue; conflicting parameters refused.
    let again = d
        .berth(&[
            "volume", "create", "v1", "-s", svc, "--size", "4MiB", "-o", "json",
        ])
        .json();
    assert_eq!(id_of(&again), id1);
    let err = d
        .berth(&["volume", "create", "v1", "-s", svc, "--size", "8MiB"])
        .failure();
    assert!(err.contains("already exists"), "{err}");
    // Per-volume options are refused, and nothing is made.
    let err = d
        .berth(&["volume", "create", "v9", "-s", svc, "--opt", "x=y"])
        .failure();
    assert!(
        err.contains("invalid argument") && err.contains("parameters"),
        "{err}"
    );
    assert_eq!(plugin.volume_ids().await.len(), 1);

    let inspected = d
        .berth(&["volume", "inspect", "v1", "-s", svc, "-o", "json"])
        .json();
    assert_eq!(id_of(&inspected), id1);
    assert_eq!(
        names(&d.berth(&["volume", "list", "-s", svc, "-o", "json"]).json()),
        ["v1"]
    );

    let attached = d
        .berth(&[
            "volume",
            "attach",
            "v1",
            "-s",
            svc,
            "--instance",
            "n1",
            "-o",
            "json",
        ])
        .json();
    assert!(attached.to_string().contains(&id1), "{attached}");
    if let Some(data) = data {
        // The test plugin has PUBLISH_UNPUBLISH_VOLUME: attach published.
        let state = data.with_file_name("state.json");
        let published = std::fs::read_to_string(&state).expect("plugin state");
        assert!(published.contains("\"n1\""), "{published}");
    }
    d.berth(&["volume", "detach", "v1", "-s", svc, "--instance", "n1"])
        .success();
    if let Some(data) = data {
        let state = data.with_file_name("state.json");
        let published = std::fs::read_to_string(&state).expect("plugin state");
        assert!(!published.contains("\"n1\""), "{published}");
    }

    if let Some(data) = data {
        std::fs::write(data.join(&id1).join("hello.txt"), b"kept").expect("write into v1");
    }
    let snap = d
        .berth(&["snapshot", "create", "v1", "s1", "-s", svc, "-o", "json"])
        .json();
    assert_eq!(snap["volume"], "v1", "{snap}");
    assert_eq!(plugin.snapshot_ids().await.len(), 1);
    assert_eq!(
        names(
            &d.berth(&["snapshot", "list", "-s", svc, "-o", "json"])
                .json()
        ),
        ["s1"]
    );
    d.berth(&["snapshot", "inspect", "s1", "-s", svc]).success();

    let v2 = d
        .berth(&[
            "volume",
            "create",
            "v2",
            "-s",
            svc,
            "--from-snapshot",
            "s1",
            "-o",
            "json",
        ])
        .json();
    let id2 = id_of(&v2);
    assert_ne!(id1, id2);
    if let Some(data) = data {
        assert_eq!(
            std::fs::read(data.join(&id2).join("hello.txt")).expect("restored"),
            b"kept"
        );
    }
    let mut expected = BTreeSet::from([id1.clone(), id2.clone()]);
    if has_cap(&entry, "copy") {
        let v3 = d
            .berth(&["volume", "copy", "v1", "v3", "-s", svc, "-o", "json"])
            .json();
        let id3 = id_of(&v3);
        if let Some(data) = data {
            assert_eq!(
                std::fs::read(data.join(&id3).join("hello.txt")).expect("copied"),
                b"kept"
            );
        }
        expected.insert(id3);
    }
    assert_eq!(plugin.volume_ids().await, expected);

    let err = d.berth(&["volume", "rm", "v1", "-s", svc]).failure();
    assert!(err.contains("snapshots"), "{err}");
    d.berth(&["snapshot", "rm", "s1", "-s", svc]).success();
    assert!(plugin.snapshot_ids().await.is_empty());
    for v in ["v1", "v2", "v3"] {
        if expected.len() == 2 && v == "v3" {
            continue;
        }
        d.berth(&["volume", "rm", v, "-s", svc]).success();
    }
    assert!(plugin.volume_ids().await.is_empty());
    assert_eq!(
        d.berth(&["volume", "list", "-s", svc, "-o", "json"]).json(),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_through_a_csi_service_of_the_test_plugin() {
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::test_plugin(work.path(), &[]);
    let d = berthd(work.path(), "tp", &plugin.endpoint());
    let data = work.path().join("plugin-root/volumes");
    every_command(&d, "tp", &plugin, Some(&data)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_through_a_csi_service_of_hostpath() {
    let Some(binary) = hostpath() else {
        println!(
            "skipped: set BERTH_CSI_HOSTPATH=PATH to run berth's commands through hostpathplugin"
        );
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::hostpath(&binary, work.path());
    let d = berthd(work.path(), "hostpath", &plugin.endpoint());
    every_command(&d, "hostpath", &plugin, None).await;
}

fn driver_for(endpoint: &str) -> std::sync::Arc<CsiDriver> {
    CsiDriver::from_options(&DriverOptions::new(
        [("endpoint".to_owned(), endpoint.to_owned())].into(),
    ))
    .expect("driver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes_on_the_csi_driver() {
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::test_plugin(work.path(), &[]);
    let report = berth_drivers::conformance::run(driver_for(&plugin.endpoint())).await;
    println!("{report}");
    report.assert_passed();
    assert!(plugin.volume_ids().await.is_empty(), "nothing left behind");
    if let Some(binary) = hostpath() {
        let work = tempfile::tempdir().expect("tempdir");
        let plugin = PluginProcess::hostpath(&binary, work.path());
        let report = berth_drivers::conformance::run(driver_for(&plugin.endpoint())).await;
        println!("hostpathplugin: {report}");
        report.assert_passed();
        assert!(plugin.volume_ids().await.is_empty(), "nothing left behind");
    } else {
        println!("skipped the hostpath half: set BERTH_CSI_HOSTPATH=PATH");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_create_is_not_idempotent_is_named() {
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::test_plugin(work.path(), &["--not-idempotent"]);
    let report = berth_drivers::conformance::run(driver_for(&plugin.endpoint())).await;
    let failed: Vec<_> = report.failures().collect();
    let idem = failed
        .iter()
        .find(|c| c.rule.contains("same parameters returns the same volume"))
        .unwrap_or_else(|| panic!("the idempotency rule fails:\n{report}"));
    let why = idem.failure.as_deref().unwrap_or_default();
    assert!(
        why.contains("test.csi.berth.dev")
            && why.contains(&plugin.endpoint())
            && why.contains("not idempotent"),
        "{why}"
    );
}

/// Waits (bounded) until `berth` with `args` succeeds; the last output.
fn until_ok(d: &Berthd, args: &[&str], within: Duration) -> berth_tests::Run {
    let deadline = Instant::now() + within;
    loop {
        let run = d.berth(args);
        if run.ok() || Instant::now() > deadline {
            return run;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_is_down_or_killed_is_unavailable_then_recovers() {
    let work = tempfile::tempdir().expect("tempdir");
    // The plugin is not running yet: berthd still starts.
    let socket = work.path().join("test-plugin.sock");
    let mut d = berthd(work.path(), "tp", &format!("unix://{}", s(&socket)));
    let entry = service_entry(&d, "tp");
    assert_eq!(entry["available"], false, "{entry}");
    assert!(
        entry["unavailable"]
            .as_str()
            .is_some_and(|w| w.contains(s(&socket))),
        "{entry}"
    );
    let started = Instant::now();
    let err = d
        .berth(&["volume", "create", "early", "-s", "tp"])
        .failure();
    assert!(
        err.contains("unavailable") && err.contains(s(&socket)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "bounded");

    let mut plugin = PluginProcess::test_plugin(work.path(), &[]);
    let run = until_ok(
        &d,
        &["volume", "create", "a", "-s", "tp", "-o", "json"],
        Duration::from_secs(30),
    );
    assert!(run.ok(), "recovered: {}", run.stderr());
    let id_a = id_of(&run.json());
    let entry = service_entry(&d, "tp");
    assert_eq!(entry["available"], true, "{entry}");
    assert!(
        has_cap(&entry, "snapshot") && has_cap(&entry, "copy"),
        "{entry}"
    );

    // Killed mid-run: records stay readable, changes are UNAVAILABLE.
    plugin.kill();
    assert_eq!(
        names(
            &d.berth(&["volume", "list", "-s", "tp", "-o", "json"])
                .json()
        ),
        ["a"]
    );
    let err = d.berth(&["volume", "create", "b", "-s", "tp"]).failure();
    assert!(
        err.contains("unavailable") && err.contains(s(&socket)),
        "{err}"
    );
    let err = d.berth(&["volume", "rm", "a", "-s", "tp"]).failure();
    assert!(
        err.contains("unavailable") && err.contains(s(&socket)),
        "{err}"
    );
    let entry = service_entry(&d, "tp");
    assert_eq!(entry["available"], false, "{entry}");

    // Back (same state directory): everything works, nothing was lost.
    plugin.start();
    let run = until_ok(
        &d,
        &["volume", "create", "b", "-s", "tp", "-o", "json"],
        Duration::from_secs(30),
    );
    assert!(run.ok(), "recovered: {}", run.stderr());
    let id_b = id_of(&run.json());
    assert_eq!(
        plugin.volume_ids().await,
        BTreeSet::from([id_a.clone(), id_b.clone()])
    );
    assert_eq!(
        names(
            &d.berth(&["volume", "list", "-s", "tp", "-o", "json"])
                .json()
        ),
        ["a", "b"]
    );

    // The create refused at the very start left an intent (its undo could
    // not reach the plugin either). A berthd restarted while the plugin is
    // down still starts, keeping that intent for later.
    plugin.kill();
    d.restart();
    assert!(
        d.log()
            .contains("cannot settle an interrupted operation now"),
        "{}",
        d.log()
    );
    assert_eq!(service_entry(&d, "tp")["available"], false);
    plugin.start();
    // It learnt the plugin's ids back from its records.
    let run = until_ok(
        &d,
        &["volume", "rm", "a", "-s", "tp"],
        Duration::from_secs(30),
    );
    assert!(run.ok(), "{}", run.stderr());
    assert_eq!(plugin.volume_ids().await, BTreeSet::from([id_b]));
    // The next start with the plugin up settles the old intent: nothing
    // of "early" exists anywhere.
    d.restart();
    d.berth(&["volume", "rm", "b", "-s", "tp"]).success();
    assert!(plugin.volume_ids().await.is_empty());
    assert_eq!(
        d.berth(&["volume", "list", "-s", "tp", "-o", "json"])
            .json(),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_killed_between_the_plugins_create_and_the_record_is_reconciled() {
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::test_plugin(work.path(), &["--hang-create", "crashme"]);
    let mut d = berthd(work.path(), "tp", &plugin.endpoint());
    let kept = d
        .berth(&["volume", "create", "kept", "-s", "tp", "-o", "json"])
        .json();
    let kept_id = id_of(&kept);
    d.berth(&["snapshot", "create", "kept", "snap", "-s", "tp"])
        .success();

    let mut create = d.spawn_berth(&["volume", "create", "crashme", "-s", "tp"]);
    let marker = work.path().join("plugin-root/hung");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the plugin never saw the create");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The plugin made the volume; berthd has not recorded it. Crash.
    assert_eq!(plugin.volume_ids().await.len(), 2);
    d.kill9();
    let _ = create.kill();
    let _ = create.wait();

    d.restart();
    // Reconcile (before serving) undid the unacknowledged create.
    assert_eq!(plugin.volume_ids().await, BTreeSet::from([kept_id.clone()]));
    assert_eq!(
        names(
            &d.berth(&["volume", "list", "-s", "tp", "-o", "json"])
                .json()
        ),
        ["kept"]
    );
    // And the name is free again.
    let again = d
        .berth(&["volume", "create", "crashme", "-s", "tp", "-o", "json"])
        .json();
    assert!(plugin.volume_ids().await.contains(&id_of(&again)));
    assert!(
        d.log().contains("undoing a create interrupted by a crash"),
        "{}",
        d.log()
    );
    // Snapshot records keep no plugin id: after the restart the driver
    // finds it again (CreateSnapshot is idempotent on the name).
    let restored = d
        .berth(&[
            "volume",
            "create",
            "restored",
            "-s",
            "tp",
            "--from-snapshot",
            "snap",
            "-o",
            "json",
        ])
        .json();
    assert!(plugin.volume_ids().await.contains(&id_of(&restored)));
    assert_eq!(plugin.snapshot_ids().await.len(), 1);
    d.berth(&["snapshot", "rm", "snap", "-s", "tp"]).success();
    assert!(plugin.snapshot_ids().await.is_empty());
}

/// Create+delete pairs per second: through berthd (TLS, catalogue, journal,
/// the `csi` driver) and straight to the plugin, in one run.
async fn rates(d: &Berthd, svc: &str, plugin: &PluginProcess, n: usize) -> (f64, f64) {
    let session = berth_client::session::Session::open(&berth_client::session::SessionOptions {
        host: Some(d.addr.to_string()),
        config: Some(d.home.join(".config/berth/config.toml")),
        timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .expect("a session with berthd");
    let t = Instant::now();
    for i in 0..n {
        let name = format!("rate-{i}");
        session
            .volumes()
            .create_volume(berth_proto::v1::CreateVolumeRequest {
                service: svc.into(),
                name: name.clone(),
                size_bytes: MIB,
                ..Default::default()
            })
            .await
            .expect("create through berth");
        session
            .volumes()
            .delete_volume(berth_proto::v1::DeleteVolumeRequest {
                service: svc.into(),
                name,
                force: false,
            })
            .await
            .expect("delete through berth");
    }
    let through = n as f64 / t.elapsed().as_secs_f64();
    let mut client = plugin.client().await;
    let t = Instant::now();
    for i in 0..n {
        let v = client
            .create_volume(csi::CreateVolumeRequest {
                name: format!("direct-{i}"),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: MIB as i64,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![csi::VolumeCapability {
                    access_type: Some(csi::volume_capability::AccessType::Mount(
                        csi::volume_capability::MountVolume::default(),
                    )),
                    access_mode: Some(csi::volume_capability::AccessMode {
                        mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                    }),
                }],
                ..Default::default()
            })
            .await
            .expect("direct create")
            .into_inner();
        client
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume.expect("volume").volume_id,
                ..Default::default()
            })
            .await
            .expect("direct delete");
    }
    let direct = n as f64 / t.elapsed().as_secs_f64();
    assert!(plugin.volume_ids().await.is_empty());
    (through, direct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_rate_through_berth_and_direct() {
    const N: usize = 100;
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::test_plugin(work.path(), &[]);
    let d = berthd(work.path(), "tp", &plugin.endpoint());
    let (through, direct) = rates(&d, "tp", &plugin, N).await;
    println!(
        "create+delete pairs/s over {N} pairs, csi-test-plugin: through berthd {through:.1}, direct {direct:.1}"
    );
    let Some(binary) = hostpath() else {
        println!("skipped the hostpath figures: set BERTH_CSI_HOSTPATH=PATH");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::hostpath(&binary, work.path());
    let d = berthd(work.path(), "hostpath", &plugin.endpoint());
    let (through, direct) = rates(&d, "hostpath", &plugin, N).await;
    println!(
        "create+delete pairs/s over {N} pairs, hostpathplugin: through berthd {through:.1}, direct {direct:.1}"
    );
}

#[test]
fn a_bad_csi_service_stops_start_up_with_the_option_named() {
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("berthd.toml");
    std::fs::write(
        &config,
        "[[services]]\nname = \"tp\"\ndriver = \"csi\"\n[services.options]\nendpoint = \"tcp://127.0.0.1:1\"\n",
    )
    .expect("config");
    let out = berth_tests::process::run_bounded(
        {
            let mut cmd = Command::new(berth_tests::bin("berthd"));
            cmd.arg("--data-dir")
                .arg(work.path().join("data"))
                .arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg("127.0.0.1:0");
            cmd
        },
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoint") && err.contains("unix:///"),
        "{err}"
    );
    // `berthd check-config` knows the driver.
    std::fs::write(
        &config,
        "[[services]]\nname = \"tp\"\ndriver = \"csi\"\n[services.options]\nendpoint = \"unix:///run/x.sock\"\n",
    )
    .expect("config");
    let out = berth_tests::process::run_bounded(
        {
            let mut cmd = Command::new(berth_tests::bin("berthd"));
            cmd.arg("check-config").arg("--config").arg(&config);
            cmd
        },
        Duration::from_secs(30),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("tp (csi)"), "{said}");
}

/// Points the client config of `d` at a private mount root, instance `n1`,
/// and `[csi_plugins] SERVICE = NODE-SOCKET`.
fn node_config(d: &Berthd, mount_root: &Path, service: &str, endpoint: &str) {
    let path = d.home.join(".config/berth/config.toml");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&path).expect("client config");
    std::fs::write(
        &path,
        format!(
            "mount_root = {:?}\ninstance = \"n1\"\n{text}\n[csi_plugins]\n{service} = {endpoint:?}\n",
            s(mount_root)
        ),
    )
    .expect("write client config");
}

/// `berth volume mount` of a volume of `svc`: through the plugin's Node
/// service, data surviving unmount and mount; `published` reads whether the
/// plugin has the volume published (when the test can see it).
fn mount_round_trip(d: &Berthd, work: &Path, svc: &str, endpoint: &str) -> String {
    let mount_root = work.join("mnt");
    node_config(d, &mount_root, svc, endpoint);
    let v = d
        .berth(&[
            "volume", "create", "data", "-s", svc, "--size", "4MiB", "-o", "json",
        ])
        .json();
    let id = id_of(&v);
    let path = PathBuf::from(
        d.berth(&["volume", "mount", "data", "-s", svc])
            .success()
            .trim(),
    );
    assert!(
        berth_tests::node::is_mount_point(&path),
        "{}",
        path.display()
    );
    std::fs::write(path.join("data.txt"), b"survives").expect("write through the mount");
    let inspected = d
        .berth(&["volume", "inspect", "data", "-s", svc, "-o", "json"])
        .json();
    assert!(
        inspected.to_string().contains("\"n1\""),
        "attached: {inspected}"
    );
    d.berth(&["volume", "unmount", "data", "-s", svc]).success();
    assert!(!berth_tests::node::is_mount_point(&path));
    let inspected = d
        .berth(&["volume", "inspect", "data", "-s", svc, "-o", "json"])
        .json();
    assert!(
        !inspected.to_string().contains("\"n1\""),
        "detached: {inspected}"
    );

    let again = PathBuf::from(
        d.berth(&["volume", "mount", "data", "-s", svc])
            .success()
            .trim(),
    );
    assert_eq!(again, path);
    assert_eq!(
        std::fs::read(again.join("data.txt")).expect("read after mount"),
        b"survives"
    );
    d.berth(&["volume", "unmount", "data", "-s", svc]).success();
    assert!(!berth_tests::node::is_mount_point(&path));
    assert!(
        berth_tests::node::mounts_under(&mount_root).is_empty(),
        "nothing left mounted under {}",
        mount_root.display()
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_goes_through_the_test_plugins_node_service() {
    if !berth_tests::node::can_run(
        "csi_hosted mount",
        (!berth_tests::node::is_root()).then(|| "mounting needs root".to_owned()),
    ) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::test_plugin(work.path(), &[]);
    let d = berthd(work.path(), "tp", &plugin.endpoint());
    let id = mount_round_trip(&d, work.path(), "tp", &plugin.endpoint());
    // The data lives in the plugin's volume, not in a mount of Berth's.
    let stored = work
        .path()
        .join("plugin-root/volumes")
        .join(&id)
        .join("data.txt");
    assert_eq!(std::fs::read(stored).expect("in the plugin"), b"survives");
    // ControllerPublish was undone when the last mount went.
    let state = std::fs::read_to_string(work.path().join("plugin-root/state.json")).expect("state");
    assert!(!state.contains("\"n1\""), "unpublished: {state}");
    // A node whose config names no socket for the service says what to add.
    let path = d.home.join(".config/berth/config.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("[csi_plugins]\ntp =", "[csi_plugins]\nother ="),
    )
    .expect("write");
    let err = d.berth(&["volume", "mount", "data", "-s", "tp"]).failure();
    assert!(
        err.contains("[csi_plugins]") && err.contains("tp = "),
        "{err}"
    );
    let inspected = d
        .berth(&["volume", "inspect", "data", "-s", "tp", "-o", "json"])
        .json();
    assert!(
        !inspected.to_string().contains("\"n1\""),
        "not attached: {inspected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_goes_through_hostpaths_node_service() {
    let Some(binary) = hostpath() else {
        println!(
            "skipped: set BERTH_CSI_HOSTPATH=PATH to mount through hostpathplugin's Node service"
        );
        return;
    };
    if !berth_tests::node::can_run(
        "csi_hosted mount (hostpath)",
        (!berth_tests::node::is_root()).then(|| "mounting needs root".to_owned()),
    ) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::hostpath(&binary, work.path());
    let d = berthd(work.path(), "hostpath", &plugin.endpoint());
    mount_round_trip(&d, work.path(), "hostpath", &plugin.endpoint());
}

/// Sends `signal` (STOP, CONT) to a plugin process.
fn signal(plugin: &PluginProcess, signal: &str) {
    let pid = plugin.child.as_ref().expect("running").id();
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_killed_during_hostpaths_create_is_reconciled() {
    let Some(binary) = hostpath() else {
        println!("skipped: set BERTH_CSI_HOSTPATH=PATH to crash berthd during hostpathplugin's CreateVolume");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = PluginProcess::hostpath(&binary, work.path());
    let mut d = berthd(work.path(), "hostpath", &plugin.endpoint());
    let kept = id_of(
        &d.berth(&["volume", "create", "kept", "-s", "hostpath", "-o", "json"])
            .json(),
    );
    // The plugin is frozen, so berthd's CreateVolume waits in its socket:
    // the intent is written, the record is not. Kill berthd there, then let
    // the plugin run the create nobody will see answered.
    signal(&plugin, "STOP");
    let mut create = d.spawn_berth(&["volume", "create", "crashme", "-s", "hostpath"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        create.try_wait().expect("wait").is_none(),
        "the create waits for the frozen plugin"
    );
    d.kill9();
    let _ = create.kill();
    let _ = create.wait();
    signal(&plugin, "CONT");
    std::thread::sleep(Duration::from_millis(500));

    d.restart();
    assert!(
        d.log().contains("undoing a create interrupted by a crash"),
        "{}",
        d.log()
    );
    assert_eq!(plugin.volume_ids().await, BTreeSet::from([kept]));
    assert_eq!(
        names(
            &d.berth(&["volume", "list", "-s", "hostpath", "-o", "json"])
                .json()
        ),
        ["kept"]
    );
}
