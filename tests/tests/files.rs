//! Files on disk: key directories berthd refuses at start, paths the `vfs`
//! driver never follows, sizes no file can have, option values that are
//! never echoed in full, and failed starts that create nothing.
//!
//! Every refusal is checked twice: the one-line message (what, where, how
//! to fix it), and that nothing changed (a listing of paths, modes, owners
//! and link targets before and after, the volume list, the vfs root).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_tests::grpc::admin_channel;
use berth_tests::{bin, home_env, listed, vfs_metadata, vfs_root, volume_dirs, Berthd};
use tonic::Code;

/// How long a refused start may take before the test calls it a hang.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

// ---- helpers ---------------------------------------------------------------

/// Everything under `dir` (not following links): path -> (kind, mode, owner,
/// link target). `dir` itself is included as "".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let rel = path
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let kind = if meta.file_type().is_symlink() {
            format!(
                "link->{}",
                std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )
        } else if meta.is_dir() {
            "dir".into()
        } else {
            "file".into()
        };
        out.insert(
            rel,
            format!(
                "{kind} {:o} uid={}",
                meta.permissions().mode() & 0o7777,
                meta.uid()
            ),
        );
        if meta.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(path)
                .expect("list")
                .flatten()
                .map(|e| e.path())
                .collect();
            children.sort();
            for child in children {
                walk(root, &child, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The last line of `stderr` (berthd and berth end with their error).
fn last_line(stderr: &str) -> &str {
    stderr.trim_end().lines().last().unwrap_or_default()
}

/// berthd's error line: the last line of its stderr that starts with
/// `error` in any case.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with("error"))
        .unwrap_or_default()
}

/// Runs `berthd ARGS` with `home` as its user's home and expects it to
/// refuse to start: a non-zero exit within [`REFUSAL_TIMEOUT`], never a
/// "listening" line. Returns its stderr.
#[track_caller]
fn start_fails(home: &Path, args: &[&str]) -> String {
    std::fs::create_dir_all(home).expect("home");
    let mut cmd = Command::new(bin("berthd"));
    home_env(&mut cmd, home);
    let mut child = cmd
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berthd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("berthd listening on ") {
                let _ = tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let status = loop {
        if let Ok(line) = started.try_recv() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthd {args:?} should have refused to start, but printed {line:?}");
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthd {args:?} neither started nor exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(
        !status.success(),
        "berthd {args:?} should have refused to start; stderr:\n{err}"
    );
    err
}

// ---- 1. key directories ----------------------------------------------------

/// Spoils a data directory; returns the data directory to name to berthd
/// and the strings its refusal must contain.
type Apply = Box<dyn Fn(&Path) -> (PathBuf, Vec<String>)>;

/// One way to spoil a data directory, and how to put it back.
struct Spoil {
    what: &'static str,
    /// See [`Apply`].
    apply: Apply,
    undo: Box<dyn Fn(&Path)>,
}

fn chmod_case(what: &'static str, rel: &'static str, bad: u32) -> Spoil {
    let was = std::rc::Rc::new(std::cell::Cell::new(0o700));
    let saved = std::rc::Rc::clone(&was);
    Spoil {
        what,
        apply: Box::new(move |data| {
            let path = data.join(rel);
            saved.set(mode(&path));
            chmod(&path, bad);
            let shown = s(&path).trim_end_matches('/').to_owned();
            (
                data.to_owned(),
                vec![
                    shown.clone(),
                    "writable by group or others".into(),
                    format!("chmod 700 {shown}"),
                ],
            )
        }),
        undo: Box::new(move |data| chmod(&data.join(rel), was.get())),
    }
}

fn link_case(what: &'static str, rel: &'static str) -> Spoil {
    Spoil {
        what,
        apply: Box::new(move |data| {
            let (path, real) = (data.join(rel), data.join(format!("{rel}.real")));
            std::fs::rename(&path, &real).expect("move the directory away");
            std::os::unix::fs::symlink(&real, &path).expect("link");
            (
                data.to_owned(),
                vec![s(&path).to_owned(), "symbolic link".into()],
            )
        }),
        undo: Box::new(move |data| {
            let (path, real) = (data.join(rel), data.join(format!("{rel}.real")));
            std::fs::remove_file(&path).expect("remove the link");
            std::fs::rename(&real, &path).expect("move the directory back");
        }),
    }
}

#[test]
fn key_directories_others_could_change_are_refused_and_left_as_they_are() {
    let mut d = Berthd::start();
    let data = d.data_dir.clone();
    // Every acknowledged write is flushed, so a kill leaves a sound data
    // directory (and does not race berthd's signal handler).
    d.kill9();
    let home = d.path("refused-home");
    let root_user = std::fs::metadata(&data).expect("data dir").uid() == 0;

    let mut cases = vec![
        chmod_case("a world-writable data directory", "", 0o777),
        chmod_case("a world-writable tls/", "tls", 0o777),
        chmod_case("a world-writable auth/", "auth", 0o777),
        chmod_case("a group-writable db/", "db", 0o770),
        link_case("a symlinked auth/", "auth"),
        link_case("a symlinked tls/", "tls"),
        link_case("a symlinked db/", "db"),
        Spoil {
            what: "a symlinked private key",
            apply: Box::new(|data| {
                let (key, real) = (data.join("tls/ca.key"), data.join("ca.key.real"));
                std::fs::rename(&key, &real).expect("move the key");
                std::os::unix::fs::symlink(&real, &key).expect("link");
                (
                    data.to_owned(),
                    vec![s(&key).to_owned(), "symbolic link".into()],
                )
            }),
            undo: Box::new(|data| {
                std::fs::remove_file(data.join("tls/ca.key")).expect("remove the link");
                std::fs::rename(data.join("ca.key.real"), data.join("tls/ca.key"))
                    .expect("move the key back");
            }),
        },
    ];
    let link = data.with_file_name("data-link");
    let shown_link = link.clone();
    cases.push(Spoil {
        what: "a data directory reached through a symlink",
        apply: Box::new(move |data| {
            std::os::unix::fs::symlink(data, &shown_link).expect("link");
            (
                shown_link.clone(),
                vec![
                    s(&shown_link).to_owned(),
                    "symbolic link".into(),
                    "--data-dir".into(),
                ],
            )
        }),
        undo: Box::new(move |_| std::fs::remove_file(&link).expect("remove the link")),
    });
    if root_user {
        // Only root can give a directory to another user.
        cases.push(Spoil {
            what: "an auth/ owned by another user",
            apply: Box::new(|data| {
                let auth = data.join("auth");
                std::os::unix::fs::chown(&auth, Some(65534), None).expect("chown");
                (
                    data.to_owned(),
                    vec![
                        s(&auth).to_owned(),
                        "owned by uid 65534".into(),
                        "chown".into(),
                    ],
                )
            }),
            undo: Box::new(|data| {
                std::os::unix::fs::chown(data.join("auth"), Some(0), None).expect("chown back")
            }),
        });
    } else {
        eprintln!("not root: the foreign-owner case needs chown and is not exercised");
    }

    for case in &cases {
        let before = tree(&data);
        let (named, wanted) = (case.apply)(&data);
        let spoiled = tree(&data);
        let err = start_fails(&home, &["--listen", "127.0.0.1:0", "--data-dir", s(&named)]);
        let line = error_line(&err);
        assert!(line.starts_with("error: "), "{}: {err}", case.what);
        for w in &wanted {
            assert!(
                line.contains(w.as_str()),
                "{}: {w:?} missing from: {line}",
                case.what
            );
        }
        assert_eq!(
            tree(&data),
            spoiled,
            "{}: the data directory changed",
            case.what
        );
        assert!(
            !home.join(".config").exists(),
            "{}: a client config was installed",
            case.what
        );
        (case.undo)(&data);
        assert_eq!(tree(&data), before, "{}: undo is incomplete", case.what);
    }

    // Put back, the same data directory serves again (the checks are not
    // stricter than what berthd makes itself).
    let again = Berthd::start_in(&data, &[], "info");
    again.berth(&["volume", "list"]).success();
}

// ---- 2. vfs and links ------------------------------------------------------

#[test]
fn vfs_never_follows_a_link_or_adopts_a_file_at_a_volume_path() {
    let d = Berthd::start();
    let root = vfs_root(&d);
    d.berth(&["volume", "create", "src"]).success();
    let outside = d.path("outside");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("precious"), b"not a volume").expect("precious");
    chmod(&outside, 0o700);
    chmod(&outside.join("precious"), 0o600);
    std::os::unix::fs::symlink(&outside, root.join("adoptme")).expect("plant a link");
    std::fs::write(root.join("afile"), b"a stray file").expect("plant a file");
    chmod(&root.join("afile"), 0o600);

    let (outside_before, root_before, meta_before, list_before) =
        (tree(&outside), tree(&root), vfs_metadata(&root), listed(&d));
    for (name, why) in [
        ("adoptme", "is a symbolic link"),
        ("afile", "is not a directory"),
    ] {
        for args in [
            vec!["volume", "create", name, "--opt", "mode=0777"],
            vec!["volume", "copy", "src", name],
        ] {
            let err = d.berth(&args).failure();
            let line = last_line(&err);
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            assert!(
                line.starts_with("error: failed precondition: "),
                "{args:?}: {line}"
            );
            assert!(
                line.contains(&format!("{}/{name}", s(&root))) && line.contains(why),
                "{args:?}: {line}"
            );
        }
    }
    assert_eq!(mode(&outside), 0o700, "the link's target was chmodded");
    assert_eq!(tree(&outside), outside_before, "the link's target changed");
    assert_eq!(tree(&root), root_before, "the vfs root changed");
    assert_eq!(vfs_metadata(&root), meta_before);
    assert_eq!(listed(&d), list_before, "a record appeared");
    assert_eq!(
        volume_dirs(&root).into_iter().collect::<Vec<_>>(),
        ["adoptme", "afile", "src"]
    );
}

// ---- 3. sizes --------------------------------------------------------------

/// A controller serving `img` (raw images) and `fs` (vfs) under `work`.
fn sized(work: &Path) -> Berthd {
    let config = work.join("sizes.toml");
    std::fs::write(
        &config,
        format!(
            "[[services]]\nname = \"img\"\ndriver = \"image\"\n[services.options]\nroot = {:?}\n\n\
             [[services]]\nname = \"fs\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n",
            s(&work.join("img")),
            s(&work.join("fs"))
        ),
    )
    .expect("config");
    Berthd::start_with(&["--config", s(&config)])
}

#[test]
fn impossible_sizes_are_out_of_range_and_leave_no_file_and_no_record() {
    let work = tempfile::tempdir().expect("tempdir");
    let d = sized(work.path());
    let img = work.path().join("img");
    // 1 PiB is past ext4's 16 TiB; where this filesystem holds it, it is a
    // valid (sparse) size and only 2^63 + 5 is impossible.
    let probe = work.path().join("probe");
    let pib_fits = std::fs::File::create(&probe)
        .expect("probe")
        .set_len(1 << 50)
        .is_ok();
    std::fs::remove_file(&probe).expect("remove probe");
    let mut sizes = vec![
        ("9223372036854775813", "img"),
        ("9223372036854775813", "fs"),
    ];
    if pib_fits {
        eprintln!("this filesystem holds a 1 PiB file: that size is not exercised");
    } else {
        sizes.push(("1PiB", "img"));
    }
    let (img_before, fs_before) = (tree(&img), tree(&work.path().join("fs")));
    for (size, service) in sizes {
        let err = d
            .berth(&[
                "volume",
                "create",
                "big",
                "--service",
                service,
                "--size",
                size,
            ])
            .failure();
        assert_eq!(err.trim_end().lines().count(), 1, "{size}: {err}");
        let line = last_line(&err);
        assert!(
            line.starts_with("error: out of range: "),
            "{size} on {service}: {line}"
        );
        assert!(line.contains("at most") && line.len() < 400, "{line}");
        assert!(
            std::fs::read_dir(img.join(".berth/staging"))
                .expect("staging")
                .next()
                .is_none(),
            "{size}: staging is not empty: {:?}",
            tree(&img.join(".berth/staging"))
        );
        assert!(listed(&d).is_empty(), "{size}: a record appeared");
    }
    assert_eq!(tree(&img), img_before, "the image root changed");
    assert_eq!(
        tree(&work.path().join("fs")),
        fs_before,
        "the vfs root changed"
    );
    // A possible size still works.
    d.berth(&[
        "volume",
        "create",
        "ok",
        "--service",
        "img",
        "--size",
        "1MiB",
    ])
    .success();
}

// ---- 4. options ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_options_are_refused_and_never_echoed_in_full() {
    let d = Berthd::start_with(&["--insecure-plaintext"]);
    let mut client = pb::volumes_client::VolumesClient::new(admin_channel(&d).await);
    let root = vfs_root(&d);
    let (dirs_before, meta_before) = (volume_dirs(&root), vfs_metadata(&root));
    let one = |k: String, v: String| BTreeMap::from([(k, v)]);
    let many: BTreeMap<String, String> =
        (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let cases: Vec<(&str, BTreeMap<String, String>)> = vec![
        // 1 MiB: well inside the 4 MiB gRPC message limit both sides allow.
        (
            "a 1 MiB mode value",
            one("mode".into(), "7".repeat(1 << 20)),
        ),
        ("a 1 KiB key", one("k".repeat(1024), "1".into())),
        ("33 options", many),
        // Inside the bounds: the driver refuses it, and echoes a prefix only.
        ("a 4 KiB bad mode", one("mode".into(), "9".repeat(4096))),
        ("an unknown 128-byte key", one("x".repeat(128), "1".into())),
        ("a key with a newline", one("mo\nde".into(), "1".into())),
    ];
    for (what, options) in cases {
        let status = client
            .create_volume(pb::CreateVolumeRequest {
                service: "local".into(),
                name: "big".into(),
                options,
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let message = status.message();
        assert!(
            message.len() < 300 && !message.contains('\n'),
            "{what}: a {}-byte message: {}",
            message.len(),
            &message[..message.len().min(400)]
        );
    }
    assert_eq!(
        volume_dirs(&root),
        dirs_before,
        "a volume directory appeared"
    );
    assert_eq!(vfs_metadata(&root), meta_before);
    assert!(listed(&d).is_empty(), "a record appeared");

    // Through the CLI (an argument may be up to 128 KiB): one short line.
    let value = format!("mode={}", "7".repeat(100_000));
    let err = d
        .berth(&["--plaintext", "volume", "create", "big", "--opt", &value])
        .failure();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{}",
        &err[..err.len().min(400)]
    );
    assert!(
        err.len() < 300 && err.contains("4096"),
        "{}",
        &err[..err.len().min(400)]
    );
    assert!(listed(&d).is_empty(), "a record appeared");
}

// ---- 5. failed starts ------------------------------------------------------

#[test]
fn a_start_with_a_bad_config_creates_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("not TOML", "[[services]\nname = ".to_owned(), "is not valid"),
        (
            "an unknown driver",
            "[[services]]\nname = \"x\"\ndriver = \"nosuch\"\n".to_owned(),
            "unknown driver",
        ),
        (
            "a bad driver option",
            format!(
                "[[services]]\nname = \"x\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\nbogus = 1\n",
                s(&work.path().join("x-root"))
            ),
            "bogus",
        ),
    ];
    for (i, (what, text, wanted)) in cases.iter().enumerate() {
        let config = work.path().join(format!("bad{i}.toml"));
        std::fs::write(&config, text).expect("config");
        let (data, home) = (
            work.path().join(format!("data{i}")),
            work.path().join(format!("home{i}")),
        );
        let err = start_fails(
            &home,
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                s(&data),
                "--config",
                s(&config),
            ],
        );
        let line = error_line(&err);
        assert!(
            line.contains(s(&config)) && line.contains(wanted),
            "{what}: {err}"
        );
        assert!(
            !data.exists(),
            "{what}: the data directory was made: {:?}",
            tree(&data)
        );
        assert_eq!(
            tree(&home).len(),
            1,
            "{what}: files in home: {:?}",
            tree(&home)
        );
    }
}

#[test]
fn a_start_on_a_taken_port_says_so_and_creates_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let addr = holder.local_addr().expect("addr").to_string();
    let (data, home) = (work.path().join("data"), work.path().join("home"));
    let err = start_fails(&home, &["--listen", &addr, "--data-dir", s(&data)]);
    let line = error_line(&err);
    assert!(
        line.contains(&format!("cannot listen on {addr}: "))
            && line.contains("already")
            && line.contains("--listen 127.0.0.1:PORT"),
        "{err}"
    );
    assert!(
        !data.exists(),
        "the data directory was made: {:?}",
        tree(&data)
    );
    assert_eq!(tree(&home).len(), 1, "files in home: {:?}", tree(&home));
    // The port's holder was not disturbed.
    holder.set_nonblocking(true).expect("nonblocking");
    assert_eq!(holder.local_addr().expect("addr").to_string(), addr);
}
