use berth_tests::Berthd;

#[test]
fn controller_starts_and_client_lists_the_default_service() {
    let d = Berthd::start();
    let out = d.berth(&["service", "list", "-o", "json"]).json();
    assert_eq!(out[0]["name"], "local");
    assert_eq!(out[0]["driver"], "vfs");
}

/// The README's first command starts berthd in the background and runs
/// `berth --wait 30s ...` at once: the client must wait for the controller,
/// pick up the profile it installs, and succeed with no flag or prompt.
#[test]
fn berth_wait_rides_out_a_controller_that_is_still_starting() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let env = |c: &mut Command| {
        for var in [
            "BERTH_HOST",
            "BERTH_CONFIG",
            "BERTH_TOKEN",
            "BERTH_DATA_DIR",
        ] {
            c.env_remove(var);
        }
        c.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdin(Stdio::null());
    };
    let mut client = Command::new(berth_tests::bin("berth"));
    env(&mut client);
    let client = client
        .args(["--wait", "30s", "--host", &addr, "service", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut server = Command::new(berth_tests::bin("berthd"));
    env(&mut server);
    let mut server = server
        .args(["--listen", &addr, "--data-dir"])
        .arg(tmp.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn berthd");
    let out = client.wait_with_output().expect("berth");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "berth --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("local"));
}
