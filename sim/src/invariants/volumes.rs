//! Protects: **a volume is its file.** Once the cluster has settled: every volume the
//! state says is ready has its file in the shared pool, of its format and capacity; every
//! file there is of a volume the state holds, ready or with an operation still pending
//! (a deleted volume's file is gone, and a failed one never had one); every operation
//! has been carried out or has failed, also one asked of a host lost for good (fenced,
//! it is asked of another ready host: a shared pool's files are every host's); only a
//! local pool's volume, or one with no ready host left, waits for a lost host. (That a VM
//! never starts without its disk file is checked at every start, in `host`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use controlplane::model::{HostState, VolumeState};
use controlplane::State;
use hostd::dir_pool::volume_path;
use hostd::fake::FakeVolume;

/// `files`: the shared pool's files; `lost`: hosts gone for good (what is asked of them
/// stays pending). `Ok` once settled, else what is still wrong.
pub fn check_settled(
    state: &State,
    files: &BTreeMap<PathBuf, FakeVolume>,
    lost: &BTreeSet<String>,
) -> Result<(), String> {
    let mut held = BTreeSet::new();
    let any_ready = state.hosts().values().any(|h| h.state == HostState::Ready);
    for v in state.volumes().values() {
        let Some(pool) = state.pool(&v.id.pool) else {
            return Err(format!("volume {} is in no pool", v.id));
        };
        let path = volume_path(&pool.config.path, &v.id.name);
        match &v.state {
            VolumeState::Ready => match files.get(&path) {
                None => {
                    return Err(format!(
                        "volume {} is ready but its file {} is missing",
                        v.id,
                        path.display()
                    ))
                }
                Some(f) if f.format != v.format || f.capacity_mib != v.capacity_mib => {
                    return Err(format!("volume {} is recorded as {v:?} but its file is {f:?}", v.id))
                }
                Some(_) => {}
            },
            VolumeState::Pending { op, host, .. }
                if !lost.contains(host) || (v.host.is_none() && any_ready) =>
            {
                return Err(format!("volume {} still has its {} pending on host {host}", v.id, op.name()));
            }
            _ => {}
        }
        if matches!(v.state, VolumeState::Ready | VolumeState::Pending { .. }) {
            held.insert(path);
        }
    }
    if let Some(stray) = files.keys().find(|path| !held.contains(*path)) {
        let recorded = state
            .volumes()
            .values()
            .find(|v| {
                state.pool(&v.id.pool).is_some_and(|p| volume_path(&p.config.path, &v.id.name) == *stray)
            })
            .map_or("none".to_string(), |v| format!("{} {}", v.id, v.state.name()));
        return Err(format!(
            "file {} is of no volume (deleted or failed, and left behind; the state holds: {recorded})",
            stray.display()
        ));
    }
    Ok(())
}
