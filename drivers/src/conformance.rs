//! The conformance kit: a standard battery of checks any [`VolumeDriver`]
//! must pass, with a report that names each broken rule.
//!
//! Enable the `conformance` feature in your driver's dev-dependencies and run
//! it from a test:
//!
//! ```no_run
//! # async fn demo(driver: std::sync::Arc<dyn berth_drivers::VolumeDriver>) {
//! let report = berth_drivers::conformance::run(driver).await;
//! report.assert_passed(); // panics with the list of broken rules
//! # }
//! ```
//!
//! The kit creates, snapshots and deletes volumes named `conformance-*`; run
//! it against an empty, throw-away root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::{CreateRequest, DriverError, VolumeDriver, VolumeName};

/// The outcome of one rule.
#[derive(Debug, Clone)]
pub struct Check {
    /// The rule, in words.
    pub rule: &'static str,
    /// `None` if it held; otherwise what went wrong.
    pub failure: Option<String>,
}

/// Every rule's outcome.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The driver's name.
    pub driver: String,
    /// One entry per rule, in the order run.
    pub checks: Vec<Check>,
}

impl Report {
    /// The rules that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.failure.is_some())
    }

    /// Whether every rule held.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// Panics with the readable report if any rule failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        writeln!(
            f,
            "conformance of driver {:?}: {} rules, {} passed, {} failed",
            self.driver,
            self.checks.len(),
            self.checks.len() - failed,
            failed
        )?;
        for c in &self.checks {
            match &c.failure {
                None => writeln!(f, "  ok    {}", c.rule)?,
                Some(why) => writeln!(f, "  FAIL  {}: {why}", c.rule)?,
            }
        }
        Ok(())
    }
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap_or_else(|_| VolumeName::dangerous_unchecked(s))
}

fn request(n: &str, size: u64) -> CreateRequest {
    CreateRequest {
        name: name(n),
        size_bytes: size,
        options: BTreeMap::new(),
    }
}

const MIB: u64 = 1 << 20;

struct Kit {
    driver: Arc<dyn VolumeDriver>,
    report: Report,
}

impl Kit {
    fn record(&mut self, rule: &'static str, result: Result<(), String>) -> bool {
        let ok = result.is_ok();
        self.report.checks.push(Check {
            rule,
            failure: result.err(),
        });
        ok
    }
}

/// Runs every rule against `driver` and reports.
pub async fn run(driver: Arc<dyn VolumeDriver>) -> Report {
    let mut kit = Kit {
        report: Report {
            driver: driver.name().to_owned(),
            checks: Vec::new(),
        },
        driver,
    };
    basics(&mut kit).await;
    idempotency(&mut kit).await;
    bad_names(&mut kit).await;
    impossible_size(&mut kit).await;
    optional(&mut kit).await;
    concurrency(&mut kit).await;
    kit.report
}

async fn basics(kit: &mut Kit) {
    let d = Arc::clone(&kit.driver);
    let req = request("conformance-basic", 4 * MIB);
    let created = d.create(&req).await;
    let ok = kit.record(
        "create returns the volume with the requested name and size",
        match &created {
            Ok(v) if v.name == req.name && v.size_bytes == req.size_bytes => Ok(()),
            Ok(v) => Err(format!(
                "got {:?} of {} bytes",
                v.name.as_str(),
                v.size_bytes
            )),
            Err(e) => Err(format!("create failed: {e}")),
        },
    );
    if !ok {
        return;
    }
    let got = d.get(&req.name).await;
    kit.record(
        "get finds a created volume",
        match got {
            Ok(Some(v)) if v.name == req.name => Ok(()),
            Ok(other) => Err(format!("got {other:?}")),
            Err(e) => Err(e.to_string()),
        },
    );
    let listed = d.list().await;
    kit.record(
        "list includes a created volume",
        match listed {
            Ok(vs) if vs.iter().any(|v| v.name == req.name) => Ok(()),
            Ok(_) => Err("not listed".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    let missing = d.get(&name("conformance-missing")).await;
    kit.record(
        "get of a missing volume is None, not an error",
        match missing {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("found a volume that was never created".into()),
            Err(e) => Err(format!("error {e}")),
        },
    );
    let deleted = d.delete(&req.name).await;
    let after = d.get(&req.name).await;
    kit.record(
        "delete removes the volume",
        match (deleted, after) {
            (Ok(()), Ok(None)) => Ok(()),
            (Err(e), _) => Err(format!("delete failed: {e}")),
            (Ok(()), other) => Err(format!("after delete, get returned {other:?}")),
        },
    );
    let again = d.delete(&req.name).await;
    kit.record(
        "delete of a missing volume is Ok (orchestrators retry)",
        again.map_err(|e| format!("error {e}")),
    );
}

async fn idempotency(kit: &mut Kit) {
    let d = Arc::clone(&kit.driver);
    let req = request("conformance-idem", 4 * MIB);
    let first = d.create(&req).await;
    let second = d.create(&req).await;
    kit.record(
        "create again with the same parameters returns the same volume",
        match (&first, &second) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (Ok(a), Ok(b)) => Err(format!("first {a:?}, then {b:?}")),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        },
    );
    let conflicting = d.create(&request("conformance-idem", 8 * MIB)).await;
    kit.record(
        "create again with a different size is AlreadyExists",
        match conflicting {
            Err(DriverError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(format!("wrong error: {e:?}")),
            Ok(v) => Err(format!("it succeeded with {} bytes", v.size_bytes)),
        },
    );
    let _ = d.delete(&req.name).await;
}

async fn bad_names(kit: &mut Kit) {
    let d = Arc::clone(&kit.driver);
    let mut escaped = Vec::new();
    for bad in [
        "../conformance-escape",
        "conformance/../../x",
        "/tmp/conformance-abs",
        ".",
        "..",
    ] {
        let req = CreateRequest {
            name: VolumeName::dangerous_unchecked(bad),
            size_bytes: 4 * MIB,
            options: BTreeMap::new(),
        };
        if let Ok(v) = d.create(&req).await {
            escaped.push(format!("{bad:?} was created ({:?})", v.fields));
            let _ = d.delete(&req.name).await;
        }
    }
    kit.record(
        "names that would leave the driver's storage are refused (second wall)",
        if escaped.is_empty() {
            Ok(())
        } else {
            Err(escaped.join("; "))
        },
    );
}

async fn impossible_size(kit: &mut Kit) {
    let d = Arc::clone(&kit.driver);
    let req = request("conformance-huge", u64::MAX);
    let result = d.create(&req).await;
    let listed = d.list().await.map(|l| l.iter().any(|v| v.name == req.name));
    kit.record(
        "a size no storage holds (2^64 - 1 bytes) is OutOfRange or InvalidArgument and creates nothing",
        match (result, listed) {
            (Err(DriverError::OutOfRange(_) | DriverError::InvalidArgument(_)), Ok(false)) => {
                Ok(())
            }
            (Err(DriverError::OutOfRange(_) | DriverError::InvalidArgument(_)), _) => {
                Err("refused, but a volume is listed".into())
            }
            (Err(e), _) => Err(format!("wrong error: {e:?}")),
            (Ok(v), _) => Err(format!("it succeeded with {} bytes", v.size_bytes)),
        },
    );
    let _ = d.delete(&req.name).await;
}

async fn optional(kit: &mut Kit) {
    let d = Arc::clone(&kit.driver);
    let caps = d.capabilities();
    let vol = request("conformance-opt", 4 * MIB);
    if d.create(&vol).await.is_err() {
        kit.record(
            "optional operations can be exercised",
            Err("could not create a volume".into()),
        );
        return;
    }
    if caps.attach {
        let a = d.attach(&vol.name, "conformance-node").await;
        let b = d.attach(&vol.name, "conformance-node").await;
        kit.record(
            "attach answers how to reach the volume, the same again for the same instance",
            match (a, b) {
                (Ok(a), Ok(b)) if !a.device.is_empty() && a == b => Ok(()),
                (Ok(a), Ok(b)) => Err(format!("{a:?} then {b:?}")),
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            },
        );
        let one = d.detach(&vol.name, "conformance-node").await;
        let two = d.detach(&vol.name, "conformance-node").await;
        kit.record(
            "detach works, and again is Ok",
            one.and(two).map_err(|e| e.to_string()),
        );
        let missing = d
            .attach(&name("conformance-nothing"), "conformance-node")
            .await;
        kit.record(
            "attach of a missing volume is NotFound",
            match missing {
                Err(DriverError::NotFound(_)) => Ok(()),
                other => Err(format!("got {other:?}")),
            },
        );
    } else {
        let r = d.attach(&vol.name, "conformance-node").await;
        kit.record(
            "attach undeclared in capabilities is Unsupported",
            match r {
                Err(DriverError::Unsupported { .. }) => Ok(()),
                other => Err(format!("got {other:?}")),
            },
        );
    }
    let snap = name("conformance-snap");
    if caps.snapshot {
        let s = d.create_snapshot(&vol.name, &snap).await;
        let again = d.create_snapshot(&vol.name, &snap).await;
        kit.record(
            "a snapshot is created, and again returns it",
            match (s, again) {
                (Ok(a), Ok(b)) if a == b && a.volume == vol.name => Ok(()),
                (Ok(a), Ok(b)) => Err(format!("{a:?} then {b:?}")),
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            },
        );
        let listed = d.list_snapshots().await;
        kit.record(
            "list_snapshots includes it",
            match listed {
                Ok(l) if l.iter().any(|s| s.name == snap) => Ok(()),
                Ok(_) => Err("not listed".into()),
                Err(e) => Err(e.to_string()),
            },
        );
        let missing = d
            .create_snapshot(&name("conformance-nothing"), &name("conformance-snap2"))
            .await;
        kit.record(
            "a snapshot of a missing volume is NotFound",
            match missing {
                Err(DriverError::NotFound(_)) => Ok(()),
                other => Err(format!("got {other:?}")),
            },
        );
        if caps.create_from_snapshot {
            let restored = request("conformance-restored", 4 * MIB);
            let r = d.create_from_snapshot(&snap, &restored).await;
            kit.record(
                "create_from_snapshot makes a new volume",
                match r {
                    Ok(v) if v.name == restored.name => Ok(()),
                    Ok(v) => Err(format!("got {v:?}")),
                    Err(e) => Err(e.to_string()),
                },
            );
            let _ = d.delete(&restored.name).await;
        }
        let del = d.delete_snapshot(&snap).await;
        let del2 = d.delete_snapshot(&snap).await;
        let gone = d
            .list_snapshots()
            .await
            .map(|l| l.iter().all(|s| s.name != snap));
        kit.record(
            "delete_snapshot removes it, and again is Ok",
            match (del, del2, gone) {
                (Ok(()), Ok(()), Ok(true)) => Ok(()),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e.to_string()),
                _ => Err("still listed".into()),
            },
        );
    } else {
        let r = d.create_snapshot(&vol.name, &snap).await;
        kit.record(
            "snapshots undeclared in capabilities are Unsupported",
            match r {
                Err(DriverError::Unsupported { .. }) => Ok(()),
                other => Err(format!("got {other:?}")),
            },
        );
    }
    if caps.copy {
        let copy = request("conformance-copy", 4 * MIB);
        let r = d.copy(&vol.name, &copy).await;
        kit.record(
            "copy makes a new volume",
            match r {
                Ok(v) if v.name == copy.name => Ok(()),
                Ok(v) => Err(format!("got {v:?}")),
                Err(e) => Err(e.to_string()),
            },
        );
        let _ = d.delete(&copy.name).await;
    }
    let _ = d.delete(&vol.name).await;
}

async fn concurrency(kit: &mut Kit) {
    let d = Arc::clone(&kit.driver);
    let names: Vec<String> = (0..16).map(|i| format!("conformance-par-{i}")).collect();
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let (d, req) = (Arc::clone(&d), request(n, 4 * MIB));
            tokio::spawn(async move { d.create(&req).await })
        })
        .collect();
    let lister = {
        let d = Arc::clone(&d);
        tokio::spawn(async move { d.list().await })
    };
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(format!("task panicked: {e}")),
        }
    }
    if let Ok(Err(e)) = lister.await {
        errors.push(format!("list during creates failed: {e}"));
    }
    let listed: BTreeSet<String> = d
        .list()
        .await
        .map(|l| l.into_iter().map(|v| v.name.to_string()).collect())
        .unwrap_or_default();
    let missing: Vec<_> = names.iter().filter(|n| !listed.contains(*n)).collect();
    if !missing.is_empty() {
        errors.push(format!("not listed after concurrent creates: {missing:?}"));
    }
    kit.record(
        "16 concurrent creates of different names all succeed and are listed",
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        },
    );
    let deletes: Vec<_> = names
        .iter()
        .map(|n| {
            let (d, n) = (Arc::clone(&d), name(n));
            tokio::spawn(async move { d.delete(&n).await })
        })
        .collect();
    let mut errors = Vec::new();
    for t in deletes {
        if let Ok(Err(e)) = t.await {
            errors.push(e.to_string());
        }
    }
    let left = d.list().await.map(|l| l.len()).unwrap_or(usize::MAX);
    if left != 0 {
        errors.push(format!("{left} volumes left after deleting all"));
    }
    kit.record(
        "concurrent deletes all succeed and leave nothing",
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        },
    );
}
