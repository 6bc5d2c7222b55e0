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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Status),
    Snapshot(SnapshotInfo),
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
