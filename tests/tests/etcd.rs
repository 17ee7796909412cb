//! Several controllers on one etcd (`--store etcd://`), sharing one `vfs`
//! root. The test starts its own `etcd` (private data directory, loopback
//! ports). Without `etcd`, or without the `etcd` cargo feature, it is
//! skipped with one line, unless `BERTH_REQUIRE_ETCD=1` (CI), which makes
//! that a failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::etcd::{start_joined, Etcd};
use berth_tests::{listed, volume_dirs, Berthd};

/// A config file for a controller on `etcd` whose `local` service is the
/// shared vfs `root`.
fn config(dir: &Path, etcd: &Etcd, root: &Path) -> PathBuf {
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
    let etcd = Etcd::start()?;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("shared-root");
    std::fs::create_dir_all(&root).expect("root");
    let config = config(tmp.path(), &etcd, &root);
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

#[test]
fn etcd_down_fails_fast_and_recovers_when_it_returns() {
    let Some(mut c) = cluster(1) else { return };
    let a = &c.nodes[0];
    a.berth(&["volume", "create", "before", "-o", "json"])
        .success();

    c.etcd.stop();
    for args in [
        &["--timeout", "8s", "volume", "list", "-o", "json"][..],
        &[
            "--timeout",
            "8s",
            "volume",
            "create",
            "during",
            "-o",
            "json",
        ][..],
    ] {
        let started = Instant::now();
        let run = c.nodes[0].berth(args);
        let took = started.elapsed();
        let err = run.failure();
        assert!(
            took < Duration::from_secs(8),
            "{args:?} failed fast, not at the client's deadline: {took:?}"
        );
        assert!(
            err.to_lowercase().contains("unavailable") || err.contains("etcd"),
            "{args:?} says the store is unavailable: {err}"
        );
        println!("etcd down: {args:?} failed in {} ms", took.as_millis());
    }

    c.etcd.launch();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = c.nodes[0].berth(&["volume", "create", "after", "-o", "json"]);
        if run.ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls work again after etcd returns: {}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let names = listed(&c.nodes[0]);
    assert!(names.contains_key("before") && names.contains_key("after"));
    assert!(
        !names.contains_key("during"),
        "nothing unacknowledged appears"
    );
}
