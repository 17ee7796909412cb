//! `berth-proto`: the generated Berth gRPC API (package `berth.v1`).
//!
//! The `.proto` sources live in `proto/berth/v1/`; the workspace's root
//! `build.rs` compiles them with protox (no system `protoc`). Both the
//! controller (`berthd`) and the client (`berth`) depend on this crate, and
//! nothing else: it holds no logic.

/// Version 1 of the API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.v1");

    /// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("berth_descriptor");
}

/// The Container Storage Interface, version 1 (package `csi.v1`), from
/// `proto/csi/v1/csi.proto`: served by `berth plugin csi` and used by its
/// tests as a client.
pub mod csi {
    /// CSI v1 messages, servers and clients.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("csi.v1");
    }
}
