//! The controller's TLS identity: its CA, the names and files certificates
//! are made of, and the live server configuration.

pub mod ca;
pub mod crypto;
pub mod expiry;
pub mod live;
pub mod names;
pub mod x509;
