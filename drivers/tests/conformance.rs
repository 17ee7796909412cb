//! The built-in drivers pass the conformance kit; a deliberately broken
//! driver fails it with a report that names each broken rule.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_drivers::{
    async_trait, conformance, CreateRequest, DriverResult, DriverVolume, VolumeDriver, VolumeName,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfs_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = berth_drivers::vfs::VfsDriver::open(dir.path().join("root")).expect("open");
    let report = conformance::run(Arc::new(driver)).await;
    report.assert_passed();
    // The second wall held: nothing appeared next to the root.
    let mut outside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    outside.sort();
    assert_eq!(outside, vec![std::ffi::OsString::from("root")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = berth_drivers::image::ImageDriver::open(
        dir.path().join("root"),
        berth_drivers::image::Format::Raw,
    )
    .expect("open");
    conformance::run(Arc::new(driver)).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_qcow2_passes_when_qemu_img_is_installed() {
    if !berth_drivers::image::qemu_img_available() {
        eprintln!("qemu-img is not installed; the qcow2 format is not exercised");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = berth_drivers::image::ImageDriver::open(
        dir.path().join("root"),
        berth_drivers::image::Format::Qcow2,
    )
    .expect("open");
    conformance::run(Arc::new(driver)).await.assert_passed();
}

/// Breaks three rules on purpose: create is not idempotent, delete of a
/// missing volume fails, and paths are not checked.
#[derive(Default)]
struct Broken {
    volumes: Mutex<BTreeMap<String, u64>>,
}

#[async_trait]
impl VolumeDriver for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let mut v = self.volumes.lock().expect("lock");
        if v.contains_key(request.name.as_str()) {
            return Err(berth_drivers::DriverError::AlreadyExists("exists".into()));
        }
        v.insert(request.name.to_string(), request.size_bytes);
        Ok(DriverVolume {
            name: request.name.clone(),
            size_bytes: request.size_bytes,
            fields: BTreeMap::new(),
        })
    }

    async fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        match self.volumes.lock().expect("lock").remove(name.as_str()) {
            Some(_) => Ok(()),
            None => Err(berth_drivers::DriverError::NotFound(format!(
                "volume {name}"
            ))),
        }
    }

    async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
        Ok(self
            .volumes
            .lock()
            .expect("lock")
            .get(name.as_str())
            .map(|s| DriverVolume {
                name: name.clone(),
                size_bytes: *s,
                fields: BTreeMap::new(),
            }))
    }

    async fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        Ok(self
            .volumes
            .lock()
            .expect("lock")
            .iter()
            .map(|(n, s)| DriverVolume {
                name: VolumeName::dangerous_unchecked(n),
                size_bytes: *s,
                fields: BTreeMap::new(),
            })
            .collect())
    }
}

#[tokio::test]
async fn a_broken_driver_fails_with_a_readable_report() {
    let report = conformance::run(Arc::new(Broken::default())).await;
    assert!(!report.passed());
    let failed: Vec<&str> = report.failures().map(|c| c.rule).collect();
    for rule in [
        "delete of a missing volume is Ok (orchestrators retry)",
        "create again with the same parameters returns the same volume",
        "names that would leave the driver's storage are refused (second wall)",
    ] {
        assert!(
            failed.contains(&rule),
            "{rule:?} should fail; report:\n{report}"
        );
    }
    // Rules it keeps are not blamed.
    assert!(!failed.contains(&"get finds a created volume"), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("FAIL  delete of a missing volume is Ok"),
        "{text}"
    );
    assert!(text.contains("conformance of driver \"broken\""), "{text}");
}
