//! Volume life cycle through the real `berth` and `berthd`: create (table and
//! JSON), idempotent and conflicting re-create, list, inspect, remove, name
//! and size validation, an unreachable controller, and services declared in
//! a configuration file (including the ones that must stop start-up).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_tests::{bin, entries, field_pairs, Berthd};
use serde_json::{json, Value};

/// Part of the naming rule every refusal must quote.
const RULE_PARTS: [&str; 2] = [
    "1 to 128 characters",
    "a letter or digit, then letters, digits, '_', '.' or '-'",
];

/// The root of the default `local` service.
fn root(d: &Berthd) -> PathBuf {
    d.data_dir.join("volumes")
}

/// The vfs metadata directory under a root.
fn meta_dir(root: &Path) -> PathBuf {
    root.join(".berth").join("volumes")
}

/// Non-hidden entries of a directory: the volume directories of a vfs root.
fn visible(dir: &Path) -> BTreeSet<String> {
    entries(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Seconds since the epoch of an RFC 3339 UTC time with whole seconds
/// (`2024-05-01T12:00:00Z`), panicking on anything else.
fn epoch_seconds(text: &str) -> u64 {
    let b = text.as_bytes();
    assert!(
        b.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z',
        "not an RFC 3339 UTC time: {text:?}"
    );
    let n = |r: std::ops::Range<usize>| -> i64 {
        text[r]
            .parse()
            .unwrap_or_else(|_| panic!("not an RFC 3339 UTC time: {text:?}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    assert!((1..=12).contains(&m) && (1..=31).contains(&d) && hh < 24 && mm < 60 && ss < 61);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3_600 + mm * 60 + ss).expect("after 1970")
}

/// Asserts `created_at` is a time between `before` and `after` (seconds).
#[track_caller]
fn assert_created_between(created_at: &str, before: u64, after: u64) {
    let t = epoch_seconds(created_at);
    assert!(
        before <= t && t <= after,
        "created_at {created_at} ({t}) is not between {before} and {after}"
    );
}

/// Asserts `id` looks like a random (version 4) UUID.
#[track_caller]
fn assert_uuid_v4(id: &str) {
    let groups: Vec<&str> = id.split('-').collect();
    assert_eq!(
        groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "id {id:?} is not a UUID"
    );
    assert!(
        id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "id {id:?} is not a UUID"
    );
    assert!(groups[2].starts_with('4'), "id {id:?} is not a v4 UUID");
}

/// `volume create/inspect` table output as field -> value, checking the
/// header and that every value starts in the VALUE column.
fn detail(stdout: &str) -> BTreeMap<String, String> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(
        header.starts_with("FIELD") && header.trim_end().ends_with("VALUE"),
        "header {header:?}"
    );
    let column = header.find("VALUE").expect("VALUE column");
    let mut fields = BTreeMap::new();
    for line in lines {
        let (key, value) = match line.split_once(' ') {
            Some((k, v)) => (k, v.trim_start()),
            None => (line, ""),
        };
        if !value.is_empty() {
            assert_eq!(
                line.find(value),
                Some(column),
                "value of {key:?} is not aligned under VALUE:\n{stdout}"
            );
        }
        let previous = fields.insert(key.to_owned(), value.to_owned());
        assert!(previous.is_none(), "field {key} twice:\n{stdout}");
    }
    fields
}

/// The cells of a table whose header is `titles` (in that order), sliced at
/// the columns where the header puts them, so cells containing spaces
/// ("512 MiB") are kept whole and misaligned rows are caught.
fn table_rows(stdout: &str, titles: &[&str]) -> Vec<Vec<String>> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    let starts: Vec<usize> = titles
        .iter()
        .map(|t| {
            header
                .find(t)
                .unwrap_or_else(|| panic!("no {t} in header {header:?}"))
        })
        .collect();
    assert_eq!(
        starts[0], 0,
        "header {header:?} does not start with {}",
        titles[0]
    );
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "header {header:?} is not in the order {titles:?}"
    );
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        titles,
        "header {header:?}"
    );
    lines
        .map(|line| {
            (0..starts.len())
                .map(|i| {
                    let start = starts[i];
                    let end = starts.get(i + 1).copied().unwrap_or(usize::MAX);
                    let cell = line.get(start..end.min(line.len())).unwrap_or("").trim();
                    if !cell.is_empty() {
                        let at = |i: usize| line.get(i..i + 1).unwrap_or("");
                        assert!(
                            at(start) != " " && (i == 0 || at(start - 1) == " "),
                            "column {} of {line:?} does not start under its title:\n{stdout}",
                            titles[i]
                        );
                    }
                    cell.to_owned()
                })
                .collect()
        })
        .collect()
}

/// Names of a `volume list -o json` array.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Asserts a refusal with the given stderr prefix, on one line.
#[track_caller]
fn assert_error(stderr: &str, prefix: &str) {
    assert!(
        stderr.starts_with(prefix),
        "stderr should start with {prefix:?}: {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "the error should be one line: {stderr:?}"
    );
}

#[test]
fn create_prints_every_field_and_makes_the_directory() {
    let d = Berthd::start();
    let root = root(&d);
    let before = now_secs();

    // Table output.
    let out = d
        .berth(&[
            "volume",
            "create",
            "data1",
            "--size",
            "512MiB",
            "--opt",
            "mode=0750",
        ])
        .success();
    let after = now_secs();
    let f = detail(&out);
    let path = root.join("data1");
    for key in [
        "name", "id", "service", "driver", "size", "status", "created", "options", "path",
    ] {
        assert!(f.contains_key(key), "no {key} row in\n{out}");
    }
    assert_eq!(f["name"], "data1");
    assert_uuid_v4(&f["id"]);
    assert_eq!(f["service"], "local");
    assert_eq!(f["driver"], "vfs");
    assert_eq!(f["size"], "512 MiB (536870912 bytes)");
    assert_eq!(f["status"], "available");
    assert_created_between(&f["created"], before, after);
    assert_eq!(f["options"], "mode=0750");
    assert_eq!(f["path"], path.display().to_string());
    let meta = std::fs::metadata(&path).expect("the volume directory exists");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert!(meta_dir(&root).join("data1").is_file());

    // The same volume through inspect -o json.
    let v = d
        .berth(&["volume", "inspect", "data1", "-o", "json"])
        .json();
    assert_eq!(v["id"], f["id"].as_str());
    assert_eq!(v["size_bytes"], 536_870_912u64);
    assert_eq!(v["created_at"], f["created"].as_str());
    assert_eq!(v["options"], json!({"mode": "0750"}));

    // JSON output, no size, no options.
    let before = now_secs();
    let v = d.berth(&["volume", "create", "data2", "-o", "json"]).json();
    let after = now_secs();
    let obj = v.as_object().expect("a JSON object");
    for key in [
        "id",
        "name",
        "service",
        "driver",
        "size_bytes",
        "created_at",
        "options",
        "status",
        "fields",
    ] {
        assert!(obj.contains_key(key), "no {key:?} in {v:#}");
    }
    assert_uuid_v4(v["id"].as_str().expect("id is a string"));
    assert_ne!(v["id"], f["id"].as_str(), "two volumes share an id");
    assert_eq!(v["name"], "data2");
    assert_eq!(v["service"], "local");
    assert_eq!(v["driver"], "vfs");
    assert_eq!(v["size_bytes"], 0);
    assert_created_between(v["created_at"].as_str().expect("created_at"), before, after);
    assert_eq!(v["options"], json!({}));
    assert_eq!(v["status"], "available");
    let path = root.join("data2");
    assert_eq!(v["fields"], json!({"path": path.display().to_string()}));
    let meta = std::fs::metadata(&path).expect("the volume directory exists");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "default mode");

    assert_eq!(
        visible(&root),
        BTreeSet::from(["data1".into(), "data2".into()])
    );
    assert_eq!(entries(&meta_dir(&root)), ["data1", "data2"]);
}

#[test]
fn create_again_with_the_same_parameters_returns_the_same_volume() {
    let d = Berthd::start();
    let args = [
        "volume",
        "create",
        "again",
        "--size",
        "1GiB",
        "--opt",
        "mode=0700",
        "-o",
        "json",
    ];
    let mut first = d.berth(&args).json();
    std::fs::write(root(&d).join("again/keep"), b"data").expect("write into the volume");
    let before = entries(&root(&d));
    let mut second = d.berth(&args).json();
    // The space used is measured at each answer: the written file shows.
    let used = |v: &mut serde_json::Value| {
        v.as_object_mut()
            .and_then(|o| o.remove("used_bytes"))
            .and_then(|u| u.as_u64())
            .expect("used_bytes")
    };
    let (used_first, used_second) = (used(&mut first), used(&mut second));
    assert!(used_second > used_first, "{used_first} -> {used_second}");
    assert_eq!(first, second, "a re-create must return the volume as it is");
    // Also in table form; the size may be spelled differently.
    let out = d
        .berth(&[
            "volume",
            "create",
            "again",
            "--size",
            "1073741824",
            "--opt",
            "mode=0700",
        ])
        .success();
    assert_eq!(detail(&out)["id"], first["id"].as_str().expect("id"));
    assert_eq!(entries(&root(&d)), before);
    assert_eq!(
        std::fs::read(root(&d).join("again/keep")).expect("data kept"),
        b"data"
    );
    assert_eq!(
        names(&d.berth(&["volume", "list", "-o", "json"]).json()),
        ["again"]
    );
}

#[test]
fn create_again_with_other_parameters_is_refused_and_changes_nothing() {
    let d = Berthd::start();
    let original = d
        .berth(&[
            "volume",
            "create",
            "clash",
            "--size",
            "1GiB",
            "--opt",
            "mode=0700",
            "-o",
            "json",
        ])
        .json();
    let root = root(&d);
    let before = entries(&root);
    let meta_before = std::fs::read(meta_dir(&root).join("clash")).expect("metadata");
    for other in [
        &["--size", "2GiB", "--opt", "mode=0700"][..],
        &["--size", "1GiB", "--opt", "mode=0755"],
        &["--size", "1GiB"],
        &["--opt", "mode=0700"],
        &["--size", "1GiB", "--opt", "mode=0700", "--opt", "mode2=1"],
    ] {
        let mut args = vec!["volume", "create", "clash"];
        args.extend_from_slice(other);
        let err = d.berth(&args).failure();
        assert_error(&err, "error: already exists");
        assert!(err.contains("clash"), "{other:?}: {err}");
        assert_eq!(entries(&root), before, "{other:?}");
    }
    assert_eq!(
        d.berth(&["volume", "inspect", "clash", "-o", "json"])
            .json(),
        original
    );
    assert_eq!(
        std::fs::read(meta_dir(&root).join("clash")).expect("metadata"),
        meta_before
    );
    let mode = std::fs::metadata(root.join("clash"))
        .expect("directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700);
}

#[test]
fn list_prints_an_aligned_table_and_a_json_array() {
    let d = Berthd::start();
    const TITLES: [&str; 7] = [
        "NAME", "SERVICE", "DRIVER", "SIZE", "USED", "STATUS", "CREATED",
    ];

    let empty = d.berth(&["volume", "list"]).success();
    assert!(table_rows(&empty, &TITLES).is_empty(), "{empty}");
    assert_eq!(d.berth(&["volume", "list", "-o", "json"]).json(), json!([]));

    let before = now_secs();
    for (name, size) in [
        ("b-medium-name", "512MiB"),
        ("a", "0"),
        ("c.a-rather.long_volume-name", "1.5TiB"),
    ] {
        d.berth(&["volume", "create", name, "--size", size])
            .success();
    }
    let after = now_secs();

    let out = d.berth(&["volume", "list"]).success();
    let rows = table_rows(&out, &TITLES);
    let expected = [
        ("a", "0 B"),
        ("b-medium-name", "512 MiB"),
        ("c.a-rather.long_volume-name", "1.5 TiB"),
    ];
    assert_eq!(rows.len(), expected.len(), "{out}");
    for (row, (name, size)) in rows.iter().zip(expected) {
        assert_eq!(row[0], name, "{out}");
        assert_eq!(row[1], "local");
        assert_eq!(row[2], "vfs");
        assert_eq!(row[3], size, "{out}");
        assert!(
            row[4].ends_with('B'),
            "used space of an empty vfs volume: {out}"
        );
        assert_eq!(row[5], "available");
        assert_created_between(&row[6], before, after);
    }

    let list = d.berth(&["volume", "list", "-o", "json"]).json();
    assert_eq!(
        names(&list),
        expected.map(|(n, _)| n.to_owned()),
        "sorted by name"
    );
    for v in list.as_array().expect("array") {
        let name = v["name"].as_str().expect("name");
        let inspected = d.berth(&["volume", "inspect", name, "-o", "json"]).json();
        assert_eq!(*v, inspected, "list and inspect disagree on {name}");
    }
    assert_eq!(list[2]["size_bytes"], 1_649_267_441_664u64);
    // The alias.
    assert_eq!(d.berth(&["volume", "ls", "-o", "json"]).json(), list);
}

#[test]
fn inspect_shows_one_volume_and_a_missing_one_is_not_found() {
    let d = Berthd::start();
    let created = d
        .berth(&["volume", "create", "seen", "--size", "4096", "-o", "json"])
        .json();
    let out = d.berth(&["volume", "inspect", "seen"]).success();
    let f = detail(&out);
    assert_eq!(f["id"], created["id"].as_str().expect("id"));
    assert_eq!(f["size"], "4 KiB (4096 bytes)");
    assert_eq!(f["path"], root(&d).join("seen").display().to_string());

    let err = d.berth(&["volume", "inspect", "unseen"]).failure();
    assert_error(&err, "error: not found");
    assert!(err.contains("unseen"), "{err}");
    assert!(!root(&d).join("unseen").exists());
}

#[test]
fn remove_deletes_the_directory_and_the_record() {
    let d = Berthd::start();
    let root = root(&d);
    for name in ["gone1", "gone2", "stays"] {
        d.berth(&["volume", "create", name]).success();
        std::fs::create_dir_all(root.join(name).join("sub")).expect("mkdir in volume");
        std::fs::write(root.join(name).join("sub/file"), b"x").expect("write in volume");
    }

    let out = d.berth(&["volume", "remove", "gone1"]).success();
    assert_eq!(out.trim(), "removed volume gone1 from service local");
    let out = d.berth(&["volume", "rm", "gone2", "-o", "json"]).json();
    assert_eq!(out, json!({"removed": "gone2", "service": "local"}));

    for name in ["gone1", "gone2"] {
        assert!(!root.join(name).exists(), "{name} directory still there");
        assert!(
            !meta_dir(&root).join(name).exists(),
            "{name} metadata still there"
        );
        let err = d.berth(&["volume", "inspect", name]).failure();
        assert_error(&err, "error: not found");
        assert!(err.contains(name), "{err}");
    }
    assert_eq!(visible(&root), BTreeSet::from(["stays".to_owned()]));
    assert_eq!(entries(&meta_dir(&root)), ["stays"]);
    assert_eq!(
        entries(&root.join(".berth/trash")),
        Vec::<String>::new(),
        "the trash is emptied"
    );
    assert_eq!(
        names(&d.berth(&["volume", "list", "-o", "json"]).json()),
        ["stays"]
    );
    assert_eq!(
        std::fs::read(root.join("stays/sub/file")).expect("other volume intact"),
        b"x"
    );
}

#[test]
fn removing_a_missing_volume_is_not_found() {
    let d = Berthd::start();
    d.berth(&["volume", "create", "present"]).success();
    let before = entries(&root(&d));
    let err = d.berth(&["volume", "remove", "absent"]).failure();
    assert_error(&err, "error: not found");
    assert!(err.contains("absent"), "{err}");
    assert_eq!(entries(&root(&d)), before);
    // A removed volume is missing too.
    d.berth(&["volume", "remove", "present"]).success();
    let err = d.berth(&["volume", "remove", "present"]).failure();
    assert_error(&err, "error: not found");
}

#[test]
fn an_unknown_service_is_not_found_and_named() {
    let d = Berthd::start();
    let before = entries(&root(&d));
    for args in [
        &["volume", "create", "x", "--service", "nosuch"][..],
        &["volume", "inspect", "x", "--service", "nosuch"],
        &["volume", "remove", "x", "--service", "nosuch"],
        &["volume", "list", "--service", "nosuch"],
    ] {
        let err = d.berth(args).failure();
        assert_error(&err, "error: not found");
        assert!(err.contains("\"nosuch\""), "{args:?}: {err}");
        // It points at the caller's own view instead of listing every
        // configured service (a caller may see only some of them).
        assert!(err.contains("berth service list"), "{err}");
    }
    assert_eq!(entries(&root(&d)), before);
    assert_eq!(d.berth(&["volume", "list", "-o", "json"]).json(), json!([]));
}

#[test]
fn bad_names_are_refused_with_the_rule_and_touch_nothing() {
    let d = Berthd::start();
    let root = root(&d);
    let long = "a".repeat(129);
    let bad = [
        "..",
        ".",
        "a/b",
        "../escape",
        "/etc",
        "",
        "a\tb",
        "a\nb",
        "a\u{1b}b",
        long.as_str(),
        "-x",
        "--",
        ".hidden",
        ".berth",
        "_x",
        "é",
        "caf\u{e9}",
        "a b",
        "a\\b",
    ];
    let before = entries(&root);
    for name in bad {
        for verb in ["create", "inspect", "remove"] {
            let err = d.berth(&["volume", verb, "--", name]).failure();
            assert_error(&err, "error: invalid argument");
            for part in RULE_PARTS {
                assert!(err.contains(part), "{verb} {name:?}: {err}");
            }
        }
        assert_eq!(entries(&root), before, "after {name:?}");
        assert_eq!(
            entries(&meta_dir(&root)),
            Vec::<String>::new(),
            "after {name:?}"
        );
    }
    assert!(!Path::new("/etc").join(".berth").exists());
    assert!(!root.parent().expect("parent").join("escape").exists());
    assert_eq!(d.berth(&["volume", "list", "-o", "json"]).json(), json!([]));
}

#[test]
fn names_at_the_edges_of_the_rule_are_accepted() {
    let d = Berthd::start();
    let longest = "z".repeat(128);
    let good = ["a", "0", "A1", "x_y-z.1", "v.", "v-", longest.as_str()];
    for name in good {
        let v = d.berth(&["volume", "create", name, "-o", "json"]).json();
        assert_eq!(v["name"], name);
        assert!(root(&d).join(name).is_dir(), "{name}");
    }
    let mut expected: Vec<String> = good.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        names(&d.berth(&["volume", "list", "-o", "json"]).json()),
        expected
    );
    assert_eq!(visible(&root(&d)), expected.into_iter().collect());
}

/// The vfs layout keeps one metadata file per volume ("a volume exists
/// exactly when this file does"); creating `x.data` must leave the metadata
/// of a volume called `x.tmp` alone.
#[test]
fn creating_a_volume_keeps_the_metadata_of_one_named_like_its_temp_file() {
    let mut d = Berthd::start();
    d.berth(&["volume", "create", "x.tmp", "--size", "1"])
        .success();
    d.berth(&["volume", "create", "x.data", "--size", "2"])
        .success();
    let meta = meta_dir(&root(&d));
    assert_eq!(entries(&meta), ["x.data", "x.tmp"], "metadata files");
    for (name, size) in [("x.tmp", 1), ("x.data", 2)] {
        let text = std::fs::read_to_string(meta.join(name)).expect("metadata");
        assert_eq!(text.trim(), format!("size_bytes={size}"), "{name}");
    }
    d.restart();
    assert!(
        d.wait_drift_checked(std::time::Duration::from_secs(10)),
        "the controller did not compare its records with the driver:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        !log.contains("missing from its driver"),
        "the controller finds a volume missing after a restart:\n{log}"
    );
}

#[test]
fn bad_sizes_are_refused_with_invalid_size_and_create_nothing() {
    let d = Berthd::start();
    let root = root(&d);
    let before = entries(&root);
    for (size, reason) in [
        ("-1", "does not start with a number"),
        ("abc", "does not start with a number"),
        ("1.5", "whole number of bytes"),
        ("10XB", "unit"),
        ("99999999999999999999", "too large"),
        ("20000PiB", "larger than 2^64"),
        ("", "number"),
        ("1.", "malformed"),
        ("1e3", "unit"),
    ] {
        let arg = format!("--size={size}");
        let err = d.berth(&["volume", "create", "sized", &arg]).failure();
        assert!(err.contains("invalid size"), "{size:?}: {err}");
        assert!(err.contains(&format!("{size:?}")), "names the input: {err}");
        assert!(
            err.contains(reason),
            "{size:?} should say {reason:?}: {err}"
        );
        assert_eq!(entries(&root), before, "{size:?}");
    }
    assert_eq!(d.berth(&["volume", "list", "-o", "json"]).json(), json!([]));
    assert_eq!(entries(&meta_dir(&root)), Vec::<String>::new());
}

/// `--size -1` (the spelling people type) must get the same clear message as
/// `--size=-1`, not a parser complaint about an unexpected argument.
#[test]
fn a_negative_size_as_its_own_argument_is_an_invalid_size() {
    let d = Berthd::start();
    let err = d
        .berth(&["volume", "create", "neg", "--size", "-1"])
        .failure();
    assert!(err.contains("invalid size"), "{err}");
    assert!(!root(&d).join("neg").exists());
}

#[test]
fn sizes_with_units_give_exact_byte_counts() {
    let d = Berthd::start();
    for (i, (size, bytes)) in [
        ("512MiB", 536_870_912u64),
        ("10GiB", 10_737_418_240),
        ("1G", 1_000_000_000),
        ("1.5TiB", 1_649_267_441_664),
        ("4096", 4096),
        ("0", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("s{i}");
        let v = d
            .berth(&["volume", "create", &name, "--size", size, "-o", "json"])
            .json();
        assert_eq!(v["size_bytes"], bytes, "{size}");
        let again = d.berth(&["volume", "inspect", &name, "-o", "json"]).json();
        assert_eq!(again["size_bytes"], bytes, "{size}");
        let meta = std::fs::read_to_string(meta_dir(&root(&d)).join(&name)).expect("metadata");
        assert_eq!(meta.trim(), format!("size_bytes={bytes}"), "{size}");
    }
}

#[test]
fn an_unreachable_controller_fails_fast_with_connection_refused() {
    let mut d = Berthd::start();
    d.kill9();
    for args in [
        &["volume", "list"][..],
        &["volume", "create", "x"],
        &["service", "list", "-o", "json"],
    ] {
        let started = Instant::now();
        let run = d.berth(args);
        let elapsed = started.elapsed();
        let err = run.failure();
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("cannot reach the controller"), "{err}");
        assert!(err.contains("connection refused"), "{err}");
        assert!(
            err.contains(&d.addr.to_string()),
            "names the address: {err}"
        );
        assert!(run.stdout().is_empty(), "{}", run.stdout());
        assert!(
            elapsed < Duration::from_secs(10),
            "{args:?} took {elapsed:?} to fail"
        );
    }
}

// ---- services from a configuration file ----

fn two_service_config(fast: &Path, bulk: &Path) -> String {
    format!(
        "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n\n\
         [[services]]\nname = \"bulk\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n",
        fast.display().to_string(),
        bulk.display().to_string()
    )
}

#[test]
fn two_configured_services_are_kept_apart() {
    // The roots and the file live in a directory that outlives the controller.
    let tmp = tempfile::tempdir().expect("tempdir");
    let fast = tmp.path().join("fast-root");
    let bulk = tmp.path().join("bulk-root");
    let config = tmp.path().join("berthd.toml");
    std::fs::write(&config, two_service_config(&fast, &bulk)).expect("write config");
    let d = Berthd::start_with(&["--config", config.to_str().expect("utf-8 path")]);

    let services = d.berth(&["service", "list", "-o", "json"]).json();
    let mut listed = field_pairs(&services, "name", "driver");
    listed.sort();
    assert_eq!(
        listed,
        [("bulk".into(), "vfs".into()), ("fast".into(), "vfs".into())]
    );
    let table = d.berth(&["service", "list"]).success();
    let rows = table_rows(&table, &["NAME", "DRIVER", "CAPABILITIES", "STATUS"]);
    let mut names_in_table: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    names_in_table.sort();
    assert_eq!(names_in_table, ["bulk", "fast"], "{table}");
    assert!(!d.data_dir.join("volumes").exists(), "no default service");

    // No --service: refused, naming both and the way out.
    let err = d.berth(&["volume", "create", "x"]).failure();
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("fast") && err.contains("bulk"), "{err}");
    assert!(err.contains("--service"), "{err}");
    assert_eq!(visible(&fast), BTreeSet::new());
    assert_eq!(visible(&bulk), BTreeSet::new());

    let v = d
        .berth(&["volume", "create", "x", "--service", "fast", "-o", "json"])
        .json();
    assert_eq!(v["service"], "fast");
    assert_eq!(v["fields"]["path"], fast.join("x").display().to_string());
    assert!(fast.join("x").is_dir());
    assert_eq!(visible(&bulk), BTreeSet::new(), "nothing in bulk's root");
    assert_eq!(entries(&meta_dir(&bulk)), Vec::<String>::new());

    assert_eq!(
        d.berth(&["volume", "list", "--service", "bulk", "-o", "json"])
            .json(),
        json!([])
    );
    let only_fast = d
        .berth(&["volume", "list", "--service", "fast", "-o", "json"])
        .json();
    assert_eq!(names(&only_fast), ["x"]);
    // Inspect without --service is ambiguous as well.
    let err = d.berth(&["volume", "inspect", "x"]).failure();
    assert!(err.contains("--service"), "{err}");

    // The same name in the other service is another volume.
    let w = d
        .berth(&["volume", "create", "x", "--service", "bulk", "-o", "json"])
        .json();
    assert_eq!(w["service"], "bulk");
    assert_ne!(w["id"], v["id"]);
    assert_eq!(w["fields"]["path"], bulk.join("x").display().to_string());
    let all = d.berth(&["volume", "list", "-o", "json"]).json();
    let mut pairs = field_pairs(&all, "service", "name");
    pairs.sort();
    assert_eq!(
        pairs,
        [("bulk".into(), "x".into()), ("fast".into(), "x".into())]
    );

    // Removing from one leaves the other.
    d.berth(&["volume", "remove", "x", "--service", "bulk"])
        .success();
    assert!(!bulk.join("x").exists());
    assert!(fast.join("x").is_dir());
    assert_eq!(
        d.berth(&["volume", "inspect", "x", "--service", "fast", "-o", "json"])
            .json(),
        v
    );
}

/// Runs `berthd --config <text>` and expects it to exit non-zero without
/// ever serving; returns its stderr.
fn start_must_fail(config_text: &str) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let config = tmp.path().join("bad-config.toml");
    std::fs::write(
        &config,
        config_text.replace("@ROOT@", &tmp.path().display().to_string()),
    )
    .expect("write config");
    let mut child = Command::new(bin("berthd"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("BERTH_DATA_DIR")
        .env_remove("BERTH_HOST")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berthd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait berthd") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthd kept running with a bad config:\n{config_text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "berthd exited 0 with a bad config");
    assert!(
        !stdout.contains("listening on"),
        "berthd served with a bad config: {stdout}"
    );
    let path = config.display().to_string();
    assert!(
        stderr.contains(&path),
        "the message must name {path}: {stderr}"
    );
    stderr
}

#[test]
fn a_config_with_an_unknown_driver_stops_start_up() {
    let err = start_must_fail(
        "[[services]]\nname = \"fast\"\ndriver = \"zfs\"\n[services.options]\nroot = \"@ROOT@/fast\"\n",
    );
    assert!(err.contains("\"fast\""), "names the service: {err}");
    assert!(err.contains("unknown driver"), "{err}");
    assert!(err.contains("zfs"), "{err}");
    assert!(err.contains("vfs"), "lists the known drivers: {err}");
}

#[test]
fn a_config_declaring_a_service_twice_stops_start_up() {
    let err = start_must_fail(
        "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\nroot = \"@ROOT@/a\"\n\n\
         [[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\nroot = \"@ROOT@/b\"\n",
    );
    assert!(err.contains("\"fast\""), "names the service: {err}");
    assert!(err.contains("more than once"), "{err}");
}

#[test]
fn a_config_with_an_unknown_driver_option_stops_start_up() {
    let err = start_must_fail(
        "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\nrot = \"@ROOT@/fast\"\n",
    );
    assert!(err.contains("\"fast\""), "names the service: {err}");
    assert!(err.contains("rot"), "names the option: {err}");
    assert!(err.contains("root"), "lists the known options: {err}");
}
