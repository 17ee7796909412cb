//! One identity and one credential registry for several controllers on one
//! etcd: a controller joined from another (`berthd join`) serves a
//! certificate of the same CA, so one pin trusts both; a token issued on one
//! works on the other, and a revocation on one is refused on the other
//! within 2 s (etcd watch). Joins without an admin token, with a wrong
//! pin, or from a controller whose credentials are not shared are refused
//! and write nothing. The etcd tests start a private etcd and skip with one
//! line without it (unless `BERTH_REQUIRE_ETCD=1`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::etcd::{fingerprint, join_with, start_joined, Etcd};
use berth_tests::process::run_bounded;
use berth_tests::tokens::{issue, jti_of};
use berth_tests::{bin, home_env, Berthd, Run};

/// A config file for a controller whose store is `etcd` and whose `local`
/// service is the vfs `root`.
fn config(dir: &Path, etcd: &Etcd, root: &Path) -> String {
    let path = dir.join("berthd.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"etcd://{}\"\n\n[etcd]\nlease_ttl = \"3s\"\n\n[[services]]\nname = \"local\"\ndriver = \"vfs\"\n[services.options]\nroot = \"{}\"\n",
            etcd.endpoint(),
            root.display()
        ),
    )
    .expect("write config");
    path.display().to_string()
}

/// `berth` from a home that has never seen any controller: it trusts only
/// the pin and the token given.
fn berth_pinned(home: &Path, host: &Berthd, pin: &str, token: &str, args: &[&str]) -> Run {
    berth_as(home, host, pin, &["--token", token], args)
}

/// `berth` from `home` with only the pin and the credential options
/// `creds` (`--token T`, or `--cert C --key K`).
fn berth_as(home: &Path, host: &Berthd, pin: &str, creds: &[&str], args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("berth"));
    home_env(&mut cmd, home);
    cmd.arg("--host")
        .arg(host.addr.to_string())
        .arg("--fingerprint")
        .arg(pin)
        .args(creds)
        .args(args)
        .stdin(Stdio::null());
    Run(run_bounded(cmd, Duration::from_secs(30)))
}

/// Runs `attempt` until it fails, for at most `bound`; returns its error
/// and how long the refusal took to arrive.
fn refused_within(bound: Duration, what: &str, attempt: impl Fn() -> Run) -> (String, Duration) {
    let since = Instant::now();
    loop {
        let run = attempt();
        if !run.ok() {
            return (run.stderr(), since.elapsed());
        }
        assert!(
            since.elapsed() < bound,
            "{what} still works {} ms later",
            since.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The identity files `berthd join` writes; none may exist after a refusal.
fn identity_files(data_dir: &Path) -> Vec<PathBuf> {
    ["tls/ca.key", "tls/ca.crt", "auth/signing.key"]
        .iter()
        .map(|f| data_dir.join(f))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn a_joined_controller_shares_the_pin_the_tokens_and_the_revocations() {
    let Some(etcd) = Etcd::start() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("shared-root");
    std::fs::create_dir_all(&root).expect("root");
    let config = config(tmp.path(), &etcd, &root);
    let a = Berthd::start_with(&["--config", &config]);
    let b = start_joined(&a, &tmp.path().join("b"), &["--config", &config]);

    // One pin (A's CA) trusts both: B serves a certificate of A's CA.
    let pin = fingerprint(&a);
    assert_eq!(fingerprint(&b), pin, "B presents a chain rooted at A's CA");
    let home = tmp.path().join("fresh-home");
    std::fs::create_dir_all(&home).expect("home");
    let admin = a.admin_token();
    for d in [&a, &b] {
        berth_pinned(&home, d, &pin, &admin, &["volume", "list", "-o", "json"]).success();
    }
    // B's start issued B its own bootstrap token without revoking A's, and
    // B's works on A.
    berth_pinned(
        &home,
        &a,
        &pin,
        &b.admin_token(),
        &["token", "list", "-o", "json"],
    )
    .success();

    // Issued on A, works on B (the registry is shared).
    let alice = issue(&a, &["alice", "--services", "local"]);
    berth_pinned(
        &home,
        &b,
        &pin,
        &alice,
        &["volume", "create", "v1", "-o", "json"],
    )
    .success();
    berth_pinned(
        &home,
        &b,
        &pin,
        &alice,
        &["volume", "inspect", "v1", "-o", "json"],
    )
    .success();

    // Revoked on A: refused on B within 2 s, although B verified (and
    // remembered) it a moment ago.
    a.berth(&["token", "revoke", &jti_of(&alice)]).success();
    let (refused, took) = refused_within(
        Duration::from_secs(2),
        "a token revoked on A, on B,",
        || {
            berth_pinned(
                &home,
                &b,
                &pin,
                &alice,
                &["volume", "inspect", "v1", "-o", "json"],
            )
        },
    );
    println!(
        "token revoked on A refused on B after {} ms",
        took.as_millis()
    );
    assert!(refused.contains("revoked"), "{refused}");
    // And on A, of course.
    let on_a = berth_pinned(&home, &a, &pin, &alice, &["volume", "list", "-o", "json"]);
    assert!(on_a.failure().contains("revoked"));

    // A token issued on B works on A.
    let bob = issue(&b, &["bob", "--services", "local"]);
    berth_pinned(&home, &a, &pin, &bob, &["volume", "list", "-o", "json"]).success();

    // A client certificate signed on A works on B; revoked on A, it is
    // refused on B within 2 s.
    let out = tmp.path().join("dave-files");
    let out_arg = out.display().to_string();
    a.berth(&[
        "cert",
        "issue",
        "dave",
        "--services",
        "local",
        "--out",
        &out_arg,
    ])
    .success();
    let (crt, key) = (
        out.join("dave.crt").display().to_string(),
        out.join("dave.key").display().to_string(),
    );
    let dave = ["--cert", crt.as_str(), "--key", key.as_str()];
    berth_as(&home, &b, &pin, &dave, &["volume", "list", "-o", "json"]).success();
    let listed = a.berth(&["cert", "list", "-o", "json"]).json();
    let serial = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["subject"] == "dave")
        .and_then(|e| e["serial"].as_str())
        .expect("dave's certificate is listed")
        .to_owned();
    a.berth(&["cert", "revoke", &serial]).success();
    let (refused, took) = refused_within(
        Duration::from_secs(2),
        "a certificate revoked on A, on B,",
        || berth_as(&home, &b, &pin, &dave, &["volume", "list", "-o", "json"]),
    );
    println!(
        "certificate revoked on A refused on B after {} ms",
        took.as_millis()
    );
    assert!(refused.contains("revoked"), "{refused}");
}

#[test]
fn revocations_still_reach_every_controller_after_etcd_restarts() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("shared-root");
    std::fs::create_dir_all(&root).expect("root");
    let config = config(tmp.path(), &etcd, &root);
    let a = Berthd::start_with(&["--config", &config]);
    let b = start_joined(&a, &tmp.path().join("b"), &["--config", &config]);
    let pin = fingerprint(&a);
    let home = tmp.path().join("fresh-home");
    std::fs::create_dir_all(&home).expect("home");
    let erin = issue(&a, &["erin", "--services", "local"]);
    let list = ["--timeout", "8s", "volume", "list", "-o", "json"];
    berth_pinned(&home, &b, &pin, &erin, &list).success();

    // etcd away: B's watch breaks; B cannot check credentials and says so.
    etcd.stop();
    let err = berth_pinned(&home, &b, &pin, &erin, &list).failure();
    assert!(err.to_lowercase().contains("unavailable"), "{err}");
    etcd.launch();
    let back = Instant::now();
    while !berth_pinned(&home, &b, &pin, &erin, &list).ok() {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "B works again after etcd returns"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // B's watch is back: a revocation on A reaches it.
    a.berth(&["token", "revoke", &jti_of(&erin)]).success();
    let (refused, took) = refused_within(
        Duration::from_secs(2),
        "a token revoked on A after etcd restarted, on B,",
        || berth_pinned(&home, &b, &pin, &erin, &list),
    );
    println!(
        "after an etcd restart, a token revoked on A is refused on B after {} ms",
        took.as_millis()
    );
    assert!(refused.contains("revoked"), "{refused}");
}

#[test]
fn a_join_without_an_admin_token_or_with_a_wrong_pin_is_refused_and_writes_nothing() {
    let Some(etcd) = Etcd::start() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("shared-root");
    std::fs::create_dir_all(&root).expect("root");
    let config = config(tmp.path(), &etcd, &root);
    let a = Berthd::start_with(&["--config", &config]);
    let pin = fingerprint(&a);

    // A user's token, even with every service: PERMISSION_DENIED.
    let user = issue(&a, &["carol", "--services", "*"]);
    let user_file = tmp.path().join("user.token");
    std::fs::write(&user_file, &user).expect("token file");
    let target = tmp.path().join("joiner");
    let err = join_with(&a, &target, &pin, &user_file).failure();
    assert!(
        err.contains("PermissionDenied") && err.contains("admin"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(identity_files(&target).is_empty(), "nothing written: {err}");

    // A wrong pin: refused at the handshake, before the token is sent.
    let wrong = "AB".repeat(32);
    let err = join_with(&a, &target, &wrong, &a.admin_token_path()).failure();
    assert!(err.contains("fingerprint"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(identity_files(&target).is_empty(), "nothing written: {err}");

    // A controller with a CA of its own on the same etcd prefix would
    // serve a certificate the cluster's pin refuses: it does not start.
    let stranger = tmp.path().join("stranger");
    let mut cmd = Command::new(bin("berthd"));
    home_env(&mut cmd, tmp.path());
    cmd.args(["--listen", "127.0.0.1:0", "--config", &config, "--data-dir"])
        .arg(&stranger)
        .stdin(Stdio::null());
    let out = Run(run_bounded(cmd, Duration::from_secs(30)));
    let err = out.failure();
    assert!(
        err.contains("berthd join") && err.contains("not the cluster's"),
        "{err}"
    );

    // The cluster is untouched: A still works with its admin token.
    a.berth(&["token", "list", "-o", "json"]).success();
}

#[test]
fn a_controller_whose_credentials_are_not_shared_does_not_export_its_keys() {
    // sled: no etcd needed.
    let a = Berthd::start();
    let target = a.path("joiner");
    let err = join_with(&a, &target, &fingerprint(&a), &a.admin_token_path()).failure();
    assert!(
        err.contains("FailedPrecondition") && err.contains("--store etcd://"),
        "{err}"
    );
    assert!(identity_files(&target).is_empty(), "nothing written: {err}");
    // A data directory with an identity of its own is refused before any
    // connection is made.
    let err = join_with(&a, &a.data_dir, &fingerprint(&a), &a.admin_token_path()).failure();
    assert!(err.contains("already has"), "{err}");
}

/// The directories of the volumes the test CSI plugin holds under `root`.
fn plugin_volumes(root: &Path) -> usize {
    std::fs::read_dir(root.join("volumes"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// A `csi` service that two controllers share: a volume made through one is
/// snapshotted and removed through the other, which was started before the
/// volume existed (so it could not have learnt the plugin's volume id at its
/// start) and learns it from the shared record. Without that, the second
/// controller answered NOT_FOUND for the snapshot.
#[test]
fn a_csi_volume_made_on_one_controller_is_snapshotted_and_removed_through_another() {
    let Some(etcd) = Etcd::start() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("plugin.sock");
    let plugin_root = tmp.path().join("plugin-root");
    let mut plugin = Command::new(env!("CARGO_BIN_EXE_csi-test-plugin"))
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .arg("--root")
        .arg(&plugin_root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start csi-test-plugin");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the test plugin did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = tmp.path().join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"etcd://{}\"\n\n[etcd]\nlease_ttl = \"3s\"\n\n[[services]]\nname = \"pool\"\ndriver = \"csi\"\n[services.options]\nendpoint = \"unix://{}\"\n",
            etcd.endpoint(),
            socket.display()
        ),
    )
    .expect("write config");
    let config = config.display().to_string();
    let a = Berthd::start_with(&["--config", &config]);
    let b = start_joined(&a, &tmp.path().join("b"), &["--config", &config]);

    a.berth(&["volume", "create", "v1", "-s", "pool", "--size", "1MiB"])
        .success();
    assert_eq!(
        plugin_volumes(&plugin_root),
        1,
        "the plugin made the volume"
    );
    // A snapshot needs the plugin's id of its volume: B must know it.
    b.berth(&["snapshot", "create", "v1", "s1", "-s", "pool"])
        .success();
    b.berth(&["snapshot", "rm", "s1", "-s", "pool"]).success();
    b.berth(&["volume", "rm", "v1", "-s", "pool"]).success();
    assert_eq!(
        plugin_volumes(&plugin_root),
        0,
        "removed through B, the volume is still in the plugin"
    );
    let listed = a
        .berth(&["volume", "list", "-s", "pool", "-o", "json"])
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let _ = plugin.kill();
    let _ = plugin.wait();
}
