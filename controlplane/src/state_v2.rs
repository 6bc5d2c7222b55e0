//! The state as codec format version 2 encoded it, for decoding old snapshots and
//! checkpoints. Version 3 added a domain's `ha_restarts` (none were counted before).
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;

use crate::model::{
    DesiredState, Domain, DomainSpec, DomainStatus, MigrationId, Pool, Snapshot, SnapshotRef, StopMode,
    VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

#[derive(Deserialize)]
struct DomainV2 {
    name: String,
    spec: Arc<DomainSpec>,
    desired: DesiredState,
    stop_mode: StopMode,
    reboots: u64,
    status: DomainStatus,
    current_snapshot: Option<String>,
    restore_from: Option<SnapshotRef>,
    migration: Option<MigrationId>,
    defined_ms: u64,
    version: u64,
}

#[derive(Deserialize)]
pub(crate) struct StateV2 {
    last_seq: u64,
    hosts: BTreeMap<String, crate::state_v6::HostV1>,
    domains: BTreeMap<String, DomainV2>,
    networks: BTreeMap<String, crate::state_v5::NetworkV1>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, crate::state_v4::VolumeV1>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, crate::state_v9::MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
}

impl From<StateV2> for State {
    fn from(v2: StateV2) -> State {
        let domains = v2
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
                    restore_from: d.restore_from,
                    ha_restarts: Vec::new(),
                    migration: d.migration,
                    defined_ms: d.defined_ms,
                    version: d.version,
                };
                (k, domain)
            })
            .collect();
        State {
            last_seq: v2.last_seq,
            hosts: crate::state_v6::upgrade_hosts(v2.hosts),
            domains,
            networks: crate::state_v5::upgrade_networks(v2.networks),
            pools: v2.pools,
            volumes: crate::state_v4::upgrade_volumes(v2.volumes),
            snapshots: v2.snapshots,
            migrations: crate::state_v9::migrations(v2.migrations),
            ended_migrations: v2.ended_migrations,
            requests: v2.requests,
            settings: Default::default(),
            fences: BTreeMap::new(),
            tokens: BTreeMap::new(),
        }
    }
}
