//! `drover up`: a whole local cluster on this machine in one command — 3 control
//! replicas and 3 host agents, each its own process, with their data in one directory
//! that survives a restart. Ctrl-C stops every process cleanly; running `drover up` again
//! resumes the same cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How `drover up` lays the cluster out.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data and logs.
    #[arg(long, default_value = "drover-data")]
    pub data_dir: PathBuf,
    /// The first replica listens here (127.0.0.1); the others on the next ports.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// How many host agents to run.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// The hypervisor driver of the hosts.
    #[arg(long, default_value = "fake")]
    pub driver: String,
}

const REPLICAS: u16 = 3;
const STOP_GRACE_MS: u64 = 10_000;

struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(&mut self, name: &str, args: &[String], log: &Path) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the drover binary")?;
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }

    /// SIGTERM everyone, wait for them, SIGKILL whoever lingers.
    fn stop(&mut self) {
        for (_, c) in &self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        for (name, c) in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{name} did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run the local cluster until Ctrl-C; prints where it is and what to try.
pub async fn run(args: UpArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let addr = |i: u16| format!("127.0.0.1:{}", args.base_port + i);
    let endpoints: Vec<String> = (0..REPLICAS).map(addr).collect();
    let mut children = Children(Vec::new());
    for i in 0..REPLICAS {
        let id = u64::from(i) + 1;
        let mut a = vec![
            "server".to_string(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr(i),
            "--data-dir".into(),
            data_dir.join(format!("replica-{id}")).display().to_string(),
        ];
        if i == 0 {
            a.push("--bootstrap".into());
        } else {
            a.extend(["--join".into(), addr(0), "--voter".into()]);
        }
        children.spawn(&format!("replica {id}"), &a, &logs.join(format!("replica-{id}.log")))?;
    }
    for h in 1..=args.hosts {
        let a = vec![
            "hostd".to_string(),
            "--name".into(),
            format!("host-{h}"),
            "--endpoint".into(),
            endpoints.join(","),
            "--driver".into(),
            args.driver.clone(),
        ];
        children.spawn(&format!("host-{h}"), &a, &logs.join(format!("host-{h}.log")))?;
    }
    writeln!(
        out,
        "Drover is up: {} replicas, {} hosts ({} driver); data in {}\n\
         \n  endpoint   {}\n  logs       {}\n\n\
         Try:\n  drover host list\n  drover domain define web --file web.yaml\n  drover domain start web\n  \
         drover events --from 1 --follow\n  drover audit verify\n\nCtrl-C stops the cluster; `drover up` again resumes it.",
        REPLICAS,
        args.hosts,
        args.driver,
        data_dir.display(),
        endpoints.join(","),
        logs.display(),
    )?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = check.tick() => {
                for (name, c) in &mut children.0 {
                    if let Ok(Some(status)) = c.try_wait() {
                        anyhow::bail!("{name} exited ({status}); see {}", logs.display());
                    }
                }
            }
        }
    }
    writeln!(out, "stopping…")?;
    children.stop();
    writeln!(out, "stopped")?;
    Ok(())
}
