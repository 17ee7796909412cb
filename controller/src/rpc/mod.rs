//! The gRPC face of the controller.

pub mod admin;
pub mod pipeline;
pub mod server;
pub mod volumes;
