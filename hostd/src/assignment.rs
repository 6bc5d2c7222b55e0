//! This host's share of the replicated state: the domains placed on it, as the reconciler
//! wants them, its snapshot and volume work and the networks it serves. Taken from the
//! host's own learner replica of the log (in production and in the simulator), or from a
//! `State::from_listing` of what the API listed (a hostd without a replica): one code
//! path for both.

use std::collections::BTreeMap;
use std::path::Path;

use controlplane::model::{
    Boot, Disk, Domain, NetworkConfig, NetworkMode, SnapshotKind, StopMode, VolumeFormat,
};
use controlplane::State;

use crate::dir_pool::volume_path;
use crate::driver::{isolated_bridge, nat_attachment, snapshot_path, Attachment, DiskSpec, NicSpec, VmSpec};
use crate::migrations::MigrationWork;
use crate::networks::NetworkWork;
use crate::reconciler::Assigned;
use crate::snapshots::SnapshotWork;
use crate::volumes::VolumeWork;

/// A host's share of the state: the domains placed on it, its snapshot and volume work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostShare {
    pub domains: BTreeMap<String, Assigned>,
    pub snapshots: SnapshotWork,
    pub volumes: VolumeWork,
    pub networks: NetworkWork,
    pub migrations: MigrationWork,
}

/// `host`'s share of `state`; snapshots live under `snapshot_dir`.
pub fn share_from_state(host: &str, state: &State, snapshot_dir: &Path) -> HostShare {
    HostShare {
        domains: assigned_from_state(host, state, snapshot_dir),
        snapshots: SnapshotWork::from_state(host, state),
        volumes: VolumeWork::from_state(host, state),
        networks: NetworkWork::from_state(host, state),
        migrations: MigrationWork::from_state(host, state, snapshot_dir),
    }
}

/// Where a NIC of network `network` (name and settings; `None`: no such network) plugs
/// in on a host.
pub fn attachment(network: Option<(&String, &NetworkConfig)>) -> Attachment {
    match network {
        None => Attachment::Unsupported("the network does not exist".into()),
        Some((_, config)) if config.mode == NetworkMode::Bridge => match &config.bridge {
            Some(b) => Attachment::HostBridge(b.clone()),
            None => Attachment::Unsupported("the bridge network names no host bridge".into()),
        },
        Some((name, config)) if config.mode == NetworkMode::Isolated => {
            Attachment::Isolated(isolated_bridge(name))
        }
        Some((name, config)) => match config.cidr {
            Some(cidr) => nat_attachment(name, cidr, config.gateway),
            None => Attachment::Unsupported("the NAT network has no address range".into()),
        },
    }
}

/// The domains the state places on `host` ([`vm_spec`]), and the incoming VMs of the
/// migrations to it; those a migration holds are marked `migrating`.
pub fn assigned_from_state(host: &str, state: &State, snapshot_dir: &Path) -> BTreeMap<String, Assigned> {
    let mut assigned: BTreeMap<String, Assigned> = state
        .domains()
        .values()
        .filter(|d| d.status.host.as_deref() == Some(host))
        .map(|d| {
            // Its VM is on its way out once the target listens: the migration holds it.
            let migrating = d
                .migration
                .and_then(|id| state.migration(id))
                .is_some_and(|m| m.source == host && m.target_address.is_some());
            (
                d.name.clone(),
                Assigned {
                    spec: vm_spec(state, d, snapshot_dir),
                    desired: d.desired,
                    force: d.stop_mode == StopMode::Force,
                    reboots: d.reboots,
                    migrating,
                },
            )
        })
        .collect();
    // The incoming VM of a migration to this host is the migration's until it ends.
    for m in state.migrations().values().filter(|m| m.target == host && !m.phase.is_ended()) {
        if let Some(d) = state.domain(&m.domain) {
            let mut spec = vm_spec(state, d, snapshot_dir);
            spec.generation += 1;
            let want =
                Assigned { spec, desired: d.desired, force: false, reboots: d.reboots, migrating: true };
            assigned.insert(d.name.clone(), want);
        }
    }
    assigned
}

/// What runs domain `d`'s VM on a host: its disks resolved to `<pool path>/<volume
/// name>`, its NICs to where their taps plug in, the snapshot a run restores from to its
/// file under `snapshot_dir`.
pub fn vm_spec(state: &State, d: &Domain, snapshot_dir: &Path) -> VmSpec {
    let (kernel, initrd, cmdline) = match &d.spec.boot {
        Boot::Kernel { kernel, initrd, cmdline } => (Some(kernel.clone()), initrd.clone(), cmdline.clone()),
        Boot::Disk => (None, None, String::new()),
    };
    let disks = disk_specs(state, &d.spec.disks);
    // A snapshot the state lost would be a broken invariant; an id of 0 names a file
    // that cannot exist, so the start fails with the path.
    let restored = d.restore_from.as_ref().map(|r| (r, state.snapshot(&r.domain, &r.name)));
    let restore = restored.map(|(r, s)| {
        snapshot_path(snapshot_dir, &r.domain, &r.name, s.map_or(0, |s| s.id)).display().to_string()
    });
    let restore_kind = restored.map(|(_, s)| s.map_or(SnapshotKind::Full, |s| s.kind));
    VmSpec {
        domain: d.name.clone(),
        generation: d.status.generation,
        vcpus: d.spec.vcpus,
        memory_mib: d.spec.memory_mib,
        kernel,
        initrd,
        cmdline,
        disks,
        nics: d
            .spec
            .nics
            .iter()
            .map(|nic| NicSpec {
                mac: nic.mac.map(|m| m.to_string()).unwrap_or_default(),
                network: nic.network.clone(),
                attachment: attachment(state.network(&nic.network).map(|n| (&n.name, &n.config))),
            })
            .collect(),
        restore_from: restore.clone().filter(|_| restore_kind == Some(SnapshotKind::Full)),
        disks_from: restore.filter(|_| restore_kind == Some(SnapshotKind::Disk)),
    }
}

/// `disks` resolved to `<pool path>/<volume name>` on a host.
pub fn disk_specs(state: &State, disks: &[Disk]) -> Vec<DiskSpec> {
    disks
        .iter()
        .map(|disk| DiskSpec {
            path: match state.pool(&disk.volume.pool) {
                Some(p) => volume_path(&p.config.path, &disk.volume.name).display().to_string(),
                // An unknown pool gives a path that cannot exist, so the start fails with
                // the disk named rather than silently without it.
                None => format!("<no pool {:?} for volume {:?}>", disk.volume.pool, disk.volume.name),
            },
            // A disk's volume is never deleted while attached (an invariant).
            format: state.volume(&disk.volume).map_or(VolumeFormat::Raw, |v| v.format),
            read_only: disk.read_only,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: NetworkMode, bridge: Option<&str>) -> NetworkConfig {
        NetworkConfig { mode, cidr: None, gateway: None, bridge: bridge.map(str::to_owned) }
    }

    #[test]
    fn nics_plug_into_the_bridge_their_network_names_or_fail_plainly() {
        let name = "lan".to_owned();
        assert_eq!(
            attachment(Some((&name, &config(NetworkMode::Isolated, None)))),
            Attachment::Isolated(isolated_bridge("lan"))
        );
        assert_eq!(
            attachment(Some((&name, &config(NetworkMode::Bridge, Some("br0"))))),
            Attachment::HostBridge("br0".into())
        );
        let mut nat = config(NetworkMode::Nat, None);
        nat.cidr = Some("10.9.0.0/24".parse().unwrap());
        assert_eq!(
            attachment(Some((&name, &nat))),
            Attachment::Nat {
                bridge: isolated_bridge("lan"),
                gateway: "10.9.0.1/24".into(),
                network: "10.9.0.0/24".into()
            }
        );
        nat.gateway = Some("10.9.0.254".parse().unwrap());
        assert!(
            matches!(attachment(Some((&name, &nat))), Attachment::Nat { gateway, .. } if gateway == "10.9.0.254/24")
        );
        for (network, why) in [
            (Some((&name, &config(NetworkMode::Nat, None))), "no address range"),
            (Some((&name, &config(NetworkMode::Bridge, None))), "no host bridge"),
            (None, "does not exist"),
        ] {
            match attachment(network) {
                Attachment::Unsupported(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(isolated_bridge("a-network-with-a-long-name").len() <= 15, "interface names fit");
        assert!(crate::driver::tap_name("a-domain-with-a-long-name", 7).len() <= 15, "tap names fit");
    }
}
