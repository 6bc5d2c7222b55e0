//! Placements committed per second: a 3-replica cluster with 100 ready hosts; N domains
//! are defined, then started (each start runs the scheduler on the leader and commits a
//! placement), by C concurrent clients through the public gRPC API.
//!
//! `cargo run --release -p bench --bin placements -- --domains 10000 --clients 64`
//!
//! Hosts are registered through the API as hostd would; no VM is started (the placement
//! is the control plane's work; the drivers are measured in the hostd benches).

// A load generator prints its results.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use proto::api as pb;
use proto::api::domains_client::DomainsClient;
use proto::api::hosts_client::HostsClient;
use tests::Processes;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    domains: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Give up after this many seconds per phase.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Start the replicas with --metrics-listen (what metrics cost).
    #[arg(long)]
    metrics: bool,
    /// Start the replicas exporting traces, keeping this share of them (what traces
    /// cost), to a receiver in this process.
    #[arg(long)]
    trace_sample_ratio: Option<f64>,
    /// Run the replicas and the client with mutual TLS (what TLS costs).
    #[arg(long)]
    tls: bool,
}

fn spec() -> pb::DomainSpec {
    pb::DomainSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: Some(pb::domain_spec::Boot::Kernel(pb::KernelBoot {
            kernel: "/var/lib/drover/vmlinux".into(),
            initrd: String::new(),
            cmdline: "console=ttyS0".into(),
        })),
        ..Default::default()
    }
}

/// Run `op(i)` for i in 0..n over `clients` tasks; returns (seconds, failures).
async fn phase<F, Fut>(n: usize, clients: usize, timeout: Duration, op: F) -> (f64, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + timeout;
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (op, next, failures) = (op.clone(), next.clone(), failures.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || Instant::now() > deadline {
                        return;
                    }
                    if !op(i).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    (start.elapsed().as_secs_f64(), failures.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut p = if args.tls { Processes::new().with_tls() } else { Processes::new() };
    // The hosts are registered here, with no hostd renewing their leases.
    let (receiver, trace_flags) = bench::traced(args.trace_sample_ratio).await;
    let trace_flags: Vec<&str> = trace_flags.iter().map(String::as_str).collect();
    let flags = [&["--log", "warn"][..], tests::NO_HOSTD, &trace_flags].concat();
    let (a1, _) = p.three_voters(&flags, args.metrics).await;
    let channel: Channel = p.transport().endpoint(&a1)?.connect_lazy();
    let mut hosts = HostsClient::new(channel.clone());
    for i in 0..args.hosts {
        let name = format!("host-{i}");
        hosts
            .register(pb::RegisterHostRequest {
                request_id: format!("reg-{name}"),
                name: name.clone(),
                address: format!("127.0.0.1:{}", 20_000 + i),
                capacity: Some(pb::Resources { vcpus: 512, memory_mib: 1 << 20 }),
                labels: Default::default(),
                vm_limits: None,
            })
            .await?;
        hosts
            .set_state(pb::SetHostStateRequest {
                request_id: format!("ready-{name}"),
                name,
                state: pb::HostState::Ready.into(),
            })
            .await?;
    }
    let timeout = Duration::from_secs(args.timeout_s);
    let domains = DomainsClient::new(channel);
    let d = domains.clone();
    let (define_s, define_failed) = phase(args.domains, args.clients, timeout, move |i| {
        let mut d = d.clone();
        async move {
            let name = format!("vm-{i}");
            d.define(pb::DefineDomainRequest { request_id: format!("def-{name}"), name, spec: Some(spec()) })
                .await
                .is_ok()
        }
    })
    .await;
    let d = domains.clone();
    let (start_s, start_failed) = phase(args.domains, args.clients, timeout, move |i| {
        let mut d = d.clone();
        async move {
            let name = format!("vm-{i}");
            d.start(pb::DomainActionRequest { request_id: format!("start-{name}"), name }).await.is_ok()
        }
    })
    .await;
    let placed = domains
        .clone()
        .max_decoding_message_size(256 << 20)
        .list(pb::ListDomainsRequest { consistency: 0, ..Default::default() })
        .await?
        .into_inner()
        .domains
        .iter()
        .filter(|d| d.status.as_ref().is_some_and(|s| !s.host.is_empty()))
        .count();
    println!("| phase | domains | clients | seconds | per second | failed |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| define | {} | {} | {define_s:.2} | {:.0} | {define_failed} |",
        args.domains,
        args.clients,
        args.domains as f64 / define_s
    );
    println!(
        "| start (placement) | {} | {} | {start_s:.2} | {:.0} | {start_failed} |",
        args.domains,
        args.clients,
        args.domains as f64 / start_s
    );
    println!("placed domains: {placed}");
    if let Some(receiver) = receiver {
        // The replicas export every 500 ms: what arrived by now is what they made.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("spans received: {}", receiver.count());
    }
    Ok(())
}
