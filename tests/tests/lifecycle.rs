//! The rest of a volume's life through the real `berth` and `berthd`, for
//! both file-based drivers (`vfs` directories and `image` files): attach and
//! detach (idempotent, exclusive, forced, the default instance), removal of
//! attached volumes, snapshots (point in time, idempotent, protecting their
//! volume), restore and copy, sparse raw images, qcow2 through `qemu-img`,
//! and a snapshot surviving `kill -9`.
//!
//! Every scenario is written once, against a [`Svc`] that knows where its
//! driver keeps a volume's bytes, and run for both services of one
//! configuration. Every refused operation is checked to change nothing: the
//! entries of the service root and of its hidden metadata directories, the
//! volume list and the snapshot list are compared before and after.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::{bin, entries, home_env, Berthd, Run};
use serde_json::Value;

/// What a volume holds before its snapshot is taken.
const A: &str = "content A: written before the snapshot";
/// What it holds afterwards (the same length, so an image read covers both).
const B: &str = "content B: written after the snapshot!";
const _: () = assert!(A.len() == B.len());
/// Where the image scenarios write inside an image file.
const OFFSET: u64 = 3 << 20;
/// The size of the image volumes of the shared scenarios.
const IMAGE_SIZE: &str = "16MiB";
/// The file the vfs scenarios write inside a volume directory.
const VFS_FILE: &str = "data.txt";

/// Which driver a service runs, and so where a volume's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Vfs,
    Image,
}

/// A controller serving `fs` (vfs) and `img` (raw image), and the temporary
/// directory holding its configuration and both roots. `d` is declared
/// first so the controller is killed before the directory goes.
struct Lab {
    d: Berthd,
    work: tempfile::TempDir,
}

impl Lab {
    fn start() -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let d = Berthd::start_fs_and_img(work.path(), "");
        Self { d, work }
    }

    fn svc(&self, driver: Driver) -> Svc<'_> {
        let name = match driver {
            Driver::Vfs => "fs",
            Driver::Image => "img",
        };
        Svc {
            d: &self.d,
            name,
            root: self.work.path().join(name),
            driver,
        }
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// One service of a [`Lab`], and how to reach its volumes' bytes.
struct Svc<'a> {
    d: &'a Berthd,
    name: &'static str,
    root: PathBuf,
    driver: Driver,
}

/// Everything a refused operation must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    root: Vec<String>,
    meta: Vec<String>,
    snapshots: Vec<String>,
    snapshot_meta: Vec<String>,
    volumes: Value,
    snapshot_list: Value,
}

impl Svc<'_> {
    /// `berth ARGS -s SERVICE`.
    fn berth(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["-s", self.name]);
        self.d.berth(&all)
    }

    /// Creates an (empty) volume, with a size where the driver needs one.
    fn create(&self, volume: &str) -> Value {
        match self.driver {
            Driver::Vfs => self.berth(&["volume", "create", volume, "-o", "json"]),
            Driver::Image => self.berth(&[
                "volume", "create", volume, "--size", IMAGE_SIZE, "-o", "json",
            ]),
        }
        .json()
    }

    /// Where the driver keeps a volume (the device attach returns).
    fn device(&self, volume: &str) -> PathBuf {
        match self.driver {
            Driver::Vfs => self.root.join(volume),
            Driver::Image => self.root.join(format!("{volume}.img")),
        }
    }

    /// Where the driver keeps a snapshot's data.
    fn snapshot_data(&self, snapshot: &str) -> PathBuf {
        let dir = self.root.join(".berth").join("snapshots");
        match self.driver {
            Driver::Vfs => dir.join(snapshot),
            Driver::Image => dir.join(format!("{snapshot}.img")),
        }
    }

    /// Writes `content` into the volume as a user of its device would.
    fn write(&self, volume: &str, content: &str) {
        let device = self.device(volume);
        match self.driver {
            Driver::Vfs => {
                fs::write(device.join(VFS_FILE), content).expect("write into the volume")
            }
            Driver::Image => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(&device)
                    .unwrap_or_else(|e| panic!("open {}: {e}", device.display()));
                f.seek(SeekFrom::Start(OFFSET)).expect("seek");
                f.write_all(content.as_bytes())
                    .expect("write into the image");
                f.sync_all().expect("sync the image");
            }
        }
    }

    /// What [`Svc::write`] wrote into a volume.
    fn read(&self, volume: &str) -> String {
        self.read_at(&self.device(volume))
    }

    /// The content at a volume's or a snapshot's data location.
    fn read_at(&self, data: &Path) -> String {
        match self.driver {
            Driver::Vfs => fs::read_to_string(data.join(VFS_FILE))
                .unwrap_or_else(|e| panic!("read {}/{VFS_FILE}: {e}", data.display())),
            Driver::Image => {
                let mut f =
                    fs::File::open(data).unwrap_or_else(|e| panic!("open {}: {e}", data.display()));
                f.seek(SeekFrom::Start(OFFSET)).expect("seek");
                let mut buf = vec![0; A.len()];
                f.read_exact(&mut buf).expect("read the image");
                String::from_utf8_lossy(&buf).into_owned()
            }
        }
    }

    fn state(&self) -> State {
        let hidden = self.root.join(".berth");
        State {
            root: entries(&self.root),
            meta: entries(&hidden.join("volumes")),
            snapshots: entries(&hidden.join("snapshots")),
            snapshot_meta: entries(&hidden.join("snapshot-meta")),
            volumes: self.berth(&["volume", "list", "-o", "json"]).json(),
            snapshot_list: self.berth(&["snapshot", "list", "-o", "json"]).json(),
        }
    }

    /// Names of the service's volumes (`volume list` with extra flags).
    fn names(&self, flags: &[&str]) -> Vec<String> {
        let mut args = vec!["volume", "list", "-o", "json"];
        args.extend(flags);
        names(&self.berth(&args).json())
    }

    fn inspect(&self, volume: &str) -> Value {
        self.berth(&["volume", "inspect", volume, "-o", "json"])
            .json()
    }
}

/// The `name` of every object of a JSON array.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {list}"))
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Asserts a refusal `error: <code>: ...` that mentions every `word`.
#[track_caller]
fn refused(run: Run, code: &str, words: &[&str]) -> String {
    let err = run.failure();
    assert!(
        err.starts_with(&format!("error: {code}: ")),
        "expected `error: {code}: ...`, got: {err}"
    );
    for word in words {
        assert!(err.contains(word), "the error should name {word:?}: {err}");
    }
    err
}

/// Runs `op`, which must be refused with `code` naming `words`, and checks
/// it changed nothing.
#[track_caller]
fn refused_unchanged(svc: &Svc, what: &str, code: &str, words: &[&str], op: impl FnOnce() -> Run) {
    let before = svc.state();
    refused(op(), code, words);
    assert_eq!(
        svc.state(),
        before,
        "{what} was refused but changed something"
    );
}

/// Bytes the filesystem allocated for a file.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .blocks()
        * 512
}

// --- attach ------------------------------------------------------------------

fn attach_scenario(svc: &Svc) {
    svc.create("vol");
    svc.create("spare");
    svc.write("vol", A);
    let device = s(&svc.device("vol")).to_owned();

    let table = svc
        .berth(&["volume", "attach", "vol", "--instance", "n1"])
        .success();
    assert!(
        table.contains(&format!("attached volume vol to n1: {device}")),
        "{table}"
    );
    // The device is where the data is.
    assert_eq!(svc.read_at(Path::new(&device)), A);

    for _ in 0..2 {
        let again = svc
            .berth(&["volume", "attach", "vol", "--instance", "n1", "-o", "json"])
            .json();
        assert_eq!(again["device"], device.as_str(), "{again}");
        assert_eq!(again["instance"], "n1", "{again}");
        assert_eq!(again["volume"]["name"], "vol", "{again}");
        assert_eq!(again["volume"]["status"], "attached", "{again}");
        let attachments = again["volume"]["attachments"].as_array().expect("array");
        assert_eq!(
            attachments.len(),
            1,
            "attaching again must not add one: {again}"
        );
    }

    refused_unchanged(
        svc,
        "attach to a second instance",
        "failed precondition",
        &["vol", "n1"],
        || svc.berth(&["volume", "attach", "vol", "--instance", "n2"]),
    );

    assert_eq!(svc.names(&["--attached"]), ["vol"]);
    assert_eq!(svc.names(&["--available"]), ["spare"]);
    let table = svc.berth(&["volume", "list", "--attached"]).success();
    assert!(
        table.contains("vol") && table.contains("attached"),
        "{table}"
    );
    assert!(!table.contains("spare"), "{table}");

    let inspected = svc.inspect("vol");
    assert_eq!(inspected["status"], "attached", "{inspected}");
    let attachments = inspected["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1, "{inspected}");
    assert_eq!(attachments[0]["instance"], "n1", "{inspected}");
    assert_eq!(attachments[0]["device"], device.as_str(), "{inspected}");
    assert_eq!(svc.inspect("spare")["status"], "available");
    let table = svc.berth(&["volume", "inspect", "vol"]).success();
    assert!(table.contains(&format!("n1 at {device}")), "{table}");
}

#[test]
fn vfs_attach_is_idempotent_and_exclusive() {
    let lab = Lab::start();
    attach_scenario(&lab.svc(Driver::Vfs));
}

#[test]
fn image_attach_is_idempotent_and_exclusive() {
    let lab = Lab::start();
    attach_scenario(&lab.svc(Driver::Image));
}

// --- detach and remove -----------------------------------------------------------

fn detach_remove_scenario(svc: &Svc) {
    svc.create("vol");
    svc.write("vol", A);
    svc.berth(&["volume", "attach", "vol", "--instance", "n1"])
        .success();

    refused_unchanged(
        svc,
        "removing an attached volume",
        "failed precondition",
        &["vol", "n1"],
        || svc.berth(&["volume", "remove", "vol"]),
    );
    assert_eq!(svc.read("vol"), A, "a refused remove must keep the data");
    assert_eq!(svc.inspect("vol")["status"], "attached");

    refused_unchanged(
        svc,
        "detaching from a non-holder",
        "failed precondition",
        &["n1", "n2"],
        || svc.berth(&["volume", "detach", "vol", "--instance", "n2"]),
    );
    assert_eq!(svc.inspect("vol")["attachments"][0]["instance"], "n1");

    let out = svc
        .berth(&["volume", "detach", "vol", "--instance", "n1"])
        .success();
    assert!(out.contains("volume vol is attached to nothing"), "{out}");
    let inspected = svc.inspect("vol");
    assert_eq!(inspected["status"], "available", "{inspected}");
    assert_eq!(
        inspected["attachments"],
        serde_json::json!([]),
        "{inspected}"
    );

    // Detaching what is not attached is done already.
    let again = svc
        .berth(&["volume", "detach", "vol", "--instance", "n1", "-o", "json"])
        .json();
    assert_eq!(again["status"], "available", "{again}");
    assert_eq!(svc.read("vol"), A);

    // --force detaches whoever holds it, whatever instance is named.
    svc.berth(&["volume", "attach", "vol", "--instance", "n2"])
        .success();
    let forced = svc
        .berth(&["volume", "detach", "vol", "--force", "-o", "json"])
        .json();
    assert_eq!(forced["status"], "available", "{forced}");
    assert_eq!(svc.names(&["--attached"]), Vec::<String>::new());
    assert_eq!(svc.names(&["--available"]), ["vol"]);

    // remove --force detaches, then removes the volume and its data.
    svc.berth(&["volume", "attach", "vol", "--instance", "n1"])
        .success();
    let out = svc.berth(&["volume", "remove", "vol", "--force"]).success();
    assert!(out.contains("removed volume vol"), "{out}");
    assert!(!svc.device("vol").exists(), "the data must be gone");
    assert!(!entries(&svc.root.join(".berth/volumes")).contains(&"vol".to_owned()));
    assert_eq!(svc.names(&[]), Vec::<String>::new());
    refused(
        svc.berth(&["volume", "inspect", "vol"]),
        "not found",
        &["vol"],
    );
}

#[test]
fn vfs_detach_and_remove_of_attached_volumes() {
    let lab = Lab::start();
    detach_remove_scenario(&lab.svc(Driver::Vfs));
}

#[test]
fn image_detach_and_remove_of_attached_volumes() {
    let lab = Lab::start();
    detach_remove_scenario(&lab.svc(Driver::Image));
}

// --- the default instance ------------------------------------------------------

fn this_host() -> String {
    let out = Command::new("hostname").output().expect("run hostname");
    assert!(out.status.success(), "hostname failed");
    String::from_utf8(out.stdout)
        .expect("UTF-8 host name")
        .trim()
        .to_owned()
}

fn default_instance_scenario(svc: &Svc) {
    let host = this_host();
    assert!(!host.is_empty());
    svc.create("x");
    let attached = svc.berth(&["volume", "attach", "x", "-o", "json"]).json();
    assert_eq!(attached["instance"], host.as_str(), "{attached}");
    assert_eq!(attached["device"], s(&svc.device("x")), "{attached}");
    assert_eq!(
        svc.inspect("x")["attachments"][0]["instance"],
        host.as_str()
    );
    // Detach without --instance means this host too.
    let detached = svc.berth(&["volume", "detach", "x", "-o", "json"]).json();
    assert_eq!(detached["status"], "available", "{detached}");
}

#[test]
fn vfs_default_instance_is_the_host_name() {
    let lab = Lab::start();
    default_instance_scenario(&lab.svc(Driver::Vfs));
}

#[test]
fn image_default_instance_is_the_host_name() {
    let lab = Lab::start();
    default_instance_scenario(&lab.svc(Driver::Image));
}

// --- snapshots, restore, copy ----------------------------------------------------

fn snapshot_scenario(svc: &Svc) {
    svc.create("vol");
    svc.create("other");
    svc.write("vol", A);
    let snap = svc
        .berth(&["snapshot", "create", "vol", "s1", "-o", "json"])
        .json();
    assert_eq!(snap["name"], "s1", "{snap}");
    assert_eq!(snap["volume"], "vol", "{snap}");
    assert_eq!(snap["service"], svc.name, "{snap}");
    let id = snap["id"].as_str().expect("id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(svc.read_at(&svc.snapshot_data("s1")), A);
    svc.write("vol", B);
    assert_eq!(
        svc.read_at(&svc.snapshot_data("s1")),
        A,
        "a snapshot is a copy"
    );

    let restored = svc
        .berth(&[
            "volume",
            "create",
            "r",
            "--from-snapshot",
            "s1",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(restored["source"], "snapshot:s1", "{restored}");
    assert_eq!(svc.read("r"), A, "a restore holds the snapshot's content");

    let copy = svc
        .berth(&["volume", "copy", "vol", "c", "-o", "json"])
        .json();
    assert_eq!(copy["source"], "volume:vol", "{copy}");
    assert_eq!(
        svc.read("c"),
        B,
        "a copy holds the volume's current content"
    );

    if svc.driver == Driver::Image {
        for path in [svc.snapshot_data("s1"), svc.device("r"), svc.device("c")] {
            assert_eq!(fs::metadata(&path).expect("stat").len(), 16 << 20);
            assert!(
                allocated(&path) < 1 << 20,
                "{} is not sparse: {} bytes allocated",
                path.display(),
                allocated(&path)
            );
        }
    }

    // Idempotent: the same snapshot of the same volume.
    let again = svc
        .berth(&["snapshot", "create", "vol", "s1", "-o", "json"])
        .json();
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(
        svc.read_at(&svc.snapshot_data("s1")),
        A,
        "taking it again must not retake it"
    );

    refused_unchanged(
        svc,
        "the same snapshot name for another volume",
        "already exists",
        &["s1"],
        || svc.berth(&["snapshot", "create", "other", "s1"]),
    );

    let all = svc.d.berth(&["snapshot", "list", "-o", "json"]).json();
    assert_eq!(names(&all), ["s1"], "{all}");
    assert_eq!(all[0]["volume"], "vol", "{all}");
    let of_vol = svc.berth(&["snapshot", "list", "vol", "-o", "json"]).json();
    assert_eq!(names(&of_vol), ["s1"], "{of_vol}");
    let of_other = svc
        .berth(&["snapshot", "list", "other", "-o", "json"])
        .json();
    assert_eq!(names(&of_other), Vec::<String>::new(), "{of_other}");
    let table = svc.d.berth(&["snapshot", "list"]).success();
    assert!(table.contains("s1") && table.contains("vol"), "{table}");
    let inspected = svc
        .berth(&["snapshot", "inspect", "s1", "-o", "json"])
        .json();
    assert_eq!(inspected["volume"], "vol", "{inspected}");
    assert_eq!(inspected["id"], id.as_str(), "{inspected}");

    // A volume with snapshots stays, even forced.
    for force in [&[][..], &["--force"][..]] {
        refused_unchanged(
            svc,
            "removing a volume with snapshots",
            "failed precondition",
            &["vol", "s1"],
            || {
                let mut args = vec!["volume", "remove", "vol"];
                args.extend(force);
                svc.berth(&args)
            },
        );
        assert_eq!(svc.read("vol"), B);
    }

    svc.berth(&["snapshot", "remove", "s1"]).success();
    assert!(
        !svc.snapshot_data("s1").exists(),
        "the snapshot's data must go"
    );
    svc.berth(&["volume", "remove", "vol"]).success();
    assert!(!svc.device("vol").exists());
    refused(
        svc.berth(&["snapshot", "inspect", "s1"]),
        "not found",
        &["s1"],
    );
    assert_eq!(svc.read("r"), A, "a restored volume outlives its snapshot");

    for missing in ["s1", "never"] {
        refused_unchanged(
            svc,
            "creating from a missing snapshot",
            "not found",
            &[missing],
            || svc.berth(&["volume", "create", "z", "--from-snapshot", missing]),
        );
        assert!(!svc.device("z").exists());
    }
    let mut left = svc.names(&[]);
    left.sort();
    assert_eq!(left, ["c", "other", "r"]);
}

#[test]
fn vfs_snapshots_restore_and_copy() {
    let lab = Lab::start();
    snapshot_scenario(&lab.svc(Driver::Vfs));
}

#[test]
fn image_snapshots_restore_and_copy() {
    let lab = Lab::start();
    snapshot_scenario(&lab.svc(Driver::Image));
}

// --- image specifics -------------------------------------------------------------

#[test]
fn image_volumes_need_a_size_and_are_sparse() {
    let lab = Lab::start();
    let svc = lab.svc(Driver::Image);

    refused_unchanged(
        &svc,
        "an image without a size",
        "invalid argument",
        &["size"],
        || svc.berth(&["volume", "create", "d"]),
    );
    assert!(!svc.device("d").exists());

    let gib = 1u64 << 30;
    let created = svc
        .berth(&["volume", "create", "d", "--size", "1GiB", "-o", "json"])
        .json();
    assert_eq!(created["size_bytes"], gib, "{created}");
    assert_eq!(created["fields"]["path"], s(&svc.device("d")), "{created}");
    assert_eq!(created["fields"]["format"], "raw", "{created}");
    let path = svc.device("d");
    assert_eq!(fs::metadata(&path).expect("stat").len(), gib);
    assert!(
        allocated(&path) < 1 << 20,
        "a new image must be sparse: {} bytes allocated",
        allocated(&path)
    );

    svc.write("d", A);
    svc.berth(&["snapshot", "create", "d", "s"]).success();
    svc.berth(&["volume", "create", "r", "--from-snapshot", "s"])
        .success();
    svc.berth(&["volume", "copy", "d", "c"]).success();
    for (what, path) in [
        ("the snapshot", svc.snapshot_data("s")),
        ("the restored volume", svc.device("r")),
        ("the copy", svc.device("c")),
    ] {
        assert_eq!(fs::metadata(&path).expect("stat").len(), gib, "{what}");
        assert!(
            allocated(&path) < 1 << 20,
            "{what} must stay sparse: {} bytes allocated",
            allocated(&path)
        );
        assert_eq!(svc.read_at(&path), A, "{what}");
    }
    assert_eq!(svc.inspect("r")["size_bytes"], gib);
}

#[test]
fn image_restore_into_a_larger_size_has_that_size() {
    let lab = Lab::start();
    let svc = lab.svc(Driver::Image);
    svc.create("vol");
    svc.write("vol", A);
    svc.berth(&["snapshot", "create", "vol", "s"]).success();
    let restored = svc
        .berth(&[
            "volume",
            "create",
            "big",
            "--from-snapshot",
            "s",
            "--size",
            "32MiB",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(restored["size_bytes"], 32u64 << 20, "{restored}");
    let path = svc.device("big");
    assert_eq!(
        fs::metadata(&path).expect("stat").len(),
        32 << 20,
        "the image of a volume recorded as 32 MiB must be 32 MiB long"
    );
    assert_eq!(svc.read("big"), A);
    assert!(allocated(&path) < 1 << 20, "it must stay sparse");
}

fn qemu_img_installed() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A configuration with one qcow2 image service `q` rooted at `root`.
fn qcow2_config(work: &Path, root: &Path) -> PathBuf {
    let config = work.join("qcow2.toml");
    fs::write(
        &config,
        format!(
            "[[services]]\nname = \"q\"\ndriver = \"image\"\n\
             [services.options]\nroot = {:?}\nformat = \"qcow2\"\n",
            s(root)
        ),
    )
    .expect("write config");
    config
}

/// Runs `berthd --config CONFIG` with `path` as `PATH` (or the inherited
/// one) and expects it to refuse to start; returns its stderr.
fn berthd_refuses(work: &Path, config: &Path, path: Option<&Path>) -> String {
    let home = work.join("home");
    fs::create_dir_all(&home).expect("home");
    let mut cmd = Command::new(bin("berthd"));
    home_env(&mut cmd, &home);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.join("data"))
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berthd");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthd started with a qcow2 service and no qemu-img");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(!status.success(), "berthd should have refused: {err}");
    err
}

#[test]
fn qcow2_images_are_made_by_qemu_img() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("q");
    let config = qcow2_config(work.path(), &root);
    if !qemu_img_installed() {
        let err = berthd_refuses(work.path(), &config, None);
        assert!(err.contains("qemu-img"), "{err}");
        eprintln!("qemu-img is not installed: checked that berthd refuses qcow2");
        return;
    }
    let d = Berthd::start_with(&["--config", s(&config)]);
    let created = d
        .berth(&["volume", "create", "d", "--size", "64MiB", "-o", "json"])
        .json();
    let path = root.join("d.qcow2");
    assert_eq!(created["fields"]["path"], s(&path), "{created}");
    assert_eq!(created["fields"]["format"], "qcow2", "{created}");
    assert_eq!(created["size_bytes"], 64u64 << 20, "{created}");
    let info = |path: &Path| -> Value {
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path)
            .output()
            .expect("qemu-img info");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("qemu-img printed JSON")
    };
    let i = info(&path);
    assert_eq!(i["format"], "qcow2", "{i}");
    assert_eq!(i["virtual-size"], 67_108_864u64, "{i}");

    let attached = d
        .berth(&["volume", "attach", "d", "--instance", "n1", "-o", "json"])
        .json();
    assert_eq!(attached["device"], s(&path), "{attached}");
    d.berth(&["volume", "detach", "d", "--instance", "n1"])
        .success();

    // Snapshots and restores of a qcow2 volume are qcow2 images too.
    d.berth(&["snapshot", "create", "d", "s"]).success();
    d.berth(&["volume", "create", "r", "--from-snapshot", "s"])
        .success();
    for p in [root.join(".berth/snapshots/s.qcow2"), root.join("r.qcow2")] {
        let i = info(&p);
        assert_eq!(i["format"], "qcow2", "{}: {i}", p.display());
        assert_eq!(i["virtual-size"], 67_108_864u64, "{}: {i}", p.display());
    }
}

#[test]
fn qcow2_without_qemu_img_refuses_to_start() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("q");
    let config = qcow2_config(work.path(), &root);
    let empty = work.path().join("empty-path");
    fs::create_dir_all(&empty).expect("empty PATH directory");
    let err = berthd_refuses(work.path(), &config, Some(&empty));
    assert!(err.contains("qemu-img"), "{err}");
    assert!(
        err.contains("\"q\"") || err.contains(" q"),
        "the error should name the service: {err}"
    );
}

// --- crash -----------------------------------------------------------------------

fn crash_scenario(lab: &mut Lab, driver: Driver) {
    {
        let svc = lab.svc(driver);
        svc.create("vol");
        svc.write("vol", A);
        let snap = svc
            .berth(&["snapshot", "create", "vol", "s1", "-o", "json"])
            .json();
        assert_eq!(snap["volume"], "vol", "{snap}");
    }
    // Acknowledged: it must survive kill -9 the moment after.
    lab.d.kill9();
    lab.d.restart();
    let svc = lab.svc(driver);
    let list = svc.berth(&["snapshot", "list", "vol", "-o", "json"]).json();
    assert_eq!(names(&list), ["s1"], "{list}\nlog:\n{}", lab.d.log());
    assert_eq!(svc.read_at(&svc.snapshot_data("s1")), A);
    svc.write("vol", B);
    svc.berth(&["volume", "create", "r", "--from-snapshot", "s1"])
        .success();
    assert_eq!(svc.read("r"), A);
}

#[test]
fn vfs_snapshot_survives_kill9() {
    let mut lab = Lab::start();
    crash_scenario(&mut lab, Driver::Vfs);
}

#[test]
fn image_snapshot_survives_kill9() {
    let mut lab = Lab::start();
    crash_scenario(&mut lab, Driver::Image);
}
