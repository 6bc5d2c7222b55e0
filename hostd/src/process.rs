//! The hostd process: its command line ([`HostdArgs`]) and [`run`], which starts the
//! host's learner replica (when asked to), builds the chosen driver and runs the agent
//! until SIGTERM or Ctrl-C. The `drover` binary's `hostd` verb calls it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use controlplane::model::DRIVER_LABEL;
use raft::node::{Node, NodeConfig};
use raft::tls::Security;
use tracing::{info, warn};

use crate::agent::{self, AgentConfig, AgentError};
use crate::driver::{ConvergeLimits, DriverError};

/// The hypervisor driver a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverKind {
    /// Drover's own VMM, one process per VM.
    Kvm,
    /// One QEMU per VM over QMP: any guest.
    Qemu,
    /// In memory, no guests (tests, machines without KVM).
    Fake,
}

impl DriverKind {
    /// Its name, as `--driver` takes it and the host's driver label records it.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Kvm => "kvm",
            DriverKind::Qemu => "qemu",
            DriverKind::Fake => "fake",
        }
    }
}

/// `drover hostd`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct HostdArgs {
    /// This host's name in the cluster.
    #[arg(long)]
    pub name: String,
    /// Where this host can be reached (recorded in the cluster; `host list` shows it).
    /// Default: its replica's --replica-listen address, else this machine's hostname.
    #[arg(long)]
    pub address: Option<String>,
    /// The hypervisor driver.
    #[arg(long, value_enum, default_value_t = DriverKind::Kvm)]
    pub driver: DriverKind,
    /// qemu driver: the QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu_binary: PathBuf,
    /// qemu driver: kvm, tcg, or auto (kvm where the CPU has hardware virtualization and
    /// KVM is not kvm-pvm).
    #[arg(long, default_value = "auto")]
    pub qemu_accel: String,
    /// qemu driver: the machine type (microvm or q35).
    #[arg(long, default_value = "microvm")]
    pub qemu_machine: String,
    /// Where the kvm and qemu drivers keep each VM's socket, console log and records. VMs
    /// outlive hostd; a hostd restarted on the same directory re-adopts them.
    #[arg(long, default_value = "/run/drover/vms")]
    pub run_dir: PathBuf,
    /// Cap of each VM's console log, bytes (the previous part is kept as `.old`).
    #[arg(long, default_value_t = 1 << 20)]
    pub console_log_bytes_max: u64,
    /// Where VM snapshots are written and restored from (`<dir>/<domain>/<name>-<id>.snap`).
    /// Give every host the same shared directory (NFS, a cluster filesystem) so that any
    /// host can restore any snapshot. Default: `snapshots` beside the run directory.
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// vCPUs offered to the cluster (default: this machine's CPUs).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory offered to the cluster, MiB (default: this machine's RAM).
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Labels, as key=value (repeatable). The host labels itself with its driver
    /// (`drover.io/driver=kvm|qemu|fake`), a key no label given here may take.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Milliseconds between reconcile passes.
    #[arg(long, default_value_t = 200)]
    pub tick_ms: u64,
    /// The longest pause a live migration from this host may give a guest: pre-copy
    /// goes on (and throttles the guest) until the rest fits. 0: never switch over (a
    /// copy goes on until aborted).
    #[arg(long, default_value_t = crate::migrations::MAX_DOWNTIME_MS_DEFAULT)]
    pub migration_max_downtime_ms: u64,
    /// How far a live migration from this host may throttle the guest's vCPUs when its
    /// rounds stop shrinking (0 never throttles; then a guest that dirties memory
    /// faster than the link sends it never switches over, and is aborted by hand).
    #[arg(
        long,
        default_value_t = crate::migrations::THROTTLE_MAX_PERCENT_DEFAULT,
        value_parser = clap::value_parser!(u8).range(0..=controlplane::model::THROTTLE_PERCENT_MAX as i64),
    )]
    pub migration_throttle_max_percent: u8,
    /// Hold a replica of the cluster's log in this directory (a raft learner that joins
    /// through --endpoint) and read this host's share of the state from it, instead of
    /// asking the control replicas on every pass.
    #[arg(long, requires_all = ["replica_id", "replica_listen"])]
    pub replica_dir: Option<PathBuf>,
    /// The replica's raft node id, unique in the cluster.
    #[arg(long)]
    pub replica_id: Option<u64>,
    /// Where the replica's raft services listen; the leader sends it the log there.
    #[arg(long)]
    pub replica_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://<this>/metrics. Default: none.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0}")]
    Args(String),
    #[error("the host's replica: {0}")]
    Replica(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Where a host says it can be reached: `--address`, else its replica's listen address,
/// else the machine's hostname.
fn host_address(args: &HostdArgs) -> String {
    if let Some(a) = &args.address {
        return a.clone();
    }
    if let Some(listen) = args.replica_listen {
        return listen.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Start this host's learner replica, serve its raft services, and join the cluster
/// through one of `endpoints` (tried in turn until one takes it, for up to two minutes).
async fn start_host_replica(
    args: &HostdArgs,
    endpoints: &[String],
    security: &Security,
) -> Result<Option<Node>, ProcessError> {
    let (Some(dir), Some(id), Some(listen)) = (&args.replica_dir, args.replica_id, args.replica_listen)
    else {
        return Ok(None);
    };
    if id == 0 {
        return Err(ProcessError::Args("--replica-id must be 1 or more".into()));
    }
    if !listen.ip().is_loopback() && !security.transport.is_tls() {
        if !security.insecure {
            return Err(ProcessError::Args(format!(
                "--replica-listen {listen} is not a loopback address and there is no --tls-dir; pass --insecure to accept that it is open"
            )));
        }
        warn!(%listen, "INSECURE: the host's replica listens beyond loopback without TLS: anyone who can reach it can talk to it");
    }
    let mut replica = NodeConfig::new(id, listen, dir.clone());
    // All its services are peer services, for the control replicas; it serves no public
    // API.
    replica.advertise.api = String::new();
    replica.transport = security.transport.clone();
    let node = Node::start(replica)
        .await
        .map_err(|e| ProcessError::Replica(format!("starting replica {id}: {e}")))?;
    // The replica's raft services, and the host's own for the control replicas (its
    // VMs' consoles), on the one port.
    let serving = node.clone();
    let consoles = crate::console::ConsoleService {
        run_dir: (args.driver != DriverKind::Fake).then(|| args.run_dir.clone()),
    };
    // Bound here, not in the task: a host whose replica cannot listen would follow no log
    // and act on nothing, so it fails to start instead.
    let incoming = raft::service::listen(&serving).await.map_err(|e| match e {
        raft::service::ServeError::Bind { addr, source } => {
            ProcessError::Replica(format!("replica {id} cannot listen on {addr}: {source}"))
        }
        other => ProcessError::Replica(format!("serving replica {id}: {other}")),
    })?;
    tokio::spawn(async move {
        let served = async {
            raft::service::server_builder(serving.transport())?
                .layer(serving.transport().door(raft::tls::Port::Peer))
                .add_service(raft::service::raft_server(serving.clone()))
                .add_service(raft::service::replication_server(serving))
                .add_service(proto::host::host_agent_server::HostAgentServer::new(consoles))
                .serve_with_incoming_shutdown(incoming, std::future::pending())
                .await?;
            Ok::<_, raft::service::ServeError>(())
        };
        if let Err(e) = served.await {
            warn!(error = %e, "the host's replica stopped serving");
        }
    });
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    'join: loop {
        for seed in endpoints {
            match node.join(seed, false, Duration::from_secs(5)).await {
                Ok(()) => break 'join,
                Err(e) if tokio::time::Instant::now() >= until => {
                    return Err(ProcessError::Replica(format!("joining the cluster as learner {id}: {e}")));
                }
                Err(e) => warn!(seed, error = %e, "not joined yet; trying the next endpoint"),
            }
        }
    }
    info!(node = id, %listen, cluster = ?node.cluster_id(), "the host's replica follows the log");
    Ok(Some(node))
}

/// The VMM program and the arguments before its own: the standalone `drover-vmm` beside
/// this binary where there is one (a tenth of the size, so each VM costs less memory,
/// bench/README.md), else this binary's `vmm` verb.
fn vmm_program() -> Result<(PathBuf, Vec<String>), ProcessError> {
    let exe =
        std::env::current_exe().map_err(|e| ProcessError::Args(format!("finding the drover binary: {e}")))?;
    let standalone = exe.with_file_name("drover-vmm");
    Ok(if standalone.is_file() { (standalone, Vec::new()) } else { (exe, vec!["vmm".to_owned()]) })
}

/// Run a host agent with `args`, reaching the control replicas at `endpoints`, until
/// SIGTERM or Ctrl-C.
pub async fn run(args: HostdArgs, endpoints: Vec<String>, security: Security) -> Result<(), ProcessError> {
    if security.transport.is_tls() && security.transport.own().is_none() {
        return Err(ProcessError::Args(
            "the TLS directory holds no certificate (cert.pem, key.pem): a host acts only under its own"
                .into(),
        ));
    }
    if let Some(own) = security.transport.own() {
        if own.kind != raft::tls::Kind::Host || own.name != args.name {
            return Err(ProcessError::Args(format!(
                "the TLS certificate names {own}, not host:{}: a host acts only under its own certificate",
                args.name
            )));
        }
    }
    if let Some(addr) = args.metrics_listen {
        if !addr.ip().is_loopback() && !security.insecure {
            return Err(ProcessError::Args(format!(
                "--metrics-listen {addr} is not a loopback address (metrics are plain HTTP); pass --insecure to serve it anyway"
            )));
        }
        raft::metrics::serve(addr).map_err(ProcessError::Args)?;
        crate::metrics::describe();
        info!(%addr, "serving metrics");
    }
    let mut labels: BTreeMap<String, String> = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ProcessError::Args(format!("label {l:?} is not key=value")))
        })
        .collect::<Result<_, _>>()?;
    if labels.contains_key(DRIVER_LABEL) {
        return Err(ProcessError::Args(format!(
            "the label {DRIVER_LABEL} is the host's own (its --driver); give another key"
        )));
    }
    labels.insert(DRIVER_LABEL.to_owned(), args.driver.as_str().to_owned());
    let memory_mib = match args.memory_mib {
        Some(m) => m,
        None => vmm_control::host_memory_mib().ok_or_else(|| {
            ProcessError::Args("cannot read this machine's memory; pass --memory-mib".into())
        })?,
    };
    let config = AgentConfig {
        host: args.name.clone(),
        address: host_address(&args),
        endpoints: endpoints.clone(),
        transport: security.transport.clone(),
        vcpus: args
            .vcpus
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)),
        memory_mib,
        labels,
        tick_ms: args.tick_ms,
        migration_limits: ConvergeLimits {
            max_downtime_ms: args.migration_max_downtime_ms,
            throttle_max_percent: args.migration_throttle_max_percent,
        },
        shutdown_timeout_ms: 30_000,
        replica: start_host_replica(&args, &endpoints, &security).await?,
        snapshot_dir: args
            .snapshot_dir
            .clone()
            .unwrap_or_else(|| args.run_dir.parent().unwrap_or(Path::new("/")).join("snapshots")),
        lease_file: (args.driver != DriverKind::Fake)
            .then(|| args.run_dir.join(vmm_control::lease::LEASE_FILE)),
        console_dir: (args.driver != DriverKind::Fake).then(|| args.run_dir.clone()),
    };
    let replica = config.replica.clone();
    let stop = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match args.driver {
        DriverKind::Fake => agent::run(config, crate::fake::FakeDriver::default(), stop).await?,
        DriverKind::Kvm => {
            let (program, program_args) = vmm_program()?;
            info!(vmm = %program.display(), "kvm driver ready");
            let kvm = crate::kvm::KvmConfig {
                program,
                program_args,
                run_dir: args.run_dir.clone(),
                console_log_bytes_max: args.console_log_bytes_max,
                tls_dir: security.transport.dir().map(Path::to_path_buf),
            };
            agent::run(config, crate::kvm::KvmDriver::new(kvm)?, stop).await?
        }
        DriverKind::Qemu => {
            let accel = crate::qemu::Accel::parse(&args.qemu_accel).ok_or_else(|| {
                ProcessError::Args(format!("--qemu-accel {:?} is not kvm, tcg or auto", args.qemu_accel))
            })?;
            let qemu = crate::qemu::QemuConfig {
                binary: args.qemu_binary.clone(),
                accel,
                machine: args.qemu_machine.clone(),
                run_dir: args.run_dir.clone(),
                console_log_bytes_max: args.console_log_bytes_max,
                fence_watch: Some(vmm_program()?),
                tls_dir: security.transport.dir().map(Path::to_path_buf),
            };
            let driver = crate::qemu::QemuDriver::new(qemu)?;
            info!(accel = ?driver.accel(), "qemu driver ready");
            agent::run(config, driver, stop).await?
        }
    }
    if let Some(node) = replica {
        node.shutdown().await;
    }
    Ok(())
}
