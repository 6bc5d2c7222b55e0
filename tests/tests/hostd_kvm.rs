//! hostd with the kvm driver as real processes: a VM outlives a SIGKILLed hostd and is
//! re-adopted by the next one; bad input (missing or corrupt kernel, missing volume, more
//! memory than the host has) comes back as a `failed` observation with a clear reason,
//! and hostd keeps serving. Where /dev/kvm is missing the tests say so and return.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::{drover_bin, wait_for, Processes};

fn kvm_present() -> bool {
    vmm::kvm_present_for("the hostd kvm tests")
}

struct Hostd {
    child: Child,
    log: PathBuf,
}

impl Hostd {
    fn start(endpoint: &str, run_dir: &Path, log: &Path, memory_mib: u64) -> Hostd {
        let out = std::fs::File::options().create(true).append(true).open(log).unwrap();
        let child = Command::new(drover_bin())
            .args(["--endpoint", endpoint, "hostd", "--name", "h1", "--driver", "kvm", "--tick-ms", "50"])
            .args(["--vcpus", "64", "--memory-mib", &memory_mib.to_string(), "--run-dir"])
            .arg(run_dir)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Hostd { child, log: log.to_owned() }
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test says what hostd saw: its log goes with the test's directory.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- the last lines of {}:", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn drover(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(drover_bin()).args(["--endpoint", endpoint]).args(args).output().unwrap();
    assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn info(endpoint: &str, domain: &str) -> Option<serde_json::Value> {
    let out = Command::new(drover_bin())
        .args(["--endpoint", endpoint, "--output", "json", "domain", "info", domain])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

async fn wait_phase(endpoint: &str, domain: &str, phase: &str) -> serde_json::Value {
    wait_for(&format!("{domain} to be {phase}"), Duration::from_secs(30), || async {
        info(endpoint, domain).filter(|v| v["phase"] == phase)
    })
    .await
}

async fn ready_host(endpoint: &str) {
    wait_for("h1 to be ready", Duration::from_secs(30), || async {
        let out = Command::new(drover_bin()).args(["--endpoint", endpoint, "host", "list"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains(" ready "))
            .then_some(())
    })
    .await;
}

fn define(endpoint: &str, dir: &Path, name: &str, body: &str) {
    let spec = dir.join(format!("{name}.yaml"));
    std::fs::write(&spec, body).unwrap();
    drover(endpoint, &["domain", "define", name, "--file", spec.to_str().unwrap()]);
}

fn ticks(console: &Path) -> usize {
    std::fs::read_to_string(console).unwrap_or_default().matches(testguest::TICK_PREFIX).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_outlives_a_sigkilled_hostd_and_is_re_adopted() {
    if !kvm_present() {
        return;
    }
    let mut cluster = Processes::new();
    // A fence time far longer than hostd's absence: this test is about re-adoption (the
    // VMs fencing themselves when their hostd stays away is tests/tests/ha.rs).
    let ep = cluster.bootstrap(&["--lease-ms", "5000", "--fence-ms", "60000"]).await;
    let dir = cluster.dir.path().to_owned();
    let run_dir = dir.join("vms");
    let log = dir.join("hostd.log");
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let hostd = Hostd::start(&ep, &run_dir, &log, 4096);
    ready_host(&ep).await;
    define(
        &ep,
        &dir,
        "web",
        &format!("vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: drover.tick_ms=20\n", kernel.display()),
    );
    drover(&ep, &["domain", "start", "web"]);
    let before = wait_phase(&ep, "web", "running").await;
    let console: PathBuf = run_dir.join("web/console.log");
    wait_for("ticks on the console", Duration::from_secs(20), || async {
        (ticks(&console) >= 2).then_some(())
    })
    .await;
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("web/config.json")).unwrap()).unwrap();
    let vmm_pid = record["pid"].as_u64().unwrap();

    hostd.sigkill();
    // Without its hostd the VM keeps running: its counter keeps moving.
    let seen = ticks(&console);
    wait_for("the VM to keep running without hostd", Duration::from_secs(20), || async {
        (ticks(&console) >= seen + 3).then_some(())
    })
    .await;

    let mut hostd = Hostd::start(&ep, &run_dir, &log, 4096);
    // The new hostd adopts it: the same process, the same run, still counting, and the
    // domain still obeys the cluster.
    let seen = ticks(&console);
    wait_for("the adopted VM to keep counting", Duration::from_secs(20), || async {
        (ticks(&console) >= seen + 3).then_some(())
    })
    .await;
    let after = info(&ep, "web").unwrap();
    assert_eq!(after["phase"], "running");
    assert_eq!(after["generation"], before["generation"], "the VM was started again instead of adopted");
    let text = std::fs::read_to_string(&console).unwrap();
    assert_eq!(text.matches(testguest::MARKER).count(), 1, "the guest booted twice:\n{text}");
    assert!(Path::new(&format!("/proc/{vmm_pid}")).exists(), "the VMM process is gone");
    let adopted = std::fs::read_to_string(&log).unwrap();
    assert!(adopted.contains("re-adopted a running VM"), "{adopted}");

    drover(&ep, &["domain", "shutdown", "web"]);
    wait_phase(&ep, "web", "stopped").await;
    wait_for("the VMM process to end", Duration::from_secs(20), || async {
        (!Path::new(&format!("/proc/{vmm_pid}")).exists()).then_some(())
    })
    .await;
    assert!(hostd.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_as_a_failed_observation() {
    if !kvm_present() {
        return;
    }
    let mut cluster = Processes::new();
    let ep = cluster.bootstrap(&[]).await;
    let dir = cluster.dir.path().to_owned();
    let run_dir = dir.join("vms");
    // The host offers far more memory than it has: what keeps a huge domain off it is
    // the VM limits its driver said when it registered.
    let mut hostd = Hostd::start(&ep, &run_dir, &dir.join("hostd.log"), 1 << 22);
    ready_host(&ep).await;
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let corrupt = dir.join("corrupt.elf");
    std::fs::write(&corrupt, &testguest::IMAGE[..200]).unwrap();
    let pool_dir = dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    drover(&ep, &["pool", "create", "p", "--path", pool_dir.to_str().unwrap(), "--capacity-mib", "1024"]);
    drover(&ep, &["vol", "create", "p/missing", "--capacity-mib", "16", "--format", "raw"]);
    // The host made the file; losing it behind the cluster's back is what a host must report.
    std::fs::remove_file(pool_dir.join("missing")).unwrap();
    let k = kernel.display();
    let cases = [
        (
            "nokernel",
            "vcpus: 1\nmemory_mib: 32\nkernel: /nonexistent/vmlinux\n".to_owned(),
            "kernel /nonexistent/vmlinux is missing",
        ),
        ("corrupt", format!("vcpus: 1\nmemory_mib: 32\nkernel: {}\n", corrupt.display()), "is corrupt"),
        (
            "novolume",
            format!("vcpus: 1\nmemory_mib: 32\nkernel: {k}\ndisks: [{{volume: p/missing}}]\n"),
            "missing",
        ),
    ];
    for (name, body, _) in &cases {
        define(&ep, &dir, name, body);
        drover(&ep, &["domain", "start", name]);
    }
    for (name, _, want) in &cases {
        let v = wait_phase(&ep, name, "failed").await;
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(want), "{name}: {reason:?} does not say {want:?}");
    }
    // A domain larger than the own VMM runs is refused at start, with the reason, and
    // nothing changes: it is not placed, and the host never sees it.
    define(&ep, &dir, "huge", &format!("vcpus: 1\nmemory_mib: 4096\nkernel: {k}\n"));
    let seq_before = drover(&ep, &["--output", "json", "audit", "log", "--name", "huge"]);
    let refused =
        Command::new(drover_bin()).args(["--endpoint", &ep, "domain", "start", "huge"]).output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a 4 GiB domain was placed on the own VMM");
    assert!(
        said.contains("ResourceExhausted") && said.contains("4096 MiB of memory (at most 3072)"),
        "{said}"
    );
    assert_eq!(drover(&ep, &["--output", "json", "audit", "log", "--name", "huge"]), seq_before);
    let hosts = drover(&ep, &["--output", "json", "host", "list"]);
    assert!(hosts.contains("\"memory_mib\": 3072"), "the host's limits are shown: {hosts}");
    // The failures are in the audit log as observations from the host.
    let log = drover(&ep, &["--output", "json", "audit", "log", "--kind", "domain", "--name", "corrupt"]);
    assert!(log.contains("host/h1") && log.contains("is corrupt"), "{log}");
    // hostd is still there and still starts good domains.
    assert!(hostd.alive(), "hostd died on bad input");
    define(
        &ep,
        &dir,
        "good",
        &format!("vcpus: 1\nmemory_mib: 32\nkernel: {k}\ncmdline: drover.tick_ms=20\n"),
    );
    drover(&ep, &["domain", "start", "good"]);
    wait_phase(&ep, "good", "running").await;
    drover(&ep, &["domain", "destroy", "good"]);
    wait_phase(&ep, "good", "stopped").await;
}

/// Every counter value on the console, in order.
fn tick_values(console: &Path) -> Vec<u64> {
    testguest::ticks(&std::fs::read_to_string(console).unwrap_or_default())
}

fn snapshots_json(endpoint: &str, domain: &str) -> Vec<serde_json::Value> {
    let out = drover(endpoint, &["--output", "json", "snapshot", "list", domain]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_through_the_api_brings_the_running_counter_back_on_revert() {
    if !kvm_present() {
        return;
    }
    let mut cluster = Processes::new();
    let ep = cluster.bootstrap(&[]).await;
    let dir = cluster.dir.path().to_owned();
    let run_dir = dir.join("vms");
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let mut hostd = Hostd::start(&ep, &run_dir, &dir.join("hostd.log"), 4096);
    ready_host(&ep).await;
    // A NIC on an isolated network of its own name (bridges are named for networks, and
    // tests share the host).
    let network = format!("sn{}", std::process::id() % 100_000);
    let bridge = hostd::driver::isolated_bridge(&network);
    drover(&ep, &["net", "create", &network, "--mode", "isolated", "--cidr", "10.247.9.0/24"]);
    define(
        &ep,
        &dir,
        "web",
        &format!(
            "vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: drover.tick_ms=20 drover.net=web\n\
             nics: [{{network: {network}}}]\n",
            kernel.display()
        ),
    );
    // Not running: a full snapshot is refused and nothing is recorded.
    let refused = Command::new(drover_bin())
        .args(["--endpoint", &ep, "snapshot", "create", "web", "s0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("running or paused"), "{refused:?}");
    assert!(snapshots_json(&ep, "web").is_empty());

    drover(&ep, &["domain", "start", "web"]);
    let first_run = wait_phase(&ep, "web", "running").await;
    let console = run_dir.join("web/console.log");
    wait_for("three ticks", Duration::from_secs(20), || async {
        (tick_values(&console).len() >= 3).then_some(())
    })
    .await;
    let before = *tick_values(&console).last().unwrap();
    let out = drover(&ep, &["snapshot", "create", "web", "s1"]);
    let after = *tick_values(&console).last().unwrap();
    assert!(out.contains("snapshot web/s1 taken on host h1"), "{out}");
    let listed = snapshots_json(&ep, "web");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "taken", "{listed:?}");
    assert!(listed[0]["bytes"].as_u64().unwrap() > 0);
    let file = std::fs::read_dir(dir.join("snapshots/web")).unwrap().next().unwrap().unwrap().path();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&file).unwrap().blocks() * 512, listed[0]["bytes"].as_u64().unwrap());
    // The guest counts on past the snapshot.
    wait_for("the counter to move on", Duration::from_secs(20), || async {
        (tick_values(&console).last().is_some_and(|t| *t >= after + 5)).then_some(())
    })
    .await;

    // Revert the running domain: a new run on its host, restored from the file.
    drover(&ep, &["snapshot", "revert", "web", "s1"]);
    let generation = first_run["generation"].as_u64().unwrap() + 1;
    wait_for("the restored run to be running", Duration::from_secs(30), || async {
        info(&ep, "web").filter(|v| v["phase"] == "running" && v["generation"] == generation)
    })
    .await;
    wait_for("the restored guest to count", Duration::from_secs(20), || async {
        let t = tick_values(&console);
        let drop = t.windows(2).position(|w| w[1] < w[0])?;
        (t.len() >= drop + 4).then_some(())
    })
    .await;
    let ticks = tick_values(&console);
    let drop = ticks.windows(2).position(|w| w[1] < w[0]).unwrap();
    let back_to = ticks[drop + 1];
    // The counter went back to where the snapshot was taken and continues from there.
    assert!(
        (before + 1..=after + 2).contains(&back_to),
        "back to {back_to}; snapshot taken between {before} and {after}"
    );
    for (i, w) in ticks.windows(2).enumerate() {
        assert!(i == drop || w[1] == w[0] + 1, "ticks jump at {i}: {ticks:?}");
    }
    let text = std::fs::read_to_string(&console).unwrap();
    assert_eq!(text.matches(testguest::MARKER).count(), 1, "the restored guest booted again");
    let restored = info(&ep, "web").unwrap();
    assert_eq!(restored["restore_from"], "", "the host said it restored: {restored}");
    let log = drover(&ep, &["--output", "json", "audit", "log", "--kind", "snapshot", "--name", "web/s1"]);
    for kind in ["SnapshotRequested", "SnapshotTaken", "SnapshotRevertRequested", "SnapshotRestored"] {
        assert!(log.contains(kind), "{kind} missing from the audit log: {log}");
    }

    // A clone: a new domain that continues from the snapshot, beside the original, with a
    // MAC of its own.
    drover(&ep, &["snapshot", "clone", "web", "s1", "web2"]);
    let cloned = info(&ep, "web2").unwrap();
    assert_eq!(cloned["restore_from"], "web/s1", "{cloned}");
    let (mac, clone_mac) = (mac_of(&ep, &network, "web"), mac_of(&ep, &network, "web2"));
    assert_ne!(mac, clone_mac);
    drover(&ep, &["domain", "start", "web2"]);
    wait_phase(&ep, "web2", "running").await;
    let clone_console = run_dir.join("web2/console.log");
    wait_for("the clone to count", Duration::from_secs(20), || async {
        (tick_values(&clone_console).len() >= 3).then_some(())
    })
    .await;
    let clone_ticks = tick_values(&clone_console);
    assert!((before + 1..=after + 2).contains(&clone_ticks[0]), "the clone starts at {}", clone_ticks[0]);
    let text = std::fs::read_to_string(&clone_console).unwrap();
    assert!(!text.contains(testguest::MARKER), "the clone booted instead of restoring:\n{text}");
    let original = *tick_values(&console).last().unwrap();
    wait_for("the original to count on beside its clone", Duration::from_secs(20), || async {
        (tick_values(&console).last().is_some_and(|t| *t > original + 2)).then_some(())
    })
    .await;
    // The clone's guest was told of its new MAC, sends from it, and the two hear each
    // other on the network under their own MACs.
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        read(&clone_console).contains(&format!("drover-guest: net mac {clone_mac}")),
        "{mac} {clone_mac}; the clone's console:\n{}",
        read(&clone_console)
    );
    wait_for("the original and its clone to hear each other", Duration::from_secs(20), || async {
        (read(&console).contains(&format!("drover-guest: net rx {clone_mac} web"))
            && read(&clone_console).contains(&format!("drover-guest: net rx {mac} web")))
        .then_some(())
    })
    .await;
    drover(&ep, &["domain", "destroy", "web2"]);
    wait_phase(&ep, "web2", "stopped").await;

    // Deleting the snapshot removes its file.
    drover(&ep, &["snapshot", "delete", "web", "s1"]);
    wait_for("the snapshot file to go", Duration::from_secs(20), || async { (!file.exists()).then_some(()) })
        .await;
    assert!(snapshots_json(&ep, "web").is_empty());
    drover(&ep, &["domain", "destroy", "web"]);
    wait_phase(&ep, "web", "stopped").await;
    for domain in ["web", "web2"] {
        drover(&ep, &["domain", "undefine", domain]);
    }
    drover(&ep, &["net", "delete", &network]);
    wait_for("the network's bridge to go", Duration::from_secs(20), || async {
        (!Path::new("/sys/class/net").join(&bridge).exists()).then_some(())
    })
    .await;
    assert!(hostd.alive());
    // A log written to a file is plain text.
    let log = std::fs::read_to_string(dir.join("hostd.log")).unwrap();
    assert!(log.contains("INFO") && !log.contains('\x1b'), "escape codes in the log file:\n{log}");
}

/// The MAC the cluster gave `domain`'s NIC on `network`.
fn mac_of(endpoint: &str, network: &str, domain: &str) -> String {
    let nets: serde_json::Value =
        serde_json::from_str(&drover(endpoint, &["--output", "json", "net", "list"])).unwrap();
    let net = nets.as_array().unwrap().iter().find(|n| n["name"] == network).expect("the network");
    let lease = net["leases"].as_array().unwrap().iter().find(|l| l["domain"] == domain);
    lease.unwrap_or_else(|| panic!("no lease of {domain} on {network}: {net}"))["mac"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A one-replica cluster, a kvm hostd on it, ready, and a directory pool `p` of 64 MiB.
struct PoolCluster {
    cluster: Processes,
    ep: String,
    dir: PathBuf,
    run_dir: PathBuf,
    pool: PathBuf,
    kernel: PathBuf,
    hostd: Hostd,
}

async fn pool_cluster() -> PoolCluster {
    let mut cluster = Processes::new();
    let ep = cluster.bootstrap(tests::NO_HOSTD).await;
    let dir = cluster.dir.path().to_owned();
    let run_dir = dir.join("vms");
    let pool = dir.join("pool");
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let hostd = Hostd::start(&ep, &run_dir, &dir.join("hostd.log"), 4096);
    ready_host(&ep).await;
    drover(&ep, &["pool", "create", "p", "--path", pool.to_str().unwrap(), "--capacity-mib", "64"]);
    PoolCluster { cluster, ep, dir, run_dir, pool, kernel, hostd }
}

/// Raw volumes made through the API are the own VMM's guest's disks: the test guest
/// writes its marker to each writable one, a read-only one refuses the write and keeps
/// its content, and the next run of the domain reads back what the last one wrote. A
/// qcow2 volume is a clear failure under this driver, not a guest without its disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_volumes_made_through_the_api_are_the_guests_disks() {
    if !kvm_present() {
        return;
    }
    let PoolCluster { cluster: _cluster, ep, dir, run_dir, pool, kernel, hostd: _hostd } =
        pool_cluster().await;
    for v in ["a", "b", "c"] {
        drover(&ep, &["vol", "create", &format!("p/{v}"), "--format", "raw", "--capacity-mib", "1"]);
    }
    drover(&ep, &["vol", "create", "p/q", "--format", "qcow2", "--capacity-mib", "1"]);
    // What the read-only disk holds, written on the host.
    std::fs::write(pool.join("c"), [b"the-read-only-one".as_slice(), &[0u8; 1 << 20][17..]].concat())
        .unwrap();
    let spec = |cmdline: &str, disks: &str| {
        format!(
            "vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: {cmdline}\ndisks: {disks}\n",
            kernel.display()
        )
    };
    define(
        &ep,
        &dir,
        "disks",
        &spec("drover.blk=write:gen", "[{volume: p/a}, {volume: p/c, read_only: true}, {volume: p/b}]"),
    );
    let console = run_dir.join("disks/console.log");
    let text = || std::fs::read_to_string(&console).unwrap_or_default();
    for run in 1..=2 {
        drover(&ep, &["domain", "start", "disks"]);
        wait_for(&format!("run {run} to write every disk"), Duration::from_secs(30), || async {
            (text().matches("drover-guest: blk 2 wrote gen-2").count() == run).then_some(())
        })
        .await;
        drover(&ep, &["domain", "destroy", "disks"]);
        wait_phase(&ep, "disks", "stopped").await;
    }
    let console = text();
    assert!(console.contains("drover-guest: blk 1 ro=1 held the-read-only-one"), "{console}");
    assert!(console.contains("drover-guest: blk 1 write refused"), "{console}");
    assert!(
        console.contains("drover-guest: blk 0 ro=0 held gen-0"),
        "the second run reads the first's: {console}"
    );
    let head = |v: &str| std::fs::read(pool.join(v)).unwrap()[..17].to_vec();
    assert_eq!(&head("a")[..5], b"gen-0");
    assert_eq!(&head("b")[..5], b"gen-2");
    assert_eq!(head("c"), b"the-read-only-one", "the read-only volume is unchanged");

    define(&ep, &dir, "cow", &spec("", "[{volume: p/q}]"));
    drover(&ep, &["domain", "start", "cow"]);
    let failed = wait_phase(&ep, "cow", "failed").await;
    assert!(failed.to_string().contains("qcow2"), "{failed}");
}

/// A disk snapshot of a stopped domain: the host images its writable raw volume; what is
/// written to the disk afterwards is gone once the domain is reverted to it (the guest of
/// the next run reads the snapshot's content), the read-only disk is left alone, and
/// deleting the snapshot removes its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_snapshot_of_a_stopped_domain_brings_its_disk_back_on_revert() {
    if !kvm_present() {
        return;
    }
    let PoolCluster { cluster: _cluster, ep, dir, run_dir, pool, kernel, mut hostd } = pool_cluster().await;
    for v in ["a", "ro"] {
        drover(&ep, &["vol", "create", &format!("p/{v}"), "--format", "raw", "--capacity-mib", "1"]);
    }
    std::fs::write(pool.join("ro"), [b"read-only-disk".as_slice(), &[0u8; 1 << 20][14..]].concat()).unwrap();
    define(
        &ep,
        &dir,
        "db",
        &format!(
            "vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: drover.blk=write:one\ndisks: [{{volume: p/a}}, {{volume: p/ro, read_only: true}}]\n",
            kernel.display()
        ),
    );
    let console = run_dir.join("db/console.log");
    let text = || std::fs::read_to_string(&console).unwrap_or_default();
    drover(&ep, &["domain", "start", "db"]);
    wait_for("the guest to write its disk", Duration::from_secs(30), || async {
        text().contains("drover-guest: blk 0 wrote one-0").then_some(())
    })
    .await;
    // A disk snapshot of a running domain is refused, and changes nothing.
    let refused = Command::new(drover_bin())
        .args(["--endpoint", &ep, "snapshot", "create", "db", "d0", "--kind", "disk"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"), "{refused:?}");
    assert!(snapshots_json(&ep, "db").is_empty());
    drover(&ep, &["domain", "destroy", "db"]);
    wait_phase(&ep, "db", "stopped").await;

    let out = drover(&ep, &["snapshot", "create", "db", "d1", "--kind", "disk"]);
    assert!(out.contains("snapshot db/d1 taken on host h1") && out.contains("disks imaged in"), "{out}");
    let listed = snapshots_json(&ep, "db");
    assert_eq!(
        (listed[0]["state"].as_str(), listed[0]["kind"].as_str()),
        (Some("taken"), Some("disk")),
        "{listed:?}"
    );
    let file = std::fs::read_dir(dir.join("snapshots/db")).unwrap().next().unwrap().unwrap().path();
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&file).unwrap().blocks() * 512, listed[0]["bytes"].as_u64().unwrap());
    }
    // Written after the snapshot (by hand here, as a later run would).
    let written_after = [b"after-the-snapshot".as_slice(), &[0u8; 1 << 20][18..]].concat();
    std::fs::write(pool.join("a"), &written_after).unwrap();
    std::fs::write(pool.join("ro"), [b"ro-changed-by-hand".as_slice(), &[0u8; 1 << 20][18..]].concat())
        .unwrap();

    drover(&ep, &["snapshot", "revert", "db", "d1"]);
    assert_eq!(
        &std::fs::read(pool.join("a")).unwrap()[..18],
        b"after-the-snapshot",
        "put back at the next start, not before"
    );
    drover(&ep, &["domain", "start", "db"]);
    // Both disks' lines are whole once the run ticks after them.
    wait_for("the reverted run to read its disks", Duration::from_secs(30), || async {
        let t = text();
        let second = t.match_indices("drover-guest: blk disks").nth(1).map(|(i, _)| &t[i..])?;
        second.contains("drover-guest: tick").then_some(())
    })
    .await;
    let console_text = text();
    let second_run = &console_text[console_text.rfind("drover-guest: blk disks").unwrap()..];
    assert!(
        second_run.contains("drover-guest: blk 0 ro=0 held one-0"),
        "the snapshot's content: {second_run}"
    );
    assert!(second_run.contains("drover-guest: blk 1 ro=1 held ro-changed-by-hand"), "{second_run}");
    wait_for("the host to say it restored", Duration::from_secs(20), || async {
        info(&ep, "db").filter(|v| v["phase"] == "running" && v["restore_from"] == "")
    })
    .await;
    let log = drover(&ep, &["--output", "json", "audit", "log", "--kind", "snapshot", "--name", "db/d1"]);
    for kind in ["SnapshotRequested", "SnapshotTaken", "SnapshotRevertRequested", "SnapshotRestored"] {
        assert!(log.contains(kind), "{kind} missing from the audit log: {log}");
    }
    drover(&ep, &["domain", "destroy", "db"]);
    wait_phase(&ep, "db", "stopped").await;
    drover(&ep, &["snapshot", "delete", "db", "d1"]);
    wait_for("the snapshot file to go", Duration::from_secs(20), || async { (!file.exists()).then_some(()) })
        .await;
    assert!(hostd.alive());
}
