//! This host's share of the replicated state: the domains placed on it, as the reconciler
//! wants them. Read from a replica of the log (the simulator's hosts today; the learner
//! replica on every production host once it lands), it needs no API round trip.

use std::collections::BTreeMap;

use controlplane::model::{Boot, DesiredState, StopMode};
use controlplane::State;

use crate::driver::{DiskSpec, VmSpec};
use crate::reconciler::{Assigned, Desired};

/// The domains the state places on `host`, with their disks resolved to
/// `<pool path>/<volume name>`.
pub fn assigned_from_state(host: &str, state: &State) -> BTreeMap<String, Assigned> {
    state
        .domains()
        .values()
        .filter(|d| d.status.host.as_deref() == Some(host))
        .map(|d| {
            let (kernel, initrd, cmdline) = match &d.spec.boot {
                Boot::Kernel { kernel, initrd, cmdline } => {
                    (Some(kernel.clone()), initrd.clone(), cmdline.clone())
                }
                Boot::Disk => (None, None, String::new()),
            };
            let disks = d
                .spec
                .disks
                .iter()
                .map(|disk| DiskSpec {
                    path: match state.pool(&disk.volume.pool) {
                        Some(p) => format!("{}/{}", p.config.path.trim_end_matches('/'), disk.volume.name),
                        // An unknown pool gives a path that cannot exist, so the start fails
                        // with the disk named rather than silently without it.
                        None => format!("<no pool {:?} for volume {:?}>", disk.volume.pool, disk.volume.name),
                    },
                    read_only: disk.read_only,
                })
                .collect();
            let desired = match d.desired {
                DesiredState::Running => Desired::Running,
                DesiredState::Paused => Desired::Paused,
                DesiredState::Stopped => Desired::Stopped,
            };
            let spec = VmSpec {
                domain: d.name.clone(),
                generation: d.status.generation,
                vcpus: d.spec.vcpus,
                memory_mib: d.spec.memory_mib,
                kernel,
                initrd,
                cmdline,
                disks,
            };
            (
                d.name.clone(),
                Assigned { spec, desired, force: d.stop_mode == StopMode::Force, reboots: d.reboots },
            )
        })
        .collect()
}
