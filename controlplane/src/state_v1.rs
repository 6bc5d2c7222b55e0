//! The state as codec format version 1 encoded it, for decoding old snapshots and
//! checkpoints. Version 2 added a snapshot's `state` (taken by a host, pending, failed)
//! and a domain's `restore_from`; a version-1 snapshot record becomes
//! `SnapshotState::RecordOnly` (it was never backed by a file), and no domain restores.
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;

use crate::model::{
    DesiredState, Domain, DomainSpec, DomainStatus, MigrationId, Pool, Snapshot, SnapshotKind, SnapshotState,
    StopMode, VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

#[derive(Deserialize)]
struct DomainV1 {
    name: String,
    spec: Arc<DomainSpec>,
    desired: DesiredState,
    stop_mode: StopMode,
    reboots: u64,
    status: DomainStatus,
    current_snapshot: Option<String>,
    migration: Option<MigrationId>,
    defined_ms: u64,
    version: u64,
}

#[derive(Deserialize)]
struct SnapshotV1 {
    domain: String,
    name: String,
    parent: Option<String>,
    kind: SnapshotKind,
    created_ms: u64,
    version: u64,
}

#[derive(Deserialize)]
pub(crate) struct StateV1 {
    last_seq: u64,
    hosts: BTreeMap<String, crate::state_v6::HostV1>,
    domains: BTreeMap<String, DomainV1>,
    networks: BTreeMap<String, crate::state_v5::NetworkV1>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, crate::state_v4::VolumeV1>,
    snapshots: BTreeMap<(String, String), SnapshotV1>,
    migrations: BTreeMap<MigrationId, crate::state_v9::MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
}

impl From<StateV1> for State {
    fn from(v1: StateV1) -> State {
        let domains = v1
            .domains
            .into_iter()
            .map(|(k, d)| {
                let domain = Domain {
                    name: d.name,
                    spec: d.spec,
                    desired: d.desired,
                    stop_mode: d.stop_mode,
                    reboots: d.reboots,
                    status: d.status,
                    current_snapshot: d.current_snapshot,
                    restore_from: None,
                    ha_restarts: Vec::new(),
                    migration: d.migration,
                    defined_ms: d.defined_ms,
                    version: d.version,
                };
                (k, domain)
            })
            .collect();
        let snapshots = v1
            .snapshots
            .into_iter()
            .map(|(k, s)| {
                let snapshot = Snapshot {
                    domain: s.domain,
                    name: s.name,
                    parent: s.parent,
                    kind: s.kind,
                    created_ms: s.created_ms,
                    version: s.version,
                    state: SnapshotState::RecordOnly,
                    // As replaying its `SnapshotCreated` gives: no file is named by it.
                    id: 0,
                    disks: Vec::new(),
                };
                (k, snapshot)
            })
            .collect();
        State {
            last_seq: v1.last_seq,
            hosts: crate::state_v6::upgrade_hosts(v1.hosts),
            domains,
            networks: crate::state_v5::upgrade_networks(v1.networks),
            pools: v1.pools,
            volumes: crate::state_v4::upgrade_volumes(v1.volumes),
            snapshots,
            migrations: crate::state_v9::migrations(v1.migrations),
            ended_migrations: v1.ended_migrations,
            requests: v1.requests,
            settings: Default::default(),
            fences: BTreeMap::new(),
            tokens: BTreeMap::new(),
        }
    }
}
