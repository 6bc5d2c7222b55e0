//! The own VMM with the test guest, as separate `drover-vmm` processes on the real
//! `/dev/kvm`. Where `/dev/kvm` is missing every test says so on stderr and returns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vmm::control::{self, Phase, Request};
use vmm::snapshot;

fn kvm_present() -> bool {
    vmm::kvm_present_for("the own-VMM tests")
}

struct Guest {
    dir: tempfile::TempDir,
    child: Child,
}

impl Guest {
    fn start(cmdline: &str, disk: Option<&Path>) -> Guest {
        Guest::start_with(cmdline, disk, &[])
    }

    fn start_with(cmdline: &str, disk: Option<&Path>, extra: &[&str]) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("guest.elf");
        testguest::write_to(&kernel).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover-vmm"));
        cmd.arg("--run-dir").arg(dir.path()).args(["--domain", "t1", "--generation", "7"]);
        cmd.arg("--kernel").arg(&kernel).args(["--memory-mib", "32", "--cmdline", cmdline]);
        if let Some(d) = disk {
            cmd.arg("--disk").arg(d);
        }
        cmd.args(extra);
        let child = cmd.spawn().unwrap();
        let g = Guest { dir, child };
        g.wait_until("the control socket", || g.socket().exists());
        g
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join(control::SOCKET_FILE)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(control::CONSOLE_FILE)).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; console:\n{}", self.console());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The highest counter the guest has printed.
    fn ticks(&self) -> u64 {
        self.console()
            .lines()
            .filter_map(|l| l.strip_prefix(testguest::TICK_PREFIX))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    fn call(&self, r: Request) -> control::Status {
        control::call(&self.socket(), r).unwrap()
    }

    fn exit_record(&mut self) -> serde_json::Value {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "drover-vmm exited with {status}");
        let text = std::fs::read_to_string(self.dir.path().join(control::EXIT_FILE)).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_marker_reaches_the_console_log_and_the_guest_powers_off() {
    if !kvm_present() {
        return;
    }
    let mut g = Guest::start("drover.tick_ms=10 drover.ticks=3", None);
    g.wait_until("the marker", || g.console().contains(testguest::MARKER));
    let exit = g.exit_record();
    assert_eq!(exit["phase"], "stopped", "{exit}");
    assert_eq!(exit["generation"], 7);
    assert_eq!(g.ticks(), 3);
    assert!(!g.socket().exists(), "the socket outlived the VM");
}

#[test]
fn pause_stops_the_counter_and_resume_continues_it() {
    if !kvm_present() {
        return;
    }
    let mut g = Guest::start("drover.tick_ms=20", None);
    g.wait_until("two ticks", || g.ticks() >= 2);
    assert_eq!(g.call(Request::Pause).phase, Phase::Paused);
    let frozen = g.ticks();
    // Five tick periods pass on the host; the paused guest prints nothing.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.ticks(), frozen, "the counter moved while paused");
    assert_eq!(g.call(Request::Status).phase, Phase::Paused);
    assert_eq!(g.call(Request::Resume).phase, Phase::Running);
    g.wait_until("the counter to move again", || g.ticks() > frozen);
    // The counter continues from where it stopped: no tick is lost or repeated.
    let console = g.console();
    let seen: Vec<u64> = console
        .lines()
        .filter_map(|l| l.strip_prefix(testguest::TICK_PREFIX))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert_eq!(g.call(Request::Destroy).phase, Phase::Destroyed);
    assert_eq!(g.exit_record()["phase"], "destroyed");
}

#[test]
fn destroy_ends_the_process() {
    if !kvm_present() {
        return;
    }
    let mut g = Guest::start("drover.tick_ms=10", None);
    g.wait_until("the marker", || g.console().contains(testguest::MARKER));
    let pid = g.call(Request::Status).pid;
    assert_eq!(pid, g.child.id());
    g.call(Request::Destroy);
    let exit = g.exit_record();
    assert_eq!(exit["phase"], "destroyed");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the VMM process is still there");
}

#[test]
fn graceful_shutdown_reaches_the_guest() {
    if !kvm_present() {
        return;
    }
    let mut g = Guest::start("drover.tick_ms=10", None);
    g.wait_until("a tick", || g.ticks() >= 1);
    g.call(Request::Shutdown);
    let exit = g.exit_record();
    assert_eq!(exit["phase"], "stopped", "{exit}");
    assert!(g.console().contains("drover-guest: power off"));
}

#[test]
fn reboot_starts_the_guest_again() {
    if !kvm_present() {
        return;
    }
    let g = Guest::start("drover.tick_ms=10", None);
    g.wait_until("a tick", || g.ticks() >= 1);
    g.call(Request::Reboot);
    g.wait_until("a second marker", || g.console().matches(testguest::MARKER).count() == 2);
    assert_eq!(g.call(Request::Status).phase, Phase::Running);
}

/// Four vCPUs: one thread each (the test guest runs on the boot processor; the others
/// wait for a SIPI it never sends, in KVM_RUN), and pause, resume, reboot and shutdown act
/// on all of them: pause only reports Paused once every vCPU is parked, and the process
/// ends with its guest.
#[test]
fn a_vm_with_four_vcpus_pauses_reboots_and_ends_as_one() {
    if !kvm_present() {
        return;
    }
    let mut g = Guest::start_with("drover.tick_ms=20", None, &["--vcpus", "4"]);
    g.wait_until("two ticks", || g.ticks() >= 2);
    let pid = g.child.id();
    let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with("vcpu"))
        .collect();
    threads.sort();
    assert_eq!(threads, ["vcpu0", "vcpu1", "vcpu2", "vcpu3"]);
    assert_eq!(g.call(Request::Pause).phase, Phase::Paused);
    let frozen = g.ticks();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.ticks(), frozen, "the counter moved while paused");
    assert_eq!(g.call(Request::Resume).phase, Phase::Running);
    g.wait_until("the counter to move again", || g.ticks() > frozen);
    g.call(Request::Reboot);
    g.wait_until("a second marker", || g.console().matches(testguest::MARKER).count() == 2);
    g.call(Request::Shutdown);
    let exit = g.exit_record();
    assert_eq!(exit["phase"], "stopped", "{exit}");
}

#[test]
fn data_written_to_a_disk_is_read_back_by_a_new_vm() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let token = format!("token-{}", std::process::id());
    let mut writer =
        Guest::start(&format!("drover.ticks=1 drover.tick_ms=1 drover.blk=write:{token}"), Some(&disk));
    assert_eq!(writer.exit_record()["phase"], "stopped");
    assert!(writer.console().contains(&format!("blk 0 wrote {token}-0\n")), "{}", writer.console());
    let mut reader = Guest::start("drover.ticks=1 drover.tick_ms=1 drover.blk=read", Some(&disk));
    assert_eq!(reader.exit_record()["phase"], "stopped");
    assert!(reader.console().contains(&format!("blk 0 ro=0 read {token}-0\n")), "{}", reader.console());
}

#[test]
fn a_disk_another_vm_holds_is_refused_until_that_vm_ends() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let first = Guest::start("drover.tick_ms=20", Some(&disk));
    first.wait_until("the first VM to run", || first.ticks() >= 1);
    // A second run of the disk (as a stale run on shared storage would be) is refused
    // before its guest runs.
    let run = dir.path().join("second");
    std::fs::create_dir_all(&run).unwrap();
    let kernel = dir.path().join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let second = || {
        Command::new(env!("CARGO_BIN_EXE_drover-vmm"))
            .arg("--run-dir")
            .arg(&run)
            .args(["--domain", "t2", "--memory-mib", "32", "--cmdline", "drover.ticks=1 drover.tick_ms=1"])
            .arg("--kernel")
            .arg(&kernel)
            .arg("--disk")
            .arg(&disk)
            .output()
            .unwrap()
    };
    let out = second();
    assert_eq!(out.status.code(), Some(2));
    let exit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(control::EXIT_FILE)).unwrap()).unwrap();
    assert!(exit["reason"].as_str().unwrap().contains("in use by another VM"), "{exit}");
    // Once the holder has ended, the disk is free.
    first.call(Request::Destroy);
    drop(first);
    let out = second();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_input_ends_with_a_clear_reason() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.elf");
    let mut bytes = testguest::IMAGE.to_vec();
    bytes.truncate(200); // an ELF header whose program headers are cut off
    std::fs::write(&corrupt, bytes).unwrap();
    let not_a_kernel = dir.path().join("text");
    std::fs::write(&not_a_kernel, "hello").unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--kernel", "/nonexistent/kernel"], "kernel /nonexistent/kernel is missing"),
        (&["--kernel", corrupt.to_str().unwrap()], "is corrupt"),
        (&["--kernel", not_a_kernel.to_str().unwrap()], "neither an ELF nor a bzImage"),
        (
            &["--kernel", corrupt.to_str().unwrap(), "--disk", "/nonexistent/disk"],
            "disk /nonexistent/disk is missing",
        ),
        (&["--kernel", corrupt.to_str().unwrap(), "--memory-mib", "100000000"], "more than the host has"),
        (&["--kernel", corrupt.to_str().unwrap(), "--memory-mib", "2"], "MiB is outside"),
        (&["--kernel", corrupt.to_str().unwrap(), "--vcpus", "33"], "33 vCPUs is outside 1..=32"),
        (&["--kernel", corrupt.to_str().unwrap(), "--nic", "tap=drvt0,mac=52:54"], "is not a MAC address"),
    ];
    for (args, want) in cases {
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_drover-vmm"))
            .arg("--run-dir")
            .arg(&run)
            .args(["--domain", "bad"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let exit: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join(control::EXIT_FILE)).unwrap()).unwrap();
        assert_eq!(exit["phase"], "crashed");
        let reason = exit["reason"].as_str().unwrap();
        assert!(reason.contains(want), "{args:?}: {reason}");
    }
}

/// Every counter value in `console`, in order.
fn ticks_in(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix(testguest::TICK_PREFIX))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[test]
fn a_restored_snapshot_continues_the_counter_exactly_where_it_was_taken() {
    if !kvm_present() {
        return;
    }
    let g = Guest::start("drover.tick_ms=20", None);
    g.wait_until("three ticks", || g.ticks() >= 3);
    assert_eq!(g.call(Request::Pause).phase, Phase::Paused);
    let before = g.console();
    let file = g.dir.path().join("t1.snap");
    let info = control::snapshot(&g.socket(), &file).unwrap();
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&file).unwrap().blocks() * 512;
    assert!(info.bytes > 0 && on_disk == info.bytes, "{info:?}, {on_disk} bytes on disk");
    // Sparse: the 32 MiB guest touched far less.
    assert!(info.bytes < 8 << 20, "{info:?}");
    assert_eq!(info.duration_ms, 0, "a paused guest is not paused for it");
    assert!(!snapshot::part_path(&file).exists(), "the partial file was left behind");
    assert_eq!(g.call(Request::Status).phase, Phase::Paused, "a paused guest stays paused");
    // The original runs on past the snapshot, then goes.
    let taken_at = g.ticks();
    assert_eq!(g.call(Request::Resume).phase, Phase::Running);
    g.wait_until("the original to count on", || g.ticks() >= taken_at + 3);
    g.call(Request::Destroy);

    let restore = ["--restore-from", file.to_str().unwrap()];
    let r = Guest::start_with("drover.tick_ms=20", None, &restore);
    assert_eq!(r.call(Request::Status).phase, Phase::Paused, "a snapshot of a paused guest restores paused");
    assert_eq!(r.call(Request::Resume).phase, Phase::Running);
    r.wait_until("the restored guest to count", || ticks_in(&r.console()).len() >= 3);
    let after = r.console();
    assert!(!after.contains(testguest::MARKER), "the restored guest booted again:\n{after}");
    // Before and after read as one console: every tick once, none lost, none repeated.
    let seen = ticks_in(&format!("{before}{after}"));
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert!(seen.len() > ticks_in(&before).len() + 2, "{seen:?}");
    assert_eq!(r.call(Request::Destroy).phase, Phase::Destroyed);
}

#[test]
fn a_snapshot_of_a_running_guest_keeps_it_running_and_restores_running() {
    if !kvm_present() {
        return;
    }
    let g = Guest::start_with("drover.tick_ms=20", None, &["--vcpus", "2"]);
    g.wait_until("two ticks", || g.ticks() >= 2);
    let file = g.dir.path().join("t1.snap");
    // The guest keeps counting around the call: the snapshot falls between these two.
    let before = g.ticks();
    let info = control::snapshot(&g.socket(), &file).unwrap();
    let after = g.ticks();
    assert_eq!(g.call(Request::Status).phase, Phase::Running);
    g.wait_until("the original to count on", || g.ticks() >= after + 2);
    assert!(info.duration_ms < 10_000, "{info:?}");
    g.call(Request::Destroy);

    let r = Guest::start_with(
        "drover.tick_ms=20",
        None,
        &["--vcpus", "2", "--restore-from", file.to_str().unwrap()],
    );
    assert_eq!(r.call(Request::Status).phase, Phase::Running);
    r.wait_until("the restored guest to count", || !ticks_in(&r.console()).is_empty());
    let first = ticks_in(&r.console())[0];
    // The counter goes on from the snapshot (one tick may have been mid-print when taken).
    assert!(
        (before + 1..=after + 2).contains(&first),
        "first tick {first}, snapshot between {before} and {after}"
    );
    assert!(!r.console().contains(testguest::MARKER));
    // A restored guest is a whole VM: it pauses, reboots and ends like any other.
    assert_eq!(r.call(Request::Pause).phase, Phase::Paused);
    assert_eq!(r.call(Request::Resume).phase, Phase::Running);
    r.call(Request::Reboot);
    r.wait_until("the reboot's marker", || r.console().contains(testguest::MARKER));
    assert_eq!(r.call(Request::Destroy).phase, Phase::Destroyed);
}

#[test]
fn damaged_or_foreign_snapshot_files_are_refused_before_the_guest_runs() {
    if !kvm_present() {
        return;
    }
    let g = Guest::start("drover.tick_ms=20", None);
    g.wait_until("a tick", || g.ticks() >= 1);
    let good = g.dir.path().join("good.snap");
    control::snapshot(&g.socket(), &good).unwrap();
    g.call(Request::Destroy);
    let bytes = std::fs::read(&good).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let truncated = write("truncated.snap", &bytes[..bytes.len() - 4096]);
    // The guest image sits at 1 MiB of guest memory, which starts at offset 4096.
    let mut flipped = bytes.clone();
    flipped[4096 + (1 << 20) + 100] ^= 0x40;
    let corrupt = write("corrupt.snap", &flipped);
    // Data where the guest had only zeros (a hole in the file).
    let mut planted = bytes.clone();
    planted[4096 + (30 << 20) + 7] = 0x55;
    let planted = write("planted.snap", &planted);
    let mut v9 = bytes.clone();
    v9[8] = 9;
    let wrong_version = write("v9.snap", &v9);
    let mut state_flip = bytes.clone();
    let last = state_flip.len() - 100;
    state_flip[last] ^= 0x01;
    let corrupt_state = write("state.snap", &state_flip);
    let text = write("text.snap", b"hello, I am not a snapshot");
    let kernel = dir.path().join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let mib32: &[&str] = &["--memory-mib", "32"];
    let cases: [(&std::path::Path, &[&str], &str); 8] = [
        (&truncated, mib32, "truncated or damaged"),
        (&corrupt, mib32, "memory section fails its checksum"),
        (&planted, mib32, "memory section fails its checksum"),
        (&wrong_version, mib32, "format version 9"),
        (&corrupt_state, mib32, "state section fails its checksum"),
        (&text, mib32, "truncated or damaged"),
        (&good, &["--memory-mib", "64"], "memory: the snapshot has 32 MiB, the VM 64 MiB"),
        (&good, &["--memory-mib", "32", "--vcpus", "2"], "vCPUs: the snapshot has 1, the VM 2"),
    ];
    for (file, extra, want) in cases {
        let run = tempfile::tempdir_in(dir.path()).unwrap();
        let run = run.path();
        let out = Command::new(env!("CARGO_BIN_EXE_drover-vmm"))
            .arg("--run-dir")
            .arg(run)
            .args(["--domain", "bad"])
            .arg("--kernel")
            .arg(&kernel)
            .arg("--restore-from")
            .arg(file)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{file:?} {extra:?}");
        let exit: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join(control::EXIT_FILE)).unwrap()).unwrap();
        assert_eq!(exit["phase"], "crashed");
        let reason = exit["reason"].as_str().unwrap();
        assert!(reason.contains(want), "{file:?} {extra:?}: {reason}");
        assert!(!std::fs::read_to_string(run.join(control::CONSOLE_FILE))
            .unwrap_or_default()
            .contains("tick"));
    }
}

#[test]
fn a_restore_brings_the_disk_back_to_the_instant_of_the_snapshot() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let write = |token: &str| {
        let mut w =
            Guest::start(&format!("drover.ticks=1 drover.tick_ms=1 drover.blk=write:{token}"), Some(&disk));
        assert_eq!(w.exit_record()["phase"], "stopped");
        assert!(w.console().contains(&format!("blk 0 wrote {token}-0\n")), "{}", w.console());
    };
    write("before-the-snapshot");
    let g = Guest::start("drover.tick_ms=20", Some(&disk));
    g.wait_until("a tick", || g.ticks() >= 1);
    let file = dir.path().join("with-disk.snap");
    let info = control::snapshot(&g.socket(), &file).unwrap();
    g.call(Request::Destroy);
    // The disk changes after the snapshot: a guest writes something else.
    write("after-the-snapshot");
    let restore = ["--restore-from", file.to_str().unwrap()];
    let r = Guest::start_with("drover.tick_ms=20", Some(&disk), &restore);
    assert_eq!(r.call(Request::Status).phase, Phase::Running);
    r.wait_until("the restored guest to count", || !ticks_in(&r.console()).is_empty());
    r.call(Request::Destroy);
    let mut reader = Guest::start("drover.ticks=1 drover.tick_ms=1 drover.blk=read", Some(&disk));
    assert_eq!(reader.exit_record()["phase"], "stopped");
    assert!(
        reader.console().contains("blk 0 ro=0 read before-the-snapshot-0\n"),
        "{}\n{info:?}",
        reader.console()
    );
    // A damaged disk image is refused, and the disk is left as it is.
    write("kept");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - (1 << 20) + 600; // inside the disk image's first sector
    bytes[last] ^= 0x20;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, bytes).unwrap();
    let run = tempfile::tempdir().unwrap();
    let kernel = run.path().join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover-vmm"))
        .arg("--run-dir")
        .arg(run.path())
        .args(["--domain", "bad", "--memory-mib", "32", "--kernel"])
        .arg(&kernel)
        .arg("--disk")
        .arg(&disk)
        .arg("--restore-from")
        .arg(&damaged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let exit = std::fs::read_to_string(run.path().join(control::EXIT_FILE)).unwrap();
    assert!(exit.contains("the image of disk 0 fails its checksum"), "{exit}");
    let mut reader = Guest::start("drover.ticks=1 drover.tick_ms=1 drover.blk=read", Some(&disk));
    assert_eq!(reader.exit_record()["phase"], "stopped");
    assert!(reader.console().contains("blk 0 ro=0 read kept-0\n"), "{}", reader.console());
}
