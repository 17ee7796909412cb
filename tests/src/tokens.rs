//! Bearer tokens in tests: the bootstrap admin token a controller keeps in
//! its data directory, tokens issued through `berth token issue`, a token
//! put on one request, and a token's claims read without any check.

use std::path::PathBuf;

use base64::Engine as _;

use crate::Berthd;

impl Berthd {
    /// Where berthd keeps its bootstrap admin token.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("auth").join("admin.token")
    }

    /// The bootstrap admin token berthd keeps in its data directory.
    pub fn admin_token(&self) -> String {
        let path = self.admin_token_path();
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }
}

/// The bootstrap admin token of `d` ([`Berthd::admin_token`]).
pub fn admin_token(d: &Berthd) -> String {
    d.admin_token()
}

/// The file holding the bootstrap admin token of `d`.
pub fn admin_token_path(d: &Berthd) -> PathBuf {
    d.admin_token_path()
}

/// `berth token issue ARGS...` (as admin), returning the token.
#[track_caller]
pub fn issue(d: &Berthd, args: &[&str]) -> String {
    let mut all = vec!["token", "issue"];
    all.extend_from_slice(args);
    let token = d.berth(&all).success().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    token
}

/// `message` with `authorization: Bearer <token>`, for one call. (A client
/// that presents a token on every call uses
/// [`berth_client::session::Bearer`], as `berth` does.)
pub fn with<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// base64url without padding, as in a JWT.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a token, decoded without any check.
pub fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url claims");
    serde_json::from_slice(&json).expect("JSON claims")
}

/// The id (`jti`) of a token.
pub fn jti_of(token: &str) -> String {
    claims(token)["jti"].as_str().expect("jti").to_owned()
}
