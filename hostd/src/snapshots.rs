//! Snapshots on a host: take the ones the cluster asks of this host (a full one of its
//! VM of the asked run; a disk one of a stopped domain's disks, once no VM of the domain
//! lives here), report how each went, and remove the files of snapshots the cluster no
//! longer holds. Pure of cluster I/O like [`crate::pass`]: the agent and the simulator
//! both run it.
//!
//! Files live at `<snapshot dir>/<domain>/<name>-<id>.snap` (`driver::snapshot_path`),
//! where `id` is the sequence number of the event that asked for the snapshot. The
//! directory may be shared by every host (as `drover up` runs them), so a host removes a
//! file only on positive knowledge: its view of the state has applied event `id` (so it
//! would hold the snapshot if it still existed) and holds no snapshot of that name with
//! that id. A host whose view lags never removes a file written after its view.

use std::collections::BTreeMap;
use std::path::PathBuf;

use controlplane::model::{ObservedPhase, SnapshotKind, SnapshotState};
use controlplane::{SnapshotOutcome, State};
use tracing::{info, warn};

use crate::driver::{snapshot_path, DiskSpec, Driver};

/// How often (in passes) the snapshot directory is looked through for files to remove.
pub const SWEEP_EVERY_PASSES: u64 = 10;

/// A snapshot the cluster asks of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotJob {
    pub domain: String,
    pub name: String,
    pub id: u64,
    /// The run it is asked of: only a VM of this run may be snapshotted for it.
    pub generation: u64,
    pub kind: SnapshotKind,
    /// A disk snapshot's disks, resolved on this host (empty for a full one: the VM has
    /// its own).
    pub disks: Vec<DiskSpec>,
}

/// This host's snapshot work, read from the state: what to take, and which snapshots
/// exist as of which event (every other file up to that event may go).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotWork {
    pub jobs: Vec<SnapshotJob>,
    /// Every snapshot the view holds that has (or may soon have) a file: taken or
    /// pending, as (domain, name) → id. A failed snapshot's file (written, but its run
    /// ended before the report) may go: its id will never be taken.
    pub held: BTreeMap<(String, String), u64>,
    /// Every event up to this one is in the view.
    pub known_seq: u64,
}

impl SnapshotWork {
    /// The work `state` gives `host`.
    pub fn from_state(host: &str, state: &State) -> SnapshotWork {
        let mut work = SnapshotWork { known_seq: state.last_seq(), ..SnapshotWork::default() };
        for ((domain, name), s) in state.snapshots() {
            if matches!(s.state, SnapshotState::Pending { .. } | SnapshotState::Taken { .. }) {
                work.held.insert((domain.clone(), name.clone()), s.id);
            }
            if let SnapshotState::Pending { host: h, generation } = &s.state {
                if h == host {
                    work.jobs.push(SnapshotJob {
                        domain: domain.clone(),
                        name: name.clone(),
                        id: s.id,
                        generation: *generation,
                        kind: s.kind,
                        disks: match (s.kind, state.domain(domain)) {
                            (SnapshotKind::Disk, Some(d)) => {
                                crate::assignment::disk_specs(state, &d.spec.disks)
                            }
                            _ => Vec::new(),
                        },
                    });
                }
            }
        }
        work
    }
}

/// An outcome to report to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    pub domain: String,
    pub name: String,
    pub id: u64,
    pub generation: u64,
    pub outcome: SnapshotOutcome,
}

/// The longest failure reason reported (the cluster refuses longer ones).
pub const REASON_BYTES_MAX: usize = 512;

/// A driver's error as a reason the cluster takes: printable, on one line, bounded.
pub fn failure_reason(text: &str) -> String {
    let mut out: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.trim().is_empty() {
        out = "the driver gave no reason".into();
    }
    if out.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// What a host remembers between passes.
#[derive(Debug, Clone)]
pub struct HostSnapshots {
    dir: PathBuf,
    /// Outcomes not yet acknowledged by the cluster, by snapshot id (each is taken once).
    outcomes: BTreeMap<u64, SnapshotReport>,
    passes: u64,
}

impl HostSnapshots {
    pub fn new(dir: PathBuf) -> HostSnapshots {
        HostSnapshots { dir, outcomes: BTreeMap::new(), passes: 0 }
    }

    /// Run one pass at `now_ms` (after the reconcile pass); returns the reports to send.
    pub fn run<D: Driver + ?Sized>(
        &mut self,
        driver: &mut D,
        work: &SnapshotWork,
        now_ms: u64,
    ) -> Vec<SnapshotReport> {
        if self.passes.is_multiple_of(SWEEP_EVERY_PASSES) {
            self.remove_unheld(driver, work);
        }
        self.passes += 1;
        let mut out = Vec::new();
        if work.jobs.is_empty() {
            return out;
        }
        let listed = driver.list(now_ms);
        for job in &work.jobs {
            if let Some(done) = self.outcomes.get(&job.id) {
                out.push(done.clone());
                continue;
            }
            let path = snapshot_path(&self.dir, &job.domain, &job.name, job.id);
            let vm = listed.get(&job.domain);
            let taken = match job.kind {
                // Of a stopped domain: a VM of its last run not yet gone from this host
                // may still write its disks, so wait for it.
                SnapshotKind::Disk if vm.is_some_and(|vm| vm.phase.is_live()) => continue,
                SnapshotKind::Disk => driver.disk_snapshot(&job.domain, &job.disks, &path),
                SnapshotKind::Full => match vm {
                    Some(vm)
                        if vm.generation == job.generation
                            && matches!(vm.phase, ObservedPhase::Running | ObservedPhase::Paused) =>
                    {
                        driver.snapshot(&job.domain, &path, now_ms)
                    }
                    // Not (yet) this run's VM, or still starting: wait; a run that ends
                    // fails the snapshot in the cluster.
                    _ => continue,
                },
            };
            let outcome = match taken {
                Ok(taken) => {
                    info!(domain = %job.domain, snapshot = %job.name, kind = ?job.kind, bytes = taken.bytes, paused_ms = taken.duration_ms, "snapshot taken");
                    SnapshotOutcome::Taken { bytes: taken.bytes, duration_ms: taken.duration_ms }
                }
                Err(e) => {
                    warn!(domain = %job.domain, snapshot = %job.name, error = %e, "snapshot failed");
                    SnapshotOutcome::Failed { reason: failure_reason(&e.to_string()) }
                }
            };
            let report = SnapshotReport {
                domain: job.domain.clone(),
                name: job.name.clone(),
                id: job.id,
                generation: job.generation,
                outcome,
            };
            self.outcomes.insert(job.id, report.clone());
            out.push(report);
        }
        out
    }

    /// The cluster took `report`, or refused it as stale: do not send it again.
    pub fn reported(&mut self, report: &SnapshotReport) {
        self.outcomes.retain(|_, r| r != report);
    }

    /// Remove every file the view knows to be of no snapshot (see the module doc).
    fn remove_unheld<D: Driver + ?Sized>(&mut self, driver: &mut D, work: &SnapshotWork) {
        for file in driver.snapshot_files(&self.dir) {
            let held = work.held.get(&(file.domain.clone(), file.name.clone())) == Some(&file.id);
            if held || file.id > work.known_seq || self.outcomes.contains_key(&file.id) {
                continue;
            }
            info!(domain = %file.domain, snapshot = %file.name, id = file.id, "removing the file of a snapshot the cluster no longer holds");
            if let Err(e) = driver.remove_snapshot_file(&file.path) {
                warn!(error = %e, "cannot remove a snapshot file");
            }
        }
    }
}
