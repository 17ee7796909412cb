//! `--timeout`: a controller that takes a call and never answers does not
//! hang the client. The controller here is real and simply stopped
//! (SIGSTOP): the kernel still accepts the connection, nothing replies.

use std::time::{Duration, Instant};

use berth_tests::Berthd;

/// Stops the controller for the life of the guard.
struct Stopped<'a>(&'a Berthd);

impl<'a> Stopped<'a> {
    fn new(d: &'a Berthd) -> Self {
        d.signal("STOP");
        Self(d)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

#[test]
fn a_call_without_reply_gives_up_after_the_timeout_and_says_so() {
    let d = Berthd::start_with(&["--insecure-plaintext"]);
    let host = d.addr.to_string();
    d.berth(&["--plaintext", "volume", "create", "before"])
        .success();
    {
        let _stopped = Stopped::new(&d);
        let started = Instant::now();
        let err = d
            .berth(&[
                "--plaintext",
                "--timeout",
                "1s",
                "volume",
                "create",
                "stuck",
            ])
            .failure();
        // A hang guard, not a speed target: the limit is 1 s.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            err.contains(&format!("no reply from {host} within 1s")),
            "stderr: {err}"
        );
        assert!(err.contains("may still complete"), "stderr: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

        // The environment variable sets it too.
        let mut cmd = d.berth_cmd(&["--plaintext", "volume", "list"]);
        cmd.env("BERTH_TIMEOUT", "500ms");
        let out = cmd.output().expect("run berth");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("no reply from {host} within 500ms")),
            "stderr: {err}"
        );
    }
    // Running again, the controller answers as before.
    let listed = d.berth(&["--plaintext", "volume", "list"]).success();
    assert!(listed.contains("before"), "{listed}");
}

#[test]
fn a_timeout_that_is_not_a_duration_is_refused_before_any_call() {
    let d = Berthd::start_with(&["--insecure-plaintext"]);
    for bad in ["soon", "0s", "12"] {
        let err = d
            .berth(&["--plaintext", "--timeout", bad, "volume", "create", "x"])
            .failure();
        assert!(err.contains("--timeout"), "{bad}: {err}");
    }
    let listed = d
        .berth(&["--plaintext", "volume", "list", "-o", "json"])
        .success();
    assert!(!listed.contains("\"x\""), "nothing was created: {listed}");
}
