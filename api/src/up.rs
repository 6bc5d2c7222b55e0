//! `drover up`: a whole local cluster on this machine in one command — 3 control
//! replicas and 3 host agents, each its own process, with their data in one directory
//! that survives a restart. The hosts run real guests under Drover's own VMM where
//! `/dev/kvm` works (the fake driver otherwise, said loudly); `up` writes the test guest
//! and an example domain spec that boots it into the data directory. A process that dies
//! is restarted (with backoff) while the others go on serving; Ctrl-C stops every process
//! and VM cleanly; running `drover up` again resumes the same cluster, and hosts start
//! again the domains that should run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How `drover up` lays the cluster out.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data and logs.
    #[arg(long, default_value = "drover-data")]
    pub data_dir: PathBuf,
    /// The first replica's public API listens here (127.0.0.1); the others on the next
    /// ports, then the hosts' replicas (from --base-port + 4).
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// The replicas' peer services (raft, replication) listen on 127.0.0.1 from this port
    /// up. Default: --base-port + 50.
    #[arg(long)]
    pub peer_base_port: Option<u16>,
    /// How many host agents to run.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// The hypervisor driver of the hosts: kvm, fake, or auto (kvm where /dev/kvm works).
    #[arg(long, default_value = "auto")]
    pub driver: String,
    /// Every replica and host serves Prometheus metrics on 127.0.0.1 from this port up
    /// (replicas first, then hosts). Default: --base-port + 100.
    #[arg(long)]
    pub metrics_base_port: Option<u16>,
    /// Write the client config only into the data directory (`config.toml`), not to the
    /// user's default config file as well.
    #[arg(long)]
    pub no_user_config: bool,
}

/// Make (once) the cluster's CA and a certificate for each replica, each host and the
/// admin user under `<data_dir>/tls`, all reached on 127.0.0.1; returns the admin's
/// directory. A cluster resumed keeps its CA and certificates.
fn make_certificates(data_dir: &Path, hosts: usize) -> anyhow::Result<PathBuf> {
    use crate::certs::{Ca, Validity};
    use raft::tls::Kind;
    let tls = data_dir.join("tls");
    let ca_dir = tls.join("ca");
    let ca = if ca_dir.join(crate::certs::CA_KEY).exists() {
        Ca::load(&ca_dir)?
    } else {
        Ca::create(&ca_dir, "drover up", Validity::days(crate::certs::CA_DAYS_DEFAULT)?)?
    };
    let local = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let mut holders: Vec<(Kind, String)> =
        (1..=u64::from(REPLICAS)).map(|id| (Kind::Replica, id.to_string())).collect();
    holders.extend((1..=hosts).map(|h| (Kind::Host, format!("host-{h}"))));
    holders.push((Kind::User, ADMIN.to_owned()));
    for (kind, name) in holders {
        let dir = tls_dir(data_dir, kind, &name);
        let role = if kind == Kind::User { raft::tls::Role::Admin } else { raft::tls::Role::Viewer };
        if !raft::tls::TlsFiles::new(&dir).cert().exists() {
            let days = Validity::days(crate::certs::CERT_DAYS_DEFAULT)?;
            ca.issue_with_role(kind, &name, role, &local, days, &dir)?;
        }
    }
    Ok(tls_dir(data_dir, Kind::User, ADMIN))
}

/// The user `drover up` makes a certificate for.
pub const ADMIN: &str = "admin";

/// Where `up` keeps the TLS directory of `kind` `name`.
pub fn tls_dir(data_dir: &Path, kind: raft::tls::Kind, name: &str) -> PathBuf {
    match kind {
        raft::tls::Kind::Replica => data_dir.join("tls").join(format!("replica-{name}")),
        _ => data_dir.join("tls").join(name),
    }
}

/// The example domain spec `up` writes: the test guest, printing a counter every second.
fn example_spec(kernel: &Path) -> String {
    format!(
        "# Drover's test guest (hostd/guest): prints {} and then a counter.\n\
         vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: drover.tick_ms=1000\n",
        testguest::MARKER,
        kernel.display()
    )
}

/// End every VM the hosts of this cluster left running (their VMMs outlive hostd, by
/// design) and drop the hosts' records of them, so the next `up` starts afresh the
/// domains that should run instead of re-adopting VMs that are gone.
fn destroy_vms(data_dir: &Path, hosts: usize) -> usize {
    let mut destroyed = 0;
    for h in 1..=hosts {
        let Ok(entries) = std::fs::read_dir(data_dir.join(format!("host-{h}")).join("vms")) else { continue };
        for e in entries.flatten() {
            let dir = e.path();
            let socket = dir.join(vmm::control::SOCKET_FILE);
            if socket.exists() && vmm::control::call(&socket, vmm::control::Request::Destroy).is_ok() {
                destroyed += 1;
                let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
                while socket.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            for f in [vmm::control::CONFIG_FILE, vmm::control::EXIT_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
    }
    destroyed
}

const REPLICAS: u16 = 3;
/// The file in the data directory that names its layout of ports, and the layout this
/// build runs. Without the file, a data directory with replicas in it is from before the
/// replicas had peer ports of their own: its membership names one port per replica, which
/// no longer serves the peer services.
const LAYOUT_FILE: &str = "layout";
const LAYOUT: &str = "2: the replicas' public API and peer services on ports of their own\n";
const STOP_GRACE_MS: u64 = 10_000;
/// How often `up` looks for processes that died.
const SUPERVISE_EVERY_MS: u64 = 200;

/// Restart backoff: the first wait, doubled on each quick death up to the most.
const RESTART_BACKOFF_MS: u64 = 500;
const RESTART_BACKOFF_MAX_MS: u64 = 30_000;
/// A process that ran this long before dying is restarted at once again.
const RESTART_FORGIVEN_MS: u64 = 60_000;

/// One supervised process of the cluster.
struct Member {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    started: Instant,
    /// Deaths in a row, each within [`RESTART_FORGIVEN_MS`] of its start.
    quick_deaths: u32,
    restart_at: Option<Instant>,
}

/// The cluster's processes, restarted when they die; all stopped on drop.
struct Children(Vec<Member>);

impl Children {
    fn spawn(&mut self, name: &str, args: &[String], log: &Path) -> anyhow::Result<()> {
        let mut member = Member {
            name: name.to_owned(),
            args: args.to_vec(),
            log: log.to_owned(),
            child: None,
            started: Instant::now(),
            quick_deaths: 0,
            restart_at: None,
        };
        member.start()?;
        self.0.push(member);
        Ok(())
    }

    /// Notice deaths and restart who is due; says what it did on `out`.
    fn supervise(&mut self, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        let now = Instant::now();
        for m in &mut self.0 {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                m.child = None;
                let ran = now.duration_since(m.started);
                m.quick_deaths =
                    if ran.as_millis() as u64 >= RESTART_FORGIVEN_MS { 0 } else { m.quick_deaths + 1 };
                let wait = RESTART_BACKOFF_MS
                    .saturating_mul(1 << m.quick_deaths.saturating_sub(1).min(16))
                    .min(RESTART_BACKOFF_MAX_MS);
                m.restart_at = Some(now + Duration::from_millis(wait));
                writeln!(
                    out,
                    "{} exited ({status}); restarting it in {wait} ms (log: {})",
                    m.name,
                    m.log.display()
                )?;
            }
            if m.restart_at.is_some_and(|at| at <= now) {
                m.restart_at = None;
                match m.start() {
                    Ok(()) => writeln!(out, "{} restarted", m.name)?,
                    Err(e) => {
                        writeln!(out, "{} could not be restarted: {e:#}", m.name)?;
                        m.restart_at = Some(now + Duration::from_millis(RESTART_BACKOFF_MAX_MS));
                    }
                }
            }
        }
        out.flush()?;
        Ok(())
    }

    /// SIGTERM everyone, wait for them, SIGKILL whoever lingers.
    fn stop(&mut self) {
        for c in self.0.iter().filter_map(|m| m.child.as_ref()) {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        for m in &mut self.0 {
            let Some(c) = m.child.as_mut() else { continue };
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{} did not stop in time; killing it", m.name);
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

impl Member {
    fn start(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the drover binary")?;
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first port of each range `up` listens on (all on 127.0.0.1): the replicas' public
/// APIs from `public` (then one left free, then the hosts' replicas), their peer services
/// from `peer`, everyone's metrics from `metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    public: u16,
    peer: u16,
    metrics: u16,
}

impl Ports {
    /// The layout for `hosts` hosts, refused where two ranges overlap or one passes the
    /// last port.
    fn new(public: u16, peer: u16, metrics: u16, hosts: u16) -> anyhow::Result<Ports> {
        let ranges = [
            ("--base-port", public, REPLICAS + 1 + hosts),
            ("--peer-base-port", peer, REPLICAS),
            ("--metrics-base-port", metrics, REPLICAS + hosts),
        ];
        for (flag, first, count) in ranges {
            if u32::from(first) + u32::from(count) > u32::from(u16::MAX) + 1 {
                bail!("{flag} {first}: its {count} ports pass 65535");
            }
        }
        for (i, (a, a_first, a_count)) in ranges.iter().enumerate() {
            for (b, b_first, b_count) in &ranges[i + 1..] {
                if a_first < &(b_first + b_count) && b_first < &(a_first + a_count) {
                    bail!(
                        "the ports from {a} {a_first} ({a_count}) and {b} {b_first} ({b_count}) overlap; pick other bases"
                    );
                }
            }
        }
        Ok(Ports { public, peer, metrics })
    }
}

/// Run the local cluster until Ctrl-C; prints where it is and what to try.
/// Without `insecure`, every process gets a certificate of the cluster's own CA and the
/// CLI's config names the admin's.
pub async fn run(args: UpArgs, insecure: bool, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let layout = data_dir.join(LAYOUT_FILE);
    match std::fs::read_to_string(&layout) {
        Ok(l) if l == LAYOUT => {}
        Ok(l) => bail!("{} has the layout {:?}, which this build does not run", data_dir.display(), l.trim()),
        Err(_) if data_dir.join("replica-1").exists() => bail!(
            "{} holds a cluster from before the replicas' peer ports (one port per replica, named in its membership); this build cannot resume it: remove the directory to start afresh",
            data_dir.display()
        ),
        Err(_) => std::fs::write(&layout, LAYOUT).with_context(|| format!("writing {}", layout.display()))?,
    }
    let hosts = u16::try_from(args.hosts).context("too many hosts")?;
    let metrics_base = args.metrics_base_port.unwrap_or(args.base_port.saturating_add(100));
    let peer_base = args.peer_base_port.unwrap_or(args.base_port.saturating_add(50));
    let ports = Ports::new(args.base_port, peer_base, metrics_base, hosts)?;
    let addr = |i: u16| format!("127.0.0.1:{}", ports.public + i);
    let peer_addr = |i: u16| format!("127.0.0.1:{}", ports.peer + i);
    let endpoints: Vec<String> = (0..REPLICAS).map(addr).collect();
    let metrics_addr = |i: u16| format!("127.0.0.1:{}", ports.metrics + i);
    let metrics: Vec<String> = (0..REPLICAS + hosts).map(metrics_addr).collect();
    let driver = match args.driver.as_str() {
        "auto" if vmm::kvm_usable() => "kvm".to_owned(),
        "auto" => {
            writeln!(
                out,
                "WARNING: /dev/kvm is not usable here; the hosts run the fake driver (no real guests)"
            )?;
            "fake".to_owned()
        }
        other => other.to_owned(),
    };
    let images = data_dir.join("images");
    std::fs::create_dir_all(&images)?;
    let guest = images.join("drover-test-guest.elf");
    testguest::write_to(&guest).with_context(|| format!("writing {}", guest.display()))?;
    let example = data_dir.join("hello.yaml");
    std::fs::write(&example, example_spec(&guest))?;
    let admin = if insecure { None } else { Some(make_certificates(&data_dir, args.hosts)?) };
    let tls_args = |kind: raft::tls::Kind, name: &str| -> Vec<String> {
        match admin {
            Some(_) => vec!["--tls-dir".into(), tls_dir(&data_dir, kind, name).display().to_string()],
            None => Vec::new(),
        }
    };
    let config =
        crate::config::ClientConfig { endpoints: endpoints.clone(), tls_dir: admin.clone(), token: None };
    let config_file = data_dir.join("config.toml");
    crate::config::write(&config_file, &config)?;
    let user_config = (!args.no_user_config).then(crate::config::default_path).flatten();
    let user_config = match user_config {
        // A config the user wrote is theirs: only one `up` wrote is replaced.
        Some(p)
            if !p.exists()
                || std::fs::read_to_string(&p).is_ok_and(|t| t.starts_with(crate::config::WRITTEN_BY_UP)) =>
        {
            crate::config::write(&p, &config)?;
            Some(p)
        }
        Some(p) => {
            writeln!(
                out,
                "WARNING: {} is not one `drover up` wrote; left alone (use --config {})",
                p.display(),
                config_file.display()
            )?;
            None
        }
        None => None,
    };
    let mut children = Children(Vec::new());
    for i in 0..REPLICAS {
        let id = u64::from(i) + 1;
        let mut a = vec![
            "server".to_string(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr(i),
            "--peer-listen".into(),
            peer_addr(i),
            "--data-dir".into(),
            data_dir.join(format!("replica-{id}")).display().to_string(),
            "--metrics-listen".into(),
            metrics_addr(i),
        ];
        a.extend(tls_args(raft::tls::Kind::Replica, &id.to_string()));
        if i == 0 {
            a.push("--bootstrap".into());
        } else {
            a.extend(["--join".into(), addr(0), "--voter".into()]);
        }
        children.spawn(&format!("replica {id}"), &a, &logs.join(format!("replica-{id}.log")))?;
    }
    for h in 1..=args.hosts {
        let host_port = u16::try_from(h).context("too many hosts")?;
        let mut a = vec![
            "hostd".to_string(),
            "--name".into(),
            format!("host-{h}"),
            "--endpoint".into(),
            endpoints.join(","),
            "--driver".into(),
            driver.clone(),
            "--run-dir".into(),
            data_dir.join(format!("host-{h}")).join("vms").display().to_string(),
            // One snapshot directory for every host, as shared storage would give.
            "--snapshot-dir".into(),
            data_dir.join("snapshots").display().to_string(),
            // Every host holds a replica of the log (a raft learner), ids from 101, on
            // base+4.. (base+3 is left free: kept as it was, since a cluster resumed
            // with `drover up` has its learners' addresses in its membership).
            "--replica-dir".into(),
            data_dir.join(format!("host-{h}")).join("replica").display().to_string(),
            "--replica-id".into(),
            (100 + u64::from(host_port)).to_string(),
            "--replica-listen".into(),
            addr(REPLICAS + host_port),
            "--metrics-listen".into(),
            metrics_addr(REPLICAS + host_port - 1),
        ];
        a.extend(tls_args(raft::tls::Kind::Host, &format!("host-{h}")));
        children.spawn(&format!("host-{h}"), &a, &logs.join(format!("host-{h}.log")))?;
    }
    // The commands to try name this very binary: `drover` is usually not on the PATH (it
    // is wherever cargo built it).
    let mut d = std::env::current_exe().map_or_else(|_| "drover".to_owned(), |p| p.display().to_string());
    if user_config.is_none() {
        d = format!("\"{d} --config {}\"", config_file.display());
    }
    let security = match &admin {
        Some(a) => format!(
            "mutual TLS, CA and certificates in {}; the CLI is admin ({})",
            data_dir.join("tls").display(),
            a.display()
        ),
        None => "INSECURE: no TLS (--insecure)".to_owned(),
    };
    let config_shown = user_config.as_ref().unwrap_or(&config_file).display().to_string();
    writeln!(
        out,
        "Drover is up: {} replicas, {} hosts ({} driver); data in {}\n\
         \n  endpoint   {}\n  peers      {} (raft and replication: members only)\n  security   {security}\n  config     {config_shown}\n  metrics    {}\n  logs       {}\n\n\
         Try:\n  D={d}\n  $D host list\n  $D domain define hello --file {}\n  $D domain start hello\n  \
         tail -f {}/host-*/vms/hello/console.log\n  \
         $D snapshot create hello s1\n  $D events --from 1 --follow\n  $D audit verify\n\n\
         Ctrl-C stops the cluster; `$D up` again resumes it.",
        REPLICAS,
        args.hosts,
        driver,
        data_dir.display(),
        endpoints.join(","),
        (0..REPLICAS).map(peer_addr).collect::<Vec<_>>().join(","),
        metrics.iter().map(|m| format!("http://{m}/metrics")).collect::<Vec<_>>().join(" "),
        logs.display(),
        example.display(),
        data_dir.display(),
    )?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut check = tokio::time::interval(Duration::from_millis(SUPERVISE_EVERY_MS));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = check.tick() => children.supervise(out)?,
        }
    }
    writeln!(out, "stopping…")?;
    children.stop();
    let vms = destroy_vms(&data_dir, args.hosts);
    writeln!(out, "stopped ({vms} VMs ended; they start again with the cluster)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_ranges_may_not_overlap_or_pass_the_last_port() {
        let ok = Ports::new(7401, 7451, 7501, 3).unwrap();
        assert_eq!(ok, Ports { public: 7401, peer: 7451, metrics: 7501 });
        // Hosts' replicas run from base + 4: 47 hosts reach the peer ports at base + 50.
        assert!(Ports::new(7401, 7451, 7601, 46).is_ok());
        let e = Ports::new(7401, 7451, 7601, 47).unwrap_err().to_string();
        assert!(e.contains("--base-port 7401") && e.contains("--peer-base-port 7451"), "{e}");
        assert!(Ports::new(7401, 7402, 7501, 3).is_err());
        assert!(Ports::new(7401, 7451, 7453, 3).is_err());
        assert!(Ports::new(65534, 7451, 7501, 3).unwrap_err().to_string().contains("65535"));
    }
}
