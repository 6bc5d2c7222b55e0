//! The replicated state: every resource, as the events so far have made it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{
    ClusterSettings, Domain, Host, HostFences, Migration, MigrationId, Network, Pool, ResourceKey, Snapshot,
    SnapshotState, Token, Volume, VolumeRef, VolumeState,
};
use crate::request_window::RequestWindow;

/// The whole cluster state. Only [`crate::apply`] changes it. Every map is ordered, so
/// its encoding (and so its hash) is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) last_seq: u64,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) domains: BTreeMap<String, Domain>,
    pub(crate) networks: BTreeMap<String, Network>,
    pub(crate) pools: BTreeMap<String, Pool>,
    pub(crate) volumes: BTreeMap<VolumeRef, Volume>,
    /// Keyed by (domain, snapshot name).
    pub(crate) snapshots: BTreeMap<(String, String), Snapshot>,
    pub(crate) migrations: BTreeMap<MigrationId, Migration>,
    /// Ended migrations still kept, oldest first (bounded by `ENDED_MIGRATIONS_KEPT_MAX`).
    pub(crate) ended_migrations: VecDeque<MigrationId>,
    pub(crate) requests: RequestWindow,
    pub(crate) settings: ClusterSettings,
    /// Hosts fenced lately (absent: never, or cleared).
    pub(crate) fences: BTreeMap<String, HostFences>,
    /// Bearer tokens, by holder name.
    pub(crate) tokens: BTreeMap<String, Token>,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// A state assembled from what a read of the API listed (hostd without a replica of
    /// its own reads this way, then uses the same code as with one). `last_seq` is the
    /// newest version among the resources: the reads must be linearizable and the last of
    /// them the one whose completeness matters. It holds no request window, settings or
    /// fence history.
    pub fn from_listing(
        hosts: impl IntoIterator<Item = Host>,
        domains: impl IntoIterator<Item = Domain>,
        networks: impl IntoIterator<Item = Network>,
        pools: impl IntoIterator<Item = Pool>,
        volumes: impl IntoIterator<Item = Volume>,
        snapshots: impl IntoIterator<Item = Snapshot>,
        migrations: impl IntoIterator<Item = Migration>,
    ) -> State {
        let mut state = State {
            hosts: hosts.into_iter().map(|h| (h.name.clone(), h)).collect(),
            domains: domains.into_iter().map(|d| (d.name.clone(), d)).collect(),
            networks: networks.into_iter().map(|n| (n.name.clone(), n)).collect(),
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            volumes: volumes.into_iter().map(|v| (v.id.clone(), v)).collect(),
            snapshots: snapshots.into_iter().map(|s| ((s.domain.clone(), s.name.clone()), s)).collect(),
            migrations: migrations.into_iter().map(|m| (m.id, m)).collect(),
            ..State::default()
        };
        state.last_seq = [
            state.hosts.values().map(|h| h.version).max(),
            state.domains.values().map(|d| d.version).max(),
            state.networks.values().map(|n| n.version).max(),
            state.pools.values().map(|p| p.version).max(),
            state.volumes.values().map(|v| v.version).max(),
            state.snapshots.values().map(|s| s.version).max(),
            state.migrations.values().map(|m| m.version).max(),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        state
    }

    /// Sequence number of the last applied event (0 for the empty state).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn hosts(&self) -> &BTreeMap<String, Host> {
        &self.hosts
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    pub fn domains(&self) -> &BTreeMap<String, Domain> {
        &self.domains
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    pub fn networks(&self) -> &BTreeMap<String, Network> {
        &self.networks
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.get(name)
    }

    pub fn pools(&self) -> &BTreeMap<String, Pool> {
        &self.pools
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    pub fn volumes(&self) -> &BTreeMap<VolumeRef, Volume> {
        &self.volumes
    }

    pub fn volume(&self, id: &VolumeRef) -> Option<&Volume> {
        self.volumes.get(id)
    }

    pub fn snapshots(&self) -> &BTreeMap<(String, String), Snapshot> {
        &self.snapshots
    }

    /// The volumes with an operation asked of `host`.
    pub fn volumes_asked_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Volume> + 'a {
        self.volumes
            .values()
            .filter(move |v| matches!(&v.state, VolumeState::Pending { host: h, .. } if h == host))
    }

    /// The snapshots pending on `host`.
    pub fn snapshots_asked_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Snapshot> + 'a {
        self.snapshots
            .values()
            .filter(move |s| matches!(&s.state, SnapshotState::Pending { host: h, .. } if h == host))
    }

    pub fn snapshot(&self, domain: &str, name: &str) -> Option<&Snapshot> {
        self.snapshots.get(&(domain.to_owned(), name.to_owned()))
    }

    /// The snapshots of one domain, by name.
    pub fn snapshots_of<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a Snapshot> + 'a {
        self.snapshots
            .range((domain.to_owned(), String::new())..)
            .take_while(move |((d, _), _)| d == domain)
            .map(|(_, s)| s)
    }

    pub fn migrations(&self) -> &BTreeMap<MigrationId, Migration> {
        &self.migrations
    }

    pub fn migration(&self, id: MigrationId) -> Option<&Migration> {
        self.migrations.get(&id)
    }

    pub fn requests(&self) -> &RequestWindow {
        &self.requests
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// How often host `name` was fenced lately, and whether it is flapping.
    pub fn fences_of(&self, name: &str) -> Option<&HostFences> {
        self.fences.get(name)
    }

    pub fn token(&self, name: &str) -> Option<&Token> {
        self.tokens.get(name)
    }

    /// Every bearer token, by name.
    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values()
    }

    /// Whether host `name` is left out of placement for failing too often.
    pub fn is_flapping(&self, name: &str) -> bool {
        self.fences.get(name).is_some_and(|f| f.flapping)
    }

    /// The version of a resource; 0 when it does not exist.
    pub fn version_of(&self, key: &ResourceKey) -> u64 {
        match key {
            ResourceKey::Host(n) => self.hosts.get(n).map_or(0, |r| r.version),
            ResourceKey::Domain(n) => self.domains.get(n).map_or(0, |r| r.version),
            ResourceKey::Network(n) => self.networks.get(n).map_or(0, |r| r.version),
            ResourceKey::Pool(n) => self.pools.get(n).map_or(0, |r| r.version),
            ResourceKey::Volume(v) => self.volumes.get(v).map_or(0, |r| r.version),
            ResourceKey::Snapshot { domain, name } => {
                self.snapshots.get(&(domain.clone(), name.clone())).map_or(0, |r| r.version)
            }
            ResourceKey::Migration(id) => self.migrations.get(id).map_or(0, |r| r.version),
            ResourceKey::Cluster => self.settings.version,
            ResourceKey::Token(n) => self.tokens.get(n).map_or(0, |t| t.version),
        }
    }
}
