//! The controller's TLS identity: its CA and the live server configuration.

pub mod ca;
pub mod live;
