//! Berth as Docker's volume driver, against a real Docker Engine that the
//! test starts itself (Debian's `docker.io`: a private `--data-root`,
//! `--exec-root`, socket and pid file; no iptables, no bridge, the `vfs`
//! storage driver) with a tiny image imported from Debian's
//! `busybox-static` (no registry is reachable). Docker finds the plugin
//! (`berth plugin docker`) through a uniquely named spec file in
//! `/etc/docker/plugins/`, removed afterwards even on failure. The engine,
//! the image, the spec file and the plugin process are
//! `berth_tests::docker`'s (the benchmark uses them too).
//!
//! Covered: create with `--opt size`, two `docker run`s writing and reading
//! back, `docker volume ls`, the bytes in Berth's image, two containers at
//! once sharing one mount (reference counts by mount ID, kept across a
//! restart of the plugin), `docker volume
//! rm`, a create refused by authorisation reaching Docker as a readable
//! error, a silent controller answered within the client timeout, SIGHUP
//! re-reading the credential files, SIGTERM stopping the plugin and removing
//! its socket (created 0660, a stale one replaced).
//!
//! Where dockerd cannot start (no root, packages missing) the test prints
//! one line and returns; under `BERTH_REQUIRE_DOCKER=1` it fails instead.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_tests::docker::{busybox, stop, DockerPlugin, Dockerd, PluginSpec};
use berth_tests::node::{can_run, file_holds, is_root, loops_of, tool_exists, NodeLab};
use serde_json::Value;

/// Starts `berth plugin docker` against the lab's controller, its log in
/// the lab's directory.
fn start_plugin(lab: &NodeLab, config: &Path, socket: &Path) -> DockerPlugin {
    DockerPlugin::start(&lab.d, config, socket, &lab.work.path().join("plugin.log"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One POST to the plugin socket, as Docker sends it, with a bounded wait.
fn call(socket: &Path, endpoint: &str, body: &str) -> Value {
    call_paced(socket, endpoint, body, Duration::ZERO)
}

/// [`call`], sending the body `pause` after the headers.
fn call_paced(socket: &Path, endpoint: &str, body: &str, pause: Duration) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect plugin");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send headers");
    std::thread::sleep(pause);
    s.write_all(body.as_bytes()).expect("send body");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read reply");
    let (_, json) = response.split_once("\r\n\r\n").expect("an HTTP reply");
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Holders of the mount of `img/<name>` in the node state.
fn holders(lab: &NodeLab, name: &str) -> usize {
    let state = lab.state();
    state["volumes"][format!("img/{name}")]["paths"]
        .as_object()
        .map(|paths| {
            paths
                .values()
                .map(|p| p["holders"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn docker_uses_berth_volumes_through_the_plugin() {
    let why = if !is_root() {
        Some("dockerd and mounting need root".to_owned())
    } else if busybox().is_none() {
        Some("busybox is not installed (Debian: apt-get install busybox-static)".to_owned())
    } else {
        ["losetup", "blkid", "mkfs.ext4"]
            .into_iter()
            .find(|t| !tool_exists(t))
            .map(|t| format!("{t} is not installed"))
    };
    if !can_run("docker", why) {
        return;
    }
    let dockerd = match Dockerd::start() {
        Ok(d) => d,
        Err(why) => {
            can_run("docker", Some(why));
            return;
        }
    };
    let image = dockerd
        .busybox_image(&busybox().expect("busybox"))
        .unwrap_or_else(|e| panic!("{e}"));

    // The plugin's credential may use `img` only (raw images), not `fs`.
    let lab = NodeLab::start();
    let token = lab
        .d
        .berth(&["token", "issue", "docker-node", "--services", "img"])
        .success();
    let token_file = lab.work.path().join("plugin.token");
    std::fs::write(&token_file, token.trim()).expect("token file");
    let config = lab.work.path().join("plugin.toml");
    let text = std::fs::read_to_string(lab.client_config()).expect("client config");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("token_file") {
                format!("token_file = {:?}\n", token_file)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&config, text).expect("plugin config");

    // A stale socket (nobody listening) is replaced.
    let socket = lab.work.path().join("plugin.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let mut plugin = start_plugin(&lab, &config, &socket);
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let spec = PluginSpec::install("berth-test", &socket).unwrap_or_else(|e| panic!("{e}"));
    let name = spec.name().to_owned();

    // Create, write, read back, list.
    dockerd.ok(&["volume", "create", "-d", &name, "--opt", "size=64MiB", "v1"]);
    let listed = lab.d.berth(&["volume", "list", "-o", "json"]).json();
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .any(|v| v["name"] == "v1" && v["service"] == "img" && v["size_bytes"] == 64 << 20),
        "{listed}"
    );
    let data = "v1:/data";
    dockerd.ok(&[
        "run",
        "--rm",
        "-v",
        data,
        &image,
        "sh",
        "-c",
        "echo hi > /data/f",
    ]);
    let read = dockerd.ok(&["run", "--rm", "-v", data, &image, "cat", "/data/f"]);
    assert_eq!(read.trim(), "hi");
    let ls = dockerd.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == format!("{name} v1")), "{ls}");
    // Both containers are gone: unmounted, released, detached; the bytes
    // are in Berth's image.
    assert_eq!(holders(&lab, "v1"), 0);
    assert!(lab.holders("img", "v1").is_empty());
    assert!(loops_of(&lab.image("v1")).is_empty());
    assert!(file_holds(&lab.image("v1"), b"hi\n"));

    // Two containers at once share one mount.
    let (c1, c2) = (format!("{name}-c1"), format!("{name}-c2"));
    for c in [&c1, &c2] {
        dockerd.ok(&["run", "-d", "--name", c, "-v", data, &image, "sleep", "120"]);
    }
    assert_eq!(holders(&lab, "v1"), 2, "{}", lab.state());
    assert_eq!(loops_of(&lab.image("v1")).len(), 1);
    assert_eq!(lab.holders("img", "v1"), vec!["node-a".to_owned()]);
    dockerd.ok(&["exec", &c1, "sh", "-c", "echo two > /data/g"]);
    assert_eq!(dockerd.ok(&["exec", &c2, "cat", "/data/g"]).trim(), "two");
    dockerd.ok(&["rm", "-f", &c1]);
    assert_eq!(holders(&lab, "v1"), 1);
    assert_eq!(dockerd.ok(&["exec", &c2, "cat", "/data/f"]).trim(), "hi");
    // A restarted plugin keeps the count: the mount stays until c2 stops.
    drop(plugin);
    plugin = start_plugin(&lab, &config, &socket);
    assert_eq!(holders(&lab, "v1"), 1);
    assert_eq!(dockerd.ok(&["exec", &c2, "cat", "/data/g"]).trim(), "two");
    dockerd.ok(&["rm", "-f", &c2]);
    assert_eq!(holders(&lab, "v1"), 0);
    assert!(lab.holders("img", "v1").is_empty());
    assert!(loops_of(&lab.image("v1")).is_empty());

    // docker volume rm removes it from Berth.
    dockerd.ok(&["volume", "rm", "v1"]);
    let listed = lab.d.berth(&["volume", "list", "-o", "json"]).json();
    assert!(
        !listed
            .as_array()
            .expect("list")
            .iter()
            .any(|v| v["name"] == "v1"),
        "{listed}"
    );

    // A create the credential may not do reaches Docker as a readable error.
    let err = dockerd.fails(&[
        "volume",
        "create",
        "-d",
        &name,
        "--opt",
        "service=fs",
        "--opt",
        "size=1MiB",
        "v2",
    ]);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(lab
        .d
        .berth(&["volume", "inspect", "v2", "-s", "fs"])
        .failure()
        .contains("not found"));

    // A silent controller is an error within the client timeout, not a hang.
    lab.d.signal("STOP");
    let started = Instant::now();
    let reply = call(&socket, "VolumeDriver.List", "{}");
    let waited = started.elapsed();
    lab.d.signal("CONT");
    assert!(
        reply["Err"]
            .as_str()
            .is_some_and(|e| e.contains("no reply")),
        "{reply}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");

    // SIGHUP re-reads the credential files: revoke the token, hand the
    // plugin a new one.
    let jti = lab.d.berth(&["token", "list", "-o", "json"]).json();
    let jti = jti
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["subject"] == "docker-node")
        .and_then(|t| t["jti"].as_str())
        .expect("the plugin's token")
        .to_owned();
    lab.d.berth(&["token", "revoke", &jti]).success();
    let reply = call(&socket, "VolumeDriver.List", "{}");
    assert!(!reply["Err"].as_str().unwrap_or("").is_empty(), "{reply}");
    let token = lab
        .d
        .berth(&["token", "issue", "docker-node", "--services", "img"])
        .success();
    std::fs::write(&token_file, token.trim()).expect("new token");
    plugin.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reply = Value::Null;
    while Instant::now() < deadline {
        reply = call(&socket, "VolumeDriver.List", "{}");
        if reply["Err"] == "" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(reply["Err"], "", "{reply}\n{}", plugin.log());

    // Replies are never lost to a connection reset, even from endpoints
    // that need no request body (the plugin once answered List before
    // reading the body, and closing with it unread reset the connection).
    for endpoint in [
        "Plugin.Activate",
        "VolumeDriver.Capabilities",
        "VolumeDriver.List",
    ] {
        let body = r#"{"sent": "after the headers"}"#;
        let reply = call_paced(&socket, endpoint, body, Duration::from_millis(100));
        assert!(reply.is_object(), "{endpoint}: {reply}");
    }

    // The other endpoints Docker calls.
    assert_eq!(
        call(&socket, "Plugin.Activate", ""),
        serde_json::json!({"Implements": ["VolumeDriver"]})
    );
    assert_eq!(
        call(&socket, "VolumeDriver.Capabilities", ""),
        serde_json::json!({"Capabilities": {"Scope": "global"}})
    );
    let reply = call(&socket, "VolumeDriver.Get", r#"{"Name": "missing"}"#);
    assert!(
        reply["Err"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{reply}"
    );
    let reply = call(&socket, "VolumeDriver.Mount", "not json");
    assert!(
        reply["Err"].as_str().is_some_and(|e| !e.is_empty()),
        "{reply}"
    );

    // SIGTERM: a graceful stop that removes the socket.
    plugin.signal("TERM");
    let mut child = plugin.child.take().expect("running");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            stop(&mut child, Duration::ZERO);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(!plugin.socket.exists());
    drop(spec);
    drop(dockerd);
}
