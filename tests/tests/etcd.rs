//! Several controllers on one etcd (`--store etcd://`), sharing one `vfs`
//! root. The test starts its own `etcd` (private data directory, loopback
//! ports). Without `etcd`, or without the `etcd` cargo feature, it is
//! skipped with one line, unless `BERTH_REQUIRE_ETCD=1` (CI), which makes
//! that a failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[cfg(feature = "etcd")]
use berth_controller::volumes::encoding::{decode, encode};
#[cfg(feature = "etcd")]
use berth_controller::volumes::store::{Intent, VolumeRecord};
use berth_tests::etcd::{start_joined, Etcd};
use berth_tests::{listed, volume_dirs, Berthd};

/// The lease TTL the test controllers run with.
const TTL: Duration = Duration::from_secs(3);

/// A config file for a controller on `etcd` whose `local` service is the
/// shared vfs `root`.
fn config(dir: &Path, etcd: &Etcd, root: &Path, ttl: Duration) -> PathBuf {
    let path = dir.join("berthd.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"etcd://{}\"\n\n[etcd]\nlease_ttl = \"{}s\"\n\n[[services]]\nname = \"local\"\ndriver = \"vfs\"\n[services.options]\nroot = \"{}\"\n",
            etcd.endpoint(),
            ttl.as_secs(),
            root.display()
        ),
    )
    .expect("write config");
    path
}

struct Cluster {
    etcd: Etcd,
    nodes: Vec<Berthd>,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

/// `n` controllers on one etcd: the first makes the cluster's identity, the
/// others join it (`berthd join`) before they start.
fn cluster(n: usize) -> Option<Cluster> {
    cluster_with(n, TTL)
}

fn cluster_with(n: usize, ttl: Duration) -> Option<Cluster> {
    let etcd = Etcd::start()?;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("shared-root");
    std::fs::create_dir_all(&root).expect("root");
    let config = config(tmp.path(), &etcd, &root, ttl);
    let config = config.to_str().expect("utf-8 path").to_owned();
    let first = Berthd::start_with(&["--config", &config]);
    let mut nodes = vec![];
    for i in 1..n {
        let dir = tmp.path().join(format!("node-{i}"));
        nodes.push(start_joined(&first, &dir, &["--config", &config]));
    }
    nodes.insert(0, first);
    Some(Cluster {
        etcd,
        nodes,
        root,
        _tmp: tmp,
    })
}

#[test]
fn controllers_on_one_etcd_share_one_catalogue() {
    let Some(c) = cluster(3) else { return };
    let (a, b, third) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);

    // The shared root of this test is on a local disk: each controller
    // says so at start, naming the root and what to do; a controller on
    // sled does not.
    for d in &c.nodes {
        let log = d.log();
        let warned = log
            .lines()
            .find(|l| l.contains("is on a local filesystem while the records are in etcd"));
        let warned = warned.unwrap_or_else(|| panic!("no local-root warning in:\n{log}"));
        assert!(warned.contains(&c.root.display().to_string()), "{warned}");
        assert!(warned.contains("shared storage"), "{warned}");
    }
    let alone = Berthd::start();
    assert!(!alone.log().contains("local filesystem"), "{}", alone.log());
    drop(alone);

    // Created on A: listed and inspected on B, with the same id.
    let made = a
        .berth(&["volume", "create", "shared", "-o", "json"])
        .json();
    let on_b = listed(b);
    assert!(on_b.contains_key("shared"), "B lists A's volume: {on_b:?}");
    let seen = b
        .berth(&["volume", "inspect", "shared", "-o", "json"])
        .json();
    assert_eq!(seen["id"], made["id"]);

    // Concurrent creates of one name across the three: one volume, one id.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let d = &c.nodes[i % 3];
                s.spawn(move || {
                    let run = d.berth(&["volume", "create", "race", "-o", "json"]);
                    assert!(run.ok(), "create on node {}: {}", i % 3, run.stderr());
                    run.json()["id"].as_str().expect("id").to_owned()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "one volume, one id: {ids:?}"
    );
    for d in &c.nodes {
        assert_eq!(listed(d).len(), 2);
    }
    assert_eq!(
        volume_dirs(&c.root),
        ["race", "shared"].map(String::from).into_iter().collect()
    );

    // Removed on B: gone on A and C.
    b.berth(&["volume", "remove", "shared"]).success();
    assert!(!listed(a).contains_key("shared"));
    third
        .berth(&["volume", "inspect", "shared", "-o", "json"])
        .failure();
    assert_eq!(
        volume_dirs(&c.root),
        ["race"].map(String::from).into_iter().collect()
    );
}

/// etcd frozen, then stopped for 10 s: every call meanwhile fails fast with
/// UNAVAILABLE (well within the client's `--timeout`), none hangs; once etcd
/// is back the controller works again by itself, and what was acknowledged
/// before is still there.
#[test]
fn etcd_down_fails_fast_and_recovers_when_it_returns() {
    let Some(mut c) = cluster(1) else { return };
    c.nodes[0]
        .berth(&["volume", "create", "before", "-o", "json"])
        .success();

    // Frozen (SIGSTOP): it accepts connections and answers nothing. Calls
    // still end, UNAVAILABLE, within the etcd timeout (2 s), not at the
    // client's deadline.
    c.etcd.signal("STOP");
    for args in [
        &["--timeout", "8s", "volume", "list", "-o", "json"][..],
        &["--timeout", "8s", "volume", "create", "frozen"][..],
    ] {
        let started = Instant::now();
        let err = c.nodes[0].berth(args).failure();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(6),
            "{args:?} against a frozen etcd ended in {took:?}"
        );
        assert!(
            err.to_lowercase().contains("unavailable") && err.contains("etcd"),
            "{args:?}: {err}"
        );
        println!("etcd frozen: {args:?} failed in {} ms", took.as_millis());
    }
    c.etcd.signal("CONT");

    c.etcd.stop();
    let down = Instant::now();
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    while down.elapsed() < Duration::from_secs(10) {
        let during = format!("during-{calls}");
        let args: &[&str] = if calls % 2 == 0 {
            &["--timeout", "8s", "volume", "list", "-o", "json"]
        } else {
            &["--timeout", "8s", "volume", "create", &during]
        };
        let started = Instant::now();
        let run = c.nodes[0].berth(args);
        let took = started.elapsed();
        let err = run.failure();
        assert!(
            took < Duration::from_secs(5),
            "{args:?} failed fast, not at the client's deadline: {took:?}"
        );
        assert!(
            err.to_lowercase().contains("unavailable") && err.contains("etcd"),
            "{args:?} says the store is unavailable: {err}"
        );
        slowest = slowest.max(took);
        calls += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "etcd down {} s: {calls} calls, each failed within {} ms",
        down.elapsed().as_secs(),
        slowest.as_millis()
    );

    c.etcd.launch();
    let back = Instant::now();
    loop {
        let run = c.nodes[0].berth(&["volume", "create", "after", "-o", "json"]);
        if run.ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "calls work again after etcd returns: {}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "etcd back: the first call succeeded after {} ms",
        back.elapsed().as_millis()
    );
    let names = listed(&c.nodes[0]);
    assert_eq!(
        names.keys().cloned().collect::<Vec<_>>(),
        ["after", "before"],
        "what was acknowledged is kept; nothing unacknowledged appears"
    );
    assert_eq!(
        volume_dirs(&c.root),
        ["after", "before"].map(String::from).into_iter().collect()
    );
}

/// What is under `prefix` in etcd: key to value.
#[cfg(feature = "etcd")]
async fn etcd_keys(
    etcd: &mut etcd_client::Client,
    prefix: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let resp = etcd
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("etcd get");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

/// A controller that dies mid-operation leaves an intent and a lock bound
/// to its lease. Here the dead controller is played by the test itself, so
/// that both kinds of left-over are certain: a lease granted and never
/// renewed, under it the locks of two volumes, an interrupted create
/// (`ghost`: its directory made, its record never written) and an
/// interrupted delete (`doomed`: its record still there). The running
/// controller leaves them alone while the lease lives, then undoes the
/// create and finishes the delete by itself, within TTL + 5 s.
#[cfg(feature = "etcd")]
#[test]
fn a_dead_controllers_intents_are_settled_by_a_running_one_within_ttl_plus_5s() {
    let Some(c) = cluster(1) else { return };
    let a = &c.nodes[0];
    for name in ["doomed", "ghost"] {
        a.berth(&["volume", "create", name]).success();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut etcd = rt
        .block_on(etcd_client::Client::connect([c.etcd.endpoint()], None))
        .expect("connect to etcd");
    let died = rt.block_on(async {
        let record = |name: &str| format!("/berth/volumes/local/{name}");
        let records = etcd_keys(&mut etcd, "/berth/volumes/local/").await;
        let lease = etcd
            .lease_grant(i64::try_from(TTL.as_secs()).expect("ttl"), None)
            .await
            .expect("lease")
            .id();
        let held = etcd_client::PutOptions::new().with_lease(lease);
        for (name, op) in [("ghost", "create"), ("doomed", "delete")] {
            let key = record(name);
            // Written as JSON, the form every release reads: controllers of
            // two releases may share one etcd during a rolling upgrade.
            assert_eq!(
                records[&key].first(),
                Some(&b'{'),
                "{key} is not stored as JSON in etcd"
            );
            let rec: VolumeRecord = decode(key.as_bytes(), &records[&key]).expect("record");
            etcd.put(
                format!("/berth/locks/volumes/local/{name}"),
                "a controller that died",
                Some(held.clone()),
            )
            .await
            .expect("lock");
            if op == "create" {
                etcd.delete(record(name), None).await.expect("drop record");
            }
            // In this version's (binary) form: the dead controller is one
            // of these.
            let intent = match op {
                "create" => Intent::Create { record: rec },
                _ => Intent::Delete { record: rec },
            };
            let intent_key = format!("/berth/intents/volumes/local/{name}");
            let intent = encode(intent_key.as_bytes(), &intent).expect("encode");
            etcd.put(intent_key, intent, None).await.expect("intent");
        }
        Instant::now()
    });

    // While the lease lives, its operations are under way: left alone.
    std::thread::sleep(Duration::from_secs(1));
    let intents = rt.block_on(etcd_keys(&mut etcd, "/berth/intents/"));
    assert_eq!(intents.len(), 2, "{intents:?}");
    assert_eq!(
        volume_dirs(&c.root),
        ["doomed", "ghost"].map(String::from).into_iter().collect()
    );

    let settled = loop {
        let intents = rt.block_on(etcd_keys(&mut etcd, "/berth/intents/"));
        if intents.is_empty() && volume_dirs(&c.root).is_empty() {
            break died.elapsed();
        }
        assert!(
            died.elapsed() < TTL + Duration::from_secs(5),
            "not settled within TTL + 5 s: intents {intents:?}, directories {:?}\n{}",
            volume_dirs(&c.root),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "a dead controller's intents settled {} ms after it died (TTL {} s)",
        settled.as_millis(),
        TTL.as_secs()
    );
    assert!(listed(a).is_empty(), "{:?}", listed(a));
    let records = rt.block_on(etcd_keys(&mut etcd, "/berth/volumes/"));
    assert!(records.is_empty(), "{records:?}");
    let log = a.log();
    assert!(
        log.contains("undoing a create interrupted by its controller's death")
            && log.contains("finishing a delete interrupted by its controller's death"),
        "{log}"
    );
}

/// An intent left on a volume with no lock held (its controller died, its
/// lease is gone) and not yet found by the background scan: the next
/// operation on that volume settles it before anything else. Here a
/// create of the volume whose delete was left half done finishes the
/// delete, then creates a new volume (a new id); it does not answer with
/// the doomed record, which the scan would then delete under the client's
/// feet. (A long TTL makes the scan slow, 2 s, so the create comes first.)
#[cfg(feature = "etcd")]
#[test]
fn an_operation_settles_a_left_over_intent_on_its_volume_first() {
    let Some(c) = cluster_with(1, Duration::from_secs(8)) else {
        return;
    };
    let a = &c.nodes[0];
    let old = a
        .berth(&["volume", "create", "doomed", "-o", "json"])
        .json();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut etcd = etcd_client::Client::connect([c.etcd.endpoint()], None)
            .await
            .expect("connect to etcd");
        let records = etcd_keys(&mut etcd, "/berth/volumes/local/").await;
        let key = "/berth/volumes/local/doomed";
        let rec: VolumeRecord = decode(key.as_bytes(), &records[key]).expect("record");
        // As an earlier release wrote intents (JSON): still read.
        let rec = serde_json::to_value(rec).expect("JSON");
        let intent = serde_json::json!({"op": "delete", "record": rec}).to_string();
        etcd.put("/berth/intents/volumes/local/doomed", intent, None)
            .await
            .expect("intent");
    });
    let new = a
        .berth(&["volume", "create", "doomed", "-o", "json"])
        .json();
    assert_ne!(
        new["id"], old["id"],
        "the left-over delete was finished first, then a new volume made"
    );
    // Past the background scan: the acknowledged create stands.
    std::thread::sleep(Duration::from_secs(3));
    let seen = a
        .berth(&["volume", "inspect", "doomed", "-o", "json"])
        .json();
    assert_eq!(seen["id"], new["id"]);
    assert_eq!(
        volume_dirs(&c.root),
        ["doomed"].map(String::from).into_iter().collect()
    );
    assert!(
        a.log().contains("finishing a delete interrupted by"),
        "{}",
        a.log()
    );
}

/// A private etcd that serves clients over TLS, demands a client
/// certificate from an operator CA, and has user authentication on: berthd
/// reaches it with the config keys `[etcd] ca`, `cert`, `key`, `user` and
/// `password_file`, and keeps its records there; a wrong password stops it
/// at start with etcd's reason.
#[cfg(feature = "etcd")]
#[test]
fn etcd_over_tls_with_a_client_certificate_and_a_user() {
    use berth_tests::etcd::EtcdTls;
    use berth_tests::openssl;
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki");
    let (ca, _chain, server_key) = openssl::shared_server_identity(&pki);
    let (client_key, csr) = openssl::csr(&pki, "ext", "berth");
    openssl::operator_sign_client(&pki, &csr);
    let client_cert = pki.join("ext.crt");
    let Some(etcd) = Etcd::start_with(Some(EtcdTls {
        cert: pki.join("server.pem"),
        key: server_key,
        client_ca: ca.clone(),
    })) else {
        return;
    };

    // Users and roles, then authentication on (as etcd's docs do it).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tls = || {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(&ca).expect("ca"),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&client_cert).expect("cert"),
                std::fs::read(&client_key).expect("key"),
            ))
    };
    rt.block_on(async {
        let options = etcd_client::ConnectOptions::new().with_tls(tls());
        let mut root = etcd_client::Client::connect([etcd.endpoint()], Some(options))
            .await
            .expect("connect over TLS");
        root.user_add("root", "root-pw", None).await.expect("root");
        root.user_grant_role("root", "root")
            .await
            .expect("root role");
        root.user_add("berth", "s3cret pass", None)
            .await
            .expect("user");
        root.role_add("berth").await.expect("role");
        root.role_grant_permission(
            "berth",
            etcd_client::Permission::read_write("/berth/").with_prefix(),
        )
        .await
        .expect("grant");
        root.user_grant_role("berth", "berth")
            .await
            .expect("grant role");
        root.auth_enable().await.expect("auth on");
    });

    let root_dir = tmp.path().join("root");
    let config = |password_file: &Path| {
        let path = tmp.path().join("berthd.toml");
        std::fs::write(
            &path,
            format!(
                "store = \"etcd://{}\"\n\n[etcd]\nlease_ttl = \"3s\"\nca = {:?}\ncert = {:?}\n\
                 key = {:?}\nuser = \"berth\"\npassword_file = {:?}\n\n[[services]]\n\
                 name = \"local\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n",
                etcd.endpoint(),
                ca,
                client_cert,
                client_key,
                password_file,
                root_dir
            ),
        )
        .expect("config");
        path
    };
    let password = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).expect("password file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };

    // A wrong password: berthd stops at start, saying why.
    let wrong = config(&password("wrong", "not it\n"));
    let mut cmd = std::process::Command::new(berth_tests::bin("berthd"));
    let home = tmp.path().join("home");
    berth_tests::home_env(&mut cmd, &home);
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data-wrong"))
        .arg("--config")
        .arg(&wrong)
        .stdin(std::process::Stdio::null());
    let out = berth_tests::process::run_bounded(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains("not it"),
        "the password is never shown: {err}"
    );

    // The right one: records land in etcd, under the prefix the role allows.
    let good = config(&password("right", "s3cret pass\n"));
    let d = Berthd::start_with(&["--config", good.to_str().expect("utf-8")]);
    let made = d
        .berth(&["volume", "create", "over-tls", "-o", "json"])
        .json();
    assert_eq!(listed(&d)["over-tls"]["id"], made["id"]);
    let stored = rt.block_on(async {
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls())
            .with_user("root", "root-pw");
        let mut root = etcd_client::Client::connect([etcd.endpoint()], Some(options))
            .await
            .expect("connect as root");
        etcd_keys(&mut root, "/berth/volumes/").await
    });
    assert!(
        stored.contains_key("/berth/volumes/local/over-tls"),
        "{stored:?}"
    );
    assert!(!d.log().contains("s3cret"), "the password is never logged");
}
