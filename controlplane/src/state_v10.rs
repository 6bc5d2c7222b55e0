//! The state as codec format version 10 encoded it: version 11 added a migration's
//! operator-set longest pause. Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use crate::model::{
    ClusterSettings, Domain, Host, HostFences, Migration, MigrationId, MigrationPhase, MigrationProgress,
    Network, Pool, Snapshot, Token, Volume, VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

/// A migration as version 10 encoded it.
#[derive(Deserialize)]
struct MigrationV10 {
    id: MigrationId,
    domain: String,
    source: String,
    target: String,
    phase: MigrationPhase,
    reason: Option<String>,
    started_ms: u64,
    ended_ms: Option<u64>,
    version: u64,
    target_address: Option<String>,
    progress: MigrationProgress,
}

impl From<MigrationV10> for Migration {
    fn from(m: MigrationV10) -> Migration {
        Migration {
            id: m.id,
            domain: m.domain,
            source: m.source,
            target: m.target,
            phase: m.phase,
            reason: m.reason,
            started_ms: m.started_ms,
            ended_ms: m.ended_ms,
            version: m.version,
            target_address: m.target_address,
            progress: m.progress,
            max_downtime_ms: None,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct StateV10 {
    last_seq: u64,
    hosts: BTreeMap<String, Host>,
    domains: BTreeMap<String, Domain>,
    networks: BTreeMap<String, Network>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, Volume>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, MigrationV10>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
    settings: ClusterSettings,
    fences: BTreeMap<String, HostFences>,
    tokens: BTreeMap<String, Token>,
}

impl From<StateV10> for State {
    fn from(v10: StateV10) -> State {
        State {
            last_seq: v10.last_seq,
            hosts: v10.hosts,
            domains: v10.domains,
            networks: v10.networks,
            pools: v10.pools,
            volumes: v10.volumes,
            snapshots: v10.snapshots,
            migrations: v10.migrations.into_iter().map(|(id, m)| (id, m.into())).collect(),
            ended_migrations: v10.ended_migrations,
            requests: v10.requests,
            settings: v10.settings,
            fences: v10.fences,
            tokens: v10.tokens,
        }
    }
}
