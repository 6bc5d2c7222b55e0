//! Drover's multi-process tests.
//!
//! Contract: tests here start real Drover processes (the `drover` binary) on loopback,
//! talk to them over real gRPC sockets, and kill them with SIGKILL. Shared harness code
//! lives in this library; the tests live in `tests/tests/`. Every wait has a deadline.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod otlp;

/// The `drover` binary, built once per test run (same profile as the tests).
pub fn drover_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
        let mut profile_dir = exe.parent().expect("the executable has a directory");
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir = profile_dir.parent().expect("target/<profile>");
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        // The standalone VMM too: hostd runs the `drover-vmm` beside `drover` where there
        // is one, so a stale one would run every kvm test's VMs.
        let mut cmd = testguest::cargo_from_a_test();
        cmd.args(["build", "--quiet", "--bin", "drover", "--bin", "drover-vmm"]);
        if release {
            // Benchmarks measure the binary a user builds: its own package's features.
            cmd.args(["--release", "-p", "api", "-p", "vmm"]);
        } else {
            // Tests share the dependencies `cargo test --workspace` built: the same
            // feature set, resolved over the workspace with dev-dependencies (`--examples`
            // asks for those and builds nothing: there are none). Resolved for `-p api`
            // alone, tokio and libc differ and the whole async stack is built again.
            cmd.args(["--workspace", "--examples"]);
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the drover binary failed");
        let bin = profile_dir.join("drover");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// Server flags for a cluster whose hosts the test registers itself, with no hostd to
/// renew their leases: leases long enough that HA never suspects or fences them while
/// the test runs.
pub const NO_HOSTD: &[&str] = &["--lease-ms", "600000", "--fence-ms", "600000"];

/// Whether process `pid` runs (a zombie does not count).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("addr").port()
}

/// `n` consecutive ports on 127.0.0.1, free a moment ago, starting at the one returned,
/// for processes that bind them later (a `drover up`'s replicas, hosts and metrics).
/// They come from below the kernel's ephemeral range, so the outgoing connections of
/// tests running meanwhile cannot take them before those processes bind them; each call
/// in a test binary gets a run of its own.
pub fn free_run(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    const LOW: u16 = 10_000;
    /// The longest run asked for: every call maps the cursor onto the same span, so one
    /// binary's runs follow each other and never overlap.
    const RUN_MAX: u16 = 64;
    assert!(n <= RUN_MAX, "at most {RUN_MAX} ports in a run");
    assert!(ephemeral_low > LOW + 1_000, "the ephemeral port range starts too low ({ephemeral_low})");
    let span = ephemeral_low - LOW - RUN_MAX;
    // Spread binaries apart by pid; calls within one binary by a cursor.
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..1_000 {
        let step = NEXT.fetch_add(n, Ordering::Relaxed);
        let base = LOW + (start.wrapping_add(step) % span);
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports below {ephemeral_low}");
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One replica process.
#[derive(Debug)]
pub struct Replica {
    pub id: u64,
    /// Its public API (and peer services, without a peer port).
    pub addr: String,
    /// Its peer services (raft, replication): `addr` unless it has a port of its own.
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A `drover up` run by a test: stopped (SIGINT, as Ctrl-C) when the test ends, passing or
/// not, and waited for.
#[derive(Debug)]
pub struct UpCluster(pub Child);

impl Drop for UpCluster {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `drover` command that reads no user config file (a developer's `drover up` may have
/// written one naming another cluster and its certificate).
pub fn drover_command() -> Command {
    let mut c = Command::new(drover_bin());
    c.env_remove("DROVER_CONFIG")
        .env_remove("DROVER_TLS_DIR")
        .env_remove("DROVER_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent/drover-tests");
    c
}

/// Run `drover` with `args`; panics with what it said if it fails.
fn run_cli(connect: &[&std::ffi::OsStr], args: &[&str]) -> String {
    let out = drover_command().args(connect).args(args).output().expect("drover runs");
    assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run the `drover` CLI against `endpoint` (no TLS); panics with what it said if it fails.
pub fn drover_cli(endpoint: &str, args: &[&str]) -> String {
    run_cli(&["--endpoint".as_ref(), endpoint.as_ref()], args)
}

/// Run the `drover` CLI with the config file a `drover up` wrote (its endpoints and the
/// admin's certificate); panics with what it said if it fails.
pub fn up_cli(config: &Path, args: &[&str]) -> String {
    run_cli(&["--config".as_ref(), config.as_os_str()], args)
}

/// The config file `drover up` writes into its data directory.
pub fn up_config(data_dir: &Path) -> PathBuf {
    data_dir.join("config.toml")
}

/// Wait until the `drover up` cluster of `config` lists `count` hosts as ready.
pub async fn wait_ready_hosts(config: &Path, count: usize) {
    wait_for(&format!("{count} ready hosts"), Duration::from_secs(60), || async move {
        let out = drover_command().arg("--config").arg(config).args(["host", "list"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.lines().filter(|l| l.contains(" ready ")).count() == count).then_some(())
    })
    .await;
}

/// The Debian Linux test guest's directory (`vmlinuz`, `initramfs.cpio.gz`, `disk.img`),
/// built by `scripts/guest-linux` if needed.
pub fn linux_guest_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root");
    let dir = root.join("target/guests/linux");
    let status = Command::new(root.join("scripts/guest-linux")).arg(&dir).status().expect("guest-linux runs");
    assert!(status.success(), "scripts/guest-linux failed");
    dir
}

/// The Linux test guest's kernel and initramfs paths.
pub fn linux_guest() -> (String, String) {
    let dir = linux_guest_dir();
    (dir.join("vmlinuz").display().to_string(), dir.join("initramfs.cpio.gz").display().to_string())
}

/// A child process killed (and reaped) when this is dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs every process whose command line names this directory (a run directory's
/// VMs) when dropped, pass or fail.
#[derive(Debug)]
pub struct KillVmsOnDrop(pub PathBuf);

impl Drop for KillVmsOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-9", "-f", "--"]).arg(self.0.display().to_string()).status();
    }
}

/// Write a domain spec file for the test guest at `kernel`: one vCPU, `memory_mib`, its
/// counter ticking every `tick_ms`, HA with `ha_priority` if given.
pub fn write_guest_spec(
    path: &Path,
    kernel: &Path,
    memory_mib: u64,
    tick_ms: u64,
    ha_priority: Option<u32>,
) -> std::io::Result<()> {
    let ha = ha_priority.map(|p| format!("ha_priority: {p}\n")).unwrap_or_default();
    let spec = format!(
        "vcpus: 1\nmemory_mib: {memory_mib}\nkernel: {}\ncmdline: drover.tick_ms={tick_ms}\n{ha}",
        kernel.display()
    );
    std::fs::write(path, spec)
}

/// A request defining domain `name` (a small kernel guest); its name is its request id.
pub fn define_request(name: &str, principal: &str) -> controlplane::Request {
    controlplane::Request {
        request_id: name.to_owned(),
        principal: principal.to_owned(),
        // Submitted straight to replication, which only replicas may call.
        caller: controlplane::Caller::Cluster,
        command: controlplane::Command::DefineDomain {
            name: name.to_owned(),
            spec: controlplane::fixtures::kernel_spec(1, 64),
        },
    }
}

/// The (last seq, state hash) every replica at `addrs` reports, once they all report the
/// same; `None` while they differ or one does not answer.
pub async fn converged(client: &raft::client::Client, addrs: &[String]) -> Option<(u64, String)> {
    let mut seen = Vec::new();
    for a in addrs {
        let s = client.status(a).await.ok()?;
        seen.push((s.last_seq, s.state_hash));
    }
    seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0].clone())
}

/// A CA of a test's own, and certificates it signs for its replicas and one user.
#[derive(Debug)]
pub struct TestPki {
    root: PathBuf,
    ca: api::certs::Ca,
    /// The admin user `tester`'s directory and transport (what the test and its clients use).
    pub user_dir: PathBuf,
    pub user: raft::tls::Transport,
}

impl TestPki {
    /// A new CA and the user's certificate under `root`.
    pub fn new(root: &Path) -> TestPki {
        let ca = api::certs::Ca::create(&root.join("ca"), "test", Self::validity()).expect("a test CA");
        let user_dir = root.join("user-tester");
        let files = ca
            .issue_with_role(
                raft::tls::Kind::User,
                "tester",
                raft::tls::Role::Admin,
                &[],
                Self::validity(),
                &user_dir,
            )
            .expect("the user's certificate");
        let user = raft::tls::Transport::tls(raft::tls::Tls::load(&files).expect("the user's TLS files"));
        TestPki { root: root.to_owned(), ca, user_dir, user }
    }

    fn validity() -> api::certs::Validity {
        api::certs::Validity::days(1).expect("one day")
    }

    /// The `--tls-dir` of `kind` `name` reached at 127.0.0.1 (made on first use; a user
    /// is a viewer).
    pub fn dir_for(&self, kind: raft::tls::Kind, name: &str) -> PathBuf {
        self.dir_with_role(kind, name, raft::tls::Role::Viewer)
    }

    /// The `--tls-dir` of user `name` of `role` (made on first use).
    pub fn dir_with_role(&self, kind: raft::tls::Kind, name: &str, role: raft::tls::Role) -> PathBuf {
        let dir = self.root.join(format!("{kind}-{name}"));
        if !raft::tls::TlsFiles::new(&dir).cert().exists() {
            let local = ["127.0.0.1".to_owned()];
            self.ca.issue_with_role(kind, name, role, &local, Self::validity(), &dir).expect("a certificate");
        }
        dir
    }
}

/// A set of replica processes in one temporary directory; all are killed on drop.
#[derive(Debug)]
pub struct Processes {
    pub dir: tempfile::TempDir,
    /// Where the replicas' data directories go (`dir` unless [`Processes::with_data_root`]).
    pub data_root: PathBuf,
    pub replicas: BTreeMap<u64, Replica>,
    /// With [`Processes::with_tls`]: every replica runs with a certificate of its own.
    pub pki: Option<TestPki>,
}

impl Default for Processes {
    fn default() -> Self {
        Processes::new()
    }
}

impl Processes {
    pub fn new() -> Processes {
        let dir = tempfile::tempdir().expect("temp dir");
        Processes { data_root: dir.path().to_owned(), dir, replicas: BTreeMap::new(), pki: None }
    }

    /// Every replica started from now on runs with `--tls-dir` (a certificate of a CA made
    /// for these processes) and, as a replica beyond loopback would, with its peer services
    /// on a port of their own; the harness's own calls use the user's certificate.
    pub fn with_tls(mut self) -> Processes {
        self.pki = Some(TestPki::new(&self.dir.path().join("tls")));
        self
    }

    /// How the harness and the test's clients reach these replicas.
    pub fn transport(&self) -> raft::tls::Transport {
        self.pki.as_ref().map(|p| p.user.clone()).unwrap_or_default()
    }

    /// How a client of the replication service itself (the load generator's writes, which
    /// skip the public API) reaches these replicas: as a member, with a replica-kind
    /// certificate of its own under TLS.
    pub fn member_transport(&self) -> raft::tls::Transport {
        match &self.pki {
            Some(pki) => {
                let dir = pki.dir_for(raft::tls::Kind::Replica, "load");
                raft::tls::Transport::tls(
                    raft::tls::Tls::load(&raft::tls::TlsFiles::new(dir)).expect("TLS files"),
                )
            }
            None => raft::tls::Transport::insecure(),
        }
    }

    /// A replication client for `endpoints`, over this set's transport.
    pub fn raft_client(&self, endpoints: Vec<String>) -> raft::client::Client {
        raft::client::Client::with_transport(endpoints, self.transport())
    }

    /// Replicas keep their data directories under `root` (a test filesystem, say); logs
    /// stay in the temporary directory.
    pub fn with_data_root(mut self, root: &Path) -> Processes {
        self.data_root = root.to_owned();
        self
    }

    /// Start replica `id` (on fresh ports the first time, the same ports after); returns
    /// its public address.
    pub fn start(&mut self, id: u64, extra: &[&str]) -> String {
        let (addr, peer_addr, data_dir) = match self.replicas.get(&id) {
            Some(r) => (r.addr.clone(), r.peer_addr.clone(), r.data_dir.clone()),
            None => {
                let addr = format!("127.0.0.1:{}", free_port());
                let peer =
                    if self.pki.is_some() { format!("127.0.0.1:{}", free_port()) } else { addr.clone() };
                (addr, peer, self.data_root.join(format!("n{id}")))
            }
        };
        let peer_listen: Vec<&str> =
            if peer_addr == addr { Vec::new() } else { vec!["--peer-listen", peer_addr.as_str()] };
        let log = self.dir.path().join(format!("n{id}.log"));
        let out = File::options().create(true).append(true).open(&log).expect("log file");
        let tls: Vec<PathBuf> = match &self.pki {
            Some(pki) => vec!["--tls-dir".into(), pki.dir_for(raft::tls::Kind::Replica, &id.to_string())],
            None => Vec::new(),
        };
        let child = Command::new(drover_bin())
            .args(["server", "--id", &id.to_string(), "--listen", &addr, "--data-dir"])
            .arg(&data_dir)
            .args(&peer_listen)
            .args(&tls)
            .args(extra)
            .stdout(Stdio::from(out.try_clone().expect("log fd")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("drover starts");
        self.replicas
            .insert(id, Replica { id, addr: addr.clone(), peer_addr, data_dir, log, child: Some(child) });
        addr
    }

    /// Replica `id`'s public API.
    pub fn addr(&self, id: u64) -> String {
        self.replicas[&id].addr.clone()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.replicas.values().map(|r| r.addr.clone()).collect()
    }

    /// Replica `id`'s peer services (its public address, without a peer port).
    pub fn peer_addr(&self, id: u64) -> String {
        self.replicas[&id].peer_addr.clone()
    }

    pub fn peer_addrs(&self) -> Vec<String> {
        self.replicas.values().map(|r| r.peer_addr.clone()).collect()
    }

    /// SIGKILL replica `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.replicas.get_mut(&id).and_then(|r| r.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for replica `id` to exit by itself.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.replicas.get_mut(&id).and_then(|r| r.child.as_mut()).expect("replica was started");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let log = self.log_of(id);
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "replica {id} did not exit within {timeout:?}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether replica `id` has exited, and how.
    pub fn exited(&mut self, id: u64) -> Option<ExitStatus> {
        let child = self.replicas.get_mut(&id).and_then(|r| r.child.as_mut()).expect("replica was started");
        child.try_wait().expect("wait")
    }

    /// What replica `id` logged.
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.replicas[&id].log).unwrap_or_default()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

impl Processes {
    /// Start replica 1 bootstrapping a new cluster with `flags`; wait until it leads.
    pub async fn bootstrap(&mut self, flags: &[&str]) -> String {
        let addr = self.start(1, &[&["--bootstrap"][..], flags].concat());
        let client = self.raft_client(vec![addr.clone()]);
        wait_for("replica 1 to lead", Duration::from_secs(30), || async {
            client.status(&addr).await.ok().filter(|s| s.leader_id == 1).map(|_| ())
        })
        .await;
        addr
    }

    /// Start replicas `ids` joining through `seed` as voters with `flags`; wait until the
    /// leader at `seed` counts them all as voters.
    /// Three voters (1 bootstraps, 2 and 3 join), each with `flags` and, with `metrics`,
    /// serving Prometheus metrics on a port of its own (returned after the seed's address).
    pub async fn three_voters(&mut self, flags: &[&str], metrics: bool) -> (String, Vec<String>) {
        if !metrics {
            let seed = self.bootstrap(flags).await;
            self.join_voters(&seed, &[2, 3], flags).await;
            return (seed, Vec::new());
        }
        let ports: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let with = |i: usize| [flags, &["--metrics-listen", &ports[i]][..]].concat();
        let seed = self.bootstrap(&with(0)).await;
        for (i, id) in [(1, 2), (2, 3)] {
            self.start(id, &[&["--join", &seed, "--voter"][..], &with(i)].concat());
        }
        let client = self.raft_client(vec![seed.clone()]);
        wait_for("three voters", Duration::from_secs(60), || async {
            client.status(&seed).await.ok().filter(|s| s.voters.len() == 3).map(|_| ())
        })
        .await;
        (seed, ports)
    }

    pub async fn join_voters(&mut self, seed: &str, ids: &[u64], flags: &[&str]) {
        for &id in ids {
            self.start(id, &[&["--join", seed, "--voter"][..], flags].concat());
        }
        let client = self.raft_client(vec![seed.to_owned()]);
        let want = ids.len() + 1;
        wait_for("the voters to join", Duration::from_secs(60), || async {
            client.status(seed).await.ok().filter(|s| s.voters.len() == want).map(|_| ())
        })
        .await;
        // A voter that has not yet heard from the leader answers writes with "not the
        // leader (leader: unknown)": joined means each knows it.
        for &id in ids {
            let addr = self.addr(id);
            wait_for(&format!("replica {id} to know the leader"), Duration::from_secs(60), || async {
                client.status(&addr).await.ok().filter(|s| s.leader_id != 0).map(|_| ())
            })
            .await;
        }
    }
}
