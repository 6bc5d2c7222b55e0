//! The state as codec format version 4 encoded it, for decoding old snapshots and
//! checkpoints. Version 5 added a volume's state, host and last failure (hosts made no
//! volume files before: every older volume is `RecordOnly`). Versions 1 to 3 hold volumes
//! of the same layout, so they decode theirs through [`VolumeV1`] too.
//! Field order is the encoding: never change this file.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use crate::model::{
    AttachMode, ClusterSettings, Domain, HostFences, MigrationId, Pool, Snapshot, Volume, VolumeFormat,
    VolumeRef, VolumeState,
};
use crate::request_window::RequestWindow;
use crate::state::State;

/// A volume as formats 1 to 4 encoded it.
#[derive(Deserialize)]
pub(crate) struct VolumeV1 {
    id: VolumeRef,
    format: VolumeFormat,
    capacity_mib: u64,
    allocation_mib: u64,
    backing: Option<String>,
    clones: u64,
    attachments: BTreeMap<String, AttachMode>,
    created_ms: u64,
    version: u64,
}

/// The volumes of an old state as this build holds them: record-only.
pub(crate) fn upgrade_volumes(volumes: BTreeMap<VolumeRef, VolumeV1>) -> BTreeMap<VolumeRef, Volume> {
    volumes
        .into_iter()
        .map(|(k, v)| {
            let volume = Volume {
                id: v.id,
                format: v.format,
                capacity_mib: v.capacity_mib,
                allocation_mib: v.allocation_mib,
                backing: v.backing,
                clones: v.clones,
                attachments: v.attachments,
                created_ms: v.created_ms,
                version: v.version,
                state: VolumeState::RecordOnly,
                host: None,
                failure: None,
            };
            (k, volume)
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct StateV4 {
    last_seq: u64,
    hosts: BTreeMap<String, crate::state_v6::HostV1>,
    domains: BTreeMap<String, Domain>,
    networks: BTreeMap<String, crate::state_v5::NetworkV1>,
    pools: BTreeMap<String, Pool>,
    volumes: BTreeMap<VolumeRef, VolumeV1>,
    snapshots: BTreeMap<(String, String), Snapshot>,
    migrations: BTreeMap<MigrationId, crate::state_v9::MigrationV9>,
    ended_migrations: VecDeque<MigrationId>,
    requests: RequestWindow,
    settings: ClusterSettings,
    fences: BTreeMap<String, HostFences>,
}

impl From<StateV4> for State {
    fn from(v4: StateV4) -> State {
        State {
            last_seq: v4.last_seq,
            hosts: crate::state_v6::upgrade_hosts(v4.hosts),
            domains: v4.domains,
            networks: crate::state_v5::upgrade_networks(v4.networks),
            pools: v4.pools,
            volumes: upgrade_volumes(v4.volumes),
            snapshots: v4.snapshots,
            migrations: crate::state_v9::migrations(v4.migrations),
            ended_migrations: v4.ended_migrations,
            requests: v4.requests,
            settings: v4.settings,
            fences: v4.fences,
            tokens: BTreeMap::new(),
        }
    }
}
