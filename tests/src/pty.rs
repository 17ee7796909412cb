//! `berth` on a pseudo-terminal, through python3's `pty` module: for what
//! the client does only on a terminal (the trust prompt, progress bars).

use std::process::{Command, Output, Stdio};

use crate::process::{run_bounded, PROCESS_TIMEOUT};
use crate::{bin, Berthd};

/// The python3 program: runs argv[2:] on a new pseudo-terminal, answers
/// argv[1] to the trust prompt if it appears, prints everything the
/// terminal showed and then `@@prompted=True|False@@`, exits with the
/// command's status (124 if it took longer than 20 s).
const PTY_DRIVER: &str = r#"
import os, pty, select, signal, sys, time
answer = sys.argv[1].encode() + b"\n"
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
out = b""
sent = False
deadline = time.monotonic() + 20
timed_out = True
while time.monotonic() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if not ready:
        continue
    try:
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    if not data:
        timed_out = False
        break
    out += data
    if not sent and b"Trust this controller? [y/N]" in out:
        os.write(fd, answer)
        sent = True
if timed_out:
    os.kill(pid, signal.SIGKILL)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.stdout.write("\n@@prompted=%s@@\n" % sent)
sys.stdout.flush()
if timed_out:
    sys.exit(124)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"#;

/// Runs `berth <args>` against `d` on a pseudo-terminal (stdout and stderr
/// both on it), answering `answer` to the trust prompt if it is asked.
/// The terminal's text is the output's stdout.
pub fn berth_on_pty(d: &Berthd, answer: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    d.env(&mut cmd);
    cmd.arg("-c")
        .arg(PTY_DRIVER)
        .arg(answer)
        .arg(bin("berth"))
        .arg("--host")
        .arg(d.addr.to_string())
        .args(args)
        .stdin(Stdio::null());
    run_bounded(cmd, PROCESS_TIMEOUT)
}
