//! Replication load generator: N concurrent clients write small records to a 3-replica
//! cluster on loopback with fsync on, and the same generator drives etcd 3.4 (Debian's
//! `etcd-server`) as the reference, in the same run.
//!
//! `cargo run --release -p bench --bin raft_load -- --clients 1,16,256 --seconds 10`
//!
//! Drover: 3 `drover server` processes; each write is a `DefineDomain` of a new domain
//! (one event), submitted to the first replica, which bootstrapped the cluster and leads
//! it (the client follows leader hints if that changes), over `--connections` HTTP/2
//! connections (client *c* uses connection *c* mod N).
//! With `--drover-calls unary,batch` (the default) Drover is driven twice: `drover`
//! sends each write as its own `Submit` call (as the CLI and hostd do); `drover-batch`
//! hands each write to a batcher per connection that sends whatever writes are waiting as
//! one `SubmitBatch` call, with at most [`BATCH_CALLS_IN_FLIGHT`] calls in flight per
//! connection (a write's latency includes its wait in the batcher).
//! etcd: 3 members; each write is a `Put` of a new key with a 64-byte value, sent round
//! robin over `--connections` connections spread over the members. Every request loop
//! stops at `--seconds` or `--max-ops`.

// A load generator prints its results table.
#![allow(clippy::print_stdout)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use raft::client::Client;
use raft::tls::Transport;
use tests::{define_request, free_port, Processes};

mod etcdpb {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Drover,
    Etcd,
    Both,
}

/// How Drover's writes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Calls {
    /// One `Submit` call per write.
    Unary,
    /// Waiting writes together in `SubmitBatch` calls.
    Batch,
}

/// `SubmitBatch` calls one batcher keeps in flight at once.
const BATCH_CALLS_IN_FLIGHT: usize = 2;

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent client counts to run, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most writes per run.
    #[arg(long, default_value_t = 1_000_000)]
    max_ops: usize,
    #[arg(long, value_enum, default_value = "both")]
    system: System,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Client connections per system: Drover's clients share this many HTTP/2
    /// connections to the leader; etcd's this many, spread over its members.
    #[arg(long, default_value_t = 3)]
    connections: usize,
    /// How Drover's writes are sent; each is run and reported.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "unary,batch")]
    drover_calls: Vec<Calls>,
    /// Drive an already running Drover cluster at these replicas instead of starting one.
    #[arg(long, value_delimiter = ',')]
    drover_endpoints: Vec<String>,
    /// Start Drover's replicas with --metrics-listen (what metrics cost).
    #[arg(long)]
    metrics: bool,
    /// Start Drover's replicas exporting traces, keeping this share of them (what traces
    /// cost), to a receiver in this process.
    #[arg(long)]
    trace_sample_ratio: Option<f64>,
    /// Run Drover's replicas and clients with mutual TLS (what TLS costs).
    #[arg(long)]
    tls: bool,
}

#[derive(Debug)]
struct Stats {
    ops: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Run `clients` loops of `op` for `seconds` (at most `max_ops` in all).
async fn load<F, Fut>(clients: usize, seconds: u64, max_ops: usize, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, issued) = (op.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = 0;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_ops {
                let t = Instant::now();
                if op(c, i).await {
                    lat.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("client task");
        all.extend(lat);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    Stats { ops: all.len(), errors, secs, p50_ms: pct(0.50), p99_ms: pct(0.99) }
}

fn report(system: &str, clients: usize, s: &Stats) {
    println!(
        "| {system} | {clients} | {:.0} | {:.2} | {:.2} | {} | {} |",
        s.ops as f64 / s.secs,
        s.p50_ms,
        s.p99_ms,
        s.ops,
        s.errors
    );
}

async fn drover(args: &Args) -> anyhow::Result<()> {
    if !args.drover_endpoints.is_empty() {
        return drive_drover(args, args.drover_endpoints.clone(), Transport::insecure()).await;
    }
    let mut p = if args.tls { Processes::new().with_tls() } else { Processes::new() };
    let (receiver, trace_flags) = bench::traced(args.trace_sample_ratio).await;
    let flags: Vec<&str> =
        ["--log", "warn"].into_iter().chain(trace_flags.iter().map(String::as_str)).collect();
    let (_, metrics) = p.three_voters(&flags, args.metrics).await;
    if args.metrics {
        println!("metrics at {}", metrics.join(" "));
    }
    // Its writes go straight to the replication service, as a member would send them.
    drive_drover(args, p.peer_addrs(), p.member_transport()).await?;
    if let Some(receiver) = receiver {
        // The replicas export every 500 ms: what arrived by now is what they made.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        println!("spans received: {}", receiver.count());
    }
    Ok(())
}

async fn drive_drover(args: &Args, endpoints: Vec<String>, transport: Transport) -> anyhow::Result<()> {
    let tag = std::process::id();
    // Each `Client` holds its own connections.
    let connections: Vec<Client> = (0..args.connections.max(1))
        .map(|_| Client::with_transport(endpoints.clone(), transport.clone()))
        .collect();
    let mut run = 0;
    for &calls in &args.drover_calls {
        for &clients in &args.clients {
            run += 1;
            let write = move |c: usize, i: usize| define_request(&format!("p{tag}-r{run}-c{c}-{i}"), "load");
            let stats = match calls {
                Calls::Unary => {
                    let connections = connections.clone();
                    load(clients, args.seconds, args.max_ops, move |c, i| {
                        let client = connections[c % connections.len()].clone();
                        async move { client.submit(&write(c, i)).await.is_ok() }
                    })
                    .await
                }
                Calls::Batch => {
                    let batchers: Vec<Batcher> =
                        connections.iter().map(|c| Batcher::start(c.clone())).collect();
                    load(clients, args.seconds, args.max_ops, move |c, i| {
                        let batcher = batchers[c % batchers.len()].clone();
                        async move { batcher.submit(write(c, i)).await }
                    })
                    .await
                }
            };
            report(if calls == Calls::Unary { "drover" } else { "drover-batch" }, clients, &stats);
        }
    }
    Ok(())
}

type Waiting = (controlplane::Request, tokio::sync::oneshot::Sender<bool>);

/// Sends the writes handed to it as `SubmitBatch` calls: whatever waits when a call may
/// start goes in it (up to the server's limit).
#[derive(Debug, Clone)]
struct Batcher {
    queue: tokio::sync::mpsc::UnboundedSender<Waiting>,
}

impl Batcher {
    fn start(client: Client) -> Batcher {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<Waiting>();
        let slots = Arc::new(tokio::sync::Semaphore::new(BATCH_CALLS_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < raft::service::SUBMIT_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let client = client.clone();
                tokio::spawn(async move {
                    let (requests, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let outcomes = client.submit_batch(&requests).await;
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        let _ = answer.send(outcome.is_ok());
                    }
                    drop(slot);
                });
            }
        });
        Batcher { queue }
    }

    async fn submit(&self, request: controlplane::Request) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.queue.send((request, tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

struct Etcd(Vec<Child>);

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn etcd(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let peers: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = peers
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Etcd(Vec::new());
    for (i, (client, peer)) in peers.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
        let child = Command::new(&args.etcd)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} (install Debian's etcd-server)", args.etcd))?;
        children.0.push(child);
    }
    let channels: Vec<tonic::transport::Channel> = (0..args.connections.max(1))
        .map(|k| &peers[k % peers.len()])
        .map(|(client, _)| {
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{client}"))
                .expect("endpoint")
                .tcp_nodelay(true)
                .connect_lazy()
        })
        .collect();
    let put = |ch: tonic::transport::Channel, key: String| async move {
        let mut kv = etcdpb::kv_client::KvClient::new(ch);
        let mut req = tonic::Request::new(etcdpb::PutRequest {
            key: key.into_bytes(),
            value: vec![7u8; 64],
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(10));
        kv.put(req).await.is_ok()
    };
    let ready = Instant::now() + Duration::from_secs(30);
    while !put(channels[0].clone(), "ready".into()).await {
        if Instant::now() > ready {
            bail!("etcd did not come up; see its logs in {}", dir.path().display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (run, &clients) in args.clients.iter().enumerate() {
        let channels = channels.clone();
        let stats = load(clients, args.seconds, args.max_ops, move |c, i| {
            let ch = channels[(c + i) % channels.len()].clone();
            put(ch, format!("r{run}-c{c}-{i}"))
        })
        .await;
        report("etcd 3.4", clients, &stats);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| system | clients | writes/s | p50 ms | p99 ms | writes | errors |");
    println!("|---|---|---|---|---|---|---|");
    if matches!(args.system, System::Drover | System::Both) {
        drover(&args).await?;
    }
    if matches!(args.system, System::Etcd | System::Both) {
        etcd(&args).await?;
    }
    Ok(())
}
