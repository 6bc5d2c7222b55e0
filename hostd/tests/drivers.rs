//! The shared driver suite (`hostd::conformance`) against every driver, and the kvm
//! driver's re-adoption of VMs after its own restart. The kvm cases run the real
//! `drover-vmm` on `/dev/kvm`; where that is missing they say so and return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use controlplane::model::ObservedPhase;
use hostd::conformance::{self, Harness};
use hostd::driver::{isolated_bridge, tap_name, Attachment, Driver, DriverError, NicSpec, VmSpec};
use hostd::fake::FakeDriver;
use hostd::kvm::{KvmConfig, KvmDriver};
use hostd::qemu::{QemuConfig, QemuDriver};
use hostd::reconciler::{reconcile, Action, Memory};

struct FakeHarness {
    driver: FakeDriver,
    now_ms: u64,
}

fn spec(domain: &str, generation: u64, kernel: &str, cmdline: &str) -> VmSpec {
    VmSpec {
        domain: domain.into(),
        generation,
        vcpus: 1,
        memory_mib: 32,
        kernel: Some(kernel.into()),
        initrd: None,
        cmdline: cmdline.into(),
        disks: Vec::new(),
        nics: Vec::new(),
        restore_from: None,
        disks_from: None,
    }
}

impl Harness for FakeHarness {
    fn driver(&mut self) -> &mut dyn Driver {
        &mut self.driver
    }
    fn spec(&self, domain: &str, generation: u64) -> VmSpec {
        spec(domain, generation, "/boot/vmlinuz", "")
    }
    fn missing_kernel(&self, domain: &str) -> VmSpec {
        spec(domain, 1, "/missing/kernel", "")
    }
    fn advance(&mut self) -> u64 {
        self.now_ms += 10;
        self.now_ms
    }
    fn snapshot_dir(&self) -> PathBuf {
        PathBuf::from("/fake/snapshots")
    }
}

#[test]
fn the_fake_driver_passes_the_suite() {
    let mut driver = FakeDriver::new(30, 30);
    driver.broken_kernels.push("/missing/kernel".into());
    conformance::run_all(&mut FakeHarness { driver, now_ms: 0 });
}

/// The test guest's image, written into `dir`; returns its path.
fn write_test_guest(dir: &Path) -> String {
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    kernel.display().to_string()
}

fn kvm_present() -> bool {
    vmm::kvm_present_for("the kvm driver tests")
}

/// `drover-vmm`, built once per run in the tests' profile.
fn vmm_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let mut dir = exe.parent().unwrap();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir = dir.parent().unwrap();
        }
        let mut cmd = testguest::cargo_from_a_test();
        cmd.args(["build", "--quiet", "--bin", "drover-vmm"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.args(["--release", "-p", "vmm"]);
        } else {
            // With the features `cargo test --workspace` resolved (see tests::drover_bin).
            cmd.args(["--workspace", "--examples"]);
        }
        assert!(cmd.status().unwrap().success(), "building drover-vmm failed");
        dir.join("drover-vmm")
    })
    .clone()
}

/// A process driver (kvm, qemu) booting the test guest, on real time.
struct ProcessHarness<D> {
    driver: D,
    kernel: String,
}

fn kvm_config(run_dir: &std::path::Path) -> KvmConfig {
    KvmConfig {
        program: vmm_bin(),
        program_args: Vec::new(),
        run_dir: run_dir.to_owned(),
        console_log_bytes_max: 1 << 20,
        tls_dir: None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

impl<D: Driver> Harness for ProcessHarness<D> {
    fn driver(&mut self) -> &mut dyn Driver {
        &mut self.driver
    }
    fn spec(&self, domain: &str, generation: u64) -> VmSpec {
        spec(domain, generation, &self.kernel, "drover.tick_ms=20")
    }
    fn missing_kernel(&self, domain: &str) -> VmSpec {
        spec(domain, 1, "/missing/kernel", "")
    }
    fn advance(&mut self) -> u64 {
        std::thread::sleep(Duration::from_millis(5));
        now_ms()
    }
    fn snapshot_dir(&self) -> PathBuf {
        Path::new(&self.kernel).parent().expect("the kernel sits in the test's directory").join("snapshots")
    }
}

#[test]
fn the_kvm_driver_passes_the_suite() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let driver = KvmDriver::new(kvm_config(&dir.path().join("run"))).unwrap();
    conformance::run_all(&mut ProcessHarness { driver, kernel: kernel.clone() });
}

fn wait_phase(driver: &mut KvmDriver, domain: &str, phase: ObservedPhase) -> hostd::driver::VmStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = driver.list(now_ms()).get(domain).cloned();
        if s.as_ref().is_some_and(|s| s.phase == phase) {
            return s.unwrap();
        }
        assert!(Instant::now() < deadline, "{domain} never {phase:?}; last {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_new_kvm_driver_re_adopts_running_vms_and_learns_how_the_others_ended() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = write_test_guest(dir.path());
    let run = dir.path().join("run");
    let mut first = KvmDriver::new(kvm_config(&run)).unwrap();
    first.start(&spec("keeps", 4, &k, "drover.tick_ms=20"), 0).unwrap();
    first.start(&spec("ends", 2, &k, "drover.tick_ms=1 drover.ticks=2"), 0).unwrap();
    first.start(&spec("killed", 1, &k, "drover.tick_ms=20"), 0).unwrap();
    first.start(&spec("orphan", 9, &k, "drover.tick_ms=20"), 0).unwrap();
    wait_phase(&mut first, "keeps", ObservedPhase::Running);
    wait_phase(&mut first, "ends", ObservedPhase::Stopped);
    let killed_pid: u32 = std::fs::read_to_string(run.join("killed/config.json"))
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap()["pid"].as_u64().unwrap() as u32)
        .unwrap();
    // hostd goes away without a word (its driver is dropped, like a SIGKILL)...
    std::mem::forget(first);
    Command::new("kill").args(["-KILL", &killed_pid.to_string()]).status().unwrap();

    // ...and a new one finds every VM where it was.
    let mut second = KvmDriver::new(kvm_config(&run)).unwrap();
    let keeps = wait_phase(&mut second, "keeps", ObservedPhase::Running);
    assert_eq!(keeps.generation, 4);
    assert_eq!(wait_phase(&mut second, "ends", ObservedPhase::Stopped).generation, 2);
    let killed = wait_phase(&mut second, "killed", ObservedPhase::Crashed);
    assert!(killed.reason.unwrap().contains("without an exit record"));
    let console = || std::fs::read_to_string(run.join("keeps/console.log")).unwrap();
    let ticks_before = console().matches(testguest::TICK_PREFIX).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while console().matches(testguest::TICK_PREFIX).count() <= ticks_before {
        assert!(Instant::now() < deadline, "the re-adopted VM stopped counting");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The adopted VM is controllable.
    second.pause("keeps", 0).unwrap();
    wait_phase(&mut second, "keeps", ObservedPhase::Paused);

    // The reconciler cleans up a VM that nothing in the cluster asks for.
    let observed = second.list(now_ms());
    let actions = reconcile(&BTreeMap::new(), &observed, &Memory::default());
    assert!(actions.contains(&Action::Destroy("orphan".into())), "{actions:?}");
    second.destroy("orphan", 0).unwrap();
    wait_phase(&mut second, "orphan", ObservedPhase::Stopped);
    second.destroy("keeps", 0).unwrap();
    wait_phase(&mut second, "keeps", ObservedPhase::Stopped);
}

fn qemu_present() -> bool {
    let ok = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "qemu-system-x86_64 is not installed; scripts/deps installs it");
    ok
}

#[test]
fn the_qemu_driver_passes_the_suite() {
    qemu_present();
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let driver = QemuDriver::new(QemuConfig::new(dir.path().join("run"))).unwrap();
    conformance::run_all(&mut ProcessHarness { driver, kernel: kernel.clone() });
}

#[test]
fn a_qemu_binary_that_is_not_installed_is_a_clear_start_failure() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let mut config = QemuConfig::new(dir.path().join("run"));
    config.binary = "/nonexistent/qemu-system-x86_64".into();
    let mut driver = QemuDriver::new(config).unwrap();
    let err = driver.start(&spec("d", 1, &kernel.clone(), ""), 0).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot run QEMU (/nonexistent/qemu-system-x86_64)"), "{text}");
    assert!(driver.list(0).is_empty(), "a VM that never started is listed");
}

/// Kills every VM process recorded in a run directory when dropped, so a test that fails
/// half-way leaves no QEMU behind (VM processes outlive their driver by design).
struct KillVmsOnDrop(PathBuf);

impl Drop for KillVmsOnDrop {
    fn drop(&mut self) {
        for (_, record) in hostd::vm_dir::recorded(&self.0) {
            if hostd::vm_dir::process_alive(record.pid) {
                hostd::vm_dir::kill(record.pid);
            }
        }
    }
}

/// Removes the taps of `domains` and then `bridge` when dropped (declare it before the
/// `KillVmsOnDrop` of the same test, so the VMs go first).
struct RemoveNetwork {
    bridge: String,
    domains: &'static [&'static str],
}

impl Drop for RemoveNetwork {
    fn drop(&mut self) {
        for domain in self.domains {
            hostd::tap::unplug_nics(domain);
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// Wait until `domain`'s console log under `run` holds `text`.
fn wait_console(run: &Path, domain: &str, text: &str, within: Duration, also: &str) {
    let console = |d: &str| std::fs::read_to_string(run.join(d).join("console.log")).unwrap_or_default();
    let deadline = Instant::now() + within;
    while !console(domain).contains(text) {
        assert!(
            Instant::now() < deadline,
            "{domain} never printed {text:?}:\n{}\n--- {also}:\n{}",
            console(domain),
            console(also)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test guest under the kvm driver (Drover's own VMM): two VMs with a virtio-net NIC
/// each, on taps in the isolated bridge the driver makes for their network, hear each
/// other's broadcast frames (each guest sends a hello every tick and prints the hellos it
/// receives). The MAC each guest reads from its device is the one the spec gave.
#[test]
fn two_own_vmm_guests_on_an_isolated_network_hear_each_other() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let run = dir.path().join("run");
    let mut driver = KvmDriver::new(kvm_config(&run)).unwrap();
    let network = format!("ktest-{}", std::process::id());
    let bridge = isolated_bridge(&network);
    let _cleanup = RemoveNetwork { bridge: bridge.clone(), domains: &["knet-a", "knet-b"] };
    let _vms = KillVmsOnDrop(run.clone());
    let guest = |name: &str, mac: &str, token: &str| {
        let mut s = spec(name, 1, &kernel.clone(), &format!("drover.tick_ms=50 drover.net={token}"));
        s.nics = vec![NicSpec {
            mac: mac.into(),
            network: network.clone(),
            attachment: Attachment::Isolated(bridge.clone()),
        }];
        s
    };
    driver.start(&guest("knet-a", "52:54:00:ee:00:01", "alpha"), 0).unwrap();
    driver.start(&guest("knet-b", "52:54:00:ee:00:02", "bravo"), 0).unwrap();
    for domain in ["knet-a", "knet-b"] {
        let master = std::fs::read_link(format!("/sys/class/net/{}/master", tap_name(domain, 0))).unwrap();
        assert!(master.ends_with(&bridge), "{domain}'s tap is in {master:?}");
    }
    let within = Duration::from_secs(30);
    wait_console(&run, "knet-a", "drover-guest: net up 52:54:00:ee:00:01", within, "knet-b");
    wait_console(&run, "knet-b", "drover-guest: net up 52:54:00:ee:00:02", within, "knet-a");
    wait_console(&run, "knet-a", "drover-guest: net rx 52:54:00:ee:00:02 bravo", within, "knet-b");
    wait_console(&run, "knet-b", "drover-guest: net rx 52:54:00:ee:00:01 alpha", within, "knet-a");
    for domain in ["knet-a", "knet-b"] {
        driver.destroy(domain, 0).unwrap();
        wait_phase_any(&mut driver, domain, ObservedPhase::Stopped);
        driver.remove(domain);
        assert!(
            !Path::new(&format!("/sys/class/net/{}", tap_name(domain, 0))).exists(),
            "{domain}'s tap is gone"
        );
    }
}

/// The Linux test guest (scripts/guest-linux), built here if it is not yet.
fn linux_guest() -> (String, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/guests/linux");
    let status = Command::new(root.join("scripts/guest-linux")).arg(&dir).status().unwrap();
    assert!(status.success(), "scripts/guest-linux failed");
    (dir.join("vmlinuz").display().to_string(), dir.join("initramfs.cpio.gz").display().to_string())
}

#[test]
fn the_qemu_driver_boots_the_debian_linux_guest_to_init_and_shuts_it_down() {
    qemu_present();
    let (kernel, initrd) = linux_guest();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _cleanup = KillVmsOnDrop(run.clone());
    let mut driver = QemuDriver::new(QemuConfig::new(run.clone())).unwrap();
    let mut linux = spec("linux", 1, &kernel, "console=ttyS0 panic=-1");
    linux.initrd = Some(initrd);
    linux.memory_mib = 256;
    linux.vcpus = 2;
    let started = Instant::now();
    driver.start(&linux, 0).unwrap();
    let console = || std::fs::read_to_string(run.join("linux/console.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !console().contains("DROVER-LINUX-READY") {
        assert!(Instant::now() < deadline, "Linux never reached init:\n{}", console());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("Linux reached init under QEMU ({:?}) in {:?}", driver.accel(), started.elapsed());
    assert_eq!(wait_phase_any(&mut driver, "linux", ObservedPhase::Running).generation, 1);
    driver.shutdown("linux", 0).unwrap();
    let s = wait_phase_any(&mut driver, "linux", ObservedPhase::Stopped);
    assert_eq!(s.reason.as_deref(), Some("the guest powered off"));
    assert!(console().contains("drover-linux: power"), "{}", console());
}

/// Two Linux guests under the qemu driver, each with a virtio-net NIC on a tap in the
/// isolated bridge the driver makes for their network, reach each other: one pings the
/// other. The bridge has no uplink and no host address; the test removes it.
#[test]
fn two_qemu_guests_on_an_isolated_network_reach_each_other() {
    qemu_present();
    let (kernel, initrd) = linux_guest();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut driver = QemuDriver::new(QemuConfig::new(run.clone())).unwrap();
    let network = format!("test-{}", std::process::id());
    let bridge = isolated_bridge(&network);
    // Dropped after the VMs are killed (`_vms` is declared after it).
    let _cleanup = RemoveNetwork { bridge: bridge.clone(), domains: &["net-a", "net-b"] };
    let _vms = KillVmsOnDrop(run.clone());
    let guest = |name: &str, mac: &str, cmdline: &str| {
        let mut s = spec(name, 1, &kernel, &format!("console=ttyS0 panic=-1 {cmdline}"));
        s.initrd = Some(initrd.clone());
        s.memory_mib = 256;
        s.nics = vec![NicSpec {
            mac: mac.into(),
            network: network.clone(),
            attachment: Attachment::Isolated(bridge.clone()),
        }];
        s
    };
    driver.start(&guest("net-a", "52:54:00:dd:00:01", "drover.ip=10.231.0.1/24"), 0).unwrap();
    driver
        .start(&guest("net-b", "52:54:00:dd:00:02", "drover.ip=10.231.0.2/24 drover.ping=10.231.0.1"), 0)
        .unwrap();
    // Host side: each tap is in the bridge.
    for domain in ["net-a", "net-b"] {
        let master = std::fs::read_link(format!("/sys/class/net/{}/master", tap_name(domain, 0))).unwrap();
        assert!(master.ends_with(&bridge), "{domain}'s tap is in {master:?}");
    }
    let console = |d: &str| std::fs::read_to_string(run.join(d).join("console.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !console("net-b").contains("DROVER-PING-OK 10.231.0.1") {
        assert!(
            Instant::now() < deadline,
            "net-b never reached net-a:\n{}\n---\n{}",
            console("net-b"),
            console("net-a")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(console("net-a").contains("DROVER-NET 52:54:00:dd:00:01 10.231.0.1/24"), "{}", console("net-a"));
    for domain in ["net-a", "net-b"] {
        driver.destroy(domain, 0).unwrap();
        wait_phase_any(&mut driver, domain, ObservedPhase::Stopped);
        driver.remove(domain);
        assert!(
            !Path::new(&format!("/sys/class/net/{}", tap_name(domain, 0))).exists(),
            "{domain}'s tap is gone"
        );
    }
}

/// A Linux guest under the qemu driver on a NAT network reaches an address outside the
/// network through the host: a network namespace the test makes, joined to the host by a
/// veth pair, which has no route back to the guest's range, so its answers arrive only
/// because the host masquerades the guest's packets. Nothing leaves this machine.
#[test]
fn a_guest_on_a_nat_network_reaches_beyond_the_host_through_masquerading() {
    qemu_present();
    let (kernel, initrd) = linux_guest();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut driver = QemuDriver::new(QemuConfig::new(run.clone())).unwrap();
    let id = std::process::id() % 100_000;
    let network = format!("nat-{id}");
    let attachment = hostd::driver::nat_attachment(&network, "10.253.0.0/24".parse().unwrap(), None);
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            hostd::tap::unplug_nics("nat-a");
            hostd::tap::remove_network(&hostd::driver::isolated_bridge(&self.1));
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ns = format!("drvnat{id}");
    let _cleanup = Cleanup(ns.clone(), network.clone());
    let _vms = KillVmsOnDrop(run.clone());
    let (outer, inner) = (format!("drvo{id}"), format!("drvi{id}"));
    let sh = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh(&["ip", "netns", "add", &ns]);
    sh(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
    sh(&["ip", "link", "set", &inner, "netns", &ns]);
    sh(&["ip", "addr", "add", "10.252.0.1/30", "dev", &outer]);
    sh(&["ip", "link", "set", &outer, "up"]);
    sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", "10.252.0.2/30", "dev", &inner]);
    sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
    let no_route = Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "route", "get", "10.253.0.10"])
        .output()
        .unwrap();
    assert!(!no_route.status.success(), "the namespace must not route to the guest's range itself");

    let mut s = spec(
        "nat-a",
        1,
        &kernel,
        "console=ttyS0 panic=-1 drover.ip=10.253.0.10/24 drover.gw=10.253.0.1 drover.ping=10.252.0.2",
    );
    s.initrd = Some(initrd);
    s.memory_mib = 256;
    s.nics = vec![NicSpec {
        mac: "52:54:00:dd:01:01".into(),
        network: network.clone(),
        attachment: attachment.clone(),
    }];
    driver.start(&s, 0).unwrap();
    let Attachment::Nat { bridge, .. } = &attachment else { unreachable!() };
    let addrs = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", bridge]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&addrs.stdout).contains("10.253.0.1/24"),
        "the host holds the gateway address"
    );
    wait_console(&run, "nat-a", "DROVER-PING-OK 10.252.0.2", Duration::from_secs(120), "nat-a");
    driver.destroy("nat-a", 0).unwrap();
    wait_phase_any(&mut driver, "nat-a", ObservedPhase::Stopped);
    driver.remove("nat-a");
    // Starting again finds the rules in place and adds none twice.
    hostd::tap::bridge_for(&attachment).unwrap();
    let rules = Command::new("iptables").args(["-S", "FORWARD"]).output().unwrap();
    let ours = String::from_utf8_lossy(&rules.stdout).matches(&format!("drover {bridge}")).count();
    assert_eq!(ours, 2, "two FORWARD rules for the network");
    hostd::tap::remove_network(bridge);
    let rules = Command::new("iptables").args(["-t", "nat", "-S", "POSTROUTING"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(&format!("drover {bridge}")), "rules removed");
    assert!(!Path::new(&format!("/sys/class/net/{bridge}")).exists(), "bridge removed");
}

/// A NIC the host cannot provide is a clear start failure, not a guest without network.
#[test]
fn a_nic_on_a_missing_host_bridge_is_a_clear_start_failure() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let mut driver = QemuDriver::new(QemuConfig::new(dir.path().join("run"))).unwrap();
    let mut s = spec("d", 1, &kernel.clone(), "");
    s.nics = vec![NicSpec {
        mac: "52:54:00:dd:00:09".into(),
        network: "lan".into(),
        attachment: Attachment::HostBridge("drvnosuchbr0".into()),
    }];
    let text = driver.start(&s, 0).unwrap_err().to_string();
    assert!(text.contains("host bridge \"drvnosuchbr0\" does not exist"), "{text}");
    if kvm_present() {
        let mut kvm = KvmDriver::new(kvm_config(&dir.path().join("kvm"))).unwrap();
        let text = kvm.start(&s, 0).unwrap_err().to_string();
        assert!(text.contains("host bridge \"drvnosuchbr0\" does not exist"), "{text}");
        assert!(kvm.list(0).is_empty(), "a VM that never started is listed");
    }
}

fn wait_phase_any(driver: &mut dyn Driver, domain: &str, phase: ObservedPhase) -> hostd::driver::VmStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = driver.list(now_ms()).get(domain).cloned();
        if s.as_ref().is_some_and(|s| s.phase == phase) {
            return s.unwrap();
        }
        assert!(Instant::now() < deadline, "{domain} never {phase:?}; last {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Debian's kernel under Drover's own VMM, with two vCPUs. Its first console line must
/// appear everywhere; reaching init (and bringing up the second vCPU) needs hardware KVM
/// (under kvm-pvm every ring-0 instruction is emulated), so that half says it is skipped
/// where KVM is kvm-pvm.
#[test]
fn the_kvm_driver_boots_a_linux_kernel_to_its_first_console_line() {
    if !kvm_present() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (_, initrd) = linux_guest();
    let vmlinux = root.join("target/guests/linux/vmlinux").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut driver = KvmDriver::new(kvm_config(&run)).unwrap();
    let mut linux = spec("linux", 1, &vmlinux, "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1");
    linux.initrd = Some(initrd);
    linux.memory_mib = 256;
    linux.vcpus = 2;
    let started = Instant::now();
    driver.start(&linux, 0).unwrap();
    let console = || std::fs::read_to_string(run.join("linux/console.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !console().contains("Linux version") {
        let s = driver.list(now_ms()).get("linux").cloned();
        assert!(
            Instant::now() < deadline && s.as_ref().is_some_and(|s| s.phase == ObservedPhase::Running),
            "no first line ({s:?}):\n{}",
            console()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("Linux's first console line under the own VMM after {:?}", started.elapsed());
    if hostd::qemu::hardware_kvm() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !console().contains("DROVER-LINUX-READY") {
            assert!(Instant::now() < deadline, "Linux never reached init:\n{}", console());
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("Linux reached init under the own VMM after {:?}", started.elapsed());
        // The MP table gave it both vCPUs, and the second one came up through INIT/SIPI.
        assert!(console().contains("smp: Brought up 1 node, 2 CPUs"), "{}", console());
    } else {
        eprintln!(
            "SKIPPED: booting Linux to userspace under the own VMM needs hardware KVM; this host's \
             KVM is kvm-pvm (guest ring 0 emulated), where only the first console lines are checked"
        );
    }
    driver.destroy("linux", 0).unwrap();
    wait_phase(&mut driver, "linux", ObservedPhase::Stopped);
}

/// The Linux guest as `domain` (256 MiB, counting every 100 ms) with a raw 1 MiB disk,
/// made in `dir`; returns the spec and the disk's path.
fn linux_with_disk(domain: &str, dir: &Path) -> (VmSpec, PathBuf) {
    let (kernel, initrd) = linux_guest();
    let mut linux = spec(domain, 1, &kernel, "console=ttyS0 panic=-1 drover.tick_ms=100");
    linux.initrd = Some(initrd);
    linux.memory_mib = 256;
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    linux.disks = vec![hostd::driver::DiskSpec {
        path: disk.display().to_string(),
        format: controlplane::model::VolumeFormat::Raw,
        read_only: false,
    }];
    (linux, disk)
}

/// The `drover-linux: tick N` numbers in whole lines of `console` (the Linux guest's
/// counter, `drover.tick_ms`), in order.
fn linux_ticks(console: &str) -> Vec<u64> {
    let mut lines: Vec<&str> = console.split('\n').collect();
    lines.pop(); // a line still being written
    lines
        .iter()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("drover-linux: tick ")?.parse().ok())
        .collect()
}

/// Wait until `done()`, for at most `within`; `show()` says what there is on failure.
fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool, show: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}:\n{}", show());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes started for VM directory `dir` (their command line names it).
fn processes_in(dir: &Path) -> Vec<u32> {
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| hostd::vm_dir::process_alive(pid) && hostd::vm_dir::runs_in(pid, dir))
        .collect()
}

/// The Linux guest (with a disk) under the qemu driver, snapshotted while it runs: the file
/// is there, and the guest runs on and keeps counting. Destroyed, then started from the
/// file as the next generation, it continues where the snapshot was taken (its counter goes
/// on from there; it does not boot again), and a restarted driver adopts it. A snapshot of
/// the paused guest (taken twice) comes back paused and counts on once resumed. Files that
/// are no whole snapshot (a truncated copy, random bytes, a corrupt stream behind a good
/// header) and a snapshot of another memory size are clear start failures that leave no
/// QEMU behind.
#[test]
fn a_qemu_guest_restored_from_a_snapshot_continues_where_it_was() {
    qemu_present();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _vms = KillVmsOnDrop(run.clone());
    let mut driver = QemuDriver::new(QemuConfig::new(run.clone())).unwrap();
    let (linux, disk) = linux_with_disk("snap", dir.path());
    // The console log from byte `from` on (the log is appended to across generations).
    let console_from = |from: u64| {
        let bytes = std::fs::read(run.join("snap/console.log")).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
    };
    let console_len = || std::fs::metadata(run.join("snap/console.log")).map_or(0, |m| m.len());
    let console = || console_from(0);
    let last_tick = || linux_ticks(&console()).last().copied().unwrap_or(0);
    let boot = Instant::now();
    driver.start(&linux, 0).unwrap();
    let within = Duration::from_secs(120);
    wait_for(
        "Linux counting",
        within,
        || console().contains("DROVER-LINUX-READY") && last_tick() >= 3,
        console,
    );
    eprintln!(
        "Linux ({} MiB) counting under QEMU ({:?}) after {:?}",
        linux.memory_mib,
        driver.accel(),
        boot.elapsed()
    );

    // A snapshot of the running guest.
    let snapshots = dir.path().join("snapshots");
    let file = hostd::driver::snapshot_path(&snapshots, "snap", "running", 1);
    // What the disk holds at the snapshot (the Linux guest leaves its disk alone).
    let disk_at = |marker: &[u8]| {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&disk).unwrap().write_all_at(marker, 512).unwrap();
    };
    disk_at(b"BEFORE-THE-SNAPSHOT");
    let before = last_tick();
    let asked = Instant::now();
    let taken = driver.snapshot("snap", &file, now_ms()).unwrap();
    let snapshot_wall = asked.elapsed();
    let after = last_tick();
    assert_eq!(taken.bytes, std::fs::metadata(&file).unwrap().len());
    assert!(taken.bytes > 0);
    let names: Vec<String> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["running-1.snap"], "only the snapshot is left beside it");
    let listed: Vec<_> =
        driver.snapshot_files(&snapshots).into_iter().map(|f| (f.domain, f.name, f.id, f.path)).collect();
    assert_eq!(listed, [("snap".to_owned(), "running".to_owned(), 1, file.clone())]);
    assert_eq!(driver.list(now_ms())["snap"].phase, ObservedPhase::Running);
    wait_for("counting on after the snapshot", within, || last_tick() >= after + 3, console);
    eprintln!(
        "snapshot of the running guest: {} bytes, held paused {} ms, snapshot() took {snapshot_wall:?}",
        taken.bytes, taken.duration_ms
    );
    driver.destroy("snap", 0).unwrap();
    wait_phase_any(&mut driver, "snap", ObservedPhase::Stopped);
    // The disk changes after the snapshot.
    disk_at(b"AFTER--THE-SNAPSHOT");

    // Restored as the next generation, it continues from the snapshot, its disk too.
    let restored_from = console_len();
    let mut restored = linux.clone();
    restored.generation = 2;
    restored.restore_from = Some(file.display().to_string());
    let asked = Instant::now();
    driver.start(&restored, 0).unwrap();
    let restore_wall = asked.elapsed();
    assert_eq!(wait_phase_any(&mut driver, "snap", ObservedPhase::Running).generation, 2);
    let since_restore = || console_from(restored_from);
    wait_for(
        "counting after the restore",
        within,
        || linux_ticks(&since_restore()).len() >= 3,
        since_restore,
    );
    let ticks = linux_ticks(&since_restore());
    eprintln!(
        "restore to running: {restore_wall:?}; ticks {before}..={after} around the snapshot, {:?} after the restore",
        &ticks[..3]
    );
    assert!(
        before < ticks[0] && ticks[0] <= after + 2,
        "the restored guest counts on from the snapshot (ticks {before}..={after} around it), not from \
         elsewhere: {ticks:?}"
    );
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    assert!(!since_restore().contains("DROVER-LINUX-READY"), "it booted again:\n{}", since_restore());
    let content = std::fs::read(&disk).unwrap();
    assert_eq!(&content[512..531], b"BEFORE-THE-SNAPSHOT", "the disk is back to the snapshot's instant");
    assert_eq!(content.len(), 1 << 20);

    // The restored VM is a VM like any other: a new driver (hostd restarted) adopts it.
    drop(driver);
    let mut driver = QemuDriver::new(QemuConfig::new(run.clone())).unwrap();
    assert_eq!(wait_phase_any(&mut driver, "snap", ObservedPhase::Running).generation, 2);
    // A path the exec: writer cannot be given is refused before the guest is touched.
    let err = driver.snapshot("snap", &snapshots.join("snap/it's.snap"), now_ms()).unwrap_err().to_string();
    assert!(err.contains("single quote"), "{err}");
    assert_eq!(driver.list(now_ms())["snap"].phase, ObservedPhase::Running);

    // A snapshot of the paused guest comes back paused.
    driver.pause("snap", 0).unwrap();
    wait_phase_any(&mut driver, "snap", ObservedPhase::Paused);
    let paused_file = hostd::driver::snapshot_path(&snapshots, "snap", "paused", 2);
    let taken = driver.snapshot("snap", &paused_file, now_ms()).unwrap();
    assert!(taken.bytes > 0);
    assert_eq!(driver.list(now_ms())["snap"].phase, ObservedPhase::Paused);
    // Again (QEMU itself refuses to migrate a guest a migration has left paused).
    let taken = driver.snapshot("snap", &paused_file, now_ms()).unwrap();
    eprintln!("snapshot of the paused guest, again: {} bytes in {} ms", taken.bytes, taken.duration_ms);
    assert_eq!(driver.list(now_ms())["snap"].phase, ObservedPhase::Paused);
    driver.destroy("snap", 0).unwrap();
    wait_phase_any(&mut driver, "snap", ObservedPhase::Stopped);
    let mut again = linux.clone();
    again.generation = 3;
    again.restore_from = Some(paused_file.display().to_string());
    driver.start(&again, 0).unwrap();
    assert_eq!(wait_phase_any(&mut driver, "snap", ObservedPhase::Paused).generation, 3);
    let resumed_from = console_len();
    driver.resume("snap", 0).unwrap();
    assert_eq!(wait_phase_any(&mut driver, "snap", ObservedPhase::Running).generation, 3);
    let since_resume = || console_from(resumed_from);
    wait_for("counting once resumed", within, || linux_ticks(&since_resume()).len() >= 2, since_resume);
    let since = since_resume();
    assert!(!since.contains("DROVER-LINUX-READY"), "it booted again:\n{since}");
    driver.destroy("snap", 0).unwrap();
    wait_phase_any(&mut driver, "snap", ObservedPhase::Stopped);
    let err = driver.snapshot("snap", &snapshots.join("snap/stopped.snap"), now_ms()).unwrap_err();
    assert!(matches!(err, DriverError::WrongPhase { phase: ObservedPhase::Stopped, .. }), "{err}");

    // Files that are no whole snapshot.
    let bytes = std::fs::read(&file).unwrap();
    let stream = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let noise: Vec<u8> =
        (0..1_000_000u64).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect();
    // The disk images and their trailer follow QEMU's stream.
    let (stream_end, images) = hostd::disk_images::read(&file).unwrap();
    assert_eq!(images.len(), 1, "the one writable disk is in the snapshot");
    let stream_end = stream_end as usize;
    let scrambled: Vec<u8> = noise.iter().cycle().take(stream_end - stream - 8).copied().collect();
    let mut bad_disk = bytes.clone();
    bad_disk[images[0].offset as usize + 515] ^= 0x01;
    let broken = [
        (
            "truncated",
            bytes[..bytes.len() / 2].to_vec(),
            "holds images of disks [], the domain has writable disks [0]",
        ),
        ("random", noise.clone(), "is not a snapshot of the qemu driver"),
        ("corrupt", [&bytes[..stream + 8], &scrambled[..], &bytes[stream_end..]].concat(), "QEMU exited"),
        ("bad-disk", bad_disk, "the image of disk 0 fails its checksum"),
    ];
    // A failed restore leaves the disk as it was before it.
    disk_at(b"KEPT-BY-FAILED-ONES");
    for (name, content, says) in broken {
        let path = snapshots.join(format!("{name}.snap"));
        std::fs::write(&path, content).unwrap();
        let mut s = linux.clone();
        s.domain = "snap-bad".into();
        s.restore_from = Some(path.display().to_string());
        let err = driver.start(&s, 0).unwrap_err().to_string();
        eprintln!("restoring a {name} file: {err}");
        assert!(err.contains(says) && err.contains(&path.display().to_string()), "{name}: {err}");
        assert!(!driver.list(now_ms()).contains_key("snap-bad"), "{name}: a VM that never started is listed");
        assert_eq!(processes_in(&run.join("snap-bad")), Vec::<u32>::new(), "{name}: QEMU left behind");
        let content = std::fs::read(&disk).unwrap();
        assert_eq!(&content[512..531], b"KEPT-BY-FAILED-ONES", "{name}: the disk was not put back");
    }
    let mut smaller = linux.clone();
    smaller.generation = 4;
    smaller.memory_mib = 128;
    smaller.restore_from = Some(file.display().to_string());
    let err = driver.start(&smaller, 0).unwrap_err().to_string();
    assert!(err.contains("is of a 256 MiB guest, the domain has 128 MiB"), "{err}");
    let mut missing = linux.clone();
    missing.generation = 4;
    missing.restore_from = Some(snapshots.join("nothing.snap").display().to_string());
    let err = driver.start(&missing, 0).unwrap_err().to_string();
    assert!(err.contains("nothing.snap is missing"), "{err}");
    assert_eq!(processes_in(&run.join("snap")), Vec::<u32>::new(), "QEMU left behind");
}

/// Wait until `domain` is no longer live under `driver`; returns how it ended.
fn wait_ended(driver: &mut dyn Driver, domain: &str) -> hostd::driver::VmStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = driver.list(now_ms()).get(domain).cloned();
        if let Some(s) = s.as_ref().filter(|s| !s.phase.is_live()) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "{domain} still lives; last {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_vm_of_either_process_driver_ends_when_its_hosts_lease_passes() {
    qemu_present();
    let kvm = kvm_present();
    let dir = tempfile::tempdir().unwrap();
    let k = write_test_guest(dir.path());
    let kvm_run = dir.path().join("kvm");
    let qemu_run = dir.path().join("qemu");
    let mut qemu_config = QemuConfig::new(qemu_run.clone());
    qemu_config.fence_watch = Some((vmm_bin(), Vec::new()));
    let mut drivers: Vec<(Box<dyn Driver>, PathBuf)> =
        vec![(Box::new(QemuDriver::new(qemu_config).unwrap()), qemu_run)];
    if kvm {
        drivers.push((Box::new(KvmDriver::new(kvm_config(&kvm_run)).unwrap()), kvm_run));
    }
    for (driver, run) in &mut drivers {
        let lease = run.join(vmm::lease::LEASE_FILE);
        vmm::lease::write(&lease, vmm::lease::monotonic_ms() + 60_000).unwrap();
        driver.start(&spec("held", 1, &k, "drover.tick_ms=20"), 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.list(now_ms()).get("held").is_none_or(|s| s.phase != ObservedPhase::Running) {
            assert!(Instant::now() < deadline, "held never ran under {}", run.display());
            std::thread::sleep(Duration::from_millis(5));
        }
        // The host stops renewing: the lease passes, and the VM ends without a word from
        // the driver.
        vmm::lease::write(&lease, vmm::lease::monotonic_ms()).unwrap();
        let ended = wait_ended(driver.as_mut(), "held");
        assert_eq!(ended.phase, ObservedPhase::Crashed, "{}: {ended:?}", run.display());
        // Nothing starts on a host whose lease has passed.
        let refused = driver.start(&spec("late", 2, &k, "drover.tick_ms=20"), 0);
        if run.ends_with("kvm") {
            assert!(refused.is_err(), "the own VMM started past the lease");
        } else {
            // QEMU may start; its guard ends it at once (it may then be gone from the list
            // altogether, which is as ended as it gets).
            let _ = refused;
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Some(s) = driver.list(now_ms()).get("late").filter(|s| s.phase.is_live()) {
                assert!(Instant::now() < deadline, "late still lives past the lease: {s:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A 1 MiB raw disk at `dir/name` whose sector 0 holds `text`, as a disk of a spec.
fn raw_disk_spec(dir: &Path, name: &str, text: &str, read_only: bool) -> hostd::driver::DiskSpec {
    let path = dir.join(name);
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    hostd::driver::DiskSpec {
        path: path.display().to_string(),
        format: controlplane::model::VolumeFormat::Raw,
        read_only,
    }
}

/// What sector 0 of `path` holds, up to its first NUL.
fn sector0(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let text = &bytes[..512];
    String::from_utf8_lossy(&text[..text.iter().position(|&b| b == 0).unwrap_or(512)]).into_owned()
}

/// The test guest under the kvm driver with three raw disks, the middle one read-only:
/// it writes its marker to every disk; the two writable files hold theirs, the read-only
/// one is unchanged (its write was refused, and the guest saw the device offer
/// VIRTIO_BLK_F_RO). Started again as the next generation, it reads the markers back.
#[test]
fn the_kvm_driver_attaches_three_raw_disks_and_honours_read_only_ones() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let run = dir.path().join("run");
    let _vms = KillVmsOnDrop(run.clone());
    let mut driver = KvmDriver::new(kvm_config(&run)).unwrap();
    let disks = vec![
        raw_disk_spec(dir.path(), "d0.raw", "", false),
        raw_disk_spec(dir.path(), "d1.raw", "the-read-only-one", true),
        raw_disk_spec(dir.path(), "d2.raw", "", false),
    ];
    let read_only_before = std::fs::read(&disks[1].path).unwrap();
    let mut s = spec("disks", 1, &kernel, "drover.ticks=1 drover.tick_ms=1 drover.blk=write:gen1");
    s.disks = disks.clone();
    driver.start(&s, 0).unwrap();
    wait_phase(&mut driver, "disks", ObservedPhase::Stopped);
    let console = || std::fs::read_to_string(run.join("disks/console.log")).unwrap_or_default();
    for line in [
        "drover-guest: blk disks 3\n",
        "drover-guest: blk 0 ro=0 held \n",
        "drover-guest: blk 0 wrote gen1-0\n",
        "drover-guest: blk 1 ro=1 held the-read-only-one\n",
        "drover-guest: blk 1 write refused status 1\n",
        "drover-guest: blk 2 ro=0 held \n",
        "drover-guest: blk 2 wrote gen1-2\n",
    ] {
        assert!(console().contains(line), "{line:?}:\n{}", console());
    }
    assert_eq!(sector0(&disks[0].path), "gen1-0");
    assert_eq!(sector0(&disks[2].path), "gen1-2");
    assert!(std::fs::read(&disks[1].path).unwrap() == read_only_before, "the read-only disk changed");

    let mut again = spec("disks", 2, &kernel, "drover.ticks=1 drover.tick_ms=1 drover.blk=read");
    again.disks = disks.clone();
    let from = console().len();
    driver.start(&again, 0).unwrap();
    assert_eq!(wait_phase(&mut driver, "disks", ObservedPhase::Stopped).generation, 2);
    let second = console()[from..].to_owned();
    for line in [
        "drover-guest: blk 0 ro=0 read gen1-0\n",
        "drover-guest: blk 1 ro=1 read the-read-only-one\n",
        "drover-guest: blk 2 ro=0 read gen1-2\n",
    ] {
        assert!(second.contains(line), "{line:?}:\n{second}");
    }
}

/// A kvm-driver VM with two disks (writable, read-only), snapshotted while it runs and
/// restored as the next generation after the writable disk changed: the writable disk is
/// back to the snapshot's instant, the read-only one is as it was, and the restored guest
/// (which watches both disks every tick, through the devices it set up before the
/// snapshot) sees what the host writes into each.
#[test]
fn a_kvm_driver_vm_with_two_disks_restores_from_a_snapshot() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let run = dir.path().join("run");
    let _vms = KillVmsOnDrop(run.clone());
    let mut driver = KvmDriver::new(kvm_config(&run)).unwrap();
    let disks = vec![
        raw_disk_spec(dir.path(), "rw.raw", "at-the-snapshot", false),
        raw_disk_spec(dir.path(), "ro.raw", "never-written", true),
    ];
    let mut s = spec("two", 1, &kernel, "drover.tick_ms=20 drover.blk=watch");
    s.disks = disks.clone();
    driver.start(&s, 0).unwrap();
    let console = || std::fs::read_to_string(run.join("two/console.log")).unwrap_or_default();
    wait_for(
        "the guest to read both disks",
        Duration::from_secs(20),
        || console().contains("tick 2"),
        console,
    );
    assert!(console().contains("blk 0 ro=0 read at-the-snapshot\n"), "{}", console());
    assert!(console().contains("blk 1 ro=1 read never-written\n"), "{}", console());
    let file = hostd::driver::snapshot_path(&dir.path().join("snapshots"), "two", "s", 1);
    let taken = driver.snapshot("two", &file, now_ms()).unwrap();
    assert!(taken.bytes > 0);
    driver.destroy("two", 0).unwrap();
    wait_phase(&mut driver, "two", ObservedPhase::Stopped);
    use std::os::unix::fs::FileExt;
    let write_at0 = |path: &str, text: &str| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(format!("{text}\0").as_bytes(), 0).unwrap();
    };
    write_at0(&disks[0].path, "after--the-snapshot");

    let mut restored = s.clone();
    restored.generation = 2;
    restored.restore_from = Some(file.display().to_string());
    let from = console().len();
    driver.start(&restored, 0).unwrap();
    assert_eq!(wait_phase(&mut driver, "two", ObservedPhase::Running).generation, 2);
    assert_eq!(sector0(&disks[0].path), "at-the-snapshot", "the writable disk is back to the snapshot");
    assert_eq!(sector0(&disks[1].path), "never-written");
    let since = || console()[from..].to_owned();
    wait_for(
        "ticks after the restore",
        Duration::from_secs(20),
        || since().matches("tick").count() >= 2,
        since,
    );
    assert!(!since().contains(testguest::MARKER), "it booted again:\n{}", since());
    write_at0(&disks[0].path, "host-wrote-rw");
    write_at0(&disks[1].path, "host-wrote-ro");
    for line in ["blk 0 now host-wrote-rw\n", "blk 1 now host-wrote-ro\n"] {
        wait_for(line, Duration::from_secs(20), || since().contains(line), since);
    }
    driver.destroy("two", 0).unwrap();
    wait_phase(&mut driver, "two", ObservedPhase::Stopped);
}

/// What the own VMM cannot serve is a clear start failure, before any VMM runs: a qcow2
/// disk, more than eight disks.
#[test]
fn the_kvm_driver_refuses_qcow2_disks_and_a_ninth_disk() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_test_guest(dir.path());
    let mut driver = KvmDriver::new(kvm_config(&dir.path().join("run"))).unwrap();
    let mut s = spec("refused", 1, &kernel, "");
    s.disks =
        vec![raw_disk_spec(dir.path(), "a.raw", "", false), raw_disk_spec(dir.path(), "b.qcow2", "", true)];
    s.disks[1].format = controlplane::model::VolumeFormat::Qcow2;
    let text = driver.start(&s, 0).unwrap_err().to_string();
    assert!(
        text.contains("disk 1 (")
            && text.contains("b.qcow2) is qcow2; the kvm driver's VMM serves raw files only"),
        "{text}"
    );
    s.disks = (0..9).map(|i| raw_disk_spec(dir.path(), &format!("{i}.raw"), "", false)).collect();
    let text = driver.start(&s, 0).unwrap_err().to_string();
    assert!(text.contains("9 disks; the kvm driver's VMM attaches at most 8 per VM"), "{text}");
    assert!(driver.list(0).is_empty(), "a VM that never started is listed");
}

/// The Linux guest (with a disk) under the qemu driver, live-migrated to another driver's
/// QEMU (another host's, on one machine) with QEMU's own migration. A migration cancelled
/// right after it started leaves the guest counting on the source (whether QEMU was still
/// copying or had finished: then the source takes its disks back), and the incoming QEMU
/// is done away with. The next one completes: the target holds the whole guest paused
/// until it is resumed (as its host does once the switch-over is committed), the source's
/// QEMU ends at the switch, and the guest counts on at the target from where it stopped,
/// without booting again. The two hosts (h1, h2) have TLS files: the stream is mutual TLS,
/// and a target that waits for another host than h1 turns h1's stream away.
#[test]
fn the_qemu_driver_live_migrates_the_linux_guest_to_another_qemu() {
    use hostd::driver::{ConvergeLimits, OutgoingPhase};
    qemu_present();
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    let _from_vms = KillVmsOnDrop(from.clone());
    let _to_vms = KillVmsOnDrop(to.clone());
    let pki = testguest::certs::Pki::new();
    let with_tls = |run: &Path, host: &str| QemuConfig {
        tls_dir: Some(pki.dir("host", host)),
        ..QemuConfig::new(run.to_owned())
    };
    let mut source = QemuDriver::new(with_tls(&from, "h1")).unwrap();
    let mut target = QemuDriver::new(with_tls(&to, "h2")).unwrap();
    let (linux, _disk) = linux_with_disk("mig", dir.path());
    let console = |run: &Path| std::fs::read_to_string(run.join("mig/console.log")).unwrap_or_default();
    let last_tick = |run: &Path| linux_ticks(&console(run)).last().copied().unwrap_or(0);
    let within = Duration::from_secs(120);
    source.start(&linux, 0).unwrap();
    wait_for("Linux counting", within, || last_tick(&from) >= 3, || console(&from));
    let limits = ConvergeLimits { max_downtime_ms: 50, throttle_max_percent: 99 };
    let mut incoming = linux.clone();
    incoming.generation = 2;
    let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();

    // Cancelled: the guest stays and counts on where it was.
    // A target that waits for h3 refuses h1's stream: the guest counts on at h1.
    let address = target.prepare_incoming(&incoming, localhost, "h3").unwrap();
    source.migrate_out("mig", &address, "h2", limits, now_ms()).unwrap();
    let deadline = Instant::now() + within;
    let refused = loop {
        let out = source.outgoing("mig", now_ms()).unwrap();
        if out.phase == OutgoingPhase::Failed {
            break out;
        }
        assert!(Instant::now() < deadline && out.phase != OutgoingPhase::AwaitingSwitch, "{out:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let target_log = std::fs::read_to_string(to.join("mig/qemu.log")).unwrap_or_default();
    assert!(target_log.contains("authz check for CN=h1,OU=host is denied"), "{refused:?}\n{target_log}");
    source.migrate_cancel("mig").unwrap();
    let _ = target.destroy("mig", 0);
    wait_ended(&mut target, "mig");
    target.remove("mig");
    let at = last_tick(&from);
    wait_for("counting on after the refusal", within, || last_tick(&from) >= at + 3, || console(&from));

    let address = target.prepare_incoming(&incoming, localhost, "h1").unwrap();
    assert_eq!(target.list(now_ms())["mig"].phase, ObservedPhase::Starting);
    source.migrate_out("mig", &address, "h2", limits, now_ms()).unwrap();
    source.migrate_cancel("mig").unwrap();
    let err = source.outgoing("mig", now_ms()).unwrap_err().to_string();
    assert!(err.contains("no migration was started"), "{err}");
    target.destroy("mig", 0).unwrap();
    wait_ended(&mut target, "mig");
    target.remove("mig");
    assert_eq!(processes_in(&to.join("mig")), Vec::<u32>::new(), "the incoming QEMU is left behind");
    let at = last_tick(&from);
    wait_for("counting on after the cancel", within, || last_tick(&from) >= at + 3, || console(&from));
    assert_eq!(source.list(now_ms())["mig"].phase, ObservedPhase::Running);

    // Completed.
    let address = target.prepare_incoming(&incoming, localhost, "h1").unwrap();
    let started = Instant::now();
    source.migrate_out("mig", &address, "h2", limits, now_ms()).unwrap();
    let deadline = Instant::now() + within;
    let copied = loop {
        let out = source.outgoing("mig", now_ms()).unwrap();
        match out.phase {
            OutgoingPhase::AwaitingSwitch => break out,
            OutgoingPhase::Failed | OutgoingPhase::Cancelled => panic!("the migration ended: {out:?}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the migration never finished copying: {out:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(copied.progress.bytes_sent > 0, "{copied:?}");
    assert_eq!(source.list(now_ms())["mig"].phase, ObservedPhase::Paused);
    assert_eq!(wait_phase_any(&mut target, "mig", ObservedPhase::Paused).generation, 2);
    let last_at_source = last_tick(&from);
    let done = source.migrate_switch("mig").unwrap();
    let took = started.elapsed();
    let ended = wait_ended(&mut source, "mig");
    assert_eq!(ended.reason.as_deref(), Some(format!("migrated to {address}").as_str()), "{ended:?}");
    assert_eq!(processes_in(&from.join("mig")), Vec::<u32>::new(), "the source's QEMU runs on");
    // The target has not run a single tick before it is resumed.
    assert!(linux_ticks(&console(&to)).is_empty(), "{}", console(&to));
    target.resume("mig", 0).unwrap();
    assert_eq!(wait_phase_any(&mut target, "mig", ObservedPhase::Running).generation, 2);
    wait_for("counting at the target", within, || linux_ticks(&console(&to)).len() >= 3, || console(&to));
    let ticks = linux_ticks(&console(&to));
    eprintln!(
        "QEMU migrated {} MiB in {took:?}: {} bytes, downtime {:?} ms; ticks ..{last_at_source} at the source, \
         {:?} at the target",
        linux.memory_mib,
        done.bytes_sent,
        done.downtime_ms,
        &ticks[..3]
    );
    assert!(done.downtime_ms.is_some(), "{done:?}");
    assert!(
        last_at_source < ticks[0] && ticks[0] <= last_at_source + 2,
        "the guest counts on from where it stopped ({last_at_source}): {ticks:?}"
    );
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    assert!(!console(&to).contains("DROVER-LINUX-READY"), "it booted again:\n{}", console(&to));
    // A guest like any other there: a reboot boots it again.
    target.reboot("mig", 0).unwrap();
    wait_for(
        "the reboot at the target",
        within,
        || console(&to).contains("DROVER-LINUX-READY"),
        || console(&to),
    );
}

/// QEMU's own migration has no time limit: over a link that drops every packet and sends
/// no reset, its copy would wait for ever. The qemu driver watches it as the own VMM
/// watches its own copy: one that all but stands still for 30 s is cancelled and reported
/// failed with why, and the guest counts on at its source. The test guest rewrites 16 MiB
/// as fast as it can under a pause budget of 0 (never switch over), and a relay between
/// the two QEMUs black-holes the stream mid-copy.
#[test]
fn a_qemu_copy_over_a_black_holed_link_fails_and_the_guest_runs_on_at_its_source() {
    use hostd::driver::{ConvergeLimits, OutgoingPhase};
    qemu_present();
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    let _from_vms = KillVmsOnDrop(from.clone());
    let _to_vms = KillVmsOnDrop(to.clone());
    let mut source = QemuDriver::new(QemuConfig::new(from.clone())).unwrap();
    let mut target = QemuDriver::new(QemuConfig::new(to.clone())).unwrap();
    let kernel = write_test_guest(dir.path());
    let guest =
        VmSpec { memory_mib: 64, ..spec("stall", 1, &kernel, "drover.tick_ms=1 drover.dirty_mib=16") };
    let console = || std::fs::read_to_string(from.join("stall/console.log")).unwrap_or_default();
    let last_tick = || testguest::ticks(&console()).last().copied().unwrap_or(0);
    let within = Duration::from_secs(60);
    source.start(&guest, 0).unwrap();
    wait_for("the guest counting", within, || last_tick() >= 3, console);
    let mut incoming = guest.clone();
    incoming.generation = 2;
    let address = target.prepare_incoming(&incoming, "127.0.0.1".parse().unwrap(), "h1").unwrap();
    let relay = testguest::relay::Relay::to(&address);
    // A pause budget of 0 never switches over: the copy goes on until it ends otherwise.
    let limits = ConvergeLimits { max_downtime_ms: 0, throttle_max_percent: 0 };
    source.migrate_out("stall", &relay.address, "h2", limits, now_ms()).unwrap();
    let sent = |source: &mut QemuDriver| source.outgoing("stall", now_ms()).unwrap().progress.bytes_sent;
    wait_for("the copy under way", within, || sent(&mut source) > 8 << 20, console);

    relay.black_hole();
    let holed = Instant::now();
    let deadline = holed + Duration::from_secs(90);
    let failed = loop {
        let out = source.outgoing("stall", now_ms()).unwrap();
        match out.phase {
            OutgoingPhase::Failed => break out,
            OutgoingPhase::Copying | OutgoingPhase::Completing => {}
            _ => panic!("the copy ended otherwise: {out:?}"),
        }
        assert!(Instant::now() < deadline, "the copy over the black hole never gave up: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(reason.contains("stood still for 30 s"), "{failed:?}");
    assert!(holed.elapsed() >= Duration::from_secs(15), "it gave up before it stood still: {failed:?}");
    // Its host rolls the migration back: the guest counts on at its source.
    source.migrate_cancel("stall").unwrap();
    assert_eq!(source.list(now_ms())["stall"].phase, ObservedPhase::Running);
    let at = last_tick();
    wait_for("counting on at the source", within, || last_tick() >= at + 20, console);
    target.destroy("stall", 0).unwrap();
    wait_ended(&mut target, "stall");
    source.destroy("stall", 0).unwrap();
    wait_ended(&mut source, "stall");
}
