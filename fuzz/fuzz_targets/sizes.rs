//! Human sizes: `berth_client::size::parse_size` (what `--size` accepts) and
//! `format_size` (what `berth volume list`/`inspect` show).
//!
//! The input is text for the parser; its first 8 bytes are also read as a
//! byte count for the formatter, so both see values the other cannot produce.
//!
//! Invariants:
//! - a parsed size re-parses to the same value from its plain byte count
//!   (`4096`, `4096 B`), with the unit in either case, and with padding;
//! - a refusal says `invalid size` and quotes the input;
//! - `format_size` output re-parses: a whole mantissa (`10 GiB`) means
//!   exactly that many bytes; a one-decimal mantissa (`1.5 TiB`) is the
//!   value rounded to a tenth of the unit; the mantissa is below 1024
//!   (below 1 PiB's next unit only for PiB) and at least 1.
#![no_main]

use berth_client::size::{format_size, parse_size};
use libfuzzer_sys::fuzz_target;

const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

fn check_format(bytes: u64) {
    let shown = format_size(bytes);
    let (number, unit) = shown
        .split_once(' ')
        .unwrap_or_else(|| panic!("{bytes}: {shown:?} has no unit"));
    let power = UNITS
        .iter()
        .position(|u| *u == unit)
        .unwrap_or_else(|| panic!("{bytes}: {shown:?} has an unknown unit"));
    let scale = 1u128 << (10 * power);
    if power == 0 {
        assert_eq!(number, bytes.to_string(), "{bytes}: {shown:?}");
        assert!(bytes < 1024, "{bytes}: {shown:?}");
        return;
    }
    // Tenths of the unit, whether shown with a decimal or not.
    let (tenths, exact) = match number.split_once('.') {
        None => (number.parse::<u128>().map(|m| m * 10), true),
        Some((whole, tenth)) => {
            assert_eq!(
                tenth.len(),
                1,
                "{bytes}: {shown:?} has more than one decimal"
            );
            (format!("{whole}{tenth}").parse::<u128>(), false)
        }
    };
    let tenths = tenths.unwrap_or_else(|e| panic!("{bytes}: {shown:?}: {e}"));
    assert!(tenths >= 10, "{bytes}: {shown:?} is below 1 {unit}");
    if power < UNITS.len() - 1 {
        assert!(
            tenths < 10240,
            "{bytes}: {shown:?} should use the next unit"
        );
    }
    let shown_bytes = tenths * scale; // ten times the shown value, in bytes
    let real = u128::from(bytes) * 10;
    if exact {
        assert_eq!(shown_bytes, real, "{bytes}: {shown:?} is not exact");
        assert_eq!(parse_size(&shown), Ok(bytes), "{bytes}: {shown:?}");
    } else {
        // Rounded to the nearest tenth: off by at most half a tenth.
        assert!(
            shown_bytes.abs_diff(real) <= scale / 2,
            "{bytes}: {shown:?} is off by more than rounding"
        );
        // A shown fraction that is whole bytes reads back as what is shown.
        // (Up to 2^64 - 1: the value shown for the largest counts rounds up
        // past it, and the parser rightly refuses that.)
        if (tenths * scale).is_multiple_of(10) && tenths * scale / 10 <= u128::from(u64::MAX) {
            assert_eq!(
                parse_size(&shown).map(u128::from),
                Ok(tenths * scale / 10),
                "{bytes}: {shown:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let raw = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        check_format(raw);
    }
    let text = String::from_utf8_lossy(data);
    match parse_size(&text) {
        Ok(bytes) => {
            assert_eq!(parse_size(&bytes.to_string()), Ok(bytes), "{text:?}");
            assert_eq!(parse_size(&format!("{bytes} B")), Ok(bytes), "{text:?}");
            assert_eq!(parse_size(&format!(" \t{text}\n ")), Ok(bytes), "{text:?}");
            if text.is_ascii() {
                assert_eq!(
                    parse_size(&text.to_ascii_uppercase()),
                    Ok(bytes),
                    "{text:?}"
                );
                assert_eq!(
                    parse_size(&text.to_ascii_lowercase()),
                    Ok(bytes),
                    "{text:?}"
                );
            }
            check_format(bytes);
        }
        Err(err) => {
            let message = err.to_string();
            assert!(message.starts_with("invalid size "), "{message}");
            assert!(message.contains(&format!("{text:?}")), "{message}");
        }
    }
});
