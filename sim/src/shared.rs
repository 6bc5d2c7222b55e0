//! What every task of the world shares ([`Core`]): the configuration, the network, the
//! clocks, the trace, the history, the violations found and the hosts' hypervisors. The
//! world, the hosts and the clients all hold it; it depends on none of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use controlplane::Request;
use hostd::driver::{Driver, VmStatus};
use hostd::fake::FakeDriver;
use raft::type_config::NodeId;

use crate::caller::Caller;
use crate::clock::Clocks;
use crate::config::SimConfig;
use crate::history::{History, Op, Outcome};
use crate::invariants::{self, Violation};
use crate::network::Net;
use crate::trace::Trace;

/// A host: its name, its network id, its hypervisor.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub name: String,
    pub net_id: NodeId,
    pub driver: Arc<Mutex<FakeDriver>>,
}

/// What every task of the world shares.
#[derive(Debug)]
pub struct Core {
    pub cfg: SimConfig,
    pub net: Net,
    pub clocks: Clocks,
    pub trace: Trace,
    pub history: Mutex<History>,
    pub violations: Mutex<Vec<Violation>>,
    pub hosts: Vec<HostInfo>,
    pub replica_ids: Vec<NodeId>,
    /// The hosts' shared snapshot storage (survives every host).
    pub snapshots: hostd::fake::SnapshotStore,
    /// The hosts' shared pool (survives every host).
    pub volumes: hostd::fake::VolumeStore,
    /// The hosts' migration streams.
    pub migration_links: hostd::fake::MigrationLinks,
}

impl Core {
    /// A caller for node `me`, its randomness drawn from the seed.
    pub fn caller(&self, me: NodeId, boot: u64) -> Caller {
        let seed = self.cfg.seed ^ (me << 32) ^ boot.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Caller::new(self.net.clone(), self.clocks.clone(), me, self.replica_ids.clone(), seed)
    }

    /// Send a write and record it.
    pub async fn write(&self, caller: &mut Caller, request: &Request, deadline_ms: u64) -> Outcome {
        let invoke_ms = self.clocks.elapsed_ms();
        let outcome = caller.submit(request, invoke_ms + deadline_ms).await;
        record_op(self, request, invoke_ms, &outcome);
        outcome
    }

    pub fn violation(&self, invariant: &'static str, detail: String) {
        let at_ms = self.clocks.elapsed_ms();
        self.trace.record(at_ms, format!("VIOLATION {invariant}: {detail}"));
        self.violations.lock().expect("violations lock").push(Violation { invariant, at_ms, detail });
    }

    /// Every host's VMs, each as of its own clock.
    pub fn vms(&self) -> BTreeMap<String, BTreeMap<String, VmStatus>> {
        self.hosts
            .iter()
            .map(|h| {
                let now = self.clocks.monotonic_ms();
                (h.name.clone(), h.driver.lock().expect("driver lock").list(now))
            })
            .collect()
    }

    /// The single-run invariant for `domains`, which a hypervisor has just started.
    pub fn check_single_run(&self, domains: &[String]) {
        let now = self.clocks.monotonic_ms();
        let mut vms: BTreeMap<String, BTreeMap<String, VmStatus>> = BTreeMap::new();
        for h in &self.hosts {
            let mut driver = h.driver.lock().expect("driver lock");
            // An incoming VM runs nothing until its source's go: not a run.
            let mut mine: BTreeMap<String, VmStatus> = BTreeMap::new();
            for d in domains {
                if let Some(status) = driver.status(d, now).filter(|_| !driver.is_incoming(d)) {
                    mine.insert(d.clone(), status);
                }
            }
            vms.insert(h.name.clone(), mine);
        }
        for detail in invariants::single_run::check(&vms) {
            self.violation("single_run", detail);
        }
    }
}

/// Record a write in the history and the trace.
fn record_op(core: &Core, request: &Request, invoke_ms: u64, outcome: &Outcome) {
    let now = core.clocks.elapsed_ms();
    let answer = match outcome {
        Outcome::Acked(c) => format!("ok {}..{}", c.first_seq, c.last_seq),
        Outcome::Rejected { rejection, attempts } => {
            format!("refused {:?} (attempt {attempts})", rejection.code())
        }
        Outcome::Unknown => "unknown".into(),
    };
    core.trace.record(
        now,
        format!("{} {} {}: {answer}", request.principal, request.request_id, request.command.name()),
    );
    core.history.lock().expect("history lock").ops.push(Op {
        principal: request.principal.clone(),
        request_id: request.request_id.clone(),
        command: request.command.name(),
        invoke_ms,
        complete_ms: now,
        outcome: outcome.clone(),
    });
}
