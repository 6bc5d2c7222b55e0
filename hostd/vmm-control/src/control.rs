//! The control protocol between hostd and one `drover-vmm` process: one JSON request per
//! line on a Unix stream socket, one JSON response line back. Every request has a short
//! deadline; a VMM that does not answer is treated as gone.
//!
//! Files in a VM's run directory (named here so hostd and the VMM agree):
//! `control.sock`, `console.log`, `vmm.log` (the VMM's own stderr), `exit.json` (written
//! by the VMM as it ends: how the VM ended), `config.json` (what it was started with).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const SOCKET_FILE: &str = "control.sock";
pub const CONSOLE_FILE: &str = "console.log";
pub const VMM_LOG_FILE: &str = "vmm.log";
pub const EXIT_FILE: &str = "exit.json";
pub const CONFIG_FILE: &str = "config.json";
/// A request or response line longer than this is refused.
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// How long a request may take end to end.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long a snapshot may take end to end (it writes the guest's memory).
pub const SNAPSHOT_TIMEOUT_MS: u64 = 120_000;
/// How long a switch-over may take end to end (the target's answer that it runs).
pub const SWITCH_TIMEOUT_MS: u64 = 10_000;
/// Where an incoming VMM writes the address it listens on for the migration stream
/// (written whole, through a rename, once it listens).
pub const INCOMING_FILE: &str = "incoming.addr";

/// What a snapshot save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// What the file takes on disk (it is sparse: untouched guest memory costs nothing).
    pub bytes: u64,
    /// How long the guest was held paused for it (0 for a guest that was paused anyway).
    pub duration_ms: u64,
}

/// How a VM ended, written beside its socket (`EXIT_FILE`) by whoever saw it end: the
/// VMM as it exits, or hostd's qemu driver for a QEMU. One format for every process
/// driver, so a restarted hostd learns how a VM it did not watch ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub domain: String,
    pub generation: u64,
    pub phase: Phase,
    pub reason: Option<String>,
}

impl ExitRecord {
    /// Write it to `dir` whole or not at all (through a temporary file and a rename).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{EXIT_FILE}.tmp"));
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(EXIT_FILE))
    }

    /// The record in `dir` of run `generation`; `None` if there is none (or it is another
    /// run's, or unreadable).
    pub fn read(dir: &Path, generation: u64) -> Option<ExitRecord> {
        let text = std::fs::read_to_string(dir.join(EXIT_FILE)).ok()?;
        serde_json::from_str::<ExitRecord>(&text).ok().filter(|r| r.generation == generation)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status,
    Pause,
    Resume,
    /// Ask the guest to power off (a key on its serial console); it stops on its own time.
    Shutdown,
    Reboot,
    /// End the VM at once.
    Destroy,
    /// Save the VM's whole state to this file (the VMM's `snapshot` format); the VM is in the same
    /// phase afterwards. Answered with `Response::Snapshot`.
    Snapshot {
        path: PathBuf,
    },
    /// Live-migrate the VM to the VMM listening at `address` (`ip:port`, an incoming
    /// VMM's [`INCOMING_FILE`]): answered at once, the copy goes on in the background and
    /// `Status::migration` says how far it got. The VM ends up paused with the target
    /// holding all of it (`OutgoingPhase::AwaitingSwitch`), or running here again after a
    /// failure.
    MigrateSend {
        address: String,
        limits: ConvergeLimits,
        /// Mutual TLS on the stream, with the target's host named; none sends in the
        /// clear (a cluster without TLS).
        #[serde(default)]
        tls: Option<MigrationTls>,
    },
    /// New limits for the outgoing copy under way: the rounds to come end within them.
    MigrateLimits {
        limits: ConvergeLimits,
    },
    /// The switch-over is committed in the cluster: start the target and end this VM.
    /// Answered with `Response::Migrated`.
    MigrateSwitch,
    /// Abandon the outgoing migration: the VM runs here again.
    MigrateCancel,
}

/// How an outgoing live migration may bring its copy to an end (QEMU's `downtime-limit`
/// and `max-cpu-throttle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergeLimits {
    /// The longest pause the final copy may take; pre-copy rounds go on until the rest
    /// fits. 0 never switches over: the copy goes on until cancelled (or times out).
    pub max_downtime_ms: u64,
    /// How far the vCPUs may be throttled when the rounds stop shrinking (auto-converge;
    /// 0 never throttles). The VMM caps it at its own most.
    pub throttle_max_percent: u8,
}

/// Mutual TLS on a migration stream: both VMMs present their host's certificate (the
/// `--tls-dir` files of hostd: `ca.pem`, `cert.pem`, `key.pem`) and accept only the
/// other end's host, by the name its certificate holds, signed by the cluster's CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationTls {
    /// The host's TLS directory (read at each connection, so renewed files count).
    pub dir: PathBuf,
    /// The host at the other end (its certificate's common name).
    pub peer: String,
}

/// Where an outgoing live migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingPhase {
    /// Pre-copy rounds while the guest runs.
    Copying,
    /// Paused here; the last pages and the device state are on their way.
    Completing,
    /// The target holds the whole VM, paused: waiting for `MigrateSwitch` (or a cancel).
    AwaitingSwitch,
    /// It failed (`reason`); the VM runs here again.
    Failed,
    /// Cancelled; the VM runs here again.
    Cancelled,
}

/// How far a live migration has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// Guest memory bytes sent so far, all rounds.
    pub bytes_sent: u64,
    /// Pre-copy rounds done (round 0 is the first full pass).
    pub rounds: u32,
    /// How fast the guest dirties memory, as last measured.
    pub dirty_bytes_per_s: u64,
    /// Dirty bytes left to send after the last round.
    pub remaining_bytes: u64,
    /// What the final copy would take now, at the measured link rate.
    pub expected_downtime_ms: u64,
    /// How much the vCPUs are throttled so the copy converges (0 to 99).
    pub throttle_percent: u8,
    /// Once switched over: how long the guest was paused, from the pause here to the
    /// target's word that it runs.
    pub downtime_ms: Option<u64>,
}

/// An outgoing migration's state, in `Status::migration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingStatus {
    /// The incoming VMM it sends to (`ip:port`).
    pub address: String,
    pub phase: OutgoingPhase,
    pub progress: MigrationProgress,
    /// Why it failed.
    pub reason: Option<String>,
    /// Once the copy is complete: from the pause to the last byte of the VM's state
    /// handed to the stream, in microseconds. QEMU's `downtime` measures this; the
    /// whole pause ([`MigrationProgress::downtime_ms`]) also counts the target's build
    /// and resume.
    #[serde(default)]
    pub stop_copy_us: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    /// The guest powered off.
    Stopped,
    /// The guest or the VMM failed; `reason` says how.
    Crashed,
    /// Destroyed on request.
    Destroyed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub domain: String,
    pub generation: u64,
    pub pid: u32,
    pub phase: Phase,
    pub reason: Option<String>,
    /// VM exits handled so far (a cheap liveness signal).
    pub exits: u64,
    /// The outgoing live migration, once one was asked for.
    #[serde(default)]
    pub migration: Option<OutgoingStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Status),
    Snapshot(SnapshotInfo),
    /// The target runs; this VM has ended. The migration's final numbers.
    Migrated(MigrationProgress),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("VMM socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("VMM sent a malformed answer: {0}")]
    Malformed(String),
    #[error("VMM refused: {0}")]
    Refused(String),
}

/// Send one request to the VMM listening at `socket` and wait for its status.
pub fn call(socket: &Path, request: Request) -> Result<Status, ControlError> {
    match exchange(socket, &request, REQUEST_TIMEOUT_MS)? {
        Response::Ok(status) => Ok(status),
        other => Err(ControlError::Malformed(format!("{other:?} is no status"))),
    }
}

/// Have the VMM at `socket` save its VM to `path`.
pub fn snapshot(socket: &Path, path: &Path) -> Result<SnapshotInfo, ControlError> {
    match exchange(socket, &Request::Snapshot { path: path.to_owned() }, SNAPSHOT_TIMEOUT_MS)? {
        Response::Snapshot(info) => Ok(info),
        other => Err(ControlError::Malformed(format!("{other:?} is no snapshot answer"))),
    }
}

/// Have the VMM at `socket` start the target of its outgoing migration and end its VM.
pub fn migrate_switch(socket: &Path) -> Result<MigrationProgress, ControlError> {
    match exchange(socket, &Request::MigrateSwitch, SWITCH_TIMEOUT_MS)? {
        Response::Migrated(progress) => Ok(progress),
        other => Err(ControlError::Malformed(format!("{other:?} is no switch-over answer"))),
    }
}

fn exchange(socket: &Path, request: &Request, timeout_ms: u64) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io { path: socket.display().to_string(), source };
    let stream = UnixStream::connect(socket).map_err(io)?;
    let timeout = Some(Duration::from_millis(timeout_ms));
    stream.set_read_timeout(timeout).map_err(io)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| ControlError::Malformed(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).take(LINE_BYTES_MAX as u64).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str::<Response>(answer.trim_end()) {
        Ok(Response::Error(e)) => Err(ControlError::Refused(e)),
        Ok(response) => Ok(response),
        Err(e) => Err(ControlError::Malformed(format!("{e}: {answer:?}"))),
    }
}
