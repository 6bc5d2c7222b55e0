//! `apply`: the only way state changes. One file per resource, mirroring `decide/`;
//! this one dispatches each event to its function, one line per event.
//!
//! Applying cannot fail and reads nothing but its arguments: no clock, no randomness. An
//! event that does not fit the state (a domain scheduled twice, a host over capacity)
//! means a bug upstream, and `apply` stops the process with an assertion rather than
//! diverge from the other replicas silently. These assertions stay on in release builds.

use std::collections::{BTreeMap, BTreeSet};

use tracing::trace;

mod domain;
mod ha;
mod host;
mod migration;
mod network;
mod snapshot;
mod storage;
mod token;

use crate::event::{Event, EventEnvelope};
use crate::limits::ENDED_MIGRATIONS_KEPT_MAX;
use crate::model::{
    AttachMode, DesiredState, Domain, DomainStatus, Host, HostState, Lease, Migration, MigrationId,
    MigrationPhase, MigrationProgress, Network, Phase, Pool, Resources, Snapshot, SnapshotRef, SnapshotState,
    StopMode, Volume, VolumeOp, VolumeRef, VolumeState,
};
// The types of the events' fields, which the per-resource functions take.
use std::net::Ipv4Addr;

use crate::model::{
    Disk, DomainSpec, Labels, Mac, NetworkConfig, ObservedPhase, PoolConfig, SnapshotKind, VmLimits,
    VolumeFormat,
};
use crate::proposal::{Committed, Proposal, ProposalOutcome};
use crate::state::State;

/// Apply a proposal found in a raft log entry that the leader of `term` appended: as
/// [`apply_proposal`], unless the proposal holds only in another term
/// ([`Proposal::term`]), when nothing is applied.
pub fn apply_proposal_in_term(
    state: &mut State,
    proposal: &Proposal,
    term: u64,
) -> (ProposalOutcome, Vec<EventEnvelope>) {
    match proposal.term {
        Some(decided) if decided != term => {
            trace!(request_id = %proposal.request_id, decided, appended = term, "proposal out of its term");
            (ProposalOutcome::OutOfTerm { decided, appended: term }, Vec::new())
        }
        _ => apply_proposal(state, proposal),
    }
}

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
            host::registered(state, seq, now, name, address, capacity, labels)
        }
        Event::HostUpdated { name, address, capacity, labels } => {
            host::updated(state, seq, name, address, capacity, labels)
        }
        Event::HostStateChanged { name, state: to } => host::state_changed(state, seq, now, name, to),
        Event::DomainDefined { name, spec } => domain::defined(state, seq, now, name, spec),
        Event::DomainUndefined { name } => domain::undefined(state, name),
        Event::DomainStartRequested { name } => domain::start_requested(state, seq, name),
        Event::DomainShutdownRequested { name } => domain::shutdown_requested(state, seq, name),
        Event::DomainDestroyRequested { name } => domain::destroy_requested(state, seq, name),
        Event::DomainRebootRequested { name } => domain::reboot_requested(state, seq, name),
        Event::DomainSuspendRequested { name } => domain::suspend_requested(state, seq, name),
        Event::DomainResumeRequested { name } => domain::resume_requested(state, seq, name),
        Event::DomainScheduled { name, host, generation } => {
            domain::scheduled(state, seq, name, host, generation)
        }
        Event::DomainObserved { name, generation, phase, reason } => {
            domain::observed(state, seq, now, name, generation, phase, reason)
        }
        Event::DomainReleased { name, generation, desired } => {
            domain::released(state, seq, name, generation, desired)
        }
        Event::DomainDiskAdded { name, disk } => domain::disk_added(state, seq, name, disk),
        Event::DomainDiskRemoved { name, volume } => domain::disk_removed(state, seq, name, volume),
        Event::NetworkCreated { name, config } => network::created(state, seq, now, name, config, &0),
        Event::NetworkDefined { name, config, vni } => network::created(state, seq, now, name, config, vni),
        Event::NetworkDeleted { name } => network::deleted(state, name),
        Event::IpAllocated { network, mac, ip, domain } => {
            network::ip_allocated(state, seq, network, mac, ip, domain)
        }
        Event::IpReleased { network, mac } => network::ip_released(state, seq, network, mac),
        Event::PoolCreated { name, config } => storage::pool_created(state, seq, now, name, config),
        Event::PoolDeleted { name } => storage::pool_deleted(state, name),
        Event::VolumeCreated { volume, format, capacity_mib, backing } => {
            storage::volume_created(state, seq, now, volume, format, capacity_mib, backing)
        }
        Event::VolumeDeleted { volume } => storage::volume_deleted(state, seq, volume),
        Event::VolumeResized { volume, capacity_mib } => {
            storage::volume_resized(state, seq, volume, capacity_mib)
        }
        Event::VolumeAllocationObserved { volume, allocation_mib } => {
            storage::volume_allocation_observed(state, seq, volume, allocation_mib)
        }
        Event::VolumeAttached { volume, domain, read_only } => {
            storage::volume_attached(state, seq, volume, domain, read_only)
        }
        Event::VolumeDetached { volume, domain } => storage::volume_detached(state, seq, volume, domain),
        Event::SnapshotCreated { domain, name, parent, kind } => {
            snapshot::created(state, seq, now, domain, name, parent, kind)
        }
        Event::SnapshotDeleted { domain, name } => snapshot::deleted(state, seq, domain, name),
        Event::SnapshotReparented { domain, name, parent } => {
            snapshot::reparented(state, seq, domain, name, parent)
        }
        Event::SnapshotReverted { domain, name } => snapshot::reverted(state, seq, domain, name),
        Event::SnapshotRequested { domain, name, parent, kind, host, generation } => {
            snapshot::requested(state, seq, now, domain, name, parent, kind, host, generation)
        }
        Event::SnapshotTaken { domain, name, bytes, duration_ms } => {
            snapshot::taken(state, seq, domain, name, bytes, duration_ms)
        }
        Event::SnapshotFailed { domain, name, reason } => snapshot::failed(state, seq, domain, name, reason),
        Event::SnapshotRevertRequested { domain, name, generation } => {
            snapshot::revert_requested(state, seq, domain, name, generation)
        }
        Event::SnapshotRestored { domain, source, name, generation } => {
            snapshot::restored(state, seq, domain, source, name, generation)
        }
        Event::DomainCloned { clone, source, name } => {
            snapshot::domain_cloned(state, seq, clone, source, name)
        }
        Event::MigrationStarted { domain, source, target } => {
            migration::started(state, seq, now, domain, source, target)
        }
        Event::MigrationPhaseChanged { id, phase } => migration::phase_changed(state, seq, id, phase),
        Event::MigrationCommitted { id, generation } => migration::committed(state, seq, now, id, generation),
        Event::MigrationRolledBack { id, reason } => migration::rolled_back(state, seq, now, id, reason),
        Event::DomainLost { name, generation, host } => ha::lost(state, seq, name, generation, host),
        Event::DomainHaRestarting { name } => ha::restarting(state, seq, now, name),
        Event::DomainHaWaiting { name, reason } => ha::waiting(state, seq, name, reason),
        Event::DomainHaGaveUp { name, reason } => ha::gave_up(state, seq, name, reason),
        Event::ClusterSettingsChanged { ha_reserve_hosts } => {
            host::settings_changed(state, seq, ha_reserve_hosts)
        }
        Event::HostCleared { name } => host::cleared(state, seq, name),
        Event::VolumeRequested { volume, format, capacity_mib, backing, preallocate, import, host } => {
            let op = VolumeOp::Create { preallocate: *preallocate, import: import.clone() };
            storage::volume_requested(state, seq, now, volume, format, capacity_mib, backing, op, host)
        }
        Event::VolumeResizeRequested { volume, capacity_mib, host } => {
            storage::volume_resize_requested(state, seq, volume, capacity_mib, host)
        }
        Event::VolumeDeleteRequested { volume, host } => {
            storage::volume_delete_requested(state, seq, volume, host)
        }
        Event::VolumeReady { volume, allocation_mib } => {
            storage::volume_ready(state, seq, volume, allocation_mib)
        }
        Event::VolumeFailed { volume, reason } => storage::volume_failed(state, seq, volume, reason),
        Event::VolumeReassigned { volume, host } => storage::volume_reassigned(state, seq, volume, host),
        Event::HostVmLimits { name, limits } => host::vm_limits(state, seq, name, limits),
        Event::TokenCreated { name, role, secret_sha256, expires_ms } => {
            let by = &envelope.principal;
            token::created(state, seq, now, by, name, *role, secret_sha256, *expires_ms)
        }
        Event::TokenRevoked { name } => token::revoked(state, name),
        Event::MigrationTargetReady { id, address } => migration::target_ready(state, seq, id, address),
        Event::MigrationProgressed { id, progress } => migration::progressed(state, seq, id, progress),
        Event::MigrationDowntimeSet { domain, max_downtime_ms } => {
            migration::downtime_set(state, seq, domain, max_downtime_ms)
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
