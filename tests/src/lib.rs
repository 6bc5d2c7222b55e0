//! Drover's multi-process tests.
//!
//! Contract: tests here start real Drover processes on loopback (or in network namespaces
//! the tests create and remove themselves), talk to them over real gRPC sockets, kill them
//! with SIGKILL, and boot real guests under KVM. Shared harness code lives in this library;
//! the tests live in `tests/tests/`.
//!
//! Today this crate is empty: there are no processes to start yet (issues #3-#5).
#![forbid(unsafe_code)]
