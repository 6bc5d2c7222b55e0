//! Live migration under the qemu driver: QEMU's own pre-copy migration over TCP, driven
//! over QMP through the same saga as the own VMM's (`crate::migrations`).
//!
//! - **Target**: QEMU starts with `-S -incoming defer` and `late-block-activate`, then
//!   `migrate-incoming tcp:<ip>:0`; the port QEMU bound is read back from `query-migrate`.
//!   It lists as `Starting` while the stream comes in (`inmigrate`) and `Paused` once the
//!   whole VM is in. Its disks stay inactive (unlocked, unwritten) until it is resumed,
//!   which its host does only once the switch-over is committed; a source that resumes
//!   after a rollback still owns them. A QEMU whose incoming stream breaks exits, which
//!   its host sees as the incoming VM ending.
//! - **Source**: `migrate tcp:<target>` with the host's [`ConvergeLimits`] mapped to
//!   QEMU's settings: `downtime-limit` is the pause budget, `auto-converge` with
//!   `max-cpu-throttle` the throttle (off where it is 0), and no bandwidth cap (QEMU's
//!   default of 128 MiB/s is a tenth of a loopback link). QEMU pauses the guest for the
//!   last copy by itself and ends in `completed` with the guest paused (`postmigrate`):
//!   that is [`OutgoingPhase::AwaitingSwitch`]. The switch ends the QEMU here (the
//!   target's host resumes its own); a cancel before that is `migrate_cancel` (QEMU
//!   resumes the guest itself), after it a `cont`, which takes the disks back. QEMU's
//!   copy has no time limit: the driver holds it to the own VMM's ([`CopyWatch`]).
//!
//! **TLS.** Where the host has TLS files, every QEMU it starts gets `tls-creds-x509`
//! credentials made of them on its command line ([`tls_args`]: the host's `ca.pem`,
//! `cert.pem` and `key.pem`, linked under QEMU's file names in the VM's [`TLS_DIR`]), with
//! `verify-peer` on: a client's, and for an incoming QEMU a server's and an
//! `authz-simple` that admits only the source host's certificate, by its distinguished
//! name. A migration only points QEMU's `tls-creds` at them ([`use_tls`]); the source
//! checks the target's certificate against the address it connects to, as every other
//! connection in the cluster does. QEMU's own key-usage sanity check is off: it asks for
//! RSA-style key encipherment that ECDSA certificates do not carry; GnuTLS still verifies
//! the chain, the validity and the peer. The credentials are given at launch, never added
//! to a running QEMU: QEMU 7.2 with x509 credentials added by `object-add` to a running
//! guest (and migrated or not) mostly fails its next `system_reset`: its firmware reads
//! no kernel size from fw_cfg and halts (by hand: all but 2 of some 20 such resets hung,
//! none of 18 with the same objects on the command line). So a QEMU uses the certificate its host
//! had when it started, and one started before its host had TLS files does not migrate
//! over TLS until it is restarted.
//!
//! The migration a QEMU carries out is written down in its VM directory
//! ([`OUTGOING_FILE`], the target's address) so that QEMU's record of an older
//! migration (a snapshot is one, to a file) is never taken for it, and a restarted hostd
//! finds it. QEMU's own `downtime` is the reported downtime: from the pause here to the
//! last byte sent, without the target's resume.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use controlplane::model::MigrationProgress;
use qapi::qmp;
use serde::{Deserialize, Serialize};

use super::qmp_call;

use crate::driver::{ConvergeLimits, Outgoing, OutgoingPhase};
use vmm_control::limits::{
    migration_stalled, MIGRATION_COPY_TIMEOUT_MS, MIGRATION_STALL_ADVANCE_MIN_BYTES, MIGRATION_STALL_MS,
};

/// The file in a VM's directory that names the target of its outgoing migration.
pub const OUTGOING_FILE: &str = "migration-out";
/// What [`OUTGOING_FILE`] says of the guest when the migration began.
const RUNNING: &str = "running";
const PAUSED: &str = "paused";
/// The directory in a VM's directory that holds its TLS files under QEMU's names.
pub const TLS_DIR: &str = "migration-tls";
/// The ids of the QEMU objects a migration's TLS is made of ([`tls_args`]).
const TLS_CLIENT_ID: &str = "drover-migration-tls-client";
const TLS_SERVER_ID: &str = "drover-migration-tls-server";
const TLS_AUTHZ_ID: &str = "drover-migration-peer";
/// How long a cancel may take to bring the guest back.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// `query-migrate`, with only the fields Drover reads, each optional: QEMU versions
/// differ in which they send (the `qapi` crate's own type requires some that QEMU 7.2
/// lacks).
#[derive(Debug, Serialize)]
struct QueryMigrate {}

impl qapi::Command for QueryMigrate {
    type Ok = MigrationInfo;
    const NAME: &'static str = "query-migrate";
    const ALLOW_OOB: bool = false;
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MigrationInfo {
    status: Option<qmp::MigrationStatus>,
    ram: Option<RamStats>,
    expected_downtime: Option<i64>,
    downtime: Option<i64>,
    cpu_throttle_percentage: Option<i64>,
    error_desc: Option<String>,
    socket_address: Option<Vec<qmp::SocketAddress>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RamStats {
    transferred: Option<i64>,
    remaining: Option<i64>,
    dirty_pages_rate: Option<i64>,
    page_size: Option<i64>,
    dirty_sync_count: Option<i64>,
}

fn unsigned(v: Option<i64>) -> u64 {
    v.map_or(0, |v| u64::try_from(v).unwrap_or(0))
}

fn capability(capability: qmp::MigrationCapability, state: bool) -> qmp::MigrationCapabilityStatus {
    qmp::MigrationCapabilityStatus { capability, state }
}

/// The distinguished name of host `name`'s certificate as QEMU's authorization sees it:
/// GnuTLS writes the attributes in the order `drover cert` puts them in (common name,
/// then unit), whatever RFC 4514 says of the order.
fn host_dn(name: &str) -> String {
    format!("CN={name},OU=host")
}

/// The `-object` arguments that give the QEMU of VM directory `dir` its migration
/// credentials, made of the host's TLS files in `tls_dir` (linked under QEMU's names in
/// [`TLS_DIR`]): a client's for a stream it sends, and for an incoming QEMU (`source`:
/// the host it takes the stream from) a server's and the authorization of that host.
pub fn tls_args(dir: &Path, tls_dir: &Path, source: Option<&str>) -> Result<Vec<String>, String> {
    let files = std::fs::canonicalize(tls_dir).map_err(|e| format!("{}: {e}", tls_dir.display()))?;
    let creds = dir.join(TLS_DIR);
    let _ = std::fs::remove_dir_all(&creds);
    std::fs::create_dir_all(&creds).map_err(|e| format!("{}: {e}", creds.display()))?;
    // QEMU's names for the host's files; each end reads the pair of its endpoint.
    let links = [
        ("ca-cert.pem", "ca.pem"),
        ("server-cert.pem", "cert.pem"),
        ("server-key.pem", "key.pem"),
        ("client-cert.pem", "cert.pem"),
        ("client-key.pem", "key.pem"),
    ];
    for (name, file) in links {
        std::os::unix::fs::symlink(files.join(file), creds.join(name))
            .map_err(|e| format!("linking {name}: {e}"))?;
    }
    let x509 = |id: &str, endpoint| {
        let properties = qmp::TlsCredsProperties {
            dir: Some(creds.display().to_string()),
            endpoint: Some(endpoint),
            priority: None,
            verify_peer: Some(true),
        };
        #[allow(deprecated)] // `loaded`, which QEMU ignores; left out
        let x509 = qmp::TlsCredsX509Properties {
            base: properties,
            loaded: None,
            passwordid: None,
            sanity_check: Some(false),
        };
        qmp::ObjectOptions::tls_creds_x509 { id: id.into(), tls_creds_x509: x509 }
    };
    let mut objects = vec![x509(TLS_CLIENT_ID, qmp::QCryptoTLSCredsEndpoint::client)];
    if let Some(source) = source {
        objects.push(x509(TLS_SERVER_ID, qmp::QCryptoTLSCredsEndpoint::server));
        let peer = qmp::AuthZSimpleProperties { identity: host_dn(source) };
        objects.push(qmp::ObjectOptions::authz_simple { id: TLS_AUTHZ_ID.into(), authz_simple: peer });
    }
    let mut args = Vec::new();
    for object in &objects {
        let json = serde_json::to_string(object).map_err(|e| format!("a TLS object: {e}"))?;
        args.extend(["-object".to_owned(), json]);
    }
    Ok(args)
}

/// Have QEMU `dir`'s next migration stream go over the credentials it was started with
/// ([`tls_args`]), as the `server` (which admits only its source host) or the client.
fn use_tls(dir: &Path, server: bool) -> Result<(), String> {
    let parameters = qmp::MigrateSetParameters {
        tls_creds: Some(qmp::StrOrNull::s(if server { TLS_SERVER_ID } else { TLS_CLIENT_ID }.into())),
        tls_authz: Some(qmp::StrOrNull::s(if server { TLS_AUTHZ_ID } else { "" }.into())),
        ..Default::default()
    };
    qmp_call(dir, &qmp::migrate_set_parameters(parameters)).map(|_| ()).map_err(|e| {
        format!("{e} (QEMU is given the host's TLS credentials when it starts: one started before the host had them migrates once restarted)")
    })
}

/// Have the incoming QEMU in `dir` (started with `-S -incoming defer`) listen on
/// `listen_ip` (over `tls` where given); returns the `ip:port` its source is to send to.
pub fn listen(dir: &Path, listen_ip: IpAddr, tls: bool) -> Result<String, String> {
    let late = vec![capability(qmp::MigrationCapability::late_block_activate, true)];
    qmp_call(dir, &qmp::migrate_set_capabilities { capabilities: late })?;
    if tls {
        use_tls(dir, true)?;
    }
    let uri = format!("tcp:{}", std::net::SocketAddr::new(listen_ip, 0));
    qmp_call(dir, &qmp::migrate_incoming { uri: Some(uri), channels: None, exit_on_error: None })?;
    let info = qmp_call(dir, &QueryMigrate {})?;
    let port = info
        .socket_address
        .unwrap_or_default()
        .into_iter()
        .find_map(|a| match a {
            qmp::SocketAddress::inet(inet) => inet.base.port.parse::<u16>().ok().filter(|&p| p != 0),
            _ => None,
        })
        .ok_or("QEMU did not say which port it listens on")?;
    Ok(std::net::SocketAddr::new(listen_ip, port).to_string())
}

/// Start sending the VM of QEMU `dir` to the incoming QEMU at `address` (over TLS where
/// `tls`).
pub fn start(dir: &Path, address: &str, limits: ConvergeLimits, tls: bool) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("{address:?} is no ip:port"));
    }
    if tls {
        use_tls(dir, false)?;
    }
    let throttle = limits.throttle_max_percent.min(controlplane::model::THROTTLE_PERCENT_MAX);
    let converge = vec![capability(qmp::MigrationCapability::auto_converge, throttle > 0)];
    qmp_call(dir, &qmp::migrate_set_capabilities { capabilities: converge })?;
    set_limits(dir, limits)?;
    let running = qmp_call(dir, &qmp::query_status {})?.status == qmp::RunState::running;
    let record = format!("{address}\n{}\n", if running { RUNNING } else { PAUSED });
    std::fs::write(dir.join(OUTGOING_FILE), record).map_err(|e| format!("{OUTGOING_FILE}: {e}"))?;
    let migrate =
        qmp::migrate { uri: Some(format!("tcp:{address}")), channels: None, detach: None, resume: None };
    qmp_call(dir, &migrate).map(|_| ()).inspect_err(|_| {
        let _ = std::fs::remove_file(dir.join(OUTGOING_FILE));
    })
}

/// Give QEMU `dir`'s migration the `limits` (before it starts, or while it copies: QEMU
/// reads its parameters at each iteration). Whether it may throttle at all is a
/// capability, fixed when the migration starts.
pub fn set_limits(dir: &Path, limits: ConvergeLimits) -> Result<(), String> {
    let throttle = limits.throttle_max_percent.min(controlplane::model::THROTTLE_PERCENT_MAX);
    let parameters = qmp::MigrateSetParameters {
        downtime_limit: Some(limits.max_downtime_ms),
        max_bandwidth: Some(super::snapshot::MAX_BANDWIDTH),
        max_cpu_throttle: (throttle > 0).then_some(throttle),
        ..Default::default()
    };
    qmp_call(dir, &qmp::migrate_set_parameters(parameters)).map(|_| ())
}

/// The target of the outgoing migration QEMU `dir` carries out, if any, and whether the
/// guest ran when it began.
pub fn target(dir: &Path) -> Option<(String, bool)> {
    let record = std::fs::read_to_string(dir.join(OUTGOING_FILE)).ok()?;
    let mut lines = record.lines();
    Some((lines.next()?.to_owned(), lines.next() != Some(PAUSED)))
}

fn progress(info: &MigrationInfo) -> MigrationProgress {
    let ram = info.ram.as_ref();
    let stat = |f: fn(&RamStats) -> Option<i64>| unsigned(ram.and_then(f));
    MigrationProgress {
        bytes_sent: stat(|r| r.transferred),
        // QEMU counts the bitmap syncs, the first before the first full pass.
        rounds: u32::try_from(stat(|r| r.dirty_sync_count).saturating_sub(1)).unwrap_or(u32::MAX),
        dirty_bytes_per_s: stat(|r| r.dirty_pages_rate).saturating_mul(stat(|r| r.page_size)),
        remaining_bytes: stat(|r| r.remaining),
        expected_downtime_ms: unsigned(info.expected_downtime),
        throttle_percent: u8::try_from(unsigned(info.cpu_throttle_percentage))
            .unwrap_or(u8::MAX)
            .min(controlplane::model::THROTTLE_PERCENT_MAX),
        // Only the final numbers carry a downtime ([`finished`]).
        downtime_ms: None,
    }
}

/// Where the outgoing migration of QEMU `dir` stands.
pub fn outgoing(dir: &Path) -> Result<Outgoing, String> {
    let Some((address, _)) = target(dir) else {
        return Err("no migration was started".into());
    };
    let info = qmp_call(dir, &QueryMigrate {})?;
    use qmp::MigrationStatus as S;
    let phase = match info.status {
        Some(S::completed) => OutgoingPhase::AwaitingSwitch,
        Some(S::device | S::pre_switchover) => OutgoingPhase::Completing,
        Some(S::failed | S::colo) => OutgoingPhase::Failed,
        Some(S::cancelling | S::cancelled) => OutgoingPhase::Cancelled,
        _ => OutgoingPhase::Copying,
    };
    let reason = (phase == OutgoingPhase::Failed)
        .then(|| info.error_desc.clone().unwrap_or_else(|| "QEMU's migration failed".into()));
    // QEMU's downtime is its stop-and-copy: from the stop to the last byte sent.
    let stop_copy_us = info
        .downtime
        .filter(|_| phase == OutgoingPhase::AwaitingSwitch)
        .map(|ms| unsigned(Some(ms)).saturating_mul(1000));
    Ok(Outgoing { address, phase, progress: progress(&info), reason, stop_copy_us })
}

/// What the driver watches of an outgoing QEMU copy, which has neither a time limit nor
/// a stall detector of its own: over a link that drops every packet it would wait for
/// ever. The own VMM's limits hold for it too: a copy still going after
/// [`MIGRATION_COPY_TIMEOUT_MS`], or one that moved less than
/// [`MIGRATION_STALL_ADVANCE_MIN_BYTES`] in [`MIGRATION_STALL_MS`], is cancelled (QEMU
/// resumes the guest here) and reported failed with why. It sees only what [`outgoing`] reads, as often as the caller looks.
#[derive(Debug)]
pub struct CopyWatch {
    started: Instant,
    /// When the copy last moved [`MIGRATION_STALL_ADVANCE_MIN_BYTES`], and its bytes then.
    mark: (Instant, u64),
    /// Why the copy was given up.
    gave_up: Option<String>,
}

impl CopyWatch {
    pub fn new(now: Instant) -> CopyWatch {
        CopyWatch { started: now, mark: (now, 0), gave_up: None }
    }

    /// Look at `out`, read just now of QEMU `dir`: give up a copy that went on too long
    /// or stood still, and report a given-up copy as failed, with why.
    pub fn look(&mut self, dir: &Path, out: &mut Outgoing, now: Instant) -> Result<(), String> {
        let copying = matches!(out.phase, OutgoingPhase::Copying | OutgoingPhase::Completing);
        if self.gave_up.is_none() && copying {
            let bytes = out.progress.bytes_sent;
            if bytes >= self.mark.1.saturating_add(MIGRATION_STALL_ADVANCE_MIN_BYTES) {
                self.mark = (now, bytes);
            }
            let reason =
                if now.duration_since(self.started) >= Duration::from_millis(MIGRATION_COPY_TIMEOUT_MS) {
                    Some(format!("pre-copy did not converge within {MIGRATION_COPY_TIMEOUT_MS} ms"))
                } else if now.duration_since(self.mark.0) >= Duration::from_millis(MIGRATION_STALL_MS) {
                    Some(migration_stalled())
                } else {
                    None
                };
            if let Some(reason) = reason {
                // QEMU shuts its end of the stream down, which also ends a blocked write.
                qmp_call(dir, &qmp::migrate_cancel {})?;
                self.gave_up = Some(reason);
            }
        }
        if let Some(reason) = &self.gave_up {
            if out.phase != OutgoingPhase::AwaitingSwitch {
                out.phase = OutgoingPhase::Failed;
                out.reason = Some(reason.clone());
            }
        }
        Ok(())
    }
}

/// The final numbers of the completed outgoing migration of QEMU `dir`; the caller then
/// ends the QEMU.
pub fn finished(dir: &Path) -> Result<MigrationProgress, String> {
    let info = qmp_call(dir, &QueryMigrate {})?;
    if info.status != Some(qmp::MigrationStatus::completed) {
        return Err(format!("the migration is {:?}, not completed", info.status));
    }
    let downtime = info.downtime.ok_or("QEMU did not say how long the guest was paused")?;
    Ok(MigrationProgress { downtime_ms: Some(u64::try_from(downtime).unwrap_or(0)), ..progress(&info) })
}

/// Abandon the outgoing migration of QEMU `dir`: the guest runs here again (or stays
/// paused, if it was paused before).
pub fn cancel(dir: &Path) -> Result<(), String> {
    let was_running = target(dir).is_none_or(|(_, running)| running);
    let info = qmp_call(dir, &QueryMigrate {})?;
    use qmp::MigrationStatus as S;
    match info.status {
        // The target holds the whole VM, paused and without its disks: `cont` takes them
        // back (QEMU activates a guest's disks only on a resume).
        Some(S::completed) => {
            qmp_call(dir, &qmp::cont {})?;
            if !was_running {
                qmp_call(dir, &qmp::stop {})?;
            }
        }
        Some(S::failed | S::cancelled | S::none) | None => {}
        Some(_) => {
            qmp_call(dir, &qmp::migrate_cancel {})?;
            let deadline = Instant::now() + CANCEL_TIMEOUT;
            loop {
                let status = qmp_call(dir, &QueryMigrate {})?.status;
                if matches!(status, Some(S::cancelled | S::failed)) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("QEMU did not cancel its migration ({status:?})"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    std::fs::remove_file(dir.join(OUTGOING_FILE)).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(format!("{OUTGOING_FILE}: {e}")),
    })
}
