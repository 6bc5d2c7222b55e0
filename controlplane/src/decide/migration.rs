//! Migration commands: the saga's steps. Before the commit (`CommitMigration`, or a
//! source host's `Switch` report) the source owns the domain and a failure rolls back;
//! the commit moves ownership to the target. Hosts report the data plane's steps
//! (`ReportMigration`): the target's address, the copy's progress, the switch-over,
//! the final numbers, a failure.

use super::Draft;
use crate::event::Event;
use crate::limits::{MIGRATION_DOWNTIME_MS_MAX, REASON_LEN_MAX};
use std::net::SocketAddr;

use crate::model::{
    DesiredState, HostState, MigrationId, MigrationPhase, MigrationProgress, MigrationReport, Phase,
    ResourceKind, SnapshotState, THROTTLE_PERCENT_MAX,
};
use crate::rejection::Rejection;
use crate::scheduler::{self, Misfit};
use crate::validate;

pub(super) fn start(
    d: &mut Draft<'_>,
    name: &str,
    target: Option<&str>,
    max_downtime_ms: Option<u64>,
) -> Result<(), Rejection> {
    if let Some(ms) = max_downtime_ms {
        check_downtime(ms)?;
    }
    let domain = d.domain(name)?;
    if let Some(id) = domain.migration {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            format!("is already migrating (migration {id})"),
        ));
    }
    if let Some(s) = d.state.snapshots_of(name).find(|s| matches!(s.state, SnapshotState::Pending { .. })) {
        return Err(Rejection::precondition(
            ResourceKind::Domain,
            name,
            format!("snapshot {} is still being taken", s.name),
        ));
    }
    let live = domain.desired != DesiredState::Stopped
        && matches!(domain.status.phase, Phase::Running | Phase::Paused);
    let Some(source) = domain.status.host.clone().filter(|_| live) else {
        return Err(Rejection::precondition(ResourceKind::Domain, name, "is not running"));
    };
    let source_host = d.host(&source)?;
    if !matches!(source_host.state, HostState::Ready | HostState::Maintenance) {
        return Err(Rejection::precondition(
            ResourceKind::Host,
            &source,
            format!("is {}; a live migration needs a healthy source", source_host.state),
        ));
    }
    for disk in &domain.spec.disks {
        let pool = d.pool(&disk.volume.pool)?;
        if !pool.config.shared {
            return Err(Rejection::precondition(
                ResourceKind::Volume,
                &disk.volume,
                format!("is on local pool {}; live migration needs shared storage", pool.name),
            ));
        }
    }
    let target = match target {
        Some(target) => {
            let host = d.host(target)?;
            if target == source {
                return Err(Rejection::invalid("target", format!("{target} is the domain's own host")));
            }
            match scheduler::live_target(source_host, host)
                .and_then(|()| scheduler::fit(d.state, host, name, &domain.spec))
            {
                Ok(()) => target.to_owned(),
                Err(m @ (Misfit::Vcpus | Misfit::Memory)) => {
                    return Err(Rejection::exhausted(ResourceKind::Host, target, m.to_string()));
                }
                Err(m) => return Err(Rejection::precondition(ResourceKind::Host, target, m.to_string())),
            }
        }
        None => scheduler::place_live(d.state, name, &domain.spec, source_host)
            .map_err(|why| Rejection::exhausted(ResourceKind::Domain, name, why.to_string()))?,
    };
    d.host(&target)?;
    d.emit(Event::MigrationStarted { domain: name.to_owned(), source, target });
    if let Some(max_downtime_ms) = max_downtime_ms {
        d.emit(Event::MigrationDowntimeSet { domain: name.to_owned(), max_downtime_ms });
    }
    Ok(())
}

/// An operator's longest pause for one migration: at least a millisecond (0, a copy that
/// never ends, is a host's test setting), at most [`MIGRATION_DOWNTIME_MS_MAX`].
fn check_downtime(ms: u64) -> Result<(), Rejection> {
    if !(1..=MIGRATION_DOWNTIME_MS_MAX).contains(&ms) {
        return Err(Rejection::invalid(
            "max_downtime_ms",
            format!("{ms} is not within 1..={MIGRATION_DOWNTIME_MS_MAX}"),
        ));
    }
    Ok(())
}

pub(super) fn set_downtime(
    d: &mut Draft<'_>,
    id: MigrationId,
    max_downtime_ms: u64,
) -> Result<(), Rejection> {
    check_downtime(max_downtime_ms)?;
    let m = live_migration(d, id)?;
    if m.phase >= MigrationPhase::Completing {
        return Err(Rejection::precondition(
            ResourceKind::Migration,
            id,
            format!("is {}: its last copy is under way", m.phase),
        ));
    }
    if m.max_downtime_ms == Some(max_downtime_ms) {
        return Ok(());
    }
    d.domain(&m.domain)?;
    d.emit(Event::MigrationDowntimeSet { domain: m.domain.clone(), max_downtime_ms });
    Ok(())
}

fn live_migration<'s>(d: &mut Draft<'s>, id: MigrationId) -> Result<&'s crate::model::Migration, Rejection> {
    let m = d.migration(id)?;
    if m.phase.is_ended() {
        let how = if m.phase == MigrationPhase::Committed { "committed" } else { "rolled back" };
        return Err(Rejection::precondition(ResourceKind::Migration, id, format!("has already {how}")));
    }
    Ok(m)
}

pub(super) fn progress(d: &mut Draft<'_>, id: MigrationId, phase: MigrationPhase) -> Result<(), Rejection> {
    if phase.is_ended() {
        return Err(Rejection::invalid("phase", "end a migration with CommitMigration or AbortMigration"));
    }
    let m = live_migration(d, id)?;
    if phase == m.phase {
        return Ok(());
    }
    if phase < m.phase {
        return Err(Rejection::precondition(
            ResourceKind::Migration,
            id,
            format!("cannot go back from {:?} to {phase:?}", m.phase),
        ));
    }
    d.emit(Event::MigrationPhaseChanged { id, phase });
    Ok(())
}

pub(super) fn commit(d: &mut Draft<'_>, id: MigrationId) -> Result<(), Rejection> {
    let m = live_migration(d, id)?;
    let target = d.host(&m.target)?;
    if !matches!(target.state, HostState::Ready | HostState::Maintenance) {
        return Err(Rejection::precondition(
            ResourceKind::Host,
            &m.target,
            format!("is {}; roll the migration back", target.state),
        ));
    }
    let domain = d.domain(&m.domain)?;
    d.emit(Event::MigrationCommitted { id, generation: domain.status.generation + 1 });
    Ok(())
}

pub(super) fn abort(d: &mut Draft<'_>, id: MigrationId, reason: &str) -> Result<(), Rejection> {
    validate::text("reason", reason, 1, REASON_LEN_MAX)?;
    let m = live_migration(d, id)?;
    d.domain(&m.domain)?;
    d.emit(Event::MigrationRolledBack { id, reason: reason.to_owned() });
    Ok(())
}

/// A host's report of a step of migration `id` (see [`MigrationReport`]).
pub(super) fn report(
    d: &mut Draft<'_>,
    id: MigrationId,
    host: &str,
    report: &MigrationReport,
) -> Result<(), Rejection> {
    let m = d.migration(id)?;
    let side = if host == m.source {
        Side::Source
    } else if host == m.target {
        Side::Target
    } else {
        return Err(Rejection::precondition(
            ResourceKind::Migration,
            id,
            format!("{host} is neither its source nor its target"),
        ));
    };
    let only = |wanted: Side, what: &str| -> Result<(), Rejection> {
        if side == wanted {
            Ok(())
        } else {
            Err(Rejection::precondition(
                ResourceKind::Migration,
                id,
                format!("only its {wanted:?} reports {what}"),
            ))
        }
    };
    match report {
        MigrationReport::TargetReady { address } => {
            only(Side::Target, "the target ready")?;
            let parsed: SocketAddr =
                address.parse().map_err(|e| Rejection::invalid("address", format!("{address:?}: {e}")))?;
            if parsed.ip().is_unspecified() || parsed.port() == 0 {
                return Err(Rejection::invalid("address", format!("{address} names no reachable listener")));
            }
            if m.target_address.as_deref() == Some(address.as_str()) {
                return Ok(()); // said before
            }
            let m = live_migration(d, id)?;
            if m.phase != MigrationPhase::Preparing || m.target_address.is_some() {
                return Err(Rejection::precondition(
                    ResourceKind::Migration,
                    id,
                    "has its target prepared already",
                ));
            }
            d.emit(Event::MigrationTargetReady { id, address: address.clone() });
            Ok(())
        }
        MigrationReport::Copying(p) | MigrationReport::Completing(p) => {
            only(Side::Source, "the copy's progress")?;
            check_progress(p, false)?;
            let m = live_migration(d, id)?;
            if m.target_address.is_none() {
                return Err(Rejection::precondition(
                    ResourceKind::Migration,
                    id,
                    "has no target address yet",
                ));
            }
            let phase = match report {
                MigrationReport::Copying(_) => MigrationPhase::Transferring,
                _ => MigrationPhase::Completing,
            };
            if m.phase < phase {
                d.emit(Event::MigrationPhaseChanged { id, phase });
            }
            if m.progress != *p {
                d.emit(Event::MigrationProgressed { id, progress: *p });
            }
            Ok(())
        }
        MigrationReport::Switch(p) => {
            only(Side::Source, "the switch-over")?;
            check_progress(p, false)?;
            let m = live_migration(d, id)?;
            if m.phase != MigrationPhase::Completing {
                return Err(Rejection::precondition(
                    ResourceKind::Migration,
                    id,
                    format!("is {}; the switch-over follows the last copy", m.phase),
                ));
            }
            if m.progress != *p {
                d.emit(Event::MigrationProgressed { id, progress: *p });
            }
            commit(d, id)
        }
        MigrationReport::Done(p) => {
            only(Side::Source, "the final numbers")?;
            check_progress(p, true)?;
            if m.phase != MigrationPhase::Committed {
                return Err(Rejection::precondition(
                    ResourceKind::Migration,
                    id,
                    format!("is {}; only a committed migration is done", m.phase),
                ));
            }
            if m.progress.downtime_ms.is_some() {
                return Ok(()); // said before
            }
            d.emit(Event::MigrationProgressed { id, progress: *p });
            Ok(())
        }
        MigrationReport::Failed { reason } => match m.phase {
            MigrationPhase::RolledBack => {
                validate::text("reason", reason, 1, REASON_LEN_MAX)?;
                Ok(())
            }
            MigrationPhase::Committed => Err(Rejection::precondition(
                ResourceKind::Migration,
                id,
                "has committed; the target owns the domain",
            )),
            _ => abort(d, id, reason),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

/// A progress report's numbers: a throttle in range; a downtime only with the final ones.
fn check_progress(p: &MigrationProgress, done: bool) -> Result<(), Rejection> {
    if p.throttle_percent > THROTTLE_PERCENT_MAX {
        return Err(Rejection::invalid(
            "throttle_percent",
            format!("{} is above {THROTTLE_PERCENT_MAX}", p.throttle_percent),
        ));
    }
    match (done, p.downtime_ms) {
        (true, None) => Err(Rejection::invalid("downtime_ms", "the final numbers carry the downtime")),
        (false, Some(_)) => Err(Rejection::invalid("downtime_ms", "only the final numbers carry a downtime")),
        _ => Ok(()),
    }
}
