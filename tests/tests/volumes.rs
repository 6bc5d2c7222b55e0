//! Volumes are files, end to end through the API and the CLI, with a real hostd running
//! the Debian Linux guest under the qemu driver: raw and qcow2 volumes are made by the
//! host as files (their format and size checked on disk), attached to a guest that writes
//! a marker to each and reads it back after a restart; a resize is seen by the guest; a
//! clone is a qcow2 overlay the guest sees its base's data through, while a read-only disk
//! refuses writes; an import copies an image; a volume whose file cannot be made is
//! failed with the reason; delete removes the files. And a domain boots from an imported
//! bootable disk (firmware, boot loader, kernel on the disk).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{
    drover_bin, drover_cli as drover, linux_guest, linux_guest_dir, wait_for, KillOnDrop, KillVmsOnDrop,
    Processes,
};

const MIB: u64 = 1 << 20;

/// A CLI call that must fail; returns what it said.
fn drover_fails(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(drover_bin()).args(["--endpoint", endpoint]).args(args).output().unwrap();
    assert!(!out.status.success(), "drover {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn volume(endpoint: &str, name: &str) -> serde_json::Value {
    let out = drover(endpoint, &["--output", "json", "vol", "list"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array().unwrap().iter().find(|v| v["volume"] == name).cloned().unwrap_or(serde_json::Value::Null)
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img").args(["info", "--output=json"]).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn start_hostd(ep: &str, dir: &Path, run: &Path) -> KillOnDrop {
    let log = std::fs::File::create(dir.join("hostd.log")).unwrap();
    let hostd = KillOnDrop(
        Command::new(drover_bin())
            .args(["--endpoint", ep, "hostd", "--name", "h1", "--driver", "qemu", "--tick-ms", "50"])
            .args(["--vcpus", "8", "--memory-mib", "4096", "--run-dir"])
            .arg(run)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    wait_for("h1 to be ready", Duration::from_secs(30), || async {
        drover(ep, &["host", "list"])
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains(" ready "))
            .then_some(())
    })
    .await;
    hostd
}

/// The console from byte `from` on.
fn console_from(run: &Path, domain: &str, from: usize) -> String {
    let bytes = std::fs::read(run.join(domain).join("console.log")).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}

/// Start `domain` and wait for its guest to have reported (and marked) every disk;
/// returns the console of this run.
async fn run_guest(endpoint: &str, run: &Path, domain: &str, disks: &[&str]) -> String {
    let from = std::fs::metadata(run.join(domain).join("console.log")).map_or(0, |m| m.len() as usize);
    drover(endpoint, &["domain", "start", domain]);
    let console =
        wait_for(&format!("{domain}'s guest to report its disks"), Duration::from_secs(120), || async {
            let c = console_from(run, domain, from);
            disks
                .iter()
                .all(|d| {
                    c.contains(&format!("DROVER-DISK-WROTE {d} "))
                        || c.contains(&format!("DROVER-DISK-REFUSED {d}"))
                })
                .then_some(c)
        })
        .await;
    drover(endpoint, &["domain", "destroy", domain]);
    wait_for(&format!("{domain} to stop"), Duration::from_secs(30), || async {
        let out = drover(endpoint, &["--output", "json", "domain", "info", domain]);
        let info: serde_json::Value = serde_json::from_str(&out).ok()?;
        (info["phase"] == "stopped").then_some(())
    })
    .await;
    console
}

/// What the guest said of disk `dev`: (size in sectors, read-only, what it held before).
fn disk_line(console: &str, dev: &str) -> (u64, bool, String) {
    let prefix = format!("DROVER-DISK {dev} ");
    let line =
        console.lines().find(|l| l.contains(&prefix)).unwrap_or_else(|| panic!("no {prefix}in:\n{console}"));
    let rest = &line[line.find(&prefix).unwrap() + prefix.len()..];
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    (field("size").parse().unwrap(), field("ro") == "1", field("was").trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_files_a_linux_guest_writes_through_the_api() {
    let ok = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "qemu-system-x86_64 or qemu-img is not installed; scripts/deps installs them");
    let (kernel, initrd) = linux_guest();
    let mut p = Processes::new();
    let ep = p.bootstrap(tests::NO_HOSTD).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _vms = KillVmsOnDrop(run.clone());
    let pool = dir.path().join("pool");
    let _hostd = start_hostd(&ep, dir.path(), &run).await;
    drover(&ep, &["pool", "create", "images", "--path", pool.to_str().unwrap(), "--capacity-mib", "4096"]);

    // Made by the host, as files of their format and size.
    let made = drover(&ep, &["vol", "create", "images/data", "--format", "raw", "--capacity-mib", "16"]);
    assert!(made.contains("volume images/data created"), "{made}");
    drover(&ep, &["vol", "create", "images/scratch", "--format", "qcow2", "--capacity-mib", "16"]);
    assert_eq!(std::fs::metadata(pool.join("data")).unwrap().len(), 16 * MIB);
    let scratch = qemu_img_info(&pool.join("scratch"));
    assert_eq!(
        (scratch["format"].as_str(), scratch["virtual-size"].as_u64()),
        (Some("qcow2"), Some(16 * MIB))
    );
    assert_eq!(volume(&ep, "images/data")["state"], "ready");

    // A guest writes a marker to each, and reads it back on its next run.
    let spec = |name: &str, mark: &str, disks: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "vcpus: 1\nmemory_mib: 256\nkernel: {kernel}\ninitrd: {initrd}\n\
                 cmdline: console=ttyS0 panic=-1 drover.disk_mark={mark}\ndisks: {disks}\n"
            ),
        )
        .unwrap();
        drover(&ep, &["domain", "define", name, "--file", file.to_str().unwrap()]);
    };
    spec("writer", "one", "[{volume: images/data}, {volume: images/scratch}]");
    let first = run_guest(&ep, &run, "writer", &["vda", "vdb"]).await;
    assert_eq!(disk_line(&first, "vda"), (16 * MIB / 512, false, String::new()), "{first}");
    assert!(first.contains("DROVER-DISK-WROTE vdb one-vdb"), "{first}");
    let mut head = vec![0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open(pool.join("data")).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"one-vd", "the guest's write is in the raw file");

    // Grown while the domain is stopped: the guest sees the new size and its old data.
    let grown = drover(&ep, &["vol", "resize", "images/scratch", "--capacity-mib", "48"]);
    assert!(grown.contains("resized to 48 MiB"), "{grown}");
    assert_eq!(qemu_img_info(&pool.join("scratch"))["virtual-size"].as_u64(), Some(48 * MIB));
    let second = run_guest(&ep, &run, "writer", &["vda", "vdb"]).await;
    assert_eq!(disk_line(&second, "vda").2, "one-vda", "{second}");
    assert_eq!(disk_line(&second, "vdb"), (48 * MIB / 512, false, "one-vdb".to_owned()), "{second}");

    // A clone sees its base's data; its writes go to its own overlay; a read-only disk
    // refuses the guest's writes.
    drover(&ep, &["domain", "undefine", "writer"]);
    let cloned = drover(&ep, &["vol", "clone", "images/data", "copy"]);
    assert!(cloned.contains("cloned from images/data"), "{cloned}");
    let copy = qemu_img_info(&pool.join("copy"));
    assert_eq!(copy["backing-filename"].as_str(), pool.join("data").to_str(), "an overlay on data");
    spec("reader", "two", "[{volume: images/copy}, {volume: images/data, read_only: true}]");
    let third = run_guest(&ep, &run, "reader", &["vda", "vdb"]).await;
    assert_eq!(disk_line(&third, "vda").2, "one-vda", "the clone shows its base: {third}");
    assert!(third.contains("DROVER-DISK-WROTE vda two-vda"), "{third}");
    assert_eq!(disk_line(&third, "vdb"), (16 * MIB / 512, true, "one-vda".to_owned()), "{third}");
    assert!(third.contains("DROVER-DISK-REFUSED vdb"), "the read-only disk refused: {third}");
    std::io::Read::read_exact(&mut std::fs::File::open(pool.join("data")).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"one-vd", "neither the clone's writes nor the read-only disk changed the base");

    // Busy volumes refuse to go; an import copies an image; a file that cannot be made
    // leaves a failed volume with the reason, and nothing on disk.
    let refused = drover_fails(&ep, &["vol", "delete", "images/data"]);
    assert!(refused.contains("backing volume of 1 clones") || refused.contains("attached"), "{refused}");
    let image = dir.path().join("cloud.img");
    std::fs::write(&image, [b"IMPORTED".as_slice(), &vec![0u8; MIB as usize]].concat()).unwrap();
    let imported = drover(
        &ep,
        &[
            "vol",
            "create",
            "images/imported",
            "--format",
            "qcow2",
            "--capacity-mib",
            "8",
            "--import",
            image.to_str().unwrap(),
        ],
    );
    assert!(imported.contains("created"), "{imported}");
    assert_eq!(qemu_img_info(&pool.join("imported"))["virtual-size"].as_u64(), Some(8 * MIB));
    let missing = drover_fails(
        &ep,
        &[
            "vol",
            "create",
            "images/ghost",
            "--format",
            "raw",
            "--capacity-mib",
            "8",
            "--import",
            "/nonexistent/cloud.img",
        ],
    );
    assert!(missing.contains("/nonexistent/cloud.img"), "{missing}");
    let ghost = volume(&ep, "images/ghost");
    assert_eq!(ghost["state"], "failed");
    assert!(ghost["failure"].as_str().unwrap().contains("/nonexistent/cloud.img"), "{ghost}");
    assert!(!pool.join("ghost").exists());
    let file = dir.path().join("ghostly.yaml");
    std::fs::write(
        &file,
        format!("vcpus: 1\nmemory_mib: 64\nkernel: {kernel}\ndisks: [{{volume: images/ghost}}]\n"),
    )
    .unwrap();
    let refused = drover_fails(&ep, &["domain", "define", "ghostly", "--file", file.to_str().unwrap()]);
    assert!(refused.contains("is failed; it cannot be attached"), "{refused}");

    // Delete removes the files (the record goes only once the host removed each).
    drover(&ep, &["domain", "undefine", "reader"]);
    for v in ["copy", "data", "scratch", "imported", "ghost"] {
        drover(&ep, &["vol", "delete", &format!("images/{v}")]);
        assert!(!pool.join(v).exists(), "{v}'s file is gone");
    }
    let left: Vec<_> = std::fs::read_dir(&pool).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing left in the pool: {left:?}");
    assert_eq!(drover(&ep, &["--output", "json", "vol", "list"]).trim(), "[]");
}

/// A domain that boots from its disk (a cloud-image-like raw disk imported into a pool:
/// firmware, boot loader, kernel) runs under the qemu driver on the PC machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_boots_from_an_imported_disk_under_the_qemu_driver() {
    let guest = linux_guest_dir();
    let mut p = Processes::new();
    let ep = p.bootstrap(tests::NO_HOSTD).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _vms = KillVmsOnDrop(run.clone());
    let _hostd = start_hostd(&ep, dir.path(), &run).await;
    let pool = dir.path().join("pool");
    drover(&ep, &["pool", "create", "images", "--path", pool.to_str().unwrap(), "--capacity-mib", "1024"]);
    let image = guest.join("disk.img");
    drover(
        &ep,
        &[
            "vol",
            "create",
            "images/root",
            "--format",
            "qcow2",
            "--capacity-mib",
            "128",
            "--import",
            image.to_str().unwrap(),
        ],
    );
    let file = dir.path().join("disk-boot.yaml");
    std::fs::write(&file, "vcpus: 1\nmemory_mib: 256\nboot_disk: true\ndisks: [{volume: images/root}]\n")
        .unwrap();
    drover(&ep, &["domain", "define", "disk-boot", "--file", file.to_str().unwrap()]);
    drover(&ep, &["domain", "start", "disk-boot"]);
    wait_for("the guest booted from its disk to count", Duration::from_secs(120), || async {
        let c = console_from(&run, "disk-boot", 0);
        (c.contains("BOOT_IMAGE=vmlinuz")
            && c.contains("DROVER-LINUX-READY")
            && c.contains("drover-linux: tick 3"))
        .then_some(())
    })
    .await;
    // BOOT_IMAGE= on the kernel's command line is the boot loader's: the firmware booted
    // the disk (a kernel given to QEMU directly has none).
    drover(&ep, &["domain", "destroy", "disk-boot"]);
}
