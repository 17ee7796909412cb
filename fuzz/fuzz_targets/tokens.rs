//! Bearer tokens: `Credentials::verify_token` and the `authorization` header
//! reading of `Authenticator::authenticate`, against a real credential store
//! that issued an admin token, a user token and a revoked user token.
//!
//! The first byte picks how the rest becomes a token:
//! - 0: the rest is the token;
//! - 1: the rest is the whole `authorization` header value;
//! - 2, 3, 4: the rest replaces the header, claims or signature part of an
//!   issued token (second byte picks which), base64url-encoded as in a JWT;
//! - 5: an attacker who holds the signing key signs the rest as claims (or
//!   `header NUL claims`); `@J0`..`@J2`, `@E0`..`@E2` and `@N` in it become
//!   the issued tokens' ids, their expiry and the current time.
//!
//! Invariants:
//! - without the key (modes 0 to 4), a token that verifies is byte for byte
//!   one the controller issued and did not revoke, and the identity is the one
//!   recorded for it; a refusal is UNAUTHENTICATED with a short one-line
//!   message, never a database or internal error;
//! - even with the key (mode 5), a token that verifies carries the id of an
//!   issued, unrevoked token and gets exactly the recorded subject and scope;
//! - verifying again (now from the cache) gives the same answer.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use berth_controller::auth::{Authenticator, Identity, Via};
use berth_controller::auth::credentials::CredentialError;
use berth_fuzz::{fixture, Fixture, Issued};
use libfuzzer_sys::fuzz_target;

fn same_identity(a: &Identity, b: &Identity) -> bool {
    a.subject == b.subject && a.scope == b.scope && a.via == b.via
}

fn recorded(issued: &Issued) -> Identity {
    Identity {
        subject: issued.record.subject.clone(),
        scope: issued.record.scope.clone(),
        via: Via::Token,
    }
}

fn replace_part(token: &str, part: usize, bytes: &[u8]) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[part] = URL_SAFE_NO_PAD.encode(bytes);
    parts.join(".")
}

fn signed_by_key_holder(fx: &Fixture, rest: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(rest).into_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    for (i, issued) in fx.issued.iter().enumerate() {
        text = text.replace(&format!("@J{i}"), &issued.record.jti);
        text = text.replace(&format!("@E{i}"), &issued.record.expires_at.to_string());
    }
    text = text.replace("@N", &now.to_string());
    let (header, claims) = text
        .split_once('\0')
        .unwrap_or((r#"{"typ":"JWT","alg":"EdDSA"}"#, &text));
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &fx.signing_key,
        jsonwebtoken::Algorithm::EdDSA,
    )
    .expect("EdDSA signing");
    format!("{message}.{signature}")
}

/// Checks a refusal without the key: the caller's fault, said briefly.
fn check_refusal(err: &CredentialError) {
    assert!(matches!(err, CredentialError::Invalid(_)), "{err:?}");
    let message = err.to_string();
    assert!(!message.contains(['\n', '\r']), "{message:?}");
    assert!(message.len() <= 512, "{} bytes: {message:?}", message.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let mode = mode % 6;

    if mode == 1 {
        let Ok(value) = http::HeaderValue::from_bytes(rest) else {
            return; // the HTTP layer never delivers such a header
        };
        let request = http::Request::builder()
            .header(http::header::AUTHORIZATION, value)
            .body(())
            .expect("request");
        let authenticator = Authenticator::new(fx.credentials.clone());
        let outcome =
            berth_fuzz::block_on(authenticator.authenticate(&request)).map_err(tonic::Status::from);
        berth_fuzz::show(|| format!("mode 1: {outcome:?}"));
        match outcome {
            Ok(id) => {
                let header = String::from_utf8_lossy(rest);
                let matched = fx.issued.iter().any(|i| {
                    !i.revoked && header.contains(&i.token) && same_identity(&id, &recorded(i))
                });
                assert!(matched, "header {header:?} authenticated as {id:?}");
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                assert!(!status.message().contains(['\n', '\r']), "{status:?}");
            }
        }
        return;
    }

    let token = match mode {
        0 => String::from_utf8_lossy(rest).into_owned(),
        2..=4 => {
            let Some((&which, bytes)) = rest.split_first() else {
                return;
            };
            let base = &fx.issued[usize::from(which) % fx.issued.len()].token;
            replace_part(base, usize::from(mode - 2), bytes)
        }
        _ => signed_by_key_holder(fx, rest),
    };

    let first = berth_fuzz::block_on(fx.credentials.verify_token(&token));
    berth_fuzz::show(|| format!("mode {mode}: {token:?}: {first:?}"));
    match &first {
        Ok(id) if mode == 5 => {
            let claims: serde_json::Value = token
                .split('.')
                .nth(1)
                .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
                .expect("verified claims decode");
            let jti = claims.get("jti").and_then(|j| j.as_str());
            let matched = fx.issued.iter().any(|i| {
                !i.revoked && Some(i.record.jti.as_str()) == jti && same_identity(id, &recorded(i))
            });
            assert!(matched, "key holder's claims {claims} verified as {id:?}");
        }
        Ok(id) => {
            let matched = fx
                .issued
                .iter()
                .any(|i| !i.revoked && i.token == token && same_identity(id, &recorded(i)));
            assert!(
                matched,
                "token {token:?} verified as {id:?} but was never issued"
            );
        }
        Err(err) if mode != 5 => check_refusal(err),
        Err(_) => {}
    }

    let second = berth_fuzz::block_on(fx.credentials.verify_token(&token));
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert!(same_identity(a, b), "{a:?} then {b:?}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("token {token:?}: {a:?} then {b:?}"),
    }
});
