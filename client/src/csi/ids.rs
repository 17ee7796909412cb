//! CSI identifiers for Berth objects: a volume or snapshot id is
//! `SERVICE/NAME`, so every later call knows the service without a lookup,
//! and a CSI name (the orchestrator's idempotency key) maps to a Berth name.

use sha2::{Digest, Sha256};

/// The longest Berth volume or snapshot name (Berth's naming rule).
pub const MAX_NAME_LEN: usize = 128;

/// A volume or snapshot named by service and Berth name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// The Berth service.
    pub service: String,
    /// The Berth name within the service.
    pub name: String,
}

impl ObjectId {
    /// Parses `SERVICE/NAME`. `None` for anything else: such an id was
    /// never issued by this plugin, so the object it names does not exist.
    pub fn parse(id: &str) -> Option<Self> {
        let (service, name) = id.split_once('/')?;
        if service.is_empty() || service.len() > 256 || service.chars().any(char::is_control) {
            return None;
        }
        if !is_berth_name(name) {
            return None;
        }
        Some(Self {
            service: service.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The CSI id, `SERVICE/NAME`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.service, self.name)
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.name)
    }
}

/// Whether `name` follows Berth's naming rule: 1 to 128 characters, a
/// letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn is_berth_name(name: &str) -> bool {
    let Some(first) = name.chars().next() else {
        return false;
    };
    name.len() <= MAX_NAME_LEN
        && first.is_ascii_alphanumeric()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The Berth name for a CSI name: the name itself when Berth accepts it
/// (Kubernetes' `pvc-UUID` and `snapshot-UUID` always are), else `csi-`
/// and the first 32 hex digits of its SHA-256, so the same CSI name always
/// maps to the same volume and retries stay idempotent.
pub fn berth_name(csi_name: &str) -> String {
    if is_berth_name(csi_name) {
        return csi_name.to_owned();
    }
    let digest = Sha256::digest(csi_name.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("csi-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_names_nothing() {
        let id = ObjectId::parse("fast/pvc-1").expect("valid");
        assert_eq!(id.service, "fast");
        assert_eq!(id.name, "pvc-1");
        assert_eq!(id.id(), "fast/pvc-1");
        for bad in [
            "",
            "fake-vol-id",
            "/x",
            "fast/",
            "fast/../x",
            "fast/a/b",
            "fast/.hidden",
        ] {
            assert!(ObjectId::parse(bad).is_none(), "{bad}");
        }
        assert!(ObjectId::parse(&format!("s/{}", "a".repeat(128))).is_some());
        assert!(ObjectId::parse(&format!("s/{}", "a".repeat(129))).is_none());
    }

    #[test]
    fn csi_names_map_to_berth_names_stably() {
        assert_eq!(berth_name("pvc-0a1b"), "pvc-0a1b");
        let odd = berth_name("my volume/with:odd chars");
        assert!(is_berth_name(&odd), "{odd}");
        assert_eq!(odd, berth_name("my volume/with:odd chars"));
        assert_ne!(odd, berth_name("my volume/with:odd chars!"));
        assert!(is_berth_name(&berth_name(&"x".repeat(300))));
    }
}
