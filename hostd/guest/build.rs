//! Builds the test guest with the host's gcc: `src/entry.S` (PVH entry, long mode, drop to
//! ring 3) and `src/guest.c` (the ring-3 workload), linked at 1 MiB by `src/guest.ld`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("drover-test-guest.elf");
    for f in ["src/entry.S", "src/guest.c", "src/guest.ld"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let status = Command::new(std::env::var("DROVER_GUEST_CC").unwrap_or_else(|_| "gcc".into()))
        .args([
            "-m64",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffreestanding",
            "-fno-pic",
            "-no-pie",
            "-fno-stack-protector",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-asynchronous-unwind-tables",
            "-nostdlib",
            "-static",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", src.join("src/guest.ld").display()))
        .arg("-o")
        .arg(&out)
        .arg(src.join("src/entry.S"))
        .arg(src.join("src/guest.c"))
        .status()
        .expect("the test guest needs gcc (set DROVER_GUEST_CC to use another compiler)");
    assert!(status.success(), "building the test guest failed: {status}");
}
