//! The resource model: what the replicated state is made of.
//!
//! Every resource carries a `version`: the sequence number of the last event that changed
//! it (0 means "absent"). Proposals guard on these versions.

/// Gives a fieldless enum its words: `as_str`, `Display` and `FromStr`, the one spelling
/// the CLI, logs and error messages use (the wire has its own enums, converted in
/// `proto::convert`).
macro_rules! words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<$ty, String> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    other => Err(format!("{other:?} is not one of: {}", [$($word),+].join(", "))),
                }
            }
        }
    };
}

mod cidr;
mod cluster;
mod domain;
mod host;
mod mac;
mod migration;
mod network;
mod pool;
mod resource_key;
mod resources;
mod snapshot;
mod token;
mod volume;

pub use cidr::{Cidr, CidrError};
pub use cluster::{ClusterSettings, HostFences};
pub use domain::{
    Boot, DesiredState, Disk, Domain, DomainSpec, DomainStatus, HaPolicy, Nic, ObservedPhase, Phase,
    Placement, StopMode,
};
pub use host::{Host, HostState, VmLimits, DRIVER_LABEL};
pub use mac::{Mac, MacError};
pub use migration::{
    Migration, MigrationId, MigrationPhase, MigrationProgress, MigrationReport, THROTTLE_PERCENT_MAX,
};
pub use network::{Lease, Network, NetworkConfig, NetworkMode, VNI_MAX};
pub use pool::{Pool, PoolConfig, PoolKind};
pub use resource_key::{ResourceKey, ResourceKind};
pub use resources::Resources;
pub use snapshot::{Snapshot, SnapshotKind, SnapshotRef, SnapshotState};
pub use token::{format_bearer, parse_bearer, secret_sha256, Role, Token, TOKEN_SECRET_BYTES};
pub use volume::{AttachMode, Volume, VolumeFormat, VolumeOp, VolumeRef, VolumeState};

/// Labels on a host, or labels a domain requires of its host.
pub type Labels = std::collections::BTreeMap<String, String>;
