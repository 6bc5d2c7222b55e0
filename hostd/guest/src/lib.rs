//! Drover's test guest, as bytes.
//!
//! Contract: [`IMAGE`] is a PVH-bootable ELF (Xen ELF note 18, 32-bit entry), built from
//! `entry.S` and `guest.c` in this folder by the host's gcc (no extra Rust targets). It
//! boots unchanged under Drover's own VMM, bare QEMU (`-kernel`, any machine type) and
//! libvirt. It enters long mode with static page tables, drops to ring 3 (fast under
//! kvm-pvm, where ring-0 code is emulated), prints [`MARKER`], then a counter line
//! (`drover-guest: tick N`) every `drover.tick_ms`. Its command-line parameters and serial
//! commands are listed at the top of `guest.c`.
//!
//! It also holds what the tests that boot it share: the helper that builds the binaries
//! they run ([`cargo_from_a_test`]), a test CA for their TLS ([`certs`]) and a TCP relay
//! that black-holes a migration's link ([`relay`]).
#![forbid(unsafe_code)]

pub mod certs;
pub mod relay;

/// The ELF image.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/drover-test-guest.elf"));

/// The first line the guest prints once its workload runs.
pub const MARKER: &str = "DROVER-GUEST-READY";

/// The prefix of every counter line; the number follows.
pub const TICK_PREFIX: &str = "drover-guest: tick ";

/// Every counter value printed on `console`, in order. Only complete lines count: a
/// console read while the guest is writing may end in half a line (`tick 2` of `tick 20`).
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.strip_prefix(TICK_PREFIX))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Serial input byte that makes the guest power off.
pub const POWER_OFF_KEY: u8 = b'p';

/// `cargo`, run from a test without the variables cargo gave the test (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, …): build scripts that watch them (ring's) would see them
/// changed, run again, and rebuild the TLS stack at every test binary's first call.
pub fn cargo_from_a_test() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_the_test =
            ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
                .iter()
                .any(|p| key.starts_with(p))
                || key == "CARGO_TARGET_TMPDIR"
                || key == "OUT_DIR";
        if set_for_the_test {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Write the image to `path` (the drivers boot files, not bytes).
pub fn write_to(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, IMAGE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_is_an_elf_with_the_pvh_note() {
        assert_eq!(&super::IMAGE[..4], b"\x7fELF");
        // XEN_ELFNOTE_PHYS32_ENTRY (18) with owner "Xen".
        let note = [4u8, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
        assert!(super::IMAGE.windows(note.len()).any(|w| w == note), "no PVH note");
    }

    #[test]
    fn a_half_written_last_line_is_not_a_tick() {
        let console = "DROVER-GUEST-READY\r\ndrover-guest: tick 19\r\ndrover-guest: tick 2";
        assert_eq!(super::ticks(console), [19]);
    }
}
