//! Every limit the core enforces, in one place. Units are the last word of each name.
//!
//! `decide` rejects anything outside these bounds with `InvalidArgument` (or
//! `ResourceExhausted` where a count of existing things is full). The API layer enforces
//! its own message-size limits before a request reaches the core.

/// Longest resource name (hosts, domains, networks, pools, volumes, snapshots, groups).
/// Names are 1 to this many characters of `[a-z0-9-]`.
pub const NAME_LEN_MAX: usize = 63;
/// Longest label key; keys are `[a-z0-9-._/]`.
pub const LABEL_KEY_LEN_MAX: usize = 63;
/// Longest label value; values are `[A-Za-z0-9-._]`, possibly empty.
pub const LABEL_VALUE_LEN_MAX: usize = 63;
/// Most labels on a host, or required labels on a domain.
pub const LABELS_MAX: usize = 32;
/// Longest host address (`host:port`, or a unix socket path).
pub const ADDRESS_LEN_MAX: usize = 255;
/// Longest file path (kernels, initrds, pool directories).
pub const PATH_LEN_MAX: usize = 4096;
/// Longest kernel command line, Linux's own x86 limit.
pub const CMDLINE_LEN_MAX: usize = 2048;
/// Longest bridge interface name (Linux IFNAMSIZ - 1).
pub const IFNAME_LEN_MAX: usize = 15;
/// Longest free-text reason (crash reasons, abort reasons).
pub const REASON_LEN_MAX: usize = 1024;
/// Longest principal (who made a change).
pub const PRINCIPAL_LEN_MAX: usize = 128;
/// Longest request id (clients use UUIDs; 128 leaves room for prefixes).
pub const REQUEST_ID_LEN_MAX: usize = 128;

/// Most vCPUs of one domain.
pub const DOMAIN_VCPUS_MAX: u32 = 256;
/// Least memory of one domain.
pub const DOMAIN_MEMORY_MIB_MIN: u64 = 16;
/// Most memory of one domain (4 TiB).
pub const DOMAIN_MEMORY_MIB_MAX: u64 = 4 * 1024 * 1024;
/// Most disks of one domain.
pub const DISKS_PER_DOMAIN_MAX: usize = 16;
/// Most NICs of one domain.
pub const NICS_PER_DOMAIN_MAX: usize = 8;
/// Highest HA restart priority (higher restarts first).
pub const HA_PRIORITY_MAX: u32 = 1000;
/// Most restarts of an HA domain after crashes on a live host within
/// [`HA_CRASH_RESTART_WINDOW_MS`]; one more crash and HA gives up on it (phase failed,
/// with the reason) until a user starts it. Restarts after a host was fenced do not count.
pub const HA_CRASH_RESTARTS_MAX: usize = 3;
pub const HA_CRASH_RESTART_WINDOW_MS: u64 = 10 * 60 * 1000;
/// A host fenced this many times within [`HOST_FENCE_WINDOW_MS`] is flapping: left out of
/// placement until an operator clears it.
pub const HOST_FENCES_MAX: usize = 3;
pub const HOST_FENCE_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Most hosts HA admission control may keep in reserve.
pub const HA_RESERVE_HOSTS_MAX: u32 = 16;

/// Most vCPUs a host may declare.
pub const HOST_VCPUS_MAX: u32 = 16_384;
/// Most memory a host may declare (64 TiB).
pub const HOST_MEMORY_MIB_MAX: u64 = 64 * 1024 * 1024;

/// Largest volume (64 TiB).
pub const VOLUME_CAPACITY_MIB_MAX: u64 = 64 * 1024 * 1024;
/// Largest storage pool (1 EiB).
pub const POOL_CAPACITY_MIB_MAX: u64 = 1024 * 1024 * 1024 * 1024;

/// Most snapshots of one domain.
pub const SNAPSHOTS_PER_DOMAIN_MAX: usize = 256;
/// Shortest network prefix (a /8 holds 16 M addresses).
pub const NETWORK_PREFIX_LEN_MIN: u8 = 8;
/// Longest network prefix (a /30 holds two hosts: the gateway and one guest).
pub const NETWORK_PREFIX_LEN_MAX: u8 = 30;

/// Most events one proposal may carry. The largest commands are deleting a snapshot with
/// every other snapshot of its domain as a child (one event per child, plus one) and
/// defining a domain with every disk and NIC (1 + 16 + 8).
pub const EVENTS_PER_PROPOSAL_MAX: usize = 512;
const _: () = assert!(EVENTS_PER_PROPOSAL_MAX > SNAPSHOTS_PER_DOMAIN_MAX);
const _: () = assert!(EVENTS_PER_PROPOSAL_MAX > 1 + DISKS_PER_DOMAIN_MAX + NICS_PER_DOMAIN_MAX);
/// How many committed requests the idempotency window remembers (see `request_window`).
pub const REQUEST_WINDOW_MAX: usize = 65_536;
/// How many ended (committed or rolled back) migrations the live state keeps; older ones
/// live on only in the event archive.
pub const ENDED_MIGRATIONS_KEPT_MAX: usize = 1024;
/// Longest pause an operator may allow one live migration (`--max-downtime-ms`): a
/// minute. Longer is a cold move.
pub const MIGRATION_DOWNTIME_MS_MAX: u64 = 60_000;

/// Most bearer tokens the cluster keeps (each is checked at every call that carries one).
pub const TOKENS_MAX: usize = 1024;
/// Longest a bearer token may be valid: a year. Shorter is better; make new ones.
pub const TOKEN_TTL_MS_MAX: u64 = 366 * 24 * 60 * 60 * 1000;
