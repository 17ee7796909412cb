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

/// The extensions of a CA certificate that signs certificates and nothing
/// else, as `openssl req -x509` arguments.
pub const CA_EXTENSIONS: [&str; 4] = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
];

/// `openssl req` arguments: a new unencrypted P-256 key written to `key`,
/// and a request for the subject `subj` written to `out` (a self-signed
/// certificate with `-x509` in `extra`), then `extra`.
pub fn new_p256_req<'a>(
    key: &'a str,
    out: &'a str,
    subj: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        out,
        "-subj",
        subj,
    ];
    args.extend_from_slice(extra);
    args
}

/// `openssl x509 -req` arguments: `csr` signed by `ca` (key `ca_key`) for
/// `days` days with the extensions in the file `extfile`, written to `out`,
/// then `extra` (how the serial is chosen, say).
pub fn sign_req<'a>(
    csr: &'a str,
    (ca, ca_key): (&'a str, &'a str),
    days: &'a str,
    extfile: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-days", days, "-extfile",
        extfile, "-out", out,
    ];
    args.extend_from_slice(extra);
    args
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
        &new_p256_req(s(&key), s(&csr), &format!("/CN={cn}"), &["-utf8"]),
    );
    (key, csr)
}

/// An operator's own CA, `operator-ca`, as `dir/ca.key` and `dir/ca.pem`
/// (what `berthd --client-ca` is given).
pub fn operator_ca(dir: &Path) {
    let mut extra = vec!["-x509", "-days", "30"];
    extra.extend_from_slice(&CA_EXTENSIONS);
    openssl_in(
        dir,
        &new_p256_req("ca.key", "ca.pem", "/CN=operator-ca", &extra),
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
        &sign_req(
            s(csr),
            ("ca.pem", "ca.key"),
            "30",
            "ext.cnf",
            "ext.crt",
            &["-CAcreateserial"],
        ),
    );
}

/// An operator CA ([`operator_ca`], `dir/ca.pem`) and a 30-day server
/// certificate it signed for `localhost` and 127.0.0.1, with the chain
/// (leaf, then CA) in `dir/server-chain.pem` and the key in
/// `dir/server.key` (mode 0600): one identity every controller of a cluster
/// can serve (`--tls-cert`, `--tls-key`), so one pin (the CA's
/// fingerprint) trusts them all. Returns (CA, chain, key).
pub fn shared_server_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    operator_ca(dir);
    let (key, csr) = csr(dir, "server", "localhost");
    std::fs::write(
        dir.join("server.cnf"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("server.cnf");
    openssl_in(
        dir,
        &sign_req(
            s(&csr),
            ("ca.pem", "ca.key"),
            "30",
            "server.cnf",
            "server.pem",
            &["-CAcreateserial"],
        ),
    );
    let ca = dir.join("ca.pem");
    let chain = dir.join("server-chain.pem");
    let text = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("server.pem")).expect("server.pem"),
        std::fs::read_to_string(&ca).expect("ca.pem")
    );
    std::fs::write(&chain, text).expect("server-chain.pem");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    }
    (ca, chain, key)
}
