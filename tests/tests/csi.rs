//! `berth plugin csi` against a real `berthd`, driven over its unix socket
//! by a CSI client generated from the same `proto/csi/v1/csi.proto`:
//! identity, volume and snapshot life cycles with their CSI error codes,
//! paging, Berth's authorisation, publish, and the Node service (as root).
//!
//! With `BERTH_CSI_SANITY=PATH` the reference conformance suite
//! (kubernetes-csi/csi-test's csi-sanity) runs against the plugin backed by
//! a `vfs` service and by an `image` service and must report 0 failed; with
//! `BERTH_CSI_HOSTPATH=PATH` too, the same suite runs against the reference
//! driver for comparison, and CreateVolume's p50 is measured on both. A
//! variable that is set must name an existing binary (the test fails, it
//! does not skip); unset, the test prints one line and passes.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::csi::v1 as csi;
use berth_tests::csi::{connect, create_p50, wait_line, Hostpath, Plugin, NODE};
use berth_tests::Berthd;
use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use tonic::transport::Channel;
use tonic::Code;

/// How long one csi-sanity run may take.
const SANITY_BOUND: Duration = Duration::from_secs(900);
const MIB: i64 = 1 << 20;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A controller serving `fs` (vfs) and `img` (raw images), with its roots
/// and config in a private directory.
struct Lab {
    d: Berthd,
    work: tempfile::TempDir,
}

impl Lab {
    fn start() -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let d = Berthd::start_fs_and_img(work.path(), "");
        Self { d, work }
    }

    /// Starts `berth [global] plugin csi --endpoint ... [extra]`.
    fn plugin(&self, global: &[&str], extra: &[&str]) -> Plugin {
        Plugin::start(&self.d, self.work.path(), global, extra)
    }
}

fn mount_cap(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str, service: Option<&str>, required: i64) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: (required > 0).then_some(csi::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        parameters: service
            .map(|s| HashMap::from([("service".to_owned(), s.to_owned())]))
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// `CreateVolume`, expecting a volume back (`what` names the call in a failure).
async fn created(
    c: &mut ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
    what: &str,
) -> csi::Volume {
    c.create_volume(req)
        .await
        .expect(what)
        .into_inner()
        .volume
        .expect("volume")
}

/// A content source restoring the snapshot `id`.
fn from_snapshot(id: String) -> Option<csi::VolumeContentSource> {
    Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource { snapshot_id: id },
        )),
    })
}

/// A content source cloning the volume `id`.
fn from_volume(id: String) -> Option<csi::VolumeContentSource> {
    Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource { volume_id: id },
        )),
    })
}

#[track_caller]
fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, want: Code) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected {want:?}, got a success: {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), want, "{}", status.message());
            assert!(
                !status.message().contains('\n'),
                "a one-line message: {:?}",
                status.message()
            );
            status
        }
    }
}

#[tokio::test]
async fn identity_capabilities_and_probe() {
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &["--default-size", "16MiB"]);
    let ch = plugin.channel().await;
    let mut identity = IdentityClient::new(ch.clone());
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(info.name, "berth.csi.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .expect("GetPluginCapabilities")
        .into_inner();
    use csi::plugin_capability::{service::Type as Svc, Type};
    assert!(caps.capabilities.iter().any(|c| matches!(
        &c.r#type,
        Some(Type::Service(s)) if s.r#type == Svc::ControllerService as i32
    )));
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .expect("Probe")
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    let mut controller = ControllerClient::new(ch.clone());
    let caps = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("ControllerGetCapabilities")
        .into_inner();
    use csi::controller_service_capability::{rpc::Type as Rpc, Type as CapType};
    let have: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| c.r#type.as_ref().map(|CapType::Rpc(r)| r.r#type))
        .collect();
    for want in [
        Rpc::CreateDeleteVolume,
        Rpc::PublishUnpublishVolume,
        Rpc::ListVolumes,
        Rpc::CreateDeleteSnapshot,
        Rpc::ListSnapshots,
        Rpc::CloneVolume,
    ] {
        assert!(have.contains(&(want as i32)), "{want:?} offered");
    }
    assert!(
        !have.contains(&(Rpc::ExpandVolume as i32)),
        "expand is not offered"
    );
    code(
        controller
            .get_capacity(csi::GetCapacityRequest::default())
            .await,
        Code::Unimplemented,
    );

    let mut node = NodeClient::new(ch);
    let info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo")
        .into_inner();
    assert_eq!(info.node_id, NODE);

    // A configured name, and one the CSI rule refuses.
    let named = lab.plugin(&[], &["--driver-name", "fast.berth.example"]);
    let info = IdentityClient::new(named.channel().await)
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(info.name, "fast.berth.example");
    let bad = lab.d.berth(&[
        "plugin",
        "csi",
        "--endpoint",
        &format!("unix://{}", s(&lab.work.path().join("bad.sock"))),
        "--driver-name",
        "not a name",
    ]);
    let err = bad.failure();
    assert!(err.contains("driver name"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let bad = lab
        .d
        .berth(&["plugin", "csi", "--endpoint", "tcp://127.0.0.1:1"]);
    let err = bad.failure();
    assert!(err.contains("unix socket"), "{err}");
}

#[tokio::test]
async fn the_socket_is_private_and_a_stale_one_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::start();
    let mut plugin = lab.plugin(&[], &[]);
    let mode = std::fs::metadata(&plugin.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
    // A second plugin on a live socket is refused, and the first one keeps it.
    let again = lab
        .d
        .berth(&["plugin", "csi", "--endpoint", &plugin.endpoint()]);
    assert!(
        again.failure().contains("another plugin"),
        "{}",
        again.stderr()
    );
    // SIGTERM removes the socket; a stale socket file is replaced.
    assert!(plugin.stop().is_some_and(|s| s.success()), "orderly exit");
    assert!(!plugin.socket.exists(), "socket removed on exit");
    let stale = std::os::unix::net::UnixListener::bind(&plugin.socket).expect("bind");
    drop(stale);
    let socket = plugin.socket.clone();
    // The endpoint from CSI_ENDPOINT, as the spec asks.
    let mut cmd = lab.d.berth_cmd(&["plugin", "csi"]);
    cmd.env("CSI_ENDPOINT", format!("unix://{}", s(&socket)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let up = wait_line(&mut child, "berth plugin csi listening on", log.clone());
    let _second = Plugin {
        child: Some(child),
        socket,
        log,
    };
    assert!(up, "the plugin replaces a stale socket");
    // Not a socket: refused, untouched.
    let file = lab.work.path().join("not-a-socket");
    std::fs::write(&file, "keep").expect("write");
    let err = lab
        .d
        .berth(&[
            "plugin",
            "csi",
            "--endpoint",
            &format!("unix://{}", s(&file)),
        ])
        .failure();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep");
}

#[tokio::test]
async fn probe_follows_the_controller() {
    let mut lab = Lab::start();
    let plugin = lab.plugin(&[], &[]);
    let identity = IdentityClient::new(plugin.channel().await);
    let ready = |mut identity: IdentityClient<Channel>| async move {
        identity
            .probe(csi::ProbeRequest {})
            .await
            .expect("probe")
            .into_inner()
            .ready
    };
    assert_eq!(ready(identity.clone()).await, Some(true));
    lab.d.kill9();
    assert_eq!(
        ready(identity.clone()).await,
        Some(false),
        "not ready while berthd is down"
    );
    lab.d.restart();
    assert_eq!(
        ready(identity.clone()).await,
        Some(true),
        "ready again once berthd answers (the plugin reconnects)"
    );
    // And the Controller works over the new connection.
    ControllerClient::new(plugin.channel().await)
        .create_volume(create_req("after-restart", Some("fs"), MIB))
        .await
        .expect("CreateVolume after berthd restarted");
}

#[tokio::test]
async fn create_and_delete_are_idempotent_with_csi_codes() {
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &["--default-size", "16MiB"]);
    let mut c = ControllerClient::new(plugin.channel().await);

    let first = created(&mut c, create_req("pvc-1", Some("fs"), 4 * MIB), "create").await;
    assert_eq!(first.volume_id, "fs/pvc-1");
    assert_eq!(first.capacity_bytes, 4 * MIB);
    assert_eq!(
        first.volume_context.get("service").map(String::as_str),
        Some("fs")
    );
    let again = created(
        &mut c,
        create_req("pvc-1", Some("fs"), 4 * MIB),
        "create again",
    )
    .await;
    assert_eq!(again, first, "the same answer");
    // A range the existing volume fits is compatible; one it does not fit is not.
    let mut ranged = create_req("pvc-1", Some("fs"), 2 * MIB);
    ranged.capacity_range = Some(csi::CapacityRange {
        required_bytes: 2 * MIB,
        limit_bytes: 8 * MIB,
    });
    let fits = c.create_volume(ranged).await.expect("compatible range");
    assert_eq!(
        fits.into_inner().volume.expect("volume").volume_id,
        "fs/pvc-1"
    );
    code(
        c.create_volume(create_req("pvc-1", Some("fs"), 8 * MIB))
            .await,
        Code::AlreadyExists,
    );
    // Missing fields and bad ranges.
    code(
        c.create_volume(create_req("", Some("fs"), MIB)).await,
        Code::InvalidArgument,
    );
    let mut no_caps = create_req("pvc-2", Some("fs"), MIB);
    no_caps.volume_capabilities.clear();
    code(c.create_volume(no_caps).await, Code::InvalidArgument);
    let mut inverted = create_req("pvc-2", Some("fs"), 4 * MIB);
    inverted.capacity_range = Some(csi::CapacityRange {
        required_bytes: 4 * MIB,
        limit_bytes: MIB,
    });
    code(c.create_volume(inverted).await, Code::InvalidArgument);
    let mut negative = create_req("pvc-2", Some("fs"), MIB);
    negative.capacity_range = Some(csi::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    code(c.create_volume(negative).await, Code::InvalidArgument);
    // Several services and no `service` parameter: the plugin will not guess.
    let status = code(
        c.create_volume(create_req("pvc-2", None, MIB)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("service"), "{}", status.message());
    // Block access needs an image service.
    let mut block = create_req("pvc-2", Some("fs"), MIB);
    block.volume_capabilities = vec![block_cap()];
    code(c.create_volume(block).await, Code::InvalidArgument);
    // A size no image file can have: OUT_OF_RANGE.
    code(
        c.create_volume(create_req("huge", Some("img"), i64::MAX))
            .await,
        Code::OutOfRange,
    );
    // No capacity range: the default size; other parameters are driver options.
    let mut with_opts = create_req("pvc-opts", Some("fs"), 0);
    with_opts.parameters.insert("mode".into(), "0700".into());
    with_opts
        .parameters
        .insert("csi.storage.k8s.io/pv/name".into(), "pv-x".into());
    let v = created(&mut c, with_opts, "create with a driver option").await;
    assert_eq!(v.capacity_bytes, 16 * MIB);
    let shown = lab
        .d
        .berth(&[
            "volume",
            "inspect",
            "pvc-opts",
            "--service",
            "fs",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(shown["options"]["mode"], "0700", "{shown}");
    assert!(shown["options"].get("csi.storage.k8s.io/pv/name").is_none());
    // A CSI name Berth would refuse maps to a stable Berth name.
    let odd = created(&mut c, create_req("my vol/1", Some("fs"), MIB), "odd name").await;
    let odd_again = created(
        &mut c,
        create_req("my vol/1", Some("fs"), MIB),
        "odd name again",
    )
    .await;
    assert_eq!(odd.volume_id, odd_again.volume_id);
    assert!(odd.volume_id.starts_with("fs/csi-"), "{}", odd.volume_id);

    // Delete: twice is fine, unknown ids are fine, a missing id is not.
    for id in ["fs/pvc-1", "fs/pvc-1", "fake-vol-id", "fs/never-was"] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }
    code(
        c.delete_volume(csi::DeleteVolumeRequest::default()).await,
        Code::InvalidArgument,
    );
    let listed = lab.d.berth(&["volume", "list", "-o", "json"]).json();
    assert!(
        !listed.to_string().contains("\"pvc-1\""),
        "pvc-1 is gone: {listed}"
    );

    // ValidateVolumeCapabilities.
    let id = odd.volume_id.clone();
    let ok = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty(), "{no:?}");
    code(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "fs/nope".into(),
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    code(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn concurrent_creates_of_one_name_make_one_volume() {
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &[]);
    let ch = plugin.channel().await;
    for round in 0..5 {
        let name = format!("race-{round}");
        let calls = (0..4).map(|_| {
            let mut c = ControllerClient::new(ch.clone());
            let req = create_req(&name, Some("fs"), MIB);
            tokio::spawn(async move { c.create_volume(req).await })
        });
        let mut ok = 0;
        for call in calls.collect::<Vec<_>>() {
            match call.await.expect("task") {
                Ok(v) => {
                    ok += 1;
                    assert_eq!(
                        v.into_inner().volume.expect("volume").volume_id,
                        format!("fs/{name}")
                    );
                }
                // The spec's answer while another call on the volume runs.
                Err(status) => assert_eq!(status.code(), Code::Aborted, "{}", status.message()),
            }
        }
        assert!(ok >= 1, "one of the calls made it");
    }
    let listed = lab
        .d
        .berth(&["volume", "list", "--service", "fs", "-o", "json"])
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(5), "{listed}");
}

#[tokio::test]
async fn authorization_stays_berths() {
    let lab = Lab::start();
    let token = lab
        .d
        .berth(&["token", "issue", "csi-fs", "--services", "fs"])
        .success()
        .trim()
        .to_owned();
    let scoped = lab.plugin(&["--token", &token], &[]);
    let mut c = ControllerClient::new(scoped.channel().await);
    // No parameter: the only service the credential sees.
    let v = created(
        &mut c,
        create_req("mine", None, MIB),
        "create on the only visible service",
    )
    .await;
    assert_eq!(v.volume_id, "fs/mine");
    // Another service: PERMISSION_DENIED from berthd, never a fallback.
    code(
        c.create_volume(create_req("theirs", Some("img"), MIB))
            .await,
        Code::PermissionDenied,
    );
    let admin = lab.plugin(&[], &[]);
    let mut a = ControllerClient::new(admin.channel().await);
    a.create_volume(create_req("theirs", Some("img"), MIB))
        .await
        .expect("admin creates on img");
    code(
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: "img/theirs".into(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "img/theirs".into(),
            node_id: NODE.into(),
            volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    code(
        c.create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: "img/theirs".into(),
            name: "snap".into(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    // Listings show only what the credential may see.
    let listed = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = listed
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(ids, vec!["fs/mine".to_owned()]);
    // The volume on img is still there.
    let img = lab
        .d
        .berth(&["volume", "list", "--service", "img", "-o", "json"])
        .json();
    assert_eq!(img.as_array().map(Vec::len), Some(1), "{img}");
}

#[tokio::test]
async fn list_volumes_pages_and_refuses_bad_tokens() {
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &[]);
    let mut c = ControllerClient::new(plugin.channel().await);
    let mut want = BTreeSet::new();
    for i in 0..7 {
        let service = if i % 2 == 0 { "fs" } else { "img" };
        let v = created(
            &mut c,
            create_req(&format!("v{i}"), Some(service), MIB),
            "create",
        )
        .await;
        want.insert(v.volume_id);
    }
    let all = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .expect("list all")
        .into_inner();
    assert_eq!(all.entries.len(), 7);
    assert!(all.next_token.is_empty());
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 3,
                starting_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.entries.len() <= 3);
        pages += 1;
        for e in page.entries {
            assert!(
                seen.insert(e.volume.expect("volume").volume_id),
                "no repeats"
            );
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
        assert!(pages < 10, "paging ends");
    }
    assert_eq!(seen, want);
    assert_eq!(pages, 3);
    code(
        c.list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: "invalid-token".into(),
        })
        .await,
        Code::Aborted,
    );
    code(
        c.list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn snapshots_restores_and_clones() {
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &[]);
    let mut c = ControllerClient::new(plugin.channel().await);
    for service in ["fs", "img"] {
        let src = created(&mut c, create_req("src", Some(service), 4 * MIB), "create").await;
        let snap_req = csi::CreateSnapshotRequest {
            source_volume_id: src.volume_id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        };
        let snap = c
            .create_snapshot(snap_req.clone())
            .await
            .expect("snapshot")
            .into_inner()
            .snapshot
            .expect("snapshot");
        assert_eq!(snap.snapshot_id, format!("{service}/snap-1"));
        assert_eq!(snap.source_volume_id, src.volume_id);
        assert!(snap.ready_to_use && snap.creation_time.is_some());
        assert_eq!(snap.size_bytes, 4 * MIB);
        let again = c
            .create_snapshot(snap_req)
            .await
            .expect("snapshot again")
            .into_inner()
            .snapshot
            .expect("snapshot");
        assert_eq!(again.snapshot_id, snap.snapshot_id);
        let other = created(
            &mut c,
            create_req("other", Some(service), 4 * MIB),
            "create",
        )
        .await;
        code(
            c.create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: other.volume_id.clone(),
                name: "snap-1".into(),
                ..Default::default()
            })
            .await,
            Code::AlreadyExists,
        );
        code(
            c.create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: src.volume_id.clone(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
        // Restore and clone, with their NOT_FOUND and range checks.
        let mut restore = create_req("restored", Some(service), 4 * MIB);
        restore.volume_content_source = from_snapshot(snap.snapshot_id.clone());
        let restored = created(&mut c, restore.clone(), "restore").await;
        assert_eq!(restored.content_source, restore.volume_content_source);
        c.create_volume(restore.clone())
            .await
            .expect("restore again");
        let mut missing = restore.clone();
        missing.name = "restored-2".into();
        missing.volume_content_source = from_snapshot(format!("{service}/no-such-snap"));
        code(c.create_volume(missing).await, Code::NotFound);
        let mut small = restore.clone();
        small.name = "restored-3".into();
        small.capacity_range = Some(csi::CapacityRange {
            required_bytes: MIB,
            limit_bytes: 2 * MIB,
        });
        code(c.create_volume(small).await, Code::OutOfRange);
        let mut clone = create_req("clone", Some(service), 4 * MIB);
        clone.volume_content_source = from_volume(src.volume_id.clone());
        let cloned = created(&mut c, clone.clone(), "clone").await;
        assert_eq!(cloned.content_source, clone.volume_content_source);
        c.create_volume(clone).await.expect("clone again");
        let mut gone = create_req("clone-2", Some(service), 4 * MIB);
        gone.volume_content_source = from_volume(format!("{service}/no-such-volume"));
        code(c.create_volume(gone).await, Code::NotFound);
        // A volume with snapshots cannot go: FAILED_PRECONDITION.
        code(
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: src.volume_id.clone(),
                ..Default::default()
            })
            .await,
            Code::FailedPrecondition,
        );
    }
    // Listing: by id, by source volume, paged, and bad tokens.
    let list = |req: csi::ListSnapshotsRequest| {
        let mut c = c.clone();
        async move { c.list_snapshots(req).await }
    };
    let all = list(csi::ListSnapshotsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.entries.len(), 2);
    let one = list(csi::ListSnapshotsRequest {
        snapshot_id: "img/snap-1".into(),
        ..Default::default()
    })
    .await
    .expect("by id")
    .into_inner();
    assert_eq!(one.entries.len(), 1);
    for nothing in ["none-exist-id", "fs/none"] {
        let empty = list(csi::ListSnapshotsRequest {
            snapshot_id: nothing.into(),
            ..Default::default()
        })
        .await
        .expect("unknown id")
        .into_inner();
        assert!(empty.entries.is_empty());
    }
    let by_vol = list(csi::ListSnapshotsRequest {
        source_volume_id: "fs/src".into(),
        ..Default::default()
    })
    .await
    .expect("by volume")
    .into_inner();
    assert_eq!(by_vol.entries.len(), 1);
    let first = list(csi::ListSnapshotsRequest {
        max_entries: 1,
        ..Default::default()
    })
    .await
    .expect("page")
    .into_inner();
    assert_eq!(first.entries.len(), 1);
    assert!(!first.next_token.is_empty());
    let rest = list(csi::ListSnapshotsRequest {
        starting_token: first.next_token,
        ..Default::default()
    })
    .await
    .expect("rest")
    .into_inner();
    assert_eq!(rest.entries.len(), 1);
    assert_ne!(rest.entries[0], first.entries[0]);
    code(
        list(csi::ListSnapshotsRequest {
            starting_token: "garbage".into(),
            ..Default::default()
        })
        .await,
        Code::Aborted,
    );
    // Delete twice, and unknown ids: success; no id: INVALID_ARGUMENT.
    for id in ["fs/snap-1", "fs/snap-1", "reallyfakesnapshotid"] {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("delete snapshot {id}: {e}"));
    }
    code(
        c.delete_snapshot(csi::DeleteSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn publish_and_unpublish_attach_to_the_node() {
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &["--known-node", "n2"]);
    let mut c = ControllerClient::new(plugin.channel().await);
    let v = created(&mut c, create_req("pub", Some("fs"), MIB), "create").await;
    let req = |node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: node.into(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    let first = c
        .controller_publish_volume(req(NODE))
        .await
        .expect("publish")
        .into_inner();
    let device = first
        .publish_context
        .get("device")
        .cloned()
        .expect("device");
    assert!(Path::new(&device).is_dir(), "the vfs directory: {device}");
    let again = c
        .controller_publish_volume(req(NODE))
        .await
        .expect("publish again")
        .into_inner();
    assert_eq!(again, first);
    let shown = lab
        .d
        .berth(&["volume", "inspect", "pub", "--service", "fs", "-o", "json"])
        .json();
    assert_eq!(shown["attachments"][0]["instance"], NODE, "{shown}");
    let listed = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.entries[0]
            .status
            .as_ref()
            .map(|s| s.published_node_ids.clone()),
        Some(vec![NODE.to_owned()])
    );
    // Single attach: another known node is FAILED_PRECONDITION; an unknown one NOT_FOUND.
    code(
        c.controller_publish_volume(req("n2")).await,
        Code::FailedPrecondition,
    );
    code(c.controller_publish_volume(req("n9")).await, Code::NotFound);
    code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "fs/none".into(),
            ..req(NODE)
        })
        .await,
        Code::NotFound,
    );
    code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_capability: None,
            ..req(NODE)
        })
        .await,
        Code::InvalidArgument,
    );
    code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            node_id: String::new(),
            ..req(NODE)
        })
        .await,
        Code::InvalidArgument,
    );
    // In use: delete refused.
    code(
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    for _ in 0..2 {
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: NODE.into(),
            ..Default::default()
        })
        .await
        .expect("unpublish (twice)");
    }
    c.controller_publish_volume(req("n2"))
        .await
        .expect("now n2 may have it");
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: String::new(),
        ..Default::default()
    })
    .await
    .expect("unpublish from every node");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .expect("delete");
}

#[tokio::test]
async fn node_stage_and_publish_mount_the_volume() {
    if !is_root() {
        println!("skipped: the Node service mounts, which needs root");
        return;
    }
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &[]);
    let ch = plugin.channel().await;
    let (mut c, mut n) = (ControllerClient::new(ch.clone()), NodeClient::new(ch));
    let caps: Vec<_> = [
        ("fs", mount_cap(Mode::SingleNodeWriter)),
        ("img", mount_cap(Mode::SingleNodeWriter)),
        ("img", block_cap()),
    ]
    .into_iter()
    .collect();
    for (i, (service, cap)) in caps.into_iter().enumerate() {
        let mut req = create_req(&format!("node-{i}"), Some(service), 32 * MIB);
        req.volume_capabilities = vec![cap.clone()];
        let v = created(&mut c, req, "create").await;
        let published = c
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                node_id: NODE.into(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
            .expect("controller publish")
            .into_inner();
        let staging = lab.work.path().join(format!("staging-{i}"));
        std::fs::create_dir_all(&staging).expect("staging dir");
        let target = lab.work.path().join(format!("pods/{i}/target"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("target parent");
        let stage = csi::NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: published.publish_context.clone(),
            staging_target_path: s(&staging).into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        };
        let publish = csi::NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: published.publish_context.clone(),
            staging_target_path: s(&staging).into(),
            target_path: s(&target).into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        };
        for _ in 0..2 {
            n.node_stage_volume(stage.clone())
                .await
                .expect("stage (twice)");
            n.node_publish_volume(publish.clone())
                .await
                .expect("publish (twice)");
        }
        if matches!(cap.access_type, Some(AccessType::Mount(_))) {
            // The same target read-only: incompatible with what is there.
            code(
                n.node_publish_volume(csi::NodePublishVolumeRequest {
                    readonly: true,
                    ..publish.clone()
                })
                .await,
                Code::AlreadyExists,
            );
            std::fs::write(target.join("hello.txt"), "from the pod")
                .expect("write through the mount");
            let stats = n
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: v.volume_id.clone(),
                    volume_path: s(&target).into(),
                    ..Default::default()
                })
                .await
                .expect("stats")
                .into_inner();
            assert!(stats.usage.iter().any(|u| u.total > 0), "{stats:?}");
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = std::fs::metadata(&target).expect("target").file_type();
            assert!(
                kind.is_block_device(),
                "block access publishes the device: {kind:?}"
            );
        }
        if service == "fs" {
            let device = published.publish_context.get("device").expect("device");
            assert_eq!(
                std::fs::read_to_string(Path::new(device).join("hello.txt"))
                    .expect("in the volume"),
                "from the pod"
            );
        }
        code(
            n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: v.volume_id.clone(),
                volume_path: "some/path".into(),
                ..Default::default()
            })
            .await,
            Code::NotFound,
        );
        let unpublish = csi::NodeUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            target_path: s(&target).into(),
        };
        let unstage = csi::NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: s(&staging).into(),
        };
        for _ in 0..2 {
            n.node_unpublish_volume(unpublish.clone())
                .await
                .expect("unpublish (twice)");
            assert!(!target.exists(), "the target path is removed");
            n.node_unstage_volume(unstage.clone())
                .await
                .expect("unstage (twice)");
        }
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: NODE.into(),
            ..Default::default()
        })
        .await
        .expect("controller unpublish");
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    }
    // Missing fields.
    code(
        n.node_publish_volume(csi::NodePublishVolumeRequest::default())
            .await,
        Code::InvalidArgument,
    );
    code(
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "fs/x".into(),
            target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    code(
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "fake-vol-id".into(),
            volume_path: "some/path".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
}

// ---- the reference suite ----

/// A tool named by an environment variable: `None` (one printed line) when
/// unset; a set variable must name an existing file.
fn tool(var: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var)?;
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{var}={} does not name a file (unset it to skip this test)",
        path.display()
    );
    Some(path)
}

/// One finished (or cut off) csi-sanity run.
struct SanityRun {
    /// `Ran N of M Specs ... -- P Passed | F Failed ...`.
    line: String,
    /// It exited within the bound, successfully, with no failed spec.
    passed: bool,
    /// It exited within the bound.
    finished: bool,
    stdout: String,
    stderr: String,
}

impl SanityRun {
    /// The one failure is csi-sanity's own connect race: before csi-test
    /// 128ada30 (May 2026), `utils.Connect` could wait for a state change
    /// from READY after the connection had become ready, and time out after
    /// a minute without any call reaching the driver. The tool in
    /// `../shared/tools` predates the fix.
    fn only_the_connect_race(&self) -> bool {
        self.finished
            && self.line.contains(" 1 Failed")
            && self.stdout.contains("connecting to CSI driver")
            && self.stdout.contains("Connection timed out")
    }
}

/// Runs csi-sanity against `endpoint` and returns its summary line; runs it
/// once more when the only failure was csi-sanity's connect race (said in
/// one line).
fn sanity(sanity: &Path, endpoint: &str, work: &Path, extra: &[&str]) -> String {
    let mut run = sanity_once(sanity, endpoint, work, extra);
    if run.only_the_connect_race() {
        println!(
            "csi-sanity timed out in its own connect loop (a race fixed upstream in csi-test 128ada30); running it again: {}",
            run.line
        );
        run = sanity_once(sanity, endpoint, work, extra);
    }
    assert!(
        run.finished,
        "csi-sanity did not finish within {SANITY_BOUND:?}:\n{}",
        run.stdout
    );
    assert!(
        run.passed,
        "csi-sanity failed against {endpoint}: {}\n{}\n{}",
        run.line, run.stdout, run.stderr
    );
    run.line
}

fn sanity_once(sanity: &Path, endpoint: &str, work: &Path, extra: &[&str]) -> SanityRun {
    let mut cmd = Command::new(sanity);
    cmd.arg("--csi.endpoint")
        .arg(endpoint)
        .arg("--csi.mountdir")
        .arg(work.join("mnt"))
        .arg("--csi.stagingdir")
        .arg(work.join("stg"))
        .arg("--ginkgo.no-color")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !is_root() {
        cmd.arg("--ginkgo.skip").arg("Node Service");
    }
    let mut child = cmd.spawn().expect("run csi-sanity");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let deadline = Instant::now() + SANITY_BOUND;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader.join().unwrap_or_default();
    let errors = err_reader.join().unwrap_or_default();
    let ran = text
        .lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or("")
        .to_owned();
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("Passed") && l.contains("Failed"))
        .unwrap_or("")
        .to_owned();
    let line = format!("{ran} -- {summary}");
    SanityRun {
        passed: summary.contains(" 0 Failed") && status.is_some_and(|st| st.success()),
        finished: status.is_some(),
        line,
        stdout: text,
        stderr: errors,
    }
}

fn write_params(dir: &Path, service: &str) -> PathBuf {
    let path = dir.join(format!("params-{service}.yaml"));
    std::fs::write(&path, format!("service: {service}\n")).expect("params");
    path
}

#[test]
fn csi_sanity_passes_on_vfs_and_image_services() {
    let Some(binary) = tool("BERTH_CSI_SANITY") else {
        println!("skipped: set BERTH_CSI_SANITY=PATH to run csi-sanity against berth plugin csi");
        return;
    };
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &["--default-size", "64MiB"]);
    for (service, size) in [("fs", "67108864"), ("img", "67108864")] {
        let work = tempfile::tempdir().expect("tempdir");
        let params = write_params(work.path(), service);
        let line = sanity(
            &binary,
            &plugin.endpoint(),
            work.path(),
            &[
                "--csi.testvolumeparameters",
                s(&params),
                "--csi.testvolumesize",
                size,
            ],
        );
        println!("csi-sanity, berth plugin csi on a {service} service: {line}");
    }
    assert!(
        !plugin.log().contains("Internal"),
        "no internal errors:\n{}",
        plugin.log()
    );
    if let Some(hostpath) = tool("BERTH_CSI_HOSTPATH") {
        let work = tempfile::tempdir().expect("tempdir");
        let (_driver, endpoint) = Hostpath::start(&hostpath, work.path());
        let line = sanity(&binary, &endpoint, work.path(), &[]);
        println!("csi-sanity, hostpathplugin (reference): {line}");
    }
}

#[tokio::test]
async fn create_volume_p50_against_hostpath() {
    let Some(hostpath) = tool("BERTH_CSI_HOSTPATH") else {
        println!("skipped: set BERTH_CSI_HOSTPATH=PATH to time CreateVolume against the reference driver");
        return;
    };
    let lab = Lab::start();
    let plugin = lab.plugin(&[], &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let (_driver, endpoint) = Hostpath::start(&hostpath, work.path());
    let hp_socket = PathBuf::from(endpoint.trim_start_matches("unix://"));
    const N: usize = 101;
    let fs = HashMap::from([("service".to_owned(), "fs".to_owned())]);
    let img = HashMap::from([("service".to_owned(), "img".to_owned())]);
    let berth_fs = create_p50(plugin.channel().await, fs, N).await;
    let berth_img = create_p50(plugin.channel().await, img, N).await;
    let reference = create_p50(connect(&hp_socket).await, HashMap::new(), N).await;
    // berthd's own CreateVolume (TLS, durable before the reply), without
    // the plugin: what the plugin adds is the difference.
    let session = berth_client::session::Session::open(&berth_client::session::SessionOptions {
        host: Some(lab.d.addr.to_string()),
        config: Some(lab.d.home.join(".config/berth/config.toml")),
        timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .expect("a session with berthd");
    let mut direct = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        session
            .volumes()
            .create_volume(berth_proto::v1::CreateVolumeRequest {
                service: "fs".into(),
                name: format!("direct-{i}"),
                size_bytes: MIB as u64,
                ..Default::default()
            })
            .await
            .expect("direct create");
        direct.push(t.elapsed());
    }
    direct.sort();
    println!(
        "CreateVolume p50 over {N} calls: berth plugin csi (vfs) {:.2} ms, (image) {:.2} ms; \
         berthd directly (vfs) {:.2} ms; hostpathplugin {:.2} ms",
        berth_fs.as_secs_f64() * 1e3,
        berth_img.as_secs_f64() * 1e3,
        direct[N / 2].as_secs_f64() * 1e3,
        reference.as_secs_f64() * 1e3
    );
}

#[test]
fn only_csi_sanitys_connect_race_is_run_again() {
    // What the race printed in a full run (2026-12-03), trimmed.
    let raced = "Will run 91 of 92 specs\n\
        • [FAILED] [60.058 seconds]\n\
        GroupController Service [BeforeEach] CreateVolumeGroupSnapshot should fail when no name is provided\n\
        STEP: connecting to CSI driver @ 12/03/26 19:58:54.016\n\
        [FAILED] Unexpected error:\n\
        Connection timed out\n";
    let run = |line: &str, stdout: &str, finished: bool| SanityRun {
        line: line.to_owned(),
        passed: false,
        finished,
        stdout: stdout.to_owned(),
        stderr: String::new(),
    };
    let one = "Ran 68 of 92 Specs -- FAIL! -- 67 Passed | 1 Failed | 1 Pending | 23 Skipped";
    let two = "Ran 68 of 92 Specs -- FAIL! -- 66 Passed | 2 Failed | 1 Pending | 23 Skipped";
    assert!(run(one, raced, true).only_the_connect_race());
    // Another failure beside it, a failure of Berth's, or a run cut off:
    // no second chance.
    assert!(!run(two, raced, true).only_the_connect_race());
    assert!(!run(
        one,
        "[FAILED] CreateVolume should fail when no name is provided\n",
        true
    )
    .only_the_connect_race());
    assert!(!run(one, raced, false).only_the_connect_race());
}
