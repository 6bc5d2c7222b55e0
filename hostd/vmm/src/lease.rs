//! The host's lease as the VM processes keep it: the file's format and its watcher are
//! `vmm_control::lease` (re-exported here), shared with hostd, which writes the file;
//! here is `fence-watch`, the guard process for a VM that cannot watch the lease itself.

use std::io;
use std::path::PathBuf;

pub use vmm_control::lease::*;

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
