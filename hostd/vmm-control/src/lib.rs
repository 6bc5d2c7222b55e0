//! What hostd and Drover's own VMM agree on, with nothing of KVM in it: hostd's kvm
//! driver depends on this crate only, the VMM (crate `vmm`) on this and the rust-vmm
//! crates.
//!
//! - [`control`]: the control protocol (JSON lines on a Unix socket), the files of a VM's
//!   run directory and the exit record every process driver writes in one format;
//! - [`lease`]: the host's lease file, which hostd writes and every VM process watches;
//! - [`limits`]: the largest VM the VMM runs, one owner per limit.
#![forbid(unsafe_code)]

pub mod control;
pub mod lease;
pub mod limits;

/// The serial input byte that asks a guest to power off (the test guest and Drover's
/// Linux initramfs both honour it).
pub const POWER_OFF_KEY: u8 = b'p';

/// Whether this process may use KVM (`/dev/kvm` opens read-write).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Set to `1` where KVM must work (`.ci/run` sets it on machines with `/dev/kvm`).
pub const REQUIRE_KVM_ENV: &str = "DROVER_REQUIRE_KVM";

/// For tests that need KVM: whether it is usable. Where it is not, the test says so on
/// stderr (`SKIPPED: ...`, naming `what` did not run) and should return — unless
/// [`REQUIRE_KVM_ENV`] is `1`, where this panics instead, so a broken `/dev/kvm` fails CI
/// rather than passing it silently.
pub fn kvm_present_for(what: &str) -> bool {
    let required = std::env::var(REQUIRE_KVM_ENV).as_deref() == Ok("1");
    device_present_for(std::path::Path::new("/dev/kvm"), what, required)
}

fn device_present_for(device: &std::path::Path, what: &str, required: bool) -> bool {
    let why = match std::fs::OpenOptions::new().read(true).write(true).open(device) {
        Ok(_) => return true,
        Err(e) => e.to_string(),
    };
    assert!(
        !required,
        "{REQUIRE_KVM_ENV}=1 but {} is not usable ({why}): {what} cannot run",
        device.display()
    );
    eprintln!("SKIPPED: {} is not usable here ({why}); {what} did not run", device.display());
    false
}

/// Total RAM of this machine, from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_skips_unless_it_is_required() {
        let missing = std::path::Path::new("/nonexistent/kvm");
        assert!(!device_present_for(missing, "this test", false));
        let required = std::panic::catch_unwind(|| device_present_for(missing, "this test", true));
        let message = *required.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("DROVER_REQUIRE_KVM=1 but /nonexistent/kvm is not usable"), "{message}");
    }
}
