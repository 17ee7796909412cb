//! Many `berth` processes at once against one controller: distinct names
//! all succeed, the same name yields one volume, conflicting parameters have
//! exactly one winner.

use std::collections::BTreeSet;
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

struct Finished {
    label: String,
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.label, self.stdout))
    }
}

/// Starts every command at once, then waits for all of them (bounded).
fn run_all(d: &Berthd, commands: Vec<(String, Vec<String>)>) -> Vec<Finished> {
    let mut pending: Vec<(String, Child)> = commands
        .into_iter()
        .map(|(label, args)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (label, d.spawn_berth(&args))
        })
        .collect();
    let deadline = Instant::now() + CLIENTS_TIMEOUT;
    let mut done = Vec::new();
    while !pending.is_empty() {
        let mut i = 0;
        while i < pending.len() {
            match pending[i].1.try_wait().expect("wait berth") {
                Some(status) => {
                    let (label, mut child) = pending.swap_remove(i);
                    let mut stdout = String::new();
                    let mut stderr = String::new();
                    if let Some(mut s) = child.stdout.take() {
                        s.read_to_string(&mut stdout).expect("stdout");
                    }
                    if let Some(mut s) = child.stderr.take() {
                        s.read_to_string(&mut stderr).expect("stderr");
                    }
                    done.push(Finished {
                        label,
                        ok: status.success(),
                        stdout,
                        stderr,
                    });
                }
                None => i += 1,
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = pending.iter().map(|(l, _)| l.clone()).collect();
            for (_, child) in &mut pending {
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!(
                "{} berth processes still running after {CLIENTS_TIMEOUT:?}: {stuck:?}; \
                 the controller's log:\n{}",
                stuck.len(),
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done
}

fn create(name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["volume", "create", name, "-o", "json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn sixty_four_creates_of_distinct_names_all_succeed() {
    let d = Berthd::start();
    let names: BTreeSet<String> = (0..64).map(|i| format!("many-{i:02}")).collect();
    let results = run_all(
        &d,
        names
            .iter()
            .map(|n| (n.clone(), create(n, &["--size", "1MiB"])))
            .collect(),
    );
    let mut ids = BTreeSet::new();
    for r in &results {
        assert!(r.ok, "{} failed: {}", r.label, r.stderr);
        let v = r.json();
        assert_eq!(v["name"], r.label.as_str());
        assert_eq!(v["size_bytes"], 1 << 20);
        assert!(ids.insert(v["id"].to_string()), "duplicate id {}", v["id"]);
    }
    let records = listed(&d);
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), names);
    for r in &results {
        assert_eq!(records[&r.label], r.json(), "{}", r.label);
    }
    assert_eq!(visible(&root(&d)), names);
    assert_eq!(metadata(&root(&d)), names);
}

#[test]
fn sixteen_creates_of_one_name_with_the_same_parameters_give_one_volume() {
    let d = Berthd::start();
    let results = run_all(
        &d,
        (0..16)
            .map(|i| {
                (
                    format!("same#{i}"),
                    create("shared", &["--size", "2GiB", "--opt", "mode=0750"]),
                )
            })
            .collect(),
    );
    let mut printed = BTreeSet::new();
    for r in &results {
        assert!(r.ok, "{} failed: {}", r.label, r.stderr);
        printed.insert(r.json().to_string());
    }
    assert_eq!(
        printed.len(),
        1,
        "every create must print the same volume (same id): {printed:#?}"
    );
    let records = listed(&d);
    assert_eq!(records.keys().collect::<Vec<_>>(), ["shared"]);
    assert_eq!(records["shared"], results[0].json());
    assert_eq!(visible(&root(&d)), BTreeSet::from(["shared".to_owned()]));
    assert_eq!(metadata(&root(&d)), BTreeSet::from(["shared".to_owned()]));
}

#[test]
fn sixteen_creates_of_one_name_with_different_sizes_have_one_winner() {
    let d = Berthd::start();
    // Four sizes, four processes each.
    let size_of = |i: usize| format!("{}GiB", i % 4 + 1);
    let results = run_all(
        &d,
        (0..16)
            .map(|i| {
                (
                    format!("{i}"),
                    create("contested", &["--size", &size_of(i)]),
                )
            })
            .collect(),
    );
    let records = listed(&d);
    assert_eq!(records.keys().collect::<Vec<_>>(), ["contested"]);
    let winner = &records["contested"];
    let winning_bytes = winner["size_bytes"].as_u64().expect("size_bytes");
    let mut winners = 0;
    for r in &results {
        let i: usize = r.label.parse().expect("label");
        let bytes = (i as u64 % 4 + 1) << 30;
        if bytes == winning_bytes {
            assert!(
                r.ok,
                "create #{i} asked for the winning size but failed: {}",
                r.stderr
            );
            assert_eq!(r.json()["id"], winner["id"], "create #{i}");
            winners += 1;
        } else {
            assert!(
                !r.ok,
                "create #{i} ({}) succeeded against {winning_bytes}",
                size_of(i)
            );
            assert!(
                r.stderr.starts_with("error: already exists"),
                "create #{i}: {}",
                r.stderr
            );
        }
    }
    assert_eq!(winners, 4);
    assert_eq!(visible(&root(&d)), BTreeSet::from(["contested".to_owned()]));
    let meta =
        std::fs::read_to_string(root(&d).join(".berth/volumes/contested")).expect("metadata");
    assert_eq!(meta.trim(), format!("size_bytes={winning_bytes}"));
}

/// Names that differ only after their last dot (`db.1`, `db.2`, ...) are
/// distinct volumes like any others.
#[test]
fn concurrent_creates_of_names_sharing_a_stem_all_succeed() {
    let d = Berthd::start();
    let names: BTreeSet<String> = (1..=16).map(|i| format!("db.{i}")).collect();
    let results = run_all(
        &d,
        names
            .iter()
            .map(|n| {
                let size = n.trim_start_matches("db.").to_owned();
                (n.clone(), create(n, &["--size", &size]))
            })
            .collect(),
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}: {}", r.label, r.stderr.trim()))
        .collect();
    let records = listed(&d);
    // Whatever the clients were told, nothing may be left half-made.
    let orphans: BTreeSet<String> = visible(&root(&d))
        .difference(&records.keys().cloned().collect())
        .cloned()
        .collect();
    let mut wrong_metadata = Vec::new();
    for name in records.keys() {
        let expected = format!("size_bytes={}", name.trim_start_matches("db."));
        let meta = std::fs::read_to_string(root(&d).join(".berth/volumes").join(name))
            .unwrap_or_else(|e| format!("<{e}>"));
        if meta.trim() != expected {
            wrong_metadata.push(format!("{name}: {:?} instead of {expected:?}", meta.trim()));
        }
    }
    assert!(
        failed.is_empty() && orphans.is_empty() && wrong_metadata.is_empty(),
        "failed creates: {failed:#?}\norphan directories: {orphans:?}\nwrong metadata: {wrong_metadata:#?}"
    );
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), names);
    assert_eq!(metadata(&root(&d)), names);
}
