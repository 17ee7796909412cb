//! The client's list of controllers: `--host a:7979,b:7979` and the client
//! config's `hosts = [...]`. Two real `berthd` serve the same operator
//! certificate (`--tls-cert`), so one pin, saved for the first controller
//! only, trusts both; the client is the `berth` binary with its own home.
//! The two controllers keep their own catalogues here (no etcd needed), so
//! the answers show which one served each call.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::openssl::{fingerprint, shared_server_identity};
use berth_tests::process::{run_bounded, PROCESS_TIMEOUT};
use berth_tests::{bin, home_env, listed, Berthd, Run};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A client with its own home (trust store) and config file.
struct Client {
    home: tempfile::TempDir,
    config: PathBuf,
}

impl Client {
    fn berth(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin("berth"));
        home_env(&mut cmd, self.home.path());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null());
        Run(run_bounded(cmd, PROCESS_TIMEOUT))
    }
}

fn start(cert: &Path, key: &Path) -> Berthd {
    Berthd::start_with(&["--tls-cert", path_str(cert), "--tls-key", path_str(key)])
}

#[test]
fn a_host_list_fails_over_on_connection_errors_only_and_one_pin_covers_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = shared_server_identity(tmp.path());
    let mut a = start(&cert, &key);
    let mut b = start(&cert, &key);
    let (ha, hb) = (a.addr.to_string(), b.addr.to_string());
    let token = |d: &Berthd| d.data_dir.join("auth/admin.token");

    // Credentials per controller (each has its own bootstrap token until
    // the registry is shared); the pin is saved for A alone.
    let client = Client {
        home: tempfile::tempdir().expect("client home"),
        config: tmp.path().join("client.toml"),
    };
    std::fs::write(
        &client.config,
        format!(
            "hosts = [{ha:?}, {hb:?}]\n\n[controllers.{ha:?}]\ntoken_file = {:?}\n\n\
             [controllers.{hb:?}]\ntoken_file = {:?}\n",
            token(&a),
            token(&b)
        ),
    )
    .expect("client config");
    let fp = fingerprint(&ca);
    client.berth(&["trust", "add", &ha, &fp]).success();

    // Both up: the first of the list serves.
    client
        .berth(&["volume", "create", "on-a", "-o", "json"])
        .success();
    assert!(listed(&a).contains_key("on-a"));
    b.berth(&["volume", "create", "only-b"]).success();

    // An application error is an answer, not a reason to ask B.
    let run = client.berth(&["volume", "inspect", "only-b"]);
    let err = run.failure();
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("trying"), "no failover on NOT_FOUND: {err}");

    // The pin covers the listed controllers, not any controller: B alone,
    // outside the list, is a first contact.
    let alone = client.berth(&["--host", &hb, "volume", "list"]).failure();
    assert!(alone.contains("not trusted yet"), "{alone}");

    // A dies: the next call goes to B, trusted by A's pin.
    a.kill9();
    let started = Instant::now();
    let run = client.berth(&["--timeout", "10s", "volume", "list", "-o", "json"]);
    let took = started.elapsed();
    let names: Vec<String> = run
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["only-b"], "B answered");
    assert!(
        run.stderr().contains(&format!("trying {hb}")),
        "the failover is noted: {}",
        run.stderr()
    );
    assert!(took < Duration::from_secs(5), "failed over in {took:?}");
    println!("failover to the second controller: {} ms", took.as_millis());

    // The flag form, with the same pin.
    let flag = format!("{ha},{hb}");
    client
        .berth(&["--host", &flag, "volume", "inspect", "only-b", "-o", "json"])
        .success();

    // A controller of the list presenting another CA stops the client: a
    // changed fingerprint is never skipped over.
    let other = Berthd::start();
    let with_other = format!("{ha},{}", other.addr);
    let err = client
        .berth(&["--host", &with_other, "volume", "list"])
        .failure();
    assert!(err.contains("fingerprint changed"), "{err}");

    // None reachable: one error naming every controller, within --timeout.
    b.kill9();
    let started = Instant::now();
    let err = client
        .berth(&["--timeout", "5s", "volume", "list"])
        .failure();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.contains(&ha) && err.contains(&hb), "{err}");
    assert!(err.contains("no controller of the list answered"), "{err}");

    // `trust add` and `trust rm` take the list too: one pin per controller.
    client.berth(&["trust", "add", &flag, &fp]).success();
    let pins = client.berth(&["trust", "ls", "-o", "json"]).json();
    let mut pinned: Vec<&str> = pins
        .as_array()
        .expect("array")
        .iter()
        .filter(|p| p["fingerprint"] == fp.as_str())
        .filter_map(|p| p["host"].as_str())
        .collect();
    pinned.sort_unstable();
    let mut both = [ha.as_str(), hb.as_str()];
    both.sort_unstable();
    assert_eq!(pinned, both, "{pins}");
    client.berth(&["trust", "rm", &flag]).success();
    let err = client.berth(&["trust", "add", "a,,b", &fp]).failure();
    assert!(err.contains("empty name"), "{err}");
}
