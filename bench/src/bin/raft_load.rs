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
use controlplane::fixtures::kernel_spec;
use raft::client::Client;
use tests::{free_port, Processes};

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
    /// Drive an already running Drover cluster at these replicas instead of starting one.
    #[arg(long, value_delimiter = ',')]
    drover_endpoints: Vec<String>,
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
        return drive_drover(args, args.drover_endpoints.clone()).await;
    }
    let mut p = Processes::new();
    let a1 = p.bootstrap(&["--log", "warn"]).await;
    p.join_voters(&a1, &[2, 3], &["--log", "warn"]).await;
    drive_drover(args, p.addrs()).await
}

async fn drive_drover(args: &Args, endpoints: Vec<String>) -> anyhow::Result<()> {
    let tag = std::process::id();
    // Each `Client` holds its own connections.
    let connections: Vec<Client> =
        (0..args.connections.max(1)).map(|_| Client::new(endpoints.clone())).collect();
    for (run, &clients) in args.clients.iter().enumerate() {
        let connections = connections.clone();
        let stats = load(clients, args.seconds, args.max_ops, move |c, i| {
            let client = connections[c % connections.len()].clone();
            async move {
                let name = format!("p{tag}-r{run}-c{c}-{i}");
                let request = controlplane::Request {
                    request_id: name.clone(),
                    principal: "load".into(),
                    command: controlplane::Command::DefineDomain { name, spec: kernel_spec(1, 64) },
                };
                client.submit(&request).await.is_ok()
            }
        })
        .await;
        report("drover", clients, &stats);
    }
    Ok(())
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
