//! Drover's host agent.
//!
//! Contract: hostd registers its host, reconciles the domains placed on it (desired state
//! in the cluster against what the hypervisor reports) and reports observations back as
//! commands that carry the domain's generation. Hypervisors sit behind one driver trait
//! (`driver`).
//!
//! Today: the driver trait, the deterministic `fake` driver (boot and shutdown delays,
//! injected crashes), the pure `reconciler`, and the `agent` loop that reads the state
//! through the public API and reports through it. Still to come (issue #5): the learner
//! replica on each host, the `kvm` driver (the project's own VMM, the only place `unsafe`
//! is allowed) and the `qemu` driver, re-adoption of VM processes after a restart.
#![forbid(unsafe_code)]

pub mod agent;
pub mod conformance;
pub mod driver;
pub mod fake;
pub mod kvm;
pub mod reconciler;
