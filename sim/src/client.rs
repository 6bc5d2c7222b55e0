//! The API clients of the simulation: the operator who defines and starts the up-front
//! VMs, and the clients drawing the workload (writes, and linearizable reads). Every write
//! and read goes into the history and the trace.

use std::sync::Arc;
use std::time::Duration;

use controlplane::model::{Boot, DomainSpec, HaPolicy, Placement, Role};
use controlplane::{Caller, Command, Request, State};
use raft::type_config::NodeId;
use rand::{Rng, SeedableRng};

use crate::caller::View;
use crate::history::Read;
use crate::invariants::rights::INTRUDER;
use crate::shared::Core;

/// An API client running the drawn workload until the chaos ends.
pub async fn client(core: Arc<Core>, index: u64, net_id: NodeId) {
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
        // Some writes come from callers whose rights allow none (`invariants::rights`).
        let (principal, rights) = match rng.gen_range(0..100) {
            0..5 => (format!("{INTRUDER}viewer-{index}"), Caller::User(Role::Viewer)),
            5..8 => (format!("{INTRUDER}host-{index}"), Caller::Host("no-such-host".into())),
            _ => (principal.clone(), Caller::User(Role::Admin)),
        };
        let request = Request { request_id: format!("c{index}-{k}"), principal, caller: rights, command };
        core.write(&mut caller, &request, 15_000).await;
    }
}

/// Define and start the up-front VMs (`vm0`, `vm1`, …; the even ones HA), one after the
/// other; then the stopped domain with a disk that disk snapshots are taken of
/// (`workload::STORE`, its volume in a pool of its own that clients leave alone).
pub async fn setup(core: Arc<Core>, net_id: NodeId) {
    let mut caller = core.caller(net_id, 0);
    let store = crate::workload::store_commands();
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
            // Every other one is HA, so failover has domains to move and others to lose.
            ha: if i % 2 == 0 { HaPolicy::Restart { priority: i as u32 } } else { HaPolicy::None },
            placement: Placement::default(),
        };
        for (k, command) in
            [Command::DefineDomain { name: name.clone(), spec }, Command::StartDomain { name }]
                .into_iter()
                .enumerate()
        {
            let request = Request {
                request_id: format!("setup-{i}-{k}"),
                principal: "operator".into(),
                caller: Caller::User(Role::Admin),
                command,
            };
            core.write(&mut caller, &request, 15_000).await;
        }
    }
    for (k, command) in store.into_iter().enumerate() {
        let request = Request {
            request_id: format!("setup-store-{k}"),
            principal: "operator".into(),
            caller: Caller::User(Role::Admin),
            command,
        };
        core.write(&mut caller, &request, 15_000).await;
    }
}
