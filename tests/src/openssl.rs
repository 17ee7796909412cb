//! The stock `openssl` command, as tests use it: to make keys, requests and
//! an operator's own CA, to sign and inspect certificates, and to speak
//! TLS to the controller as a client that is not `berth`. Every run is
//! bounded by [`PROCESS_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::process::{run_bounded_fed, text, PROCESS_TIMEOUT};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `openssl` with `args` in `dir` (`None`: here), feeding `stdin`
/// (`None`: /dev/null); whatever it answers.
#[track_caller]
pub fn output(dir: Option<&Path>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    run_bounded_fed(cmd, stdin, PROCESS_TIMEOUT)
}

#[track_caller]
fn succeeded(args: &[&str], out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "openssl {args:?} failed (these tests need it on PATH): {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    out.stdout
}

/// Runs openssl, feeding `stdin`, and returns its stdout; panics on failure.
#[track_caller]
pub fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    succeeded(args, output(None, args, stdin))
}

/// Runs openssl in `dir` (relative file names are under it); panics on
/// failure.
#[track_caller]
pub fn openssl_in(dir: &Path, args: &[&str]) {
    succeeded(args, output(Some(dir), args, None));
}

/// Runs `openssl` and asserts it succeeded; returns stdout.
#[track_caller]
pub fn openssl_ok(args: &[&str]) -> String {
    text(&openssl(args, None))
}

/// What `openssl x509 -noout -fingerprint -sha256` prints after the `=`.
pub fn fingerprint(cert: &Path) -> String {
    let out = openssl_ok(&["x509", "-noout", "-fingerprint", "-sha256", "-in", s(cert)]);
    out.trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("no `=` in openssl's fingerprint output {out:?}"))
        .1
        .trim()
        .to_owned()
}

/// `openssl x509 -noout -text` of the first certificate in `cert`.
pub fn x509_text(cert: &Path) -> String {
    openssl_ok(&["x509", "-noout", "-text", "-in", s(cert)])
}

/// A P-256 key and CSR whose CN is `cn` (UTF-8), as `dir/FILE.key` and
/// `dir/FILE.csr`: (key, csr).
pub fn csr(dir: &Path, file: &str, cn: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = (
        dir.join(format!("{file}.key")),
        dir.join(format!("{file}.csr")),
    );
    openssl_in(
        dir,
        &[
            "req",
            "-new",
            "-utf8",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    (key, csr)
}

/// An operator's own CA, `operator-ca`, as `dir/ca.key` and `dir/ca.pem`
/// (what `berthd --client-ca` is given).
pub fn operator_ca(dir: &Path) {
    openssl_in(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=operator-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// Signs `csr` with the [`operator_ca`] in `dir` as a 30-day clientAuth
/// certificate, `dir/ext.crt`.
pub fn operator_sign_client(dir: &Path, csr: &Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext.cnf");
    openssl_in(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            s(csr),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "ext.crt",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
        ],
    );
}
