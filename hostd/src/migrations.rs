//! Live migrations on a host: the data plane's half of the saga the cluster records.
//! Pure of cluster I/O like [`crate::snapshots`]: it reads this host's view of the state
//! and the driver, acts on the driver, and returns the reports the agent sends.
//!
//! - **Target** (the migration's target host): while the migration is preparing and has
//!   no address, start an incoming VM for the domain's next run (`generation + 1`, the
//!   run the commit will give this host) and report `TargetReady` with its address. An
//!   incoming VM that ends before the commit (its source went away) is reported
//!   `Failed`. After the commit the domain is this host's like any other: the reconciler
//!   resumes the paused VM (which claims the disks the source gave up). After a
//!   rollback the incoming VM is destroyed and forgotten before the pass (a run of the
//!   domain placed here afterwards, by HA or a start, bears the very generation the
//!   incoming VM was started for, and would take it for its own).
//! - **Source**: once the target's address is known, have the driver send the VM there
//!   and report its progress (`Copying`, `Completing`) at most every
//!   [`PROGRESS_EVERY_MS`]; when the target holds the whole VM, report `Switch`, which
//!   commits the switch-over in the log (the one point where ownership moves), and only
//!   then tell the driver to switch (the target runs, the VM here ends) and report `Done`
//!   with the measured downtime. A copy that fails is reported `Failed` (a rollback: the
//!   VM runs on here). A rollback seen in the view (an operator's abort, the target
//!   failed) cancels the copy. The copy's longest pause is the operator's for this
//!   migration, else the host's; a change while it copies goes to the driver at once.
//!
//! Never two running copies: the target runs only after the commit (its source sends
//! `Go` only then, and its host resumes it only once the view holds the commit); the
//! source's VM, paused for the last copy, runs again only through a cancel, which is
//! sent only on a rollback the view holds. A `Switch` whose fate is unknown or refused is
//! followed by `Failed`, which either rolls back or is refused because the migration has
//! committed; the view then says which.
//!
//! The reconciler leaves a domain alone while it migrates (`Assigned::migrating`): the
//! source's VM pauses for the last copy, and resuming it would be a second copy.

use std::collections::BTreeMap;
use std::net::IpAddr;

use controlplane::model::{MigrationId, MigrationPhase, MigrationProgress, MigrationReport, ObservedPhase};
use controlplane::State;
use tracing::{info, warn};

use crate::driver::{ConvergeLimits, Driver, OutgoingPhase, VmSpec};
use crate::snapshots::failure_reason;

/// How often a copy's progress is reported at most (the last copy and the switch-over
/// are reported at once).
pub const PROGRESS_EVERY_MS: u64 = 500;
/// The longest pause a migration may take unless the host is told otherwise.
pub const MAX_DOWNTIME_MS_DEFAULT: u64 = 50;
/// How far a migration may throttle the guest unless the host is told otherwise.
pub const THROTTLE_MAX_PERCENT_DEFAULT: u8 = 99;
/// The limits a host uses unless told otherwise.
pub const LIMITS_DEFAULT: ConvergeLimits = ConvergeLimits {
    max_downtime_ms: MAX_DOWNTIME_MS_DEFAULT,
    throttle_max_percent: THROTTLE_MAX_PERCENT_DEFAULT,
};

/// This host's side of one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// A migration this host takes part in, as its view holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationJob {
    pub id: MigrationId,
    pub domain: String,
    pub side: Side,
    /// The host at the other end: the target for a source, the source for a target
    /// (under TLS the stream accepts only its certificate).
    pub peer: String,
    pub phase: MigrationPhase,
    pub target_address: Option<String>,
    /// The run the incoming VM is for (the target's; the domain's next generation).
    pub incoming: Option<VmSpec>,
    /// Whether the source has reported its final numbers (`Done`).
    pub done_reported: bool,
    /// The operator's longest pause for it (`None`: the host's own limit).
    pub max_downtime_ms: Option<u64>,
}

/// This host's migration work, read from the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationWork {
    pub jobs: Vec<MigrationJob>,
}

impl MigrationWork {
    /// The migrations of `state` that `host` is the source or the target of: each
    /// domain's latest one, even if it has ended (a switch-over or a cancel may still be
    /// due); and, on its source, the domain's latest committed one until its source has
    /// switched over (a migration started right after a commit, before the switch, must
    /// not leave the target's VM waiting for the word for ever: the simulator found one,
    /// seed 2068). Any other earlier one is over for good (acting on it could cancel a
    /// later copy; a later commit moved the run on).
    pub fn from_state(host: &str, state: &State, snapshot_dir: &std::path::Path) -> MigrationWork {
        let latest: BTreeMap<&str, MigrationId> =
            state.migrations().values().map(|m| (m.domain.as_str(), m.id)).collect();
        let committed: BTreeMap<&str, MigrationId> = state
            .migrations()
            .values()
            .filter(|m| m.phase == MigrationPhase::Committed)
            .map(|m| (m.domain.as_str(), m.id))
            .collect();
        // Only while the domain runs elsewhere: then this host's driver holds no run of it
        // but the one that migration moved away, and the switch can touch nothing else.
        let switch_due = |m: &controlplane::model::Migration| {
            committed.get(m.domain.as_str()) == Some(&m.id)
                && m.source == host
                && m.progress.downtime_ms.is_none()
                && state.domain(&m.domain).is_some_and(|d| d.status.host.as_deref() != Some(host))
        };
        let mut jobs = Vec::new();
        for m in state.migrations().values() {
            if latest.get(m.domain.as_str()) != Some(&m.id) && !switch_due(m) {
                continue;
            }
            let side = if m.source == host {
                Side::Source
            } else if m.target == host {
                Side::Target
            } else {
                continue;
            };
            let incoming = match (side, state.domain(&m.domain)) {
                (Side::Target, Some(d)) if !m.phase.is_ended() => {
                    let mut spec = crate::assignment::vm_spec(state, d, snapshot_dir);
                    spec.generation += 1;
                    // The VM comes whole from the source: nothing to restore here.
                    spec.restore_from = None;
                    spec.disks_from = None;
                    Some(spec)
                }
                _ => None,
            };
            jobs.push(MigrationJob {
                id: m.id,
                domain: m.domain.clone(),
                side,
                peer: match side {
                    Side::Source => m.target.clone(),
                    Side::Target => m.source.clone(),
                },
                phase: m.phase,
                target_address: m.target_address.clone(),
                incoming,
                done_reported: m.progress.downtime_ms.is_some(),
                max_downtime_ms: m.max_downtime_ms,
            });
        }
        MigrationWork { jobs }
    }
}

/// A report for the cluster about migration `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationUpdate {
    pub id: MigrationId,
    pub report: MigrationReport,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Accepted,
    /// Refused for good (stale, or the migration moved on).
    Refused,
    /// No definite answer.
    Unsure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Target: the incoming VM listens at this address.
    Prepared,
    /// Source: the copy runs.
    Sending,
    /// Source: the switch-over was reported; waiting for the view to say how it went.
    Switching,
    /// Source: switched over, with these final numbers.
    Switched(MigrationProgress),
    /// Failed here (reported as such); nothing more to do but wait for the rollback.
    Failed,
    /// Nothing more to do.
    Over,
}

#[derive(Debug, Clone)]
struct Local {
    stage: Stage,
    /// The report to send (again) until the cluster answers it.
    pending: Option<MigrationReport>,
    last_progress_ms: Option<u64>,
    /// Source: the limits the driver's copy has (`None`: a copy a previous hostd
    /// started, or limits it refused).
    limits: Option<ConvergeLimits>,
}

impl Local {
    fn new(stage: Stage, pending: Option<MigrationReport>) -> Local {
        Local { stage, pending, last_progress_ms: None, limits: None }
    }
}

/// What a host remembers of its migrations between passes.
#[derive(Debug, Clone)]
pub struct HostMigrations {
    listen_ip: IpAddr,
    limits: ConvergeLimits,
    local: BTreeMap<MigrationId, Local>,
}

impl HostMigrations {
    /// Incoming VMs listen on `listen_ip` (the host's address); outgoing copies end
    /// within the `limits`.
    pub fn new(listen_ip: IpAddr, limits: ConvergeLimits) -> HostMigrations {
        HostMigrations { listen_ip, limits, local: BTreeMap::new() }
    }

    /// Whether a copy or a switch-over is under way here (the agent then looks often).
    pub fn busy(&self) -> bool {
        self.local
            .values()
            .any(|l| matches!(l.stage, Stage::Sending | Stage::Switching) || l.pending.is_some())
    }

    /// Run one pass at `now_ms`; returns the reports to send.
    pub fn run<D: Driver + ?Sized>(
        &mut self,
        driver: &mut D,
        work: &MigrationWork,
        now_ms: u64,
    ) -> Vec<MigrationUpdate> {
        self.local.retain(|id, _| work.jobs.iter().any(|j| j.id == *id));
        let mut out = Vec::new();
        if work.jobs.is_empty() {
            return out;
        }
        let listed = driver.list(now_ms);
        for job in &work.jobs {
            let local = self.local.get(&job.id).cloned();
            let next = match job.side {
                Side::Target => self.target(driver, job, local, listed.get(&job.domain), now_ms),
                Side::Source => self.source(driver, job, local, now_ms),
            };
            if let Some(next) = next {
                if let Some(report) = &next.pending {
                    out.push(MigrationUpdate { id: job.id, report: report.clone() });
                }
                self.local.insert(job.id, next);
            }
        }
        out
    }

    /// The cluster answered `update`.
    pub fn reported(&mut self, update: &MigrationUpdate, sent: Sent) {
        let Some(local) = self.local.get_mut(&update.id) else { return };
        if local.pending.as_ref() != Some(&update.report) {
            return;
        }
        match (sent, &update.report) {
            (Sent::Unsure, _) => {}
            (Sent::Accepted, _) => local.pending = None,
            // A switch-over refused, or of unknown fate and then refused: roll back, or
            // learn from the refusal that it has committed.
            (Sent::Refused, MigrationReport::Switch(_)) => {
                local.pending =
                    Some(MigrationReport::Failed { reason: "the switch-over was refused".into() });
            }
            (Sent::Refused, _) => local.pending = None,
        }
    }

    fn target<D: Driver + ?Sized>(
        &self,
        driver: &mut D,
        job: &MigrationJob,
        local: Option<Local>,
        vm: Option<&crate::driver::VmStatus>,
        now_ms: u64,
    ) -> Option<Local> {
        if job.phase == MigrationPhase::RolledBack && local.as_ref().is_some_and(|l| l.stage != Stage::Over) {
            // The incoming VM this hostd started goes now, before the pass: a later run
            // of the domain placed here bears the generation it was started for, and the
            // reconciler would take the paused incoming VM for that run.
            if vm.is_some() {
                info!(domain = %job.domain, migration = job.id, "rolled back: removing the incoming VM");
                if let Err(e) = driver.destroy(&job.domain, now_ms) {
                    warn!(domain = %job.domain, error = %e, "cannot destroy the incoming VM");
                    return local; // tried again next pass
                }
                driver.remove(&job.domain);
            }
            return Some(Local::new(Stage::Over, None));
        }
        if job.phase.is_ended() {
            return None; // committed: the domain's run here now
        }
        let failed = |reason: String| {
            Some(Local::new(Stage::Failed, Some(MigrationReport::Failed { reason: failure_reason(&reason) })))
        };
        match local {
            Some(l) if l.stage == Stage::Failed || l.pending.is_some() => Some(l),
            Some(l) => match vm {
                // The incoming VM gave up (its source went away) or is gone.
                Some(vm) if matches!(vm.phase, ObservedPhase::Crashed | ObservedPhase::Stopped) => failed(
                    format!("the incoming VM ended: {}", vm.reason.as_deref().unwrap_or("no reason given")),
                ),
                None => failed("the incoming VM is gone".into()),
                Some(_) => Some(l),
            },
            None if job.phase == MigrationPhase::Preparing && job.target_address.is_none() => {
                let spec = job.incoming.as_ref()?;
                match driver.prepare_incoming(spec, self.listen_ip, &job.peer) {
                    Ok(address) => {
                        info!(domain = %job.domain, migration = job.id, %address, "incoming VM listening");
                        Some(Local::new(Stage::Prepared, Some(MigrationReport::TargetReady { address })))
                    }
                    Err(e) => {
                        warn!(domain = %job.domain, migration = job.id, error = %e, "cannot prepare the incoming VM");
                        failed(e.to_string())
                    }
                }
            }
            // Prepared before this hostd started: keep watching the VM.
            None => Some(Local::new(Stage::Prepared, None)),
        }
    }

    fn source<D: Driver + ?Sized>(
        &self,
        driver: &mut D,
        job: &MigrationJob,
        local: Option<Local>,
        now_ms: u64,
    ) -> Option<Local> {
        let domain = job.domain.as_str();
        let mut l = local.unwrap_or(Local::new(Stage::Over, None));
        let fresh = l.stage == Stage::Over && l.pending.is_none();
        match job.phase {
            MigrationPhase::Committed => {
                match &l.stage {
                    Stage::Switched(_) | Stage::Failed => {}
                    _ if job.done_reported => l.stage = Stage::Switched(MigrationProgress::default()),
                    // Sending, switching, or a hostd that restarted meanwhile: the VM
                    // waits paused for the word (a VM already gone has nothing to do).
                    _ => match driver.migrate_switch(domain) {
                        Ok(progress) => {
                            info!(domain, migration = job.id, downtime_ms = ?progress.downtime_ms, bytes = progress.bytes_sent, rounds = progress.rounds, "switched over");
                            l.stage = Stage::Switched(progress);
                            l.pending = progress.downtime_ms.map(|_| MigrationReport::Done(progress));
                        }
                        Err(e) => {
                            warn!(domain, migration = job.id, error = %e, "switch-over: the source VM did not switch; the target runs it on the commit alone");
                            l.stage = Stage::Failed;
                            l.pending = None;
                        }
                    },
                }
                if job.done_reported {
                    l.pending = None;
                }
                Some(l)
            }
            MigrationPhase::RolledBack => {
                if matches!(l.stage, Stage::Sending | Stage::Switching | Stage::Failed) || fresh {
                    if let Ok(o) = driver.outgoing(domain, now_ms) {
                        if matches!(
                            o.phase,
                            OutgoingPhase::Copying
                                | OutgoingPhase::Completing
                                | OutgoingPhase::AwaitingSwitch
                        ) {
                            info!(domain, migration = job.id, "rolled back: cancelling the copy");
                            if let Err(e) = driver.migrate_cancel(domain) {
                                warn!(domain, error = %e, "cannot cancel the copy");
                            }
                        }
                    }
                }
                Some(Local::new(Stage::Over, None))
            }
            _ => {
                let Some(address) = job.target_address.as_deref() else { return Some(l) };
                let limits = ConvergeLimits {
                    max_downtime_ms: job.max_downtime_ms.unwrap_or(self.limits.max_downtime_ms),
                    ..self.limits
                };
                if matches!(l.stage, Stage::Switching | Stage::Failed) {
                    // A switch-over or failure reported (or still to be answered): the
                    // view says what became of it.
                    return Some(l);
                }
                if fresh {
                    // A copy a previous hostd started to this target goes on; one to
                    // another target is an earlier migration's, rolled back while no
                    // hostd here looked (the view holds only the latest): cancelled.
                    // Otherwise start one.
                    let under_way = driver.outgoing(domain, now_ms).ok().filter(|o| {
                        matches!(
                            o.phase,
                            OutgoingPhase::Copying
                                | OutgoingPhase::Completing
                                | OutgoingPhase::AwaitingSwitch
                        )
                    });
                    let running = under_way.as_ref().is_some_and(|o| o.address == address);
                    if let Some(stale) = under_way.filter(|_| !running) {
                        info!(domain, migration = job.id, stale = %stale.address, "cancelling an earlier migration's copy");
                        if let Err(e) = driver.migrate_cancel(domain) {
                            warn!(domain, error = %e, "cannot cancel an earlier migration's copy");
                        }
                        // This one starts once that copy has ended (a later pass).
                        return Some(l);
                    }
                    if !running {
                        if let Err(e) = driver.migrate_out(domain, address, &job.peer, limits, now_ms) {
                            warn!(domain, migration = job.id, error = %e, "cannot start the copy");
                            l.stage = Stage::Failed;
                            l.pending =
                                Some(MigrationReport::Failed { reason: failure_reason(&e.to_string()) });
                            return Some(l);
                        }
                        info!(domain, migration = job.id, %address, max_downtime_ms = limits.max_downtime_ms, "copying to the target");
                        l.limits = Some(limits);
                    }
                    l.stage = Stage::Sending;
                } else if l.stage == Stage::Sending
                    && l.limits != Some(limits)
                    && job.phase < MigrationPhase::Completing
                {
                    // The operator changed the longest pause (or a previous hostd
                    // started the copy): the rounds to come end within the new one.
                    match driver.migrate_limits(domain, limits) {
                        Ok(()) => {
                            info!(
                                domain,
                                migration = job.id,
                                max_downtime_ms = limits.max_downtime_ms,
                                "copy limits changed"
                            );
                            l.limits = Some(limits);
                        }
                        Err(e) => {
                            warn!(domain, migration = job.id, error = %e, "cannot change the copy's limits")
                        }
                    }
                }
                let o = match driver.outgoing(domain, now_ms) {
                    Ok(o) => o,
                    Err(e) => {
                        l.stage = Stage::Failed;
                        l.pending = Some(MigrationReport::Failed { reason: failure_reason(&e.to_string()) });
                        return Some(l);
                    }
                };
                let due = l.last_progress_ms.is_none_or(|at| now_ms >= at + PROGRESS_EVERY_MS);
                match o.phase {
                    OutgoingPhase::Copying if due => {
                        l.pending = Some(MigrationReport::Copying(o.progress));
                        l.last_progress_ms = Some(now_ms);
                    }
                    OutgoingPhase::Completing if job.phase < MigrationPhase::Completing => {
                        l.pending = Some(MigrationReport::Completing(o.progress));
                    }
                    OutgoingPhase::AwaitingSwitch if job.phase < MigrationPhase::Completing => {
                        l.pending = Some(MigrationReport::Completing(o.progress));
                    }
                    OutgoingPhase::AwaitingSwitch => {
                        l.stage = Stage::Switching;
                        l.pending = Some(MigrationReport::Switch(o.progress));
                    }
                    OutgoingPhase::Failed | OutgoingPhase::Cancelled => {
                        let reason = o.reason.unwrap_or_else(|| "the copy was cancelled".into());
                        warn!(domain, migration = job.id, %reason, "the copy failed");
                        l.stage = Stage::Failed;
                        l.pending = Some(MigrationReport::Failed { reason: failure_reason(&reason) });
                    }
                    _ => {}
                }
                Some(l)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::VmSpec;
    use crate::fake::{FakeDriver, MIGRATION_DOWNTIME_MS};

    fn spec(generation: u64) -> VmSpec {
        VmSpec {
            domain: "web".into(),
            generation,
            vcpus: 1,
            memory_mib: 64,
            kernel: Some("/k".into()),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            restore_from: None,
            disks_from: None,
        }
    }

    fn job(side: Side, phase: MigrationPhase, address: Option<&str>) -> MigrationWork {
        MigrationWork {
            jobs: vec![MigrationJob {
                id: 9,
                domain: "web".into(),
                side,
                peer: match side {
                    Side::Source => "h2".into(),
                    Side::Target => "h1".into(),
                },
                phase,
                target_address: address.map(str::to_owned),
                incoming: (side == Side::Target).then(|| spec(2)),
                done_reported: false,
                max_downtime_ms: None,
            }],
        }
    }

    fn ip() -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }

    /// Run a pass and have the cluster accept whatever it reports.
    fn pass(h: &mut HostMigrations, d: &mut FakeDriver, w: &MigrationWork, now: u64) -> Vec<MigrationReport> {
        let updates = h.run(d, w, now);
        for u in &updates {
            h.reported(u, Sent::Accepted);
        }
        updates.into_iter().map(|u| u.report).collect()
    }

    fn running_source() -> FakeDriver {
        let mut d = FakeDriver::new(0, 0);
        d.start(&spec(1), 0).unwrap();
        assert_eq!(d.list(1)["web"].phase, ObservedPhase::Running);
        d
    }

    #[test]
    fn the_saga_runs_from_the_target_address_to_the_switch_over_and_the_downtime() {
        let mut target = FakeDriver::new(0, 0);
        let mut t = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let reports = pass(&mut t, &mut target, &job(Side::Target, MigrationPhase::Preparing, None), 0);
        let [MigrationReport::TargetReady { address }] = reports.as_slice() else { panic!("{reports:?}") };
        assert_eq!(
            target.list(0)["web"],
            crate::driver::VmStatus { generation: 2, phase: ObservedPhase::Paused, reason: None }
        );
        // Reported once; nothing more while the view catches up.
        assert!(pass(&mut t, &mut target, &job(Side::Target, MigrationPhase::Preparing, None), 1).is_empty());

        let mut source = running_source();
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let w = job(Side::Source, MigrationPhase::Preparing, Some(address));
        let reports = pass(&mut s, &mut source, &w, 10);
        assert!(matches!(reports.as_slice(), [MigrationReport::Copying(_)]), "{reports:?}");
        assert!(s.busy());
        // Progress at most every PROGRESS_EVERY_MS.
        let w = job(Side::Source, MigrationPhase::Transferring, Some(address));
        assert!(pass(&mut s, &mut source, &w, 20).is_empty());
        // 64 MiB at 1 MiB/ms: the target holds it all at 74; the VM here is paused.
        let reports = pass(&mut s, &mut source, &w, 80);
        assert!(matches!(reports.as_slice(), [MigrationReport::Completing(_)]), "{reports:?}");
        assert_eq!(source.list(80)["web"].phase, ObservedPhase::Paused);
        let w = job(Side::Source, MigrationPhase::Completing, Some(address));
        let reports = pass(&mut s, &mut source, &w, 81);
        let [MigrationReport::Switch(p)] = reports.as_slice() else { panic!("{reports:?}") };
        assert_eq!(p.bytes_sent, 64 << 20);
        // Nothing happens here until the view holds the commit.
        assert!(pass(&mut s, &mut source, &w, 82).is_empty());
        assert_eq!(source.list(82)["web"].phase, ObservedPhase::Paused);
        let w = job(Side::Source, MigrationPhase::Committed, Some(address));
        let reports = pass(&mut s, &mut source, &w, 83);
        let [MigrationReport::Done(p)] = reports.as_slice() else { panic!("{reports:?}") };
        assert_eq!(p.downtime_ms, Some(MIGRATION_DOWNTIME_MS));
        assert_eq!(source.list(83)["web"].phase, ObservedPhase::Stopped);
        assert!(pass(&mut s, &mut source, &w, 84).is_empty());
        assert!(!s.busy());
    }

    /// The operator's longest pause reaches the copy: at its start, and again when it
    /// changes while the copy runs (the fake's pause fits the limit it was last given).
    #[test]
    fn the_operators_longest_pause_reaches_the_copy_and_its_changes_too() {
        let address = Some("127.0.0.1:4002");
        let with = |phase, ms: Option<u64>| {
            let mut w = job(Side::Source, phase, address);
            w.jobs[0].max_downtime_ms = ms;
            w
        };
        let mut source = running_source();
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        pass(&mut s, &mut source, &with(MigrationPhase::Transferring, Some(8)), 10);
        assert_eq!(s.local[&9].limits.map(|l| l.max_downtime_ms), Some(8));
        pass(&mut s, &mut source, &with(MigrationPhase::Transferring, Some(3)), 20);
        assert_eq!(s.local[&9].limits, Some(ConvergeLimits { max_downtime_ms: 3, ..LIMITS_DEFAULT }));
        pass(&mut s, &mut source, &with(MigrationPhase::Transferring, Some(3)), 80);
        pass(&mut s, &mut source, &with(MigrationPhase::Completing, Some(3)), 81);
        let reports = pass(&mut s, &mut source, &with(MigrationPhase::Committed, Some(3)), 83);
        let [MigrationReport::Done(p)] = reports.as_slice() else { panic!("{reports:?}") };
        assert_eq!(p.downtime_ms, Some(3), "the copy ended within the changed limit");
    }

    /// A hostd that starts while its driver still copies for an earlier migration
    /// (rolled back while no hostd looked; its view holds only the latest) cancels that
    /// copy and then sends to the new target: never a switch-over to the old one. (The
    /// simulator found this: seed 270.)
    #[test]
    fn a_copy_to_an_earlier_migrations_target_is_cancelled_before_the_new_one() {
        let mut source = running_source();
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        pass(
            &mut s,
            &mut source,
            &job(Side::Source, MigrationPhase::Transferring, Some("127.0.0.1:4001")),
            10,
        );
        assert_eq!(source.outgoing("web", 11).unwrap().address, "127.0.0.1:4001");
        // A new hostd; the view's latest migration is another one, to another target.
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let mut w = job(Side::Source, MigrationPhase::Preparing, Some("127.0.0.1:4002"));
        w.jobs[0].id = 12;
        assert!(pass(&mut s, &mut source, &w, 20).is_empty());
        assert_eq!(source.outgoing("web", 20).unwrap().phase, OutgoingPhase::Cancelled);
        let reports = pass(&mut s, &mut source, &w, 30);
        assert!(matches!(reports.as_slice(), [MigrationReport::Copying(_)]), "{reports:?}");
        let o = source.outgoing("web", 31).unwrap();
        assert_eq!((o.address.as_str(), o.phase), ("127.0.0.1:4002", OutgoingPhase::Copying));
    }

    #[test]
    fn a_rollback_cancels_the_copy_and_the_guest_runs_on_here() {
        let mut source = running_source();
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let w = job(Side::Source, MigrationPhase::Transferring, Some("127.0.0.1:4002"));
        pass(&mut s, &mut source, &w, 10);
        pass(&mut s, &mut source, &w, 80); // the target holds it all: paused here
        assert_eq!(source.list(80)["web"].phase, ObservedPhase::Paused);
        let w = job(Side::Source, MigrationPhase::RolledBack, Some("127.0.0.1:4002"));
        assert!(pass(&mut s, &mut source, &w, 90).is_empty());
        assert_eq!(source.list(90)["web"].phase, ObservedPhase::Running);
        assert_eq!(source.outgoing("web", 90).unwrap().phase, OutgoingPhase::Cancelled);
    }

    #[test]
    fn a_refused_switch_over_is_followed_by_a_failure_report() {
        let mut source = running_source();
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let w = job(Side::Source, MigrationPhase::Completing, Some("127.0.0.1:4002"));
        pass(&mut s, &mut source, &w, 10);
        let updates = s.run(&mut source, &w, 80);
        assert!(matches!(updates[0].report, MigrationReport::Switch(_)), "{updates:?}");
        s.reported(&updates[0], Sent::Refused);
        let updates = s.run(&mut source, &w, 81);
        assert!(
            matches!(&updates[0].report, MigrationReport::Failed { reason } if reason.contains("refused"))
        );
        // The VM stays paused until the view says what became of the migration.
        assert_eq!(source.list(81)["web"].phase, ObservedPhase::Paused);
    }

    /// A target that refuses its source at the handshake (TLS: not the host it was told
    /// to expect): the source reports the copy failed and the guest runs on here; the
    /// incoming VM ends, which its host reports too.
    #[test]
    fn a_target_that_refuses_its_source_fails_the_copy_and_the_guest_runs_on_here() {
        let mut target = FakeDriver::new(0, 0);
        target.refuse_next_incoming = Some("not the host it expects".into());
        let mut t = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let reports = pass(&mut t, &mut target, &job(Side::Target, MigrationPhase::Preparing, None), 0);
        let [MigrationReport::TargetReady { address }] = reports.as_slice() else { panic!("{reports:?}") };
        let address = address.clone();
        let mut source = running_source();
        source.migration_links = target.migration_links.clone();
        let mut s = HostMigrations::new(ip(), LIMITS_DEFAULT);
        let w = job(Side::Source, MigrationPhase::Transferring, Some(&address));
        let mut reports = pass(&mut s, &mut source, &w, 10);
        reports.extend(pass(&mut s, &mut source, &w, 20));
        assert!(
            matches!(&reports[..], [MigrationReport::Failed { reason }] if reason.contains("refused the stream: not the host")),
            "{reports:?}"
        );
        assert_eq!(source.list(20)["web"].phase, ObservedPhase::Running);
        let w = job(Side::Target, MigrationPhase::Transferring, Some(&address));
        let reports = pass(&mut t, &mut target, &w, 21);
        assert!(matches!(&reports[..], [MigrationReport::Failed { .. }]), "{reports:?}");
    }

    #[test]
    fn an_incoming_vm_that_ends_before_the_commit_fails_the_migration() {
        let mut target = FakeDriver::new(0, 0);
        let mut t = HostMigrations::new(ip(), LIMITS_DEFAULT);
        pass(&mut t, &mut target, &job(Side::Target, MigrationPhase::Preparing, None), 0);
        target.crash("web", "incoming migration: the source went away");
        let w = job(Side::Target, MigrationPhase::Transferring, Some("127.0.0.1:4002"));
        let reports = pass(&mut t, &mut target, &w, 1);
        assert!(
            matches!(&reports[..], [MigrationReport::Failed { reason }] if reason.contains("source went away")),
            "{reports:?}"
        );
        // Reported once.
        assert!(pass(&mut t, &mut target, &w, 2).is_empty());
    }

    #[test]
    fn a_rolled_back_migrations_incoming_vm_is_gone_before_the_pass() {
        let mut target = FakeDriver::new(0, 0);
        let mut t = HostMigrations::new(ip(), LIMITS_DEFAULT);
        pass(&mut t, &mut target, &job(Side::Target, MigrationPhase::Preparing, None), 0);
        assert!(target.is_incoming("web"));
        // Rolled back; HA may place the domain here next, at the incoming VM's generation.
        let w = job(Side::Target, MigrationPhase::RolledBack, Some("127.0.0.1:4000"));
        assert!(pass(&mut t, &mut target, &w, 1).is_empty());
        assert!(!target.list(1).contains_key("web"), "{:?}", target.list(1));
        // A fresh run of that generation starts and runs.
        target.start(&spec(2), 2).unwrap();
        assert!(pass(&mut t, &mut target, &w, 3).is_empty());
        assert_eq!(target.list(3)["web"].phase, ObservedPhase::Running);
    }

    /// Two ready hosts and domain `web` running on one of them: the state, that host and
    /// the run's generation.
    fn web_running() -> (controlplane::fixtures::Harness, String, u64) {
        use controlplane::fixtures::{kernel_spec, Harness};
        use controlplane::Command;
        let mut h = Harness::new();
        h.ready_host("h1", 8, 8192);
        h.ready_host("h2", 8, 8192);
        h.exec(Command::DefineDomain { name: "web".into(), spec: kernel_spec(1, 64) }).unwrap();
        h.exec(Command::StartDomain { name: "web".into() }).unwrap();
        let d = h.state.domain("web").unwrap();
        let (host, generation) = (d.status.host.clone().unwrap(), d.status.generation);
        let phase = ObservedPhase::Running;
        let observed = Command::ReportObservation {
            domain: "web".into(),
            host: host.clone(),
            generation,
            phase,
            reason: None,
        };
        h.exec(observed).unwrap();
        (h, host, generation)
    }

    #[test]
    fn only_a_domains_latest_migration_is_work() {
        use controlplane::Command;
        let (mut h, host, generation) = web_running();
        let dir = std::path::Path::new("/snapshots");
        let mut ids = Vec::new();
        for _ in 0..2 {
            h.exec(Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: None })
                .unwrap();
            ids.push(h.state.domain("web").unwrap().migration.unwrap());
            if ids.len() == 1 {
                h.exec(Command::AbortMigration { id: ids[0], reason: "again".into() }).unwrap();
            }
        }
        // The rolled-back first one is no work: a cancel for it would cancel the second.
        let work = MigrationWork::from_state(&host, &h.state, dir);
        assert_eq!(
            work.jobs.iter().map(|j| (j.id, j.side)).collect::<Vec<_>>(),
            vec![(ids[1], Side::Source)]
        );
        let target = if host == "h1" { "h2" } else { "h1" };
        let work = MigrationWork::from_state(target, &h.state, dir);
        let incoming = work.jobs[0].incoming.as_ref().unwrap();
        assert_eq!((work.jobs[0].side, incoming.generation), (Side::Target, generation + 1));
    }

    /// A migration back started right after a commit, before the source switched over:
    /// the source still switches (else the target's VM waits for its word for ever and
    /// the new target finds the old VM in its way; the simulator found it, seed 2068).
    #[test]
    fn a_committed_migration_stays_the_sources_work_until_it_has_switched_over() {
        use controlplane::Command;
        use MigrationReport::*;
        let (mut h, source, _) = web_running();
        let target = if source == "h1" { "h2".to_owned() } else { "h1".to_owned() };
        let to = |host: &str| Command::StartMigration {
            domain: "web".into(),
            target: Some(host.to_owned()),
            max_downtime_ms: None,
        };
        let report = |id, host: &str, report| Command::ReportMigration { id, host: host.into(), report };
        h.exec(to(&target)).unwrap();
        let first = h.state.domain("web").unwrap().migration.unwrap();
        h.exec(report(first, &target, TargetReady { address: "127.0.0.1:7100".into() })).unwrap();
        let last = MigrationProgress { bytes_sent: 64 << 20, rounds: 2, ..Default::default() };
        h.exec(report(first, &source, Completing(last))).unwrap();
        h.exec(report(first, &source, Switch(last))).unwrap();
        assert_eq!(h.state.migration(first).unwrap().phase, MigrationPhase::Committed);
        h.exec(to(&source)).unwrap();
        let second = h.state.domain("web").unwrap().migration.unwrap();
        let dir = std::path::Path::new("/snapshots");
        let jobs = |state: &State, host: &str| {
            MigrationWork::from_state(host, state, dir)
                .jobs
                .iter()
                .map(|j| (j.id, j.side))
                .collect::<Vec<_>>()
        };
        assert_eq!(jobs(&h.state, &source), vec![(first, Side::Source), (second, Side::Target)]);
        assert_eq!(jobs(&h.state, &target), vec![(second, Side::Source)]);
        // Switched over (its final numbers said): the first is over.
        let done = MigrationProgress { downtime_ms: Some(3), ..last };
        h.exec(report(first, &source, Done(done))).unwrap();
        assert_eq!(jobs(&h.state, &source), vec![(second, Side::Target)]);
    }
}
