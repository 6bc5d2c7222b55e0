//! The state as codec format version 9 encoded it (and, through this file's
//! [`MigrationV9`], every earlier one): version 10 added a migration's target address
//! and progress. Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use crate::model::{
    ClusterSettings, Domain, Host, HostFences, Migration, MigrationId, MigrationPhase, Network, Pool,
    Snapshot, Token, Volume, VolumeRef,
};
use crate::request_window::RequestWindow;
use crate::state::State;

/// A migration as versions 1 to 9 encoded it.
#[derive(Deserialize)]
pub(crate) struct MigrationV9 {
    id: MigrationId,
    domain: String,
    source: String,
    target: String,
    phase: MigrationPhase,
    reason: Option<String>,
    started_ms: u64,
    ended_ms: Option<u64>,
    version: u64,
}

impl From<MigrationV9> for Migration {
    fn from(m: MigrationV9) -> Migration {
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
            target_address: None,
            progress: Default::default(),
            max_downtime_ms: None,
        }
    }
}

/// Old migrations in today's shape.
pub(crate) fn migrations(old: BTreeMap<MigrationId, MigrationV9>) -> BTreeMap<MigrationId, Migration> {
    old.into_iter().map(|(id, m)| (id, m.into())).collect()
}

#[derive(Deserialize)]
pub(crate) struct StateV9 {
    last_seq: u64,
    hosts: BTreeMap<String, Host>,
    domains: BTreeMap<String, Domain>,
    networks: BTreeMap<String, Network>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, Volume>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
    settings: ClusterSettings,
    fences: BTreeMap<String, HostFences>,
    tokens: BTreeMap<String, Token>,
}

impl From<StateV9> for State {
    fn from(v9: StateV9) -> State {
        State {
            last_seq: v9.last_seq,
            hosts: v9.hosts,
            domains: v9.domains,
            networks: v9.networks,
            pools: v9.pools,
            volumes: v9.volumes,
            snapshots: v9.snapshots,
            migrations: migrations(v9.migrations),
            ended_migrations: v9.ended_migrations,
            requests: v9.requests,
            settings: v9.settings,
            fences: v9.fences,
            tokens: v9.tokens,
        }
    }
}
