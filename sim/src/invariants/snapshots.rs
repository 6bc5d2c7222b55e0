//! Protects: **snapshots are what hosts hold, and a restore is of the snapshot the
//! cluster named.** Once the cluster has settled: every snapshot the state says is taken
//! has its file on the shared storage, and every file there is of a snapshot the state
//! holds with that id, taken or still asked of a host lost for good (a deleted snapshot's
//! file is gone, and so is a failed one's); every snapshot asked of a live host has been
//! taken or has failed. At every restore: the file the hypervisor restored holds a
//! snapshot of the domain its path names (a revert's own domain, a clone's source), and a
//! VM whose run reverts to a disk snapshot boots only after its images were written back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use controlplane::model::SnapshotState;
use controlplane::State;
use hostd::driver::{parse_snapshot_stem, snapshot_path};
use hostd::fake::FakeSnapshot;

use crate::config::SNAPSHOT_DIR;

/// `files`: the shared snapshot storage; `lost`: hosts gone for good (what is asked of
/// them stays pending). `Ok` once settled, else what is still wrong.
pub fn check_settled(
    state: &State,
    files: &BTreeMap<PathBuf, FakeSnapshot>,
    lost: &BTreeSet<String>,
) -> Result<(), String> {
    let dir = Path::new(SNAPSHOT_DIR);
    for ((domain, name), s) in state.snapshots() {
        match &s.state {
            SnapshotState::Taken { .. } => {
                let path = snapshot_path(dir, domain, name, s.id);
                if !files.contains_key(&path) {
                    return Err(format!(
                        "snapshot {domain}/{name} is taken but its file {} is missing",
                        path.display()
                    ));
                }
            }
            SnapshotState::Pending { host, .. } if !lost.contains(host) => {
                return Err(format!("snapshot {domain}/{name} is still pending on host {host}"));
            }
            _ => {}
        }
    }
    for path in files.keys() {
        let parsed = path.strip_prefix(dir).ok().and_then(|rest| {
            Some((rest.parent()?.to_str()?, parse_snapshot_stem(rest.file_stem()?.to_str()?)?))
        });
        let Some((domain, (name, id))) = parsed else {
            return Err(format!(
                "a snapshot file outside the snapshot directory's layout: {}",
                path.display()
            ));
        };
        // Pending here means asked of a lost host, which may have written it.
        let held = state.snapshot(domain, &name).is_some_and(|s| {
            s.id == id && matches!(s.state, SnapshotState::Taken { .. } | SnapshotState::Pending { .. })
        });
        if !held {
            return Err(format!(
                "file {} is of no taken snapshot (deleted or failed, and left behind)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Every VM `started` in this pass whose run reverts to a disk snapshot (`disks_from` in
/// its assignment) had that snapshot's images written back first: the driver's
/// `restores` (not yet drained this pass) hold it.
pub fn check_disk_restores(
    assigned: &BTreeMap<String, hostd::reconciler::Assigned>,
    started: &[String],
    restores: &[(String, String, PathBuf)],
) -> Vec<String> {
    started
        .iter()
        .filter_map(|domain| Some((domain, assigned.get(domain)?.spec.disks_from.as_ref()?)))
        .filter(|(domain, file)| !restores.iter().any(|(d, _, p)| d == *domain && p == Path::new(file)))
        .map(|(domain, file)| {
            format!("domain {domain} booted on disks not restored from its disk snapshot {file}")
        })
        .collect()
}

/// Every restore a hypervisor made: (domain started, domain the snapshot was taken of,
/// the file named by the cluster).
pub fn check_restores(restores: &[(String, String, PathBuf)]) -> Vec<String> {
    restores
        .iter()
        .filter(|(_, of, path)| {
            let named =
                path.strip_prefix(SNAPSHOT_DIR).ok().and_then(|p| p.parent()).and_then(|p| p.to_str());
            named != Some(of.as_str())
        })
        .map(|(started, of, path)| {
            format!("domain {started} was started from a snapshot of domain {of} at {}", path.display())
        })
        .collect()
}
