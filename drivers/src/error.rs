//! The one error type drivers return.

use std::io;

/// What went wrong in a driver call.
///
/// The controller maps each variant to a gRPC status (shown in brackets), so
/// pick the variant by what the *caller* should do about it. Messages are
/// shown to people: say what failed, with what input, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The request is malformed for this driver (`InvalidArgument`), for
    /// example an unknown per-volume option.
    #[error("{0}")]
    InvalidArgument(String),

    /// A service option is missing or wrong; raised by driver factories at
    /// start-up (`InvalidArgument`).
    #[error("option `{option}`: {reason}")]
    InvalidOption {
        /// The option's key.
        option: String,
        /// What is wrong with it, and what is expected.
        reason: String,
    },

    /// The named volume or snapshot does not exist (`NotFound`).
    #[error("{0} does not exist")]
    NotFound(String),

    /// Something with that name exists with different parameters
    /// (`AlreadyExists`).
    #[error("{0}")]
    AlreadyExists(String),

    /// A size (or other quantity) the storage can never hold, for example
    /// an image larger than the filesystem's largest file (`OutOfRange`).
    /// Refuse it before touching the storage.
    #[error("{0}")]
    OutOfRange(String),

    /// The operation is refused in the current state, for example deleting an
    /// attached volume (`FailedPrecondition`).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The driver does not implement this optional operation
    /// (`Unimplemented`). This is what the trait's default methods return.
    #[error("the {driver} driver does not support {operation}")]
    Unsupported {
        /// The driver's name.
        driver: String,
        /// The operation, in words ("attach", "snapshots").
        operation: &'static str,
    },

    /// The backing storage is temporarily unreachable; retrying may help
    /// (`Unavailable`).
    #[error("{0}")]
    Unavailable(String),

    /// An I/O error on the backing storage (`Internal`).
    #[error("{context}: {source}")]
    Io {
        /// What the driver was doing, with which path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Anything else (`Internal`).
    #[error("{0}")]
    Internal(String),
}

impl DriverError {
    /// Wraps an I/O error with what the driver was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// How many characters of a piece of user input an error message repeats
/// at most (see [`echo`]).
pub const ECHO_LIMIT: usize = 48;

/// A piece of user input as an error message should show it: quoted, cut to
/// its first [`ECHO_LIMIT`] characters (then an ellipsis and the full length
/// in bytes), with control, invisible and bidirectional-override characters
/// escaped as `\u{..}`, so an echoed value can neither flood a reply nor
/// disguise itself.
///
/// ```
/// use berth_drivers::echo;
/// assert_eq!(echo("0750"), "\"0750\"");
/// assert_eq!(echo("a\nb"), "\"a\\nb\"");
/// let long = "7".repeat(1 << 20);
/// assert_eq!(echo(&long), format!("\"{}…\" (1048576 bytes)", "7".repeat(48)));
/// ```
pub fn echo(input: &str) -> String {
    let mut out = String::from("\"");
    for c in input.chars().take(ECHO_LIMIT) {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    if input.chars().nth(ECHO_LIMIT).is_some() {
        out.push_str(&format!("…\" ({} bytes)", input.len()));
    } else {
        out.push('"');
    }
    out
}

/// Characters that print as nothing or reorder the text around them.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Shorthand for driver results.
pub type DriverResult<T> = Result<T, DriverError>;
