//! The state as codec format versions 7 and 8 encoded it, for decoding old snapshots and
//! checkpoints. Version 9 added bearer tokens (older states held none).
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use crate::model::{
    ClusterSettings, Domain, Host, HostFences, MigrationId, Network, Pool, Snapshot, Volume, VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

#[derive(Deserialize)]
pub(crate) struct StateV8 {
    last_seq: u64,
    hosts: BTreeMap<String, Host>,
    domains: BTreeMap<String, Domain>,
    networks: BTreeMap<String, Network>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, Volume>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, crate::state_v9::MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
    settings: ClusterSettings,
    fences: BTreeMap<String, HostFences>,
}

impl From<StateV8> for State {
    fn from(v8: StateV8) -> State {
        State {
            last_seq: v8.last_seq,
            hosts: v8.hosts,
            domains: v8.domains,
            networks: v8.networks,
            pools: v8.pools,
            volumes: v8.volumes,
            snapshots: v8.snapshots,
            migrations: crate::state_v9::migrations(v8.migrations),
            ended_migrations: v8.ended_migrations,
            requests: v8.requests,
            settings: v8.settings,
            fences: v8.fences,
            tokens: BTreeMap::new(),
        }
    }
}
