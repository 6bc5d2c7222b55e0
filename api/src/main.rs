//! `drover`: the one binary. `drover server` runs a control replica; the other verbs are
//! the command line client (`drover domain start web`, `drover events --follow`, …).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use controlplane::ha::HaSettings;
use raft::node::{Node, NodeConfig};
use raft::tls::{Kind, Security};
use tracing::{error, info, warn, Instrument};

/// The allocator: a replica allocates and frees per write (gRPC frames, log entries,
/// events, archive records); see bench/README.md for what it saves.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Export OpenTelemetry traces to this OTLP/gRPC collector (`http://host:4317`):
    /// the CLI's calls, and a server's or host's part in them. Default: no traces.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The share of new traces kept, 0 to 1 (a call that arrives traced keeps its
    /// caller's choice).
    #[arg(long, global = true, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0)]
    trace_sample_ratio: f64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole local cluster (3 replicas, 3 hosts) until Ctrl-C.
    Up(api::up::UpArgs),
    /// Run a control replica.
    Server(ServerArgs),
    /// Run a host agent.
    Hostd(hostd::process::HostdArgs),
    /// A cluster's certificate authority (for mutual TLS).
    #[command(subcommand)]
    Ca(api::certs::CaCmd),
    /// Certificates for replicas, hosts and users, signed by the cluster's CA.
    #[command(subcommand)]
    Cert(api::certs::CertCmd),
    /// Run one VM under Drover's own VMM (started by hostd's kvm driver).
    Vmm(vmm::process::VmmCli),
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
    /// Where the public API listens (and, without --peer-listen, the peer services too).
    #[arg(long, default_value = "127.0.0.1:7401")]
    listen: SocketAddr,
    /// Where the peer services (raft and replication) listen, on a port of their own that
    /// accepts only cluster members' certificates. Required beyond loopback; without it
    /// they share --listen.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The address other members use to reach this one's peer services (defaults to
    /// --peer-listen, else --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// The address clients are pointed to for this one's public API, as the leader
    /// (defaults to --listen).
    #[arg(long)]
    advertise_api: Option<String>,
    /// The replica's data directory (created if absent).
    #[arg(long)]
    data_dir: PathBuf,
    /// Start a new cluster with this replica as its only voter (no-op once initialized).
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster through this member (its public API or peer port, host:port).
    #[arg(long)]
    join: Option<String>,
    /// With --join: become a voter once caught up (otherwise stay a learner).
    #[arg(long, requires = "join")]
    voter: bool,
    /// Snapshot (and compact the raft log) every this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Raft log entries kept behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    log_kept: u64,
    /// Archive checkpoint interval, in events.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// How often hosts renew their leases (told to each hostd in the answer).
    #[arg(long, default_value_t = HaSettings::default().heartbeat_interval_ms)]
    heartbeat_interval_ms: u64,
    /// A host that has not renewed for this long is suspect: nothing new goes there.
    #[arg(long, default_value_t = HaSettings::default().lease_ms)]
    lease_ms: u64,
    /// A hostd that has not renewed for this long kills its VMs (self-fencing).
    #[arg(long, default_value_t = HaSettings::default().fence_ms)]
    fence_ms: u64,
    /// Margin for clock rates; a host is fenced (its HA domains restarted elsewhere)
    /// after lease + fence + this with no renewal.
    #[arg(long, default_value_t = HaSettings::default().drift_ms)]
    fence_drift_ms: u64,
    /// Serve Prometheus metrics at http://<this>/metrics (loopback unless --insecure).
    /// Default: none.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// How long a new replica tries to join through its seed.
const JOIN_WAIT: Duration = Duration::from_secs(120);
/// How long a replica that is a member already tries, before going on without the seed.
const JOIN_AGAIN_WAIT: Duration = Duration::from_secs(5);

/// Log to stderr (text, or JSON lines), and export traces where `traces` says. The log
/// filter leaves the traces alone: they take Drover's own spans (not its dependencies'),
/// and warnings and errors as span events.
fn init_logging(
    filter: &str,
    json: bool,
    traces: Option<&raft::telemetry::TraceConfig>,
) -> Result<Option<raft::telemetry::Exporting>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours on a terminal only: a log written to a file or a pipe is plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let exporting = traces.map(raft::telemetry::start).transpose()?;
    let otel = exporting.as_ref().map(|e| {
        tracing_opentelemetry::layer()
            .with_tracer(e.tracer())
            // Less bookkeeping per span: no idle/busy clock reads at every poll, no thread.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(
                tracing_subscriber::filter::filter_fn(|m| match m.is_span() {
                    true => *m.level() <= tracing::Level::INFO && raft::telemetry::drover_target(m.target()),
                    false => *m.level() <= tracing::Level::WARN,
                })
                // Without the hint the subscriber's most verbose level would be TRACE, and
                // every `log` record of a dependency (sled's trace! on its hot paths) would be
                // built and bridged only to be dropped.
                .with_max_level_hint(tracing::level_filters::LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).init();
    Ok(exporting)
}

async fn run_server(args: ServerArgs, security: Security) -> anyhow::Result<()> {
    if args.id == 0 {
        bail!("--id must be 1 or more");
    }
    if security.transport.is_tls() && security.transport.own().is_none() {
        bail!(
            "the TLS directory holds no certificate (cert.pem, key.pem): a replica serves only under its own"
        );
    }
    if let Some(own) = security.transport.own() {
        if own.kind != Kind::Replica || own.name != args.id.to_string() {
            bail!(
                "the TLS certificate names {own}, not replica:{}: a replica serves only under its own",
                args.id
            );
        }
    }
    if !args.listen.ip().is_loopback() && args.peer_listen.is_none_or(|p| p == args.listen) {
        bail!(
            "--listen {} is not a loopback address: beyond loopback the peer services (raft, replication) take a port of their own, which only cluster members may call; pass --peer-listen",
            args.listen
        );
    }
    for (flag, addr) in [("--listen", Some(args.listen)), ("--peer-listen", args.peer_listen)] {
        let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) else { continue };
        if !security.transport.is_tls() {
            if !security.insecure {
                bail!(
                    "{flag} {addr} is not a loopback address and there is no --tls-dir; pass --insecure to accept that it is open"
                );
            }
            warn!(%addr, "INSECURE: listening beyond loopback without TLS: anyone who can reach it can call it");
        }
    }
    if let Some(addr) = args.metrics_listen {
        if !addr.ip().is_loopback() && !security.insecure {
            bail!(
                "--metrics-listen {addr} is not a loopback address (metrics are plain HTTP); pass --insecure to serve it anyway"
            );
        }
        raft::metrics::serve(addr).map_err(anyhow::Error::msg)?;
        api::metrics::describe();
        info!(%addr, "serving metrics");
    }
    let mut config = NodeConfig::new(args.id, args.listen, args.data_dir.clone());
    config.transport = security.transport;
    config.peer_listen = args.peer_listen;
    config.advertise = raft::type_config::Member::new(
        args.advertise.unwrap_or_else(|| args.peer_listen.unwrap_or(args.listen).to_string()),
        args.advertise_api.unwrap_or_else(|| args.listen.to_string()),
    );
    config.snapshot_every_entries = args.snapshot_every;
    config.log_entries_kept_after_snapshot = args.log_kept;
    config.checkpoint_every_events = args.checkpoint_every;
    config.ha = HaSettings {
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        lease_ms: args.lease_ms,
        fence_ms: args.fence_ms,
        drift_ms: args.fence_drift_ms,
    };
    config.ha.check().map_err(anyhow::Error::msg).context("the lease settings")?;
    let node = Node::start(config).await.with_context(|| format!("starting replica {}", args.id))?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::server::serve(node.clone(), async move {
        let _ = stop_rx.await;
    }));
    if args.bootstrap {
        node.bootstrap().await.context("bootstrapping the cluster")?;
    }
    if let Some(seed) = &args.join {
        // A replica restarted on its data is a member already: it need not reach the seed
        // (which may be the replica that is down) and goes on after a short try; a seed of
        // another cluster is refused either way.
        let (voters, learners) = node.members();
        let member = node.cluster_id().is_some()
            && (voters.contains(&args.id) || (!args.voter && learners.contains(&args.id)));
        let patience = if member { JOIN_AGAIN_WAIT } else { JOIN_WAIT };
        match node.join(seed, args.voter, patience).await {
            Ok(()) => {}
            Err(e @ raft::node::NodeError::ClusterMismatch { .. }) => {
                return Err(e).with_context(|| format!("joining through {seed}"))
            }
            Err(raft::node::NodeError::Remote(s)) if s.code() == tonic::Code::FailedPrecondition => {
                return Err(anyhow::anyhow!("{}", s.message()))
                    .with_context(|| format!("joining through {seed}"))
            }
            Err(e) if member => {
                warn!(seed, error = %e, "the seed did not answer; going on as the member this replica is")
            }
            Err(e) => return Err(e).with_context(|| format!("joining through {seed}")),
        }
    }
    info!(node = args.id, listen = %args.listen, peer_listen = ?args.peer_listen, cluster = ?node.cluster_id(), "replica ready");

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

/// The verbs a command line names (`domain start`), for its trace.
fn verbs(matches: &clap::ArgMatches) -> String {
    let mut words = Vec::new();
    let mut at = matches;
    while let Some((name, sub)) = at.subcommand() {
        words.push(name);
        at = sub;
    }
    format!("drover {}", words.join(" "))
}

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::Vmm(args) = cli.command {
        // No async runtime, no logging setup: the VMM process stays small.
        return std::process::ExitCode::from(vmm::process::main(args) as u8);
    }
    let default_log = if matches!(cli.command, Command::Server(_) | Command::Hostd(_)) {
        "info,openraft=warn"
    } else {
        "warn"
    };
    // Who exports traces: servers, hosts and client verbs. `up` hands its endpoint to the
    // processes it starts (through the environment they inherit).
    let service = match &cli.command {
        Command::Server(a) => Some(("drover-server", format!("replica-{}", a.id))),
        Command::Hostd(a) => Some(("drover-hostd", a.name.clone())),
        Command::Client(_) => Some(("drover-cli", std::process::id().to_string())),
        Command::Up(_)
        | Command::Vmm(_)
        | Command::Ca(_)
        | Command::Cert(_)
        | Command::Completions { .. } => None,
    };
    if let (Command::Up(_), Some(endpoint)) = (&cli.command, &cli.otlp_endpoint) {
        // Still one thread: nothing reads the environment concurrently.
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        std::env::set_var("OTEL_TRACES_SAMPLER_ARG", cli.trace_sample_ratio.to_string());
    }
    let traces = match (service, &cli.otlp_endpoint) {
        (Some((service, instance)), Some(endpoint)) => Some(raft::telemetry::TraceConfig {
            endpoint: endpoint.clone(),
            sample_ratio: cli.trace_sample_ratio,
            service: service.to_owned(),
            instance,
        }),
        _ => None,
    };
    let exporting =
        match init_logging(cli.log.as_deref().unwrap_or(default_log), cli.log_json, traces.as_ref()) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("drover: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    if let Command::Completions { shell } = cli.command {
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
            Command::Server(args) => run_server(args, cli.client.security()?).await,
            Command::Hostd(args) => {
                Ok(hostd::process::run(args, cli.client.endpoints(), cli.client.security()?).await?)
            }
            Command::Ca(cmd) => api::certs::run_ca(cmd, &mut std::io::stdout()),
            Command::Cert(cmd) => api::certs::run_cert(cmd, &mut std::io::stdout()),
            Command::Up(args) => api::up::run(args, cli.client.insecure, &mut std::io::stdout()).await,
            Command::Client(cmd) => {
                // The CLI's call is the root of its trace.
                let span = raft::traced_root_span!("cli", otel.name = %verbs(&matches), otel.kind = "client");
                api::cli::run(&cli.client, cmd, &mut std::io::stdout()).instrument(span).await
            }
            Command::Completions { .. } | Command::Vmm(_) => Ok(()),
        }
    });
    // Send the spans still waiting (the CLI's are all waiting: it exits now).
    drop(runtime);
    if let Some(exporting) = exporting {
        exporting.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
