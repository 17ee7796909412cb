//! Certificate expiry: the warnings in the log before the CA (or an
//! operator-provided server certificate) expires, and the dates
//! `berthd fingerprint` prints.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::tls::ca::Ca;
use crate::tls::live::{IdentitySource, Tls};
use crate::tls::x509::{read_chain, validity};

/// Warnings start this long before a certificate expires.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the running controller checks again.
pub const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// What to say about a certificate expiring at `not_after`, seen at `now`:
/// nothing while more than [`WARN_BEFORE`] is left.
pub fn warning(what: &str, not_after: SystemTime, now: SystemTime) -> Option<String> {
    match not_after.duration_since(now) {
        Ok(left) if left > WARN_BEFORE => None,
        Ok(left) => Some(format!(
            "the {what} certificate expires in {} (at {}); renew it before then",
            humantime::format_duration(Duration::from_secs(left.as_secs() / 3600 * 3600)),
            humantime::format_rfc3339_seconds(not_after)
        )),
        Err(_) => Some(format!(
            "the {what} certificate EXPIRED at {}; clients will refuse it",
            humantime::format_rfc3339_seconds(not_after)
        )),
    }
}

fn check(tls: &Tls, ca: &Ca) {
    let now = SystemTime::now();
    let mut dates = vec![("CA", validity(&ca.cert_der).map(|(_, na)| na))];
    // A generated server certificate is renewed by the controller itself.
    if let IdentitySource::Files { .. } = tls.options().source {
        dates.push(("server", tls.presented().not_after));
    }
    for (what, not_after) in dates {
        if let Some(text) = not_after.and_then(|na| warning(what, na, now)) {
            tracing::warn!(certificate = what, "{text}");
        }
    }
}

/// Checks at once and then every [`CHECK_EVERY`] until the task is aborted.
pub fn spawn_warnings(tls: Arc<Tls>, ca: Arc<Ca>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            check(&tls, &ca);
        }
    })
}

/// When the first certificate of a PEM file expires, as RFC 3339.
pub fn expires(path: &Path) -> Option<String> {
    let chain = read_chain(path).ok()?;
    let (_, not_after) = validity(chain.first()?)?;
    Some(humantime::format_rfc3339_seconds(not_after).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_within_thirty_days_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(warning("CA", now + 31 * day, now), None);
        let soon = warning("CA", now + 29 * day, now).expect("a warning");
        assert!(soon.contains("expires in 29days"), "{soon}");
        let gone = warning("CA", now - day, now).expect("a warning");
        assert!(gone.contains("EXPIRED"), "{gone}");
    }
}
