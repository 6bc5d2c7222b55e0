//! Live migration between two `drover-vmm` processes over loopback TCP, with the test
//! guest on the real `/dev/kvm`: the counter goes on in the target with no tick lost or
//! repeated, a guest dirtying memory converges, and a cancel, a dead target or a
//! black-holed link leaves the guest running in the source; over mutual TLS, only the
//! expected host gets through.
//! Where `/dev/kvm` is missing every test says so and returns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vmm::control::{self, ConvergeLimits, MigrationTls, OutgoingPhase, OutgoingStatus, Phase, Request};

fn kvm_present() -> bool {
    vmm::kvm_present_for("the live-migration tests")
}

const WAIT_SECS: u64 = 60;
/// A budget no copy of a busy guest meets, with no throttle to make it: the copy goes on
/// until cancelled.
const NEVER_CONVERGES: ConvergeLimits = ConvergeLimits { max_downtime_ms: 0, throttle_max_percent: 0 };

struct Vmm {
    dir: tempfile::TempDir,
    child: Child,
}

impl Vmm {
    /// A VMM for domain `m1`: booting the test guest, or (`incoming`) waiting for one.
    fn spawn(cmdline: &str, memory_mib: u64, disk: Option<&Path>, incoming: bool) -> Vmm {
        Vmm::spawn_with(cmdline, memory_mib, disk, incoming.then_some(None))
    }

    /// A VMM waiting for a guest over mutual TLS from the host `tls.peer` names.
    fn spawn_incoming_tls(cmdline: &str, memory_mib: u64, tls: &MigrationTls) -> Vmm {
        Vmm::spawn_with(cmdline, memory_mib, None, Some(Some(tls)))
    }

    /// `incoming`: none boots; `Some(tls)` waits for a guest, over TLS where given.
    fn spawn_with(
        cmdline: &str,
        memory_mib: u64,
        disk: Option<&Path>,
        incoming: Option<Option<&MigrationTls>>,
    ) -> Vmm {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("guest.elf");
        testguest::write_to(&kernel).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover-vmm"));
        cmd.arg("--run-dir").arg(dir.path()).args(["--domain", "m1", "--generation", "3"]);
        cmd.arg("--kernel").arg(&kernel).args([
            "--memory-mib",
            &memory_mib.to_string(),
            "--cmdline",
            cmdline,
        ]);
        if let Some(d) = disk {
            cmd.arg("--disk").arg(format!("{},rw", d.display()));
        }
        if let Some(tls) = incoming {
            cmd.args(["--incoming", "127.0.0.1:0"]);
            if let Some(t) = tls {
                cmd.arg("--incoming-tls-dir").arg(&t.dir).args(["--incoming-peer", &t.peer]);
            }
        }
        let child = cmd.spawn().unwrap();
        let v = Vmm { dir, child };
        if incoming.is_some() {
            v.wait_until("the incoming address", || v.incoming_address().is_some());
        } else {
            v.wait_until("the control socket", || v.socket().exists());
        }
        v
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join(control::SOCKET_FILE)
    }

    fn incoming_address(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(control::INCOMING_FILE)).ok()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(control::CONSOLE_FILE)).unwrap_or_default()
    }

    fn ticks(&self) -> u64 {
        testguest::ticks(&self.console()).into_iter().max().unwrap_or(0)
    }

    fn wait_until(&self, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(WAIT_SECS);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; console:\n{}", self.console());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn call(&self, r: Request) -> control::Status {
        control::call(&self.socket(), r).unwrap()
    }

    fn migration(&self) -> OutgoingStatus {
        self.call(Request::Status).migration.expect("a migration was asked for")
    }

    /// Start migrating to `target` and wait until the copy stops (at the switch-over, or
    /// failed).
    fn migrate_to(&self, target: &Vmm, max_downtime_ms: u64) -> OutgoingStatus {
        self.migrate_to_with(target, max_downtime_ms, None)
    }

    /// [`Vmm::migrate_to`], over `tls` where given.
    fn migrate_to_with(
        &self,
        target: &Vmm,
        max_downtime_ms: u64,
        tls: Option<MigrationTls>,
    ) -> OutgoingStatus {
        let address = target.incoming_address().unwrap();
        self.call(Request::MigrateSend {
            address,
            limits: ConvergeLimits { max_downtime_ms, throttle_max_percent: 99 },
            tls,
        });
        self.wait_until("the copy to finish", || {
            !matches!(self.migration().phase, OutgoingPhase::Copying | OutgoingPhase::Completing)
        });
        self.migration()
    }

    fn exit_record(&mut self) -> (Option<i32>, serde_json::Value) {
        let status = self.child.wait().unwrap();
        let text = std::fs::read_to_string(self.dir.path().join(control::EXIT_FILE)).unwrap();
        (status.code(), serde_json::from_str(&text).unwrap())
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 64 MiB source whose guest rewrites half its memory every millisecond, counting, and
/// a target waiting for it.
fn busy_pair() -> (Vmm, Vmm) {
    let source = Vmm::spawn("drover.tick_ms=1 drover.dirty_mib=32", 64, None, false);
    source.wait_until("ticks", || source.ticks() >= 20);
    let target = Vmm::spawn("drover.tick_ms=1", 64, None, true);
    (source, target)
}

/// Every tick of `console`, checked to go up by one each time.
fn consecutive(console: &str) -> Vec<u64> {
    let seen = testguest::ticks(console);
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "ticks lost or repeated: {seen:?}");
    seen
}

#[test]
fn a_migrated_guest_counts_on_in_the_target_and_keeps_its_disk() {
    if !kvm_present() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let disk = shared.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let token = format!("mig-{}", std::process::id());
    let mut source =
        Vmm::spawn(&format!("drover.tick_ms=20 drover.blk=write:{token}"), 32, Some(&disk), false);
    source.wait_until("three ticks", || source.ticks() >= 3);
    // The target's command line is the one a reboot there boots with.
    let target = Vmm::spawn("drover.tick_ms=20 drover.blk=read", 32, Some(&disk), true);
    let status = source.migrate_to(&target, 50);
    assert_eq!(status.phase, OutgoingPhase::AwaitingSwitch, "{status:?}");
    assert!(status.progress.bytes_sent > 0 && status.progress.rounds >= 1, "{status:?}");
    // Paused on both sides until the switch-over: the counter stands still.
    assert_eq!(source.call(Request::Status).phase, Phase::Paused);
    assert_eq!(target.call(Request::Status).phase, Phase::Paused);
    let frozen = source.ticks();
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(source.ticks(), frozen);
    assert!(testguest::ticks(&target.console()).is_empty());

    let progress = control::migrate_switch(&source.socket()).unwrap();
    let downtime = progress.downtime_ms.expect("the downtime is measured");
    assert!(downtime < 10_000, "{progress:?}");
    target.wait_until("the target to count", || testguest::ticks(&target.console()).len() >= 3);
    assert_eq!(target.call(Request::Status).phase, Phase::Running);
    // One counter across both consoles: nothing lost, nothing repeated, no second boot.
    let seen = consecutive(&format!("{}{}", source.console(), target.console()));
    assert!(seen.len() >= 6, "{seen:?}");
    assert!(!target.console().contains(testguest::MARKER), "the target booted the guest again");
    let (code, exit) = source.exit_record();
    assert_eq!(code, Some(0));
    assert_eq!(exit["phase"], "destroyed");
    assert!(exit["reason"].as_str().unwrap().contains("migrated to 127.0.0.1:"), "{exit}");
    // The disk the source wrote is the target's now, and locked for it: the target
    // reboots and reads what the source's guest wrote.
    target.call(Request::Reboot);
    // The whole line: the console file can hold half of one the guest is still writing.
    let read_line = |c: String| c.split_once("blk 0 ro=0 read").is_some_and(|(_, rest)| rest.contains('\n'));
    target.wait_until("the target's reboot to read the disk", || read_line(target.console()));
    assert!(target.console().contains(&format!("read {token}-0\n")), "{}", target.console());
}

/// The test guest rewrites its memory in bursts, once a tick; pre-copy converges by
/// sending each round while the next burst is still to come, or by throttling the vCPUs
/// when the bursts overtake it (which of the two depends on the host's speed).
#[test]
fn a_guest_dirtying_half_its_memory_every_millisecond_converges() {
    if !kvm_present() {
        return;
    }
    let (source, target) = busy_pair();
    let status = source.migrate_to(&target, 4);
    assert_eq!(status.phase, OutgoingPhase::AwaitingSwitch, "{status:?}");
    assert!(status.progress.rounds >= 2, "{status:?}");
    // More than the 32 dirtied MiB went: round 0 and then what the bursts rewrote.
    assert!(status.progress.bytes_sent > 32 << 20, "{status:?}");
    let progress = control::migrate_switch(&source.socket()).unwrap();
    eprintln!("converged: {progress:?}");
    let before = target.ticks();
    target.wait_until("the target to count on", || target.ticks() > before + 10);
    assert_eq!(target.call(Request::Status).phase, Phase::Running);
    consecutive(&format!("{}{}", source.console(), target.console()));
}

#[test]
fn a_cancelled_migration_leaves_the_guest_running_in_the_source() {
    if !kvm_present() {
        return;
    }
    let (source, mut target) = busy_pair();
    let address = target.incoming_address().unwrap();
    source.call(Request::MigrateSend { address, limits: NEVER_CONVERGES, tls: None });
    source.wait_until("a few rounds", || source.migration().progress.rounds >= 3);
    let cancelled = source.call(Request::MigrateCancel);
    assert_eq!(cancelled.migration.unwrap().phase, OutgoingPhase::Cancelled);
    assert_eq!(cancelled.phase, Phase::Running);
    let now = source.ticks();
    source.wait_until("the source to count on", || source.ticks() > now + 20);
    // The target never ran the guest and gave up on its source.
    let (code, exit) = target.exit_record();
    assert_eq!(code, Some(2), "{exit}");
    assert!(exit["reason"].as_str().unwrap().contains("incoming migration"), "{exit}");
    assert!(testguest::ticks(&target.console()).is_empty());
}

#[test]
fn a_target_killed_mid_copy_leaves_the_guest_running_in_the_source() {
    if !kvm_present() {
        return;
    }
    let (source, mut target) = busy_pair();
    let address = target.incoming_address().unwrap();
    source.call(Request::MigrateSend { address, limits: NEVER_CONVERGES, tls: None });
    source.wait_until("a few rounds", || source.migration().progress.rounds >= 2);
    target.child.kill().unwrap(); // SIGKILL
    target.child.wait().unwrap();
    source.wait_until("the migration to fail", || source.migration().phase == OutgoingPhase::Failed);
    let failed = source.call(Request::Status);
    assert_eq!(failed.phase, Phase::Running, "{failed:?}");
    assert!(failed.migration.unwrap().reason.is_some());
    let now = source.ticks();
    source.wait_until("the source to count on", || source.ticks() > now + 20);
}

/// A link that drops every packet mid-copy without a reset (a black hole) brings no
/// error, only silence: the guest runs on in the source meanwhile, the stream's timeouts
/// end the migration on both sides, and the source says why.
#[test]
fn a_black_holed_link_mid_copy_times_out_and_the_guest_runs_on_in_the_source() {
    if !kvm_present() {
        return;
    }
    let (source, mut target) = busy_pair();
    let relay = testguest::relay::Relay::to(&target.incoming_address().unwrap());
    let address = relay.address.clone();
    source.call(Request::MigrateSend { address, limits: NEVER_CONVERGES, tls: None });
    source.wait_until("a few rounds", || source.migration().progress.rounds >= 2);
    relay.black_hole();
    let cut = Instant::now();
    let now = source.ticks();
    source.wait_until("the source to count on in the silence", || source.ticks() > now + 100);
    assert_eq!(source.migration().phase, OutgoingPhase::Copying, "no error comes through a black hole");
    // The socket's timeouts are per call, and a write that moves a few bytes now and then
    // never times out: the source's watchdog cuts a copy that all but stood still for as
    // long.
    source.wait_until("the stream's timeout", || source.migration().phase == OutgoingPhase::Failed);
    let timeout = Duration::from_millis(vmm::migration::ANSWER_TIMEOUT_MS);
    assert!(cut.elapsed() >= timeout / 2, "failed after {:?}, before any timeout", cut.elapsed());
    let failed = source.call(Request::Status);
    assert_eq!(failed.phase, Phase::Running, "{failed:?}");
    let reason = failed.migration.unwrap().reason.unwrap();
    assert!(reason.contains("the copy stood still for 30 s"), "{reason}");
    let now = source.ticks();
    source.wait_until("the source to count on", || source.ticks() > now + 20);
    // The target heard nothing for as long, gave up and never ran the guest.
    let (code, exit) = target.exit_record();
    assert_eq!(code, Some(2), "{exit}");
    assert!(exit["reason"].as_str().unwrap().contains("timed out"), "{exit}");
    assert!(testguest::ticks(&target.console()).is_empty());
}

#[test]
fn a_source_for_another_machine_is_refused_and_runs_on() {
    if !kvm_present() {
        return;
    }
    let source = Vmm::spawn("drover.tick_ms=20", 32, None, false);
    source.wait_until("a tick", || source.ticks() >= 1);
    let mut target = Vmm::spawn("drover.tick_ms=20", 64, None, true);
    let status = source.migrate_to(&target, 50);
    assert_eq!(status.phase, OutgoingPhase::Failed, "{status:?}");
    assert!(status.reason.as_deref().unwrap().contains("64 MiB"), "{status:?}");
    assert_eq!(source.call(Request::Status).phase, Phase::Running);
    let (code, exit) = target.exit_record();
    assert_eq!(code, Some(2), "{exit}");
    // A switch-over without a finished copy is refused too.
    assert!(control::migrate_switch(&source.socket()).is_err());
}

/// Over mutual TLS between hosts `h1` and `h2`, the guest moves as in the clear: no tick
/// lost or repeated.
#[test]
fn a_guest_migrated_over_tls_counts_on_in_the_target() {
    if !kvm_present() {
        return;
    }
    let pki = testguest::certs::Pki::new();
    let source = Vmm::spawn("drover.tick_ms=5 drover.dirty_mib=8", 32, None, false);
    source.wait_until("ticks", || source.ticks() >= 5);
    let target = Vmm::spawn_incoming_tls("drover.tick_ms=5", 32, &tls(&pki, "h2", "h1"));
    let status = source.migrate_to_with(&target, 50, Some(tls(&pki, "h1", "h2")));
    assert_eq!(status.phase, OutgoingPhase::AwaitingSwitch, "{status:?}");
    control::migrate_switch(&source.socket()).unwrap();
    let before = target.ticks();
    target.wait_until("the target to count on", || target.ticks() > before + 10);
    consecutive(&format!("{}{}", source.console(), target.console()));
}

/// Each way a migration stream can come from or go to the wrong party fails before any
/// page moves: the guest runs on in the source, and the target never runs it.
#[test]
fn a_migration_stream_reaches_only_the_expected_host() {
    if !kvm_present() {
        return;
    }
    let pki = testguest::certs::Pki::new();
    let other_ca = testguest::certs::Pki::new();
    let source = Vmm::spawn("drover.tick_ms=20", 32, None, false);
    source.wait_until("a tick", || source.ticks() >= 1);
    let cases: [(&str, MigrationTls, Option<MigrationTls>, &str); 5] = [
        // The target waits for h1; the source is h3.
        (
            "a source of another host",
            tls(&pki, "h2", "h1"),
            Some(tls(&pki, "h3", "h2")),
            "refused: migration TLS",
        ),
        // The source expects h2; the target is h4.
        ("a target of another host", tls(&pki, "h4", "h1"), Some(tls(&pki, "h1", "h2")), "not host \"h2\""),
        // A source whose certificate another CA signed.
        ("a source of another CA", tls(&pki, "h2", "h1"), Some(tls(&other_ca, "h1", "h2")), "TLS"),
        // A user's certificate of the right CA and name is not a host's.
        (
            "a user's certificate",
            tls(&pki, "h2", "h1"),
            Some(MigrationTls { dir: pki.dir("user", "h1"), peer: "h2".into() }),
            "names user \"h1\", not host \"h1\"",
        ),
        // A source in the clear.
        ("a source without TLS", tls(&pki, "h2", "h1"), None, ""),
    ];
    for (case, target_tls, source_tls, reason) in cases {
        let mut target = Vmm::spawn_incoming_tls("drover.tick_ms=20", 32, &target_tls);
        let status = source.migrate_to_with(&target, 50, source_tls);
        assert_eq!(status.phase, OutgoingPhase::Failed, "{case}: {status:?}");
        let why = status.reason.unwrap_or_default();
        assert!(why.contains(reason), "{case}: {why}");
        assert_eq!(source.call(Request::Status).phase, Phase::Running, "{case}");
        let (code, exit) = target.exit_record();
        assert_eq!(code, Some(2), "{case}: {exit}");
        assert!(testguest::ticks(&target.console()).is_empty(), "{case}");
        let now = source.ticks();
        source.wait_until("the source to count on", || source.ticks() > now);
    }
}

/// What host `own` uses to talk to host `peer`, with `pki`'s certificates.
fn tls(pki: &testguest::certs::Pki, own: &str, peer: &str) -> MigrationTls {
    MigrationTls { dir: pki.dir("host", own), peer: peer.to_owned() }
}
