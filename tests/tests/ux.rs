//! What a user of the CLI expects (issue 17, client side): completions and
//! manual pages generated from the clap definitions, help that a person
//! reads, and the stumbles of a first run, each checked through the real
//! `berth` against a real `berthd` on loopback.

use std::path::Path;
use std::process::{Command, Stdio};

use berth_tests::process::{run_bounded, text, PROCESS_TIMEOUT};
use berth_tests::{bin, Berthd, Run};

/// Runs `berth` with no controller involved (completions, man, help), in an
/// empty home so no config of the machine is read.
#[track_caller]
fn berth_alone(home: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("berth"));
    for var in ["BERTH_HOST", "BERTH_CONFIG", "BERTH_TOKEN", "BERTH_TIMEOUT"] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .args(args)
        .stdin(Stdio::null());
    Run(run_bounded(cmd, PROCESS_TIMEOUT))
}

/// Runs `berth` against `d` under another name of it (`--host HOST`).
#[track_caller]
fn berth_at(d: &Berthd, host: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("berth"));
    d.env(&mut cmd);
    cmd.env("BERTH_TIMEOUT", "10s")
        .arg("--host")
        .arg(host)
        .args(args)
        .stdin(Stdio::null());
    Run(run_bounded(cmd, PROCESS_TIMEOUT))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Checks a script's syntax with `shell FLAGS FILE` when the shell is here.
#[track_caller]
fn syntax_ok(shell: &str, flags: &[&str], script: &Path) {
    if !have(shell) {
        return;
    }
    let mut cmd = Command::new(shell);
    cmd.args(flags).arg(script).stdin(Stdio::null());
    let out = run_bounded(cmd, PROCESS_TIMEOUT);
    assert!(
        out.status.success(),
        "{shell} {flags:?} refused the completion script: {}",
        text(&out.stderr)
    );
}

#[test]
fn completions_are_generated_for_every_shell() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
        ("elvish", "edit:completion:arg-completer[berth]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = berth_alone(tmp.path(), &["completions", shell]).success();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in ["volume", "snapshot", "trust", "host", "size"] {
            assert!(script.contains(word), "{shell}: {word} not completed");
        }
        let path = tmp.path().join(format!("berth.{shell}"));
        std::fs::write(&path, &script).expect("write the script");
        match shell {
            "bash" => syntax_ok("bash", &["-n"], &path),
            "zsh" => syntax_ok("zsh", &["-n"], &path),
            "fish" => syntax_ok("fish", &["--no-execute"], &path),
            _ => {}
        }
    }
    let err = berth_alone(tmp.path(), &["completions", "tcsh"]).failure();
    assert!(err.contains("bash") && err.contains("powershell"), "{err}");
}

#[test]
fn man_pages_are_written_and_render() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let page = berth_alone(tmp.path(), &["man"]).success();
    assert!(
        page.starts_with(".ie") || page.contains(".TH berth 1"),
        "{page}"
    );
    assert!(page.contains(".SH SYNOPSIS") && page.contains(".SH SUBCOMMANDS"));

    let dir = tmp.path().join("man1");
    let dir_arg = dir.to_str().expect("a UTF-8 path");
    berth_alone(tmp.path(), &["man", "--dir", dir_arg]).success();
    for name in [
        "berth.1",
        "berth-volume.1",
        "berth-volume-create.1",
        "berth-trust-show.1",
        "berth-completions.1",
    ] {
        let path = dir.join(name);
        let roff = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(roff.contains(".TH ") && roff.contains(".SH NAME"), "{name}");
    }
    let create = dir.join("berth-volume-create.1");
    let rendered = if have("man") {
        let mut cmd = Command::new("man");
        cmd.arg("-l")
            .arg(&create)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "100")
            .stdin(Stdio::null());
        run_bounded(cmd, PROCESS_TIMEOUT)
    } else if have("groff") {
        let mut cmd = Command::new("groff");
        cmd.args(["-man", "-Tutf8"])
            .arg(&create)
            .stdin(Stdio::null());
        run_bounded(cmd, PROCESS_TIMEOUT)
    } else {
        return;
    };
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    let shown = text(&rendered.stdout);
    assert!(
        shown.contains("NAME") && shown.contains("SYNOPSIS"),
        "{shown}"
    );
    assert!(shown.contains("--size"), "{shown}");
    assert!(
        shown.contains("berth volume create db --size 10GiB"),
        "{shown}"
    );
}

/// Every leaf command: its help has an example, its own options apart from
/// the global ones, and a description for every argument.
#[test]
fn help_is_written_for_people() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = berth_alone(tmp.path(), &["--help"]).success();
    assert!(!top.contains("thin Berth command-line client"), "{top}");
    assert!(top.contains("storage volumes"), "{top}");
    assert_eq!(top.matches("Global options:").count(), 1, "{top}");
    assert!(top.contains("Examples:"), "{top}");

    let volume = berth_alone(tmp.path(), &["volume", "--help"]).success();
    assert!(volume.contains("[alias: ls]"), "{volume}");
    assert!(volume.contains("[alias: rm]"), "{volume}");

    let leaves: &[&[&str]] = &[
        &["service", "list"],
        &["volume", "list"],
        &["volume", "create"],
        &["volume", "inspect"],
        &["volume", "remove"],
        &["volume", "attach"],
        &["volume", "detach"],
        &["volume", "copy"],
        &["snapshot", "create"],
        &["snapshot", "list"],
        &["snapshot", "inspect"],
        &["snapshot", "remove"],
        &["trust", "list"],
        &["trust", "add"],
        &["trust", "remove"],
        &["trust", "show"],
        &["token", "issue"],
        &["token", "list"],
        &["token", "revoke"],
        &["token", "rotate-admin"],
        &["cert", "sign"],
        &["cert", "issue"],
        &["cert", "list"],
        &["cert", "revoke"],
        &["ca", "show"],
        &["completions"],
        &["man"],
    ];
    for leaf in leaves {
        let mut args = leaf.to_vec();
        args.push("-h");
        let help = berth_alone(tmp.path(), &args).success();
        let what = leaf.join(" ");
        assert!(help.contains("Example"), "{what}: no example\n{help}");
        assert_eq!(help.matches("Global options:").count(), 1, "{what}\n{help}");
        let own = help.split("Global options:").next().unwrap_or_default();
        assert!(
            !own.contains("--host"),
            "{what}: globals among its own\n{help}"
        );
        // `-h` puts each argument on one line: name, then its description.
        for line in help.lines() {
            let trimmed = line.trim_start();
            let is_arg = line.starts_with("  ")
                && (trimmed.starts_with('<')
                    || trimmed.starts_with('-')
                    || trimmed.starts_with('['));
            if is_arg {
                let described = trimmed
                    .split_once("  ")
                    .is_some_and(|(_, d)| !d.trim().is_empty());
                assert!(described, "{what}: {trimmed:?} has no description\n{help}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The stumbles of a first run, through the real CLI.

/// (2) `--plaintext` against the TLS port says the controller speaks TLS.
#[test]
fn plaintext_against_tls_says_the_controller_speaks_tls() {
    let d = Berthd::start();
    let err = d.berth(&["--plaintext", "service", "list"]).failure();
    assert!(err.contains("speaks TLS"), "{err}");
    assert!(err.contains("--plaintext"), "{err}");
    assert!(!err.contains("transport error"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// (3) A host without a port means port 7979.
#[test]
fn a_host_without_a_port_means_7979() {
    let d = Berthd::start();
    // Nothing of ours listens on 7979: whatever happens, it is that port
    // that was tried.
    let run = berth_at(&d, "127.0.0.1", &["service", "list"]);
    if !run.ok() {
        assert!(run.stderr().contains("127.0.0.1:7979"), "{}", run.stderr());
    }
    let fp = "AA:".repeat(31) + "AA";
    d.berth(&["trust", "add", "127.0.0.1", &fp]).success();
    let list = d.berth(&["trust", "list", "-o", "json"]).json();
    let hosts: Vec<&str> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter(|p| p["source"] == "trust store")
        .filter_map(|p| p["host"].as_str())
        .collect();
    assert_eq!(hosts, ["127.0.0.1:7979"], "{list}");
}

/// (4) `localhost:PORT` is the controller the config pins as
/// `127.0.0.1:PORT`: its pin and its credential apply, no prompt.
#[test]
fn another_name_of_the_pinned_controller_uses_its_pin_and_credential() {
    let d = Berthd::start();
    let alias = format!("localhost:{}", d.addr.port());
    let out = berth_at(&d, &alias, &["service", "list", "-o", "json"]).json();
    assert_eq!(out[0]["name"], "local", "{out}");
    let out = berth_at(&d, &alias, &["trust", "show"]).success();
    assert!(out.contains("matches the pin"), "{out}");
}

/// (5) `trust show` compares with the pin; `trust remove` of a config pin
/// says where it lives.
#[test]
fn trust_show_compares_with_the_pin_and_remove_says_where_it_lives() {
    let d = Berthd::start();
    let host = d.addr.to_string();
    let out = d.berth(&["trust", "show"]).success();
    assert!(
        out.contains("matches the pin in the client config"),
        "{out}"
    );

    let wrong = "AB:".repeat(31) + "AB";
    let run = d.berth(&["--fingerprint", &wrong, "trust", "show", &host]);
    let err = run.failure();
    assert!(
        run.stdout().contains("DIFFERS from the pin"),
        "{}",
        run.stdout()
    );
    assert!(err.contains("differs from the pin"), "{err}");
    let json = d.berth(&["--fingerprint", &wrong, "-o", "json", "trust", "show"]);
    assert!(!json.ok());
    let v: serde_json::Value = serde_json::from_str(&json.stdout()).expect("JSON on stdout");
    assert_eq!(v["matches"], false, "{v}");

    let err = d.berth(&["trust", "remove", &host]).failure();
    assert!(err.contains("client config"), "{err}");
    assert!(err.contains(&format!("[controllers.\"{host}\"]")), "{err}");
    // Still pinned there: the controller answers without a prompt.
    d.berth(&["service", "list"]).success();
}

/// (6) `volume detach` says what it detached.
#[test]
fn detach_says_what_happened() {
    let d = Berthd::start();
    d.berth(&["volume", "create", "demo", "--size", "1MiB"])
        .success();
    d.berth(&["volume", "attach", "demo", "--instance", "vm1"])
        .success();
    let out = d
        .berth(&["volume", "detach", "demo", "--instance", "vm1"])
        .success();
    assert!(out.contains("detached demo from vm1"), "{out}");
}

/// (7) Sizes in the kind of unit typed, errors included; no silent 0 B.
#[test]
fn sizes_read_as_they_were_typed() {
    let d = Berthd::start();
    let out = d
        .berth(&["volume", "create", "m", "--size", "1M"])
        .success();
    assert!(out.contains("1 MB (1000000 bytes)"), "{out}");
    let out = d
        .berth(&["volume", "create", "mi", "--size", "1MiB"])
        .success();
    assert!(out.contains("1 MiB (1048576 bytes)"), "{out}");
    let list = d.berth(&["volume", "list"]).success();
    assert!(
        list.lines()
            .any(|l| l.starts_with("m ") && l.contains(" 1 MB ")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("mi ") && l.contains(" 1 MiB ")),
        "{list}"
    );

    let err = d
        .berth(&["volume", "create", "m", "--size", "2M"])
        .failure();
    assert!(err.starts_with("error: already exists"), "{err}");
    assert!(err.contains("1 MB"), "{err}");
    assert!(!err.contains("1000000 bytes"), "{err}");

    let run = d.berth(&["volume", "create", "zero"]);
    run.success();
    assert!(run.stderr().contains("unsized"), "{}", run.stderr());
    let out = d.berth(&["volume", "inspect", "zero"]).success();
    assert!(out.contains("unsized"), "{out}");
}

/// (8) TOML errors keep the toml crate's line, column and caret; no
/// backtrace, whatever RUST_BACKTRACE says.
#[test]
fn config_errors_show_the_caret_and_never_a_backtrace() {
    let d = Berthd::start();
    let config = d.path("bad.toml");
    std::fs::write(&config, "host = \"x\"\n[controllers.a]\nfoo = 1\n").expect("write");
    let config = config.to_str().expect("UTF-8");
    let mut cmd = d.berth_cmd(&["--config", config, "service", "list"]);
    cmd.env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1");
    let err = Run(run_bounded(cmd, PROCESS_TIMEOUT)).failure();
    assert!(err.contains(config), "{err}");
    assert!(err.contains("line 3, column 1"), "{err}");
    assert!(
        err.lines().any(|l| l.trim_end().ends_with("| ^^^")),
        "{err}"
    );
    assert!(err.contains("unknown field `foo`"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(err.lines().count() < 10, "{err}");

    // Another user error, with the same environment: one line.
    let mut cmd = d.berth_cmd(&["volume", "inspect", "nosuch"]);
    cmd.env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1");
    let err = Run(run_bounded(cmd, PROCESS_TIMEOUT)).failure();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// (10) `volume inspect`: no empty options row; the driver's facts sit
/// under the driver row.
#[test]
fn inspect_has_no_empty_options_row() {
    let d = Berthd::start();
    d.berth(&["volume", "create", "plain", "--size", "1GiB"])
        .success();
    let out = d.berth(&["volume", "inspect", "plain"]).success();
    let rows: Vec<(&str, &str)> = out
        .lines()
        .skip(1)
        .map(|l| match l.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (l, ""),
        })
        .collect();
    assert!(
        rows.iter().all(|(_, v)| !v.is_empty()),
        "an empty row:\n{out}"
    );
    assert!(rows.contains(&("options", "none")), "{out}");
    let driver = rows
        .iter()
        .position(|(k, _)| *k == "driver")
        .expect("a driver row");
    assert_eq!(rows.get(driver + 1).map(|r| r.0), Some("path"), "{out}");
}

/// (9) The installed client configuration describes itself: it is the
/// user's default config (never "copy it to" itself), and the copy in the
/// data directory says that berthd rewrites it.
#[test]
fn the_installed_client_config_describes_itself() {
    let mut d = Berthd::start();
    let installed = d.home.join(".config/berth/config.toml");
    let text = std::fs::read_to_string(&installed).expect("berthd installed a client config");
    assert!(!text.contains("copy it to"), "{text}");
    assert!(
        text.contains(&format!(
            "Your berth client configuration ({})",
            installed.display()
        )),
        "{text}"
    );
    assert!(text.contains("never rewrites it"), "{text}");
    // It is what `berth` reads without flags.
    d.berth(&["service", "list"]).success();

    let own = d.data_dir.join("client.toml");
    let profile = std::fs::read_to_string(&own).expect("client.toml");
    assert!(
        profile.contains(&format!("berth --config {}", own.display())),
        "{profile}"
    );
    assert!(profile.contains("rewritten by berthd at"), "{profile}");

    // A restart rewrites its own profile but leaves the installed one alone.
    std::fs::write(&installed, format!("{text}# mine\n")).expect("edit");
    d.restart();
    let after = std::fs::read_to_string(&installed).expect("still there");
    assert!(after.ends_with("# mine\n"), "{after}");
}

/// A controller `berthd --detach` left running, stopped (by the pid it
/// printed) when the test ends.
struct Detached {
    pid: u32,
}

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
    }
}

/// `berthd ARGS` in the home `home`, run to completion.
fn berthd_in(home: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("berthd"));
    berth_tests::home_env(&mut cmd, home);
    cmd.args(args).stdin(Stdio::null());
    Run(run_bounded(cmd, PROCESS_TIMEOUT))
}

/// (1) The quickstart's controller: `berthd --detach` returns once it
/// serves, says where (pid, address, log file in the data directory) and
/// keeps the terminal clean; a second one on the same data directory fails
/// with one line naming the first one's pid, detached or not, so the
/// quickstart's `&&` chain stops.
#[test]
fn detached_berthd_is_quiet_and_a_second_one_fails_naming_the_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let data = tmp.path().join("data");
    let data_arg = data.to_str().expect("UTF-8");
    let run = berthd_in(
        &home,
        &[
            "--detach",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
        ],
    );
    let out = run.success();
    let pid: u32 = out
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {out}"));
    let _guard = Detached { pid };
    let log = data.join("berthd.log");
    assert!(out.contains(&log.display().to_string()), "{out}");
    assert!(out.contains(&format!("kill {pid}")), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(run.stderr().is_empty(), "{}", run.stderr());
    assert!(!out.contains('\x1b'), "ANSI codes on the terminal: {out:?}");
    let addr = out
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("no address in: {out}"));
    let log_text = std::fs::read_to_string(&log).expect("the log file");
    assert!(log_text.contains("berthd serving"), "{log_text}");
    assert!(!log_text.contains('\x1b'), "ANSI codes in the log file");
    // The background controller serves the user's client config.
    let mut cmd = Command::new(bin("berth"));
    berth_tests::home_env(&mut cmd, &home);
    cmd.args(["--host", addr, "service", "list"])
        .stdin(Stdio::null());
    Run(run_bounded(cmd, PROCESS_TIMEOUT)).success();

    let expected = format!(
        "another berthd is already using {} (pid {pid})",
        data.display()
    );
    for detach in [true, false] {
        let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", data_arg];
        if detach {
            args.insert(0, "--detach");
        }
        let err = berthd_in(&home, &args).failure();
        assert!(err.contains(&expected), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // Under the quickstart's `&&`, the next command does not run.
    let chain = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --detach --listen 127.0.0.1:0 --data-dir \"$1\" && echo carried-on")
        .arg(bin("berthd"))
        .arg(&data)
        .env("HOME", &home)
        .env_remove("BERTH_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(!chain.status.success());
    assert!(!String::from_utf8_lossy(&chain.stdout).contains("carried-on"));
    // The first one is untouched.
    let mut cmd = Command::new(bin("berth"));
    berth_tests::home_env(&mut cmd, &home);
    cmd.args(["--host", addr, "service", "list"])
        .stdin(Stdio::null());
    Run(run_bounded(cmd, PROCESS_TIMEOUT)).success();
}

/// (11) `.ci/total` sums cargo's per-binary result lines into one total,
/// names the binaries that failed and fails with them.
#[test]
fn ci_total_prints_one_total_line() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/total");
    let total = |input: &str| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        let out =
            berth_tests::process::run_bounded_fed(cmd, Some(input.as_bytes()), PROCESS_TIMEOUT);
        (out.status.success(), text(&out.stdout))
    };
    let ok = "     Running unittests src/lib.rs (target/debug/deps/berth_drivers-1)\n\
              test result: ok. 15 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.37s\n\
              \x20    Running tests/ux.rs (target/debug/deps/ux-2)\n\
              test result: ok. 13 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 61.28s\n\
              \x20  Doc-tests berth_drivers\n\
              test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.1s\n";
    let (passed, out) = total(ok);
    assert!(passed, "{out}");
    assert!(
        out.starts_with("     Running unittests"),
        "the output passes through: {out}"
    );
    assert_eq!(
        out.lines().last(),
        Some("total: 29 passed, 0 failed, 2 ignored in 3 test binaries"),
        "{out}"
    );
    let failed = ok.replace(
        "test result: ok. 13 passed; 0 failed",
        "test result: FAILED. 11 passed; 2 failed",
    );
    let (passed, out) = total(&failed);
    assert!(!passed, "{out}");
    assert_eq!(
        out.lines().last(),
        Some("total: 27 passed, 2 failed, 2 ignored in 3 test binaries; failed: tests/ux.rs (target/debug/deps/ux-2)"),
        "{out}"
    );
    let (passed, out) = total("error[E0425]: cannot find value `x`\n");
    assert!(!passed, "{out}");
    assert!(out.contains("no test ran"), "{out}");
}

/// `volume list` and `inspect` show the space a volume uses where the
/// driver knows it: a vfs directory's allocated blocks, an image file's
/// allocated size (a sparse image uses little of its size).
#[test]
fn list_and_inspect_show_the_space_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Berthd::start_fs_and_img(tmp.path(), "");
    d.berth(&[
        "volume",
        "create",
        "data",
        "--service",
        "fs",
        "--size",
        "64MiB",
    ])
    .success();
    d.berth(&[
        "volume",
        "create",
        "disk",
        "--service",
        "img",
        "--size",
        "64MiB",
    ])
    .success();
    let used = |name: &str| -> u64 {
        let service = if name == "data" { "fs" } else { "img" };
        let v = d
            .berth(&[
                "volume",
                "inspect",
                name,
                "--service",
                service,
                "-o",
                "json",
            ])
            .json();
        v["used_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no used_bytes: {v}"))
    };
    let (dir_before, img_before) = (used("data"), used("disk"));
    assert!(img_before < 1 << 20, "a new sparse image uses {img_before}");
    let mib = vec![7u8; 1 << 20];
    let dir = tmp.path().join("fs/data");
    std::fs::write(dir.join("f"), &mib).expect("write into the vfs volume");
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/g"), &mib).expect("write");
    let image = tmp.path().join("img/disk.img");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    std::os::unix::fs::FileExt::write_all_at(&file, &mib, 8 << 20).expect("write into the image");
    file.sync_all().expect("sync");
    let (dir_after, img_after) = (used("data"), used("disk"));
    assert!(
        dir_after >= dir_before + (2 << 20),
        "{dir_before} -> {dir_after}"
    );
    assert!(
        img_after >= img_before + (1 << 20),
        "{img_before} -> {img_after}"
    );
    assert!(img_after < 64 << 20, "{img_after}");

    let table = d
        .berth(&["volume", "inspect", "data", "--service", "fs"])
        .success();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("used ") && l.contains(&format!("({dir_after} bytes)"))),
        "{table}"
    );
    let list = d.berth(&["volume", "list"]).success();
    let header: Vec<&str> = list
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header[4], "USED", "{list}");
    let list = d.berth(&["volume", "list", "-o", "json"]).json();
    let listed: Vec<u64> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["used_bytes"].as_u64().expect("used_bytes in the listing"))
        .collect();
    assert_eq!(listed, [dir_after, img_after], "{list}");
}

/// Progress on long work: on a terminal, `volume copy`, `snapshot create`
/// and `volume create --from-snapshot` draw the bytes done, the rate and the
/// time left while the controller streams them, then one line with the
/// elapsed time; without a terminal, or with `-o json`, nothing of it.
#[test]
fn long_work_shows_progress_on_a_terminal_only() {
    let d = Berthd::start();
    d.berth(&["volume", "create", "big", "--size", "1GiB"])
        .success();
    // 48 MiB in 12 files: the copy reports after each.
    let dir = d.data_dir.join("volumes/big");
    let chunk = vec![5u8; 4 << 20];
    for i in 0..12 {
        std::fs::write(dir.join(format!("f{i}")), &chunk).expect("fill the volume");
    }
    let on_pty = |args: &[&str]| {
        let out = berth_tests::pty::berth_on_pty(&d, "n", args);
        let said = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {said}");
        said
    };
    for (args, what) in [
        (
            &["volume", "copy", "big", "big2"][..],
            "copying big to big2",
        ),
        (
            &["snapshot", "create", "big", "snap"][..],
            "taking snapshot snap of big",
        ),
        (
            &["volume", "create", "back", "--from-snapshot", "snap"][..],
            "restoring snap into back",
        ),
    ] {
        let said = on_pty(args);
        // The bar: its label, bytes done out of the total, a rate and the
        // time left.
        assert!(said.contains(what), "{args:?}: {said}");
        assert!(said.contains("/48.00 MiB"), "no total in the bar: {said}");
        assert!(said.contains("/s"), "no rate: {said}");
        assert!(said.contains(" left"), "no time left: {said}");
        // The last line of progress: what was done, in how long.
        let done = said
            .lines()
            .map(|l| l.rsplit('\r').next().unwrap_or(l))
            .find(|l| l.contains(&format!("done {what} (48 MiB, ")))
            .unwrap_or_else(|| panic!("no final line: {said}"));
        assert!(done.trim_end().ends_with("s)"), "{done}");
    }
    // An error ends the stream as the call's status: one line, non-zero.
    let out = berth_tests::pty::berth_on_pty(&d, "n", &["volume", "copy", "nosuch", "x"]);
    let said = text(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("error: not found"), "{said}");
    assert!(!said.contains("done copying"), "{said}");
    // Off a terminal: the plain calls, nothing on stderr.
    let run = d.berth(&["volume", "copy", "big", "big3"]);
    run.success();
    assert!(run.stderr().is_empty(), "{}", run.stderr());
    let run = d.berth(&["snapshot", "create", "big", "snap2"]);
    run.success();
    assert!(run.stderr().is_empty(), "{}", run.stderr());
    // On a terminal with -o json: JSON only.
    let said = on_pty(&["-o", "json", "volume", "copy", "big", "big4"]);
    assert!(!said.contains("copying"), "{said}");
    assert!(said.contains("\"name\": \"big4\""), "{said}");
    // Every copy holds the data.
    for name in ["big2", "back", "big3", "big4"] {
        let copy = d.data_dir.join("volumes").join(name).join("f11");
        assert_eq!(
            std::fs::metadata(&copy).map(|m| m.len()).ok(),
            Some(4 << 20),
            "{name}"
        );
    }
}
