//! Human sizes: `512MiB`, `10GiB`, `1G`, `1.5TiB`, `4096`.

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}; use bytes or a number with a unit, e.g. 4096, 512MiB, 10GiB, 1G, 1.5TiB")]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

/// Parses a size into bytes. Binary units (`KiB`, `MiB`, `GiB`, `TiB`,
/// `PiB`, also `Ki`...) are powers of 1024; decimal ones (`K`/`KB`, `M`/`MB`,
/// `G`/`GB`, `T`/`TB`, `P`/`PB`) powers of 1000, as in Kubernetes. Case of
/// the unit does not matter; a fraction must come out to whole bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let fail = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(fail("it does not start with a number"));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "p" | "pb" => 1_000_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        "pi" | "pib" => 1 << 50,
        _ => return Err(fail("the unit is not known")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(fail("the number is malformed"));
    }
    let whole: u64 = whole.parse().map_err(|_| fail("the number is too large"))?;
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| fail("it is larger than 2^64 bytes"))?;
    if !fraction.is_empty() {
        if fraction.len() > 18 {
            return Err(fail("the fraction has too many digits"));
        }
        let digits: u128 = fraction
            .parse()
            .map_err(|_| fail("the number is malformed"))?;
        let scale = 10u128.pow(fraction.len() as u32);
        let scaled = digits * multiplier as u128;
        if !scaled.is_multiple_of(scale) {
            return Err(fail("it is not a whole number of bytes"));
        }
        bytes = u64::try_from(scaled / scale)
            .ok()
            .and_then(|extra| bytes.checked_add(extra))
            .ok_or_else(|| fail("it is larger than 2^64 bytes"))?;
    }
    Ok(bytes)
}

/// Formats bytes for people: `10 GiB`, `1.5 TiB`, `512 B`.
///
/// A whole number (`10 GiB`) is exact; otherwise the value is rounded to a
/// tenth of the largest unit it reaches (ties to even), moving up a unit when
/// rounding reaches 1024 (`1048575` is `1.0 MiB`, not `1024.0 KiB`). Integer
/// arithmetic throughout, so values past 2^53 are not rounded on the way.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let value = u128::from(bytes);
    let mut unit = 0;
    while unit < UNITS.len() - 1 && value >= 1 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let scale = 1u128 << (10 * unit);
    if value.is_multiple_of(scale) {
        return format!("{} {}", value / scale, UNITS[unit]);
    }
    let tenths = |scale: u128| {
        let (whole, rest) = (value * 10 / scale, value * 10 % scale);
        match (rest * 2).cmp(&scale) {
            std::cmp::Ordering::Greater => whole + 1,
            std::cmp::Ordering::Equal => whole + whole % 2,
            std::cmp::Ordering::Less => whole,
        }
    };
    let mut shown = tenths(scale);
    if shown >= 10 * 1024 && unit < UNITS.len() - 1 {
        unit += 1;
        shown = tenths(scale << 10);
    }
    format!("{}.{} {}", shown / 10, shown % 10, UNITS[unit])
}

/// Formats bytes the way a person most likely typed them: a whole (or
/// one-decimal) number of a binary unit as [`format_size`] does (`10 GiB`,
/// `1.5 TiB`), else a whole or one-decimal number of a decimal unit (`1 MB`
/// for `--size 1M`, `1.5 GB` for `1.5G`), else [`format_size`]'s rounding.
/// What it shows without rounding re-parses with [`parse_size`] to the same
/// bytes.
pub fn display_size(bytes: u64) -> String {
    let binary = format_size(bytes);
    if bytes < 1024 || !binary.contains('.') {
        return binary;
    }
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    let value = u128::from(bytes);
    let mut power = 0;
    while power < UNITS.len() - 1 && value >= 1000u128.pow(power as u32 + 2) {
        power += 1;
    }
    let scale = 1000u128.pow(power as u32 + 1);
    if value.is_multiple_of(scale) {
        return format!("{} {}", value / scale, UNITS[power]);
    }
    if (value * 10).is_multiple_of(scale) {
        let tenths = value * 10 / scale;
        return format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[power]);
    }
    binary
}

/// Rewrites each `N bytes` in a message (a controller's error text) as the
/// size a person reads: `1 GiB`, or `953.7 MiB (1000000001 bytes)` when the
/// human form is rounded. Counts below 1 KiB are left as they are.
pub fn humanize_byte_counts(text: &str) -> String {
    const WORD: &str = " bytes";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(WORD) {
        let (before, after) = rest.split_at(at);
        let start = before.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let standalone = before[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '.');
        match before[start..].parse::<u64>() {
            Ok(n) if standalone && n >= 1024 => {
                let shown = display_size(n);
                out.push_str(&before[..start]);
                if shown.contains('.') {
                    out.push_str(&format!("{shown} ({n} bytes)"));
                } else {
                    out.push_str(&shown);
                }
            }
            _ => {
                out.push_str(before);
                out.push_str(WORD);
            }
        }
        rest = &after[WORD.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5TiB"), Ok(3 << 39));
        assert_eq!(parse_size("2 gb"), Ok(2_000_000_000));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn refuses_bad_sizes() {
        for bad in [
            "",
            "-1",
            "abc",
            "1XB",
            "1.5",
            "1.",
            ".5G",
            "1..5G",
            "99999999999999999999",
            "16EiB",
            "20000PiB",
            "1e3",
        ] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid size"), "{err}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(3 << 39), "1.5 TiB");
        assert_eq!(format_size(1025), "1.0 KiB");
        assert_eq!(format_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn displays_in_the_kind_of_unit_typed() {
        for (typed, shown) in [
            ("1M", "1 MB"),
            ("1MiB", "1 MiB"),
            ("1.5G", "1.5 GB"),
            ("10GiB", "10 GiB"),
            ("1.5TiB", "1.5 TiB"),
            ("4096", "4 KiB"),
            ("1000", "1000 B"),
            ("0", "0 B"),
            ("2000", "2 kB"),
            ("1000000001", "953.7 MiB"),
        ] {
            let bytes = parse_size(typed).expect(typed);
            assert_eq!(display_size(bytes), shown, "{typed}");
            if !shown.contains("iB") {
                assert_eq!(parse_size(shown), Ok(bytes), "{shown} re-parses");
            }
        }
    }

    #[test]
    fn byte_counts_in_messages_become_sizes() {
        assert_eq!(
            humanize_byte_counts(
                "volume v already exists with size 1073741824 bytes, not 1000000 bytes"
            ),
            "volume v already exists with size 1 GiB, not 1 MB"
        );
        assert_eq!(
            humanize_byte_counts("at most 1000000001 bytes; 512 bytes; x1048576 bytes"),
            "at most 953.7 MiB (1000000001 bytes); 512 bytes; x1048576 bytes"
        );
    }

    /// Found by the `sizes` fuzz target: one byte short of 1 MiB was shown
    /// as `1024.0 KiB`.
    #[test]
    fn rounding_up_moves_to_the_next_unit() {
        let bytes = parse_size("1048575B").expect("a size");
        assert_eq!(format_size(bytes), "1.0 MiB");
    }

    /// Past 2^53 the float formatting dropped the odd byte and showed a
    /// whole number, which this function promises is exact.
    #[test]
    fn whole_numbers_are_exact_past_2_pow_53() {
        assert_eq!(format_size((1 << 53) + 1), "8.0 PiB");
        assert_eq!(format_size(1 << 53), "8 PiB");
    }
}
