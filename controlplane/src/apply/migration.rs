//! Applying the events of migrations.
// Each function takes the fields of its event as the event holds them.
#![allow(clippy::ptr_arg)]

use super::*;

pub(super) fn started(
    state: &mut State,
    seq: u64,
    now: u64,
    domain: &String,
    source: &String,
    target: &String,
) {
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
        target_address: None,
        progress: Default::default(),
        max_downtime_ms: None,
    };
    state.migrations.insert(seq, migration);
}

pub(super) fn phase_changed(state: &mut State, seq: u64, id: &MigrationId, phase: &MigrationPhase) {
    let m = migration_mut(state, *id);
    assert!(!phase.is_ended() && *phase > m.phase, "migration {id} moves forward to a live phase");
    m.phase = *phase;
    m.version = seq;
}

pub(super) fn target_ready(state: &mut State, seq: u64, id: &MigrationId, address: &String) {
    let m = migration_mut(state, *id);
    assert!(
        m.phase == MigrationPhase::Preparing && m.target_address.is_none(),
        "migration {id} is prepared once"
    );
    m.target_address = Some(address.clone());
    m.version = seq;
}

pub(super) fn progressed(state: &mut State, seq: u64, id: &MigrationId, progress: &MigrationProgress) {
    let m = migration_mut(state, *id);
    assert!(m.progress.downtime_ms.is_none(), "migration {id} has its final numbers");
    m.progress = *progress;
    m.version = seq;
}

pub(super) fn downtime_set(state: &mut State, seq: u64, domain: &String, max_downtime_ms: &u64) {
    let id = domain_mut(state, domain).migration.expect("the domain migrates");
    let m = migration_mut(state, id);
    assert!(m.phase < MigrationPhase::Completing, "migration {id} still copies");
    m.max_downtime_ms = Some(*max_downtime_ms);
    m.version = seq;
}

pub(super) fn committed(state: &mut State, seq: u64, now: u64, id: &MigrationId, generation: &u64) {
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

pub(super) fn rolled_back(state: &mut State, seq: u64, now: u64, id: &MigrationId, reason: &String) {
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
