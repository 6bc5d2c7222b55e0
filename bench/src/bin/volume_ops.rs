//! Volume create and clone through the whole path — the API call, the raft commit, the
//! host's replica, hostd making the file (`hostd::dir_pool`), its report committed — until
//! the volume reads `ready`, beside `qemu-img` making the same file alone, in one run on
//! this machine: raw (sparse), qcow2, and a qcow2 clone (an overlay on a qcow2 base).
//!
//! One control replica and one `drover hostd` (qemu driver; no VM runs), a pool in a
//! temporary directory; the volumes are 1 GiB.
//!
//! Usage: `cargo run --release -p bench --bin volume_ops -- --runs 20`.

#![allow(clippy::print_stdout)] // a report on stdout is its output

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use controlplane::model::VolumeFormat;
use proto::api as pb;
use proto::api::volumes_client::VolumesClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

const DEADLINE: Duration = Duration::from_secs(30);
const CAPACITY_MIB: u64 = 1024;

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn vref(name: &str) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef { pool: "bench".into(), name: name.into() })
}

/// Create a volume through the API and wait until it is ready; returns the time taken.
async fn through_drover(
    client: &mut VolumesClient<Channel>,
    name: &str,
    format: &str,
    backing: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    client
        .create(pb::CreateVolumeRequest {
            request_id: format!("bench-{name}"),
            volume: vref(name),
            format: pb::VolumeFormat::from(format.parse::<VolumeFormat>().map_err(anyhow::Error::msg)?)
                .into(),
            capacity_mib: CAPACITY_MIB,
            backing: backing.into(),
            preallocate: false,
            import: String::new(),
        })
        .await?;
    loop {
        let v = client
            .get(pb::GetVolumeRequest {
                volume: vref(name),
                consistency: pb::Consistency::Linearizable as i32,
            })
            .await?
            .into_inner();
        match v.state() {
            pb::VolumeState::Ready => return Ok(started.elapsed().as_secs_f64() * 1e3),
            pb::VolumeState::Failed => bail!("volume {name} failed: {}", v.failure),
            _ if started.elapsed() > DEADLINE => bail!("volume {name} not ready after {DEADLINE:?}"),
            _ => tokio::time::sleep(Duration::from_micros(200)).await,
        }
    }
}

/// `qemu-img create` alone; returns the time taken.
fn through_qemu_img(dir: &Path, name: &str, format: &str, backing: Option<&Path>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", format]);
    if let Some(b) = backing {
        cmd.arg("-b").arg(b).args(["-F", "qcow2"]);
    }
    let status = cmd.arg(dir.join(name)).arg(format!("{CAPACITY_MIB}M")).status()?;
    if !status.success() {
        bail!("qemu-img create {name} failed");
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let pool = dir.path().join("pool");
    let alone = dir.path().join("alone");
    std::fs::create_dir_all(&alone)?;
    let mut processes = tests::Processes::new();
    let endpoint = processes.bootstrap(tests::NO_HOSTD).await;
    let log = std::fs::File::create(dir.path().join("hostd.log"))?;
    let mut hostd = Command::new(tests::drover_bin())
        .args(["--endpoint", &endpoint, "hostd", "--name", "h1", "--driver", "qemu", "--tick-ms", "200"])
        .args(["--vcpus", "8", "--memory-mib", "4096", "--run-dir"])
        .arg(dir.path().join("run"))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let drover = |a: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(tests::drover_bin()).args(["--endpoint", &endpoint]).args(a).output()?;
        if !out.status.success() {
            bail!("drover {a:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    tests::wait_for("h1 to be ready", DEADLINE, || async {
        drover(&["host", "list"]).ok().filter(|o| o.lines().any(|l| l.contains(" ready "))).map(|_| ())
    })
    .await;
    let capacity = (CAPACITY_MIB * (3 * args.runs as u64 + 2)).to_string();
    drover(&[
        "pool",
        "create",
        "bench",
        "--path",
        pool.to_str().context("path")?,
        "--capacity-mib",
        &capacity,
    ])?;
    let mut client = VolumesClient::connect(format!("http://{endpoint}")).await?;
    through_drover(&mut client, "base", "qcow2", "").await?;
    through_qemu_img(&alone, "base", "qcow2", None)?;

    let (mut raw, mut qcow2, mut clone) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_alone, mut qcow2_alone, mut clone_alone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.runs {
        raw.push(through_drover(&mut client, &format!("raw{i}"), "raw", "").await?);
        raw_alone.push(through_qemu_img(&alone, &format!("raw{i}"), "raw", None)?);
        qcow2.push(through_drover(&mut client, &format!("q{i}"), "qcow2", "").await?);
        qcow2_alone.push(through_qemu_img(&alone, &format!("q{i}"), "qcow2", None)?);
        clone.push(through_drover(&mut client, &format!("c{i}"), "qcow2", "base").await?);
        clone_alone.push(through_qemu_img(&alone, &format!("c{i}"), "qcow2", Some(&alone.join("base")))?);
    }
    let files = std::fs::read_dir(&pool)?.count();
    if files != 3 * args.runs + 1 {
        bail!("{files} files in the pool, expected {}", 3 * args.runs + 1);
    }
    println!("volume create to ready, {CAPACITY_MIB} MiB, p50 of {} runs (ms):", args.runs);
    println!("| what | drover (API to ready) | qemu-img alone | ratio |");
    println!("|---|---|---|---|");
    for (what, d, q) in
        [("raw (sparse)", raw, raw_alone), ("qcow2", qcow2, qcow2_alone), ("qcow2 clone", clone, clone_alone)]
    {
        let (d, q) = (p50(d), p50(q));
        println!("| {what} | {d:.1} | {q:.1} | {:.2}x |", d / q);
    }
    let _ = hostd.kill();
    let _ = hostd.wait();
    Ok(())
}
