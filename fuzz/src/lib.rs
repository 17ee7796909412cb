//! Shared fixtures for the Berth fuzz targets.
//!
//! The credential targets (`tokens`, `csr`) verify against a real
//! [`Credentials`] opened the way `berthd` opens it: a CA and a token signing
//! key created in a fresh data directory, and the credential trees in a sled
//! database. The directory is removed when the fuzzer exits normally.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_controller::auth::{Role, Scope};
use berth_controller::auth::credentials::{Credentials, TokenRecord};
use berth_controller::tls::ca::Ca;

/// Runs one of the credentials' async calls to its end (the sled registry
/// answers at once; a current-thread runtime is enough).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// A token the fixture issued, and whether it then revoked it.
pub struct Issued {
    /// The token as `berth token issue` prints it.
    pub token: String,
    /// What the controller recorded.
    pub record: TokenRecord,
    /// Revoked right after issue: it must never verify.
    pub revoked: bool,
}

/// A real credential store in a temporary data directory.
pub struct Fixture {
    /// The verifier under test.
    pub credentials: Arc<Credentials>,
    /// The controller's CA (what `berth cert sign` certificates chain to).
    pub ca: Arc<Ca>,
    /// Tokens issued at start: admin, user of `alpha`, and a revoked user
    /// of `beta` and `gamma`.
    pub issued: Vec<Issued>,
    /// The token signing key, for targets that play an attacker who holds it.
    pub signing_key: jsonwebtoken::EncodingKey,
}

static DATA_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

extern "C" fn remove_data_dir() {
    if let Ok(mut dir) = DATA_DIR.lock() {
        if let Some(dir) = dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A user scope naming `services`.
pub fn user_scope(services: &[&str]) -> Scope {
    Scope {
        role: Role::User,
        services: services.iter().map(|s| s.to_string()).collect(),
    }
}

/// The admin scope.
pub fn admin_scope() -> Scope {
    Scope {
        role: Role::Admin,
        services: ["*".to_owned()].into(),
    }
}

fn open() -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("berth-fuzz-")
        .tempdir()
        .expect("temporary directory")
        .keep();
    *DATA_DIR.lock().expect("data dir lock") = Some(dir.clone());
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe { libc::atexit(remove_data_dir) };

    let ca = Arc::new(Ca::load_or_create(&dir.join("tls")).expect("CA"));
    let db = sled::Config::new()
        .path(dir.join("db"))
        .flush_every_ms(None)
        .open()
        .expect("sled database");
    let auth = dir.join("auth");
    let credentials =
        Arc::new(Credentials::open(&auth, &db, Arc::clone(&ca)).expect("credentials"));
    let key_pem = std::fs::read(auth.join("signing.key")).expect("signing key");
    let signing_key = jsonwebtoken::EncodingKey::from_ed_pem(&key_pem).expect("Ed25519 key");

    let ttl = Duration::from_secs(3600);
    let mut issued = Vec::new();
    for (subject, scope, revoked) in [
        ("admin", admin_scope(), false),
        ("alice", user_scope(&["alpha"]), false),
        ("mallory", user_scope(&["beta", "gamma"]), true),
    ] {
        let (token, record) =
            block_on(credentials.issue_token(subject, scope, ttl)).expect("issue token");
        if revoked {
            block_on(credentials.revoke_token(&record.jti)).expect("revoke token");
        }
        issued.push(Issued {
            token,
            record,
            revoked,
        });
    }
    // The fixture itself must be sound, or every finding is noise.
    for i in &issued {
        let verified = block_on(credentials.verify_token(&i.token));
        assert_eq!(
            verified.is_ok(),
            !i.revoked,
            "{}: {verified:?}",
            i.record.subject
        );
    }
    Fixture {
        credentials,
        ca,
        issued,
        signing_key,
    }
}

/// The process-wide fixture, opened on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(open)
}

/// Prints what happened to an input when `BERTH_FUZZ_SHOW` is set, e.g. to
/// see what the seeds do: `BERTH_FUZZ_SHOW=1 cargo fuzz run ... corpus/csr/seed-*`.
pub fn show(what: impl FnOnce() -> String) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("BERTH_FUZZ_SHOW").is_some()) {
        eprintln!("berth-fuzz: {}", what());
    }
}
