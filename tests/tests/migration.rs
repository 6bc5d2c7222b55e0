//! Live migration end to end: a cluster, two hostds (each with its replica of the log, as
//! `drover up` runs them), the test guest with a disk on a shared pool, and `drover
//! migrate` through the API. The guest's counter goes on in the target with no tick lost
//! or repeated, the domain's run moves to the target at the commit, its disk comes
//! along, under either process driver (the own VMM's migration, and QEMU's), in the
//! clear and with the replicas, the CLI, the hosts and the stream over mutual TLS; an aborted
//! migration leaves the guest running on its source and removes the target's incoming
//! VM; `drover host drain` moves the guest live; a source SIGKILLed right after the
//! commit leaves the guest on its target, untouched when HA fences the source; a target
//! SIGKILLed mid-copy rolls the migration back and leaves the guest on its source; a copy
//! outlives the leader's SIGKILL and commits once the operator allows a longer pause,
//! and a source hostd SIGKILLed mid-copy is taken up by the next one.
//! Where /dev/kvm is missing the own VMM's tests say so and return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raft::tls::Kind;
use tests::{drover_bin, free_port, wait_for, KillVmsOnDrop, Processes};

fn kvm_present() -> bool {
    vmm::kvm_present_for("the live-migration tests")
}

/// A hostd process, and where its replica of the log listens (a restart keeps it: the
/// cluster's membership names it).
struct Hostd(Child, String);

impl Hostd {
    fn start(cli: &Cli, dir: &Path, name: &str, replica_id: u64, driver: &str, extra: &[&str]) -> Hostd {
        let listen = format!("127.0.0.1:{}", free_port());
        Hostd::start_at(cli, dir, name, replica_id, driver, extra, listen)
    }

    /// Host `name`'s hostd; under TLS with the host's certificate (its migrations too).
    fn start_at(
        cli: &Cli,
        dir: &Path,
        name: &str,
        replica_id: u64,
        driver: &str,
        extra: &[&str],
        listen: String,
    ) -> Hostd {
        let log =
            std::fs::File::options().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
        let mut command = Command::new(drover_bin());
        command.args(["--endpoint", &cli.endpoint]);
        if let Some(tls) = &cli.tls {
            command.arg("--tls-dir").arg(&tls.hosts[name]);
        }
        let child = command
            .args(["hostd", "--name", name, "--driver", driver, "--tick-ms", "50"])
            .args(["--vcpus", "8", "--memory-mib", "2048", "--run-dir"])
            .arg(dir.join(name).join("vms"))
            .arg("--snapshot-dir")
            .arg(dir.join("snapshots"))
            .args(["--replica-id", &replica_id.to_string(), "--replica-listen", &listen, "--replica-dir"])
            .arg(dir.join(name).join("replica"))
            .args(extra)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Hostd(child, listen)
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the CLI and the hosts reach the cluster: its replicas, and under TLS their
/// certificates of the test's CA.
struct Cli {
    endpoint: String,
    tls: Option<TlsDirs>,
}

/// The `--tls-dir`s: the CLI's (an admin user) and each host's.
struct TlsDirs {
    user: PathBuf,
    hosts: BTreeMap<&'static str, PathBuf>,
}

impl Cli {
    fn command(&self) -> Command {
        let mut command = Command::new(drover_bin());
        command.args(["--endpoint", &self.endpoint]);
        if let Some(tls) = &self.tls {
            command.arg("--tls-dir").arg(&tls.user);
        }
        command
    }
}

fn drover(cli: &Cli, args: &[&str]) -> String {
    let out = cli.command().args(args).output().unwrap();
    assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(cli: &Cli, args: &[&str]) -> Option<serde_json::Value> {
    let out = cli.command().args(["--output", "json"]).args(args).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn ticks(console: &Path) -> Vec<u64> {
    testguest::ticks(&std::fs::read_to_string(console).unwrap_or_default())
}

/// The arguments of the VM process (a VMM or a QEMU) that runs in VM directory `vm_dir`
/// (its command line names it, or a file in it), if one does.
fn vm_args_in(vm_dir: &Path) -> Option<Vec<String>> {
    let wanted = vm_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).find_map(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        args.iter().any(|arg| *arg == wanted || arg.contains(&format!("{wanted}/"))).then_some(args)
    })
}

fn vm_runs_in(vm_dir: &Path) -> bool {
    vm_args_in(vm_dir).is_some()
}

/// h1's flags for a copy that never ends on its own: a pause budget of 0 never switches
/// over, and no throttling.
const NEVER_SWITCHES: &[&str] =
    &["--migration-max-downtime-ms", "0", "--migration-throttle-max-percent", "0"];

struct TwoHosts {
    cluster: Processes,
    driver: &'static str,
    cli: Cli,
    dir: PathBuf,
    _hosts: Vec<Hostd>,
    // VMs outlive hostd (and, once the test's directory is gone, their lease file): they
    // end with the test, pass or fail.
    _vms: KillVmsOnDrop,
    kernel: PathBuf,
}

impl TwoHosts {
    async fn start(driver: &'static str, h1_extra: &[&str]) -> TwoHosts {
        TwoHosts::start_with(driver, h1_extra, tests::NO_HOSTD).await
    }

    /// Like [`TwoHosts::start`], everything over mutual TLS: the replicas, the CLI, the
    /// hosts and the migration stream between them.
    async fn start_tls(driver: &'static str) -> TwoHosts {
        TwoHosts::start_all(driver, &[], tests::NO_HOSTD, 1, true).await
    }

    /// Like [`TwoHosts::start`], the replica run with `server_flags` (the default
    /// leases, for a test in which HA fences a host).
    async fn start_with(driver: &'static str, h1_extra: &[&str], server_flags: &[&str]) -> TwoHosts {
        TwoHosts::start_voters(driver, h1_extra, server_flags, 1).await
    }

    /// `voters` replicas (1 or 3): the hosts and the CLI know every one of them.
    async fn start_voters(
        driver: &'static str,
        h1_extra: &[&str],
        server_flags: &[&str],
        voters: u64,
    ) -> TwoHosts {
        TwoHosts::start_all(driver, h1_extra, server_flags, voters, false).await
    }

    async fn start_all(
        driver: &'static str,
        h1_extra: &[&str],
        server_flags: &[&str],
        voters: u64,
        tls: bool,
    ) -> TwoHosts {
        let mut cluster = if tls { Processes::new().with_tls() } else { Processes::new() };
        let seed = cluster.bootstrap(server_flags).await;
        if voters > 1 {
            let ids: Vec<u64> = (2..=voters).collect();
            cluster.join_voters(&seed, &ids, server_flags).await;
        }
        let tls = cluster.pki.as_ref().map(|pki| TlsDirs {
            user: pki.user_dir.clone(),
            hosts: ["h1", "h2"].into_iter().map(|h| (h, pki.dir_for(Kind::Host, h))).collect(),
        });
        let cli = Cli { endpoint: cluster.addrs().join(","), tls };
        let dir = cluster.dir.path().to_owned();
        let kernel = dir.join("guest.elf");
        testguest::write_to(&kernel).unwrap();
        let hosts = vec![Hostd::start(&cli, &dir, "h1", 101, driver, h1_extra)];
        let _vms = KillVmsOnDrop(dir.clone());
        let c = TwoHosts { cluster, driver, cli, dir, _hosts: hosts, _vms, kernel };
        c.wait_ready(1).await;
        let pool = c.dir.join("pool");
        drover(
            &c.cli,
            &["pool", "create", "p", "--path", pool.to_str().unwrap(), "--capacity-mib", "64", "--shared"],
        );
        c
    }

    async fn wait_ready(&self, count: usize) {
        wait_for("the hosts to be ready", Duration::from_secs(60), || async {
            let hosts = json(&self.cli, &["host", "list"])?;
            let ready = hosts.as_array()?.iter().filter(|h| h["state"] == "ready").count();
            (ready == count).then_some(())
        })
        .await;
    }

    /// h2 joins once the guest runs on h1 (the only host then).
    async fn add_h2(&mut self) {
        self._hosts.push(Hostd::start(&self.cli, &self.dir, "h2", 102, self.driver, &[]));
        self.wait_ready(2).await;
    }

    fn console(&self, host: &str) -> PathBuf {
        self.dir.join(host).join("vms/web/console.log")
    }

    /// Define `web` on a disk `d1` of the shared pool and run it on h1.
    async fn run_web(&self, cmdline: &str) {
        self.run_web_with(cmdline, "").await;
    }

    /// [`TwoHosts::run_web`] with `more` lines in the spec.
    async fn run_web_with(&self, cmdline: &str, more: &str) {
        drover(&self.cli, &["vol", "create", "p/d1", "--format", "raw", "--capacity-mib", "1"]);
        let spec = self.dir.join("web.yaml");
        std::fs::write(
            &spec,
            format!(
                "vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: {cmdline}\ndisks: [{{volume: p/d1}}]\n{more}",
                self.kernel.display()
            ),
        )
        .unwrap();
        drover(&self.cli, &["domain", "define", "web", "--file", spec.to_str().unwrap()]);
        drover(&self.cli, &["domain", "start", "web"]);
        let console = self.console("h1");
        wait_for("the guest on h1 to count", Duration::from_secs(30), || async {
            (ticks(&console).len() >= 3).then_some(())
        })
        .await;
    }

    /// Run `web` on h1 dirtying memory, add h2 and start migrating it there (h1 started
    /// with [`NEVER_SWITCHES`]); returns the domain as it was and the migration's id once
    /// the copy has run two rounds.
    async fn start_endless_copy(&mut self) -> (serde_json::Value, u64) {
        self.run_web("drover.tick_ms=1 drover.dirty_mib=8").await;
        self.add_h2().await;
        let before = self.domain();
        let started = json(&self.cli, &["migrate", "start", "web", "--to", "h2"]).expect("started");
        let id = started["id"].as_u64().unwrap();
        wait_for("the copy to run rounds", Duration::from_secs(60), || async {
            self.migration(id)
                .filter(|m| m["phase"] == "transferring" && m["progress"]["rounds"].as_u64() >= Some(2))
        })
        .await;
        (before, id)
    }

    /// SIGKILL host `name`'s hostd and every VM process it started.
    fn sigkill_host(&mut self, name: &str) {
        let index = if name == "h1" { 0 } else { 1 };
        let hostd = &mut self._hosts[index].0;
        hostd.kill().unwrap();
        hostd.wait().unwrap();
        let vms = self.dir.join(name).join("vms");
        let _ = Command::new("pkill").args(["-9", "-f", "--"]).arg(vms.display().to_string()).status();
    }

    fn host_state(&self, name: &str) -> Option<String> {
        let hosts = json(&self.cli, &["host", "list"])?;
        let host = hosts.as_array()?.iter().find(|h| h["name"] == name)?;
        Some(host["state"].as_str()?.to_owned())
    }

    /// Every tick the guest printed, over both hosts' consoles in order.
    fn ticks_over_both(&self) -> Vec<u64> {
        let source = std::fs::read_to_string(self.console("h1")).unwrap_or_default();
        let target = std::fs::read_to_string(self.console("h2")).unwrap_or_default();
        testguest::ticks(&format!("{source}{target}"))
    }

    /// Wait until `web` runs on h2 as run `generation` and its guest has printed
    /// `ticks` there; then one counter over both hosts' consoles: no tick lost, none
    /// repeated, no second boot on h2.
    async fn counts_on_h2(&self, generation: u64, ticks_wanted: usize) {
        wait_for("web to run on h2", Duration::from_secs(30), || async {
            Some(self.domain())
                .filter(|d| d["host"] == "h2" && d["phase"] == "running" && d["generation"] == generation)
        })
        .await;
        let target = self.console("h2");
        wait_for("the guest to count on h2", Duration::from_secs(30), || async {
            (ticks(&target).len() >= ticks_wanted).then_some(())
        })
        .await;
        let seen = self.ticks_over_both();
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "ticks lost or repeated: {seen:?}");
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(!text.contains(testguest::MARKER), "the guest booted again on h2");
    }

    /// Wait until no VM process runs in h1's VM directory of `web`.
    async fn gone_from_h1(&self) {
        wait_for("h1's VM process to be gone", Duration::from_secs(30), || async {
            (!vm_runs_in(&self.dir.join("h1/vms/web"))).then_some(())
        })
        .await;
    }

    fn domain(&self) -> serde_json::Value {
        json(&self.cli, &["domain", "info", "web"]).expect("domain info")
    }

    fn migration(&self, id: u64) -> Option<serde_json::Value> {
        json(&self.cli, &["migrate", "get", &id.to_string()])
    }

    /// `web` is still h1's, the same run as `before`, running and counting on there; h2's
    /// incoming VM (if it had one) is gone and never ran the guest.
    async fn runs_on_at_the_source(&self, before: &serde_json::Value) {
        let source = self.console("h1");
        let now = *ticks(&source).last().unwrap_or(&0);
        wait_for("the guest to count on h1", Duration::from_secs(30), || async {
            (ticks(&source).last().is_some_and(|t| *t > now + 50)).then_some(())
        })
        .await;
        let after = self.domain();
        assert_eq!(
            (&after["host"], &after["generation"], &after["phase"]),
            (&before["host"], &before["generation"], &"running".into())
        );
        wait_for("h2's incoming VM to go", Duration::from_secs(30), || async {
            (!vm_runs_in(&self.dir.join("h2/vms/web"))).then_some(())
        })
        .await;
        assert!(ticks(&self.console("h2")).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_to_another_host_and_counts_on() {
    if !kvm_present() {
        return;
    }
    moves_and_counts_on("kvm", false).await;
}

/// The same with the replicas, the CLI and both hosts over mutual TLS: the migration
/// stream too, between the two hosts' certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_between_hosts_over_mutual_tls_and_counts_on() {
    if !kvm_present() {
        return;
    }
    moves_and_counts_on("kvm", true).await;
}

/// The same under the qemu driver: QEMU's own migration through the same saga (the
/// target's host resumes the guest once the commit is in its view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_under_qemu_moves_to_another_host_and_counts_on() {
    assert_qemu_present();
    moves_and_counts_on("qemu", false).await;
}

/// QEMU's migration over mutual TLS (QEMU's x509 credentials from the hosts' TLS
/// directories; the target lets in only the source host's certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_under_qemu_moves_between_hosts_over_mutual_tls_and_counts_on() {
    assert_qemu_present();
    moves_and_counts_on("qemu", true).await;
}

fn assert_qemu_present() {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing; scripts/deps installs it"
    );
}

async fn moves_and_counts_on(driver: &'static str, tls: bool) {
    let mut c = if tls { TwoHosts::start_tls(driver).await } else { TwoHosts::start(driver, &[]).await };
    let token = format!("mig{}", std::process::id());
    c.run_web(&format!("drover.tick_ms=20 drover.blk=write:{token}")).await;
    c.add_h2().await;
    let before = c.domain();
    assert_eq!(before["host"], "h1", "{before}");

    // `domain migrate` follows the copy to its end and fails unless it commits.
    let done = json(&c.cli, &["domain", "migrate", "web", "--to", "h2", "--max-downtime-ms", "40"])
        .expect("migrated");
    assert_eq!(done["phase"], "committed", "{done}");
    assert_eq!(done["max_downtime_ms"], 40, "{done}");
    assert!(done["progress"]["downtime_ms"].is_u64(), "{done}");
    assert_eq!(c.migration(done["id"].as_u64().unwrap()).unwrap(), done);
    assert!(done["progress"]["bytes_sent"].as_u64().unwrap() > 0, "{done}");
    assert!(done["progress"]["rounds"].as_u64().unwrap() >= 1, "{done}");
    assert!(done["target_address"].as_str().unwrap().starts_with("127.0.0.1:"), "{done}");
    eprintln!("migrated: {done}");

    // The run moved at the commit: one generation on, on h2, running there.
    let generation = before["generation"].as_u64().unwrap() + 1;
    c.counts_on_h2(generation, 5).await;
    let target = c.console("h2");
    // The target took the stream in over TLS, or not: the VMM was started for it, QEMU
    // was given credentials made of the host's files.
    let h2_vm = c.dir.join("h2/vms/web");
    let over_tls = if driver == "qemu" {
        h2_vm.join(hostd::qemu::migration::TLS_DIR).join("ca-cert.pem").exists()
    } else {
        vm_args_in(&h2_vm).expect("web runs on h2").iter().any(|a| a == "--incoming-tls-dir")
    };
    assert_eq!(over_tls, tls);
    c.gone_from_h1().await;
    // The disk came along: a reboot on h2 reads what the guest wrote on h1. (The test
    // guest finds its virtio devices on its command line, which QEMU's microvm fills in
    // for Linux only: under QEMU it boots again and sees no disk; the Linux guest's
    // migration under the qemu driver is `hostd/tests/drivers.rs`.)
    drover(&c.cli, &["domain", "reboot", "web"]);
    let wanted = if c.driver == "qemu" { testguest::MARKER.to_owned() } else { format!("held {token}-0") };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&target).unwrap_or_default();
        if text.contains(&wanted) {
            break;
        }
        let said: Vec<&str> = text.lines().filter(|l| !l.starts_with(testguest::TICK_PREFIX)).collect();
        assert!(std::time::Instant::now() < deadline, "the reboot on h2 never printed {wanted:?}: {said:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_migration_leaves_the_guest_running_on_its_source() {
    if !kvm_present() {
        return;
    }
    let mut c = TwoHosts::start("kvm", NEVER_SWITCHES).await;
    let (before, id) = c.start_endless_copy().await;
    drover(&c.cli, &["migrate", "abort", &id.to_string()]);
    let aborted = c.migration(id).unwrap();
    assert_eq!(aborted["phase"], "rolled-back", "{aborted}");
    c.runs_on_at_the_source(&before).await;
}

/// A running guest moves live only between hosts of one driver: each host labels itself
/// with its driver, and a migration to a host of another is refused before anything
/// starts, with the reason; the guest runs on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_to_a_host_of_another_driver_is_refused_and_changes_nothing() {
    if !kvm_present() {
        return;
    }
    let mut c = TwoHosts::start("kvm", &[]).await;
    c.run_web("drover.tick_ms=20").await;
    c._hosts.push(Hostd::start(&c.cli, &c.dir, "h2", 102, "fake", &[]));
    c.wait_ready(2).await;
    let hosts = json(&c.cli, &["host", "list"]).unwrap();
    let driver_of = |name: &str| {
        hosts.as_array().unwrap().iter().find(|h| h["name"] == name).unwrap()["labels"]["drover.io/driver"]
            .clone()
    };
    assert_eq!((driver_of("h1"), driver_of("h2")), ("kvm".into(), "fake".into()), "{hosts}");
    let before = c.domain();
    for (args, code, reason) in [
        (
            &["domain", "migrate", "web", "--to", "h2"][..],
            "FailedPrecondition",
            "between hosts of one driver",
        ),
        (&["migrate", "start", "web"][..], "ResourceExhausted", "running another driver than the source"),
    ] {
        let out = c.cli.command().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(code) && err.contains(reason), "{args:?}: {err}");
    }
    // Nothing was written: no migration, no reservation on h2.
    assert_eq!(json(&c.cli, &["migrate", "list"]), Some(serde_json::json!([])));
    let hosts = json(&c.cli, &["host", "list"]).unwrap();
    let h2 = hosts.as_array().unwrap().iter().find(|h| h["name"] == "h2").unwrap();
    assert_eq!(h2["domains"], serde_json::json!([]), "{hosts}");
    c.runs_on_at_the_source(&before).await;
}

/// The link between the two hosts is cut mid-copy: the kernel destroys both ends of the
/// migration's TCP connection (`ss -K`), as a failed link or a middlebox's reset would.
/// The copy fails, the migration rolls back with the reason, the guest counts on on its
/// source as the same run, the target's incoming VM goes, and a migration started again
/// commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_mid_copy_rolls_the_migration_back_and_the_guest_runs_on() {
    if !kvm_present() {
        return;
    }
    let mut c = TwoHosts::start("kvm", NEVER_SWITCHES).await;
    let (before, id) = c.start_endless_copy().await;
    let target = c.migration(id).unwrap()["target_address"].as_str().unwrap().to_owned();
    let port = target.rsplit_once(':').unwrap().1.to_owned();
    let cut = Command::new("ss")
        .args(["-K", "-t", "state", "established", "(", "dport", "=", &format!(":{port}"), "or"])
        .args(["sport", "=", &format!(":{port}"), ")"])
        .output()
        .expect("ss (iproute2) runs");
    // (Destroying one end resets the other, which then may be gone before `ss` gets to it.)
    let killed = String::from_utf8_lossy(&cut.stdout);
    assert!(killed.lines().any(|l| l.contains(&format!(":{port}"))), "the connection was cut: {killed}");
    let ended = wait_for("the migration to roll back", Duration::from_secs(60), || async {
        c.migration(id).filter(|m| m["phase"] == "rolled-back")
    })
    .await;
    assert!(!ended["reason"].as_str().unwrap().is_empty(), "{ended}");
    eprintln!("rolled back: {ended}");
    c.runs_on_at_the_source(&before).await;
    // The link is back (a new connection): the next migration commits.
    let done = json(&c.cli, &["domain", "migrate", "web", "--to", "h2", "--max-downtime-ms", "60000"])
        .expect("migrated");
    assert_eq!(done["phase"], "committed", "{done}");
}

/// SIGKILL of the target host (its hostd and its incoming VM) mid-copy: the source's
/// stream breaks, the migration rolls back with the reason and releases its reservation
/// on h2, and the guest counts on on its source as the same run. HA then fences the dead
/// target and leaves the domain, which never ran there, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_copy_rolls_the_migration_back_and_the_guest_runs_on() {
    if !kvm_present() {
        return;
    }
    // The replica's default leases: h2 is fenced a few seconds after it dies.
    let mut c = TwoHosts::start_with("kvm", NEVER_SWITCHES, &[]).await;
    let (before, id) = c.start_endless_copy().await;
    c.sigkill_host("h2");
    let ended = wait_for("the migration to roll back", Duration::from_secs(60), || async {
        c.migration(id).filter(|m| m["phase"] == "rolled-back" || m["phase"] == "committed")
    })
    .await;
    assert_eq!(ended["phase"], "rolled-back", "{ended}");
    assert!(!ended["reason"].as_str().unwrap_or_default().is_empty(), "{ended}");
    eprintln!("rolled back: {ended}");
    c.runs_on_at_the_source(&before).await;
    wait_for("h2 to be fenced", Duration::from_secs(30), || async {
        (c.host_state("h2").as_deref() == Some("fenced")).then_some(())
    })
    .await;
    let hosts = json(&c.cli, &["host", "list"]).unwrap();
    let h2 = hosts.as_array().unwrap().iter().find(|h| h["name"] == "h2").unwrap();
    assert_eq!(h2["domains"], serde_json::json!([]), "the reservation on h2 is left: {hosts}");
    // Still the same run on h1, counting, after the fence.
    c.runs_on_at_the_source(&before).await;
}

/// `drover host drain` moves a running guest live: the drain's migration commits, the
/// guest counts on on the other host with no tick lost or repeated and no second boot,
/// and the drained host is left in maintenance with nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_host_moves_its_running_guest_live() {
    if !kvm_present() {
        return;
    }
    let mut c = TwoHosts::start("kvm", &[]).await;
    c.run_web("drover.tick_ms=20").await;
    c.add_h2().await;
    let before = c.domain();

    let drained = json(&c.cli, &["host", "drain", "h1"]).expect("drained");
    let moved = drained["moved"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{drained}");
    assert_eq!(
        (&moved[0]["domain"], &moved[0]["host"], &moved[0]["live"]),
        (&"web".into(), &"h2".into(), &true.into())
    );
    assert!(moved[0]["downtime_ms"].is_u64(), "{drained}");
    assert_eq!(c.host_state("h1").as_deref(), Some("maintenance"));

    let generation = before["generation"].as_u64().unwrap() + 1;
    c.counts_on_h2(generation, 5).await;
    c.gone_from_h1().await;
}

/// SIGKILL of the source host (its hostd and its VM process) as soon as the commit is
/// seen: from the commit on the target owns the domain, so the guest counts on there
/// (its host resumes it whether or not the source's `Go` got out), and when HA fences
/// the dead source it leaves the domain alone. The domain is an HA one: a run still
/// recorded on h1 would be restarted elsewhere, a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_after_the_commit_leaves_the_guest_on_its_target() {
    if !kvm_present() {
        return;
    }
    // The replica's default leases: h1 is fenced a few seconds after it dies.
    let mut c = TwoHosts::start_with("kvm", &[], &[]).await;
    c.run_web_with("drover.tick_ms=20", "ha_priority: 1\n").await;
    c.add_h2().await;
    let before = c.domain();
    let generation = before["generation"].as_u64().unwrap() + 1;

    let started = json(&c.cli, &["migrate", "start", "web", "--to", "h2"]).expect("started");
    let id = started["id"].as_u64().unwrap();
    let committed = wait_for("the switch-over to commit", Duration::from_secs(60), || async {
        c.migration(id).filter(|m| m["phase"] == "committed" || m["phase"] == "rolled-back")
    })
    .await;
    assert_eq!(committed["phase"], "committed", "{committed}");
    c.sigkill_host("h1");

    wait_for("h1 to be fenced", Duration::from_secs(30), || async {
        (c.host_state("h1").as_deref() == Some("fenced")).then_some(())
    })
    .await;
    let target = c.console("h2");
    let at_fence = ticks(&target).last().copied().unwrap_or(0);
    wait_for("the guest to count on on h2", Duration::from_secs(30), || async {
        (ticks(&target).last().is_some_and(|t| *t >= at_fence + 20)).then_some(())
    })
    .await;
    // The same run on h2 throughout: the run the commit gave it, never restarted.
    let after = c.domain();
    assert_eq!(
        (&after["host"], &after["phase"], &after["generation"]),
        (&"h2".into(), &"running".into(), &generation.into()),
        "{after}"
    );
    let seen = c.ticks_over_both();
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "ticks lost or repeated: {seen:?}");
    assert!(!std::fs::read_to_string(&target).unwrap().contains(testguest::MARKER), "booted again on h2");
    assert!(!vm_runs_in(&c.dir.join("h1/vms/web")));
}

/// A copy that cannot end (its source host's limits never switch over) runs on while the
/// leader replica is SIGKILLed; through a new leader the operator then allows a longer
/// pause, the source's VMM takes it from its next round, and the migration commits: the
/// guest counts on on the target with no tick lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_outlives_a_leader_change_and_commits_once_its_pause_is_allowed() {
    if !kvm_present() {
        return;
    }
    let mut c = TwoHosts::start_voters("kvm", NEVER_SWITCHES, tests::NO_HOSTD, 3).await;
    let (before, id) = c.start_endless_copy().await;

    let addrs = c.cluster.addrs();
    let raft = c.cluster.raft_client(addrs.clone());
    let leader = wait_for("the leader", Duration::from_secs(30), || async {
        raft.status(&addrs[0]).await.ok().map(|s| s.leader_id).filter(|l| *l != 0)
    })
    .await;
    c.cluster.kill(leader);
    let survivor = c.cluster.replicas.values().find(|r| r.id != leader).unwrap().addr.clone();
    wait_for("a new leader", Duration::from_secs(30), || async {
        raft.status(&survivor).await.ok().map(|s| s.leader_id).filter(|l| *l != 0 && *l != leader)
    })
    .await;
    // Still copying, still h1's: a leader change decides nothing about a migration.
    let m = wait_for("the copy to report through the new leader", Duration::from_secs(30), || async {
        let rounds = c.migration(id)?["progress"]["rounds"].as_u64()?;
        let m = c.migration(id).filter(|m| m["progress"]["rounds"].as_u64() > Some(rounds + 1))?;
        Some(m)
    })
    .await;
    assert_eq!(m["phase"], "transferring", "{m}");
    assert_eq!(c.domain()["host"], "h1");

    drover(&c.cli, &["migrate", "set-downtime", &id.to_string(), "1000"]);
    let done = wait_for("the migration to commit", Duration::from_secs(60), || async {
        c.migration(id).filter(|m| m["phase"] == "committed" || m["phase"] == "rolled-back")
    })
    .await;
    assert_eq!((&done["phase"], &done["max_downtime_ms"]), (&"committed".into(), &1000.into()), "{done}");
    let generation = before["generation"].as_u64().unwrap() + 1;
    c.counts_on_h2(generation, 20).await;
}

/// The source's hostd SIGKILLed mid-copy (its VMM copies on) and started again with
/// other limits: the new hostd takes up the copy its predecessor started (never a second
/// one), gives it its own longest pause, and the migration commits; the guest counts on
/// on the target with no tick lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_hostd_restarted_mid_copy_takes_the_copy_up_and_commits() {
    if !kvm_present() {
        return;
    }
    let mut c = TwoHosts::start("kvm", NEVER_SWITCHES).await;
    let (before, id) = c.start_endless_copy().await;
    let hostd = &mut c._hosts[0].0;
    hostd.kill().unwrap();
    hostd.wait().unwrap();
    assert!(vm_runs_in(&c.dir.join("h1/vms/web")), "the VMM outlives its hostd");
    // Its own limits this time: the default longest pause, which the copy can meet.
    let listen = c._hosts[0].1.clone();
    c._hosts[0] = Hostd::start_at(&c.cli, &c.dir, "h1", 101, "kvm", &[], listen);

    let done = wait_for("the migration to commit", Duration::from_secs(60), || async {
        c.migration(id).filter(|m| m["phase"] == "committed" || m["phase"] == "rolled-back")
    })
    .await;
    assert_eq!(done["phase"], "committed", "{done}");
    let generation = before["generation"].as_u64().unwrap() + 1;
    c.counts_on_h2(generation, 20).await;
    let log = std::fs::read_to_string(c.dir.join("h1.log")).unwrap();
    assert_eq!(log.matches("copying to the target").count(), 1, "one copy, taken up by the new hostd");
    assert!(log.contains("copy limits changed"), "the new hostd gave the copy its own limits");
}
