//! Who is calling, and what they may do.

pub mod authn;
pub mod authz;
pub mod credentials;
#[cfg(feature = "etcd")]
pub mod etcd_registry;
pub mod identity;
pub mod registry;
pub mod subject;

pub use authn::Authenticator;
pub use authz::Authorizer;
pub use identity::{Identity, Role, Scope, Via, AUDIT};
