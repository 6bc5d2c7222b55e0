//! `apply`: the only way state changes.
//!
//! Applying cannot fail and reads nothing but its arguments: no clock, no randomness. An
//! event that does not fit the state (a domain scheduled twice, a host over capacity)
//! means a bug upstream, and `apply` stops the process with an assertion rather than
//! diverge from the other replicas silently. These assertions stay on in release builds.

use std::collections::{BTreeMap, BTreeSet};

use tracing::trace;

use crate::event::{Event, EventEnvelope};
use crate::limits::ENDED_MIGRATIONS_KEPT_MAX;
use crate::model::{
    AttachMode, DesiredState, Domain, DomainStatus, Host, HostState, Lease, Migration, MigrationId,
    MigrationPhase, Network, Phase, Pool, Resources, Snapshot, SnapshotRef, SnapshotState, StopMode, Volume,
    VolumeRef,
};
use crate::proposal::{Committed, Proposal, ProposalOutcome};
use crate::state::State;

/// Apply a proposal: all of its events if every precondition and host fit holds and its
/// request was not committed before, none otherwise. Returns the outcome and the envelopes it appended.
pub fn apply_proposal(state: &mut State, proposal: &Proposal) -> (ProposalOutcome, Vec<EventEnvelope>) {
    if let Some(first) = state.requests.get(&proposal.principal, &proposal.request_id) {
        return (ProposalOutcome::Duplicate(first), Vec::new());
    }
    for pre in &proposal.preconditions {
        let actual = state.version_of(&pre.key);
        if actual != pre.version {
            trace!(key = %pre.key, expected = pre.version, actual, "proposal conflicts");
            let outcome = ProposalOutcome::Conflict { key: pre.key.clone(), expected: pre.version, actual };
            return (outcome, Vec::new());
        }
    }
    for fit in &proposal.fits {
        let (Some(host), Some(domain)) = (state.hosts.get(&fit.host), state.domains.get(&fit.domain)) else {
            let reason = "host or domain is gone".to_owned();
            return (
                ProposalOutcome::Unfit { host: fit.host.clone(), domain: fit.domain.clone(), reason },
                Vec::new(),
            );
        };
        if let Err(misfit) = crate::scheduler::fit(state, host, &fit.domain, &domain.spec) {
            trace!(host = %fit.host, domain = %fit.domain, %misfit, "placement no longer fits");
            let outcome = ProposalOutcome::Unfit {
                host: fit.host.clone(),
                domain: fit.domain.clone(),
                reason: misfit.to_string(),
            };
            return (outcome, Vec::new());
        }
    }
    let first_seq = state.last_seq + 1;
    let mut envelopes = Vec::with_capacity(proposal.events.len());
    for event in &proposal.events {
        let envelope = EventEnvelope {
            seq: state.last_seq + 1,
            time_ms: proposal.time_ms,
            principal: proposal.principal.clone(),
            request_id: proposal.request_id.clone(),
            event: event.clone(),
        };
        apply(state, &envelope);
        envelopes.push(envelope);
    }
    (ProposalOutcome::Applied(Committed { first_seq, last_seq: state.last_seq }), envelopes)
}

/// Apply one event. Replaying an archive is calling this for each envelope in order.
pub fn apply(state: &mut State, envelope: &EventEnvelope) {
    let seq = envelope.seq;
    assert_eq!(seq, state.last_seq + 1, "events apply in sequence without gaps");
    state.last_seq = seq;
    state.requests.record(&envelope.principal, &envelope.request_id, seq);
    let now = envelope.time_ms;

    match &envelope.event {
        Event::HostRegistered { name, address, capacity, labels } => {
            let host = Host {
                name: name.clone(),
                address: address.clone(),
                capacity: *capacity,
                allocated: Resources::ZERO,
                labels: labels.clone(),
                state: HostState::Joining,
                domains: BTreeSet::new(),
                registered_ms: now,
                version: seq,
            };
            let previous = state.hosts.insert(name.clone(), host);
            assert!(previous.is_none(), "host {name} registered twice");
        }
        Event::HostUpdated { name, address, capacity, labels } => {
            let host = host_mut(state, name);
            assert!(host.allocated.fits_within(*capacity), "host {name} capacity below its allocation");
            host.address = address.clone();
            host.capacity = *capacity;
            host.labels = labels.clone();
            host.version = seq;
        }
        Event::HostStateChanged { name, state: to } => {
            let host = host_mut(state, name);
            if *to == HostState::Left {
                assert!(host.domains.is_empty(), "host {name} left with domains placed");
            }
            host.state = *to;
            host.version = seq;
        }

        Event::DomainDefined { name, spec } => {
            assert!(
                spec.nics.iter().all(|n| n.mac.is_some()),
                "domain {name} defined with an unresolved MAC"
            );
            let domain = Domain {
                name: name.clone(),
                spec: spec.clone(),
                desired: DesiredState::Stopped,
                stop_mode: StopMode::Graceful,
                reboots: 0,
                status: DomainStatus {
                    host: None,
                    generation: 0,
                    phase: Phase::Stopped,
                    reason: None,
                    observed_ms: now,
                },
                current_snapshot: None,
                restore_from: None,
                migration: None,
                defined_ms: now,
                version: seq,
            };
            let previous = state.domains.insert(name.clone(), domain);
            assert!(previous.is_none(), "domain {name} defined twice");
        }
        Event::DomainUndefined { name } => {
            let domain =
                state.domains.remove(name).unwrap_or_else(|| panic!("domain {name} undefined but absent"));
            assert!(
                !domain.is_placed() && domain.migration.is_none(),
                "domain {name} undefined while active"
            );
            for disk in &domain.spec.disks {
                let attached =
                    state.volumes.get(&disk.volume).is_some_and(|v| v.attachments.contains_key(name));
                assert!(!attached, "domain {name} undefined before volume {} was detached", disk.volume);
            }
            for nic in &domain.spec.nics {
                let network = state.networks.get(&nic.network);
                let mac = nic.mac.expect("NICs in the state have MACs");
                assert!(
                    network.is_none_or(|n| !n.leases.contains_key(&mac)),
                    "domain {name} undefined before its lease on {} was released",
                    nic.network
                );
            }
            assert!(state.snapshots_of(name).next().is_none(), "domain {name} undefined with snapshots");
        }
        Event::DomainStartRequested { name } => {
            let d = domain_mut(state, name);
            d.desired = DesiredState::Running;
            d.stop_mode = StopMode::Graceful;
            d.version = seq;
        }
        Event::DomainShutdownRequested { name } => {
            let d = domain_mut(state, name);
            d.desired = DesiredState::Stopped;
            d.stop_mode = StopMode::Graceful;
            d.version = seq;
        }
        Event::DomainDestroyRequested { name } => {
            let d = domain_mut(state, name);
            d.desired = DesiredState::Stopped;
            d.stop_mode = StopMode::Force;
            d.version = seq;
        }
        Event::DomainRebootRequested { name } => {
            let d = domain_mut(state, name);
            d.reboots += 1;
            d.version = seq;
        }
        Event::DomainSuspendRequested { name } => {
            let d = domain_mut(state, name);
            d.desired = DesiredState::Paused;
            d.version = seq;
        }
        Event::DomainResumeRequested { name } => {
            let d = domain_mut(state, name);
            d.desired = DesiredState::Running;
            d.version = seq;
        }
        Event::DomainScheduled { name, host, generation } => {
            let d = domain_mut(state, name);
            assert!(!d.is_placed(), "domain {name} scheduled while placed");
            assert_eq!(*generation, d.status.generation + 1, "domain {name} generations go up by one");
            d.status.host = Some(host.clone());
            d.status.generation = *generation;
            d.status.phase = Phase::Scheduled;
            d.status.reason = None;
            d.version = seq;
            let needs = d.spec.resources();
            let h = host_mut(state, host);
            assert_eq!(h.state, HostState::Ready, "domain {name} scheduled on host {host} that is not ready");
            reserve(h, name, needs, seq);
        }
        Event::DomainObserved { name, generation, phase, reason } => {
            let d = domain_mut(state, name);
            assert_eq!(*generation, d.status.generation, "domain {name} observed for a stale generation");
            assert!(d.is_placed(), "domain {name} observed while not placed");
            d.status.phase = (*phase).into();
            d.status.reason = reason.clone();
            d.status.observed_ms = now;
            d.version = seq;
        }
        Event::DomainReleased { name, generation, desired } => {
            let d = domain_mut(state, name);
            assert_eq!(*generation, d.status.generation, "domain {name} released for a stale generation");
            assert!(d.migration.is_none(), "domain {name} released while migrating");
            let host =
                d.status.host.take().unwrap_or_else(|| panic!("domain {name} released while not placed"));
            if !matches!(d.status.phase, Phase::Crashed | Phase::Failed) {
                d.status.phase = Phase::Stopped;
            }
            d.desired = *desired;
            d.stop_mode = StopMode::Graceful;
            d.version = seq;
            let needs = d.spec.resources();
            release(host_mut(state, &host), name, needs, seq);
        }
        Event::DomainDiskAdded { name, disk } => {
            let d = domain_mut(state, name);
            assert!(!d.is_placed(), "disk added to running domain {name}");
            std::sync::Arc::make_mut(&mut d.spec).disks.push(disk.clone());
            d.version = seq;
        }
        Event::DomainDiskRemoved { name, volume } => {
            let d = domain_mut(state, name);
            assert!(!d.is_placed(), "disk removed from running domain {name}");
            let before = d.spec.disks.len();
            std::sync::Arc::make_mut(&mut d.spec).disks.retain(|disk| &disk.volume != volume);
            assert_eq!(d.spec.disks.len() + 1, before, "domain {name} had exactly one disk on {volume}");
            d.version = seq;
        }

        Event::NetworkCreated { name, config } => {
            let network = Network {
                name: name.clone(),
                config: config.clone(),
                leases: BTreeMap::new(),
                used_ips: BTreeSet::new(),
                created_ms: now,
                version: seq,
            };
            let previous = state.networks.insert(name.clone(), network);
            assert!(previous.is_none(), "network {name} created twice");
        }
        Event::NetworkDeleted { name } => {
            let n =
                state.networks.remove(name).unwrap_or_else(|| panic!("network {name} deleted but absent"));
            assert!(n.leases.is_empty(), "network {name} deleted with leases");
        }
        Event::IpAllocated { network, mac, ip, domain } => {
            let n = network_mut(state, network);
            if let Some(ip) = ip {
                let cidr = n
                    .config
                    .cidr
                    .unwrap_or_else(|| panic!("address leased on network {network} without CIDR"));
                assert!(cidr.is_host_address(*ip), "address {ip} outside network {network}");
                assert!(Some(*ip) != n.config.gateway, "gateway {ip} leased on network {network}");
                assert!(n.used_ips.insert(*ip), "address {ip} leased twice on network {network}");
            }
            let previous = n.leases.insert(*mac, Lease { domain: domain.clone(), ip: *ip });
            assert!(previous.is_none(), "MAC {mac} leased twice on network {network}");
            n.version = seq;
        }
        Event::IpReleased { network, mac } => {
            let n = network_mut(state, network);
            let lease = n
                .leases
                .remove(mac)
                .unwrap_or_else(|| panic!("MAC {mac} released but not leased on {network}"));
            if let Some(ip) = lease.ip {
                assert!(n.used_ips.remove(&ip), "address {ip} leased but not marked used");
            }
            n.version = seq;
        }

        Event::PoolCreated { name, config } => {
            let pool = Pool {
                name: name.clone(),
                config: config.clone(),
                allocated_mib: 0,
                volumes: 0,
                created_ms: now,
                version: seq,
            };
            let previous = state.pools.insert(name.clone(), pool);
            assert!(previous.is_none(), "pool {name} created twice");
        }
        Event::PoolDeleted { name } => {
            let p = state.pools.remove(name).unwrap_or_else(|| panic!("pool {name} deleted but absent"));
            assert_eq!(p.volumes, 0, "pool {name} deleted with volumes");
        }
        Event::VolumeCreated { volume, format, capacity_mib, backing } => {
            let pool = pool_mut(state, &volume.pool);
            pool.allocated_mib += capacity_mib;
            assert!(pool.allocated_mib <= pool.config.capacity_mib, "pool {} over capacity", volume.pool);
            pool.volumes += 1;
            pool.version = seq;
            if let Some(b) = backing {
                let base = volume_mut(state, &VolumeRef::new(&volume.pool, b));
                base.clones += 1;
                base.version = seq;
            }
            let v = Volume {
                id: volume.clone(),
                format: *format,
                capacity_mib: *capacity_mib,
                allocation_mib: 0,
                backing: backing.clone(),
                clones: 0,
                attachments: BTreeMap::new(),
                created_ms: now,
                version: seq,
            };
            let previous = state.volumes.insert(volume.clone(), v);
            assert!(previous.is_none(), "volume {volume} created twice");
        }
        Event::VolumeDeleted { volume } => {
            let v =
                state.volumes.remove(volume).unwrap_or_else(|| panic!("volume {volume} deleted but absent"));
            assert!(v.attachments.is_empty() && v.clones == 0, "volume {volume} deleted while in use");
            if let Some(b) = &v.backing {
                let base = volume_mut(state, &VolumeRef::new(&volume.pool, b));
                base.clones -= 1;
                base.version = seq;
            }
            let pool = pool_mut(state, &volume.pool);
            pool.allocated_mib -= v.capacity_mib;
            pool.volumes -= 1;
            pool.version = seq;
        }
        Event::VolumeResized { volume, capacity_mib } => {
            let v = volume_mut(state, volume);
            let grow = capacity_mib.checked_sub(v.capacity_mib).expect("volumes only grow");
            v.capacity_mib = *capacity_mib;
            v.version = seq;
            let pool = pool_mut(state, &volume.pool);
            pool.allocated_mib += grow;
            assert!(pool.allocated_mib <= pool.config.capacity_mib, "pool {} over capacity", volume.pool);
            pool.version = seq;
        }
        Event::VolumeAllocationObserved { volume, allocation_mib } => {
            let v = volume_mut(state, volume);
            v.allocation_mib = *allocation_mib;
            v.version = seq;
        }
        Event::VolumeAttached { volume, domain, read_only } => {
            attach(state, volume, domain, *read_only, seq);
        }
        Event::VolumeDetached { volume, domain } => {
            detach(state, volume, domain, seq);
        }

        Event::SnapshotCreated { domain, name, parent, kind } => {
            let d = domain_mut(state, domain);
            assert_eq!(
                &d.current_snapshot, parent,
                "snapshot {domain}/{name} parent is the current snapshot"
            );
            d.current_snapshot = Some(name.clone());
            d.version = seq;
            if let Some(p) = parent {
                assert!(
                    state.snapshots.contains_key(&(domain.clone(), p.clone())),
                    "snapshot parent {p} exists"
                );
            }
            let snapshot = Snapshot {
                domain: domain.clone(),
                name: name.clone(),
                parent: parent.clone(),
                kind: *kind,
                created_ms: now,
                version: seq,
                state: SnapshotState::RecordOnly,
                // No file is named by it; 0 whether replayed or decoded from format 1.
                id: 0,
                disks: Vec::new(),
            };
            let previous = state.snapshots.insert((domain.clone(), name.clone()), snapshot);
            assert!(previous.is_none(), "snapshot {domain}/{name} created twice");
        }
        Event::SnapshotDeleted { domain, name } => {
            let key = (domain.clone(), name.clone());
            let s = state
                .snapshots
                .remove(&key)
                .unwrap_or_else(|| panic!("snapshot {domain}/{name} deleted but absent"));
            assert!(
                state.snapshots_of(domain).all(|c| c.parent.as_deref() != Some(name)),
                "snapshot {domain}/{name} deleted with children"
            );
            let d = domain_mut(state, domain);
            if d.current_snapshot.as_deref() == Some(name) {
                d.current_snapshot = s.parent;
            }
            d.version = seq;
            assert!(
                state
                    .domains
                    .values()
                    .all(|d| d.restore_from.as_ref().is_none_or(|r| r.domain != *domain || r.name != *name)),
                "snapshot {domain}/{name} deleted while a domain is to start from it"
            );
        }
        Event::SnapshotReparented { domain, name, parent } => {
            let s = state
                .snapshots
                .get_mut(&(domain.clone(), name.clone()))
                .unwrap_or_else(|| panic!("snapshot {domain}/{name} reparented but absent"));
            s.parent = parent.clone();
            s.version = seq;
        }
        Event::SnapshotReverted { domain, name } => {
            assert!(
                state.snapshots.contains_key(&(domain.clone(), name.clone())),
                "reverted to a missing snapshot"
            );
            let d = domain_mut(state, domain);
            assert!(!d.is_placed(), "domain {domain} reverted while placed");
            d.current_snapshot = Some(name.clone());
            d.version = seq;
        }

        Event::SnapshotRequested { domain, name, parent, kind, host, generation } => {
            let d = domain_mut(state, domain);
            let disks = d.spec.disks.iter().filter(|x| !x.read_only).map(|x| x.volume.clone()).collect();
            assert_eq!(
                d.status.host.as_ref(),
                Some(host),
                "snapshot {domain}/{name} asked of a host not running it"
            );
            assert_eq!(d.status.generation, *generation, "snapshot {domain}/{name} asked for a stale run");
            assert_eq!(
                &d.current_snapshot, parent,
                "snapshot {domain}/{name} parent is the current snapshot"
            );
            d.version = seq;
            if let Some(p) = parent {
                assert!(
                    state.snapshots.contains_key(&(domain.clone(), p.clone())),
                    "snapshot parent {p} exists"
                );
            }
            assert!(
                state.snapshots_of(domain).all(|s| !matches!(s.state, SnapshotState::Pending { .. })),
                "domain {domain} has two snapshots pending"
            );
            let snapshot = Snapshot {
                domain: domain.clone(),
                name: name.clone(),
                parent: parent.clone(),
                kind: *kind,
                created_ms: now,
                version: seq,
                state: SnapshotState::Pending { host: host.clone(), generation: *generation },
                id: seq,
                disks,
            };
            let previous = state.snapshots.insert((domain.clone(), name.clone()), snapshot);
            assert!(previous.is_none(), "snapshot {domain}/{name} created twice");
        }
        Event::SnapshotTaken { domain, name, bytes, duration_ms } => {
            let s = snapshot_mut(state, domain, name);
            let SnapshotState::Pending { host, .. } = &s.state else {
                panic!("snapshot {domain}/{name} taken while {}", s.state.name());
            };
            s.state = SnapshotState::Taken { host: host.clone(), bytes: *bytes, duration_ms: *duration_ms };
            s.version = seq;
            // The snapshot's parent was the current one when it was asked for, and no
            // other snapshot of the domain could be taken meanwhile.
            let d = domain_mut(state, domain);
            d.current_snapshot = Some(name.clone());
            d.version = seq;
        }
        Event::SnapshotFailed { domain, name, reason } => {
            let s = snapshot_mut(state, domain, name);
            assert!(
                matches!(s.state, SnapshotState::Pending { .. }),
                "snapshot {domain}/{name} failed while {}",
                s.state.name()
            );
            s.state = SnapshotState::Failed { reason: reason.clone() };
            s.version = seq;
        }
        Event::SnapshotRevertRequested { domain, name, generation } => {
            assert_taken(state, domain, name, "reverted to");
            let d = domain_mut(state, domain);
            d.current_snapshot = Some(name.clone());
            d.restore_from = Some(SnapshotRef { domain: domain.clone(), name: name.clone() });
            if let Some(g) = generation {
                assert!(d.is_placed(), "domain {domain} reverted in place while not placed");
                assert_eq!(*g, d.status.generation + 1, "domain {domain} generations go up by one");
                d.status.generation = *g;
                d.status.phase = Phase::Scheduled;
                d.status.reason = None;
            } else {
                assert!(!d.is_placed(), "domain {domain} reverted while placed, without a new run");
            }
            d.version = seq;
        }
        Event::SnapshotRestored { domain, source, name, generation } => {
            let d = domain_mut(state, domain);
            let restored = d.restore_from.as_ref().is_some_and(|r| r.domain == *source && r.name == *name);
            assert!(
                restored,
                "domain {domain} restored from {source}/{name}, which it was not to start from"
            );
            assert_eq!(d.status.generation, *generation, "domain {domain} restored for a stale run");
            d.restore_from = None;
            d.version = seq;
        }

        Event::DomainCloned { clone, source, name } => {
            assert_taken(state, source, name, "cloned from");
            let d = domain_mut(state, clone);
            assert!(!d.is_placed() && d.restore_from.is_none(), "domain {clone} cloned once defined");
            d.restore_from = Some(SnapshotRef { domain: source.clone(), name: name.clone() });
            d.version = seq;
        }

        Event::MigrationStarted { domain, source, target } => {
            let d = domain_mut(state, domain);
            assert!(d.migration.is_none(), "domain {domain} migrating twice");
            assert_eq!(d.status.host.as_ref(), Some(source), "domain {domain} migrates from its own host");
            d.migration = Some(seq);
            d.version = seq;
            let needs = d.spec.resources();
            let t = host_mut(state, target);
            assert_eq!(t.state, HostState::Ready, "migration target {target} is ready");
            reserve(t, domain, needs, seq);
            let migration = Migration {
                id: seq,
                domain: domain.clone(),
                source: source.clone(),
                target: target.clone(),
                phase: MigrationPhase::Preparing,
                reason: None,
                started_ms: now,
                ended_ms: None,
                version: seq,
            };
            state.migrations.insert(seq, migration);
        }
        Event::MigrationPhaseChanged { id, phase } => {
            let m = migration_mut(state, *id);
            assert!(!phase.is_ended() && *phase > m.phase, "migration {id} moves forward to a live phase");
            m.phase = *phase;
            m.version = seq;
        }
        Event::MigrationCommitted { id, generation } => {
            let m = migration_mut(state, *id);
            assert!(!m.phase.is_ended(), "migration {id} ended twice");
            m.phase = MigrationPhase::Committed;
            m.ended_ms = Some(now);
            m.version = seq;
            let (domain, source, target) = (m.domain.clone(), m.source.clone(), m.target.clone());
            let d = domain_mut(state, &domain);
            assert_eq!(d.migration, Some(*id), "domain {domain} is in migration {id}");
            assert_eq!(*generation, d.status.generation + 1, "domain {domain} generations go up by one");
            d.migration = None;
            d.status.host = Some(target);
            d.status.generation = *generation;
            d.version = seq;
            let needs = d.spec.resources();
            release(host_mut(state, &source), &domain, needs, seq);
            end_migration(state, *id);
        }
        Event::MigrationRolledBack { id, reason } => {
            let m = migration_mut(state, *id);
            assert!(!m.phase.is_ended(), "migration {id} ended twice");
            m.phase = MigrationPhase::RolledBack;
            m.reason = Some(reason.clone());
            m.ended_ms = Some(now);
            m.version = seq;
            let (domain, target) = (m.domain.clone(), m.target.clone());
            let d = domain_mut(state, &domain);
            assert_eq!(d.migration, Some(*id), "domain {domain} is in migration {id}");
            d.migration = None;
            d.version = seq;
            let needs = d.spec.resources();
            release(host_mut(state, &target), &domain, needs, seq);
            end_migration(state, *id);
        }
    }
}

fn host_mut<'a>(state: &'a mut State, name: &str) -> &'a mut Host {
    state.hosts.get_mut(name).unwrap_or_else(|| panic!("host {name} is not registered"))
}

/// A revert or clone starts from a snapshot some host has taken.
fn assert_taken(state: &State, domain: &str, name: &str, what: &str) {
    let s = state
        .snapshots
        .get(&(domain.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("{what} snapshot {domain}/{name}, which is absent"));
    assert!(
        matches!(s.state, SnapshotState::Taken { .. }),
        "{what} snapshot {domain}/{name} while {}",
        s.state.name()
    );
}

fn snapshot_mut<'a>(state: &'a mut State, domain: &str, name: &str) -> &'a mut Snapshot {
    state
        .snapshots
        .get_mut(&(domain.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("snapshot {domain}/{name} is absent"))
}

fn domain_mut<'a>(state: &'a mut State, name: &str) -> &'a mut Domain {
    state.domains.get_mut(name).unwrap_or_else(|| panic!("domain {name} is not defined"))
}

fn network_mut<'a>(state: &'a mut State, name: &str) -> &'a mut Network {
    state.networks.get_mut(name).unwrap_or_else(|| panic!("network {name} does not exist"))
}

fn pool_mut<'a>(state: &'a mut State, name: &str) -> &'a mut Pool {
    state.pools.get_mut(name).unwrap_or_else(|| panic!("pool {name} does not exist"))
}

fn volume_mut<'a>(state: &'a mut State, id: &VolumeRef) -> &'a mut Volume {
    state.volumes.get_mut(id).unwrap_or_else(|| panic!("volume {id} does not exist"))
}

fn migration_mut(state: &mut State, id: MigrationId) -> &mut Migration {
    state.migrations.get_mut(&id).unwrap_or_else(|| panic!("migration {id} does not exist"))
}

fn reserve(host: &mut Host, domain: &str, needs: Resources, seq: u64) {
    host.allocated = host.allocated.plus(needs);
    assert!(host.allocated.fits_within(host.capacity), "host {} over capacity", host.name);
    assert!(host.domains.insert(domain.to_owned()), "domain {domain} placed twice on {}", host.name);
    host.version = seq;
}

fn release(host: &mut Host, domain: &str, needs: Resources, seq: u64) {
    assert!(host.domains.remove(domain), "domain {domain} released from {} where it was not", host.name);
    host.allocated = host.allocated.minus(needs);
    host.version = seq;
}

fn attach(state: &mut State, volume: &VolumeRef, domain: &str, read_only: bool, seq: u64) {
    let v = volume_mut(state, volume);
    let mode = if read_only { AttachMode::ReadOnly } else { AttachMode::ReadWrite };
    let exclusive_conflict = v.attachments.values().any(|m| *m == AttachMode::ReadWrite)
        || (mode == AttachMode::ReadWrite && !v.attachments.is_empty());
    assert!(!exclusive_conflict, "volume {volume} attached read-write alongside another attachment");
    v.attachments.insert(domain.to_owned(), mode);
    v.version = seq;
}

fn detach(state: &mut State, volume: &VolumeRef, domain: &str, seq: u64) {
    let v = volume_mut(state, volume);
    assert!(
        v.attachments.remove(domain).is_some(),
        "volume {volume} detached from {domain} but not attached"
    );
    v.version = seq;
}

fn end_migration(state: &mut State, id: MigrationId) {
    state.ended_migrations.push_back(id);
    while state.ended_migrations.len() > ENDED_MIGRATIONS_KEPT_MAX {
        let oldest = state.ended_migrations.pop_front().expect("not empty");
        state.migrations.remove(&oldest);
    }
}
