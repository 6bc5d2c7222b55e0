//! Volume files on a host: carry out the operations the cluster asks of this host (make,
//! grow or remove a file in a directory pool) and report how each went. Pure of cluster
//! I/O like [`crate::pass`]: the agent and the simulator both run it; the driver does the
//! file work ([`crate::driver::Driver::volume`]: `dir_pool` on disk, the fake in memory).
//!
//! Each operation is carried out once per id (the event that asked for it); its outcome
//! is kept and sent again until the cluster takes it, so a lost reply repeats the report,
//! not the work. A host that restarts meanwhile finds its own finished work on disk
//! (`dir_pool` takes a file of the right format and size as done), as does a host asked
//! an operation that a fenced host began (`VolumeReassigned`): a host whose lease has
//! passed commits none, and reports none that failed after it passed. Known gap: a hostd
//! that restarts after reporting a failed create, and reads a view that has not applied
//! that report yet, makes the file again, and the cluster refuses its second report: the
//! file is left in the pool (as libvirt leaves an unknown file in a dir pool).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use controlplane::model::{VolumeFormat, VolumeOp, VolumeRef, VolumeState};
use controlplane::{State, VolumeOutcome};
use tracing::{info, warn};

use crate::dir_pool::volume_path;
use crate::driver::Driver;
use crate::snapshots::failure_reason;

/// An operation on a volume's file, asked of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeJob {
    pub volume: VolumeRef,
    /// The event that asked for it.
    pub id: u64,
    pub op: VolumeOp,
    /// The file: `<pool path>/<volume name>`.
    pub path: PathBuf,
    pub format: VolumeFormat,
    pub capacity_mib: u64,
    /// A clone's backing file and its format.
    pub backing: Option<(PathBuf, VolumeFormat)>,
    /// When the host's lease passes (monotonic ms, `vmm_control::lease::monotonic_ms`), if it
    /// holds one: from then on the cluster may fence it and ask another host, so the
    /// operation commits nothing after it (`dir_pool`). Set by [`HostVolumes::run`].
    pub commit_by_ms: Option<u64>,
}

/// This host's volume work, read from the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeWork {
    pub jobs: Vec<VolumeJob>,
    /// Every event up to this one is in the view: an operation asked by one of them and
    /// not among `jobs` is no longer pending, and never will be again.
    pub known_seq: u64,
}

impl VolumeWork {
    /// The operations `state` asks of `host`.
    pub fn from_state(host: &str, state: &State) -> VolumeWork {
        let mut work = VolumeWork { known_seq: state.last_seq(), ..VolumeWork::default() };
        for v in state.volumes().values() {
            let VolumeState::Pending { op, host: asked, id } = &v.state else { continue };
            if asked != host {
                continue;
            }
            // The pool outlives its volumes (it cannot be deleted while it holds one).
            let Some(pool) = state.pool(&v.id.pool) else { continue };
            let backing = v.backing.as_ref().and_then(|b| {
                let base = state.volume(&VolumeRef::new(&v.id.pool, b))?;
                Some((volume_path(&pool.config.path, b), base.format))
            });
            work.jobs.push(VolumeJob {
                volume: v.id.clone(),
                id: *id,
                op: op.clone(),
                path: volume_path(&pool.config.path, &v.id.name),
                format: v.format,
                capacity_mib: v.capacity_mib,
                backing,
                commit_by_ms: None,
            });
        }
        work
    }
}

/// An outcome to report to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeReport {
    pub volume: VolumeRef,
    pub id: u64,
    pub outcome: VolumeOutcome,
}

/// How many finished operations a host remembers, so that a stale view (a replica
/// behind the one read before) does not have it carry one out again.
pub const FINISHED_REMEMBERED_MAX: usize = 4096;

/// What a host remembers between passes.
#[derive(Debug, Clone, Default)]
pub struct HostVolumes {
    /// Outcomes not yet acknowledged by the cluster, by operation id.
    outcomes: BTreeMap<u64, VolumeReport>,
    /// Operations whose outcome the cluster took (or a view past them no longer asks
    /// for), newest kept: never carried out again.
    finished: BTreeSet<u64>,
}

impl HostVolumes {
    pub fn new() -> HostVolumes {
        HostVolumes::default()
    }

    /// Carry out every job not done yet; returns the reports to send. `lease_until_ms`:
    /// when the host's lease passes (monotonic ms), where it holds one. An operation that
    /// fails once it has passed is not reported: the cluster may be asking another host
    /// for it by then, and if it still asks this one, the next pass under a renewed lease
    /// carries it out again.
    pub fn run<D: Driver + ?Sized>(
        &mut self,
        driver: &mut D,
        work: &VolumeWork,
        lease_until_ms: Option<u64>,
    ) -> Vec<VolumeReport> {
        // Outcomes of operations a view that knows them no longer asks for were taken (or
        // the volume went): forget them. An older view (a replica catching up) does not
        // know them yet: keep them, or the operation would be carried out twice.
        let gone: Vec<u64> = self
            .outcomes
            .keys()
            .copied()
            .filter(|id| *id <= work.known_seq && !work.jobs.iter().any(|j| j.id == *id))
            .collect();
        for id in gone {
            self.outcomes.remove(&id);
            self.finish(id);
        }
        let mut out = Vec::with_capacity(work.jobs.len());
        for job in work.jobs.iter().filter(|j| !self.finished.contains(&j.id)) {
            if let Some(done) = self.outcomes.get(&job.id) {
                out.push(done.clone());
                continue;
            }
            let job = VolumeJob { commit_by_ms: lease_until_ms, ..job.clone() };
            let outcome = match driver.volume(&job) {
                Err(e) if lease_until_ms.is_some_and(|by| vmm_control::lease::monotonic_ms() >= by) => {
                    warn!(volume = %job.volume, op = job.op.name(), error = %e, "volume file operation stopped: the lease passed");
                    continue;
                }
                Ok(allocation_mib) => {
                    info!(volume = %job.volume, op = job.op.name(), path = %job.path.display(), allocation_mib, "volume file done");
                    VolumeOutcome::Done { allocation_mib }
                }
                Err(e) => {
                    warn!(volume = %job.volume, op = job.op.name(), error = %e, "volume file operation failed");
                    VolumeOutcome::Failed { reason: failure_reason(&e.to_string()) }
                }
            };
            let report = VolumeReport { volume: job.volume.clone(), id: job.id, outcome };
            self.outcomes.insert(job.id, report.clone());
            out.push(report);
        }
        out
    }

    /// The cluster took `report`, or refused it as stale: do not send it again.
    pub fn reported(&mut self, report: &VolumeReport) {
        if self.outcomes.get(&report.id) == Some(report) {
            self.outcomes.remove(&report.id);
            self.finish(report.id);
        }
    }

    fn finish(&mut self, id: u64) {
        self.finished.insert(id);
        while self.finished.len() > FINISHED_REMEMBERED_MAX {
            self.finished.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeDriver;

    fn work(known_seq: u64, jobs: &[(u64, VolumeOp)]) -> VolumeWork {
        VolumeWork {
            jobs: jobs
                .iter()
                .map(|(id, op)| VolumeJob {
                    volume: VolumeRef::new("p", "v"),
                    id: *id,
                    op: op.clone(),
                    path: "/pool/v".into(),
                    format: VolumeFormat::Raw,
                    capacity_mib: 10,
                    backing: None,
                    commit_by_ms: None,
                })
                .collect(),
            known_seq,
        }
    }

    #[test]
    fn an_operation_is_carried_out_once_and_reported_until_taken() {
        let mut driver = FakeDriver::default();
        let mut host = HostVolumes::new();
        let create = VolumeOp::Create { preallocate: false, import: None };
        driver.fail_next_volume = Some("disk full".into());
        let asked = work(5, &[(5, create.clone())]);
        let first = host.run(&mut driver, &asked, None);
        assert!(
            matches!(&first[0].outcome, VolumeOutcome::Failed { reason } if reason.contains("disk full"))
        );
        assert_eq!(
            host.run(&mut driver, &asked, None),
            first,
            "the outcome is sent again, the work not redone"
        );
        // A view behind the one that asked (a replica catching up) keeps the outcome.
        host.run(&mut driver, &work(4, &[]), None);
        assert_eq!(host.run(&mut driver, &asked, None), first);
        host.reported(&first[0]);
        // A stale view asking again does not make the file the cluster knows failed.
        assert!(host.run(&mut driver, &asked, None).is_empty());
        assert!(driver.volume_store.lock().unwrap().is_empty(), "no file for a failed create");
        // A view past an operation that no longer lists it ends it too.
        let grow = work(9, &[(9, VolumeOp::Resize { capacity_mib: 20 })]);
        assert!(
            matches!(host.run(&mut driver, &grow, None)[0].outcome, VolumeOutcome::Failed { .. }),
            "no file to grow"
        );
        assert!(host.run(&mut driver, &work(12, &[]), None).is_empty());
        assert!(host.run(&mut driver, &grow, None).is_empty(), "forgotten as finished, not redone");
    }

    #[test]
    fn an_operation_that_fails_once_the_lease_passed_is_not_reported_and_is_tried_again() {
        let mut driver = FakeDriver::default();
        let mut host = HostVolumes::new();
        let asked = work(5, &[(5, VolumeOp::Create { preallocate: false, import: None })]);
        driver.fail_next_volume = Some("this host's lease has passed".into());
        assert!(host.run(&mut driver, &asked, Some(0)).is_empty(), "nothing reported");
        let later = host.run(&mut driver, &asked, Some(vmm_control::lease::monotonic_ms() + 60_000));
        assert!(matches!(later[0].outcome, VolumeOutcome::Done { .. }), "{later:?}");
    }
}
