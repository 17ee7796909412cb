//! Volume, snapshot and service names (`berth_drivers::VolumeName::parse`),
//! the service lists of credential scopes (`check_scope`) and credential
//! subjects (`check_subject`).
//!
//! Invariants:
//! - the validator agrees with an independent reading of the documented rule
//!   (`[A-Za-z0-9][A-Za-z0-9_.-]*`, 1 to 128 bytes);
//! - an accepted name round-trips unchanged (`as_str`, `Display`, re-parse)
//!   and is a safe single path component: no NUL, no `/`, not `.` or `..`;
//! - a refusal names the rule and stays short whatever the input's size;
//! - a scope's service is accepted exactly when it is `*` or a valid name;
//! - an accepted subject is 1 to 128 bytes without control characters.
#![no_main]

use berth_controller::auth::credentials::check_scope;
use berth_controller::auth::subject::normalize_subject as check_subject;
use berth_drivers::{VolumeName, MAX_NAME_LEN, NAME_RULE};
use berth_fuzz::user_scope;
use libfuzzer_sys::fuzz_target;

/// The rule as the documentation states it, written independently.
fn follows_rule(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let name: &str = &text;

    match VolumeName::parse(name) {
        Ok(parsed) => {
            assert!(follows_rule(name), "accepted {name:?} against the rule");
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.to_string(), name);
            assert_eq!(VolumeName::parse(parsed.as_str()).as_ref(), Ok(&parsed));
            assert!(!name.contains('\0') && !name.contains('/'));
            assert!(name != "." && name != "..");
            assert!(std::path::Path::new(name).components().count() == 1);
        }
        Err(err) => {
            assert!(
                !follows_rule(name),
                "refused {name:?} that follows the rule"
            );
            let message = err.to_string();
            assert!(message.contains(NAME_RULE), "{message}");
            // The echoed input is cut to 140 characters (up to 4 bytes each,
            // plus escapes of up to 10 bytes for `\u{10ffff}`).
            assert!(message.len() <= 140 * 10 + 200, "{} bytes", message.len());
        }
    }

    let scope = check_scope(&user_scope(&[name]));
    assert_eq!(
        scope.is_ok(),
        name == "*" || follows_rule(name),
        "check_scope({name:?}) = {scope:?}"
    );

    if check_subject(name).is_ok() {
        assert!(!name.is_empty() && name.len() <= 128, "{name:?}");
        assert!(!name.chars().any(char::is_control), "{name:?}");
    }
});
