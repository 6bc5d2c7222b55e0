//! Drover's host agent.
//!
//! Contract (filled in by the hostd issue, #5): hostd follows the replicated log as a raft
//! learner, reconciles the domains assigned to its host (desired state in the replica
//! against what the hypervisor reports) and reports observations back as commands that
//! carry the domain's generation. Hypervisors sit behind one driver trait with three
//! drivers: `kvm` (the project's own micro-VMM, the only place `unsafe` is allowed),
//! `qemu` (over QMP) and `fake` (deterministic, for the simulator and unit tests).
//!
//! Today this crate is empty: no agent or driver exists yet.
#![forbid(unsafe_code)]
