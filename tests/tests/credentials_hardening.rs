//! Credentials that must stop working, answers that must not leak, and
//! names that must not deceive, through real `berthd` and `berth` processes
//! and a real gRPC/TLS client:
//!
//! * a caller not allowed a service gets the same status and message
//!   whether the service exists or not, on every RPC that names one.
//!
//! Every refusal is checked to change nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_client::connect::{self, ClientIdentity, ServerTrust};
use berth_client::pinning::PinSource;
use berth_proto::v1 as pb;
use berth_tests::{bin, entries, Berthd, Run};
use tonic::transport::Channel;
use tonic::Code;

// ---- helpers ----

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every path under `root`, relative, recursively (hidden ones included).
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
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

/// A controller serving `fast` and `bulk` (vfs), each section taking the
/// extra TOML lines given.
struct Ctl {
    // Dropped first: the controller stops before its roots go away.
    d: Berthd,
    fast: PathBuf,
    bulk: PathBuf,
    _work: tempfile::TempDir,
}

/// What a refusal must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct State {
    volumes: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    tokens: Vec<serde_json::Value>,
    certs: Vec<serde_json::Value>,
    fast: BTreeSet<String>,
    bulk: BTreeSet<String>,
}

fn config_text(work: &Path, fast_extra: &str, bulk_extra: &str) -> String {
    format!(
        "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n{fast_extra}\n[services.options]\nroot = {:?}\n\n\
         [[services]]\nname = \"bulk\"\ndriver = \"vfs\"\n{bulk_extra}\n[services.options]\nroot = {:?}\n",
        s(&work.join("fast-root")),
        s(&work.join("bulk-root")),
    )
}

fn two_services(fast_extra: &str, bulk_extra: &str, args: &[&str]) -> Ctl {
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("berthd.toml");
    std::fs::write(&config, config_text(work.path(), fast_extra, bulk_extra)).expect("config");
    let mut all = vec!["--config", s(&config)];
    all.extend_from_slice(args);
    let d = Berthd::start_with(&all);
    Ctl {
        d,
        fast: work.path().join("fast-root"),
        bulk: work.path().join("bulk-root"),
        _work: work,
    }
}

fn names(list: &serde_json::Value, fields: &[&str]) -> BTreeSet<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| {
            fields
                .iter()
                .map(|f| v[*f].as_str().expect("field").to_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

impl Ctl {
    fn state(&self) -> State {
        let d = &self.d;
        State {
            volumes: names(
                &d.berth(&["volume", "list", "-o", "json"]).json(),
                &["service", "name"],
            ),
            snapshots: names(
                &d.berth(&["snapshot", "list", "-o", "json"]).json(),
                &["service", "name"],
            ),
            tokens: list_of(d, "token"),
            certs: list_of(d, "cert"),
            fast: tree(&self.fast),
            bulk: tree(&self.bulk),
        }
    }
}

/// `berth token list` or `berth cert list` as JSON records (as admin).
fn list_of(d: &Berthd, what: &str) -> Vec<serde_json::Value> {
    d.berth(&[what, "list", "-o", "json"])
        .json()
        .as_array()
        .expect("array")
        .clone()
}

/// Asserts `run` failed with one line starting with `prefix`; returns it.
#[track_caller]
fn refused(run: &Run, prefix: &str) -> String {
    let err = run.failure();
    assert!(
        err.starts_with(prefix),
        "expected `{prefix}...`, got: {err}"
    );
    assert_eq!(err.lines().count(), 1, "errors are one line: {err}");
    err
}

fn issue(d: &Berthd, args: &[&str]) -> String {
    let mut all = vec!["token", "issue"];
    all.extend_from_slice(args);
    d.berth(&all).success().trim().to_owned()
}

fn admin_token(d: &Berthd) -> String {
    std::fs::read_to_string(d.data_dir.join("auth/admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned()
}

fn pinned(d: &Berthd) -> ServerTrust {
    let fp = Command::new(bin("berthd"))
        .arg("fingerprint")
        .arg("--data-dir")
        .arg(&d.data_dir)
        .output()
        .expect("berthd fingerprint");
    ServerTrust::Pinned {
        fingerprint: String::from_utf8_lossy(&fp.stdout)
            .trim()
            .parse()
            .expect("fingerprint"),
        source: PinSource::Flag,
    }
}

/// One TLS connection to `d`, optionally with a client certificate.
async fn channel(d: &Berthd, identity: Option<ClientIdentity>) -> Channel {
    connect::connect(
        &d.addr.to_string(),
        &pinned(d),
        identity,
        Duration::from_secs(5),
    )
    .await
    .expect("connect to berthd")
}

/// `message` with `authorization: Bearer <token>`.
fn with<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

// ---- 2. authorization before existence ----

/// (code, message with the service name replaced by `S`) of every RPC that
/// names a service, called by `token` on `service`.
async fn answers(channel: &Channel, token: &str, service: &str) -> Vec<(String, Code, String)> {
    let mut v = pb::volumes_client::VolumesClient::new(channel.clone());
    let mut sn = pb::snapshots_client::SnapshotsClient::new(channel.clone());
    let svc = || service.to_owned();
    let mut out = Vec::new();
    let mut push = |rpc: &str, r: Result<(), tonic::Status>| {
        let status = r.expect_err(rpc);
        out.push((
            rpc.to_owned(),
            status.code(),
            status.message().replace(service, "S"),
        ));
    };
    macro_rules! call {
        ($name:literal, $e:expr) => {
            push($name, $e.await.map(|_| ()))
        };
    }
    call!(
        "ListVolumes",
        v.list_volumes(with(
            token,
            pb::ListVolumesRequest {
                service: svc(),
                ..Default::default()
            }
        ))
    );
    call!(
        "GetVolume",
        v.get_volume(with(
            token,
            pb::GetVolumeRequest {
                service: svc(),
                name: "v".into()
            }
        ))
    );
    call!(
        "CreateVolume",
        v.create_volume(with(
            token,
            pb::CreateVolumeRequest {
                service: svc(),
                name: "new".into(),
                ..Default::default()
            }
        ))
    );
    call!(
        "DeleteVolume",
        v.delete_volume(with(
            token,
            pb::DeleteVolumeRequest {
                service: svc(),
                name: "v".into(),
                ..Default::default()
            }
        ))
    );
    call!(
        "AttachVolume",
        v.attach_volume(with(
            token,
            pb::AttachVolumeRequest {
                service: svc(),
                name: "v".into(),
                instance: "i".into()
            }
        ))
    );
    call!(
        "DetachVolume",
        v.detach_volume(with(
            token,
            pb::DetachVolumeRequest {
                service: svc(),
                name: "v".into(),
                instance: "i".into(),
                ..Default::default()
            }
        ))
    );
    call!(
        "CopyVolume",
        v.copy_volume(with(
            token,
            pb::CopyVolumeRequest {
                service: svc(),
                source: "v".into(),
                name: "w".into()
            }
        ))
    );
    call!(
        "CreateSnapshot",
        sn.create_snapshot(with(
            token,
            pb::CreateSnapshotRequest {
                service: svc(),
                volume: "v".into(),
                name: "t".into()
            }
        ))
    );
    call!(
        "ListSnapshots",
        sn.list_snapshots(with(
            token,
            pb::ListSnapshotsRequest {
                service: svc(),
                ..Default::default()
            }
        ))
    );
    call!(
        "GetSnapshot",
        sn.get_snapshot(with(
            token,
            pb::GetSnapshotRequest {
                service: svc(),
                name: "s".into()
            }
        ))
    );
    call!(
        "DeleteSnapshot",
        sn.delete_snapshot(with(
            token,
            pb::DeleteSnapshotRequest {
                service: svc(),
                name: "s".into()
            }
        ))
    );
    out
}

/// The `berth` commands that name a service, run with `token` on
/// `service`: (exit failed, stderr with the service name replaced).
fn cli_answers(c: &Ctl, token: &str, service: &str) -> Vec<String> {
    let commands: [&[&str]; 7] = [
        &["volume", "list", "--service", service],
        &["volume", "inspect", "v", "--service", service],
        &["volume", "create", "new", "--service", service],
        &["volume", "remove", "v", "--service", service],
        &["snapshot", "list", "--service", service],
        &["snapshot", "inspect", "s", "--service", service],
        &["snapshot", "remove", "s", "--service", service],
    ];
    commands
        .iter()
        .map(|args| {
            let mut all = vec!["--token", token];
            all.extend_from_slice(args);
            let run = c.d.berth(&all);
            refused(&run, "error: permission denied: ").replace(service, "S")
        })
        .collect()
}

#[tokio::test]
async fn a_forbidden_service_and_a_missing_one_answer_alike() {
    let c = two_services("", "deny = [\"alice\"]", &[]);
    c.d.berth(&["volume", "create", "v", "--service", "bulk"])
        .success();
    c.d.berth(&["snapshot", "create", "v", "s", "--service", "bulk"])
        .success();
    let bob = issue(&c.d, &["bob", "--services", "fast"]);
    let alice = issue(&c.d, &["alice", "--services", "*"]);
    let admin = admin_token(&c.d);
    let channel = channel(&c.d, None).await;
    let before = c.state();

    // bob's scope names fast only; alice's names every service but bulk's
    // deny list names her.
    for (who, token) in [("bob", &bob), ("alice", &alice)] {
        let forbidden = answers(&channel, token, "bulk").await;
        let missing = answers(&channel, token, "nosuch").await;
        for (rpc, code, message) in &forbidden {
            assert_eq!(*code, Code::PermissionDenied, "{who} {rpc}: {message}");
            assert!(message.contains(who), "{who} {rpc}: {message}");
        }
        assert_eq!(
            forbidden, missing,
            "{who}: bulk (exists) and nosuch (does not) differ"
        );
        let forbidden = cli_answers(&c, token, "bulk");
        let missing = cli_answers(&c, token, "nosuch");
        assert_eq!(forbidden, missing, "{who}: berth answers differ");
    }
    // An admin may learn which services exist.
    for (rpc, code, message) in answers(&channel, &admin, "nosuch").await {
        assert_eq!(code, Code::NotFound, "admin {rpc}: {message}");
    }
    assert_eq!(c.state(), before, "a refused call changed something");
}
