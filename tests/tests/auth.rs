//! Authentication and authorisation end to end, through the real `berth` and
//! `berthd`: no credential, bad and forged tokens (made here by hand, signed
//! with `openssl`), expiry and revocation, client certificates (signed by
//! the controller, tampered, foreign, expired, without clientAuth, revoked),
//! per-service scope with deny and allow lists, secrets kept out of the log,
//! and the README walkthrough on a fresh data directory.
//!
//! Every refusal is checked to change nothing: the volume list and every
//! file under each vfs root are compared before and after.
//!
//! Revoking a token while its connection stays open is tested here over
//! plaintext; the same for a client certificate over TLS, through
//! `berth_client::connect`, is in `credentials_hardening.rs`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_tests::openssl::{self, openssl};
use berth_tests::tokens::{admin_token, b64url, claims as token_claims, issue, jti_of, with};
use berth_tests::{bin, entries, field_pairs, tree, Berthd, Run};
use serde_json::{json, Value};

const UNAUTHENTICATED: &str = "error: not authenticated";
const DENIED: &str = "error: permission denied";
const INVALID: &str = "error: invalid argument";

// ---- PEM (base64url is the harness's, for tokens) ----

/// The DER inside a PEM file (its first block).
fn pem_der(text: &str) -> Vec<u8> {
    pem::parse(text).expect("a PEM block").into_contents()
}

fn der_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

// ---- openssl ----

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An Ed25519 signature of `data` with the PEM key at `key`.
fn ed25519_sign(key: &Path, data: &[u8], work: &Path) -> Vec<u8> {
    let input = work.join("to-sign.bin");
    std::fs::write(&input, data).expect("write signing input");
    openssl(
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            s(key),
            "-in",
            s(&input),
        ],
        None,
    )
}

/// An HMAC-SHA256 of `data` with `secret`.
fn hs256(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let macopt = format!("hexkey:{hex}");
    openssl(
        &[
            "dgst", "-sha256", "-mac", "HMAC", "-macopt", &macopt, "-binary",
        ],
        Some(data),
    )
}

/// A fresh Ed25519 key that is not the controller's.
fn foreign_ed25519_key(work: &Path) -> PathBuf {
    let path = work.join("foreign-ed25519.pem");
    openssl(
        &["genpkey", "-algorithm", "ed25519", "-out", s(&path)],
        None,
    );
    path
}

/// The controller's token signing key, in a form any openssl reads.
///
/// `signing.key` is PKCS#8 v2 (it carries the public key too), which
/// OpenSSL 3.0 does not load; the 32-byte seed is re-wrapped as PKCS#8 v1.
/// The result is checked against `signing.pub`.
fn controller_signing_key(d: &Berthd, work: &Path) -> PathBuf {
    let pem = std::fs::read_to_string(d.data_dir.join("auth/signing.key")).expect("signing.key");
    let der = pem_der(&pem);
    let marker = [0x04, 0x22, 0x04, 0x20];
    let at = der
        .windows(4)
        .position(|w| w == marker)
        .expect("an Ed25519 seed in signing.key")
        + 4;
    let seed = &der[at..at + 32];
    let mut v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v1.extend_from_slice(seed);
    let path = work.join("controller-signing.pem");
    std::fs::write(&path, der_pem("PRIVATE KEY", &v1)).expect("write key");
    let public = openssl(&["pkey", "-in", s(&path), "-pubout"], None);
    let expected = std::fs::read_to_string(d.data_dir.join("auth/signing.pub")).expect("pub");
    assert_eq!(
        pem_der(&String::from_utf8_lossy(&public)),
        pem_der(&expected),
        "the re-wrapped signing key does not match signing.pub"
    );
    path
}

// ---- tokens ----

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `base64url(header).base64url(claims)`.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn eddsa_header() -> Value {
    json!({"alg": "EdDSA", "typ": "JWT"})
}

/// Claims in the controller's shape, dates relative to now.
fn claims(sub: &str, jti: &str, role: &str, services: &[&str], nbf: i64, exp: i64) -> Value {
    let t = now();
    claims_at(sub, jti, role, services, t + nbf, t + exp)
}

/// Claims with absolute `nbf` and `exp` (seconds since the epoch).
fn claims_at(sub: &str, jti: &str, role: &str, services: &[&str], nbf: i64, exp: i64) -> Value {
    let t = now();
    json!({
        "sub": sub,
        "iat": t.min(nbf),
        "nbf": nbf,
        "exp": exp,
        "jti": jti,
        "role": role,
        "services": services,
    })
}

/// A JWT with an Ed25519 signature by `key`.
fn eddsa_token(key: &Path, claims: &Value, work: &Path) -> String {
    let input = signing_input(&eddsa_header(), claims);
    let sig = ed25519_sign(key, input.as_bytes(), work);
    format!("{input}.{}", b64url(&sig))
}

/// No token string (nor its signature) appears in the controller's log.
fn assert_log_keeps_secrets(d: &Berthd, tokens: &[String]) {
    let log = d.log();
    for token in tokens {
        assert!(
            !log.contains(token.as_str()),
            "the controller logged a token: {token}\n{log}"
        );
        if let Some(sig) = token.rsplit('.').next().filter(|sig| sig.len() >= 16) {
            assert!(
                !log.contains(sig),
                "the controller logged a token's signature: {sig}\n{log}"
            );
        }
    }
}

// ---- a controller with two services, and what "nothing changed" means ----

struct Ctl {
    // Dropped first: the controller stops before its roots go away.
    d: Berthd,
    fast: PathBuf,
    bulk: PathBuf,
    work: tempfile::TempDir,
}

/// What a refusal must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct State {
    volumes: BTreeSet<(String, String)>,
    fast: BTreeSet<String>,
    bulk: BTreeSet<String>,
}

/// Starts a controller serving `fast` and `bulk` (vfs), each section taking
/// `fast_extra` / `bulk_extra` (e.g. `deny = ["alice"]`).
fn two_services(fast_extra: &str, bulk_extra: &str) -> Ctl {
    let work = tempfile::tempdir().expect("tempdir");
    let fast = work.path().join("fast-root");
    let bulk = work.path().join("bulk-root");
    let config = work.path().join("berthd.toml");
    let text = format!(
        "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n{fast_extra}\n[services.options]\nroot = {:?}\n\n\
         [[services]]\nname = \"bulk\"\ndriver = \"vfs\"\n{bulk_extra}\n[services.options]\nroot = {:?}\n",
        s(&fast),
        s(&bulk),
    );
    std::fs::write(&config, text).expect("write config");
    let d = Berthd::start_with(&["--config", s(&config)]);
    Ctl {
        d,
        fast,
        bulk,
        work,
    }
}

impl Ctl {
    fn dir(&self) -> &Path {
        self.work.path()
    }

    /// Writes `name` in the work directory and returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, bytes).expect("write file");
        path
    }

    fn state(&self) -> State {
        let listed = self.d.berth(&["volume", "list", "-o", "json"]).json();
        let volumes = field_pairs(&listed, "service", "name")
            .into_iter()
            .collect();
        State {
            volumes,
            fast: tree(&self.fast),
            bulk: tree(&self.bulk),
        }
    }

    /// `berth <cred...> <args...>`.
    fn with(&self, cred: &[&str], args: &[&str]) -> Run {
        let mut all: Vec<&str> = cred.to_vec();
        all.extend_from_slice(args);
        self.d.berth(&all)
    }

    /// Asserts `run` failed with `prefix` and that nothing changed since
    /// `before`; returns stderr.
    #[track_caller]
    fn refused(&self, run: Run, prefix: &str, before: &State) -> String {
        let err = run.failure();
        assert!(
            err.starts_with(prefix),
            "expected `{prefix}...`, got: {err}"
        );
        assert_eq!(err.lines().count(), 1, "errors are one line: {err}");
        assert_eq!(&self.state(), before, "a refused call changed something");
        err
    }

    /// The credential is refused as unauthenticated for a read and for a
    /// create in each service, and nothing changes. Returns the first stderr.
    #[track_caller]
    fn unauthenticated(&self, cred: &[&str]) -> String {
        let before = self.state();
        let first = self.refused(
            self.with(cred, &["service", "list"]),
            UNAUTHENTICATED,
            &before,
        );
        for service in ["fast", "bulk"] {
            self.refused(
                self.with(
                    cred,
                    &["volume", "create", "intruder", "--service", service],
                ),
                UNAUTHENTICATED,
                &before,
            );
        }
        self.refused(
            self.with(cred, &["volume", "list"]),
            UNAUTHENTICATED,
            &before,
        );
        first
    }

    /// The credential fails (at the handshake or as unauthenticated) for a
    /// read and a create, and nothing changes.
    #[track_caller]
    fn cannot_connect(&self, cred: &[&str]) -> String {
        let before = self.state();
        // Refused by the controller: the handshake fails or the call is
        // unauthenticated; never a client-side problem with the files. A
        // failed handshake reaches the client, depending on timing, as
        // "unavailable: the connection was closed" or "unknown error:
        // transport error".
        let refused_by_controller = |err: &str| {
            err.starts_with("error: unavailable: ")
                || err.starts_with("error: unknown error: transport error")
                || err.starts_with(UNAUTHENTICATED)
        };
        let first = self.with(cred, &["service", "list"]).failure();
        assert!(refused_by_controller(&first), "{first}");
        let err = self
            .with(cred, &["volume", "create", "intruder", "--service", "fast"])
            .failure();
        assert!(refused_by_controller(&err), "{err}");
        assert_eq!(self.state(), before, "a refused call changed something");
        first
    }

    fn service_names(&self, cred: &[&str]) -> Vec<String> {
        let list = self.with(cred, &["service", "list", "-o", "json"]).json();
        let mut names: Vec<String> = list
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_owned())
            .collect();
        names.sort();
        names
    }

    fn volume_names(&self, cred: &[&str]) -> Vec<(String, String)> {
        let list = self.with(cred, &["volume", "list", "-o", "json"]).json();
        let mut names = field_pairs(&list, "service", "name");
        names.sort();
        names
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

// ---- 1. no credential ----

#[test]
fn no_credential_is_unauthenticated_and_creates_nothing() {
    let c = two_services("", "");
    let fingerprint = std::fs::read_to_string(c.d.data_dir.join("tls/fingerprint"))
        .expect("fingerprint file")
        .trim()
        .to_owned();
    let host = c.d.addr.to_string();
    // The pin, but no token, no token file, no certificate.
    let config = c.file(
        "no-credential.toml",
        format!("host = \"{host}\"\n\n[controllers.\"{host}\"]\nfingerprint = \"{fingerprint}\"\n")
            .as_bytes(),
    );
    let err = c.unauthenticated(&["--config", s(&config)]);
    assert!(err.contains("no credential"), "{err}");
    assert_log_keeps_secrets(&c.d, &[admin_token(&c.d)]);
}

// ---- 2. tokens ----

#[test]
fn bad_and_forged_tokens_are_unauthenticated_and_change_nothing() {
    let c = two_services("", "");
    let d = &c.d;
    let work = c.dir().to_owned();
    let alice = issue(d, &["alice", "--services", "fast"]);
    let jti = jti_of(&alice);
    let mut used = vec![admin_token(d), alice.clone()];
    let mut refused: Vec<String> = Vec::new();

    // Alice's real token works, so every refusal below is about the token.
    assert_eq!(c.service_names(&["--token", &alice]), ["fast"]);

    // Malformed.
    let err = c.unauthenticated(&["--token", "abc"]);
    assert!(err.contains("token refused"), "{err}");
    let garbage = c.file("garbage.token", b"not.a.token\n");
    c.unauthenticated(&["--token-file", s(&garbage)]);

    // Valid structure and claims, real signature, but by another key.
    let foreign = foreign_ed25519_key(&work);
    let by_foreign = eddsa_token(
        &foreign,
        &claims("alice", &jti, "user", &["fast"], 0, 600),
        &work,
    );
    let err = c.unauthenticated(&["--token", &by_foreign]);
    assert!(err.contains("signature does not verify"), "{err}");
    refused.push(by_foreign);

    // alg none, empty signature.
    let none = format!(
        "{}.",
        signing_input(
            &json!({"alg": "none", "typ": "JWT"}),
            &claims("alice", &jti, "admin", &["*"], 0, 600)
        )
    );
    c.unauthenticated(&["--token", &none]);
    refused.push(none);

    // HS256 keyed with the controller's public key (key confusion): the PEM
    // file's bytes, and the raw 32-byte key.
    let public_pem = std::fs::read(d.data_dir.join("auth/signing.pub")).expect("signing.pub");
    let spki = pem_der(&String::from_utf8_lossy(&public_pem));
    let raw_public = &spki[spki.len() - 32..];
    for secret in [&public_pem[..], raw_public] {
        let input = signing_input(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &claims("alice", &jti, "admin", &["*"], 0, 600),
        );
        let token = format!("{input}.{}", b64url(&hs256(secret, input.as_bytes())));
        let err = c.unauthenticated(&["--token", &token]);
        assert!(err.contains("EdDSA"), "{err}");
        refused.push(token);
    }

    // Signed with the controller's own key and carrying alice's real jti and
    // expiry, so only the dates under test are wrong. (The registry is the
    // authority: claims that differ from the record, expiry included, are
    // refused, see a_forged_token_cannot_widen_the_scope_recorded_for_its_id.)
    let key = controller_signing_key(d, &work);
    let real_exp = token_claims(&alice)["exp"].as_i64().expect("exp");
    // alice's token as issued but for its dates (nbf, exp: absolute).
    let forge = |nbf: i64, exp: i64| {
        eddsa_token(
            &key,
            &claims_at("alice", &jti, "user", &["fast"], nbf, exp),
            &work,
        )
    };
    let control = forge(now(), real_exp);
    assert_eq!(
        c.service_names(&["--token", &control]),
        ["fast"],
        "a correctly forged token must pass, or the date checks below prove nothing"
    );
    used.push(control);

    let not_yet = forge(now() + 600, real_exp);
    let err = c.unauthenticated(&["--token", &not_yet]);
    assert!(err.contains("not valid yet"), "{err}");
    refused.push(not_yet);

    let expired = eddsa_token(
        &key,
        &claims("alice", &jti, "user", &["fast"], -1200, -600),
        &work,
    );
    let err = c.unauthenticated(&["--token", &expired]);
    assert!(err.contains("expired"), "{err}");
    refused.push(expired);

    // nbf within the 30 s leeway: accepted (the exp leeway is exercised
    // with a real token in an_expired_token_is_refused_after_the_leeway).
    let lenient = forge(now() + 10, real_exp);
    assert_eq!(
        c.service_names(&["--token", &lenient]),
        ["fast"],
        "nbf +10 s is within the leeway"
    );
    used.push(lenient);

    // A later expiry than the one issued: refused, the record decides.
    let extended = forge(now(), real_exp + 3600);
    let err = c.unauthenticated(&["--token", &extended]);
    assert!(err.contains("do not match"), "{err}");
    refused.push(extended);

    // The right key but a token id the controller never issued.
    let unknown = eddsa_token(
        &key,
        &claims(
            "alice",
            "00000000-0000-4000-8000-000000000000",
            "user",
            &["fast"],
            0,
            600,
        ),
        &work,
    );
    let err = c.unauthenticated(&["--token", &unknown]);
    assert!(err.contains("unknown to this controller"), "{err}");
    refused.push(unknown);

    // No error message echoes the token it refused.
    for token in &refused {
        let err = c.with(&["--token", token], &["service", "list"]).failure();
        assert!(
            !err.contains(token.as_str()),
            "the error echoes the token: {err}"
        );
    }
    assert_log_keeps_secrets(d, &used);
}

/// The registry, not the claims, decides what a token id may do: with the
/// signing key (the leak the README describes) a token can be forged, but
/// reusing a user's token id must not make it an admin, another subject, or
/// widen its services.
#[test]
fn a_forged_token_cannot_widen_the_scope_recorded_for_its_id() {
    let c = two_services("", "");
    let work = c.dir().to_owned();
    let alice = issue(&c.d, &["alice", "--services", "fast"]);
    let jti = jti_of(&alice);
    let key = controller_signing_key(&c.d, &work);
    let before = c.state();
    let tokens_before = c.d.berth(&["token", "list", "-o", "json"]).json();
    let mut forged = Vec::new();
    for (sub, role, services) in [
        ("alice", "admin", &["*"][..]),
        ("alice", "user", &["fast", "bulk"]),
        ("root", "user", &["fast"]),
    ] {
        let token = eddsa_token(&key, &claims(sub, &jti, role, services, 0, 600), &work);
        let t = ["--token", token.as_str()];
        for args in [
            &["token", "list"][..],
            &["volume", "create", "wide", "--service", "bulk"],
        ] {
            let err = c.with(&t, args).failure();
            assert!(
                err.starts_with(UNAUTHENTICATED) || err.starts_with(DENIED),
                "{sub}/{role}/{services:?} {args:?}: {err}"
            );
        }
        assert_eq!(
            c.state(),
            before,
            "{sub}/{role}/{services:?} changed something"
        );
        // If such a token is accepted at all, it sees what alice may see.
        if c.with(&t, &["service", "list"]).ok() {
            assert_eq!(
                c.service_names(&t),
                ["fast"],
                "{sub}/{role}/{services:?} sees more than alice's record"
            );
        }
        forged.push(token);
    }
    assert_eq!(
        c.d.berth(&["token", "list", "-o", "json"]).json(),
        tokens_before
    );
    forged.extend([admin_token(&c.d), alice]);
    assert_log_keeps_secrets(&c.d, &forged);
}

#[test]
fn an_expired_token_is_refused_after_the_leeway() {
    let c = two_services("", "");
    let bob = issue(&c.d, &["bob", "--services", "*", "--ttl", "1s"]);
    let issued = Instant::now();
    // Still accepted right after its one second, thanks to the 30 s leeway.
    assert_eq!(c.service_names(&["--token", &bob]), ["bulk", "fast"]);
    c.with(
        &["--token", &bob],
        &["volume", "create", "early", "--service", "fast"],
    )
    .success();

    let deadline = issued + Duration::from_secs(40);
    let err = loop {
        let run = c.with(&["--token", &bob], &["service", "list"]);
        if !run.ok() {
            break run.stderr();
        }
        assert!(
            Instant::now() < deadline,
            "a token with a 1 s lifetime was still accepted 40 s later"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let elapsed = issued.elapsed();
    assert!(
        elapsed >= Duration::from_secs(25),
        "refused after {elapsed:?}, inside the 30 s leeway: {err}"
    );
    assert!(err.starts_with(UNAUTHENTICATED), "{err}");
    assert!(err.contains("expired"), "{err}");
    let err = c.unauthenticated(&["--token", &bob]);
    assert!(err.contains("expired"), "{err}");
    assert_eq!(
        c.volume_names(&[]),
        pairs(&[("fast", "early")]),
        "only what bob made while his token was valid"
    );
    assert_log_keeps_secrets(&c.d, &[admin_token(&c.d), bob]);
}

#[test]
fn a_revoked_token_is_refused_at_the_next_command() {
    let c = two_services("", "");
    let bob = issue(&c.d, &["bob", "--services", "fast"]);
    let jti = jti_of(&bob);
    c.with(
        &["--token", &bob],
        &["volume", "create", "b1", "--service", "fast"],
    )
    .success();

    let listed = c.d.berth(&["token", "list", "-o", "json"]).json();
    let entry = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["jti"] == jti.as_str())
        .expect("bob's token is listed")
        .clone();
    assert_eq!(entry["subject"], "bob");
    assert_eq!(entry["revoked"], false);
    assert!(
        !listed.to_string().contains(&bob),
        "token list shows token strings"
    );

    c.d.berth(&["token", "revoke", &jti]).success();
    let err = c.unauthenticated(&["--token", &bob]);
    assert!(err.contains("revoked"), "{err}");
    let listed = c.d.berth(&["token", "list", "-o", "json"]).json();
    assert!(listed
        .as_array()
        .expect("array")
        .iter()
        .any(|t| t["jti"] == jti.as_str() && t["revoked"] == true));

    // Revocation is durable.
    let mut c = c;
    c.d.restart();
    c.unauthenticated(&["--token", &bob]);
    assert_eq!(c.volume_names(&[]), pairs(&[("fast", "b1")]));
    assert_log_keeps_secrets(&c.d, &[admin_token(&c.d), bob]);
}

/// One HTTP/2 connection, two calls with the same token, revocation in
/// between. Over plaintext: a token travels the same either way.
#[tokio::test]
async fn a_token_revoked_while_its_connection_is_open_is_refused_on_it() {
    use berth_proto::v1 as pb;
    use tonic::transport::Endpoint;

    let d = Berthd::start_with(&["--insecure-plaintext"]);
    let bob = issue(&d, &["bob", "--services", "*"]);
    let carl = issue(&d, &["carl", "--services", "*"]);
    let channel = Endpoint::from_shared(format!("http://{}", d.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to berthd");
    let mut catalog = pb::service_catalog_client::ServiceCatalogClient::new(channel.clone());
    let mut volumes = pb::volumes_client::VolumesClient::new(channel);

    let listed = catalog
        .list_services(with(&bob, pb::ListServicesRequest {}))
        .await
        .expect("bob's first call")
        .into_inner();
    assert_eq!(listed.services.len(), 1);

    d.berth(&["token", "revoke", &jti_of(&bob)]).success();

    let status = catalog
        .list_services(with(&bob, pb::ListServicesRequest {}))
        .await
        .expect_err("a revoked token on an open connection");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let status = volumes
        .create_volume(with(
            &bob,
            pb::CreateVolumeRequest {
                service: "local".into(),
                name: "after-revoke".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("a create with a revoked token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        entries(&d.data_dir.join("volumes"))
            .iter()
            .filter(|n| !n.starts_with('.'))
            .count(),
        0
    );

    // No credential at all on the same connection: refused too.
    let status = catalog
        .list_services(tonic::Request::new(pb::ListServicesRequest {}))
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // The connection itself is fine: another valid token works on it.
    catalog
        .list_services(with(&carl, pb::ListServicesRequest {}))
        .await
        .expect("carl's call on the same connection");
    assert_log_keeps_secrets(&d, &[admin_token(&d), bob, carl]);
}

// ---- 3. client certificates ----

/// A P-256 key and CSR for `cn`, made by openssl: (key, csr).
fn openssl_csr(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    openssl::csr(dir, cn, cn)
}

fn cert_count(c: &Ctl) -> usize {
    c.d.berth(&["cert", "list", "-o", "json"])
        .json()
        .as_array()
        .expect("array")
        .len()
}

/// Signs `csr` with the controller's CA by openssl, bypassing the
/// controller: `ext` is the extension config, `dates` explicit start/end.
fn sign_with_controller_ca(
    c: &Ctl,
    csr: &Path,
    out: &Path,
    ext: &str,
    serial: &str,
    dates: Option<(&str, &str)>,
) {
    let ca_crt = c.d.data_dir.join("tls/ca.crt");
    let ca_key = c.d.data_dir.join("tls/ca.key");
    let ext_file = c.file("ext.cnf", ext.as_bytes());
    match dates {
        None => {
            openssl(
                &openssl::sign_req(
                    s(csr),
                    (s(&ca_crt), s(&ca_key)),
                    "5",
                    s(&ext_file),
                    s(out),
                    &["-set_serial", serial],
                ),
                None,
            );
        }
        Some((start, end)) => {
            // `openssl x509` of OpenSSL 3.0 cannot set dates in the past;
            // `openssl ca` can.
            let db = c.dir().join("ca-db");
            std::fs::create_dir_all(&db).expect("ca db");
            std::fs::write(db.join("index.txt"), b"").expect("index");
            std::fs::write(db.join("serial"), b"1000\n").expect("serial");
            let cnf = c.file(
                "ca.cnf",
                format!(
                    "[ca]\ndefault_ca = c\n[c]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n\
                     serial = {db}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
                     [p]\ncommonName = supplied\n",
                    db = s(&db)
                )
                .as_bytes(),
            );
            openssl(
                &[
                    "ca",
                    "-batch",
                    "-notext",
                    "-config",
                    s(&cnf),
                    "-cert",
                    s(&ca_crt),
                    "-keyfile",
                    s(&ca_key),
                    "-in",
                    s(csr),
                    "-out",
                    s(out),
                    "-startdate",
                    start,
                    "-enddate",
                    end,
                    "-extfile",
                    s(&ext_file),
                ],
                None,
            );
        }
    }
}

const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

#[test]
fn a_signed_csr_authenticates_with_its_scope() {
    let c = two_services("", "");
    let dir = c.dir().to_owned();
    c.d.berth(&["volume", "create", "f0", "--service", "fast"])
        .success();
    c.d.berth(&["volume", "create", "b0", "--service", "bulk"])
        .success();

    let (key, csr) = openssl_csr(&dir, "carol");
    let pem =
        c.d.berth(&["cert", "sign", "--csr", s(&csr), "--services", "fast"])
            .success();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let crt = c.file("carol.crt", pem.as_bytes());
    // What the controller set: CN, clientAuth only, not a CA.
    let text = String::from_utf8_lossy(&openssl(
        &[
            "x509",
            "-in",
            s(&crt),
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage,basicConstraints",
        ],
        None,
    ))
    .into_owned();
    assert!(
        text.contains("CN = carol") || text.contains("CN=carol"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Server Authentication"), "{text}");
    assert!(!text.contains("CA:TRUE"), "{text}");

    let carol = ["--cert", s(&crt), "--key", s(&key)];
    assert_eq!(c.service_names(&carol), ["fast"]);
    assert_eq!(c.volume_names(&carol), pairs(&[("fast", "f0")]));
    c.with(&carol, &["volume", "create", "c1", "--service", "fast"])
        .success();
    let before = c.state();
    let err = c.refused(
        c.with(&carol, &["volume", "create", "c2", "--service", "bulk"]),
        DENIED,
        &before,
    );
    assert!(err.contains("carol") && err.contains("bulk"), "{err}");
    c.refused(c.with(&carol, &["cert", "list"]), DENIED, &before);

    // Token and certificate of one subject: the narrower scope applies.
    let carol_all = issue(&c.d, &["carol", "--services", "*"]);
    let both = ["--token", &carol_all, "--cert", s(&crt), "--key", s(&key)];
    assert_eq!(c.service_names(&both), ["fast"]);
    c.refused(
        c.with(&both, &["volume", "create", "c3", "--service", "bulk"]),
        DENIED,
        &before,
    );

    // Token and certificate naming different subjects: refused.
    let alice = issue(&c.d, &["alice", "--services", "*"]);
    let mixed = ["--token", &alice, "--cert", s(&crt), "--key", s(&key)];
    let err = c.unauthenticated(&mixed);
    assert!(err.contains("alice") && err.contains("carol"), "{err}");

    // `cert issue` makes the key here and writes three 0600 files, once.
    let out = dir.join("dave-files");
    let count = cert_count(&c);
    let issue_dave = [
        "cert",
        "issue",
        "dave",
        "--services",
        "fast",
        "--out",
        s(&out),
    ];
    c.d.berth(&issue_dave).success();
    assert_eq!(entries(&out), ["ca.crt", "dave.crt", "dave.key"]);
    for name in ["ca.crt", "dave.crt", "dave.key"] {
        let mode = std::fs::metadata(out.join(name))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
    assert_eq!(
        std::fs::read(out.join("ca.crt")).expect("ca.crt"),
        std::fs::read(c.d.data_dir.join("tls/ca.crt")).expect("controller ca.crt")
    );
    assert_eq!(cert_count(&c), count + 1);
    let read_all = || -> Vec<Vec<u8>> {
        ["ca.crt", "dave.crt", "dave.key"]
            .iter()
            .map(|n| std::fs::read(out.join(n)).expect("read"))
            .collect()
    };
    let written = read_all();
    let err = c.d.berth(&issue_dave).failure();
    assert!(err.contains("already exists"), "{err}");
    let again = read_all();
    assert_eq!(written, again, "cert issue overwrote a file");
    assert_eq!(cert_count(&c), count + 1, "the refused issue signed anyway");
    let (dave_crt, dave_key) = (out.join("dave.crt"), out.join("dave.key"));
    let dave = ["--cert", s(&dave_crt), "--key", s(&dave_key)];
    assert_eq!(c.service_names(&dave), ["fast"]);

    // Revoking carol's certificate takes effect at her next command.
    let listed = c.d.berth(&["cert", "list", "-o", "json"]).json();
    let serial = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["subject"] == "carol")
        .expect("carol's certificate is listed")["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    c.d.berth(&["cert", "revoke", &serial]).success();
    let err = c.unauthenticated(&carol);
    assert!(err.contains("revoked"), "{err}");
    // Dave's certificate is untouched.
    assert_eq!(c.service_names(&dave), ["fast"]);
    assert_log_keeps_secrets(&c.d, &[admin_token(&c.d), carol_all, alice]);
}

#[test]
fn tampered_csrs_are_invalid_and_sign_nothing() {
    let c = two_services("", "");
    let dir = c.dir().to_owned();
    let (_key, csr) = openssl_csr(&dir, "carol");
    let der = pem_der(&std::fs::read_to_string(&csr).expect("csr"));
    let count = cert_count(&c);

    // The CN changed, the signature kept.
    let at = der
        .windows(5)
        .position(|w| w == b"carol")
        .expect("the CN in the DER");
    let mut renamed = der.clone();
    renamed[at + 4] = b'x';
    // A byte of the signature flipped (the DER ends with it).
    let mut flipped = der.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x01;

    for (name, bytes) in [("renamed", renamed), ("flipped", flipped)] {
        let path = c.file(
            &format!("{name}.csr"),
            der_pem("CERTIFICATE REQUEST", &bytes).as_bytes(),
        );
        let before = c.state();
        let err = c.refused(
            c.d.berth(&["cert", "sign", "--csr", s(&path), "--services", "fast"]),
            INVALID,
            &before,
        );
        assert!(err.contains("signature does not verify"), "{name}: {err}");
        assert_eq!(cert_count(&c), count, "{name}: a certificate was signed");
    }
}

#[test]
fn certificates_the_controller_did_not_sign_for_clients_are_refused() {
    let c = two_services("", "");
    let dir = c.dir().to_owned();
    c.d.berth(&["volume", "create", "f0", "--service", "fast"])
        .success();
    let (key, csr) = openssl_csr(&dir, "carol");

    // A foreign CA, with the very subject of the controller's CA, and a
    // clientAuth leaf under it.
    let ca_subject = String::from_utf8_lossy(&openssl(
        &[
            "x509",
            "-in",
            s(&c.d.data_dir.join("tls/ca.crt")),
            "-noout",
            "-subject",
            "-nameopt",
            "compat",
        ],
        None,
    ))
    .trim()
    .trim_start_matches("subject=")
    .to_owned();
    assert!(ca_subject.starts_with('/'), "{ca_subject}");
    let fca_key = dir.join("foreign-ca.key");
    let fca_crt = dir.join("foreign-ca.crt");
    let mut ca_extra = vec!["-x509", "-days", "30"];
    ca_extra.extend_from_slice(&openssl::CA_EXTENSIONS);
    openssl(
        &openssl::new_p256_req(s(&fca_key), s(&fca_crt), "/CN=berthd CA", &ca_extra),
        None,
    );
    let ext = c.file("client-ext.cnf", CLIENT_EXT.as_bytes());
    let foreign = dir.join("foreign-leaf.crt");
    openssl(
        &openssl::sign_req(
            s(&csr),
            (s(&fca_crt), s(&fca_key)),
            "5",
            s(&ext),
            s(&foreign),
            &["-set_serial", "0x77"],
        ),
        None,
    );
    c.cannot_connect(&["--cert", s(&foreign), "--key", s(&key)]);

    // The controller's CA, clientAuth, but expired.
    let expired = dir.join("expired.crt");
    sign_with_controller_ca(
        &c,
        &csr,
        &expired,
        CLIENT_EXT,
        "0x1000",
        Some(("20200101000000Z", "20200201000000Z")),
    );
    c.cannot_connect(&["--cert", s(&expired), "--key", s(&key)]);

    // The controller's CA, valid dates, serverAuth only.
    let server_only = dir.join("server-only.crt");
    sign_with_controller_ca(
        &c,
        &csr,
        &server_only,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        "0x5eed",
        None,
    );
    c.cannot_connect(&["--cert", s(&server_only), "--key", s(&key)]);

    // The controller's CA, clientAuth, valid, but never recorded (minted
    // with the CA key behind the controller's back).
    let unrecorded = dir.join("unrecorded.crt");
    sign_with_controller_ca(&c, &csr, &unrecorded, CLIENT_EXT, "0x5eee", None);
    let err = c.cannot_connect(&["--cert", s(&unrecorded), "--key", s(&key)]);
    assert!(err.contains("not issued by this controller"), "{err}");

    // The same key with the certificate the controller signed: accepted.
    let pem =
        c.d.berth(&["cert", "sign", "--csr", s(&csr), "--services", "fast"])
            .success();
    let good = c.file("carol.crt", pem.as_bytes());
    assert_eq!(
        c.service_names(&["--cert", s(&good), "--key", s(&key)]),
        ["fast"]
    );
    assert_eq!(c.volume_names(&[]), pairs(&[("fast", "f0")]));
}

// ---- 4. scope ----

#[test]
fn a_user_token_is_confined_to_its_services() {
    let c = two_services("", "");
    c.d.berth(&["volume", "create", "f1", "--service", "fast"])
        .success();
    c.d.berth(&["volume", "create", "b1", "--service", "bulk"])
        .success();
    let alice = issue(&c.d, &["alice", "--services", "fast"]);
    let a = ["--token", alice.as_str()];

    assert_eq!(c.service_names(&a), ["fast"]);
    assert_eq!(c.volume_names(&a), pairs(&[("fast", "f1")]));
    c.with(&a, &["volume", "create", "a1", "--service", "fast"])
        .success();
    // With one visible service, --service is not needed.
    c.with(&a, &["volume", "create", "a2"]).success();
    c.with(&a, &["volume", "inspect", "a2", "--service", "fast"])
        .success();

    let before = c.state();
    let create = c.refused(
        c.with(&a, &["volume", "create", "a3", "--service", "bulk"]),
        DENIED,
        &before,
    );
    assert!(create.contains("alice"), "names the subject: {create}");
    assert!(create.contains("bulk"), "names the service: {create}");
    assert!(
        !create.contains(&alice),
        "the error shows the token: {create}"
    );
    assert!(!c.bulk.join("a3").exists());
    for args in [
        &["volume", "list", "--service", "bulk"][..],
        &["volume", "inspect", "b1", "--service", "bulk"],
        &["volume", "remove", "b1", "--service", "bulk"],
    ] {
        let err = c.refused(c.with(&a, args), DENIED, &before);
        assert!(
            err.contains("alice") && err.contains("bulk"),
            "{args:?}: {err}"
        );
    }
    assert!(c.bulk.join("b1").is_dir(), "b1 was removed");

    // No admin calls for a user.
    let (_, csr) = openssl_csr(c.dir(), "eve");
    let admin_jti = jti_of(&admin_token(&c.d));
    let tokens_before = c.d.berth(&["token", "list", "-o", "json"]).json();
    let certs_before = cert_count(&c);
    for args in [
        &["token", "list"][..],
        &["token", "issue", "alice", "--services", "*"],
        &["token", "issue", "eve", "--role", "admin"],
        &["token", "revoke", &admin_jti],
        &["cert", "list"],
        &["cert", "sign", "--csr", s(&csr), "--services", "bulk"],
        &["cert", "revoke", "00"],
        &["ca", "show"],
    ] {
        let err = c.refused(c.with(&a, args), DENIED, &before);
        assert!(
            err.contains("alice") && err.contains("admin role"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        c.d.berth(&["token", "list", "-o", "json"]).json(),
        tokens_before
    );
    assert_eq!(cert_count(&c), certs_before);
    // The admin token still works (it was not revoked).
    assert_eq!(c.service_names(&[]), ["bulk", "fast"]);
    assert_log_keeps_secrets(&c.d, &[admin_token(&c.d), alice]);
}

#[test]
fn deny_lists_refuse_and_allow_lists_grant() {
    let c = two_services("deny = [\"alice\"]", "allow = [\"carol\"]");
    c.d.berth(&["volume", "create", "f1", "--service", "fast"])
        .success();
    c.d.berth(&["volume", "create", "b1", "--service", "bulk"])
        .success();

    // alice with a token for every service: fast is still closed to her.
    let alice = issue(&c.d, &["alice", "--services", "*"]);
    let a = ["--token", alice.as_str()];
    assert_eq!(c.service_names(&a), ["bulk"]);
    assert_eq!(c.volume_names(&a), pairs(&[("bulk", "b1")]));
    let before = c.state();
    let err = c.refused(
        c.with(&a, &["volume", "create", "a1", "--service", "fast"]),
        DENIED,
        &before,
    );
    assert!(
        err.contains("alice") && err.contains("fast") && err.contains("deny"),
        "{err}"
    );
    c.refused(
        c.with(&a, &["volume", "remove", "f1", "--service", "fast"]),
        DENIED,
        &before,
    );
    // ... even as an admin.
    let alice_admin = issue(&c.d, &["alice", "--role", "admin"]);
    let err = c.refused(
        c.with(
            &["--token", &alice_admin],
            &["volume", "create", "a1", "--service", "fast"],
        ),
        DENIED,
        &before,
    );
    assert!(err.contains("deny"), "{err}");
    c.with(&a, &["volume", "create", "a2", "--service", "bulk"])
        .success();

    // carol's certificate names fast only; bulk's allow list adds bulk.
    let (key, csr) = openssl_csr(c.dir(), "carol");
    let pem =
        c.d.berth(&["cert", "sign", "--csr", s(&csr), "--services", "fast"])
            .success();
    let crt = c.file("carol.crt", pem.as_bytes());
    let carol = ["--cert", s(&crt), "--key", s(&key)];
    assert_eq!(c.service_names(&carol), ["bulk", "fast"]);
    c.with(&carol, &["volume", "create", "c1", "--service", "bulk"])
        .success();
    c.with(&carol, &["volume", "create", "c2", "--service", "fast"])
        .success();
    assert!(c.bulk.join("c1").is_dir() && c.fast.join("c2").is_dir());

    // Someone in neither list gets only what the credential names.
    let dave = issue(&c.d, &["dave", "--services", "fast"]);
    assert_eq!(c.service_names(&["--token", &dave]), ["fast"]);
    assert_log_keeps_secrets(&c.d, &[admin_token(&c.d), alice, alice_admin, dave]);
}

// ---- 6. the README walkthrough ----

#[test]
fn the_readme_walkthrough_works_with_no_flags() {
    let d = Berthd::start();
    // Exactly as typed by a user: no --host, no credential flags; the
    // installed client config supplies the controller, the pin and the token.
    let berth = |args: &[&str]| {
        let mut cmd = Command::new(bin("berth"));
        d.env(&mut cmd);
        Run(cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run berth"))
    };
    let config = std::fs::read_to_string(d.home.join(".config/berth/config.toml"))
        .expect("the client config was installed");
    assert!(
        config.contains("fingerprint") && config.contains("token_file"),
        "{config}"
    );

    let services = berth(&["service", "list"]).success();
    assert!(
        services.contains("local") && services.contains("vfs"),
        "{services}"
    );
    let first = berth(&["volume", "create", "db", "--size", "10GiB"]).success();
    assert!(d.data_dir.join("volumes/db").is_dir());
    let second = berth(&["volume", "create", "db", "--size", "10GiB"]).success();
    assert_eq!(first, second, "the second create returns the same volume");
    let list = berth(&["volume", "list"]).success();
    for title in ["NAME", "SERVICE", "DRIVER", "SIZE", "STATUS", "CREATED"] {
        assert!(list.contains(title), "{list}");
    }
    assert!(list.lines().any(|l| l.starts_with("db ")), "{list}");
    let inspected: Value =
        serde_json::from_str(&berth(&["volume", "inspect", "db", "-o", "json"]).success())
            .expect("JSON");
    assert_eq!(inspected["name"], "db");
    assert_eq!(inspected["service"], "local");
    assert_eq!(inspected["size_bytes"], 10u64 << 30);
    let id = inspected["id"].as_str().expect("id");
    assert!(
        first.contains(id),
        "create and inspect show one id: {first}"
    );
    berth(&["volume", "remove", "db"]).success();
    assert!(!d.data_dir.join("volumes/db").exists());
    let list: Value =
        serde_json::from_str(&berth(&["volume", "list", "-o", "json"]).success()).expect("JSON");
    assert_eq!(list, json!([]));
    assert_log_keeps_secrets(&d, &[admin_token(&d)]);
}
