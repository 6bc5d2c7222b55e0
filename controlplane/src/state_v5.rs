//! The state as codec format version 5 encoded it, for decoding old snapshots and
//! checkpoints. Version 6 added a network's VNI (networks created before have none
//! recorded: 0, their VNI derived from their name). Versions 1 to 4 hold networks of the
//! same layout, so they decode theirs through [`NetworkV1`] too.
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::model::{
    ClusterSettings, Domain, HostFences, Lease, Mac, MigrationId, Network, NetworkConfig, Pool, Snapshot,
    Volume, VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

/// A network as formats 1 to 5 encoded it.
#[derive(Deserialize)]
pub(crate) struct NetworkV1 {
    name: String,
    config: NetworkConfig,
    leases: BTreeMap<Mac, Lease>,
    used_ips: BTreeSet<Ipv4Addr>,
    created_ms: u64,
    version: u64,
}

/// The networks of an old state as this build holds them: no VNI recorded.
pub(crate) fn upgrade_networks(networks: BTreeMap<String, NetworkV1>) -> BTreeMap<String, Network> {
    networks
        .into_iter()
        .map(|(k, n)| {
            let network = Network {
                name: n.name,
                config: n.config,
                leases: n.leases,
                used_ips: n.used_ips,
                created_ms: n.created_ms,
                version: n.version,
                vni: 0,
            };
            (k, network)
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct StateV5 {
    last_seq: u64,
    hosts: BTreeMap<String, crate::state_v6::HostV1>,
    domains: BTreeMap<String, Domain>,
    networks: BTreeMap<String, NetworkV1>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, Volume>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, crate::state_v9::MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
    settings: ClusterSettings,
    fences: BTreeMap<String, HostFences>,
}

impl From<StateV5> for State {
    fn from(v5: StateV5) -> State {
        State {
            last_seq: v5.last_seq,
            hosts: crate::state_v6::upgrade_hosts(v5.hosts),
            domains: v5.domains,
            networks: upgrade_networks(v5.networks),
            pools: v5.pools,
            volumes: v5.volumes,
            snapshots: v5.snapshots,
            migrations: crate::state_v9::migrations(v5.migrations),
            ended_migrations: v5.ended_migrations,
            requests: v5.requests,
            settings: v5.settings,
            fences: v5.fences,
            tokens: BTreeMap::new(),
        }
    }
}
