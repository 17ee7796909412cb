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

/// Shorthand for driver results.
pub type DriverResult<T> = Result<T, DriverError>;
