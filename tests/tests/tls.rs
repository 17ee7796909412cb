//! Transport security end to end: the controller's generated PKI and its
//! file modes, the TLS policy as seen by a stock client (openssl), plaintext
//! refused, first contact with and without a terminal, a changed controller
//! refused, operator certificates reloaded live, WebPKI host-name checks,
//! concurrent clients on one trust store, and exposed keys refused.
//!
//! Everything runs on 127.0.0.1 with real `berthd`, `berth`, `openssl` and
//! `python3` (for a pseudo-terminal) processes. Every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use berth_tests::openssl::{self, openssl_ok};
use berth_tests::process::{collect, run_bounded, text, Collected, PROCESS_TIMEOUT};
use berth_tests::pty::berth_on_pty;
use berth_tests::tokens::admin_token_path;
use berth_tests::{bin, Berthd, Run, START_TIMEOUT};
use serde_json::Value;

// ---------------------------------------------------------------------------
// helpers

/// Runs a `berth` command built by the caller, bounded.
#[track_caller]
fn berth_run(cmd: Command) -> Run {
    Run(run_bounded(cmd, PROCESS_TIMEOUT))
}

/// Runs `openssl` with `args`, bounded, with stdin from /dev/null.
#[track_caller]
fn openssl(args: &[&str]) -> Output {
    openssl::output(None, args, None)
}

/// What `berthd fingerprint --data-dir DIR` prints.
#[track_caller]
fn berthd_fingerprint(d: &Berthd, data_dir: &Path) -> String {
    let mut cmd = Command::new(bin("berthd"));
    d.env(&mut cmd);
    cmd.arg("fingerprint")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null());
    let out = run_bounded(cmd, PROCESS_TIMEOUT);
    assert!(
        out.status.success(),
        "berthd fingerprint failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The client configuration berthd installed for this home.
fn default_client_config(d: &Berthd) -> PathBuf {
    d.home.join(".config/berth/config.toml")
}

/// Takes the installed client configuration away, so the client knows
/// nothing about the controller.
fn forget_default_config(d: &Berthd) {
    let path = default_client_config(d);
    assert!(
        path.exists(),
        "berthd should have installed {}",
        path.display()
    );
    std::fs::remove_file(&path).expect("remove the installed client config");
}

/// Writes a client config naming this controller with a credential and,
/// optionally, a fingerprint. Returns its path.
fn write_client_config(d: &Berthd, name: &str, fingerprint: Option<&str>) -> PathBuf {
    let host = d.addr.to_string();
    let mut text = format!(
        "host = {}\n\n[controllers.{}]\ntoken_file = {}\n",
        toml_str(&host),
        toml_str(&host),
        toml_str(path_str(&admin_token_path(d)))
    );
    if let Some(fp) = fingerprint {
        text.push_str(&format!("fingerprint = {}\n", toml_str(fp)));
    }
    let path = d.path(name);
    std::fs::write(&path, text).expect("write client config");
    path
}

/// `berth trust list -o json` rows (host, fingerprint, source).
#[track_caller]
fn trust_rows(d: &Berthd, extra: &[&str]) -> Vec<(String, String, String)> {
    let mut args = vec!["trust", "list", "-o", "json"];
    args.extend_from_slice(extra);
    let list = berth_run(d.berth_cmd(&args)).json();
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|row| {
            let s = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
            (s("host"), s("fingerprint"), s("source"))
        })
        .collect()
}

/// The trust-store pins for `host`.
#[track_caller]
fn store_pins(d: &Berthd, host: &str, extra: &[&str]) -> Vec<String> {
    trust_rows(d, extra)
        .into_iter()
        .filter(|(h, _, source)| h == host && source == "trust store")
        .map(|(_, fp, _)| fp)
        .collect()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `berthd` this test started itself (not through the harness); killed
/// when dropped.
struct Daemon {
    child: Option<Child>,
    listening: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Spawns `berthd` with `d`'s environment and `args`.
    fn spawn(d: &Berthd, args: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::spawn_command(d, Command::new(bin("berthd")), args, env)
    }

    fn spawn_command(d: &Berthd, mut cmd: Command, args: &[&str], env: &[(&str, &Path)]) -> Self {
        d.env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn berthd");
        let log: Arc<Mutex<String>> = Default::default();
        let listening = berth_tests::follow(&mut child, Arc::clone(&log));
        Self {
            child: Some(child),
            listening,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for the "listening on" line; panics with the log if it does not come.
    #[track_caller]
    fn wait_listening(&self) -> String {
        match self.listening.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => panic!("berthd did not start; its log:\n{}", self.log()),
        }
    }

    /// Waits (bounded) for the process to exit; the log is complete once
    /// this returns `Some`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // Let the stderr reader drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An operator PKI made with openssl: an EC P-256 CA and a serverAuth leaf
/// under it for `sans`.
struct OwnPki {
    /// The CA certificate (what `--ca` trusts).
    ca: PathBuf,
    /// Leaf + CA, PEM.
    chain: PathBuf,
    /// The leaf's private key (0600).
    key: PathBuf,
}

fn make_pki(dir: &Path, cn: &str, sans: &str) -> OwnPki {
    std::fs::create_dir_all(dir).expect("pki dir");
    let p = |name: &str| dir.join(name);
    let s = |path: &Path| path_str(path).to_owned();
    let (ca_key, ca, leaf_key, csr, leaf, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("leaf.key"),
        p("leaf.csr"),
        p("leaf.pem"),
        p("leaf.ext"),
    );
    openssl_ok(&openssl::new_p256_req(
        &s(&ca_key),
        &s(&ca),
        &format!("/CN=test CA for {cn}"),
        &[
            "-x509",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ));
    openssl_ok(&openssl::new_p256_req(
        &s(&leaf_key),
        &s(&csr),
        &format!("/CN={cn}"),
        &[],
    ));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName={sans}\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n"
        ),
    )
    .expect("write extensions");
    let serial = format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    openssl_ok(&openssl::sign_req(
        &s(&csr),
        (&s(&ca), &s(&ca_key)),
        "30",
        &s(&ext),
        &s(&leaf),
        &["-set_serial", &serial, "-sha256"],
    ));
    let chain = p("chain.pem");
    let mut pem = std::fs::read_to_string(&leaf).expect("leaf");
    pem.push_str(&std::fs::read_to_string(&ca).expect("ca"));
    std::fs::write(&chain, pem).expect("chain");
    chmod(&leaf_key, 0o600);
    OwnPki {
        ca,
        chain,
        key: leaf_key,
    }
}

/// When each call of a client loop finished, and its error if it failed.
type Outcomes = Arc<Mutex<Vec<(Instant, Result<(), String>)>>>;

/// Replaces `dst` with `bytes` the way careful tools do: write a temporary
/// file next to it, then rename over it.
fn replace_atomically(dst: &Path, bytes: &[u8], mode: u32) {
    let tmp = dst.with_extension("tmp-new");
    std::fs::write(&tmp, bytes).expect("write temporary");
    chmod(&tmp, mode);
    std::fs::rename(&tmp, dst).expect("rename into place");
}

/// The protocol of the session `openssl s_client` reports, if it got one
/// (a "New, TLSv1.x, Cipher is X" line with X other than `(NONE)`).
fn negotiated(s_client_stdout: &str) -> Option<String> {
    s_client_stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("New, ")?;
        let (proto, cipher) = rest.split_once(", Cipher is ")?;
        (cipher.trim() != "(NONE)" && proto != "(NONE)").then(|| proto.trim().to_owned())
    })
}

/// `openssl s_client -connect ADDR <extra> </dev/null`.
fn s_client(addr: &str, extra: &[&str]) -> Output {
    let mut args = vec!["s_client", "-connect", addr];
    args.extend_from_slice(extra);
    openssl(&args)
}

// ---------------------------------------------------------------------------
// 1. the generated PKI

#[test]
fn generated_pki_has_private_key_files_and_the_documented_certificates() {
    let mut d = Berthd::start();
    let tls = d.data_dir.join("tls");
    let auth = d.data_dir.join("auth");
    for dir in [&tls, &auth] {
        assert_eq!(mode(dir), 0o700, "{} should be 0700", dir.display());
    }
    for key in [
        tls.join("ca.key"),
        tls.join("server.key"),
        auth.join("signing.key"),
        auth.join("admin.token"),
        d.data_dir.join("client.toml"),
        default_client_config(&d),
    ] {
        assert_eq!(mode(&key), 0o600, "{} should be 0600", key.display());
    }

    // The fingerprint clients pin is the CA's, as openssl computes it, both
    // while the controller runs and after it stopped.
    let by_openssl = openssl::fingerprint(&tls.join("ca.crt"));
    assert_eq!(by_openssl.len(), 95, "{by_openssl}");
    assert_eq!(berthd_fingerprint(&d, &d.data_dir), by_openssl);
    let profile = std::fs::read_to_string(d.data_dir.join("client.toml")).expect("client.toml");
    assert!(
        profile.contains(&format!("fingerprint = \"{by_openssl}\"")),
        "client.toml should carry the CA fingerprint {by_openssl}:\n{profile}"
    );
    d.kill9();
    assert_eq!(berthd_fingerprint(&d, &d.data_dir), by_openssl);

    // The CA: CA:TRUE with pathlen:0, signing certificates only.
    let ca = openssl::x509_text(&tls.join("ca.crt"));
    assert!(ca.contains("CA:TRUE, pathlen:0"), "{ca}");
    assert!(ca.contains("Certificate Sign"), "{ca}");
    // The server certificate (first in server.crt): serverAuth, the
    // loopback names, and not a CA; its issuer is the CA.
    let server = openssl::x509_text(&tls.join("server.crt"));
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    assert!(!server.contains("CA:TRUE"), "{server}");
    assert!(server.contains("DNS:localhost"), "{server}");
    assert!(server.contains("IP Address:127.0.0.1"), "{server}");
    assert!(
        server.contains("IP Address:0:0:0:0:0:0:0:1") || server.contains("IP Address:::1"),
        "{server}"
    );
    assert!(!server.contains("DNS:extra.example"), "{server}");
    let chain = std::fs::read_to_string(tls.join("server.crt")).expect("server.crt");
    let ca_pem = std::fs::read_to_string(tls.join("ca.crt")).expect("ca.crt");
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        chain.trim_end().ends_with(ca_pem.trim_end()),
        "server.crt should end with the CA"
    );

    // --san adds a name.
    let e = Berthd::start_with(&["--san", "extra.example"]);
    let server = openssl::x509_text(&e.data_dir.join("tls/server.crt"));
    assert!(server.contains("DNS:extra.example"), "{server}");
    assert!(server.contains("DNS:localhost"), "{server}");
    assert!(server.contains("IP Address:127.0.0.1"), "{server}");
    e.berth(&["service", "list"]).success();

    // Keys are private whatever the umask of whoever starts the controller.
    let data = d.path("umask-data");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(bin("berthd"));
    let u = Daemon::spawn_command(
        &d,
        sh,
        &["--listen", "127.0.0.1:0", "--data-dir", path_str(&data)],
        &[("XDG_CONFIG_HOME", &d.path("umask-config"))],
    );
    u.wait_listening();
    for dir in [data.join("tls"), data.join("auth")] {
        assert_eq!(mode(&dir), 0o700, "{} (umask 000)", dir.display());
    }
    for key in [
        data.join("tls/ca.key"),
        data.join("tls/server.key"),
        data.join("auth/signing.key"),
        data.join("auth/admin.token"),
    ] {
        assert_eq!(mode(&key), 0o600, "{} (umask 000)", key.display());
    }
}

// ---------------------------------------------------------------------------
// 2. protocol versions

#[test]
fn only_tls_1_2_and_1_3_are_spoken() {
    let d = Berthd::start();
    let addr = d.addr.to_string();

    let out = s_client(&addr, &["-tls1_3", "-alpn", "h2"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(negotiated(&stdout).as_deref(), Some("TLSv1.3"), "{stdout}");
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(stdout.contains("ALPN protocol: h2"), "{stdout}");

    let out = s_client(&addr, &["-tls1_2"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        negotiated(&stdout).as_deref(),
        Some("TLSv1.2"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    // Forward secrecy and AEAD only.
    assert!(
        (stdout.contains("Cipher is ECDHE-") && stdout.contains("GCM"))
            || stdout.contains("CHACHA20"),
        "{stdout}"
    );

    // TLS 1.1 and 1.0: refused. Lowering openssl's own security level makes
    // it actually offer them, so where it can, the refusal is the server's.
    for version in ["-tls1_1", "-tls1"] {
        for extra in [&[][..], &["-cipher", "DEFAULT:@SECLEVEL=0"][..]] {
            let mut args = vec![version];
            args.extend_from_slice(extra);
            let out = s_client(&addr, &args);
            let stdout = text(&out.stdout);
            assert_eq!(
                negotiated(&stdout),
                None,
                "openssl {args:?} got a session:\n{stdout}\n{}",
                text(&out.stderr)
            );
        }
    }

    // The server's own refusal, independent of what this openssl may
    // offer: with --tls-min-version 1.3, TLS 1.2 fails and 1.3 works.
    let strict = Berthd::start_with(&["--tls-min-version", "1.3"]);
    let strict_addr = strict.addr.to_string();
    let out = s_client(&strict_addr, &["-tls1_2"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        negotiated(&stdout),
        None,
        "TLS 1.2 accepted by a 1.3-only controller:\n{stdout}"
    );
    let out = s_client(&strict_addr, &["-tls1_3"]);
    assert_eq!(
        negotiated(&text(&out.stdout)).as_deref(),
        Some("TLSv1.3"),
        "{}",
        text(&out.stdout)
    );
    strict.berth(&["service", "list"]).success();

    // None of this disturbed the controller.
    d.berth(&["service", "list"]).success();
}

// ---------------------------------------------------------------------------
// 3. plaintext to the TLS port

#[test]
fn plaintext_http2_gets_no_grpc_answer() {
    let d = Berthd::start();
    let token = admin_token_path(&d);

    let err = berth_run(d.berth_cmd(&[
        "--plaintext",
        "--token-file",
        path_str(&token),
        "service",
        "list",
    ]))
    .failure();
    assert!(err.starts_with("error: "), "{err}");

    // The raw HTTP/2 preface and an empty SETTINGS frame.
    let mut tcp = TcpStream::connect(d.addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    tcp.write_all(&hello).expect("write preface");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => {
                panic!("the controller neither answered nor closed: {e} (read {answer:02x?})")
            }
        }
    };
    assert!(closed);
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "expected nothing or a TLS alert, got {answer:02x?}"
    );
    assert!(
        !(answer.len() >= 9 && answer[3] == 0x04),
        "got what looks like an HTTP/2 SETTINGS frame: {answer:02x?}"
    );

    d.berth(&["service", "list"]).success();
}

// ---------------------------------------------------------------------------
// 4. first contact without a terminal, and preseeding

#[test]
fn first_contact_without_a_terminal_refuses_and_preseeding_works() {
    let d = Berthd::start();
    let host = d.addr.to_string();
    let fp = berthd_fingerprint(&d, &d.data_dir);
    let token = admin_token_path(&d);
    let token = path_str(&token);

    // A config that names the controller and a credential but no fingerprint.
    let bare = write_client_config(&d, "bare.toml", None);
    let bare = path_str(&bare);
    let err = berth_run(d.berth_cmd(&["--config", bare, "service", "list"])).failure();
    assert!(err.contains(&fp), "{err}");
    assert!(err.contains("berth trust add"), "{err}");
    assert!(err.contains(&host), "{err}");
    assert!(!err.contains("Trust this controller"), "{err}");
    assert!(
        store_pins(&d, &host, &["--config", bare]).is_empty(),
        "nothing may be pinned without a person's decision"
    );

    // The same with no config at all and the credential on the command line.
    forget_default_config(&d);
    let err = berth_run(d.berth_cmd(&["--token-file", token, "service", "list"])).failure();
    assert!(err.contains(&fp), "{err}");
    assert!(err.contains("berth trust add"), "{err}");
    assert!(store_pins(&d, &host, &[]).is_empty());

    // --fingerprint, in every spelling.
    let bare_hex = fp.replace(':', "");
    for spelling in [
        fp.clone(),
        fp.to_lowercase(),
        bare_hex.clone(),
        bare_hex.to_lowercase(),
        format!("sha256:{bare_hex}"),
        format!("SHA256:{}", fp.to_lowercase()),
    ] {
        let out = berth_run(d.berth_cmd(&[
            "--fingerprint",
            &spelling,
            "--token-file",
            token,
            "service",
            "list",
            "-o",
            "json",
        ]))
        .json();
        assert_eq!(out[0]["name"], "local", "with --fingerprint {spelling}");
    }
    // A wrong one is refused.
    let wrong = format!("{}00", &bare_hex[..62]);
    let wrong = if wrong == bare_hex {
        format!("{}11", &bare_hex[..62])
    } else {
        wrong
    };
    let err = berth_run(d.berth_cmd(&[
        "--fingerprint",
        &wrong,
        "--token-file",
        token,
        "service",
        "list",
    ]))
    .failure();
    assert!(err.contains("CHANGED") || err.contains("refusing"), "{err}");
    // --fingerprint is for one command: still nothing pinned.
    assert!(store_pins(&d, &host, &[]).is_empty());

    // A preseeded config: no prompt, no flag, no pin needed.
    for spelling in [fp.clone(), format!("sha256:{}", bare_hex.to_lowercase())] {
        let preseeded = write_client_config(&d, "preseeded.toml", Some(&spelling));
        let out = berth_run(d.berth_cmd(&[
            "--config",
            path_str(&preseeded),
            "service",
            "list",
            "-o",
            "json",
        ]))
        .json();
        assert_eq!(out[0]["name"], "local", "preseeded {spelling}");
    }
    assert!(store_pins(&d, &host, &[]).is_empty());
}

// ---------------------------------------------------------------------------
// 5. first contact on a terminal

#[test]
fn first_contact_on_a_terminal_asks_and_pins_only_on_yes() {
    let d = Berthd::start();
    let host = d.addr.to_string();
    let fp = berthd_fingerprint(&d, &d.data_dir);
    let token = admin_token_path(&d);
    let token = path_str(&token);
    forget_default_config(&d);

    let args = ["--token-file", token, "service", "list"];
    let no = berth_on_pty(&d, "n", &args);
    let said = text(&no.stdout);
    assert!(said.contains("@@prompted=True@@"), "{said}");
    assert!(
        said.contains(&fp),
        "the prompt shows the fingerprint: {said}"
    );
    assert!(said.contains(&host), "the prompt shows the host: {said}");
    assert_ne!(no.status.code(), Some(0), "{said}");
    assert_ne!(no.status.code(), Some(124), "timed out: {said}");
    assert!(said.contains("not trusted"), "{said}");
    assert!(store_pins(&d, &host, &[]).is_empty(), "`n` pins nothing");

    let yes = berth_on_pty(&d, "y", &args);
    let said = text(&yes.stdout);
    assert!(said.contains("@@prompted=True@@"), "{said}");
    assert_eq!(yes.status.code(), Some(0), "{said}\n{}", text(&yes.stderr));
    assert!(said.contains("local"), "the command carried on: {said}");
    assert_eq!(store_pins(&d, &host, &[]), vec![fp.clone()]);

    // Pinned now: no prompt, even without a terminal.
    let out =
        berth_run(d.berth_cmd(&["--token-file", token, "service", "list", "-o", "json"])).json();
    assert_eq!(out[0]["name"], "local");
}

// ---------------------------------------------------------------------------
// 6. a different controller on the pinned address

#[test]
fn a_different_controller_on_a_pinned_address_is_refused() {
    let mut a = Berthd::start();
    let host = a.addr.to_string();
    let fp_a = berthd_fingerprint(&a, &a.data_dir);
    forget_default_config(&a);
    let cfg = write_client_config(&a, "client.toml", None);
    let cfg = path_str(&cfg);
    berth_run(a.berth_cmd(&["trust", "add", &host, &fp_a])).success();
    berth_run(a.berth_cmd(&["--config", cfg, "service", "list"])).success();

    // B: another data directory (so another CA) on the same address.
    a.kill9();
    let b_data = a.path("b-data");
    let b_home = a.path("b-home");
    std::fs::create_dir_all(&b_home).expect("b home");
    let b = Daemon::spawn(
        &a,
        &["--listen", &host, "--data-dir", path_str(&b_data)],
        &[
            ("HOME", &b_home),
            ("XDG_CONFIG_HOME", &b_home.join(".config")),
            ("XDG_DATA_HOME", &b_home.join(".local/share")),
        ],
    );
    assert_eq!(b.wait_listening(), host);
    let fp_b = berthd_fingerprint(&a, &b_data);
    assert_ne!(fp_a, fp_b);

    let run = berth_run(a.berth_cmd(&["--config", cfg, "service", "list"]));
    let err = run.failure();
    assert!(err.contains("CHANGED"), "{err}");
    assert!(err.contains(&fp_a), "the pinned fingerprint: {err}");
    assert!(err.contains(&fp_b), "the presented fingerprint: {err}");
    assert!(err.contains(&host), "{err}");
    assert!(
        err.contains("trust store"),
        "where the pin came from: {err}"
    );
    assert!(run.stdout().is_empty(), "{}", run.stdout());
    // Again: refused every time, and the pin is untouched.
    berth_run(a.berth_cmd(&["--config", cfg, "volume", "list"])).failure();
    assert_eq!(
        store_pins(&a, &host, &["--config", cfg]),
        vec![fp_a.clone()]
    );

    // B itself is healthy: the refusal was the pin's doing.
    let b_token = b_data.join("auth/admin.token");
    berth_run(a.berth_cmd(&[
        "--fingerprint",
        &fp_b,
        "--token-file",
        path_str(&b_token),
        "service",
        "list",
    ]))
    .success();
    assert_eq!(store_pins(&a, &host, &["--config", cfg]), vec![fp_a]);
}

// ---------------------------------------------------------------------------
// 7. operator certificates, reloaded live

#[test]
fn operator_certificates_are_reloaded_live_and_bad_ones_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let san = "DNS:localhost,IP:127.0.0.1";
    let one = make_pki(&tmp.path().join("one"), "localhost", san);
    let two = make_pki(&tmp.path().join("two"), "localhost", san);
    let live = tmp.path().join("live");
    std::fs::create_dir_all(&live).expect("live dir");
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    let install = |pki: &OwnPki| {
        replace_atomically(&key, &std::fs::read(&pki.key).expect("key"), 0o600);
        replace_atomically(&cert, &std::fs::read(&pki.chain).expect("chain"), 0o644);
    };
    install(&one);
    let both = tmp.path().join("both.pem");
    std::fs::write(
        &both,
        format!(
            "{}{}",
            std::fs::read_to_string(&one.ca).expect("ca1"),
            std::fs::read_to_string(&two.ca).expect("ca2")
        ),
    )
    .expect("bundle");

    let d = Berthd::start_with(&["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]);
    let with_ca = |ca: &Path| berth_run(d.berth_cmd(&["--ca", path_str(ca), "volume", "list"]));
    with_ca(&one.ca).success();
    with_ca(&two.ca).failure();
    // What clients pin is the root of the presented chain: CA 1.
    assert_eq!(
        berthd_fingerprint(&d, &d.data_dir),
        openssl::fingerprint(&one.ca)
    );

    // Clients trusting both CAs, one connection each, all the way through
    // the switch: every call must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Outcomes = Default::default();
    let looper = {
        let stop = Arc::clone(&stop);
        let results = Arc::clone(&results);
        let cmds: Vec<Command> = (0..400)
            .map(|_| d.berth_cmd(&["--ca", path_str(&both), "volume", "list"]))
            .collect();
        std::thread::spawn(move || {
            for cmd in cmds {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let run = Run(run_bounded(cmd, PROCESS_TIMEOUT));
                let outcome = if run.ok() { Ok(()) } else { Err(run.stderr()) };
                results
                    .lock()
                    .expect("results")
                    .push((Instant::now(), outcome));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let calls = || results.lock().expect("results").len();
    assert!(
        eventually(Duration::from_secs(20), || calls() >= 3),
        "the client loop made no calls"
    );

    install(&two);
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || with_ca(&two.ca).ok()),
        "CA 2 not presented within 10 s of SIGHUP; log:\n{}",
        d.log()
    );
    let switched = Instant::now();
    with_ca(&one.ca).failure();
    let before = calls();
    assert!(
        eventually(Duration::from_secs(20), || calls() >= before + 3),
        "the client loop stalled"
    );
    stop.store(true, Ordering::SeqCst);
    looper.join().expect("client loop");
    let results = results.lock().expect("results");
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed across the switch: {failed:#?}",
        failed.len(),
        results.len()
    );
    assert!(results.iter().any(|(t, _)| *t > switched));
    drop(results);
    assert_eq!(
        berthd_fingerprint(&d, &d.data_dir),
        openssl::fingerprint(&two.ca)
    );
    assert!(d.log().contains("reloaded the TLS identity"), "{}", d.log());

    // A certificate file that does not parse: refused, CA 2 keeps serving.
    let cert_name = path_str(&cert).to_owned();
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("refused") && l.contains(&cert_name) && !l.contains("does not match")
            })
            .count()
    };
    assert_eq!(refusals(&d.log()), 0, "{}", d.log());
    replace_atomically(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nthis is not base64!\n-----END CERTIFICATE-----\n",
        0o644,
    );
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || refusals(&d.log()) > 0),
        "no refusal logged; log:\n{}",
        d.log()
    );
    with_ca(&two.ca).success();
    with_ca(&one.ca).failure();
    assert_eq!(
        berthd_fingerprint(&d, &d.data_dir),
        openssl::fingerprint(&two.ca)
    );
}

// ---------------------------------------------------------------------------
// 8. --ca checks the host name

#[test]
fn ca_mode_rejects_a_certificate_for_another_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let other = make_pki(tmp.path(), "other.example", "DNS:other.example");
    let d = Berthd::start_with(&[
        "--tls-cert",
        path_str(&other.chain),
        "--tls-key",
        path_str(&other.key),
    ]);
    let host = d.addr.to_string();
    assert_eq!(host.split(':').next(), Some("127.0.0.1"));
    let err = berth_run(d.berth_cmd(&["--ca", path_str(&other.ca), "service", "list"])).failure();
    assert!(err.contains("TLS"), "{err}");
    assert!(err.to_lowercase().contains("name"), "{err}");

    // The chain itself is fine: pinning its CA (which skips names) works.
    let fp = openssl::fingerprint(&other.ca);
    berth_run(d.berth_cmd(&["--fingerprint", &fp, "service", "list"])).success();
}

// ---------------------------------------------------------------------------
// 9. many clients, one trust store

#[test]
fn sixteen_clients_at_once_share_the_trust_store() {
    let d = Berthd::start();
    let host = d.addr.to_string();
    let fp = berthd_fingerprint(&d, &d.data_dir);
    forget_default_config(&d);
    let cfg = write_client_config(&d, "client.toml", None);
    let cfg = path_str(&cfg);
    berth_run(d.berth_cmd(&["trust", "add", &host, &fp])).success();

    let children: Vec<(Child, Collected)> = (0..16)
        .map(|_| {
            let mut cmd = d.berth_cmd(&["--config", cfg, "volume", "list", "-o", "json"]);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn berth");
            let out = collect(&mut child);
            (child, out)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    for (i, (mut child, out)) in children.into_iter().enumerate() {
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (stdout, stderr) = out.finish();
        match status {
            Some(s) if s.success() => {
                let v: Value = serde_json::from_slice(&stdout).expect("JSON");
                assert!(v.is_array(), "{v}");
            }
            other => failures.push(format!("client {i}: {other:?}: {}", text(&stderr))),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(store_pins(&d, &host, &["--config", cfg]), vec![fp]);
}

// ---------------------------------------------------------------------------
// 10. exposed keys

#[test]
fn a_private_key_readable_by_others_stops_the_controller() {
    let mut d = Berthd::start();
    d.kill9();
    let data = path_str(&d.data_dir).to_owned();
    for key in [
        d.data_dir.join("tls/ca.key"),
        d.data_dir.join("tls/server.key"),
        d.data_dir.join("auth/signing.key"),
    ] {
        chmod(&key, 0o644);
        let mut b = Daemon::spawn(&d, &["--listen", "127.0.0.1:0", "--data-dir", &data], &[]);
        let status = b.wait_exit(START_TIMEOUT);
        let log = b.log();
        let status = status.unwrap_or_else(|| {
            panic!(
                "berthd kept running with {} mode 0644; log:\n{log}",
                key.display()
            )
        });
        assert!(!status.success(), "{log}");
        assert!(
            b.listening.try_recv().is_err(),
            "it must not have listened: {log}"
        );
        assert!(log.contains(path_str(&key)), "names the file: {log}");
        assert!(log.contains("chmod 600"), "says how to fix it: {log}");
        // Nothing loosened the mode or replaced the key behind our back.
        assert_eq!(mode(&key), 0o644);
        chmod(&key, 0o600);
    }
    // With the modes fixed it starts and serves.
    d.restart();
    d.berth(&["service", "list"]).success();
}
