//! The gRPC face of the controller.

pub mod admin;
pub mod call;
pub mod limits;
pub mod pipeline;
pub mod progress;
pub mod server;
pub mod snapshots;
pub mod status;
pub mod volumes;
