//! Host commands.

use super::Draft;
use crate::event::Event;
use crate::limits::{
    ADDRESS_LEN_MAX, DOMAIN_MEMORY_MIB_MIN, HA_RESERVE_HOSTS_MAX, HOST_MEMORY_MIB_MAX, HOST_VCPUS_MAX,
};
use crate::model::{HostState, Labels, ResourceKey, ResourceKind, Resources, VmLimits};
use crate::rejection::Rejection;
use crate::validate;

pub(super) fn register(
    d: &mut Draft<'_>,
    name: &str,
    address: &str,
    capacity: Resources,
    labels: &Labels,
    vm_limits: Option<VmLimits>,
) -> Result<(), Rejection> {
    validate::name("name", name)?;
    // A driver that runs more than the cluster defines is not refused: the cluster's own
    // domain limits still apply on top of it.
    if let Some(l) = vm_limits {
        validate::range("vm_limits.vcpus", l.vcpus, 1, HOST_VCPUS_MAX)?;
        validate::range("vm_limits.memory_mib", l.memory_mib, DOMAIN_MEMORY_MIB_MIN, HOST_MEMORY_MIB_MAX)?;
    }
    validate::token("address", address, ADDRESS_LEN_MAX)?;
    validate::range("capacity.vcpus", capacity.vcpus, 1, HOST_VCPUS_MAX)?;
    validate::range("capacity.memory_mib", capacity.memory_mib, 1, HOST_MEMORY_MIB_MAX)?;
    validate::labels("labels", labels)?;
    let Some(host) = d.state.host(name) else {
        d.guard(ResourceKey::Host(name.to_owned()));
        d.emit(Event::HostRegistered {
            name: name.to_owned(),
            address: address.to_owned(),
            capacity,
            labels: labels.clone(),
        });
        if vm_limits.is_some() {
            d.emit(Event::HostVmLimits { name: name.to_owned(), limits: vm_limits });
        }
        return Ok(());
    };
    d.guard(ResourceKey::Host(name.to_owned()));
    if !host.allocated.fits_within(capacity) {
        return Err(Rejection::precondition(
            ResourceKind::Host,
            name,
            format!(
                "capacity {} vCPUs / {} MiB is below what its domains use ({} vCPUs / {} MiB)",
                capacity.vcpus, capacity.memory_mib, host.allocated.vcpus, host.allocated.memory_mib
            ),
        ));
    }
    if host.address != address || host.capacity != capacity || &host.labels != labels {
        d.emit(Event::HostUpdated {
            name: name.to_owned(),
            address: address.to_owned(),
            capacity,
            labels: labels.clone(),
        });
    }
    if host.vm_limits != vm_limits {
        d.emit(Event::HostVmLimits { name: name.to_owned(), limits: vm_limits });
    }
    if matches!(host.state, HostState::Fenced | HostState::Left) {
        d.emit(Event::HostStateChanged { name: name.to_owned(), state: HostState::Joining });
    }
    Ok(())
}

pub(super) fn set_state(d: &mut Draft<'_>, name: &str, to: HostState) -> Result<(), Rejection> {
    let host = d.host(name)?;
    if host.state == to {
        if to == HostState::Fenced {
            // Runs a full proposal could not carry are lost now.
            super::ha::lose_runs(d, name);
        }
        return Ok(());
    }
    if !host.state.may_become(to) {
        let hint = if to == HostState::Joining { "; register the host again to rejoin" } else { "" };
        return Err(Rejection::precondition(
            ResourceKind::Host,
            name,
            format!("cannot go from {} to {to}{hint}", host.state),
        ));
    }
    if to == HostState::Left {
        if let Some(s) = d.state.snapshots_asked_of(name).next() {
            return Err(Rejection::precondition(
                ResourceKind::Host,
                name,
                format!("is still taking snapshot {}/{}", s.domain, s.name),
            ));
        }
    }
    if to == HostState::Left {
        // A live host may still be working on it: it is the host's to finish (only a
        // fenced host's lease guarantees it commits nothing more). A fenced host's
        // shared-pool operations wait for a ready host to take them.
        let fenced = host.state == HostState::Fenced;
        if let Some(v) = d.state.volumes_asked_of(name).find(|v| !fenced || v.host.is_none()) {
            let wait = if fenced { "; it goes once a ready host takes that over" } else { "" };
            return Err(Rejection::precondition(
                ResourceKind::Host,
                name,
                format!("is still {} volume {}{wait}", v.state.name(), v.id),
            ));
        }
    }
    if to == HostState::Left && !host.domains.is_empty() {
        return Err(Rejection::precondition(
            ResourceKind::Host,
            name,
            format!("still holds {} domains; drain it first", host.domains.len()),
        ));
    }
    d.emit(Event::HostStateChanged { name: name.to_owned(), state: to });
    if to == HostState::Fenced {
        // Fencing is the point after which its runs may start elsewhere: they end here.
        super::ha::lose_runs(d, name);
    }
    if to == HostState::Left {
        super::storage::abandon_volume_ops(d, name);
    }

    Ok(())
}

pub(super) fn clear(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    d.host(name)?;
    if d.state.fences_of(name).is_none() {
        return Err(Rejection::precondition(
            ResourceKind::Host,
            name,
            "was not fenced lately; nothing to clear",
        ));
    }
    d.emit(Event::HostCleared { name: name.to_owned() });
    Ok(())
}

pub(super) fn set_settings(d: &mut Draft<'_>, ha_reserve_hosts: u32) -> Result<(), Rejection> {
    validate::range("ha_reserve_hosts", ha_reserve_hosts, 0, HA_RESERVE_HOSTS_MAX)?;
    d.guard(ResourceKey::Cluster);
    if d.state.settings().ha_reserve_hosts != ha_reserve_hosts {
        d.emit(Event::ClusterSettingsChanged { ha_reserve_hosts });
    }
    Ok(())
}
