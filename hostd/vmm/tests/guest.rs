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
        testguest::ticks(&self.console()).into_iter().max().unwrap_or(0)
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
    let seen = testguest::ticks(&console);
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
    r.wait_until("the restored guest to count", || testguest::ticks(&r.console()).len() >= 3);
    let after = r.console();
    assert!(!after.contains(testguest::MARKER), "the restored guest booted again:\n{after}");
    // Before and after read as one console: every tick once, none lost, none repeated.
    let seen = testguest::ticks(&format!("{before}{after}"));
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert!(seen.len() > testguest::ticks(&before).len() + 2, "{seen:?}");
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
    r.wait_until("the restored guest to count", || !testguest::ticks(&r.console()).is_empty());
    let first = testguest::ticks(&r.console())[0];
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
    // The header's checksum covers its every byte (here one of its zeros).
    let mut header_flip = bytes.clone();
    header_flip[44] ^= 0x01;
    let corrupt_header = write("header.snap", &header_flip);
    let kernel = dir.path().join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let mib32: &[&str] = &["--memory-mib", "32"];
    let cases: [(&std::path::Path, &[&str], &str); 9] = [
        (&truncated, mib32, "truncated or damaged"),
        (&corrupt, mib32, "memory section fails its checksum"),
        (&planted, mib32, "memory section fails its checksum"),
        (&wrong_version, mib32, "format version 9"),
        (&corrupt_state, mib32, "state section fails its checksum"),
        (&text, mib32, "truncated or damaged"),
        (&corrupt_header, mib32, "header section fails its checksum"),
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
    r.wait_until("the restored guest to count", || !testguest::ticks(&r.console()).is_empty());
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

/// `--disk` arguments for `disks` ((path, read-only) in guest order).
fn disk_args(disks: &[(&Path, bool)]) -> Vec<String> {
    disks
        .iter()
        .flat_map(|(p, ro)| {
            ["--disk".to_owned(), format!("{},{}", p.display(), if *ro { "ro" } else { "rw" })]
        })
        .collect()
}

/// A 1 MiB raw disk at `dir/name` whose sector 0 holds `text`.
fn raw_disk(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}

/// What sector 0 of `path` holds, up to its first NUL.
fn sector0(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let text = &bytes[..512];
    String::from_utf8_lossy(&text[..text.iter().position(|&b| b == 0).unwrap_or(512)]).into_owned()
}

/// Eight disks, every other one read-only: the guest finds all of them in command-line
/// order (each at its own window and interrupt line), writes its token to the writable
/// ones, and has every write to a read-only one refused, whose file stays as it was; a
/// second VM reads back what the first wrote. A ninth disk, or one file twice, is refused
/// before the guest runs.
#[test]
fn eight_disks_are_found_in_order_and_read_only_ones_refuse_writes() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<(PathBuf, bool)> = (0..8)
        .map(|i| (raw_disk(dir.path(), &format!("d{i}.raw"), &format!("was-{i}")), i % 2 == 1))
        .collect();
    let originals: Vec<Vec<u8>> = disks.iter().map(|(p, _)| std::fs::read(p).unwrap()).collect();
    let borrowed: Vec<(&Path, bool)> = disks.iter().map(|(p, ro)| (p.as_path(), *ro)).collect();
    let args = disk_args(&borrowed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut w = Guest::start_with("drover.ticks=1 drover.tick_ms=1 drover.blk=write:eight", None, &args);
    assert_eq!(w.exit_record()["phase"], "stopped");
    let console = w.console();
    assert!(console.contains("drover-guest: blk disks 8\n"), "{console}");
    for (i, (path, ro)) in disks.iter().enumerate() {
        let ro_bit = u8::from(*ro);
        assert!(console.contains(&format!("blk {i} ro={ro_bit} held was-{i}\n")), "disk {i}:\n{console}");
        if *ro {
            assert!(console.contains(&format!("blk {i} write refused status 1\n")), "disk {i}:\n{console}");
            assert!(std::fs::read(path).unwrap() == originals[i], "read-only disk {i} was written");
        } else {
            assert!(console.contains(&format!("blk {i} wrote eight-{i}\n")), "disk {i}:\n{console}");
            assert_eq!(sector0(path), format!("eight-{i}"));
        }
    }
    let mut r = Guest::start_with("drover.ticks=1 drover.tick_ms=1 drover.blk=read", None, &args);
    assert_eq!(r.exit_record()["phase"], "stopped");
    for (i, (_, ro)) in disks.iter().enumerate() {
        let want = if *ro { format!("was-{i}") } else { format!("eight-{i}") };
        let line = format!("blk {i} ro={} read {want}\n", u8::from(*ro));
        assert!(r.console().contains(&line), "{line:?}:\n{}", r.console());
    }

    let ninth = raw_disk(dir.path(), "d8.raw", "");
    let twice = dir.path().join(".").join("d0.raw");
    let kernel = dir.path().join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let cases: [(Vec<String>, &str); 2] = [
        (
            [
                args.iter().map(|a| a.to_string()).collect(),
                vec!["--disk".into(), ninth.display().to_string()],
            ]
            .concat(),
            "9 disks; at most 8",
        ),
        (
            vec![
                "--disk".into(),
                format!("{},ro", disks[0].0.display()),
                "--disk".into(),
                format!("{},ro", twice.display()),
            ],
            "is given twice (disks 0 and 1)",
        ),
    ];
    for (extra, want) in cases {
        let run = tempfile::tempdir_in(dir.path()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_drover-vmm"))
            .arg("--run-dir")
            .arg(run.path())
            .args(["--domain", "bad", "--memory-mib", "32", "--kernel"])
            .arg(&kernel)
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let exit = std::fs::read_to_string(run.path().join(control::EXIT_FILE)).unwrap();
        assert!(exit.contains(want), "{extra:?}: {exit}");
    }
}

/// Lines `drover-guest: blk N now TEXT` the watching guest printed.
fn watched(console: &str, n: usize, text: &str) -> bool {
    console.contains(&format!("drover-guest: blk {n} now {text}\n"))
}

/// Three disks (writable, read-only, writable) under a guest that watches them: a snapshot
/// of it, restored after the writable disks changed, brings both writable disks back to
/// the snapshot's instant and leaves the read-only one alone; the restored guest goes on
/// using all three devices as it had set them up. A damaged image of the last disk fails
/// the restore and leaves every disk as it was (the first one's image is not put in
/// either), and a VM whose disks do not match the snapshot's is refused.
#[test]
fn a_restore_brings_every_writable_disk_back_and_keeps_read_only_ones_in_use() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = raw_disk(dir.path(), "a.raw", "");
    let b = raw_disk(dir.path(), "b.raw", "read-only-b");
    let c = raw_disk(dir.path(), "c.raw", "");
    let all = [(a.as_path(), false), (b.as_path(), true), (c.as_path(), false)];
    let args = disk_args(&all);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let write = |token: &str| {
        let mut w = Guest::start_with(
            &format!("drover.ticks=1 drover.tick_ms=1 drover.blk=write:{token}"),
            None,
            &args,
        );
        assert_eq!(w.exit_record()["phase"], "stopped");
        assert!(w.console().contains(&format!("blk 2 wrote {token}-2\n")), "{}", w.console());
    };
    write("before");
    let g = Guest::start_with("drover.tick_ms=20 drover.blk=watch", None, &args);
    g.wait_until("the guest to read its disks", || g.ticks() >= 1);
    for line in ["blk 0 ro=0 read before-0\n", "blk 1 ro=1 read read-only-b\n", "blk 2 ro=0 read before-2\n"]
    {
        assert!(g.console().contains(line), "{line:?}:\n{}", g.console());
    }
    let file = dir.path().join("three.snap");
    let info = control::snapshot(&g.socket(), &file).unwrap();
    g.call(Request::Destroy);
    drop(g);
    // Both images are in the file: 2 MiB of disk, sparse (one sector each is data).
    let header = std::fs::read(&file).unwrap()[..80].to_vec();
    assert_eq!(u32::from_le_bytes(header[8..12].try_into().unwrap()), snapshot::FORMAT_VERSION);
    assert_eq!(u32::from_le_bytes(header[32..36].try_into().unwrap()), 2, "two disk images");
    assert_eq!(u32::from_le_bytes(header[48..52].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(header[64..68].try_into().unwrap()), 2);
    assert!(info.bytes < 8 << 20, "{info:?}");

    write("after");
    let restore = [&args[..], &["--restore-from", file.to_str().unwrap()]].concat();
    let r = Guest::start_with("drover.tick_ms=20 drover.blk=watch", None, &restore);
    assert_eq!(r.call(Request::Status).phase, Phase::Running);
    r.wait_until("the restored guest to count", || testguest::ticks(&r.console()).len() >= 2);
    assert_eq!(
        (sector0(&a), sector0(&b), sector0(&c)),
        ("before-0".into(), "read-only-b".into(), "before-2".into())
    );
    let names = |d: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(dir.path()), ["a.raw", "b.raw", "c.raw", "three.snap"], "files left beside the disks");
    // The restored guest reads its disks through the restored devices: what the host
    // writes into each (the restored files) reaches it.
    use std::os::unix::fs::FileExt;
    for (n, (path, text)) in
        [(&a, "host-wrote-a"), (&b, "host-wrote-b"), (&c, "host-wrote-c")].iter().enumerate()
    {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(format!("{text}\0").as_bytes(), 0)
            .unwrap();
        r.wait_until(&format!("the guest to see disk {n} change"), || watched(&r.console(), n, text));
    }
    assert!(!r.console().contains(testguest::MARKER), "the restored guest booted again");
    assert_eq!(r.call(Request::Destroy).phase, Phase::Destroyed);
    drop(r);

    // A damaged image of disk 2 (the last one in the file): nothing is restored.
    write("kept");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - (1 << 20) + 100; // inside disk 2's first sector
    bytes[at] ^= 0x20;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, bytes).unwrap();
    let kernel = dir.path().join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let refused = |snap: &Path, disks: &[&str]| {
        let run = tempfile::tempdir_in(dir.path()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_drover-vmm"))
            .arg("--run-dir")
            .arg(run.path())
            .args(["--domain", "bad", "--memory-mib", "32", "--kernel"])
            .arg(&kernel)
            .args(disks)
            .arg("--restore-from")
            .arg(snap)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{disks:?}");
        std::fs::read_to_string(run.path().join(control::EXIT_FILE)).unwrap()
    };
    let exit = refused(&damaged, &args);
    assert!(exit.contains("the image of disk 2 fails its checksum"), "{exit}");
    assert_eq!(
        (sector0(&a), sector0(&b), sector0(&c)),
        ("kept-0".into(), "host-wrote-b".into(), "kept-2".into())
    );
    let rw = |p: &Path| format!("{},rw", p.display());
    let ro = |p: &Path| format!("{},ro", p.display());
    let cases: [(Vec<String>, &str); 3] = [
        (vec![rw(&a), ro(&b)], "disks: the snapshot has 3, the VM 2"),
        (vec![rw(&a), rw(&b), rw(&c)], "disk 1: the snapshot has read-only, the VM writable"),
        (vec![ro(&a), ro(&b), rw(&c)], "disk 0: the snapshot has writable, the VM read-only"),
    ];
    for (disks, want) in cases {
        let disks: Vec<String> = disks.into_iter().flat_map(|d| ["--disk".to_owned(), d]).collect();
        let disks: Vec<&str> = disks.iter().map(String::as_str).collect();
        let exit = refused(&file, &disks);
        assert!(exit.contains(want), "{disks:?}: {exit}");
    }
    // The read-only disk is not in the file, but the guest knows its size.
    std::fs::OpenOptions::new().write(true).open(&b).unwrap().set_len(2 << 20).unwrap();
    let exit = refused(&file, &args);
    assert!(exit.contains("has 4096 sectors, the snapshot's read-only disk had 2048"), "{exit}");
    assert_eq!((sector0(&a), sector0(&c)), ("kept-0".into(), "kept-2".into()));
    assert_eq!(names(dir.path()), ["a.raw", "b.raw", "c.raw", "damaged.snap", "guest.elf", "three.snap"]);
}

/// A file as version 1 wrote it, made from version 2 file `v2` of a VM with at most one
/// (writable) disk: a 48-byte header with the disk image's length and checksum, the state
/// section's `disks` as `disk` (one transport state or null), the image after it.
fn to_version_1(v2: &[u8]) -> Vec<u8> {
    let word = |at: usize| u32::from_le_bytes(v2[at..at + 4].try_into().unwrap());
    let long = |at: usize| u64::from_le_bytes(v2[at..at + 8].try_into().unwrap());
    assert_eq!(word(8), 2);
    let (state_len, memory_len, images) = (word(12) as usize, long(16) as usize, word(32));
    assert!(images <= 1);
    let state_at = 4096 + memory_len;
    let mut state: serde_json::Value = serde_json::from_slice(&v2[state_at..state_at + state_len]).unwrap();
    let disks = state.as_object_mut().unwrap().remove("disks").unwrap();
    let disk = disks.as_array().unwrap().first().map_or(serde_json::Value::Null, |d| d["transport"].clone());
    state.as_object_mut().unwrap().insert("disk".into(), disk);
    let state = serde_json::to_vec(&state).unwrap();
    let (disk_len, disk_crc) = if images == 1 { (long(56), word(52)) } else { (0, 0) };
    let image_at = (state_at + state_len).div_ceil(4096) * 4096;
    let mut out = v2[..4096 + memory_len].to_vec();
    out[..4096].fill(0);
    out[..8].copy_from_slice(b"DRVRSNAP");
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[12..16].copy_from_slice(&(state.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&(memory_len as u64).to_le_bytes());
    out[24..28].copy_from_slice(&crc32(&state).to_le_bytes());
    out[28..32].copy_from_slice(&word(28).to_le_bytes());
    out[32..40].copy_from_slice(&disk_len.to_le_bytes());
    out[40..44].copy_from_slice(&disk_crc.to_le_bytes());
    out.extend(&state);
    if images == 1 {
        out.resize(out.len().div_ceil(4096) * 4096, 0);
        out.extend(&v2[image_at..image_at + disk_len as usize]);
    }
    out
}

/// CRC-32 (IEEE), bit by bit: the tests' own, to write files by hand.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Snapshots written before format 2 (one disk at most) still restore: the guest goes on
/// counting and its disk is back to the snapshot's instant. (A file written by the
/// version-1 VMM itself was checked by hand the same way.)
#[test]
fn a_version_1_snapshot_restores_as_a_vm_with_its_one_disk_or_none() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = raw_disk(dir.path(), "disk.raw", "at-the-snapshot");
    let args = disk_args(&[(disk.as_path(), false)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for with_disk in [true, false] {
        let disks: &[&str] = if with_disk { &args } else { &[] };
        let g = Guest::start_with("drover.tick_ms=20", None, disks);
        g.wait_until("two ticks", || g.ticks() >= 2);
        let v2 = dir.path().join("v2.snap");
        control::snapshot(&g.socket(), &v2).unwrap();
        g.call(Request::Destroy);
        drop(g);
        let v1 = dir.path().join("v1.snap");
        std::fs::write(&v1, to_version_1(&std::fs::read(&v2).unwrap())).unwrap();
        if with_disk {
            std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(0).unwrap();
            std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(1 << 20).unwrap();
        }
        let restore = [disks, &["--restore-from", v1.to_str().unwrap()]].concat();
        let r = Guest::start_with("drover.tick_ms=20", None, &restore);
        r.wait_until("the restored guest to count", || testguest::ticks(&r.console()).len() >= 2);
        assert!(testguest::ticks(&r.console())[0] > 2, "{}", r.console());
        assert!(!r.console().contains(testguest::MARKER));
        assert_eq!(r.call(Request::Destroy).phase, Phase::Destroyed);
        assert_eq!(sector0(&disk), "at-the-snapshot", "with_disk {with_disk}");
    }
}
