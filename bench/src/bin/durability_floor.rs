//! The floor under one durable replicated write on this machine: what a single client's
//! write costs at least, whatever the consensus code does, with the pieces Drover must
//! use (the write-ahead log `raft::kv_wal` for the raft log, openraft 0.9.25, which
//! finishes the leader's log flush before it sends the entry to the followers).
//!
//! Measures, each `--runs` times, p50 and p99:
//! - `fdatasync`: a 256-byte write into a preallocated file, then fdatasync (the disk's own
//!   floor, what etcd's WAL pays);
//! - `wal`: one 256-byte log entry put into Drover's write-ahead log, then the flush that
//!   makes it durable (`raft::kv_wal`, as the log store does it: an fdatasync on a
//!   blocking thread);
//! - `sled`: the same on `raft::kv_sled` (sled's flush, then an fsync of its data file:
//!   what the log would cost on sled at equal durability);
//! - `rtt`: a 256-byte request and answer over loopback TCP (TCP_NODELAY), no gRPC.
//!
//! and prints the serial path of one write at one client: client → leader, leader flush,
//! leader → follower, follower flush, follower → leader, leader → client
//! = 2 × wal + 2 × rtt, before any gRPC, decoding or state-machine work.
//!
//! Usage: `cargo run --release -p bench --bin durability_floor -- [--runs 2000] [--dir D]`
//! (D must be on the disk the replicas use; default `target/durability-floor`).

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use raft::kv::{u64_key, Kv, Tree};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    runs: usize,
    #[arg(long, default_value = "target/durability-floor")]
    dir: PathBuf,
}

const RECORD_BYTES: usize = 256;

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

fn fdatasync(args: &Args) -> anyhow::Result<Vec<Duration>> {
    let path = args.dir.join("fdatasync.bin");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    file.set_len((args.runs * 4096) as u64 + 4096)?;
    file.sync_all()?;
    let record = [0x5au8; RECORD_BYTES];
    let mut out = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        let t = Instant::now();
        file.write_all_at(&record, (i * 4096) as u64)?;
        file.sync_data()?;
        out.push(t.elapsed());
    }
    std::fs::remove_file(path)?;
    Ok(out)
}

fn wal(args: &Args) -> anyhow::Result<Vec<Duration>> {
    let path = args.dir.join("wal");
    let _ = std::fs::remove_dir_all(&path);
    put_and_flush(args, raft::kv_wal::WalKv::open(&path)?, &path)
}

fn sled(args: &Args) -> anyhow::Result<Vec<Duration>> {
    let path = args.dir.join("sled");
    let _ = std::fs::remove_dir_all(&path);
    put_and_flush(args, raft::kv_sled::SledKv::open(&path)?, &path)
}

/// One log entry put and flushed, `--runs` times; `path` is removed after.
fn put_and_flush(args: &Args, kv: impl Kv, path: &std::path::Path) -> anyhow::Result<Vec<Duration>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut out = Vec::with_capacity(args.runs);
    for i in 0..args.runs as u64 {
        let t = Instant::now();
        kv.put_batch(Tree::Log, vec![(u64_key(i).to_vec(), vec![0x5a; RECORD_BYTES])])?;
        rt.block_on(kv.flush())?;
        out.push(t.elapsed());
    }
    drop(kv);
    std::fs::remove_dir_all(path)?;
    Ok(out)
}

fn rtt(args: &Args) -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let runs = args.runs;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; RECORD_BYTES];
        for _ in 0..runs {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut buf = [0x5au8; RECORD_BYTES];
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        out.push(t.elapsed());
    }
    echo.join().expect("echo thread")?;
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    println!("| piece | p50 ms | p99 ms |");
    println!("|---|---|---|");
    let mut p50 = Vec::new();
    for (name, samples) in [
        ("fdatasync", fdatasync(&args)?),
        ("wal put + flush", wal(&args)?),
        ("sled put + flush + fsync", sled(&args)?),
        ("loopback rtt", rtt(&args)?),
    ] {
        let (a, b) = percentiles(samples);
        println!("| {name} | {a:.3} | {b:.3} |");
        p50.push(a);
    }
    let floor = 2.0 * p50[1] + 2.0 * p50[3];
    println!();
    println!(
        "serial floor of one write at one client (2 x wal + 2 x rtt): {floor:.3} ms p50 \
         = at most {:.0} writes/s per client",
        1e3 / floor
    );
    Ok(())
}
