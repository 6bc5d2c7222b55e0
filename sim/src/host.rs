//! A host in the simulation: its fake hypervisor (which, like real VM processes,
//! outlives hostd) and its hostd task, which runs the real host logic — registration, the
//! reconcile pass of `hostd::pass` over `hostd::assignment`, observations reported as
//! commands carrying the run's generation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::ha::HaSettings;
use controlplane::model::{HostState, Resources, VmLimits, VolumeOp};
use controlplane::{Caller, Command, RejectionCode, Request, SnapshotOutcome, State};
use hostd::assignment::{share_from_state, HostShare};
use hostd::fake::{FakeDriver, MigrationLinks, SnapshotStore, VolumeStore};
use hostd::lease::HostLease;
use hostd::migrations::{HostMigrations, Sent, LIMITS_DEFAULT};
use hostd::networks::HostNetworks;
use hostd::pass::HostPass;
use hostd::snapshots::HostSnapshots;
use hostd::volumes::HostVolumes;
use raft::leases::Refusal as LeaseRefusal;
use raft::state_machine::Shared;
use raft::type_config::{LogId, NodeId};

use crate::caller::View;
use crate::config::SNAPSHOT_DIR;
use crate::history::{Outcome, Read};
use crate::invariants::single_run::is_live;
use crate::network::Live;
use crate::shared::Core;
use crate::shared::HostInfo;

/// How often hostd reconciles.
pub const TICK_MS: u64 = 200;
/// Graceful shutdown before a destroy.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 2_000;
/// The fake hypervisor's boot and shutdown times.
pub const BOOT_MS: u64 = 150;
pub const GUEST_SHUTDOWN_MS: u64 = 300;
/// How long one write of hostd may take before it gives up and tries again next pass.
const WRITE_DEADLINE_MS: u64 = 5_000;
/// How long a heartbeat waits for its answer (production: 500 ms too).
const HEARTBEAT_TTL_MS: u64 = 500;

/// Host `index`'s hypervisor: every other host runs only small VMs.
pub fn host_info(
    index: u64,
    net_id: NodeId,
    snapshots: &SnapshotStore,
    volumes: &VolumeStore,
    links: &MigrationLinks,
) -> HostInfo {
    let limits = index.is_multiple_of(2).then_some(SMALL_HOST_LIMITS);
    let driver = Arc::new(Mutex::new(new_driver(snapshots, volumes, links, limits)));
    HostInfo { name: format!("h{index}"), net_id, driver }
}

/// What the drivers of every other host run (the rest run anything): the scheduler must
/// keep larger domains off them.
pub const SMALL_HOST_LIMITS: VmLimits = VmLimits { vcpus: 2, memory_mib: 1024, disks: 4, nics: 2 };

/// A fresh hypervisor with no VMs, on the cluster's shared snapshot storage and pool and
/// its network for migration streams, running VMs up to `limits`.
pub fn new_driver(
    snapshots: &SnapshotStore,
    volumes: &VolumeStore,
    links: &MigrationLinks,
    limits: Option<VmLimits>,
) -> FakeDriver {
    let mut d = FakeDriver::new(BOOT_MS, GUEST_SHUTDOWN_MS);
    d.migration_links = links.clone();
    d.vm_limits = limits;
    d.broken_kernels.push(crate::workload::BROKEN_KERNEL.into());
    d.snapshot_store = snapshots.clone();
    d.volume_store = volumes.clone();
    d
}

/// A host's share of the state: its domains and snapshot work.
type Share = Arc<HostShare>;

/// Write `request` until the cluster answers it (acknowledged or refused); the last seq
/// of the log when it was acknowledged (0 if refused).
async fn write_until_answered(core: &Core, caller: &mut crate::caller::Caller, request: &Request) -> u64 {
    loop {
        match core.write(caller, request, WRITE_DEADLINE_MS).await {
            Outcome::Unknown => {}
            Outcome::Acked(c) => return c.last_seq,
            Outcome::Rejected { .. } => return 0,
        }
    }
}

/// Renew host `index`'s lease for ever, as production hostd does: each round tries the
/// replicas in turn until one (the leader) renews it or says the host is gone.
async fn heartbeat(core: Arc<Core>, index: usize, lease: Arc<HostLease>) {
    let host = core.hosts[index].clone();
    let settings = HaSettings::default();
    let obeys_lease = core.cfg.host_bug != crate::config::HostBug::NoSelfFence;
    let ttl = Duration::from_millis(HEARTBEAT_TTL_MS);
    let mut turn = 0usize;
    loop {
        let sent = core.clocks.monotonic_ms();
        for _ in 0..core.replica_ids.len() {
            let to = core.replica_ids[turn % core.replica_ids.len()];
            let name = host.name.clone();
            let answer = core
                .net
                .call_once(host.net_id, to, ttl, move |live: Live| {
                    let name = name.clone();
                    async move {
                        live.leases.renew_from(live.as_lease_replica(to), &name, settings.lease_ms).await
                    }
                })
                .await;
            match answer {
                Ok(Ok(())) => {
                    lease.renewed(sent, settings.fence_ms);
                    if obeys_lease {
                        // The VM processes watch the new deadline.
                        let now = core.clocks.monotonic_ms();
                        host.driver.lock().expect("driver lock").renew_lease(lease.deadline_ms(), now);
                    }
                    break;
                }
                Ok(Err(LeaseRefusal::Unknown | LeaseRefusal::Gone(_))) => {
                    lease.set_fenced();
                    break;
                }
                Ok(Err(LeaseRefusal::NotLeader | LeaseRefusal::NotConfirmed | LeaseRefusal::Fencing))
                | Err(_) => turn += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(settings.heartbeat_interval_ms)).await;
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
        Request {
            request_id: format!("{}-{boot}-{sent}", host.name),
            principal: principal.clone(),
            caller: Caller::Host(host.name.clone()),
            command,
        }
    };
    let registration = |write: &mut dyn FnMut(Command) -> Request| {
        let register = write(Command::RegisterHost {
            name: host.name.clone(),
            address: format!("10.0.0.{}:7001", index + 1),
            capacity: Resources { vcpus: 32, memory_mib: 64 << 10 },
            labels: Default::default(),
            vm_limits: host.driver.lock().expect("driver lock").vm_limits,
        });
        [register, write(Command::SetHostState { name: host.name.clone(), state: HostState::Ready })]
    };
    // The log as far as this host's (re-)registration: a replica that has not applied that
    // much may still hand it runs the cluster gave to others while it was fenced.
    let mut registered_seq = 0;
    for request in registration(&mut write) {
        registered_seq = registered_seq.max(write_until_answered(&core, &mut caller, &request).await);
    }
    let obeys_lease = core.cfg.host_bug != crate::config::HostBug::NoSelfFence;
    // The lease its VM processes watch outlives hostd (as the lease file does).
    let deadline = host.driver.lock().expect("driver lock").lease_deadline_ms.unwrap_or(0);
    let lease = Arc::new(HostLease::held_until(deadline));
    raft::runtime::spawn(heartbeat(core.clone(), index, lease.clone()));
    // Nothing runs here before the lease is held; fenced before it first held it, the
    // host joins afresh (as production hostd does).
    while !lease.held() {
        if lease.fenced() {
            for request in registration(&mut write) {
                registered_seq = registered_seq.max(write_until_answered(&core, &mut caller, &request).await);
            }
            lease.clear_fenced();
        }
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
    }
    let mut pass = HostPass::new(SHUTDOWN_TIMEOUT_MS);
    let mut snapshots = HostSnapshots::new(SNAPSHOT_DIR.into());
    let mut volumes = HostVolumes::new();
    let mut networks = HostNetworks::new();
    let listen_ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, index as u8 + 1));
    let mut migrations = HostMigrations::new(listen_ip, LIMITS_DEFAULT);
    // This host's share as last read from its replica, and where that replica stood: a
    // replica's state changes only with its applied log id, so while that stays put
    // (and the replica is the same one) the share is the same.
    let mut last_read: Option<(Arc<Shared>, Option<LogId>, Share)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
        let assigned = if core.cfg.host_replicas {
            // The host's own learner replica, read locally, as production hostd does.
            // Stale is fine (generations keep a lagging host's reports harmless) once it
            // holds the host's own registration: before that it may still hand the host
            // runs that moved elsewhere while the host was fenced.
            let Some(replica) = core.net.live(host.net_id) else { continue };
            if replica.shared.state.read().expect("state lock").last_seq() < registered_seq {
                continue;
            }
            let applied = replica.shared.last_applied();
            match &last_read {
                Some((shared, at, assigned)) if Arc::ptr_eq(shared, &replica.shared) && *at == applied => {
                    assigned.clone()
                }
                _ => {
                    let state = replica.shared.state.read().expect("state lock");
                    let assigned = Arc::new(share_from_state(&host.name, &state, Path::new(SNAPSHOT_DIR)));
                    drop(state);
                    last_read = Some((replica.shared.clone(), applied, assigned.clone()));
                    assigned
                }
            }
        } else {
            let invoke_ms = core.clocks.elapsed_ms();
            // As production hostd reads it: what the API's lists hold, assembled by
            // `State::from_listing`, not the whole state.
            let name = host.name.clone();
            let view: View<_> = Arc::new(move |s: &State| {
                let listed = State::from_listing(
                    s.hosts().values().cloned(),
                    s.domains().values().cloned(),
                    s.networks().values().cloned(),
                    s.pools().values().cloned(),
                    s.volumes().values().cloned(),
                    s.snapshots().values().cloned(),
                    s.migrations().values().cloned(),
                );
                (s.last_seq(), share_from_state(&name, &listed, Path::new(SNAPSHOT_DIR)))
            });
            let Some((last_seq, assigned)) = caller.read(view).await else { continue };
            let assigned = Arc::new(assigned);
            core.history.lock().expect("history lock").reads.push(Read {
                reader: principal.clone(),
                invoke_ms,
                complete_ms: core.clocks.elapsed_ms(),
                last_seq,
            });
            assigned
        };
        let now = core.clocks.monotonic_ms();
        if lease.fenced() || (obeys_lease && lease.expired(now)) {
            if obeys_lease {
                let fenced = hostd::agent::fence(&mut *host.driver.lock().expect("driver lock"), now);
                // What it reported of those runs says nothing of runs to come (a domain
                // defined again starts its generations from 1 again).
                pass = HostPass::new(SHUTDOWN_TIMEOUT_MS);
                if fenced > 0 {
                    core.trace.record(
                        core.clocks.elapsed_ms(),
                        format!("{} fenced itself: {fenced} VMs", host.name),
                    );
                }
            }
            if lease.fenced() {
                for request in registration(&mut write) {
                    registered_seq =
                        registered_seq.max(write_until_answered(&core, &mut caller, &request).await);
                }
                lease.clear_fenced();
            }
            continue;
        }
        let (observations, started, snapshot_reports, volume_reports, migration_updates) = {
            let mut driver = host.driver.lock().expect("driver lock");
            let live = |d: &mut hostd::fake::FakeDriver| d.names_where(now, is_live);
            let before = live(&mut driver);
            // Migrations, networks and volume files first, as production hostd does.
            let migration_updates = if core.cfg.host_bug == crate::config::HostBug::MigrationLimitIgnored {
                // The planted bug: the operator's longest pause never reaches the copy.
                let mut ignored = assigned.migrations.clone();
                ignored.jobs.iter_mut().for_each(|j| j.max_downtime_ms = None);
                migrations.run(&mut *driver, &ignored, now)
            } else {
                migrations.run(&mut *driver, &assigned.migrations, now)
            };
            if core.cfg.host_bug == crate::config::HostBug::IncomingRunsEarly {
                // The planted bug: the incoming VM runs before its source said go.
                for job in &assigned.migrations.jobs {
                    if job.side == hostd::migrations::Side::Target && driver.is_incoming(&job.domain) {
                        driver.run_incoming_now(&job.domain, now);
                    }
                }
            }
            networks.run(&mut *driver, &assigned.networks);
            for detail in crate::invariants::leases::check(&host.name, &driver.served_networks) {
                core.violation("leases", detail);
            }
            let volume_reports = volumes.run(&mut *driver, &assigned.volumes, None);
            if core.cfg.host_bug == crate::config::HostBug::VolumeWithoutFile {
                // The planted bug: what was made never reaches the pool, yet is reported.
                let mut store = driver.volume_store.lock().expect("volume store lock");
                for job in assigned.volumes.jobs.iter().filter(|j| matches!(j.op, VolumeOp::Create { .. })) {
                    store.remove(&job.path);
                }
            }
            let observations = if core.cfg.host_bug == crate::config::HostBug::DiskRevertSkipped {
                // The planted bug: a revert to a disk snapshot boots on the disks as they are.
                let mut skipped = assigned.domains.clone();
                skipped.values_mut().for_each(|a| a.spec.disks_from = None);
                pass.run(&mut *driver, &skipped, now)
            } else {
                pass.run(&mut *driver, &assigned.domains, now)
            };
            let started: Vec<String> = live(&mut driver).difference(&before).cloned().collect();
            for detail in crate::invariants::snapshots::check_disk_restores(
                &assigned.domains,
                &started,
                &driver.restores,
            ) {
                core.violation("snapshots", detail);
            }
            let snapshot_reports = snapshots.run(&mut *driver, &assigned.snapshots, now);
            if core.cfg.host_bug == crate::config::HostBug::SnapshotWithoutFile {
                // The planted bug: what was taken never reaches storage, yet is reported.
                for r in
                    snapshot_reports.iter().filter(|r| matches!(r.outcome, SnapshotOutcome::Taken { .. }))
                {
                    let path =
                        hostd::driver::snapshot_path(Path::new(SNAPSHOT_DIR), &r.domain, &r.name, r.id);
                    driver.snapshot_store.lock().expect("snapshot store lock").remove(&path);
                }
            }
            for detail in crate::invariants::snapshots::check_restores(&std::mem::take(&mut driver.restores))
            {
                core.violation("snapshots", detail);
            }
            for (domain, path) in std::mem::take(&mut driver.missing_disks) {
                core.violation(
                    "volumes",
                    format!("domain {domain} was started without its disk file {path}"),
                );
            }
            // The cluster placed here only what this host's driver runs.
            for o in &observations {
                if let Some(reason) = o.reason.as_deref().filter(|r| r.contains(hostd::fake::OVER_LIMITS)) {
                    core.violation(
                        "vm_limits",
                        format!(
                            "domain {} was placed on host {}, whose driver refused it: {reason}",
                            o.domain, host.name
                        ),
                    );
                }
            }
            (observations, started, snapshot_reports, volume_reports, migration_updates)
        };
        for u in migration_updates {
            let request = write(Command::ReportMigration {
                id: u.id,
                host: host.name.clone(),
                report: u.report.clone(),
            });
            let sent = match core.write(&mut caller, &request, WRITE_DEADLINE_MS).await {
                Outcome::Acked(_) => Sent::Accepted,
                Outcome::Rejected { rejection, .. }
                    if matches!(
                        rejection.code(),
                        RejectionCode::FailedPrecondition
                            | RejectionCode::NotFound
                            | RejectionCode::InvalidArgument
                    ) =>
                {
                    Sent::Refused
                }
                _ => Sent::Unsure,
            };
            migrations.reported(&u, sent);
        }
        for r in volume_reports {
            let request = write(Command::ReportVolume {
                volume: r.volume.clone(),
                host: host.name.clone(),
                id: r.id,
                outcome: r.outcome.clone(),
            });
            match core.write(&mut caller, &request, WRITE_DEADLINE_MS).await {
                Outcome::Acked(_) => volumes.reported(&r),
                // Deleted meanwhile, or no longer pending under this id.
                Outcome::Rejected { rejection, .. }
                    if matches!(
                        rejection.code(),
                        RejectionCode::FailedPrecondition | RejectionCode::NotFound
                    ) =>
                {
                    volumes.reported(&r)
                }
                _ => {}
            }
        }
        // A VM only comes to life when a pass starts it: check those against every host.
        if !started.is_empty() {
            core.check_single_run(&started);
        }
        for o in observations {
            let request = write(Command::ReportObservation {
                domain: o.domain.clone(),
                host: host.name.clone(),
                generation: o.generation,
                phase: o.phase,
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
        for r in snapshot_reports {
            let request = write(Command::ReportSnapshot {
                domain: r.domain.clone(),
                name: r.name.clone(),
                id: r.id,
                host: host.name.clone(),
                generation: r.generation,
                outcome: r.outcome.clone(),
            });
            match core.write(&mut caller, &request, WRITE_DEADLINE_MS).await {
                Outcome::Acked(_) => snapshots.reported(&r),
                // Deleted meanwhile, or no longer pending for this run.
                Outcome::Rejected { rejection, .. }
                    if matches!(
                        rejection.code(),
                        RejectionCode::FailedPrecondition | RejectionCode::NotFound
                    ) =>
                {
                    snapshots.reported(&r)
                }
                _ => {}
            }
        }
    }
}
