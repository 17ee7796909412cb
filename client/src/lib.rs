//! `berth-client`: the thin Berth client library behind the `berth` command.
//!
//! It depends on the generated API (`berth-proto`) and nothing of the
//! controller or the drivers.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`config`] | the client configuration file |
//! | [`csi`] | `berth plugin csi`: a CSI v1 plugin (Identity, Controller, Node) backed by berthd |
//! | [`connect`] | connection set-up and trust decisions, in one place |
//! | [`deadline`] | the bound on every call (`--timeout`) |
//! | [`pinning`] | fingerprints, the sled trust store, the pin verifier |
//! | [`prompt`] | the first-contact question and the changed-fingerprint banner |
//! | [`session`] | target, trust decision and credentials: an open session with the controller |
//! | [`size`] | human sizes (`10GiB`) |
//! | [`node`] | the node side: mount a volume where a workload can use it, and unmount it |
//! | [`docker`] | Docker's volume plugin API over a unix socket |
//! | [`output`] | tables and JSON for people and scripts |

pub mod config;
pub mod connect;
pub mod csi;
pub mod deadline;
pub mod docker;
pub mod node;
pub mod output;
pub mod pinning;
pub mod prompt;
pub mod session;
pub mod size;

pub use berth_proto::v1 as pb;
