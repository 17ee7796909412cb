//! Subject names (a token's subject, a certificate's CN, an allow or deny
//! list entry): what is refused, the normal form kept, and how a name is
//! shown in a message without letting it hide or reorder text.

/// The longest subject name, in bytes of UTF-8.
pub const SUBJECT_MAX_BYTES: usize = 128;

/// Why a subject name (a token's subject, a certificate's CN, an allow or
/// deny list entry) is refused. Each message shows the name with every
/// refused character escaped, so that it cannot reorder or hide text in a
/// terminal or a log.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// Nothing at all.
    #[error("a subject cannot be empty")]
    Empty,
    #[error(
        "subject \"{shown}\" is {len} bytes long; the limit is {SUBJECT_MAX_BYTES} bytes of UTF-8"
    )]
    /// Longer than [`SUBJECT_MAX_BYTES`].
    TooLong {
        /// The name, escaped.
        shown: String,
        /// Its length in bytes.
        len: usize,
    },
    #[error(
        "subject \"{shown}\" holds U+{code:04X} ({kind}) at character {position}: subjects may hold only visible characters and inner ASCII spaces; remove it"
    )]
    /// A character that is invisible or reorders text.
    Hidden {
        /// The name, escaped.
        shown: String,
        /// The refused code point.
        code: u32,
        /// What kind of character it is.
        kind: &'static str,
        /// Its position, counting characters from 1.
        position: usize,
    },
    /// A leading or trailing space.
    #[error("subject \"{shown}\" starts or ends with a space; remove it")]
    EdgeSpace {
        /// The name, escaped.
        shown: String,
    },
    /// A leading combining mark.
    #[error("subject \"{shown}\" starts with a combining mark, which joins what comes before it; remove it")]
    LeadingMark {
        /// The name, escaped.
        shown: String,
    },
}

/// What kind of invisible or look-alike-making character `c` is, if it is
/// one a subject may not hold: controls, format characters (zero-width,
/// bidirectional controls, the byte-order mark, tags), separators other than
/// the ASCII space, private-use and unassigned code points, and the other
/// default-ignorable characters that render as nothing (variation selectors,
/// Hangul fillers, the combining grapheme joiner), plus the blank braille
/// pattern.
fn hidden_kind(c: char) -> Option<&'static str> {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    match c.general_category() {
        G::Control => return Some("a control character"),
        G::Format => return Some(
            "an invisible format character: zero-width, bidirectional control or byte-order mark",
        ),
        G::SpaceSeparator if c != ' ' => return Some("a space other than the ASCII space"),
        G::LineSeparator | G::ParagraphSeparator => return Some("a line or paragraph separator"),
        G::PrivateUse => return Some("a private-use character"),
        G::Unassigned | G::Surrogate => return Some("an unassigned code point"),
        _ => {}
    }
    matches!(
        c,
        '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0100}'..='\u{E01EF}'
    )
    .then_some("a character that renders as nothing")
}

/// `text` for a message: quotes, backslashes and every character a subject
/// may not hold escaped, at most 64 characters.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 64 {
            out.push_str("...");
            break;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if hidden_kind(c).is_some() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Checks a subject name and returns it in Unicode normal form C.
///
/// Refused: empty names, names over [`SUBJECT_MAX_BYTES`], names with a
/// character that is invisible or changes how the text around it reads
/// (see `hidden_kind`), leading or trailing spaces, and a leading combining
/// mark. What is kept is NFC, so that `e` + U+0301 and `é` are one subject
/// and a deny list on one form refuses the other.
pub fn normalize_subject(raw: &str) -> Result<String, SubjectError> {
    use unicode_normalization::UnicodeNormalization as _;
    use unicode_properties::{GeneralCategoryGroup as GG, UnicodeGeneralCategory as _};
    if raw.is_empty() {
        return Err(SubjectError::Empty);
    }
    for (i, c) in raw.chars().enumerate() {
        if let Some(kind) = hidden_kind(c) {
            return Err(SubjectError::Hidden {
                shown: shown(raw),
                code: c as u32,
                kind,
                position: i + 1,
            });
        }
    }
    if raw.starts_with(' ') || raw.ends_with(' ') {
        return Err(SubjectError::EdgeSpace { shown: shown(raw) });
    }
    if raw
        .chars()
        .next()
        .is_some_and(|c| c.general_category_group() == GG::Mark)
    {
        return Err(SubjectError::LeadingMark { shown: shown(raw) });
    }
    let normal: String = raw.nfc().collect();
    if normal.len() > SUBJECT_MAX_BYTES {
        return Err(SubjectError::TooLong {
            shown: shown(&normal),
            len: normal.len(),
        });
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_bidirectional_subjects_are_refused_with_the_code_point() {
        for (raw, code) in [
            ("mallory\u{200b}", "U+200B"),
            ("\u{202e}yrollam", "U+202E"),
            ("\u{feff}mallory", "U+FEFF"),
            ("mal\u{00ad}lory", "U+00AD"),
            ("mallory\u{2066}", "U+2066"),
            ("mallory\u{e0041}", "U+E0041"),
            ("mallory\u{3164}", "U+3164"),
            ("mallory\u{fe0f}", "U+FE0F"),
            ("mallory\u{034f}", "U+034F"),
            ("mal\u{00a0}lory", "U+00A0"),
            ("mal\tlory", "U+0009"),
            ("mallory\u{e000}", "U+E000"),
            ("mallory\u{2028}", "U+2028"),
        ] {
            let err = normalize_subject(raw).expect_err(raw).to_string();
            assert!(err.contains(code), "{raw:?}: {err}");
            // The message never carries the raw character itself.
            let bad = raw
                .chars()
                .find(|c| hidden_kind(*c).is_some())
                .expect("bad");
            assert!(!err.contains(bad), "{raw:?}: {err}");
        }
        for raw in [" alice", "alice ", "\u{0301}alice", ""] {
            assert!(normalize_subject(raw).is_err(), "{raw:?}");
        }
        assert!(normalize_subject(&"a".repeat(SUBJECT_MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn kept_subjects_are_in_normal_form_c() {
        assert_eq!(normalize_subject("jose\u{301}").expect("ok"), "jos\u{e9}");
        assert_eq!(normalize_subject("jos\u{e9}").expect("ok"), "jos\u{e9}");
        for kept in [
            "alice",
            "John Smith",
            "backup-bot",
            "\u{5c71}\u{7530}",
            "ext.user@example",
        ] {
            assert_eq!(normalize_subject(kept).expect(kept), kept);
        }
    }
}
