//! A host's lease file: the moment past which no VM of the host may run.
//!
//! hostd writes it after every lease renewal the leader answered (the renewal's send time
//! plus the fence time), as one line holding a `CLOCK_MONOTONIC` time in milliseconds —
//! a clock every process on the machine shares, which wall-clock changes do not move.
//! Each VM process watches it ([`watch`]) and ends itself the moment it passes, so a VM
//! whose hostd has died or hung, or been cut off from the cluster, is dead before the
//! leader may start its domain elsewhere (self-fencing). A restarted hostd reads the same
//! file, so VMs it re-adopts and hostd agree on one deadline.
//!
//! An absent file means no lease is kept (a VMM run by hand, or by tests of the VMM
//! alone); a file that cannot be parsed counts as expired.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's name in hostd's run directory.
pub const LEASE_FILE: &str = "lease";
/// How often a VM process looks at its lease.
pub const LEASE_POLL_MS: u64 = 50;

/// Milliseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Write `deadline_ms` (of [`monotonic_ms`]) to `path`, replacing it whole (a reader sees
/// the old or the new deadline, never half of one).
pub fn write(path: &Path, deadline_ms: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{deadline_ms}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The deadline in `path`: `None` when there is no file; 0 (long past) when it cannot be
/// read as one.
pub fn read(path: &Path) -> Option<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s.trim().parse().unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(_) => Some(0),
    }
}

/// Whether the lease in `path` has passed.
pub fn expired(path: &Path) -> bool {
    read(path).is_some_and(|deadline| monotonic_ms() >= deadline)
}

/// Watch the lease in `path` on a thread of its own; call `fence` once it passes.
pub fn watch(
    path: PathBuf,
    fence: impl FnOnce() + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("lease".into()).spawn(move || {
        while !expired(&path) {
            std::thread::sleep(Duration::from_millis(LEASE_POLL_MS));
        }
        fence();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_passes_at_its_deadline_and_a_damaged_one_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEASE_FILE);
        assert_eq!(read(&path), None);
        assert!(!expired(&path), "no file: no lease kept");
        write(&path, monotonic_ms() + 60_000).unwrap();
        assert!(!expired(&path));
        write(&path, monotonic_ms().saturating_sub(1)).unwrap();
        assert!(expired(&path));
        std::fs::write(&path, "garbage").unwrap();
        assert!(expired(&path));
        write(&path, monotonic_ms() + 100).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        watch(path, move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("the watcher fences once the lease passes");
    }
}
