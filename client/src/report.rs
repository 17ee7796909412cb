//! Errors as one line of text for a person: gRPC codes in words, causes
//! joined with `: `. `berth` prints this after `error: `; the plugins will
//! answer with it.

use std::error::Error;

use crate::config::ConfigError;
use crate::session::SessionError;
use crate::{deadline, size};

/// The error and its causes on one line, with gRPC codes in words; a cause
/// already said by an earlier one is not repeated.
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_line(status);
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(this) = cause {
        let status = this.downcast_ref::<tonic::Status>().or_else(|| {
            match this.downcast_ref::<SessionError>() {
                Some(SessionError::Status(status)) => Some(status),
                _ => None,
            }
        });
        let text = match status {
            Some(status) => status_line(status),
            None => this.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = this.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// The error for a person at a terminal: [`one_line`], except for an error
/// that reads better over several lines (a client config the toml parser
/// refused: line, column and a caret under the offending text).
pub fn for_person(e: &(dyn Error + 'static)) -> String {
    let mut cause = Some(e);
    while let Some(this) = cause {
        let config = this.downcast_ref::<ConfigError>().or_else(|| {
            match this.downcast_ref::<SessionError>() {
                Some(SessionError::Config(c)) => Some(c),
                _ => None,
            }
        });
        if let Some(c @ ConfigError::Parse { .. }) = config {
            return c.for_person();
        }
        cause = this.source();
    }
    one_line(e)
}

/// A controller's error reply: its code in words, then its message (or,
/// for a call the deadline cut short, what did not answer in time).
pub fn status_line(status: &tonic::Status) -> String {
    use tonic::Code::*;
    if let Some(no_reply) = deadline::no_reply(status) {
        return no_reply.to_string();
    }
    let word = match status.code() {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "timed out",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "not supported",
        Internal => "internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "not authenticated",
    };
    format!("{word}: {}", size::humanize_byte_counts(status.message()))
}
