//! The state as codec format version 6 encoded it, for decoding old snapshots and
//! checkpoints. Version 7 added a host's VM limits (hosts registered before said none:
//! `None`, only the cluster's own limits apply). Versions 1 to 5 hold hosts of the same
//! layout, so they decode theirs through [`HostV1`] too.
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Deserialize;

use crate::model::{
    ClusterSettings, Domain, Host, HostFences, HostState, Labels, MigrationId, Network, Pool, Resources,
    Snapshot, Volume, VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

/// A host as formats 1 to 6 encoded it.
#[derive(Deserialize)]
pub(crate) struct HostV1 {
    name: String,
    address: String,
    capacity: Resources,
    allocated: Resources,
    labels: Labels,
    state: HostState,
    domains: BTreeSet<String>,
    registered_ms: u64,
    version: u64,
}

/// The hosts of an old state as this build holds them: no VM limits said.
pub(crate) fn upgrade_hosts(hosts: BTreeMap<String, HostV1>) -> BTreeMap<String, Host> {
    hosts
        .into_iter()
        .map(|(k, h)| {
            let host = Host {
                name: h.name,
                address: h.address,
                capacity: h.capacity,
                allocated: h.allocated,
                labels: h.labels,
                state: h.state,
                domains: h.domains,
                registered_ms: h.registered_ms,
                version: h.version,
                vm_limits: None,
            };
            (k, host)
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct StateV6 {
    last_seq: u64,
    hosts: BTreeMap<String, HostV1>,
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

impl From<StateV6> for State {
    fn from(v6: StateV6) -> State {
        State {
            last_seq: v6.last_seq,
            hosts: upgrade_hosts(v6.hosts),
            domains: v6.domains,
            networks: v6.networks,
            pools: v6.pools,
            volumes: v6.volumes,
            snapshots: v6.snapshots,
            migrations: crate::state_v9::migrations(v6.migrations),
            ended_migrations: v6.ended_migrations,
            requests: v6.requests,
            settings: v6.settings,
            fences: v6.fences,
            tokens: BTreeMap::new(),
        }
    }
}
