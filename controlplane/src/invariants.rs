//! Whole-state invariants, checked from scratch. `apply` asserts the local ones as it
//! goes; this module recomputes every derived figure and cross-reference so property
//! tests and the simulator can check a state after every step.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::{TOKENS_MAX, TOKEN_TTL_MS_MAX};
use crate::model::{AttachMode, HostState, Resources, SnapshotKind, SnapshotState, VolumeOp, VolumeState};
use crate::state::State;

/// A broken invariant, described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant broken: {0}")]
pub struct Violation(pub String);

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($msg)+)));
        }
    };
}

/// Check every invariant of `state`.
pub fn check(state: &State) -> Result<(), Violation> {
    check_hosts(state)?;
    check_networks(state)?;
    check_volumes(state)?;
    check_snapshots_and_migrations(state)?;
    check_tokens(state)?;
    Ok(())
}

fn check_tokens(state: &State) -> Result<(), Violation> {
    ensure!(state.tokens().count() <= TOKENS_MAX, "{} tokens, over {TOKENS_MAX}", state.tokens().count());
    for t in state.tokens() {
        ensure!(
            state.token(&t.name).is_some_and(|k| k.name == t.name),
            "token {} kept under another name",
            t.name
        );
        ensure!(
            t.created_ms < t.expires_ms && t.expires_ms - t.created_ms <= TOKEN_TTL_MS_MAX,
            "token {} lives from {} to {}",
            t.name,
            t.created_ms,
            t.expires_ms
        );
        ensure!(t.version <= state.last_seq(), "token {} is newer than the state", t.name);
    }
    Ok(())
}

fn check_hosts(state: &State) -> Result<(), Violation> {
    // Every (host, domain) charge: a placement, and a migration target's reservation.
    let mut charges: Vec<(&str, &crate::model::Domain)> = Vec::new();
    for d in state.domains().values() {
        if let Some(h) = &d.status.host {
            charges.push((h, d));
        }
        if let Some(id) = d.migration {
            let m = state.migration(id);
            ensure!(
                m.is_some_and(|m| !m.phase.is_ended() && m.domain == d.name),
                "domain {} points at migration {id}",
                d.name
            );
            let m = m.expect("checked");
            ensure!(
                d.status.host.as_ref() == Some(&m.source),
                "domain {} migrates from a host it is not on",
                d.name
            );
            charges.push((&m.target, d));
        }
    }
    let mut expected: BTreeMap<&str, (Resources, BTreeSet<&str>)> = BTreeMap::new();
    for (host, d) in charges {
        ensure!(state.host(host).is_some(), "domain {} placed on unknown host {host}", d.name);
        let entry = expected.entry(host).or_default();
        entry.0 = entry.0.plus(d.spec.resources());
        ensure!(entry.1.insert(&d.name), "domain {} charged twice to host {host}", d.name);
    }
    for host in state.hosts().values() {
        let (allocated, domains) = expected.remove(host.name.as_str()).unwrap_or_default();
        ensure!(
            host.allocated == allocated,
            "host {} allocated {:?}, its domains need {allocated:?}",
            host.name,
            host.allocated
        );
        ensure!(host.allocated.fits_within(host.capacity), "host {} is over capacity", host.name);
        let listed: BTreeSet<&str> = host.domains.iter().map(String::as_str).collect();
        ensure!(listed == domains, "host {} lists domains {listed:?}, placements say {domains:?}", host.name);
        ensure!(
            host.state != HostState::Left || host.domains.is_empty(),
            "host {} left with domains",
            host.name
        );
    }
    Ok(())
}

fn check_networks(state: &State) -> Result<(), Violation> {
    let mut vnis = BTreeSet::new();
    for n in state.networks().values() {
        ensure!(vnis.insert(n.vni()), "network {} shares VNI {} with another network", n.name, n.vni());
        let mut ips = BTreeSet::new();
        for (mac, lease) in &n.leases {
            if let Some(ip) = lease.ip {
                ensure!(ips.insert(ip), "address {ip} leased twice on network {}", n.name);
                ensure!(
                    n.config.cidr.is_some_and(|c| c.is_host_address(ip)),
                    "address {ip} outside network {}",
                    n.name
                );
                ensure!(Some(ip) != n.config.gateway, "gateway {ip} leased on network {}", n.name);
            }
            let owner = state.domain(&lease.domain);
            ensure!(
                owner.is_some_and(|d| d
                    .spec
                    .nics
                    .iter()
                    .any(|nic| nic.network == n.name && nic.mac == Some(*mac))),
                "lease {mac} on network {} has no NIC on domain {}",
                n.name,
                lease.domain
            );
        }
        ensure!(ips == n.used_ips, "network {} used-address index disagrees with its leases", n.name);
    }
    for d in state.domains().values() {
        for nic in &d.spec.nics {
            let mac = nic.mac.ok_or_else(|| Violation(format!("domain {} has a NIC without MAC", d.name)))?;
            let leased = state.network(&nic.network).and_then(|n| n.leases.get(&mac));
            ensure!(
                leased.is_some_and(|l| l.domain == d.name),
                "NIC {mac} of domain {} has no lease",
                d.name
            );
        }
    }
    Ok(())
}

fn check_volumes(state: &State) -> Result<(), Violation> {
    let mut pools: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut clones: BTreeMap<&crate::model::VolumeRef, u64> = BTreeMap::new();
    for v in state.volumes().values() {
        ensure!(state.pool(&v.id.pool).is_some(), "volume {} in unknown pool", v.id);
        let entry = pools.entry(v.id.pool.as_str()).or_default();
        entry.0 += v.reserved_mib();
        entry.1 += 1;
        // A volume being removed is held by nothing; one with no file backs no clone (a
        // domain may still name a failed one: it cannot start until the disk is detached).
        let deleting = matches!(v.state, VolumeState::Pending { op: VolumeOp::Delete, .. });
        ensure!(!deleting || v.attachments.is_empty(), "volume {} is deleting yet attached", v.id);
        let fileless = deleting || matches!(v.state, VolumeState::Failed { .. });
        ensure!(!fileless || v.clones == 0, "volume {} is {} yet backs clones", v.id, v.state.name());
        if matches!(v.state, VolumeState::Pending { op: VolumeOp::Resize { .. }, .. }) {
            let running = v.attachments.keys().find(|d| state.domain(d).is_some_and(|d| d.is_placed()));
            ensure!(
                running.is_none(),
                "volume {} resized under running domain {}",
                v.id,
                running.unwrap_or(&String::new())
            );
        }
        if let Some(host) = &v.host {
            ensure!(
                state.pool(&v.id.pool).is_some_and(|p| !p.config.shared),
                "volume {} of a shared pool is bound to host {host}",
                v.id
            );
        }
        let rw = v.attachments.values().filter(|m| **m == AttachMode::ReadWrite).count();
        ensure!(rw == 0 || v.attachments.len() == 1, "volume {} attached read-write alongside others", v.id);
        for (domain, mode) in &v.attachments {
            let disk =
                state.domain(domain).and_then(|d| d.spec.disks.iter().find(|disk| disk.volume == v.id));
            ensure!(
                disk.is_some_and(|disk| disk.read_only == (*mode == AttachMode::ReadOnly)),
                "volume {} attachment to {domain} does not match the domain's disks",
                v.id
            );
        }
        if let Some(b) = &v.backing {
            let base = state.volumes().get_key_value(&crate::model::VolumeRef::new(&v.id.pool, b));
            let (base_id, _) =
                base.ok_or_else(|| Violation(format!("volume {} backed by missing {b}", v.id)))?;
            *clones.entry(base_id).or_default() += 1;
        }
    }
    for v in state.volumes().values() {
        let n = clones.get(&v.id).copied().unwrap_or(0);
        ensure!(v.clones == n, "volume {} counts {} clones, has {n}", v.id, v.clones);
    }
    for p in state.pools().values() {
        let (allocated, count) = pools.remove(p.name.as_str()).unwrap_or_default();
        ensure!(p.allocated_mib == allocated && p.volumes == count, "pool {} accounting is off", p.name);
        ensure!(p.allocated_mib <= p.config.capacity_mib, "pool {} is over capacity", p.name);
    }
    for d in state.domains().values() {
        for disk in &d.spec.disks {
            let volume = state.volume(&disk.volume);
            let attached = volume.is_some_and(|v| v.attachments.contains_key(&d.name));
            ensure!(attached, "disk {} of domain {} is not attached", disk.volume, d.name);
            if let (Some(file_host), Some(host)) = (volume.and_then(|v| v.host.as_ref()), &d.status.host) {
                ensure!(
                    file_host == host,
                    "domain {} runs on {host}, its disk {} is on {file_host}",
                    d.name,
                    disk.volume
                );
            }
        }
    }
    Ok(())
}

fn check_snapshots_and_migrations(state: &State) -> Result<(), Violation> {
    for ((domain, name), s) in state.snapshots() {
        ensure!(state.domain(domain).is_some(), "snapshot {domain}/{name} of unknown domain");
        if let Some(p) = &s.parent {
            ensure!(state.snapshot(domain, p).is_some(), "snapshot {domain}/{name} has missing parent {p}");
        }
    }
    for d in state.domains().values() {
        if let Some(c) = &d.current_snapshot {
            ensure!(
                state.snapshot(&d.name, c).is_some(),
                "domain {} current snapshot {c} is missing",
                d.name
            );
        }
        if let Some(r) = &d.restore_from {
            let taken = state
                .snapshot(&r.domain, &r.name)
                .is_some_and(|s| matches!(s.state, SnapshotState::Taken { .. }));
            ensure!(taken, "domain {} restores from {r}, which is not a taken snapshot", d.name);
        }
        let pending: Vec<&crate::model::Snapshot> = state
            .snapshots_of(&d.name)
            .filter(|s| matches!(s.state, SnapshotState::Pending { .. }))
            .collect();
        ensure!(pending.len() <= 1, "domain {} has {} snapshots pending", d.name, pending.len());
        for s in pending {
            let SnapshotState::Pending { host, generation } = &s.state else { unreachable!("filtered") };
            let name = &s.name;
            match s.kind {
                // A pending full snapshot belongs to the domain's current run: when a run
                // ends, its pending snapshots fail with it.
                SnapshotKind::Full => ensure!(
                    d.status.host.as_ref() == Some(host) && d.status.generation == *generation,
                    "snapshot {}/{name} is pending on run {generation} of host {host}, which is not the current run",
                    d.name
                ),
                // A disk snapshot is of a stopped domain, which stays stopped until it is taken.
                SnapshotKind::Disk => ensure!(
                    !d.is_placed() && d.status.generation == *generation,
                    "disk snapshot {}/{name} is pending on host {host} while the domain is placed or ran again",
                    d.name
                ),
            }
        }
    }
    for m in state.migrations().values() {
        if !m.phase.is_ended() {
            let d = state.domain(&m.domain);
            ensure!(
                d.is_some_and(|d| d.migration == Some(m.id)),
                "live migration {} not on its domain",
                m.id
            );
        }
    }
    Ok(())
}
