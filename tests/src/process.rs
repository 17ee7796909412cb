//! Child processes with a bound: run to completion with the output
//! collected, or be killed and fail the test.

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one helper process (openssl, berth, python) may take.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion with its output collected, killing it (and
/// failing the test) if it takes longer than `timeout`.
#[track_caller]
pub fn run_bounded(cmd: Command, timeout: Duration) -> Output {
    run_bounded_fed(cmd, None, timeout)
}

/// [`run_bounded`], with `input` written to the child's stdin (which is
/// then closed); with `None`, stdin is whatever `cmd` says.
#[track_caller]
pub fn run_bounded_fed(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = collect(&mut child);
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("feed {what}: {e}"));
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let (stdout, stderr) = out.finish();
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = out.finish();
            panic!(
                "{what} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Readers of a child's piped stdout and stderr.
pub struct Collected {
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Collected {
    /// Waits for both pipes to close: (stdout, stderr).
    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.join().unwrap_or_default(),
            self.stderr.join().unwrap_or_default(),
        )
    }
}

/// Starts reading a child's piped stdout and stderr, so it never blocks on
/// a full pipe.
pub fn collect(child: &mut Child) -> Collected {
    fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    }
    Collected {
        stdout: reader(child.stdout.take().expect("piped stdout")),
        stderr: reader(child.stderr.take().expect("piped stderr")),
    }
}

/// Bytes a process printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
