//! The node side through the real `berth` and `berthd`: `berth volume
//! mount` and `unmount` for `vfs` (bind mount) and raw `image` volumes
//! (loop device, ext4 made on first use). Data written through the mount is
//! in the volume, survives unmount and mounts again; two paths share one
//! attachment; a volume attached elsewhere is refused naming the holder;
//! `kill -9` between any two steps is settled by the next call; a busy
//! unmount names the path and `--force` unmounts lazily.
//!
//! Mounting needs root: without it each test prints one line and returns
//! (under `BERTH_REQUIRE_DOCKER=1` it fails instead).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use berth_tests::node::{can_run, file_holds, is_mount_point, loops_of, mount_blocker, NodeLab};

fn ready(test: &str) -> bool {
    can_run(&format!("node::{test}"), mount_blocker())
}

/// Creates `name` in `service` (`img` volumes get 64 MiB).
fn create(lab: &NodeLab, service: &str, name: &str) {
    let mut args = vec!["volume", "create", name, "--service", service];
    if service == "img" {
        args.extend(["--size", "64MiB"]);
    }
    lab.d.berth(&args).success();
}

/// `berth volume mount`, returning the printed path.
fn mount(lab: &NodeLab, service: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["volume", "mount", name, "--service", service];
    args.extend(extra);
    lab.d.berth(&args).success().trim().to_owned()
}

fn unmount(lab: &NodeLab, service: &str, name: &str, extra: &[&str]) {
    let mut args = vec!["volume", "unmount", name, "--service", service];
    args.extend(extra);
    lab.d.berth(&args).success();
}

/// Asserts nothing of the volume is left on the node or the controller.
#[track_caller]
fn assert_released(lab: &NodeLab, service: &str, name: &str) {
    assert!(lab.holders(service, name).is_empty(), "still attached");
    assert!(!is_mount_point(&lab.default_path(service, name)));
    let key = format!("{service}/{name}");
    assert!(
        lab.state()["volumes"].get(&key).is_none(),
        "{}",
        lab.state()
    );
    if service == "img" {
        assert_eq!(loops_of(&lab.image(name)), Vec::<String>::new());
        let staging = lab
            .mount_root()
            .join(".berth/staging")
            .join(service)
            .join(name);
        assert!(!is_mount_point(&staging));
    }
}

#[test]
fn data_written_through_the_mount_is_in_the_volume_and_survives_remounts() {
    if !ready("data_round_trip") {
        return;
    }
    let lab = NodeLab::start();
    for service in ["fs", "img"] {
        create(&lab, service, "data");
        let path = mount(&lab, service, "data", &[]);
        assert_eq!(Path::new(&path), lab.default_path(service, "data"));
        assert!(is_mount_point(Path::new(&path)));
        assert_eq!(lab.holders(service, "data"), vec!["node-a".to_owned()]);
        // Mounting again at the same path returns it.
        assert_eq!(mount(&lab, service, "data", &[]), path);
        let marker = format!("written through the {service} mount");
        std::fs::write(Path::new(&path).join("f.txt"), &marker).expect("write");
        unmount(&lab, service, "data", &[]);
        assert_released(&lab, service, "data");
        // Unmounting what is not mounted succeeds.
        unmount(&lab, service, "data", &[]);
        // The bytes are in the volume itself.
        match service {
            "fs" => assert_eq!(
                std::fs::read_to_string(lab.vfs_dir("data").join("f.txt")).expect("in volume"),
                marker
            ),
            _ => assert!(file_holds(&lab.image("data"), marker.as_bytes())),
        }
        // And it mounts again, with the data, never reformatted.
        let again = mount(&lab, service, "data", &["--read-only"]);
        assert_eq!(
            std::fs::read_to_string(Path::new(&again).join("f.txt")).expect("read back"),
            marker
        );
        assert!(
            std::fs::write(Path::new(&again).join("g"), "x").is_err(),
            "read-only"
        );
        unmount(&lab, service, "data", &[]);
        assert_released(&lab, service, "data");
    }
    // Bad input: one line, nothing done.
    let err = lab
        .d
        .berth(&["volume", "mount", "data", "-s", "fs", "--path", "rel/dir"])
        .failure();
    assert!(
        err.contains("relative") && err.lines().count() == 1,
        "{err}"
    );
    let err = lab
        .d
        .berth(&["volume", "mount", "nope", "-s", "fs"])
        .failure();
    assert!(
        err.contains("not found") || err.contains("does not exist"),
        "{err}"
    );
    assert!(lab.state()["volumes"].as_object().expect("map").is_empty());
}

#[test]
fn two_paths_share_one_attachment() {
    if !ready("two_paths") {
        return;
    }
    let lab = NodeLab::start();
    for service in ["fs", "img"] {
        create(&lab, service, "shared");
        let first = mount(&lab, service, "shared", &[]);
        let second_dir = lab.work.path().join(format!("second-{service}"));
        let second = mount(
            &lab,
            service,
            "shared",
            &["--path", &second_dir.display().to_string(), "--read-only"],
        );
        assert_eq!(lab.holders(service, "shared"), vec!["node-a".to_owned()]);
        if service == "img" {
            assert_eq!(loops_of(&lab.image("shared")).len(), 1);
        }
        std::fs::write(Path::new(&first).join("x"), "seen at both").expect("write");
        assert_eq!(
            std::fs::read_to_string(Path::new(&second).join("x")).expect("read"),
            "seen at both"
        );
        // The first path goes; the second stays, still attached.
        unmount(&lab, service, "shared", &[]);
        assert!(!is_mount_point(Path::new(&first)));
        assert!(is_mount_point(Path::new(&second)));
        assert_eq!(lab.holders(service, "shared"), vec!["node-a".to_owned()]);
        assert_eq!(
            std::fs::read_to_string(Path::new(&second).join("x")).expect("read"),
            "seen at both"
        );
        unmount(&lab, service, "shared", &["--path", &second]);
        assert_released(&lab, service, "shared");
    }
}

#[test]
fn a_volume_attached_elsewhere_is_refused_naming_the_holder() {
    if !ready("attached_elsewhere") {
        return;
    }
    let lab = NodeLab::start();
    for service in ["fs", "img"] {
        create(&lab, service, "taken");
        lab.d
            .berth(&[
                "volume",
                "attach",
                "taken",
                "-s",
                service,
                "--instance",
                "other-node",
            ])
            .success();
        let err = lab
            .d
            .berth(&["volume", "mount", "taken", "-s", service])
            .failure();
        assert!(err.contains("other-node"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(lab.holders(service, "taken"), vec!["other-node".to_owned()]);
        assert!(!is_mount_point(&lab.default_path(service, "taken")));
        assert!(lab.state()["volumes"]
            .get(format!("{service}/taken"))
            .is_none());
        if service == "img" {
            assert!(loops_of(&lab.image("taken")).is_empty());
        }
        // --instance other-node is that node: it may mount it.
        mount(&lab, service, "taken", &["--instance", "other-node"]);
        unmount(&lab, service, "taken", &["--instance", "other-node"]);
        assert!(lab.holders(service, "taken").is_empty());
    }
}

/// Runs `berth ARGS` with the pause hook at `step`, waits (bounded) for it
/// to say it paused, and kills it with SIGKILL.
fn kill9_after(lab: &NodeLab, step: &str, args: &[&str]) {
    let mut cmd = lab.d.berth_cmd(args);
    cmd.env("BERTH_NODE_PAUSE_AFTER", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn berth");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let paused = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(&format!("paused after {step}")) => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(paused, "berth {args:?} never paused after {step}: {seen:?}");
}

#[test]
fn kill_9_between_steps_is_settled_by_the_next_call() {
    if !ready("kill_9") {
        return;
    }
    let lab = NodeLab::start();
    let steps = [
        ("img", "attach"),
        ("img", "block"),
        ("img", "format"),
        ("img", "stage"),
        ("img", "bind"),
        ("fs", "attach"),
        ("fs", "bind"),
    ];
    for (i, (service, step)) in steps.into_iter().enumerate() {
        let name = format!("k{i}");
        create(&lab, service, &name);
        kill9_after(&lab, step, &["volume", "mount", &name, "-s", service]);
        if i % 2 == 0 {
            // The next mount finishes the job, with one attachment and one
            // loop device, and the filesystem made once.
            let path = mount(&lab, service, &name, &[]);
            assert!(is_mount_point(Path::new(&path)), "{step}");
            assert_eq!(lab.holders(service, &name), vec!["node-a".to_owned()]);
            if service == "img" {
                assert_eq!(loops_of(&lab.image(&name)).len(), 1, "{step}");
            }
            std::fs::write(Path::new(&path).join("f"), "after the crash").expect("write");
        }
        // The next unmount (or, above, the one after the mount) leaves
        // nothing behind.
        unmount(&lab, service, &name, &[]);
        assert_released(&lab, service, &name);
    }
    // Interrupted unmounts: the next unmount settles them.
    for (i, step) in ["unbind", "release"].into_iter().enumerate() {
        let name = format!("u{i}");
        create(&lab, "img", &name);
        let path = mount(&lab, "img", &name, &[]);
        std::fs::write(Path::new(&path).join("f"), "kept").expect("write");
        kill9_after(&lab, step, &["volume", "unmount", &name, "-s", "img"]);
        unmount(&lab, "img", &name, &[]);
        assert_released(&lab, "img", &name);
        // The data survived and the filesystem was not remade.
        let path = mount(&lab, "img", &name, &[]);
        assert_eq!(
            std::fs::read_to_string(Path::new(&path).join("f")).expect("read"),
            "kept"
        );
        unmount(&lab, "img", &name, &[]);
    }
}

#[test]
fn a_busy_unmount_names_the_path_and_force_unmounts_lazily() {
    if !ready("busy") {
        return;
    }
    let lab = NodeLab::start();
    create(&lab, "img", "busy");
    let path = mount(&lab, "img", "busy", &[]);
    let mut holder = Command::new("sleep")
        .arg("60")
        .current_dir(&path)
        .spawn()
        .expect("spawn sleep");
    let err = lab
        .d
        .berth(&["volume", "unmount", "busy", "-s", "img"])
        .failure();
    assert!(err.contains(&path) && err.contains("busy"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(is_mount_point(Path::new(&path)));
    assert_eq!(lab.holders("img", "busy"), vec!["node-a".to_owned()]);
    unmount(&lab, "img", "busy", &["--force"]);
    assert!(!is_mount_point(Path::new(&path)));
    assert!(lab.holders("img", "busy").is_empty());
    let _ = holder.kill();
    let _ = holder.wait();
    // Once the last user is gone, the kernel frees the loop device.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !loops_of(&lab.image("busy")).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(loops_of(&lab.image("busy")).is_empty());
}

/// The filesystem type mounted at `path`, from the mount table.
fn fs_type(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (Path::new(fields.get(4)?) == path).then(|| fields.get(sep + 1).map(|s| s.to_string()))?
    })
}

/// `blkid -p` of a file: its filesystem UUID.
fn uuid_of(file: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID"])
        .arg(file)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_fs_option_picks_the_filesystem_and_nothing_is_ever_reformatted() {
    if !ready("fs_option") {
        return;
    }
    let lab = NodeLab::start();
    // Default ext4.
    create(&lab, "img", "plain");
    let path = mount(&lab, "img", "plain", &[]);
    assert_eq!(fs_type(Path::new(&path)).as_deref(), Some("ext4"));
    unmount(&lab, "img", "plain", &[]);
    // fs=xfs where mkfs.xfs exists (xfs needs at least 300 MB).
    if berth_tests::node::tool_exists("mkfs.xfs") {
        lab.d
            .berth(&[
                "volume", "create", "x", "-s", "img", "--size", "320MiB", "--opt", "fs=xfs",
            ])
            .success();
        let path = mount(&lab, "img", "x", &[]);
        assert_eq!(fs_type(Path::new(&path)).as_deref(), Some("xfs"));
        unmount(&lab, "img", "x", &[]);
        assert_released(&lab, "img", "x");
    } else {
        println!("node::fs_option: mkfs.xfs is not installed; xfs not checked");
    }
    // A filesystem made elsewhere is mounted as it is, never remade.
    create(&lab, "img", "premade");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(lab.image("premade"))
        .status()
        .expect("mkfs.ext4");
    assert!(status.success());
    let uuid = uuid_of(&lab.image("premade"));
    assert!(!uuid.is_empty());
    mount(&lab, "img", "premade", &[]);
    unmount(&lab, "img", "premade", &[]);
    assert_eq!(uuid_of(&lab.image("premade")), uuid);
    // A device holding something else (here a DOS partition table) is
    // refused, not formatted, and nothing is left attached.
    create(&lab, "img", "parted");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(lab.image("parted"))
            .expect("open image");
        // One partition entry (type 0x83, from sector 2048) and the signature.
        f.seek(SeekFrom::Start(446)).expect("seek");
        let mut entry = [0u8; 16];
        entry[4] = 0x83;
        entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
        entry[12..16].copy_from_slice(&4096u32.to_le_bytes());
        f.write_all(&entry).expect("entry");
        f.seek(SeekFrom::Start(510)).expect("seek");
        f.write_all(&[0x55, 0xAA]).expect("signature");
    }
    let err = lab
        .d
        .berth(&["volume", "mount", "parted", "-s", "img"])
        .failure();
    assert!(err.contains("refusing to format"), "{err}");
    assert!(err.contains("partition table"), "{err}");
    assert_released(&lab, "img", "parted");
    assert!(uuid_of(&lab.image("parted")).is_empty());
}
