//! Crash safety and shutdown: what a client was told must hold after
//! `kill -9` and a restart, the volume directories and the controller's
//! records must agree, and SIGTERM must stop the controller cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use berth_tests::Berthd;
use serde_json::Value;

/// How long any batch of client processes may take.
const CLIENTS_TIMEOUT: Duration = Duration::from_secs(10);

fn root(d: &Berthd) -> PathBuf {
    berth_tests::vfs_root(d)
}

use berth_tests::{listed, vfs_metadata as metadata, volume_dirs as visible};

/// Asserts the three views of the default service agree: records listed by
/// the controller, volume directories and the driver's metadata, and that
/// each record's path is its directory.
#[track_caller]
fn assert_consistent(d: &Berthd, records: &BTreeMap<String, Value>) {
    let root = root(d);
    let names: BTreeSet<String> = records.keys().cloned().collect();
    assert_eq!(
        visible(&root),
        names,
        "volume directories (left) and records (right) differ"
    );
    assert_eq!(
        metadata(&root),
        names,
        "driver metadata (left) and records (right) differ"
    );
    for (name, v) in records {
        assert_eq!(
            v["fields"]["path"],
            root.join(name).display().to_string(),
            "{name}"
        );
    }
    assert!(
        d.wait_drift_checked(Duration::from_secs(10)),
        "the controller did not compare its records with the driver:\n{}",
        d.log()
    );
    let log = d.log();
    for drift in ["no record of", "missing from its driver"] {
        assert!(
            !log.contains(drift),
            "the controller reported drift ({drift}):\n{log}"
        );
    }
}

/// A `berth` process started and not yet waited for.
struct Pending {
    name: String,
    child: Child,
}

/// What one finished `berth` process did.
struct Finished {
    name: String,
    ok: bool,
    stdout: String,
    stderr: String,
}

fn spawn_create(d: &Berthd, name: &str, extra: &[&str]) -> Pending {
    let mut args = vec!["volume", "create", name, "-o", "json"];
    args.extend_from_slice(extra);
    let child = d.spawn_berth(&args);
    Pending {
        name: name.to_owned(),
        child,
    }
}

fn collect(mut p: Pending, ok: bool) -> Finished {
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = p.child.stdout.take() {
        out.read_to_string(&mut stdout).expect("read stdout");
    }
    if let Some(mut err) = p.child.stderr.take() {
        err.read_to_string(&mut stderr).expect("read stderr");
    }
    Finished {
        name: p.name,
        ok,
        stdout,
        stderr,
    }
}

/// `n` creates of PREFIX-00, PREFIX-01, ... started at once: (names, pending).
fn spawn_creates(d: &Berthd, prefix: &str, n: usize) -> (Vec<String>, Vec<Pending>) {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:02}")).collect();
    let pending = names
        .iter()
        .map(|name| spawn_create(d, name, &[]))
        .collect();
    (names, pending)
}

/// How berthd exited after a SIGTERM; panics (with its log) if it did not
/// within 10 s.
fn exit_after_term(d: &mut Berthd) -> std::process::ExitStatus {
    d.wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("berthd did not exit on SIGTERM; its log:\n{}", d.log()))
}

/// Waits for every process, bounded; the outputs are small enough for the
/// pipes, so polling exit status first cannot deadlock.
fn wait_all(mut pending: Vec<Pending>, mut on_progress: impl FnMut(usize)) -> Vec<Finished> {
    let deadline = Instant::now() + CLIENTS_TIMEOUT;
    let mut done = Vec::new();
    while !pending.is_empty() {
        let mut i = 0;
        while i < pending.len() {
            match pending[i].child.try_wait().expect("wait berth") {
                Some(status) => {
                    done.push(collect(pending.swap_remove(i), status.success()));
                    on_progress(done.len());
                }
                None => i += 1,
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = pending.iter().map(|p| p.name.clone()).collect();
            for p in &mut pending {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            panic!("berth processes still running after {CLIENTS_TIMEOUT:?}: {stuck:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done
}

#[test]
fn acknowledged_creates_survive_kill_9() {
    let mut d = Berthd::start();
    let mut acknowledged = BTreeMap::new();
    for i in 0..20 {
        let name = format!("crash-{i:02}");
        let size = format!("{}MiB", i + 1);
        let mut args = vec![
            "volume",
            "create",
            name.as_str(),
            "--size",
            &size,
            "-o",
            "json",
        ];
        if i % 3 == 0 {
            args.extend(["--opt", "mode=0700"]);
        }
        let v = d.berth(&args).json();
        acknowledged.insert(name, v);
    }
    d.kill9();
    d.restart();

    let records = listed(&d);
    assert_eq!(
        records.keys().collect::<Vec<_>>(),
        acknowledged.keys().collect::<Vec<_>>(),
        "every acknowledged volume, and nothing else"
    );
    for (name, before) in &acknowledged {
        assert_eq!(&records[name], before, "{name} changed across the crash");
    }
    assert_consistent(&d, &records);
    // And the controller still works on them.
    let again = d
        .berth(&[
            "volume",
            "create",
            "crash-00",
            "--size",
            "1MiB",
            "--opt",
            "mode=0700",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(again["id"], acknowledged["crash-00"]["id"]);
}

#[test]
fn acknowledged_removes_survive_kill_9() {
    let mut d = Berthd::start();
    for i in 0..10 {
        d.berth(&["volume", "create", &format!("rm-{i}")]).success();
    }
    for i in (0..10).step_by(2) {
        d.berth(&["volume", "remove", &format!("rm-{i}")]).success();
    }
    d.kill9();
    d.restart();
    let records = listed(&d);
    assert_eq!(
        records.keys().cloned().collect::<Vec<_>>(),
        ["rm-1", "rm-3", "rm-5", "rm-7", "rm-9"]
    );
    assert_consistent(&d, &records);
}

#[test]
fn kill_9_during_concurrent_creates_loses_nothing_acknowledged_and_leaves_no_orphans() {
    let mut d = Berthd::start();
    const N: usize = 48;
    let (names, pending) = spawn_creates(&d, "race", N);

    // Kill the controller once a few clients have their answer, while the
    // rest are connecting or waiting.
    let mut killed_at = None;
    let results = wait_all(pending, |finished| {
        if killed_at.is_none() && finished >= N / 6 {
            d.kill9();
            killed_at = Some(finished);
        }
    });
    if killed_at.is_none() {
        d.kill9();
    }
    let acknowledged: BTreeMap<String, Value> = results
        .iter()
        .filter(|r| r.ok)
        .map(|r| {
            let v: Value = serde_json::from_str(&r.stdout).expect("berth printed JSON");
            assert_eq!(v["name"], r.name.as_str());
            (r.name.clone(), v)
        })
        .collect();
    for r in results.iter().filter(|r| !r.ok) {
        assert!(r.stderr.starts_with("error: "), "{}: {}", r.name, r.stderr);
    }
    eprintln!(
        "{} of {N} creates acknowledged before and around the kill",
        acknowledged.len()
    );

    d.restart();
    let records = listed(&d);
    for (name, v) in &acknowledged {
        let record = records
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged volume {name} is gone after the crash"));
        assert_eq!(record, v, "{name} changed across the crash");
    }
    for name in records.keys() {
        assert!(names.contains(name), "unexpected volume {name}");
    }
    assert_consistent(&d, &records);

    // Every create that was not acknowledged can be retried and succeeds.
    let retries: Vec<Pending> = names
        .iter()
        .filter(|n| !acknowledged.contains_key(*n))
        .map(|n| spawn_create(&d, n, &[]))
        .collect();
    for r in wait_all(retries, |_| {}) {
        assert!(r.ok, "retrying {} failed: {}", r.name, r.stderr);
    }
    let records = listed(&d);
    assert_eq!(
        records.keys().cloned().collect::<BTreeSet<_>>(),
        names.iter().cloned().collect::<BTreeSet<_>>()
    );
    for (name, v) in &acknowledged {
        assert_eq!(records[name]["id"], v["id"], "{name} was re-created");
    }
    assert_consistent(&d, &records);
}

#[test]
fn sigterm_exits_zero_and_keeps_every_volume() {
    let mut d = Berthd::start();
    let mut created = BTreeMap::new();
    for i in 0..5 {
        let name = format!("term-{i}");
        created.insert(
            name.clone(),
            d.berth(&["volume", "create", &name, "-o", "json"]).json(),
        );
    }
    d.signal("TERM");
    let status = exit_after_term(&mut d);
    assert!(
        status.success(),
        "berthd exited with {status} on SIGTERM:\n{}",
        d.log()
    );
    let err = d.berth(&["volume", "list"]).failure();
    assert!(err.contains("connection refused"), "{err}");

    d.restart();
    let records = listed(&d);
    assert_eq!(records, created);
    assert_consistent(&d, &records);
}

#[test]
fn sigterm_during_creates_finishes_them_and_exits_zero() {
    let mut d = Berthd::start();
    const N: usize = 24;
    let (_, pending) = spawn_creates(&d, "drain", N);
    let mut signalled = false;
    let results = wait_all(pending, |finished| {
        if !signalled && finished >= N / 4 {
            d.signal("TERM");
            signalled = true;
        }
    });
    if !signalled {
        d.signal("TERM");
    }
    let status = exit_after_term(&mut d);
    assert!(
        status.success(),
        "berthd exited with {status}:\n{}",
        d.log()
    );

    d.restart();
    let records = listed(&d);
    for r in &results {
        if r.ok {
            assert!(
                records.contains_key(&r.name),
                "acknowledged {} is gone",
                r.name
            );
        }
    }
    assert_consistent(&d, &records);
}

/// Sends SIGTERM while one TCP connection that never sent a byte is open,
/// and expects a prompt, clean exit.
fn term_with_an_idle_connection(args: &[&str]) {
    let mut d = Berthd::start_with(args);
    let idle = std::net::TcpStream::connect(d.addr).expect("connect");
    // Connections are accepted in order: once this later one has been
    // served, the idle one is the server's too.
    d.berth(&["volume", "create", "idle"]).success();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(10));
    drop(idle);
    let status = status.unwrap_or_else(|| {
        panic!(
            "berthd {args:?} was still running 10 s after SIGTERM because one idle TCP \
             connection was open; its log:\n{}",
            d.log()
        )
    });
    assert!(status.success(), "berthd exited with {status}");
}

/// A connection that never sends a request must not keep a stopping
/// controller alive: graceful shutdown waits for calls, not for idle peers.
#[test]
fn sigterm_is_not_held_up_by_an_idle_connection() {
    term_with_an_idle_connection(&[]);
}

/// The same with `--insecure-plaintext`, where no TLS handshake timeout
/// comes to the rescue.
#[test]
fn sigterm_is_not_held_up_by_an_idle_plaintext_connection() {
    term_with_an_idle_connection(&["--insecure-plaintext"]);
}
