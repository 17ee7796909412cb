//! Credentials that must stop working, answers that must not leak, and
//! names that must not deceive, through real `berthd` and `berth` processes
//! and a real gRPC/TLS client:
//!
//! * a client certificate that expires while its connection is open is
//!   refused on that connection at the next call;
//! * a caller not allowed a service gets the same status and message
//!   whether the service exists or not, on every RPC that names one;
//! * subjects with invisible or bidirectional characters are refused at
//!   issue time, at verification and in the config's allow and deny lists,
//!   and what is kept is in normal form C, so a deny list cannot be bypassed;
//! * the bootstrap admin token can be rotated (online, or by deleting
//!   `admin.token` and restarting) and the old one stops working, and an
//!   exposed or foreign-owned `admin.token` stops start-up;
//! * credentials naming services that are not configured are refused
//!   unless `--allow-unknown` is given.
//!
//! Every refusal is checked to change nothing.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::connect::{self, ClientIdentity, ServerTrust};
use berth_client::pinning::PinSource;
use berth_proto::v1 as pb;
use berth_tests::openssl;
use berth_tests::tokens::{admin_token, issue, with};
use berth_tests::{bin, entries, tree, Berthd, Run, START_TIMEOUT};
use tonic::transport::Channel;
use tonic::Code;

// ---- helpers ----

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A P-256 key and CSR whose CN is `cn` (UTF-8): (key, csr).
fn openssl_csr(dir: &Path, file: &str, cn: &str) -> (PathBuf, PathBuf) {
    openssl::csr(dir, file, cn)
}

/// A controller serving `fast` and `bulk` (vfs), each section taking the
/// extra TOML lines given.
struct Ctl {
    // Dropped first: the controller stops before its roots go away.
    d: Berthd,
    fast: PathBuf,
    bulk: PathBuf,
    work: tempfile::TempDir,
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
        work,
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
    fn dir(&self) -> &Path {
        self.work.path()
    }

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

/// Runs `berthd` on `d`'s data directory with `args`, expecting it to
/// refuse to start; returns its stderr. A controller that starts instead is
/// killed (after START_TIMEOUT at most) and the test fails.
fn start_fails(d: &Berthd, args: &[&str]) -> String {
    let mut cmd = Command::new(bin("berthd"));
    d.env(&mut cmd);
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--data-dir", s(&d.data_dir)])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berthd");
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("berthd output");
        panic!(
            "berthd started when it should have refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = child.wait_with_output().expect("berthd output");
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "it must not have listened"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under the auth directory with its mode and contents.
fn auth_files(d: &Berthd) -> Vec<(String, u32, Vec<u8>)> {
    let dir = d.data_dir.join("auth");
    entries(&dir)
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o7777;
            (name, mode, std::fs::read(&path).unwrap_or_default())
        })
        .collect()
}

// ---- 1. an expired certificate on an open connection ----

#[tokio::test]
async fn a_certificate_that_expires_mid_connection_is_refused_on_it() {
    let d = Berthd::start();
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("carol");
    let ttl = Duration::from_secs(4);
    d.berth(&[
        "cert",
        "issue",
        "carol",
        "--services",
        "*",
        "--ttl",
        "4s",
        "--out",
        s(&dir),
    ])
    .success();
    let issued = Instant::now();
    let serial = list_of(&d, "cert")[0]["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let identity =
        connect::read_identity(&dir.join("carol.crt"), &dir.join("carol.key")).expect("identity");
    let channel = channel(&d, Some(identity)).await;
    let mut catalog = pb::service_catalog_client::ServiceCatalogClient::new(channel.clone());
    let mut volumes = pb::volumes_client::VolumesClient::new(channel);
    let before = catalog
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("carol may list while her certificate is valid")
        .into_inner();
    assert_eq!(before.services.len(), 1);
    let root = d.data_dir.join("volumes");
    let files = tree(&root);

    // Past not_after (the certificate's dates have whole seconds).
    let wait = (ttl + Duration::from_secs(2)).saturating_sub(issued.elapsed());
    tokio::time::sleep(wait).await;

    let err = catalog
        .list_services(pb::ListServicesRequest {})
        .await
        .expect_err("refused on the same connection after expiry");
    // Unauthenticated, not a transport error: the same connection answered
    // (a new handshake with this certificate would fail).
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("expired") && err.message().contains(&serial),
        "{err:?}"
    );
    let err = volumes
        .create_volume(pb::CreateVolumeRequest {
            service: "local".into(),
            name: "after-expiry".into(),
            ..Default::default()
        })
        .await
        .expect_err("a create after expiry");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(tree(&root), files, "nothing created");
    assert!(d
        .berth(&["volume", "list", "-o", "json"])
        .json()
        .as_array()
        .expect("array")
        .is_empty());
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

// ---- 3. subjects ----

#[test]
fn invisible_subjects_are_refused_at_issue_and_change_nothing() {
    let c = two_services("deny = [\"mallory\", \"jos\u{e9}\"]", "", &[]);
    let before = c.state();
    for hidden in [
        "mallory\u{200b}",
        "\u{202e}yrollam",
        "\u{feff}mallory",
        "mal\u{2066}lory",
    ] {
        let err = refused(
            &c.d.berth(&["token", "issue", hidden, "--services", "fast"]),
            "error: invalid argument: subject ",
        );
        assert!(err.contains("U+"), "{err}");
        let bad = hidden.chars().find(|ch| !ch.is_ascii()).expect("hidden");
        assert!(!err.contains(bad), "the error must escape it: {err:?}");

        let (_, csr) = openssl_csr(c.dir(), "hidden", hidden);
        refused(
            &c.d.berth(&["cert", "sign", "--csr", s(&csr), "--services", "fast"]),
            "error: invalid argument: subject ",
        );
        let out = c.dir().join("hidden-out");
        refused(
            &c.d.berth(&[
                "cert",
                "issue",
                hidden,
                "--services",
                "fast",
                "--out",
                s(&out),
            ]),
            "error: invalid argument: subject ",
        );
        assert!(!out.exists(), "cert issue left {}", out.display());
        assert_eq!(
            c.state(),
            before,
            "{hidden:?}: a refused issue changed something"
        );
    }
    // What is kept is NFC: `jose` + U+0301 is the `jos\u{e9}` the deny list
    // names, so it cannot slip past it.
    let decomposed = issue(&c.d, &["jose\u{301}", "--services", "fast"]);
    let tokens = list_of(&c.d, "token");
    assert!(
        tokens.iter().any(|t| t["subject"] == "jos\u{e9}"),
        "stored in NFC: {tokens:?}"
    );
    let err = refused(
        &c.d.berth(&[
            "--token",
            &decomposed,
            "volume",
            "create",
            "x",
            "--service",
            "fast",
        ]),
        "error: permission denied: ",
    );
    assert!(err.contains("jos\u{e9}"), "{err}");
    assert!(tree(&c.fast).iter().all(|p| !p.starts_with('x')));
    assert!(
        !c.d.log().contains('\u{200b}') && !c.d.log().contains('\u{202e}'),
        "the log carries an invisible character"
    );
}

#[test]
fn an_operator_certificate_with_an_invisible_cn_is_refused_at_verification() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    openssl::operator_ca(dir);
    let (key, csr) = openssl_csr(dir, "ext", "mallory\u{200b}");
    openssl::operator_sign_client(dir, &csr);
    // bulk's allow list names mallory: a look-alike must not get it, nor
    // appear in the audit log.
    let c = two_services(
        "",
        "allow = [\"mallory\"]",
        &["--client-ca", s(&dir.join("ca.pem"))],
    );
    let before = c.state();
    let crt = dir.join("ext.crt");
    for args in [
        &["service", "list"][..],
        &["volume", "create", "x", "--service", "bulk"],
    ] {
        let mut all = vec!["--cert", s(&crt), "--key", s(&key)];
        all.extend_from_slice(args);
        let err = refused(&c.d.berth(&all), "error: not authenticated: ");
        assert!(err.contains("U+200B"), "{err}");
    }
    assert_eq!(c.state(), before);
    assert!(!c.d.log().contains('\u{200b}'), "the log carries U+200B");
}

#[test]
fn allow_and_deny_entries_with_invisible_characters_stop_start_up() {
    let d = Berthd::start();
    let mut d = d;
    d.kill9();
    let work = tempfile::tempdir().expect("tempdir");
    for (fast, problem) in [
        ("deny = [\"mallory\\u200B\"]", "deny list entry"),
        ("allow = [\"\\u202Eyrollam\"]", "allow list entry"),
    ] {
        let config = work.path().join("berthd.toml");
        std::fs::write(&config, config_text(work.path(), fast, "")).expect("config");
        let files = tree(&d.data_dir);
        let err = start_fails(&d, &["--config", s(&config)]);
        assert!(
            err.contains(s(&config)) && err.contains("\"fast\"") && err.contains(problem),
            "{err}"
        );
        assert!(err.contains("U+200B") || err.contains("U+202E"), "{err}");
        assert_eq!(
            tree(&d.data_dir),
            files,
            "a refused start changed the data directory"
        );
        assert!(!work.path().join("fast-root").exists());
    }
}

// ---- 4. the bootstrap admin token ----

/// The bootstrap tokens that are still valid, from `berth token list`.
fn live_bootstrap(d: &Berthd) -> usize {
    list_of(d, "token")
        .iter()
        .filter(|t| t["bootstrap"] == true && t["revoked"] == false)
        .count()
}

#[test]
fn deleting_admin_token_and_restarting_revokes_the_old_one() {
    let mut d = Berthd::start();
    let old = admin_token(&d);
    d.berth(&["--token", &old, "volume", "create", "v"])
        .success();
    std::fs::remove_file(d.admin_token_path()).expect("delete");
    d.restart();
    let new = admin_token(&d);
    assert_ne!(new, old);
    let err = refused(
        &d.berth(&["--token", &old, "volume", "list"]),
        "error: not authenticated: ",
    );
    assert!(err.contains("revoked"), "{err}");
    d.berth(&["--token", &new, "volume", "list"]).success();
    // A restart with the file in place keeps it.
    d.restart();
    assert_eq!(admin_token(&d), new);
    d.berth(&["--token", &new, "volume", "list"]).success();
    assert_eq!(live_bootstrap(&d), 1);
}

#[test]
fn rotating_the_admin_token_online_revokes_the_old_one() {
    let d = Berthd::start();
    let old = admin_token(&d);
    let out = d.berth(&["token", "rotate-admin"]).success();
    assert!(out.contains("admin.token"), "{out}");
    let new = admin_token(&d);
    assert_ne!(old, new);
    let mode = std::fs::metadata(d.admin_token_path())
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let err = refused(
        &d.berth(&["--token", &old, "token", "list"]),
        "error: not authenticated: ",
    );
    assert!(err.contains("revoked"), "{err}");
    // The client profile reads the file: the new token is used as is.
    d.berth(&["token", "list"]).success();
    d.berth(&["--token", &new, "volume", "create", "v"])
        .success();
    assert_eq!(live_bootstrap(&d), 1);
    // A user may not rotate it.
    let bob = issue(&d, &["bob", "--services", "*"]);
    let err = refused(
        &d.berth(&["--token", &bob, "token", "rotate-admin"]),
        "error: permission denied: ",
    );
    assert!(err.contains("admin role"), "{err}");
    assert_eq!(
        admin_token(&d),
        new,
        "a refused rotation changed admin.token"
    );
}

#[test]
fn an_exposed_or_foreign_admin_token_stops_start_up_and_changes_nothing() {
    let mut d = Berthd::start();
    let token = admin_token(&d);
    let tokens = list_of(&d, "token");
    d.kill9();
    let path = d.admin_token_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let before = auth_files(&d);
    let err = start_fails(&d, &[]);
    assert!(
        err.contains(&format!("chmod 600 {}", s(&path))),
        "says how to fix it: {err}"
    );
    assert_eq!(
        auth_files(&d),
        before,
        "a refused start changed the auth directory"
    );

    let me = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&me.stdout).trim() == "0" {
        // Only root can give a file away; as root, check the owner too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let uid = std::fs::metadata(&path).expect("meta").uid();
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
        let before = auth_files(&d);
        let err = start_fails(&d, &[]);
        assert!(err.contains("chown"), "says how to fix it: {err}");
        assert_eq!(auth_files(&d), before);
        std::os::unix::fs::chown(&path, Some(uid), None).expect("chown back");
    } else {
        eprintln!("not root: the foreign-owner case is not exercised");
    }

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    d.restart();
    assert_eq!(admin_token(&d), token, "the token was kept");
    assert_eq!(list_of(&d, "token"), tokens, "no token issued or revoked");
    d.berth(&["--token", &token, "volume", "list"]).success();
}

// ---- 5. unknown services ----

#[test]
fn credentials_for_unknown_services_are_refused_unless_asked() {
    let c = two_services("", "", &[]);
    let before = c.state();
    let (_, csr) = openssl_csr(c.dir(), "bob", "bob");
    let out = c.dir().join("bob-out");
    let attempts: [Vec<&str>; 4] = [
        vec!["token", "issue", "bob", "--services", "nosuch"],
        vec!["token", "issue", "bob", "--services", "fast,nosuch"],
        vec!["cert", "sign", "--csr", s(&csr), "--services", "nosuch"],
        vec![
            "cert",
            "issue",
            "bob",
            "--services",
            "nosuch",
            "--out",
            s(&out),
        ],
    ];
    for args in &attempts {
        let err = refused(&c.d.berth(args), "error: invalid argument: ");
        assert!(
            err.contains("\"nosuch\"")
                && err.contains("\"bulk\", \"fast\"")
                && err.contains("--allow-unknown"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("\"fast\", \"nosuch\""),
            "only the unknown one is named: {err}"
        );
        assert_eq!(
            c.state(),
            before,
            "{args:?}: a refused issue changed something"
        );
    }
    assert!(!out.exists(), "cert issue left {}", out.display());

    for args in &attempts {
        let mut all = args.clone();
        all.push("--allow-unknown");
        c.d.berth(&all).success();
    }
    let after = c.state();
    assert_eq!(after.tokens.len(), before.tokens.len() + 2);
    assert_eq!(after.certs.len(), before.certs.len() + 2);
    assert!(after
        .tokens
        .iter()
        .any(|t| t["services"] == serde_json::json!(["nosuch"])));
    // '*' is not a service name but all of them.
    c.d.berth(&["token", "issue", "carol", "--services", "*"])
        .success();
}
