use serde::{Deserialize, Serialize};

use super::{MigrationId, VolumeRef};

/// The kinds of resource, for messages and indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceKind {
    Host,
    Domain,
    Network,
    Pool,
    Volume,
    Snapshot,
    Migration,
    /// The cluster as a whole (its settings).
    Cluster,
    /// A bearer token.
    Token,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Host => "host",
            ResourceKind::Domain => "domain",
            ResourceKind::Network => "network",
            ResourceKind::Pool => "pool",
            ResourceKind::Volume => "volume",
            ResourceKind::Snapshot => "snapshot",
            ResourceKind::Migration => "migration",
            ResourceKind::Cluster => "cluster",
            ResourceKind::Token => "token",
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource's identity. Proposals guard on the versions of these; the event archive
/// indexes events by them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKey {
    Host(String),
    Domain(String),
    Network(String),
    Pool(String),
    Volume(VolumeRef),
    Snapshot {
        domain: String,
        name: String,
    },
    Migration(MigrationId),
    /// The cluster's settings.
    Cluster,
    /// A bearer token, by its holder's name.
    Token(String),
}

impl ResourceKey {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ResourceKey::Host(_) => ResourceKind::Host,
            ResourceKey::Domain(_) => ResourceKind::Domain,
            ResourceKey::Network(_) => ResourceKind::Network,
            ResourceKey::Pool(_) => ResourceKind::Pool,
            ResourceKey::Volume(_) => ResourceKind::Volume,
            ResourceKey::Snapshot { .. } => ResourceKind::Snapshot,
            ResourceKey::Migration(_) => ResourceKind::Migration,
            ResourceKey::Cluster => ResourceKind::Cluster,
            ResourceKey::Token(_) => ResourceKind::Token,
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceKey::Host(n)
            | ResourceKey::Domain(n)
            | ResourceKey::Network(n)
            | ResourceKey::Pool(n)
            | ResourceKey::Token(n) => write!(f, "{} {n}", self.kind()),
            ResourceKey::Volume(v) => write!(f, "volume {v}"),
            ResourceKey::Snapshot { domain, name } => write!(f, "snapshot {domain}/{name}"),
            ResourceKey::Migration(id) => write!(f, "migration {id}"),
            ResourceKey::Cluster => f.write_str("cluster settings"),
        }
    }
}
