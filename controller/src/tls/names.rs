//! Which names a generated server certificate carries: the SAN policy.

use rcgen::SanType;

use crate::tls::ca::PkiError;

/// The SAN for one name: an IP address or a DNS name, never a wildcard.
pub fn san(name: &str) -> Result<SanType, PkiError> {
    if name.contains('*') {
        return Err(PkiError::Name {
            name: name.to_owned(),
            problem: "wildcard names are never put in a certificate",
        });
    }
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into().map_err(|_| PkiError::Name {
            name: name.to_owned(),
            problem: "is neither a DNS name nor an IP address",
        })?),
    })
}

/// The machine's host name, or `localhost`.
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The SANs of a generated server certificate: the loopback names, the host
/// name and each extra one, without duplicates.
pub fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in std::iter::once(host_name()).chain(extra.iter().cloned()) {
        if !sans.contains(&name) {
            sans.push(name);
        }
    }
    sans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_refused() {
        assert!(san("*.example.com").is_err());
        assert!(san("example.com").is_ok());
    }
}
