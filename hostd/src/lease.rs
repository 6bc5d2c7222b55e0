//! The host's lease, as hostd keeps it: renewed by heartbeats to the leader, written to
//! the lease file every VM process watches (`vmm_control::lease`), and checked before every
//! reconcile pass. While it has passed, hostd runs nothing: it destroys every VM it holds
//! (self-fencing, in case a VM process could not fence itself) and starts none until a
//! renewal succeeds.
//!
//! The deadline is the renewal's *send* time plus the fence time the leader named, on
//! `CLOCK_MONOTONIC`: the leader counts from when it received the heartbeat, later, and
//! fences only after the lease, the fence time and a drift margin more, so every VM of
//! this host is dead before the leader may start one of them elsewhere.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::warn;

/// The host's lease. Shared by the heartbeat task and the agent loop.
#[derive(Debug)]
pub struct HostLease {
    /// Where VM processes read it; `None`: no VM process watches (the fake driver).
    file: Option<PathBuf>,
    /// Monotonic ms; 0 until the first renewal (or a deadline read back from the file).
    deadline_ms: AtomicU64,
    /// The leader said this host is fenced: destroy everything and register again.
    fenced: AtomicBool,
}

impl HostLease {
    /// The lease of a hostd whose VM processes watch `file`; a deadline a previous hostd
    /// left there holds until renewed, so re-adopted VMs and this hostd agree.
    pub fn new(file: Option<PathBuf>) -> HostLease {
        let deadline = file.as_deref().and_then(vmm_control::lease::read).unwrap_or(0);
        HostLease { file, deadline_ms: AtomicU64::new(deadline), fenced: AtomicBool::new(false) }
    }

    /// A lease without a file, held until `deadline_ms` (0: not held), as a restarted
    /// hostd of the simulator finds it.
    pub fn held_until(deadline_ms: u64) -> HostLease {
        HostLease { file: None, deadline_ms: AtomicU64::new(deadline_ms), fenced: AtomicBool::new(false) }
    }

    /// A renewal sent at `sent_ms` (monotonic) was answered: the lease holds until
    /// `sent_ms + fence_ms`.
    pub fn renewed(&self, sent_ms: u64, fence_ms: u64) {
        let deadline = sent_ms + fence_ms;
        // Never shorten it: an answer to an older heartbeat may arrive after a newer one's.
        let previous = self.deadline_ms.fetch_max(deadline, Ordering::SeqCst);
        self.fenced.store(false, Ordering::SeqCst);
        if previous >= deadline {
            return;
        }
        if let Some(file) = &self.file {
            let written = vmm_control::lease::write(file, deadline).or_else(|_| {
                std::fs::create_dir_all(file.parent().unwrap_or(file))?;
                vmm_control::lease::write(file, deadline)
            });
            if let Err(e) = written {
                // The VMs would fence themselves on the old deadline: they must not
                // outlive it, and hostd fences them too if the file cannot be written.
                warn!(file = %file.display(), error = %e, "cannot write the lease file");
                self.deadline_ms.store(previous, Ordering::SeqCst);
            }
        }
    }

    /// Whether a renewal ever succeeded (or a previous hostd's deadline is known).
    pub fn held(&self) -> bool {
        self.deadline_ms.load(Ordering::SeqCst) != 0
    }

    /// Whether the lease has passed (or was never held) at monotonic `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms.load(Ordering::SeqCst)
    }

    /// The leader refused a renewal because the host is fenced.
    pub fn set_fenced(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// The host registered again: it waits for its next renewal, no longer fenced.
    pub fn clear_fenced(&self) {
        self.fenced.store(false, Ordering::SeqCst);
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_extend_the_file_and_never_shorten_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run/lease");
        let lease = HostLease::new(Some(file.clone()));
        assert!(!lease.held() && lease.expired(1));
        lease.renewed(1_000, 500);
        assert_eq!(vmm_control::lease::read(&file), Some(1_500), "the file is made with its directory");
        assert!(!lease.expired(1_499) && lease.expired(1_500));
        lease.renewed(900, 500);
        assert_eq!((lease.deadline_ms(), vmm_control::lease::read(&file)), (1_500, Some(1_500)));
        // A new hostd picks up the deadline its predecessor left.
        assert_eq!(HostLease::new(Some(file)).deadline_ms(), 1_500);
    }
}
