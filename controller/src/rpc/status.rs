//! Every error the controller answers a call with becomes a gRPC status
//! here, and only here: one table per error type, each variant to the code
//! that says whose side failed (the caller's: InvalidArgument, NotFound,
//! PermissionDenied...; the controller's: Internal, Unavailable). Messages
//! are cut to [`MAX_MESSAGE`] bytes.

use berth_drivers::DriverError;
use tonic::Status;

use crate::auth::authn::AuthnError;
use crate::auth::authz::AuthzError;
use crate::auth::credentials::CredentialError;
use crate::volumes::store::StoreError;
use crate::volumes::VolumeError;

/// The longest error message a reply carries, in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// Cuts a message to [`MAX_MESSAGE`] bytes (at a character boundary, with an
/// ellipsis): a last guard, for drivers that echo input without
/// [`berth_drivers::echo`].
pub fn clip(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl From<VolumeError> for Status {
    fn from(e: VolumeError) -> Self {
        use DriverError as D;
        let message = clip(e.to_string());
        match e {
            VolumeError::InvalidArgument(_) => Status::invalid_argument(message),
            VolumeError::NotFound(_) => Status::not_found(message),
            VolumeError::AlreadyExists(_) => Status::already_exists(message),
            VolumeError::FailedPrecondition(_) => Status::failed_precondition(message),
            VolumeError::Unimplemented(_) => Status::unimplemented(message),
            VolumeError::Store(e) => e.into(),
            VolumeError::Driver { source, .. } => match source {
                D::InvalidArgument(_) | D::InvalidOption { .. } => {
                    Status::invalid_argument(message)
                }
                D::NotFound(_) => Status::not_found(message),
                D::AlreadyExists(_) => Status::already_exists(message),
                D::OutOfRange(_) => Status::out_of_range(message),
                D::FailedPrecondition(_) => Status::failed_precondition(message),
                D::Unsupported { .. } => Status::unimplemented(message),
                D::Unavailable(_) => Status::unavailable(message),
                D::Io { .. } | D::Internal(_) => Status::internal(message),
            },
        }
    }
}

impl From<CredentialError> for Status {
    fn from(e: CredentialError) -> Self {
        let message = clip(e.to_string());
        match e {
            CredentialError::Invalid(_) | CredentialError::Subject(_) => {
                Status::invalid_argument(message)
            }
            CredentialError::NotFound(_) => Status::not_found(message),
            CredentialError::Unavailable(_) => Status::unavailable(message),
            CredentialError::Corrupt(_)
            | CredentialError::Internal(_)
            | CredentialError::Encode(_)
            | CredentialError::Pki(_)
            | CredentialError::Db(_)
            | CredentialError::Registry(_) => Status::internal(message),
        }
    }
}

impl From<AuthnError> for Status {
    fn from(e: AuthnError) -> Self {
        let message = clip(e.to_string());
        match e {
            AuthnError::Unavailable { .. } => Status::unavailable(message),
            AuthnError::BadHeader
            | AuthnError::Refused { .. }
            | AuthnError::Missing
            | AuthnError::Mismatch { .. }
            | AuthnError::Bypassed => Status::unauthenticated(message),
        }
    }
}

impl From<AuthzError> for Status {
    fn from(e: AuthzError) -> Self {
        let message = clip(e.to_string());
        match e {
            AuthzError::NoService | AuthzError::NotAServiceName(_) => {
                Status::invalid_argument(message)
            }
            AuthzError::UnknownService(_) => Status::not_found(message),
            AuthzError::Refused { .. } | AuthzError::NotAdmin { .. } => {
                Status::permission_denied(message)
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let message = clip(e.to_string());
        match e {
            StoreError::Unavailable(_) => Status::unavailable(message),
            StoreError::Contended(_) | StoreError::Fenced(_) => Status::aborted(message),
            StoreError::Open { .. }
            | StoreError::Db(_)
            | StoreError::Encode { .. }
            | StoreError::EncodeJson { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Backend(_)
            | StoreError::Write(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_credential_failures_are_internal() {
        let status = Status::from(CredentialError::Internal("cannot sign the token".into()));
        assert_eq!(status.code(), tonic::Code::Internal);
        let status = Status::from(CredentialError::Invalid("bad CSR".into()));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        let clipped = clip("é".repeat(MAX_MESSAGE));
        assert!(clipped.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(clipped.ends_with('…'));
    }
}
