//! `drover`: the one binary. `drover server` runs a control replica; the other verbs are
//! the command line client (`drover domain start web`, `drover events --follow`, …).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use raft::node::{Node, NodeConfig};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(name = "drover", version, about = "Drover: libvirt for a whole cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: api::cli::ClientArgs,
    /// Log filter (tracing's env-filter syntax); RUST_LOG overrides it. Default: info for
    /// the server, warn for client verbs.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole local cluster (3 replicas, 3 hosts) until Ctrl-C.
    Up(api::up::UpArgs),
    /// Run a control replica.
    Server(ServerArgs),
    /// Run a host agent.
    Hostd(HostdArgs),
    /// Run one VM under Drover's own VMM (started by hostd's kvm driver).
    Vmm(vmm::process::VmmArgs),
    #[command(flatten)]
    Client(api::cli::ClientCmd),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// This replica's node id (1 or more, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Where the replica's gRPC services listen.
    #[arg(long, default_value = "127.0.0.1:7401")]
    listen: SocketAddr,
    /// The address other replicas use to reach this one (defaults to --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// The replica's data directory (created if absent).
    #[arg(long)]
    data_dir: PathBuf,
    /// Start a new cluster with this replica as its only voter (no-op once initialized).
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster through this member (host:port).
    #[arg(long)]
    join: Option<String>,
    /// With --join: become a voter once caught up (otherwise stay a learner).
    #[arg(long, requires = "join")]
    voter: bool,
    /// Allow listening beyond loopback. There is no authentication yet: anyone who can
    /// reach the port can join the cluster or write to it.
    #[arg(long)]
    allow_remote: bool,
    /// Snapshot (and compact the raft log) every this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Raft log entries kept behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    log_kept: u64,
    /// Archive checkpoint interval, in events.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
}

#[derive(clap::Args, Debug)]
struct HostdArgs {
    /// This host's name in the cluster.
    #[arg(long)]
    name: String,
    /// Where this host can be reached (recorded in the cluster; `host list` shows it).
    /// Default: its replica's --replica-listen address, else this machine's hostname.
    #[arg(long)]
    address: Option<String>,
    /// The hypervisor driver: kvm (Drover's own VMM, one process per VM), qemu (one QEMU
    /// per VM over QMP, any guest), or fake (in memory, no guests).
    #[arg(long, default_value = "kvm")]
    driver: String,
    /// qemu driver: the QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu_binary: PathBuf,
    /// qemu driver: kvm, tcg, or auto (kvm where the CPU has hardware virtualization and
    /// KVM is not kvm-pvm).
    #[arg(long, default_value = "auto")]
    qemu_accel: String,
    /// qemu driver: the machine type (microvm or q35).
    #[arg(long, default_value = "microvm")]
    qemu_machine: String,
    /// Where the kvm and qemu drivers keep each VM's socket, console log and records. VMs outlive
    /// hostd; a hostd restarted on the same directory re-adopts them.
    #[arg(long, default_value = "/run/drover/vms")]
    run_dir: PathBuf,
    /// Cap of each VM's console log, bytes (the previous part is kept as `.old`).
    #[arg(long, default_value_t = 1 << 20)]
    console_log_bytes_max: u64,
    /// Where VM snapshots are written and restored from (`<dir>/<domain>/<name>.snap`).
    /// Give every host the same shared directory (NFS, a cluster filesystem) so that any
    /// host can restore any snapshot. Default: `snapshots` beside the run directory.
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// vCPUs offered to the cluster (default: this machine's CPUs).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory offered to the cluster, MiB (default: this machine's RAM).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Labels, as key=value (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Milliseconds between reconcile passes.
    #[arg(long, default_value_t = 200)]
    tick_ms: u64,
    /// Hold a replica of the cluster's log in this directory (a raft learner that joins
    /// through --endpoint) and read this host's share of the state from it, instead of
    /// asking the control replicas on every pass.
    #[arg(long, requires_all = ["replica_id", "replica_listen"])]
    replica_dir: Option<PathBuf>,
    /// The replica's raft node id, unique in the cluster.
    #[arg(long)]
    replica_id: Option<u64>,
    /// Where the replica's raft services listen; the leader sends it the log there.
    #[arg(long)]
    replica_listen: Option<SocketAddr>,
    /// Allow --replica-listen beyond loopback. There is no authentication yet.
    #[arg(long)]
    allow_remote: bool,
}

/// Start this host's learner replica, serve its raft services, and join the cluster
/// through one of `endpoints` (tried in turn until one takes it).
async fn start_host_replica(args: &HostdArgs, endpoints: &[String]) -> anyhow::Result<Option<Node>> {
    let (Some(dir), Some(id), Some(listen)) = (&args.replica_dir, args.replica_id, args.replica_listen)
    else {
        return Ok(None);
    };
    if id == 0 {
        bail!("--replica-id must be 1 or more");
    }
    if !listen.ip().is_loopback() {
        if !args.allow_remote {
            bail!("--replica-listen {listen} is not a loopback address; pass --allow-remote to accept that it is open");
        }
        warn!(%listen, "the host's replica listens beyond loopback: anyone who can reach it can talk to it");
    }
    let node = Node::start(NodeConfig::new(id, listen, dir.clone()))
        .await
        .with_context(|| format!("starting the host's replica {id}"))?;
    let serving = node.clone();
    tokio::spawn(async move {
        if let Err(e) = raft::service::serve(serving, std::future::pending()).await {
            warn!(error = %e, "the host's replica stopped serving");
        }
    });
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    'join: loop {
        for seed in endpoints {
            match node.join(seed, false, Duration::from_secs(5)).await {
                Ok(()) => break 'join,
                Err(e) if tokio::time::Instant::now() >= until => {
                    return Err(e).with_context(|| format!("joining the cluster as learner {id}"));
                }
                Err(e) => warn!(seed, error = %e, "not joined yet; trying the next endpoint"),
            }
        }
    }
    info!(node = id, %listen, cluster = ?node.cluster_id(), "the host's replica follows the log");
    Ok(Some(node))
}

async fn run_hostd(args: HostdArgs, endpoints: Vec<String>) -> anyhow::Result<()> {
    let labels = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("label {l:?} is not key=value"))
        })
        .collect::<anyhow::Result<_>>()?;
    let config =
        hostd::agent::AgentConfig {
            host: args.name.clone(),
            address: host_address(&args),
            endpoints: endpoints.clone(),
            vcpus: match args.vcpus {
                Some(v) => v,
                None => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            },
            memory_mib: match args.memory_mib {
                Some(m) => m,
                None => vmm::config::host_memory_mib()
                    .context("reading this machine's memory; pass --memory-mib")?,
            },
            labels,
            tick_ms: args.tick_ms,
            shutdown_timeout_ms: 30_000,
            replica: start_host_replica(&args, &endpoints).await?,
            snapshot_dir: args.snapshot_dir.clone().unwrap_or_else(|| {
                args.run_dir.parent().unwrap_or(std::path::Path::new("/")).join("snapshots")
            }),
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
    match args.driver.as_str() {
        "fake" => hostd::agent::run(config, hostd::fake::FakeDriver::default(), stop).await?,
        "kvm" => {
            // The standalone drover-vmm beside this binary is preferred: it is a tenth
            // of the size, so each VM costs less memory (bench/README.md).
            let exe = std::env::current_exe().context("finding the drover binary")?;
            let standalone = exe.with_file_name("drover-vmm");
            let (program, program_args) =
                if standalone.is_file() { (standalone, Vec::new()) } else { (exe, vec!["vmm".to_owned()]) };
            info!(vmm = %program.display(), "kvm driver ready");
            let kvm = hostd::kvm::KvmConfig {
                program,
                program_args,
                run_dir: args.run_dir.clone(),
                console_log_bytes_max: args.console_log_bytes_max,
            };
            let driver = hostd::kvm::KvmDriver::new(kvm)?;
            hostd::agent::run(config, driver, stop).await?
        }
        "qemu" => {
            let accel = hostd::qemu::Accel::parse(&args.qemu_accel)
                .with_context(|| format!("--qemu-accel {:?} is not kvm, tcg or auto", args.qemu_accel))?;
            let qemu = hostd::qemu::QemuConfig {
                binary: args.qemu_binary.clone(),
                accel,
                machine: args.qemu_machine.clone(),
                run_dir: args.run_dir.clone(),
                console_log_bytes_max: args.console_log_bytes_max,
            };
            let driver = hostd::qemu::QemuDriver::new(qemu)?;
            info!(accel = ?driver.accel(), "qemu driver ready");
            hostd::agent::run(config, driver, stop).await?
        }
        other => bail!("unknown driver {other:?} (kvm, qemu or fake)"),
    }
    if let Some(node) = replica {
        node.shutdown().await;
    }
    Ok(())
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    if args.id == 0 {
        bail!("--id must be 1 or more");
    }
    if !args.listen.ip().is_loopback() {
        if !args.allow_remote {
            bail!(
                "--listen {} is not a loopback address; pass --allow-remote to accept that the API is open",
                args.listen
            );
        }
        warn!(listen = %args.listen, "listening beyond loopback: the API is open to anyone who can reach it");
    }
    let mut config = NodeConfig::new(args.id, args.listen, args.data_dir.clone());
    if let Some(a) = args.advertise {
        config.advertise = a;
    }
    config.snapshot_every_entries = args.snapshot_every;
    config.log_entries_kept_after_snapshot = args.log_kept;
    config.checkpoint_every_events = args.checkpoint_every;
    let node = Node::start(config).await.with_context(|| format!("starting replica {}", args.id))?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::server::serve(node.clone(), async move {
        let _ = stop_rx.await;
    }));
    if args.bootstrap {
        node.bootstrap().await.context("bootstrapping the cluster")?;
    }
    if let Some(seed) = &args.join {
        node.join(seed, args.voter, Duration::from_secs(120))
            .await
            .with_context(|| format!("joining through {seed}"))?;
    }
    info!(node = args.id, listen = %args.listen, cluster = ?node.cluster_id(), "replica ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; stopping"),
        _ = term.recv() => info!("terminated; stopping"),
        r = server => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e).context("serving"),
                Err(e) => return Err(e).context("server task"),
            }
        }
    }
    let _ = stop_tx.send(());
    node.shutdown().await;
    Ok(())
}

/// A readable line for an error, naming the gRPC code where there is one.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => format!("{:?}: {}", s.code(), s.message()),
        None => format!("{e:#}"),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Vmm(args) = cli.command {
        // No async runtime, no logging setup: the VMM process stays small.
        return std::process::ExitCode::from(vmm::process::run(args) as u8);
    }
    let default_log = if matches!(cli.command, Command::Server(_) | Command::Hostd(_)) {
        "info,openraft=warn"
    } else {
        "warn"
    };
    init_logging(cli.log.as_deref().unwrap_or(default_log), cli.log_json);
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => run_server(args).await,
            Command::Hostd(args) => run_hostd(args, cli.client.endpoint.clone()).await,
            Command::Up(args) => api::up::run(args, &mut std::io::stdout()).await,
            Command::Client(cmd) => api::cli::run(&cli.client, cmd, &mut std::io::stdout()).await,
            Command::Completions { .. } | Command::Vmm(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
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
