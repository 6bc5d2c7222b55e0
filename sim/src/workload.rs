//! The clients' workload, drawn from the seed: domain lifecycles (define, start,
//! shutdown, destroy, reboot, suspend, resume, undefine), snapshots (take, revert,
//! clone, delete; disk snapshots mostly of the operator's stopped `store` domain),
//! networks and volumes, and a share of invalid commands that must be refused
//! without changing anything.
//!
//! Live migrations, mostly of the operator's long-running VMs, to the scheduler's pick
//! or a named host: the hosts carry them out through the fake hypervisors' streams.

use std::collections::BTreeMap;

use controlplane::limits::MIGRATION_DOWNTIME_MS_MAX;
use controlplane::model::{
    Boot, Cidr, Disk, DomainSpec, HaPolicy, NetworkConfig, NetworkMode, Nic, Placement, PoolConfig, PoolKind,
    SnapshotKind, VolumeFormat, VolumeRef,
};
use controlplane::Command;
use rand::Rng;

use crate::config::SimConfig;

/// The kernel every valid domain boots (the fake hypervisor boots anything else).
pub const KERNEL: &str = "/var/lib/drover/images/guest.elf";
/// A kernel the fake hypervisor refuses to boot (a failed start, reported as such).
pub const BROKEN_KERNEL: &str = "/var/lib/drover/images/broken.elf";
const NETWORKS: u64 = 3;
const SNAPSHOTS: u64 = 3;
const VOLUMES: u64 = 6;
const POOL: &str = "p0";

/// The stopped domain with a writable disk that the operator sets up for disk snapshots
/// (the clients' own domains seldom have one and are stopped when asked).
pub const STORE: &str = "store";
const STORE_POOL: &str = "ops";

/// The operator's commands that make `STORE`: its pool, its volume, the domain.
pub fn store_commands() -> Vec<Command> {
    let volume = VolumeRef { pool: STORE_POOL.into(), name: STORE.into() };
    vec![
        Command::CreatePool {
            name: STORE_POOL.into(),
            config: PoolConfig {
                kind: PoolKind::Dir,
                path: "/var/lib/drover/pools/ops".into(),
                shared: true,
                capacity_mib: 1 << 16,
            },
        },
        Command::CreateVolume {
            volume: volume.clone(),
            format: VolumeFormat::Qcow2,
            capacity_mib: 1024,
            backing: None,
            preallocate: false,
            import: None,
        },
        Command::DefineDomain {
            name: STORE.into(),
            spec: DomainSpec {
                vcpus: 1,
                memory_mib: 256,
                boot: Boot::Kernel { kernel: KERNEL.into(), initrd: None, cmdline: String::new() },
                disks: vec![Disk { volume, read_only: false }],
                nics: Vec::new(),
                ha: HaPolicy::None,
                placement: Placement::default(),
            },
        },
    ]
}

fn domain_name(rng: &mut impl Rng, cfg: &SimConfig) -> String {
    format!("d{}", rng.gen_range(0..cfg.domains.max(1)))
}

fn spec(rng: &mut impl Rng) -> DomainSpec {
    let kernel = if rng.gen_range(0..20) == 0 { BROKEN_KERNEL } else { KERNEL };
    let nics = if rng.gen_bool(0.3) {
        vec![Nic { network: format!("n{}", rng.gen_range(0..NETWORKS)), mac: None }]
    } else {
        Vec::new()
    };
    // Some domains have a disk: a volume of the shared pool, which must be made before
    // they start (and read-write volumes are held by one domain at a time).
    let disks = if rng.gen_bool(0.2) {
        let volume = VolumeRef { pool: POOL.into(), name: format!("v{}", rng.gen_range(0..VOLUMES)) };
        vec![Disk { volume, read_only: rng.gen_bool(0.5) }]
    } else {
        Vec::new()
    };
    DomainSpec {
        vcpus: rng.gen_range(1..=4),
        memory_mib: 256 * rng.gen_range(1..=8),
        boot: Boot::Kernel { kernel: kernel.into(), initrd: None, cmdline: "console=ttyS0".into() },
        disks,
        nics,
        ha: if rng.gen_bool(0.5) {
            HaPolicy::Restart { priority: rng.gen_range(0..10) }
        } else {
            HaPolicy::None
        },
        placement: Placement::default(),
    }
}

/// One command for a client to send.
pub fn draw(rng: &mut impl Rng, cfg: &SimConfig) -> Command {
    let name = domain_name(rng, cfg);
    let snapshot = |rng: &mut dyn rand::RngCore| format!("s{}", rng.gen_range(0..SNAPSHOTS));
    // Snapshots are of the long-running VMs the operator set up half of the time (the
    // clients' own domains are seldom running when asked).
    // and of the stopped domain with a disk a fifth of the time.
    let snapshotted = |rng: &mut dyn rand::RngCore, name: String| match rng.gen_range(0..10) {
        0..=4 if cfg.vms > 0 => format!("vm{}", rng.gen_range(0..cfg.vms)),
        5..=6 => STORE.to_owned(),
        _ => name,
    };
    match rng.gen_range(0..136) {
        124..=135 => Command::StartMigration {
            domain: if cfg.vms > 0 && rng.gen_bool(0.7) {
                format!("vm{}", rng.gen_range(0..cfg.vms))
            } else {
                name
            },
            target: rng.gen_bool(0.3).then(|| format!("h{}", rng.gen_range(0..cfg.hosts.max(1)))),
            // Now and then with the operator's own longest pause (some out of range).
            max_downtime_ms: rng.gen_bool(0.3).then(|| {
                [0, 5, 50, 300, MIGRATION_DOWNTIME_MS_MAX, MIGRATION_DOWNTIME_MS_MAX + 1][rng.gen_range(0..6)]
            }),
        },
        // An operator clears a host left out for flapping, or changes HA admission.
        120..=121 => Command::ClearHost { name: format!("h{}", rng.gen_range(0..cfg.hosts.max(1))) },
        122..=123 => Command::SetClusterSettings { ha_reserve_hosts: rng.gen_range(0..=1) },
        100..=105 => Command::CreateSnapshot {
            domain: snapshotted(rng, name),
            name: snapshot(rng),
            kind: SnapshotKind::Full,
        },
        106..=107 => Command::CreateSnapshot {
            domain: if rng.gen_bool(0.5) { STORE.to_owned() } else { snapshotted(rng, name) },
            name: snapshot(rng),
            kind: SnapshotKind::Disk,
        },
        108..=111 => Command::RevertSnapshot {
            domain: if rng.gen_bool(0.3) { STORE.to_owned() } else { snapshotted(rng, name) },
            name: snapshot(rng),
        },
        112..=113 => Command::DeleteSnapshot { domain: snapshotted(rng, name), name: snapshot(rng) },
        114..=119 => Command::CloneDomain {
            clone: domain_name(rng, cfg),
            source: snapshotted(rng, name),
            snapshot: snapshot(rng),
        },
        0..=14 => Command::DefineDomain { name, spec: spec(rng) },
        // The operator's `store` runs now and then (a revert to a disk snapshot restores at a start).
        15..=34 => Command::StartDomain { name: if rng.gen_bool(0.1) { STORE.into() } else { name } },
        35..=42 => Command::ShutdownDomain { name },
        43..=48 => Command::DestroyDomain { name: if rng.gen_bool(0.2) { STORE.into() } else { name } },
        49..=52 => Command::RebootDomain { name },
        53..=56 => Command::SuspendDomain { name },
        57..=60 => Command::ResumeDomain { name },
        61..=66 => Command::UndefineDomain { name },
        67..=72 => {
            let i = rng.gen_range(0..NETWORKS);
            let cidr: Cidr = format!("10.{}.0.0/24", 10 + i).parse().expect("valid cidr");
            Command::CreateNetwork {
                name: format!("n{i}"),
                config: NetworkConfig {
                    mode: NetworkMode::Isolated,
                    cidr: Some(cidr),
                    gateway: None,
                    bridge: None,
                },
            }
        }
        73..=75 => Command::DeleteNetwork { name: format!("n{}", rng.gen_range(0..NETWORKS)) },
        76..=78 => Command::CreatePool {
            name: POOL.into(),
            config: PoolConfig {
                kind: PoolKind::Dir,
                path: "/var/lib/drover/pools/p0".into(),
                shared: true,
                capacity_mib: 1 << 20,
            },
        },
        79..=83 => Command::CreateVolume {
            volume: VolumeRef { pool: POOL.into(), name: format!("v{}", rng.gen_range(0..VOLUMES)) },
            format: VolumeFormat::Raw,
            capacity_mib: 1024 * rng.gen_range(1..=8),
            backing: None,
            preallocate: rng.gen_bool(0.3),
            import: None,
        },
        84 => Command::ResizeVolume {
            volume: VolumeRef { pool: POOL.into(), name: format!("v{}", rng.gen_range(0..VOLUMES)) },
            capacity_mib: 1024 * rng.gen_range(1..=12),
        },
        85..=87 => Command::DeleteVolume {
            volume: VolumeRef { pool: POOL.into(), name: format!("v{}", rng.gen_range(0..VOLUMES)) },
        },
        // Invalid on purpose: every one of these must be refused and change nothing.
        88..=90 => Command::DefineDomain { name: "bad name!".into(), spec: spec(rng) },
        91..=93 => {
            let mut s = spec(rng);
            s.vcpus = 0;
            Command::DefineDomain { name, spec: s }
        }
        94..=95 => {
            let mut s = spec(rng);
            s.memory_mib = u64::MAX / 2;
            Command::DefineDomain { name, spec: s }
        }
        96..=97 => Command::StartDomain { name: "no-such-domain".into() },
        _ => Command::RegisterHost {
            name: String::new(),
            address: "nowhere".into(),
            capacity: controlplane::model::Resources { vcpus: 0, memory_mib: 0 },
            labels: BTreeMap::new(),
            vm_limits: None,
        },
    }
}
