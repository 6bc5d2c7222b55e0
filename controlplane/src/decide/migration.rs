//! Migration commands: the saga's steps. Before `CommitMigration` the source owns the
//! domain and a failure rolls back; the commit moves ownership to the target.

use super::Draft;
use crate::event::Event;
use crate::limits::REASON_LEN_MAX;
use crate::model::{
    DesiredState, HostState, MigrationId, MigrationPhase, Phase, ResourceKind, SnapshotState,
};
use crate::rejection::Rejection;
use crate::scheduler::{self, Misfit};
use crate::validate;

pub(super) fn start(d: &mut Draft<'_>, name: &str, target: Option<&str>) -> Result<(), Rejection> {
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
            match scheduler::fit(d.state, host, name, &domain.spec) {
                Ok(()) => target.to_owned(),
                Err(m @ (Misfit::Vcpus | Misfit::Memory)) => {
                    return Err(Rejection::exhausted(ResourceKind::Host, target, m.to_string()));
                }
                Err(m) => return Err(Rejection::precondition(ResourceKind::Host, target, m.to_string())),
            }
        }
        None => scheduler::place(d.state, name, &domain.spec, Some(&source))
            .map_err(|why| Rejection::exhausted(ResourceKind::Domain, name, why.to_string()))?,
    };
    d.host(&target)?;
    d.emit(Event::MigrationStarted { domain: name.to_owned(), source, target });
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
