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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always readable");
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

/// `fence-watch`: guard a VM process that cannot watch the lease itself (QEMU) from a
/// process of its own, which outlives hostd as the VM does.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The VM process to kill once the lease passes.
    #[arg(long)]
    pub pid: i32,
    /// The host's lease file.
    #[arg(long)]
    pub lease: PathBuf,
}

/// Run `fence-watch`: SIGKILL `args.pid` the moment the lease passes; end when it does.
/// Returns the process exit status (0: the VM ended or was fenced; 2: it cannot be
/// watched).
pub fn guard(args: &WatchArgs) -> i32 {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or
    // -1; no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, args.pid, 0) };
    if fd < 0 {
        eprintln!("drover-vmm fence-watch: process {}: {}", args.pid, io::Error::last_os_error());
        return 2;
    }
    let fd = fd as i32;
    loop {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: `poll` is one valid pollfd, alive for the call; a pidfd turns readable
        // when its process ends.
        let n = unsafe { libc::poll(&mut poll, 1, LEASE_POLL_MS as i32) };
        if n > 0 {
            return 0; // the VM process ended
        }
        if expired(&args.lease) {
            // SAFETY: `fd` is the pidfd opened above (it names exactly that process, even
            // if its pid were reused); no pointers are passed (info is null).
            let rc = unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<u8>(), 0)
            };
            if rc < 0 {
                eprintln!("drover-vmm fence-watch: killing {}: {}", args.pid, io::Error::last_os_error());
            } else {
                eprintln!("drover-vmm fence-watch: the host's lease passed: killed process {}", args.pid);
            }
            return 0;
        }
    }
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

    #[test]
    fn fence_watch_kills_its_process_when_the_lease_passes_and_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let lease = dir.path().join(LEASE_FILE);
        write(&lease, monotonic_ms() + 60_000).unwrap();
        let mut ends = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let args = WatchArgs { pid: ends.id() as i32, lease: lease.clone() };
        assert_eq!(guard(&args), 0, "returns once the process ends by itself");
        ends.wait().unwrap();
        let mut victim = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let args = WatchArgs { pid: victim.id() as i32, lease: lease.clone() };
        let watcher = std::thread::spawn(move || guard(&args));
        write(&lease, monotonic_ms()).unwrap();
        assert_eq!(watcher.join().unwrap(), 0);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(victim.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
