//! Drover's wire contract.
//!
//! Contract (filled in by the replication issue, #3, and the API issue, #4): the `.proto`
//! files in this crate are the contract for every language; they are compiled in-process
//! (no system `protoc`) and this crate re-exports the generated tonic/prost code. Nothing
//! else lives here.
//!
//! Today this crate is empty: no protos are defined yet.
#![forbid(unsafe_code)]
