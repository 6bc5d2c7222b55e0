//! Live migration between two VMM processes over one TCP connection: pre-copy rounds of
//! dirty memory while the guest runs, then a short stop-and-copy of what is left and the
//! device state, then a switch-over that only the cluster's commit may order.
//!
//! - The source ([`send`]) enables KVM's dirty-page log and clears the VMM's own record of
//!   its writes (the memory's bitmap, [`crate::memory`]); round 0 sends every page that is
//!   not all zeros, each later round the pages either log marked since the round before.
//!   Once what is left would take no more than a sixteenth of the downtime budget at the
//!   link rate measured so far (or half of it, once more rounds cannot shrink it), it
//!   pauses the VM, locks the devices, sends the last pages and the VM's
//!   state (the snapshot's [`crate::snapshot::VmState`]), flushes the writable disks
//!   (they are on storage both hosts share) and waits for the target's word that it holds
//!   the VM. When the guest dirties memory faster than the rounds shrink, its vCPUs are
//!   throttled more every round (auto-converge: 30% and up by 15 points to 99%). It fails
//!   (and the VM runs on here) after [`COPY_TIMEOUT_MS`], or once the copy all but stood
//!   still for [`ANSWER_TIMEOUT_MS`] (a watchdog cuts the stream: a stalled target, or a
//!   link that drops every packet).
//! - The target ([`receive`]) is a VMM started with `--incoming ADDR`: it listens, takes one
//!   connection, fills fresh guest memory with the pages, builds the VM paused from the
//!   state and says it is ready. It resumes the guest only when the source says `Go`,
//!   which the source sends only once the cluster committed the switch-over; a target
//!   whose source went quiet stays paused, and its host decides (resume after the commit,
//!   destroy after a rollback). Never two running copies.
//!
//! Wire: every frame is a tag byte, a little-endian u32 length and that many bytes
//! ([`wire`]), over mutual TLS between the two hosts' certificates where the cluster runs
//! with TLS ([`tls`]), in the clear where it does not.

pub mod receive;
pub mod send;
pub mod tls;
pub mod wire;

/// How long pre-copy may go on before the migration gives up (the VM runs on here).
pub const COPY_TIMEOUT_MS: u64 = vmm_control::limits::MIGRATION_COPY_TIMEOUT_MS;
/// How long the source waits for the target to connect, answer, or build the VM, and how
/// long a copy may all but stand still before the source's watchdog cuts it.
pub const ANSWER_TIMEOUT_MS: u64 = vmm_control::limits::MIGRATION_STALL_MS;
/// How long an incoming VMM waits for its source to connect.
pub const ACCEPT_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration stream: {}", stream_error(.0))]
    Io(#[from] std::io::Error),
    #[error("migration stream: {0}")]
    Protocol(String),
    #[error("the target refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

/// What broke the stream, in words: a socket timeout (a read or write of the stream made
/// no progress within [`ANSWER_TIMEOUT_MS`], as over a link that drops every packet) says
/// so, where the kernel would only say "Resource temporarily unavailable".
fn stream_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("timed out (no progress within {} s): {e}", ANSWER_TIMEOUT_MS / 1000)
        }
        _ => e.to_string(),
    }
}
