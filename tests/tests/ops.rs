//! What operators run: the metrics listener scraped over HTTP, JSON log
//! lines, the audit of allowed listings, `berthd check-config` and the
//! certificate dates of `berthd fingerprint` (issue 17, operators).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::tokens::{admin_token, issue};
use berth_tests::{bin, entries, Berthd};
use serde_json::Value;

/// The address of the metrics listener, from its log line.
fn metrics_addr(d: &Berthd) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for line in d.log().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if v["message"] == "serving metrics" {
                    return v["address"]
                        .as_str()
                        .expect("address")
                        .parse()
                        .expect("addr");
                }
            } else if let Some(rest) = line.split("serving metrics address=").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .expect("addr")
                    .parse()
                    .expect("addr");
            }
        }
        assert!(
            Instant::now() < deadline,
            "no metrics line in:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One plain HTTP/1.1 GET: status line, headers and body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect to the metrics port");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    (head.to_owned(), body.to_owned())
}

/// Samples of an OpenMetrics text, `name{labels}` to value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("name and value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn scrape(addr: SocketAddr) -> (String, BTreeMap<String, f64>) {
    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let s = samples(&body);
    (body, s)
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_are_served_counted_and_logged_as_json() {
    let d = Berthd::start_with(&["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]);
    let addr = metrics_addr(&d);
    let (_, before) = scrape(addr);
    let list = r#"berth_rpc_requests_total{method="ListVolumes",service="",code="OK"}"#;
    assert_eq!(value(&before, list), 0.0);

    d.berth(&["volume", "list"]).success();
    d.berth(&["volume", "create", "m1", "--size", "1M"])
        .success();
    let alice = issue(&d, &["alice", "--services", "elsewhere", "--allow-unknown"]);
    d.berth(&["--token", &alice, "volume", "list", "--service", "local"])
        .failure();

    let (body, after) = scrape(addr);
    eprintln!("scrape: {} bytes, {} samples", body.len(), after.len());
    for name in [
        "berth_rpc_requests",
        "berth_rpc_duration_seconds",
        "berth_driver_operation_seconds",
        "berth_authz_refusals",
        "berth_tls_handshakes",
        "berth_connections_open",
        "berth_volumes",
        "berth_snapshots",
        "berth_certificate_expiry_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{body}"
        );
    }
    assert!(value(&after, list) >= 1.0, "{body}");
    assert_eq!(
        value(
            &after,
            r#"berth_rpc_requests_total{method="CreateVolume",service="local",code="OK"}"#
        ),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(
            &after,
            r#"berth_rpc_requests_total{method="ListVolumes",service="",code="PERMISSION_DENIED"}"#
        ),
        1.0,
        "{body}"
    );
    assert!(
        value(
            &after,
            r#"berth_rpc_duration_seconds_count{method="ListVolumes",service=""}"#
        ) >= 2.0
    );
    assert_eq!(
        value(
            &after,
            r#"berth_driver_operation_seconds_count{service="local",driver="vfs",operation="create",result="ok"}"#
        ),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(
            &after,
            r#"berth_authz_refusals_total{reason="out_of_scope"}"#
        ),
        1.0
    );
    assert_eq!(value(&after, r#"berth_volumes{service="local"}"#), 1.0);
    assert!(value(&after, r#"berth_tls_handshakes_total{result="ok"}"#) >= 3.0);
    let server = value(
        &after,
        r#"berth_certificate_expiry_seconds{certificate="server"}"#,
    );
    let ca = value(
        &after,
        r#"berth_certificate_expiry_seconds{certificate="ca"}"#,
    );
    assert!(server > 86_400.0 && ca > server, "server {server}, ca {ca}");
    assert!(value(&after, "process_resident_memory_bytes") > 1e6);
    assert!(value(&after, "process_open_fds") > 3.0);
    // Anything but /metrics is 404.
    assert!(get(addr, "/").0.starts_with("HTTP/1.1 404"));

    // The log reaches the test through a pipe and a reader thread: wait
    // (bounded) for alice's refusal, the last line checked below, before
    // reading it (once it did not arrive in time under load).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d
        .log()
        .lines()
        .any(|l| l.contains("\"alice\"") && l.contains("\"denied\""))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every log line is one JSON object with the four fixed keys.
    let log = d.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for line in &lines {
        for key in ["time", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
    let request = lines
        .iter()
        .find(|l| {
            l["target"] == "berthd::request" && l["method"] == "/berth.v1.Volumes/CreateVolume"
        })
        .expect("the CreateVolume request line");
    assert_eq!(request["service"], "local");
    assert_eq!(request["subject"], "admin");
    assert_eq!(request["code"], "OK");
    assert!(request["duration"].as_f64().expect("duration in seconds") > 0.0);
    // The allowed, unfiltered listing is audited too.
    let audit = lines
        .iter()
        .find(|l| {
            l["target"] == "berthd::audit"
                && l["method"] == "ListVolumes"
                && l["decision"] == "allowed"
                && l["subject"] == "admin"
        })
        .unwrap_or_else(|| panic!("no audit line for an allowed ListVolumes:\n{log}"));
    assert!(audit.get("service").is_none(), "{audit}");
    assert!(lines.iter().any(|l| l["target"] == "berthd::audit"
        && l["subject"] == "alice"
        && l["decision"] == "denied"));
    // Tokens are never logged.
    let admin = admin_token(&d);
    for token in [admin.as_str(), alice.as_str()] {
        let signature = token.rsplit('.').next().expect("signature");
        assert!(!log.contains(signature), "a token is in the log");
    }
}

/// The record store's group commit: batch sizes (callers served per
/// flush) and flush latency, as histograms on the metrics listener.
#[test]
fn group_commit_batches_and_flush_latency_are_exported() {
    let d = Berthd::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&d);
    let (body, before) = scrape(addr);
    for name in [
        "berth_store_flush_batch_size",
        "berth_store_flush_duration_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} histogram")),
            "{name} missing:\n{body}"
        );
    }
    let (batches, callers, flushes) = (
        "berth_store_flush_batch_size_count",
        "berth_store_flush_batch_size_sum",
        "berth_store_flush_duration_seconds_count",
    );
    // Eight creates at once, then one alone.
    let children: Vec<_> = (0..8)
        .map(|i| d.spawn_berth(&["volume", "create", &format!("g{i}"), "--size", "1M"]))
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("berth");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    d.berth(&["volume", "create", "alone", "--size", "1M"])
        .success();
    let (body, after) = scrape(addr);
    let grew = |key: &str| value(&after, key) - value(&before, key);
    // Every create waits for at least one flush (its record), and every
    // caller of a flush is counted in exactly one batch.
    assert!(grew(callers) >= 9.0, "{body}");
    assert!(grew(batches) >= 1.0, "{body}");
    assert!(
        grew(callers) >= grew(batches),
        "a batch is at least one caller:\n{body}"
    );
    assert_eq!(grew(flushes), grew(batches), "{body}");
    assert!(
        value(&after, "berth_store_flush_duration_seconds_sum") > 0.0,
        "{body}"
    );
    // The buckets are cumulative and end with +Inf = count.
    let inf = r#"berth_store_flush_batch_size_bucket{le="+Inf"}"#;
    assert_eq!(value(&after, inf), value(&after, batches), "{body}");
    let ones = r#"berth_store_flush_batch_size_bucket{le="1.0"}"#;
    assert!(after.contains_key(ones), "{body}");
    assert!(value(&after, ones) <= value(&after, inf), "{body}");
}

#[test]
fn text_logs_have_no_colour_off_a_terminal() {
    let d = Berthd::start();
    d.berth(&["volume", "list"]).success();
    let log = d.log();
    assert!(log.contains("berthd serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("berthd::audit")
            && l.contains("ListVolumes")
            && l.contains("allowed")),
        "{log}"
    );
}

fn berthd(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("berthd"))
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("share"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("BERTH_DATA_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run berthd")
}

/// Runs `berthd check-config --config PATH` (home `home`) and asserts it was
/// refused with one line on stderr and nothing on stdout (`what` names the
/// case in failures); returns that line.
#[track_caller]
fn check_config_refusal(home: &Path, path: &Path, what: &str) -> String {
    let out = berthd(
        home,
        &["check-config", "--config", path.to_str().expect("utf-8")],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} passed: {err}");
    assert!(out.stdout.is_empty(), "{what}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    err
}

#[test]
fn metrics_on_a_non_loopback_address_need_the_explicit_flag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let out = berthd(
        tmp.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--metrics-listen",
            "0.0.0.0:0",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-allow-remote"), "{err}");
    assert!(!data.exists(), "a refused start created the data directory");
}

#[test]
fn check_config_says_ok_or_the_one_error_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("volumes");
    let write = |name: &str, text: String| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let good = write(
        "good.toml",
        format!(
            "listen = \"127.0.0.1:7979\"\n[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n[limits]\nidle_timeout = \"5m\"\n",
            root.display().to_string()
        ),
    );
    let before = entries(tmp.path());
    let out = berthd(
        tmp.path(),
        &["check-config", "--config", good.to_str().expect("utf-8")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("OK: ") && stdout.contains("fast (vfs)"),
        "{stdout}"
    );

    let bad = [
        ("driver.toml", "[[services]]\nname = \"x\"\ndriver = \"nfs\"\n".to_owned(), "unknown driver"),
        ("toml.toml", "[[services]\nname = \"x\"\n".to_owned(), "not valid"),
        ("dup.toml", "[[services]]\nname = \"x\"\ndriver = \"vfs\"\n[[services]]\nname = \"x\"\ndriver = \"vfs\"\n".to_owned(), "more than once"),
        ("limits.toml", "[[services]]\nname = \"x\"\ndriver = \"vfs\"\n[limits]\nmax_connections = 0\n".to_owned(), "limits"),
        ("listen.toml", "listen = \"here\"\n[[services]]\nname = \"x\"\ndriver = \"vfs\"\n".to_owned(), "listen"),
    ];
    let mut files = vec![good];
    for (name, text, expect) in bad {
        let path = write(name, text);
        files.push(path.clone());
        let err = check_config_refusal(tmp.path(), &path, name);
        assert!(
            err.starts_with("error: ") && err.contains(expect),
            "{name}: {err}"
        );
    }
    // Nothing but the files written here: no volume root, no data dir.
    let mut expected = before;
    expected.extend(
        [
            "dup.toml",
            "driver.toml",
            "limits.toml",
            "listen.toml",
            "toml.toml",
        ]
        .map(String::from),
    );
    expected.sort();
    expected.dedup();
    assert_eq!(entries(tmp.path()), expected);
    assert!(!root.exists());
}

/// `check-config` asks each driver to check its options, creating
/// nothing: an unknown option, a bad `format`, a `root` that is a file or
/// missing are refused in one line naming the service and the option.
#[test]
fn check_config_refuses_bad_driver_options() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let root = tmp.path().join("never-made");
    let root = root.display().to_string();
    let file = file.display().to_string();
    let cases = [
        (
            "unknown",
            "vfs",
            format!("root = {root:?}\nrooot = \"/x\""),
            "rooot",
        ),
        (
            "format",
            "image",
            format!("root = {root:?}\nformat = \"vhd\""),
            "format",
        ),
        ("isfile", "vfs", format!("root = {file:?}"), "root"),
        ("missing", "image", "format = \"raw\"".to_owned(), "root"),
    ];
    for (service, driver, options, option) in cases {
        let path = tmp.path().join(format!("{service}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[services]]\nname = \"ok\"\ndriver = \"vfs\"\n[services.options]\nroot = {root:?}\n\n\
                 [[services]]\nname = \"{service}\"\ndriver = \"{driver}\"\n[services.options]\n{options}\n"
            ),
        )
        .expect("write");
        let err = check_config_refusal(tmp.path(), &path, service);
        assert!(
            err.contains(&format!("service \"{service}\"")) && err.contains(option),
            "{service}: {err}"
        );
    }
    assert!(!Path::new(&root).exists(), "check-config created a root");
}

#[test]
fn fingerprint_says_when_the_certificates_expire() {
    let d = Berthd::start();
    let out = Command::new(bin("berthd"))
        .args(["fingerprint", "--data-dir"])
        .arg(&d.data_dir)
        .output()
        .expect("berthd fingerprint");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // stdout stays the fingerprint alone, for scripts.
    assert_eq!(stdout.trim().split(':').count(), 32, "{stdout}");
    assert!(stderr.contains("CA certificate expires 20"), "{stderr}");
    assert!(stderr.contains("server certificate expires 20"), "{stderr}");
}

/// `berth ca show`: the PEM alone on stdout, the CA's and the server
/// certificate's expiry on stderr (the dates `berthd fingerprint` reads
/// from the files), all of it in `-o json`.
#[test]
fn ca_show_says_when_the_certificates_expire() {
    let d = Berthd::start();
    let out = Command::new(bin("berthd"))
        .args(["fingerprint", "--data-dir"])
        .arg(&d.data_dir)
        .output()
        .expect("berthd fingerprint");
    let from_files = String::from_utf8_lossy(&out.stderr).to_string();
    let date = |text: &str, what: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{what} certificate expires ")))
            .unwrap_or_else(|| panic!("no {what} expiry in:\n{text}"))
            .trim()
            .to_owned()
    };
    let run = d.berth(&["ca", "show"]);
    let pem = run.success();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(
        pem.trim_end().ends_with("-----END CERTIFICATE-----"),
        "{pem}"
    );
    let err = run.stderr();
    for what in ["CA", "server"] {
        assert_eq!(date(&err, what), date(&from_files, what), "{err}");
    }
    let json = d.berth(&["-o", "json", "ca", "show"]).json();
    assert_eq!(json["not_after"], date(&from_files, "CA"), "{json}");
    assert_eq!(
        json["server_not_after"],
        date(&from_files, "server"),
        "{json}"
    );
}

#[test]
fn a_certificate_expiring_within_thirty_days_is_warned_about_at_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, cert) = (tmp.path().join("key.pem"), tmp.path().join("cert.pem"));
    berth_tests::openssl::openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().expect("utf-8"),
        "-out",
        cert.to_str().expect("utf-8"),
        "-days",
        "10",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]);
    let d = Berthd::start_with(&[
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("the server certificate expires in") {
        assert!(
            Instant::now() < deadline,
            "no expiry warning in:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The generated CA has ten years: no warning for it.
    assert!(
        !d.log().contains("the CA certificate expires"),
        "{}",
        d.log()
    );
}
