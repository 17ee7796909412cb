//! Who is calling, and what they may do.

pub mod authn;
pub mod authz;
pub mod credentials;
pub mod identity;
pub mod subject;

pub use authn::Authenticator;
pub use authz::Authorizer;
pub use identity::{Identity, Role, Scope, Via, AUDIT};
