//! Kills at chosen moments: `berthd` is stopped by `strace` right after one
//! of the `vfs` driver's changes (the system call that made it has
//! returned), so the driver has changed the disk and the controller has
//! not acknowledged anything, and is then killed with SIGKILL. After each
//! restart the interrupted volume is all or nothing (record, directory and
//! metadata together) and, as the README promises, an interrupted create
//! is undone and an interrupted remove finished; every acknowledged volume
//! is unchanged. Four moments, three rounds each.
//!
//! Needs root (to trace the controller) and `strace`: skipped with one line
//! without them, unless `BERTH_REQUIRE_DOCKER=1` (as CI sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_tests::node::{can_run, is_root, tool_exists};
use berth_tests::{listed, vfs_metadata, vfs_root, volume_dirs, Berthd};
use serde_json::Value;

const ROUNDS: usize = 3;
/// Bound on waiting for strace to attach and for a stalled call to reach
/// its moment.
const BOUND: Duration = Duration::from_secs(20);

/// A moment in one operation: the operation, the driver's system call
/// after which the controller is stalled, and how the test sees on disk
/// that the call has returned.
struct Moment {
    what: &'static str,
    op: &'static str,
    syscall: &'static str,
    reached: fn(&Path, &str) -> bool,
}

const MOMENTS: [Moment; 4] = [
    Moment {
        what: "create: volume directory made, no metadata yet",
        op: "create",
        syscall: "mkdir",
        reached: |root, name| root.join(name).is_dir(),
    },
    Moment {
        what: "create: metadata in place, the driver's change complete",
        op: "create",
        syscall: "rename",
        reached: |root, name| root.join(".berth/volumes").join(name).is_file(),
    },
    Moment {
        what: "remove: volume directory moved to the trash",
        op: "remove",
        syscall: "rename",
        reached: |root, name| !root.join(name).exists(),
    },
    Moment {
        what: "remove: metadata gone, the driver's change complete",
        op: "remove",
        syscall: "unlink",
        reached: |root, name| !root.join(".berth/volumes").join(name).exists(),
    },
];

/// `strace` attached to the controller, holding every thread that returns
/// from `syscall` for a minute (the test kills the controller long before).
struct Stall(Child);

impl Stall {
    fn arm(pid: u32, syscall: &str) -> Self {
        let mut child = Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-p", &pid.to_string()])
            .arg(format!("--trace={syscall}"))
            .arg(format!("--inject={syscall}:delay_exit=60s"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strace");
        let stderr = child.stderr.take().expect("strace stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("attached") {
                    let _ = tx.send(());
                }
            }
        });
        let stall = Self(child);
        rx.recv_timeout(BOUND)
            .expect("strace did not attach to the controller");
        stall
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Records, volume directories and driver metadata name the same volumes.
#[track_caller]
fn assert_consistent(root: &Path, records: &BTreeMap<String, Value>) {
    let names: BTreeSet<String> = records.keys().cloned().collect();
    assert_eq!(volume_dirs(root), names, "volume directories vs records");
    assert_eq!(vfs_metadata(root), names, "driver metadata vs records");
}

#[test]
fn a_kill_between_the_drivers_change_and_the_acknowledgement_loses_nothing() {
    let why = if !is_root() {
        Some("tracing the controller needs root".to_owned())
    } else if !tool_exists("strace") {
        Some("strace is not installed".to_owned())
    } else {
        None
    };
    if !can_run("crash_points", why) {
        return;
    }
    let mut d = Berthd::start();
    let root: PathBuf = vfs_root(&d);
    // Acknowledged volumes that every crash must leave exactly as they are.
    for name in ["keep-a", "keep-b"] {
        d.berth(&["volume", "create", name, "--size", "1MiB"])
            .success();
    }
    let kept = listed(&d);

    for round in 0..ROUNDS {
        for m in &MOMENTS {
            let name = format!("moment-{round}");
            if m.op == "remove" && !listed(&d).contains_key(&name) {
                d.berth(&["volume", "create", &name]).success();
            }
            let stall = Stall::arm(d.pid(), m.syscall);
            let mut call = d.spawn_berth(&["volume", m.op, &name]);
            wait_for(m.what, || (m.reached)(&root, &name));
            // SIGKILL is queued while strace holds the thread; it takes
            // effect the moment strace lets go, before the call returns.
            d.signal("KILL");
            drop(stall);
            d.kill9();
            let status = call.wait().expect("wait for berth");
            assert!(
                !status.success(),
                "{}: the call was acknowledged although the controller was stalled",
                m.what
            );

            d.restart();
            let records = listed(&d);
            assert!(
                !records.contains_key(&name),
                "{} (round {round}): the interrupted {} left a record: {:?}",
                m.what,
                m.op,
                records.get(&name)
            );
            assert_consistent(&root, &records);
            for (k, v) in &kept {
                assert_eq!(records.get(k), Some(v), "{}: {k} changed", m.what);
            }
            // The name is usable again.
            d.berth(&["volume", "create", &name]).success();
            d.berth(&["volume", "remove", &name]).success();
        }
    }
    assert_consistent(&root, &listed(&d));
}
