//! `berth-client`: the thin Berth client library behind the `berth` command.
//!
//! It depends on the generated API (`berth-proto`) and nothing of the
//! controller or the drivers.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`connect`] | connection set-up, in one place |
//! | [`size`] | human sizes (`10GiB`) |
//! | [`output`] | tables and JSON for people and scripts |

pub mod connect;
pub mod output;
pub mod size;

pub use berth_proto::v1 as pb;
