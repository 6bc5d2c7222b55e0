//! The hypervisor driver trait: what hostd asks of a hypervisor, for one VM per domain
//! run. Implemented by `fake` (in memory), `kvm` (the own VMM, one process per VM) and
//! `qemu` (one QEMU per VM over QMP); all of them pass the shared suite in `conformance`.

use std::collections::BTreeMap;

use controlplane::model::{MigrationProgress, ObservedPhase};
pub use vmm_control::control::{ConvergeLimits, OutgoingPhase};

/// What a driver needs to run one domain's VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub domain: String,
    /// The run this VM belongs to; a VM of an older run must not keep running.
    pub generation: u64,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Kernel path for direct boot; `None` boots from the first disk.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: String,
    /// Disk images on this host, in guest order.
    pub disks: Vec<DiskSpec>,
    /// Network interfaces, in guest order.
    pub nics: Vec<NicSpec>,
    /// A snapshot file (written by this driver's `snapshot`) to restore instead of
    /// booting: the VM continues where the snapshot was taken, in the phase it had then.
    pub restore_from: Option<String>,
    /// A disk-only snapshot file (`Driver::disk_snapshot`) whose images the host writes
    /// back over the writable disks before the VM boots afresh (a revert to it).
    pub disks_from: Option<String>,
}

/// One network interface of a VM: a virtio-net device on a tap plugged into a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// "52:54:00:12:34:56", as the cluster allocated it.
    pub mac: String,
    /// The cluster network it belongs to.
    pub network: String,
    pub attachment: Attachment,
}

/// Where a NIC's tap is plugged on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// An existing host bridge (a `bridge` network); the start fails if it is missing.
    HostBridge(String),
    /// A bridge hostd creates for an isolated network: no uplink and no host address, so
    /// the guests on it reach each other and nothing else.
    Isolated(String),
    /// A bridge hostd creates for a NAT network, like libvirt's default network: the host
    /// holds the gateway address on it, forwards for it and masquerades what leaves the
    /// network's range, so guests reach whatever the host reaches, and nothing outside
    /// reaches them.
    Nat {
        bridge: String,
        /// The gateway address with the network's prefix length, "10.0.0.1/24".
        gateway: String,
        /// The network's range, "10.0.0.0/24".
        network: String,
    },
    /// A network this host cannot provide; the start fails with this reason.
    Unsupported(String),
}

/// Where a NIC of NAT network `name` (range `cidr`, gateway `gateway` or else the
/// range's first host address) plugs in.
pub fn nat_attachment(
    name: &str,
    cidr: controlplane::model::Cidr,
    gateway: Option<std::net::Ipv4Addr>,
) -> Attachment {
    let gateway = gateway.unwrap_or(cidr.first_host());
    Attachment::Nat {
        bridge: isolated_bridge(name),
        gateway: format!("{gateway}/{}", cidr.prefix_len),
        network: cidr.to_string(),
    }
}

/// The bridge of isolated (or NAT) network `network` on every host: `drvb` and 8 hex digits of a
/// hash of the name (interface names are at most 15 bytes).
pub fn isolated_bridge(network: &str) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", fnv32(network))
}

/// The MAC address of network `network`'s bridge on every host (locally administered,
/// from a hash of the name): the service address (gateway, DHCP, DNS) is the same on
/// every host, with the same MAC, so each host answers its own guests and the copies that
/// reach it over the overlay are its own address (dropped), as an anycast gateway is.
pub fn service_mac(network: &str) -> String {
    let h = fnv32(network).to_be_bytes();
    format!("02:d7:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

/// The VXLAN device that carries the network of `bridge` between hosts: the bridge's
/// name with `drvx` for `drvb`.
pub fn overlay_of(bridge: &str) -> String {
    format!("{OVERLAY_PREFIX}{}", bridge.strip_prefix(BRIDGE_PREFIX).unwrap_or(bridge))
}

/// The tap of NIC `index` of `domain`'s VM.
pub fn tap_name(domain: &str, index: usize) -> String {
    format!("{TAP_PREFIX}{:08x}n{index}", fnv32(domain))
}

/// How the names of Drover's bridges and taps begin.
pub const BRIDGE_PREFIX: &str = "drvb";
pub const TAP_PREFIX: &str = "drvt";
pub const OVERLAY_PREFIX: &str = "drvx";

/// FNV-1a, 32 bits: stable across builds and machines, unlike std's hasher.
pub(crate) fn fnv32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// One disk of a VM: an image file on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: String,
    /// As the cluster recorded the volume (never guessed from the file's first bytes,
    /// which a guest writes).
    pub format: controlplane::model::VolumeFormat,
    pub read_only: bool,
}

/// What a driver's `snapshot` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTaken {
    /// What the snapshot takes on disk (the own VMM's files are sparse: their allocated
    /// blocks; QEMU's: the file's length).
    pub bytes: u64,
    /// How long the guest was held paused for it (a disk-only snapshot: how long the
    /// copy took; no guest runs).
    pub duration_ms: u64,
}

/// One VM the driver knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    pub generation: u64,
    pub phase: ObservedPhase,
    /// Why it crashed or could not start.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("no VM for domain {0}")]
    NoSuchVm(String),
    #[error("VM for domain {domain} cannot {action} while {phase:?}")]
    WrongPhase { domain: String, action: &'static str, phase: ObservedPhase },
    #[error("cannot start domain {domain}: {reason}")]
    StartFailed { domain: String, reason: String },
    #[error("VM for domain {domain} did not {action}: {reason}")]
    Failed { domain: String, action: &'static str, reason: String },
    #[error("cannot {action} volume {volume}: {reason}")]
    Volume { volume: String, action: &'static str, reason: String },
}

/// A hypervisor. `now_ms` is passed in so drivers that model time (the fake) stay
/// deterministic; real drivers ignore it.
pub trait Driver: Send {
    /// The largest VM this driver runs, said to the cluster when the host registers so
    /// that nothing larger is placed here; `None`: no limit beyond the host's capacity.
    fn vm_limits(&self) -> Option<controlplane::model::VmLimits> {
        None
    }
    fn start(&mut self, spec: &VmSpec, now_ms: u64) -> Result<(), DriverError>;
    fn pause(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError>;
    fn resume(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError>;
    /// Ask the guest to power off (ACPI); it stops on its own time.
    fn shutdown(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError>;
    /// Kill the VM at once.
    fn destroy(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError>;
    fn reboot(&mut self, domain: &str, now_ms: u64) -> Result<(), DriverError>;
    /// Save the whole state of a running or paused VM (memory, vCPUs, devices) to the file
    /// `path`, atomically (a failure leaves no file there); the VM is in the same phase
    /// afterwards. `VmSpec::restore_from` starts a VM from such a file.
    fn snapshot(
        &mut self,
        domain: &str,
        path: &std::path::Path,
        now_ms: u64,
    ) -> Result<SnapshotTaken, DriverError>;
    /// Take a disk-only snapshot of `domain`, whose VM does not run here (the caller,
    /// `snapshots`, has just listed the VMs): an image of each of its writable `disks` in
    /// the file `path`, atomically. Process drivers copy the
    /// files (`disk_images`); the fake in memory.
    fn disk_snapshot(
        &mut self,
        domain: &str,
        disks: &[DiskSpec],
        path: &std::path::Path,
    ) -> Result<SnapshotTaken, DriverError> {
        crate::disk_images::take(path, domain, disks).map_err(|reason| DriverError::Failed {
            domain: domain.to_owned(),
            action: "take a disk snapshot",
            reason,
        })
    }
    /// Write disk-only snapshot `path` back over `domain`'s writable `disks`, before its VM
    /// boots (`VmSpec::disks_from`); nothing changes unless the whole snapshot is sound.
    fn restore_disks(
        &mut self,
        domain: &str,
        disks: &[DiskSpec],
        path: &std::path::Path,
    ) -> Result<(), DriverError> {
        crate::disk_images::restore_snapshot(path, domain, disks).map_err(|reason| DriverError::StartFailed {
            domain: domain.to_owned(),
            reason: format!("restoring its disks: {reason}"),
        })
    }
    /// The snapshot files under `dir` (`<dir>/<domain>/<name>-<id>.snap`). Process drivers
    /// keep them as files; the fake in memory.
    fn snapshot_files(&mut self, dir: &std::path::Path) -> Vec<SnapshotFile> {
        snapshot_files_on_disk(dir)
    }
    /// Remove a snapshot file; one already gone is not an error.
    fn remove_snapshot_file(&mut self, path: &std::path::Path) -> Result<(), DriverError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::Failed {
                domain: String::new(),
                action: "remove a snapshot",
                reason: format!("{}: {e}", path.display()),
            }),
        }
    }
    /// Carry out a volume operation asked of this host (make, grow or remove the file);
    /// returns the MiB the file takes on disk. Process drivers work on this host's file
    /// system (`dir_pool`); the fake in memory.
    fn volume(&mut self, job: &crate::volumes::VolumeJob) -> Result<u64, DriverError> {
        crate::dir_pool::carry_out(job).map_err(|reason| DriverError::Volume {
            volume: job.volume.to_string(),
            action: job.op.name(),
            reason,
        })
    }
    /// Serve exactly `work`'s networks on this host (bridge, address, DHCP and DNS) and
    /// take away the rest; returns (network, error) for each that could not be served.
    /// Process drivers plumb this host (`net_host`, as the user their run directory
    /// names); the fake records it.
    fn serve_networks(&mut self, work: &crate::networks::NetworkWork) -> Vec<(String, String)>;
    /// Start a VM for `spec` that takes its memory and state from a live migration
    /// instead of booting: it listens on `listen_ip` and returns the `ip:port` its source
    /// is to send to. It lists as `Starting` until the whole VM is in, then `Paused`; it
    /// runs only once its source says the switch-over is committed (or it is resumed).
    /// `source` is the host that sends: where the driver has the host's TLS files, the
    /// stream is mutual TLS and only that host's certificate gets through.
    fn prepare_incoming(
        &mut self,
        spec: &VmSpec,
        listen_ip: std::net::IpAddr,
        source: &str,
    ) -> Result<String, DriverError> {
        let _ = (listen_ip, source);
        Err(unsupported(&spec.domain, "receive a live migration"))
    }
    /// Start sending `domain`'s VM to the incoming VM at `address` on host `target`
    /// (over mutual TLS, as in [`Driver::prepare_incoming`]); the copy goes on in the
    /// background ([`Driver::outgoing`]), in rounds (and throttling the guest) until the
    /// rest fits in the `limits`' pause.
    fn migrate_out(
        &mut self,
        domain: &str,
        address: &str,
        target: &str,
        limits: ConvergeLimits,
        now_ms: u64,
    ) -> Result<(), DriverError> {
        let _ = (address, target, limits, now_ms);
        Err(unsupported(domain, "live-migrate"))
    }
    /// New `limits` for `domain`'s outgoing copy (an operator changed the migration's
    /// longest pause): the rounds to come end within them.
    fn migrate_limits(&mut self, domain: &str, limits: ConvergeLimits) -> Result<(), DriverError> {
        let _ = limits;
        Err(unsupported(domain, "live-migrate"))
    }
    /// Where `domain`'s outgoing migration stands.
    fn outgoing(&mut self, domain: &str, now_ms: u64) -> Result<Outgoing, DriverError> {
        let _ = now_ms;
        Err(unsupported(domain, "live-migrate"))
    }
    /// The switch-over is committed: start the target and end the VM here. Returns the
    /// migration's final numbers (with the measured downtime).
    fn migrate_switch(&mut self, domain: &str) -> Result<MigrationProgress, DriverError> {
        Err(unsupported(domain, "live-migrate"))
    }
    /// Abandon the outgoing migration; the VM runs here again as before.
    fn migrate_cancel(&mut self, domain: &str) -> Result<(), DriverError> {
        Err(unsupported(domain, "live-migrate"))
    }
    /// Forget a VM that has stopped (its process is gone).
    fn remove(&mut self, domain: &str);

    /// What each VM process uses (CPU time, resident memory), for metrics; none where
    /// there is no process (the fake).
    fn usage(&mut self) -> BTreeMap<String, crate::metrics::VmUsage> {
        BTreeMap::new()
    }
    /// Every VM the driver knows of, as of `now_ms`.
    fn list(&mut self, now_ms: u64) -> BTreeMap<String, VmStatus>;
}

/// An outgoing live migration, as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The incoming VM it sends to (`ip:port`).
    pub address: String,
    pub phase: OutgoingPhase,
    pub progress: MigrationProgress,
    /// Why it failed.
    pub reason: Option<String>,
    /// Once the copy is complete, where the driver measures it: from the pause to the
    /// last byte of the VM handed to the stream, in microseconds (QEMU's `downtime`).
    pub stop_copy_us: Option<u64>,
}

fn unsupported(domain: &str, action: &'static str) -> DriverError {
    DriverError::Failed { domain: domain.to_owned(), action, reason: "this driver cannot".into() }
}

/// Where snapshot `name` of `domain`, asked for by event `id`, lives under a host's
/// snapshot directory: `<dir>/<domain>/<name>-<id>.snap`.
pub fn snapshot_path(dir: &std::path::Path, domain: &str, name: &str, id: u64) -> std::path::PathBuf {
    dir.join(domain).join(format!("{name}-{id}.{SNAPSHOT_EXTENSION}"))
}

/// The extension of finished snapshot files (one being written has another name).
pub const SNAPSHOT_EXTENSION: &str = "snap";

/// A snapshot file a driver holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotFile {
    pub domain: String,
    pub name: String,
    /// The id in its name (the event that asked for the snapshot).
    pub id: u64,
    pub path: std::path::PathBuf,
}

/// `<name>-<id>` as (name, id).
pub fn parse_snapshot_stem(stem: &str) -> Option<(String, u64)> {
    let (name, id) = stem.rsplit_once('-')?;
    Some((name.to_owned(), id.parse().ok()?))
}

/// Every `<dir>/<domain>/<name>-<id>.snap`, in order.
pub fn snapshot_files_on_disk(dir: &std::path::Path) -> Vec<SnapshotFile> {
    let mut out = Vec::new();
    let Ok(domains) = std::fs::read_dir(dir) else { return out };
    for domain in domains.flatten() {
        let Ok(files) = std::fs::read_dir(domain.path()) else { continue };
        let domain_name = domain.file_name().to_string_lossy().into_owned();
        for file in files.flatten() {
            let path = file.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SNAPSHOT_EXTENSION) {
                continue;
            }
            let Some((name, id)) = path.file_stem().and_then(|s| s.to_str()).and_then(parse_snapshot_stem)
            else {
                continue;
            };
            out.push(SnapshotFile { domain: domain_name.clone(), name, id, path: path.clone() });
        }
    }
    out.sort();
    out
}
