//! The state as codec format version 3 encoded it, for decoding old snapshots and
//! checkpoints. Version 4 added the cluster's settings and its hosts' recent fencings
//! (none were kept before: the settings are the defaults, no host is flapping).
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use crate::model::{Domain, MigrationId, Pool, Snapshot, VolumeRef};
use crate::request_window::RequestWindow;
use crate::state::State;

#[derive(Deserialize)]
pub(crate) struct StateV3 {
    last_seq: u64,
    hosts: BTreeMap<String, crate::state_v6::HostV1>,
    domains: BTreeMap<String, Domain>,
    networks: BTreeMap<String, crate::state_v5::NetworkV1>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, crate::state_v4::VolumeV1>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, crate::state_v9::MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
}

impl From<StateV3> for State {
    fn from(v3: StateV3) -> State {
        State {
            last_seq: v3.last_seq,
            hosts: crate::state_v6::upgrade_hosts(v3.hosts),
            domains: v3.domains,
            networks: crate::state_v5::upgrade_networks(v3.networks),
            pools: v3.pools,
            volumes: crate::state_v4::upgrade_volumes(v3.volumes),
            snapshots: v3.snapshots,
            migrations: crate::state_v9::migrations(v3.migrations),
            ended_migrations: v3.ended_migrations,
            requests: v3.requests,
            settings: Default::default(),
            fences: BTreeMap::new(),
            tokens: BTreeMap::new(),
        }
    }
}
