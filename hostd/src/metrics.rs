//! What a host says about itself in Prometheus metrics (served with `drover hostd
//! --metrics-listen`, through `raft::metrics::serve`; recorded nowhere until then, so the
//! simulator pays nothing): its VMs by phase, each VM's CPU time and memory, how long a
//! reconcile pass and each driver call take, the reports it sends, and how long its lease
//! has left. Its learner replica adds the `drover_raft_*` series.

use std::collections::BTreeMap;
use std::time::Instant;

use controlplane::model::ObservedPhase;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};

use crate::driver::VmStatus;

pub const DRIVER_CALL_SECONDS: &str = "drover_hostd_driver_call_seconds";
pub const RECONCILE_SECONDS: &str = "drover_hostd_reconcile_seconds";
pub const REPORTS_TOTAL: &str = "drover_hostd_reports_total";
pub const VMS: &str = "drover_hostd_vms";
pub const LEASE_REMAINING_SECONDS: &str = "drover_hostd_lease_remaining_seconds";
/// Cumulative, as a gauge: the `metrics` facade's counters are whole numbers.
pub const VM_CPU_SECONDS: &str = "drover_vm_cpu_seconds";
pub const VM_RESIDENT_BYTES: &str = "drover_vm_resident_bytes";
pub const VM_EXITS_TOTAL: &str = "drover_vm_exits_total";

/// The help text of the host's series (call once an exporter is installed).
pub fn describe() {
    describe_histogram!(DRIVER_CALL_SECONDS, Unit::Seconds, "One call of the hypervisor driver, by call");
    describe_histogram!(RECONCILE_SECONDS, Unit::Seconds, "One reconcile pass (networks, then domains)");
    describe_counter!(REPORTS_TOTAL, Unit::Count, "Reports sent to the cluster, by kind and fate");
    describe_gauge!(VMS, "VMs the driver lists, by phase");
    describe_gauge!(LEASE_REMAINING_SECONDS, "Until the host's lease passes and it fences itself");
    describe_gauge!(VM_CPU_SECONDS, "CPU time a VM's process has used (cumulative)");
    describe_gauge!(VM_RESIDENT_BYTES, "Resident memory of a VM's process");
    describe_counter!(VM_EXITS_TOTAL, Unit::Count, "VM exits the own VMM handled for a VM");
}

/// Run driver call `call` (start, destroy, list, ...), recording how long it took (and,
/// in a traced pass, as a span of its own).
pub fn timed<T>(call: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = raft::traced_span!("driver", otel.name = %format!("driver.{call}"), call).in_scope(f);
    histogram!(DRIVER_CALL_SECONDS, "call" => call).record(started.elapsed().as_secs_f64());
    out
}

/// The VMs the driver lists, counted by phase (every phase, 0 included).
pub fn vms(observed: &BTreeMap<String, VmStatus>) {
    for phase in ObservedPhase::ALL {
        let count = observed.values().filter(|vm| vm.phase == *phase).count();
        gauge!(VMS, "phase" => phase.as_str()).set(count as f64);
    }
}

/// A report's fate: `accepted`, `refused` (definitely not taken) or `unsure`.
pub fn report(kind: &'static str, result: &'static str) {
    counter!(REPORTS_TOTAL, "kind" => kind, "result" => result).increment(1);
}

/// What one VM process uses, as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmUsage {
    /// User and system CPU time of the process (every vCPU thread), seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the process (guest memory it touched, and its own), bytes.
    pub resident_bytes: u64,
    /// VM exits the hypervisor handled, where it counts them (the own VMM).
    pub exits: Option<u64>,
}

/// Record each VM's usage; a VM gone since the last call keeps its last values until the
/// process restarts (Prometheus marks the series stale once it stops being updated).
pub fn vm_usage(usage: &BTreeMap<String, VmUsage>) {
    for (domain, u) in usage {
        gauge!(VM_CPU_SECONDS, "domain" => domain.clone()).set(u.cpu_seconds);
        gauge!(VM_RESIDENT_BYTES, "domain" => domain.clone()).set(u.resident_bytes as f64);
        if let Some(exits) = u.exits {
            counter!(VM_EXITS_TOTAL, "domain" => domain.clone()).absolute(exits);
        }
    }
}

/// How long the host's lease has left (negative once it has passed).
pub fn lease_remaining(ms: i64) {
    gauge!(LEASE_REMAINING_SECONDS).set(ms as f64 / 1000.0);
}
