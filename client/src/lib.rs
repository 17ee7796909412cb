//! `berth-client`: the thin Berth client library behind the `berth` command.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`config`] | the client configuration file |
//! | [`csi`] | `berth plugin csi`: a CSI v1 plugin (Identity, Controller, Node) backed by berthd |
//! | [`connect`] | connection set-up and trust decisions, in one place |
//! | [`deadline`] | the bound on every call (`--timeout`) |
//! | [`docker`] | Docker's volume plugin API over a unix socket |
//! | [`instance`] | this machine as an instance (the default instance ID) |
//! | [`node`] | the node side: mount a volume where a workload can use it, and unmount it |
//! | [`output`] | tables and JSON for people and scripts |
//! | [`pinning`] | fingerprints, the sled trust store, the pin verifier |
//! | `pin_cache` | the trust store's pins in a small file beside it, so reads skip opening sled |
//! | [`prompt`] | the first-contact question and the changed-fingerprint banner |
//! | [`report`] | errors as one line for a person, gRPC codes in words |
//! | [`session`] | target, trust decision and credentials: an open session with the controller |
//! | [`size`] | human sizes (`10GiB`) |
//!
//! It depends on the generated API (`berth-proto`) and nothing of the
//! controller or the drivers. The `berth` binary (`main.rs`, `cli.rs`,
//! `commands/`: one file per command group) is built on it; so are the
//! tests and the benchmark, which open sessions through [`session`].

#![warn(missing_docs)]

pub mod config;
pub mod connect;
pub mod csi;
pub mod deadline;
pub mod docker;
pub mod instance;
pub mod node;
pub mod output;
mod pin_cache;
pub mod pinning;
pub mod prompt;
pub mod report;
pub mod session;
pub mod size;

/// The generated gRPC API, package `berth.v1`.
pub use berth_proto::v1 as pb;
