//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler (protox), so
//! building Berth never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let protos = ["proto/berth/v1/volumes.proto", "proto/berth/v1/admin.proto"];
    let fds = protox::compile(protos, ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set feeds gRPC server reflection.
    std::fs::write(
        out_dir.join("berth_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    // Protobuf maps as BTreeMap: the controller's records keep them in
    // BTreeMaps, so a record becomes its wire form by moving them (a
    // HashMap was rebuilt, hashed, for every volume of every listing), and
    // the client prints them in key order without sorting.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .compile_fds(fds)?;

    // CSI v1 (package `csi.v1`) for `berth plugin csi`; a descriptor set of
    // its own, so berthd's reflection does not list CSI services. Its maps
    // stay HashMaps: the CSI front and its tests build them as such, and no
    // hot path converts them.
    let csi = protox::compile(["proto/csi/v1/csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(csi)?;
    Ok(())
}
