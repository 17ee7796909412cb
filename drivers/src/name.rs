//! Volume names: the one rule every service and every driver shares.

use std::fmt;

/// The longest volume name accepted, in bytes (all accepted characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// The rule, in words, for error messages.
pub const NAME_RULE: &str =
    "1 to 128 characters: a letter or digit, then letters, digits, '_', '.' or '-'";

/// A validated volume (or snapshot) name.
///
/// A `VolumeName` is 1 to [`MAX_NAME_LEN`] characters matching
/// `[A-Za-z0-9][A-Za-z0-9_.-]*` (Docker's rule). It therefore can never be
/// empty, `.` or `..`, contain a path separator, a NUL or a control character,
/// so a driver may use it as a single path component. Drivers should still
/// join paths defensively (see [`crate::vfs`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

/// Why a string is not a valid [`VolumeName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("name {shown} is invalid: {reason}; a name is {NAME_RULE}")]
pub struct InvalidName {
    shown: String,
    reason: &'static str,
}

impl VolumeName {
    /// Checks `name` against the rule.
    ///
    /// ```
    /// use berth_drivers::VolumeName;
    /// assert!(VolumeName::parse("db-data_1.v2").is_ok());
    /// assert!(VolumeName::parse("..").is_err());
    /// assert!(VolumeName::parse("a/b").is_err());
    /// ```
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        let fail = |reason| {
            Err(InvalidName {
                shown: format!("{name:?}").chars().take(140).collect(),
                reason,
            })
        };
        let Some(first) = name.chars().next() else {
            return fail("it is empty");
        };
        if name.len() > MAX_NAME_LEN {
            return fail("it is too long");
        }
        if !first.is_ascii_alphanumeric() {
            return fail("it must start with a letter or digit");
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return fail("it contains a character that is not allowed");
        }
        Ok(Self(name.to_owned()))
    }

    /// Wraps `name` WITHOUT checking it. Only for tests of the second wall
    /// (the conformance kit sends `../escape` this way to check that drivers
    /// join paths defensively); never use it on input.
    #[doc(hidden)]
    pub fn dangerous_unchecked(name: &str) -> Self {
        Self(name.to_owned())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VolumeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_docker_names() {
        for ok in ["a", "A1", "0", "db.data", "x_y-z.1", &"a".repeat(128)] {
            assert!(VolumeName::parse(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = "a".repeat(129);
        for bad in [
            "", ".", "..", "/", "a/b", "../x", ".hidden", "-x", "_x", "a\0b", "a\nb", "a b", "é",
            "a\\b", &long,
        ] {
            let err = VolumeName::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(NAME_RULE), "{err}");
        }
    }
}
