//! A host in the simulation: its fake hypervisor (which, like real VM processes,
//! outlives hostd) and its hostd task, which runs the real host logic — registration, the
//! reconcile pass of `hostd::pass` over `hostd::assignment`, observations reported as
//! commands carrying the run's generation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::model::{HostState, ObservedPhase, Resources};
use controlplane::{Command, RejectionCode, Request, State};
use hostd::assignment::assigned_from_state;
use hostd::driver::Driver;
use hostd::fake::FakeDriver;
use hostd::pass::HostPass;
use hostd::reconciler::Report;
use raft::type_config::NodeId;

use crate::caller::View;
use crate::history::{Op, Outcome, Read};
use crate::invariants::single_run::is_live;
use crate::world::Core;

/// How often hostd reconciles.
pub const TICK_MS: u64 = 200;
/// Graceful shutdown before a destroy.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 2_000;
/// The fake hypervisor's boot and shutdown times.
pub const BOOT_MS: u64 = 150;
pub const GUEST_SHUTDOWN_MS: u64 = 300;
/// How long one write of hostd may take before it gives up and tries again next pass.
const WRITE_DEADLINE_MS: u64 = 5_000;

/// A host: its name, its network id, its hypervisor.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub name: String,
    pub net_id: NodeId,
    pub driver: Arc<Mutex<FakeDriver>>,
}

impl HostInfo {
    pub fn new(index: u64, net_id: NodeId) -> HostInfo {
        HostInfo { name: format!("h{index}"), net_id, driver: Arc::new(Mutex::new(new_driver())) }
    }
}

/// A fresh hypervisor with no VMs.
pub fn new_driver() -> FakeDriver {
    let mut d = FakeDriver::new(BOOT_MS, GUEST_SHUTDOWN_MS);
    d.broken_kernels.push(crate::workload::BROKEN_KERNEL.into());
    d
}

fn observed(phase: Report) -> ObservedPhase {
    match phase {
        Report::Starting => ObservedPhase::Starting,
        Report::Running => ObservedPhase::Running,
        Report::Paused => ObservedPhase::Paused,
        Report::ShuttingDown => ObservedPhase::ShuttingDown,
        Report::Stopped => ObservedPhase::Stopped,
        Report::Crashed => ObservedPhase::Crashed,
        Report::Failed => ObservedPhase::Failed,
    }
}

/// One hostd, from its start (boot number `boot`) until it is killed.
pub async fn hostd(core: Arc<Core>, index: usize, boot: u64) {
    let host = core.hosts[index].clone();
    let principal = format!("host/{}", host.name);
    let mut caller = core.caller(host.net_id, boot);
    let mut sent = 0u64;
    let mut write = |command: Command| {
        sent += 1;
        Request { request_id: format!("{}-{boot}-{sent}", host.name), principal: principal.clone(), command }
    };
    let register = write(Command::RegisterHost {
        name: host.name.clone(),
        address: format!("10.0.0.{}:7001", index + 1),
        capacity: Resources { vcpus: 32, memory_mib: 64 << 10 },
        labels: Default::default(),
    });
    let ready = write(Command::SetHostState { name: host.name.clone(), state: HostState::Ready });
    for request in [register, ready] {
        loop {
            let outcome = core.write(&mut caller, &request, WRITE_DEADLINE_MS).await;
            if outcome != Outcome::Unknown {
                break;
            }
        }
    }
    let mut pass = HostPass::new(SHUTDOWN_TIMEOUT_MS);
    loop {
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
        let assigned = if core.cfg.host_replicas {
            // The host's own learner replica, read locally (stale-ok: generations keep
            // a lagging host safe), as production hostd does.
            let Some(replica) = core.net.live(host.net_id) else { continue };
            let state = replica.shared.state.read().expect("state lock");
            assigned_from_state(&host.name, &state)
        } else {
            let invoke_ms = core.clocks.elapsed_ms();
            // As production hostd lists the domains, not the whole state.
            let name = host.name.clone();
            let view: View<_> = Arc::new(move |s: &State| (s.last_seq(), assigned_from_state(&name, s)));
            let Some((last_seq, assigned)) = caller.read(view).await else { continue };
            core.history.lock().expect("history lock").reads.push(Read {
                reader: principal.clone(),
                invoke_ms,
                complete_ms: core.clocks.elapsed_ms(),
                last_seq,
            });
            assigned
        };
        let now = core.clocks.monotonic_ms();
        let (observations, started) = {
            let mut driver = host.driver.lock().expect("driver lock");
            let live = |d: &mut hostd::fake::FakeDriver| -> std::collections::BTreeSet<String> {
                d.list(now).into_iter().filter(|(_, vm)| is_live(vm.phase)).map(|(name, _)| name).collect()
            };
            let before = live(&mut driver);
            let observations = pass.run(&mut *driver, &assigned, now);
            let started: Vec<String> = live(&mut driver).difference(&before).cloned().collect();
            (observations, started)
        };
        // A VM only comes to life when a pass starts it: check those against every host.
        if !started.is_empty() {
            core.check_single_run(&started);
        }
        for o in observations {
            let request = write(Command::ReportObservation {
                domain: o.domain.clone(),
                host: host.name.clone(),
                generation: o.generation,
                phase: observed(o.phase),
                reason: o.reason.clone(),
            });
            match core.write(&mut caller, &request, WRITE_DEADLINE_MS).await {
                Outcome::Acked(_) => pass.reported(&o),
                // The run moved on (stale generation): nothing to report any more.
                Outcome::Rejected { rejection, .. }
                    if rejection.code() == RejectionCode::FailedPrecondition =>
                {
                    pass.reported(&o)
                }
                _ => pass.unsure(&o),
            }
        }
    }
}

/// An API client running the drawn workload until the chaos ends.
pub async fn client(core: Arc<Core>, index: u64, net_id: NodeId) {
    use rand::{Rng, SeedableRng};
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(core.cfg.seed.wrapping_mul(0x9e37_79b9).wrapping_add(index));
    let mut caller = core.caller(net_id, 0);
    let principal = format!("client-{index}");
    let mut k = 0u64;
    while core.clocks.elapsed_ms() < core.cfg.chaos_ms {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..400))).await;
        if rng.gen_range(0..100) < 20 {
            // A linearizable read (`drover domain list`), checked by `linearizable`.
            let invoke_ms = core.clocks.elapsed_ms();
            let view: View<u64> = Arc::new(State::last_seq);
            if let Some(last_seq) = caller.read(view).await {
                let complete_ms = core.clocks.elapsed_ms();
                core.trace.record(complete_ms, format!("{principal} read: seq {last_seq}"));
                core.history.lock().expect("history lock").reads.push(Read {
                    reader: principal.clone(),
                    invoke_ms,
                    complete_ms,
                    last_seq,
                });
            }
            continue;
        }
        k += 1;
        let command = crate::workload::draw(&mut rng, &core.cfg);
        let request = Request { request_id: format!("c{index}-{k}"), principal: principal.clone(), command };
        core.write(&mut caller, &request, 15_000).await;
    }
}

/// Define and start the up-front VMs (`vm0`, `vm1`, …), one after the other.
pub async fn setup(core: Arc<Core>, net_id: NodeId) {
    use controlplane::model::{Boot, DomainSpec, HaPolicy, Placement};
    let mut caller = core.caller(net_id, 0);
    for i in 0..core.cfg.vms {
        let name = format!("vm{i}");
        let spec = DomainSpec {
            vcpus: 1,
            memory_mib: 256,
            boot: Boot::Kernel {
                kernel: crate::workload::KERNEL.into(),
                initrd: None,
                cmdline: String::new(),
            },
            disks: Vec::new(),
            nics: Vec::new(),
            ha: HaPolicy::None,
            placement: Placement::default(),
        };
        for (k, command) in
            [Command::DefineDomain { name: name.clone(), spec }, Command::StartDomain { name }]
                .into_iter()
                .enumerate()
        {
            let request =
                Request { request_id: format!("setup-{i}-{k}"), principal: "operator".into(), command };
            core.write(&mut caller, &request, 15_000).await;
        }
    }
}

/// Record a write in the history and the trace.
pub(crate) fn record_op(core: &Core, request: &Request, invoke_ms: u64, outcome: &Outcome) {
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
