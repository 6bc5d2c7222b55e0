//! Drover's deterministic simulator.
//!
//! Contract (filled in by the simulator issue, #6): a world of control replicas and hosts
//! running the real core, openraft and hostd reconcilers on a simulated network, disk,
//! clock and fake hypervisor, all driven from one seed; faults and workload drawn from the
//! seed; one invariant per file; any failing seed replays bit-identically.
//!
//! Today this crate is empty: the simulator does not exist yet. The property tests in
//! `controlplane/tests` exercise the pure core until it does.
#![forbid(unsafe_code)]
