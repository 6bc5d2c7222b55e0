//! The `drover` command line: virsh-like verbs over the public API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use controlplane::model::{HostState, NetworkMode, Role, SnapshotKind, VolumeFormat};
use proto::api as pb;
use proto::api::audit_client::AuditClient;
use proto::api::domains_client::DomainsClient;
use proto::api::events_client::EventsClient;
use proto::api::hosts_client::HostsClient;
use proto::api::migrations_client::MigrationsClient;
use proto::api::networks_client::NetworksClient;
use proto::api::snapshots_client::SnapshotsClient;
use proto::api::storage_pools_client::StoragePoolsClient;
use proto::api::tokens_client::TokensClient;
use proto::api::volumes_client::VolumesClient;
use proto::convert::word;
use raft::tls::{Security, Transport};
use serde_json::{json, Value};
use tonic::Status;

use crate::client::ApiClient;
use crate::spec_file;

/// Largest reply the CLI accepts (the server's cap).
const REPLY_BYTES_MAX: usize = crate::server::API_RESPONSE_BYTES_MAX;

/// One unary call through the multi-endpoint client: `rpc!(client, FooClient, method,
/// request)`; `request` is rebuilt for every attempt.
macro_rules! rpc {
    ($c:expr, $client:ident, $method:ident, $req:expr) => {
        $c.call(|ch| {
            let r = $c.request($req);
            async move {
                Ok($client::new(ch).max_decoding_message_size(REPLY_BYTES_MAX).$method(r).await?.into_inner())
            }
        })
        .await?
    };
}

/// How many items the CLI asks for per page of a List call, and at most how many pages.
const LIST_PAGE_SIZE: u32 = 1_000;
const LIST_PAGES_MAX: usize = 10_000;

/// Every item of a List call, page by page: `list_all!(client, FooClient, field,
/// request)`, where `field` is the reply's list.
macro_rules! list_all {
    ($c:expr, $client:ident, $field:ident, $req:expr) => {{
        let mut all = Vec::new();
        let mut token = String::new();
        for page in 0.. {
            anyhow::ensure!(page < LIST_PAGES_MAX, "the list runs past {LIST_PAGES_MAX} pages");
            let mut req = $req;
            req.page_size = LIST_PAGE_SIZE;
            req.page_token = std::mem::take(&mut token);
            let reply = rpc!($c, $client, list, req.clone());
            all.extend(reply.$field);
            if reply.next_page_token.is_empty() {
                break;
            }
            token = reply.next_page_token;
        }
        all
    }};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options every client verb takes.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Replica endpoints (host:port), tried in turn (default: the config file's, else the
    /// three of `drover up`).
    #[arg(long, global = true, value_delimiter = ',')]
    pub endpoint: Vec<String>,
    /// Mutual TLS with the certificate in this directory (ca.pem, cert.pem, key.pem; made
    /// by `drover up` or `drover cert issue`). Servers and hosts present it and accept
    /// only peers the same CA signed; a client verb takes it from the config file if not
    /// given. Default: none (insecure).
    #[arg(long, global = true, env = "DROVER_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Let a server or host listen beyond loopback without TLS, and serve metrics (plain
    /// HTTP) beyond loopback: anyone who can reach the port can then join, read or write.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// The client config file (endpoints, TLS directory) that `drover up` writes. Default:
    /// $XDG_CONFIG_HOME/drover/config.toml or ~/.config/drover/config.toml, if present and
    /// neither --endpoint nor --tls-dir is given.
    #[arg(long, global = true, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// A bearer token to call with (`drover token create` makes them), beside a TLS
    /// directory holding at least the CA's certificate. Default: the config file's.
    #[arg(long, global = true, env = "DROVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// Who is making changes, taken on trust without TLS (recorded in the audit log);
    /// under TLS the servers record the certificate's holder instead.
    #[arg(long, global = true, default_value = "cli")]
    pub principal: String,
    /// Read this replica's state even if it lags (default: linearizable reads).
    #[arg(long, global = true)]
    pub local: bool,
}

/// The endpoints of `drover up`, where nothing else names any.
pub const DEFAULT_ENDPOINTS: [&str; 3] = ["127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403"];

impl ClientArgs {
    /// What a server or a host was told about security, by its flags only (not by the
    /// user's config file).
    pub fn security(&self) -> anyhow::Result<Security> {
        let transport = Transport::from_dir(self.tls_dir.as_deref()).context("loading --tls-dir")?;
        Ok(Security { transport, insecure: self.insecure })
    }

    /// The endpoints a server or host reaches the cluster at: `--endpoint`, else `up`'s.
    pub fn endpoints(&self) -> Vec<String> {
        if self.endpoint.is_empty() {
            DEFAULT_ENDPOINTS.map(str::to_owned).to_vec()
        } else {
            self.endpoint.clone()
        }
    }

    /// The client a verb calls with: flags first, then the config file, then defaults.
    /// The default config file counts only when no flag names a cluster (`--endpoint`,
    /// `--tls-dir`): its certificate belongs to its endpoints.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let config = match (&self.config, self.endpoint.is_empty() && self.tls_dir.is_none()) {
            (Some(path), _) => Some(crate::config::load(path)?),
            (None, true) => crate::config::find_default()?,
            (None, false) => None,
        }
        .unwrap_or_default();
        let endpoints = if !self.endpoint.is_empty() {
            self.endpoint.clone()
        } else if !config.endpoints.is_empty() {
            config.endpoints
        } else {
            DEFAULT_ENDPOINTS.map(str::to_owned).to_vec()
        };
        let tls_dir = self.tls_dir.clone().or(config.tls_dir);
        let transport = Transport::from_dir(tls_dir.as_deref()).context("loading the TLS directory")?;
        let client = ApiClient::with_transport(endpoints, self.principal.clone(), transport);
        Ok(match self.token.clone().or(config.token) {
            Some(_) if !client.transport().is_tls() => {
                anyhow::bail!(
                    "a bearer token goes only over TLS: give a TLS directory with the CA's certificate"
                )
            }
            Some(token) => client.with_bearer(token),
            None => client,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum DomainCmd {
    /// Define a domain from a YAML or TOML spec file.
    Define {
        name: String,
        /// The spec: vcpus, memory_mib, kernel (or boot from disk), disks, nics, ha, placement.
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove a stopped domain's definition (refused while it has snapshots).
    Undefine { name: String },
    /// Place the domain on a host with room and boot it (a new run, with a new generation).
    Start {
        name: String,
        /// Return once its host reports it running (an error if it fails to start).
        #[arg(long)]
        wait: bool,
    },
    /// Graceful shutdown (ACPI), destroyed after the host's timeout.
    Shutdown {
        name: String,
        /// Return once it has stopped and left its host.
        #[arg(long)]
        wait: bool,
    },
    /// Stop at once.
    Destroy { name: String },
    /// Restart the guest in place (same run).
    Reboot { name: String },
    /// Pause the guest's vCPUs; it keeps its host and memory.
    Suspend { name: String },
    /// Let a suspended guest run again.
    Resume { name: String },
    /// Every domain: desired state, phase, host, generation.
    List,
    /// One domain in full: spec, status, reason, snapshots to restore from.
    Info { name: String },
    /// Live-migrate a running domain to another host while it runs, with a progress bar,
    /// ending with the measured downtime (`drover migrate start --wait`, by name).
    Migrate {
        name: String,
        /// The target host (default: the scheduler's choice).
        #[arg(long, default_value = "")]
        to: String,
        /// The longest pause the switch-over may take (1 to 60000 ms; default: the
        /// source host's own limit). Pre-copy rounds, throttling the guest if need be,
        /// go on until the rest fits.
        #[arg(long)]
        max_downtime_ms: Option<u64>,
    },
    /// Print the domain's serial console, as its host keeps it (read-only, like `virsh
    /// console` without typing); with --follow, keep printing what the guest prints until
    /// interrupted.
    Console {
        name: String,
        #[arg(long, short)]
        follow: bool,
        /// Only the last this many bytes of what is kept (default: all of it).
        #[arg(long, default_value_t = 0)]
        tail_bytes: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Every host: address, state, capacity and what its domains use.
    List,
    /// Take a host out of scheduling (maintenance) and move its domains to other hosts,
    /// one at a time: a running or paused domain by live migration (the scheduler picks
    /// each target), any other by shutting it down and starting it elsewhere. A live
    /// migration that is refused or rolls back stops the drain (the domain stays where
    /// it runs, the host in maintenance); --cold moves every domain by restart instead.
    Drain {
        name: String,
        /// Only take it out of scheduling; leave its domains where they run.
        #[arg(long)]
        keep_domains: bool,
        /// Move domains by shutting them down and starting them elsewhere, never live.
        #[arg(long)]
        cold: bool,
        /// How long one domain may take to shut down (a cold move) before the drain
        /// gives up.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Put a host back into scheduling.
    Ready { name: String },
    /// Put a host that was fenced too often (flapping) back into placement.
    Clear { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NetCmd {
    /// Create a virtual network.
    Create {
        name: String,
        /// nat (a bridge per host with masquerading), isolated (guests only), or bridge
        /// (an existing host bridge, --bridge).
        #[arg(long, default_value = "nat")]
        mode: NetworkMode,
        /// The address range leases come from, as 10.0.0.0/24 (nat and isolated).
        #[arg(long, default_value = "")]
        cidr: String,
        /// The gateway address (nat; default: the range's first address).
        #[arg(long, default_value = "")]
        gateway: String,
        /// The host bridge a bridge network joins.
        #[arg(long, default_value = "")]
        bridge: String,
    },
    /// Delete a network no domain uses.
    Delete { name: String },
    /// Every network with its mode, range and leases.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create a directory storage pool.
    Create {
        name: String,
        /// The pool's directory, the same path on every host that uses it.
        #[arg(long)]
        path: String,
        /// What the pool may hand out to volumes, MiB.
        #[arg(long)]
        capacity_mib: u64,
        /// Every host sees the same files (NFS, a cluster filesystem).
        #[arg(long)]
        shared: bool,
    },
    /// Delete a pool that holds no volumes.
    Delete { name: String },
    /// Every pool with its path and what it has handed out.
    List,
}

#[derive(Debug, Subcommand)]
pub enum VolCmd {
    /// Create a volume `pool/name`: a host of the pool makes its file. Waits until the
    /// file is made (or could not be) unless `--no-wait`.
    Create {
        volume: String,
        #[arg(long)]
        capacity_mib: u64,
        /// qcow2 or raw.
        #[arg(long, default_value = "qcow2")]
        format: VolumeFormat,
        /// Raw only: allocate every block now rather than on first write.
        #[arg(long)]
        preallocate: bool,
        /// Copy this image file (raw or qcow2, an absolute path on the host that makes
        /// the volume) into the volume; --capacity-mib must hold it.
        #[arg(long, default_value = "")]
        import: String,
        /// Return once the volume is recorded, without waiting for its file.
        #[arg(long)]
        no_wait: bool,
    },
    /// Clone `pool/source` into a new qcow2 volume `name` in the same pool (an overlay
    /// whose backing file is the source's).
    Clone { source: String, name: String },
    /// Delete a volume `pool/name` no domain holds and no clone is backed by; waits until
    /// a host removed its file.
    Delete { volume: String },
    /// Grow a volume `pool/name` no running domain holds; waits until a host grew its
    /// file.
    Resize {
        volume: String,
        #[arg(long)]
        capacity_mib: u64,
    },
    /// Every volume (of one pool with --pool), with its state and where its file is.
    List {
        #[arg(long, default_value = "")]
        pool: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a domain: `full` (memory, devices and writable disks of a running or
    /// paused domain; the guest is paused while its host writes the file) or `disk` (the
    /// writable disks of a stopped domain, imaged by a host that sees their files; the
    /// domain starts again once it is taken). Waits until the host has taken it (or
    /// failed to) unless `--no-wait`.
    Create {
        domain: String,
        name: String,
        #[arg(long, default_value = "full")]
        kind: SnapshotKind,
        /// Return once the snapshot is asked for, without waiting for the host.
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a snapshot (its children move to its parent); hosts remove its file.
    Delete { domain: String, name: String },
    /// Go back to snapshot NAME: a running domain continues from it at once (a new run on
    /// its host); a stopped one starts from it next time. A disk snapshot's images are
    /// written back over the disks just before that run boots afresh.
    Revert { domain: String, name: String },
    /// A new domain CLONE: a copy of DOMAIN (its own name, runs, MACs and addresses) that
    /// continues from DOMAIN's snapshot NAME when started.
    Clone { domain: String, name: String, clone: String },
    /// Snapshots with their state, size and how long the guest was paused for them.
    List {
        #[arg(default_value = "")]
        domain: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateCmd {
    /// Live-migrate a running domain (the scheduler picks the target unless --to).
    Start {
        domain: String,
        /// The target host (default: the scheduler's choice).
        #[arg(long, default_value = "")]
        to: String,
        /// The longest pause the switch-over may take (1 to 60000 ms; default: the
        /// source host's own limit).
        #[arg(long)]
        max_downtime_ms: Option<u64>,
        /// Follow the copy until the migration commits or rolls back, printing its
        /// progress; fails unless it commits.
        #[arg(long)]
        wait: bool,
    },
    /// Change the longest pause of migration ID while it copies (virsh's
    /// migrate-setmaxdowntime); the source applies it from its next round.
    SetDowntime { id: u64, max_downtime_ms: u64 },
    /// Abort migration ID; the domain stays on its source.
    Abort {
        id: u64,
        #[arg(long, default_value = "aborted by operator")]
        reason: String,
    },
    /// One migration: its phase, the target's address and the copy's progress.
    Get { id: u64 },
    /// Every migration with its phase and progress.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Who changed what, when.
    Log {
        /// Only events of this kind of resource: host, domain, network, pool, volume,
        /// snapshot, migration.
        #[arg(long, default_value = "")]
        kind: String,
        /// Only events of this resource (with --kind; a snapshot is DOMAIN/NAME).
        #[arg(long, default_value = "")]
        name: String,
        /// Only changes made by this principal.
        #[arg(long, default_value = "")]
        principal: String,
        /// Start at this event.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The state right after event SEQ (or at --time-ms).
    At {
        seq: Option<u64>,
        #[arg(long)]
        time_ms: Option<u64>,
    },
    /// Replay the whole archive and compare with the live state.
    Verify,
    /// Every event as JSON lines.
    Export {
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
    },
}

/// A client verb.
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Domains (VMs): define, start, stop, inspect.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Hypervisor hosts: list, drain, ready, clear.
    #[command(subcommand)]
    Host(HostCmd),
    /// Virtual networks and their address leases.
    #[command(subcommand)]
    Net(NetCmd),
    /// Storage pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Volumes (disk images) in pools.
    #[command(subcommand)]
    Vol(VolCmd),
    /// Snapshots of domains: take, list, revert, clone, delete.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Live migrations.
    #[command(subcommand)]
    Migrate(MigrateCmd),
    /// Print events, from a sequence number; with --follow, keep streaming.
    Events {
        /// The first sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep streaming new events as they are committed.
        #[arg(long)]
        follow: bool,
        /// Only events of these kinds of resource (repeatable).
        #[arg(long)]
        kind: Vec<String>,
        /// Only events of these resources (repeatable).
        #[arg(long)]
        name: Vec<String>,
    },
    /// The audit log: who did what, the state at a past point, replay verification.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// High availability: what failover would do.
    #[command(subcommand)]
    Ha(HaCmd),
    /// The control plane itself.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Bearer tokens for users and programs without a certificate (admins only).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a bearer token and print it (once: the cluster keeps only its hash). Its
    /// holder calls with `--token` (or `token` in the config file) and the CA's
    /// certificate, and is audited as user:NAME.
    Create {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: Role,
        /// How long it is valid: a number of seconds, or with a unit (90m, 12h, 30d).
        #[arg(long, default_value = "30d", value_parser = parse_ttl)]
        ttl: u64,
    },
    /// Revoke a token: every replica refuses it once it has applied the revocation.
    Revoke { name: String },
    /// Every token: its holder, role, maker and expiry (never its secret).
    List,
}

/// A duration in seconds from `90`, `90s`, `15m`, `12h` or `30d`.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 12h or 30d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every replica (role, term, applied index, lag behind the leader) and every host's
    /// state and lease age.
    Status,
    /// The cluster's settings.
    Settings,
    /// Change the cluster's settings.
    Set {
        /// HA admission control: refuse to start an HA domain unless every HA domain could
        /// still run again after any this many hosts fail (0: off).
        #[arg(long)]
        ha_reserve_hosts: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum HaCmd {
    /// Where HA would restart the domains of hosts that fail now, and what would not fit
    /// (computed on the live state; nothing changes).
    Plan {
        /// A host that fails (repeatable).
        #[arg(long)]
        fail: Vec<String>,
        /// Every set of this many hosts failing, worst first.
        #[arg(long, default_value_t = 0)]
        fail_any: u32,
    },
}

fn vref(s: &str) -> Result<pb::VolumeRef, Status> {
    let (pool, name) = s
        .split_once('/')
        .ok_or_else(|| Status::invalid_argument(format!("volume {s:?} is not pool/name")))?;
    Ok(pb::VolumeRef { pool: pool.into(), name: name.into() })
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

fn domain_json(d: &pb::Domain) -> Value {
    let st = d.status.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    json!({
        "name": d.name, "desired": word::<pb::DesiredState>(d.desired), "phase": word::<pb::DomainPhase>(st.phase), "host": st.host,
        "generation": st.generation, "reason": st.reason, "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib, "version": d.version, "migration_id": d.migration_id,
        "current_snapshot": d.current_snapshot,
        "restore_from": d.restore_from.as_ref().map(|r| format!("{}/{}", r.domain, r.name)).unwrap_or_default(),
        "phase_since_ms": st.observed_ms,
        "uptime_s": (st.phase() == pb::DomainPhase::Running).then(|| uptime_s(st.observed_ms)),
    })
}

/// Seconds since `since_ms` (ms since the Unix epoch): how long a domain has run since its
/// host reported it running.
fn uptime_s(since_ms: u64) -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now_ms.saturating_sub(since_ms) / 1000
}

/// An event as one readable line: seq, UTC time, kind, resource, who.
fn event_line(e: &pb::Event) -> String {
    let time = chrono::DateTime::from_timestamp_millis(e.time_ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| e.time_ms.to_string());
    format!("{:>8}  {time}  {:<26} {:<24} {}", e.seq, e.kind, e.resource, e.principal)
}

fn event_json(e: &pb::Event) -> Value {
    let event: Value = serde_json::from_str(&e.json).unwrap_or(Value::String(e.json.clone()));
    json!({"seq": e.seq, "time_ms": e.time_ms, "principal": e.principal, "request_id": e.request_id,
           "kind": e.kind, "resource": e.resource, "event": event})
}

fn write_json(w: &pb::WriteReply) -> Value {
    json!({"first_seq": w.first_seq, "last_seq": w.last_seq})
}

/// What a verb printed: table text, or a JSON value.
enum Printed {
    Text(String),
    Json(Value),
}

fn show(output: Output, text: impl FnOnce() -> String, value: impl FnOnce() -> Value) -> Printed {
    match output {
        Output::Table => Printed::Text(text()),
        Output::Json => Printed::Json(value()),
    }
}

fn written(output: Output, what: &str, w: &pb::WriteReply) -> Printed {
    show(output, || format!("{what} (events {}..={})", w.first_seq, w.last_seq), || write_json(w))
}

/// Run a client verb; prints its result to `out`.
pub async fn run(args: &ClientArgs, cmd: ClientCmd, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let c = args.client()?;
    let consistency = if args.local { pb::Consistency::Local } else { pb::Consistency::Linearizable } as i32;
    let o = args.output;
    let printed = match cmd {
        ClientCmd::Domain(DomainCmd::Console { name, follow, tail_bytes }) => {
            let req = pb::ConsoleRequest { name, follow, tail_bytes };
            let mut stream = rpc!(c, DomainsClient, console, req.clone());
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
            return Ok(());
        }
        ClientCmd::Domain(cmd) => domain(&c, o, consistency, cmd).await?,
        ClientCmd::Host(cmd) => host(&c, o, consistency, cmd).await?,
        ClientCmd::Net(cmd) => net(&c, o, consistency, cmd).await?,
        ClientCmd::Pool(cmd) => pool(&c, o, consistency, cmd).await?,
        ClientCmd::Vol(cmd) => vol(&c, o, consistency, cmd).await?,
        ClientCmd::Snapshot(cmd) => snapshot(&c, o, consistency, cmd).await?,
        ClientCmd::Migrate(cmd) => migrate(&c, o, consistency, cmd).await?,
        ClientCmd::Token(cmd) => token(&c, o, consistency, cmd).await?,
        ClientCmd::Events { from, follow, kind, name } => {
            let req = pb::WatchRequest { from_seq: from, follow, kinds: kind, names: name };
            let mut stream = rpc!(c, EventsClient, watch, req.clone());
            while let Some(e) = stream.message().await? {
                match o {
                    Output::Json => writeln!(out, "{}", event_json(&e))?,
                    Output::Table => writeln!(out, "{}", event_line(&e))?,
                }
                out.flush()?;
            }
            return Ok(());
        }
        ClientCmd::Audit(cmd) => audit(&c, o, cmd, out).await?,
        ClientCmd::Cluster(ClusterCmd::Status) => cluster_status(&c, o).await?,
        ClientCmd::Cluster(ClusterCmd::Settings) => {
            let s = rpc!(c, HostsClient, get_cluster_settings, pb::GetClusterSettingsRequest { consistency });
            show(
                o,
                || format!("ha_reserve_hosts  {}", s.ha_reserve_hosts),
                || json!({"ha_reserve_hosts": s.ha_reserve_hosts}),
            )
        }
        ClientCmd::Cluster(ClusterCmd::Set { ha_reserve_hosts }) => {
            let req = pb::SetClusterSettingsRequest {
                request_id: new_id(),
                settings: Some(pb::ClusterSettings { ha_reserve_hosts }),
            };
            let w = rpc!(c, HostsClient, set_cluster_settings, req.clone());
            written(o, &format!("ha_reserve_hosts set to {ha_reserve_hosts}"), &w)
        }
        ClientCmd::Ha(HaCmd::Plan { fail, fail_any }) => {
            let req = pb::HaPlanRequest { fail, fail_any, consistency };
            let reply = rpc!(c, HostsClient, ha_plan, req.clone());
            ha_plan(o, &reply)
        }
    };
    match printed {
        Printed::Text(t) if !t.is_empty() => writeln!(out, "{t}")?,
        Printed::Text(_) => {}
        Printed::Json(v) => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
    }
    Ok(())
}

async fn domain(c: &ApiClient, o: Output, consistency: i32, cmd: DomainCmd) -> anyhow::Result<Printed> {
    let action = |name: String| pb::DomainActionRequest { request_id: new_id(), name };
    macro_rules! act {
        ($method:ident, $name:expr, $what:expr) => {{
            let req = action($name.clone());
            let w = rpc!(c, DomainsClient, $method, req.clone());
            written(o, &format!("domain {} {}", $name, $what), &w)
        }};
    }
    Ok(match cmd {
        DomainCmd::Define { name, file } => {
            let spec = spec_file::read(&file)?;
            let req = pb::DefineDomainRequest { request_id: new_id(), name: name.clone(), spec: Some(spec) };
            let w = rpc!(c, DomainsClient, define, req.clone());
            written(o, &format!("domain {name} defined"), &w)
        }
        DomainCmd::Undefine { name } => act!(undefine, name, "undefined"),
        DomainCmd::Start { name, wait: false } => act!(start, name, "started"),
        DomainCmd::Start { name, wait: true } => {
            let req = action(name.clone());
            let w = rpc!(c, DomainsClient, start, req.clone());
            let host = wait_for_phase(c, consistency, &name, Until::Running).await?;
            written(o, &format!("domain {name} is running on host {host}"), &w)
        }
        DomainCmd::Shutdown { name, wait: false } => act!(shutdown, name, "is being shut down"),
        DomainCmd::Shutdown { name, wait: true } => {
            let req = action(name.clone());
            let w = rpc!(c, DomainsClient, shutdown, req.clone());
            wait_for_phase(c, consistency, &name, Until::Stopped).await?;
            written(o, &format!("domain {name} has stopped"), &w)
        }
        DomainCmd::Destroy { name } => act!(destroy, name, "destroyed"),
        DomainCmd::Reboot { name } => act!(reboot, name, "is rebooting"),
        DomainCmd::Suspend { name } => act!(suspend, name, "suspended"),
        DomainCmd::Resume { name } => act!(resume, name, "resumed"),
        DomainCmd::List => {
            let list = list_all!(
                c,
                DomainsClient,
                domains,
                pb::ListDomainsRequest { consistency, ..Default::default() }
            );
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|d| {
                            let st = d.status.clone().unwrap_or_default();
                            let spec = d.spec.clone().unwrap_or_default();
                            vec![
                                d.name.clone(),
                                word::<pb::DesiredState>(d.desired),
                                word::<pb::DomainPhase>(st.phase),
                                st.host,
                                spec.vcpus.to_string(),
                                spec.memory_mib.to_string(),
                            ]
                        })
                        .collect();
                    table(&["name", "desired", "phase", "host", "vcpus", "memory_mib"], rows)
                },
                || Value::Array(list.iter().map(domain_json).collect()),
            )
        }
        // `run` streams it, printing as it comes rather than once at the end.
        DomainCmd::Console { .. } => unreachable!("run handles the console"),
        DomainCmd::Migrate { name, to, max_downtime_ms } => {
            start_migration(c, o, consistency, name, to, max_downtime_ms, true).await?
        }
        DomainCmd::Info { name } => {
            let d = rpc!(c, DomainsClient, get, pb::GetDomainRequest { name: name.clone(), consistency });
            let v = domain_json(&d);
            show(o, || key_values(&v), || v.clone())
        }
    })
}

/// `cluster status`: each replica's own view (asked of it directly: the ones named by
/// `endpoints` and every member they know of), and the leader's leases.
async fn cluster_status(c: &ApiClient, o: Output) -> anyhow::Result<Printed> {
    let endpoints = c.endpoints();
    let raft = raft::client::Client::with_transport(endpoints.to_vec(), c.transport().clone());
    // Each member is asked through a replica that answered: a host's learner serves only
    // cluster members on its port, so the replica asks it.
    let mut addresses: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    for e in endpoints {
        match raft.status(e).await {
            Ok(s) => {
                for (id, peer) in s.addresses {
                    addresses.insert(id, (peer, e.clone()));
                }
            }
            Err(_) => unknown.push(e.clone()),
        }
    }
    let mut rows = Vec::new();
    for (id, (addr, through)) in &addresses {
        rows.push((*id, addr.clone(), raft.member_status(through, *id).await.ok()));
    }
    let leader_applied = rows
        .iter()
        .filter_map(|(_, _, s)| s.as_ref())
        .find(|s| s.leader_id == s.node_id)
        .map(|s| s.last_applied_index);
    let hosts = list_all!(
        c,
        HostsClient,
        hosts,
        pb::ListHostsRequest { consistency: pb::Consistency::Linearizable as i32, ..Default::default() }
    );
    let leases = rpc!(c, HostsClient, leases, pb::LeasesRequest {}).age_ms;
    let role = |id: u64, s: &proto::raft::StatusReply| -> &'static str {
        if s.leader_id == id {
            "leader"
        } else if s.learners.contains(&id) {
            "learner"
        } else {
            "follower"
        }
    };
    let lease_of = |h: &pb::Host| match h.state() {
        pb::HostState::Fenced | pb::HostState::Left => None,
        _ => leases.get(&h.name).copied(),
    };
    Ok(show(
        o,
        || {
            let mut replicas: Vec<Vec<String>> = rows
                .iter()
                .map(|(id, addr, s)| match s {
                    Some(s) => vec![
                        id.to_string(),
                        addr.clone(),
                        role(*id, s).into(),
                        s.term.to_string(),
                        s.last_applied_index.to_string(),
                        leader_applied
                            .map_or("?".into(), |l| l.saturating_sub(s.last_applied_index).to_string()),
                    ],
                    None => {
                        vec![id.to_string(), addr.clone(), "DOWN".into(), "-".into(), "-".into(), "-".into()]
                    }
                })
                .collect();
            replicas.extend(
                unknown
                    .iter()
                    .map(|e| vec!["?".into(), e.clone(), "DOWN".into(), "-".into(), "-".into(), "-".into()]),
            );
            let hosts: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        word::<pb::HostState>(h.state),
                        lease_of(h).map_or("-".into(), |a| format!("{a} ms")),
                    ]
                })
                .collect();
            format!(
                "{}\n\n{}",
                table(&["replica", "address", "role", "term", "applied", "lag"], replicas),
                table(&["host", "state", "lease age"], hosts)
            )
        },
        || {
            json!({
                "replicas": rows.iter().map(|(id, addr, s)| match s {
                    Some(s) => json!({"id": id, "address": addr, "role": role(*id, s), "term": s.term,
                                      "applied": s.last_applied_index,
                                      "lag": leader_applied.map(|l| l.saturating_sub(s.last_applied_index))}),
                    None => json!({"id": id, "address": addr, "role": "down"}),
                }).collect::<Vec<_>>(),
                "hosts": hosts.iter().map(|h| json!({"name": h.name, "state": word::<pb::HostState>(h.state), "lease_age_ms": lease_of(h)})).collect::<Vec<_>>(),
            })
        },
    ))
}

fn ha_plan(o: Output, reply: &pb::HaPlanReply) -> Printed {
    show(
        o,
        || {
            let mut text = String::new();
            for s in &reply.scenarios {
                text.push_str(&format!("if {} fail:\n", s.failed.join(", ")));
                for p in &s.placed {
                    text.push_str(&format!("  {:<24} restarts on {}\n", p.domain, p.host));
                }
                for m in &s.unplaced {
                    text.push_str(&format!("  {:<24} DOES NOT FIT: {}\n", m.domain, m.reason));
                }
                if s.placed.is_empty() && s.unplaced.is_empty() {
                    text.push_str("  no HA domain runs there\n");
                }
            }
            text.trim_end().to_owned()
        },
        || {
            Value::Array(
                reply
                    .scenarios
                    .iter()
                    .map(|s| {
                        json!({
                            "failed": s.failed,
                            "placed": s.placed.iter().map(|p| json!({"domain": p.domain, "host": p.host})).collect::<Vec<_>>(),
                            "unplaced": s.unplaced.iter().map(|m| json!({"domain": m.domain, "reason": m.reason})).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            )
        },
    )
}

/// How a drain moved a domain.
#[derive(Debug, Clone)]
struct Moved {
    domain: String,
    to: String,
    /// The live migration's measured downtime; `None` for a cold move (or a live one
    /// whose source had not reported it yet).
    downtime_ms: Option<u64>,
    live: bool,
}

/// Move every domain placed on `host` (already in maintenance) elsewhere, one at a time:
/// a running or paused one by live migration unless `cold`, any other by shutting it
/// down, waiting until it has stopped and starting it again (the scheduler never picks a
/// host in maintenance).
async fn drain(
    c: &ApiClient,
    consistency: i32,
    host: &str,
    cold: bool,
    timeout: Duration,
) -> anyhow::Result<Vec<Moved>> {
    let list =
        list_all!(c, DomainsClient, domains, pb::ListDomainsRequest { consistency, ..Default::default() });
    let on_host: Vec<(String, bool)> = list
        .iter()
        .filter(|d| {
            d.status.as_ref().is_some_and(|s| s.host == host) && d.desired() != pb::DesiredState::Stopped
        })
        .map(|d| {
            let phase = d.status.as_ref().map_or(pb::DomainPhase::Unspecified, |s| s.phase());
            (d.name.clone(), !cold && matches!(phase, pb::DomainPhase::Running | pb::DomainPhase::Paused))
        })
        .collect();
    let mut moved = Vec::new();
    let spinner = crate::progress::Spinner::new(format!("draining host {host}"));
    for (name, live) in on_host {
        let done = if live {
            spinner.say(format!("draining host {host}: migrating {name}"));
            drain_live(c, host, &name, &spinner).await?
        } else {
            spinner.say(format!("draining host {host}: restarting {name} elsewhere"));
            drain_cold(c, consistency, host, &name, timeout).await?
        };
        moved.push(done);
    }
    Ok(moved)
}

/// Live-migrate `name` off `host` to the scheduler's choice and follow it to its end.
async fn drain_live(
    c: &ApiClient,
    host: &str,
    name: &str,
    spinner: &crate::progress::Spinner,
) -> anyhow::Result<Moved> {
    let req = pb::StartMigrationRequest {
        request_id: new_id(),
        domain: name.to_owned(),
        target: String::new(),
        max_downtime_ms: None,
    };
    let started = async { Ok::<_, anyhow::Error>(rpc!(c, MigrationsClient, start, req.clone())) }.await;
    let w = started.with_context(|| {
        format!("domain {name} cannot move live; host {host} stays in maintenance (--cold moves domains by restart)")
    })?;
    let id = w.first_seq;
    let m = follow_migration(c, id, Some(spinner), 0).await?;
    anyhow::ensure!(
        m.phase == pb::MigrationPhase::Committed as i32,
        "migration {id} of domain {name} rolled back ({}); it runs on {host}, which stays in maintenance (--cold moves domains by restart)",
        m.reason
    );
    Ok(Moved {
        domain: name.to_owned(),
        to: m.target,
        downtime_ms: m.progress.and_then(|p| p.downtime_ms),
        live: true,
    })
}

/// Shut `name` down, wait until it has left `host`, and start it again elsewhere.
async fn drain_cold(
    c: &ApiClient,
    consistency: i32,
    host: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Moved> {
    let req = pb::DomainActionRequest { request_id: new_id(), name: name.to_owned() };
    rpc!(c, DomainsClient, shutdown, req.clone());
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let get = pb::GetDomainRequest { name: name.to_owned(), consistency };
        let d = rpc!(c, DomainsClient, get, get.clone());
        let status = d.status.unwrap_or_default();
        if status.host.is_empty() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "domain {name} did not stop within {} s (phase {}); host {host} stays in maintenance",
            timeout.as_secs(),
            word::<pb::DomainPhase>(status.phase)
        );
        tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    let req = pb::DomainActionRequest { request_id: new_id(), name: name.to_owned() };
    rpc!(c, DomainsClient, start, req.clone());
    let get = pb::GetDomainRequest { name: name.to_owned(), consistency };
    let to = rpc!(c, DomainsClient, get, get.clone()).status.unwrap_or_default().host;
    Ok(Moved { domain: name.to_owned(), to, downtime_ms: None, live: false })
}

/// How often a drain looks whether a domain has stopped.
const DRAIN_POLL_MS: u64 = 100;
/// How long `domain start --wait` and `domain shutdown --wait` wait.
const DOMAIN_WAIT: Duration = Duration::from_secs(300);

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    Running,
    Stopped,
}

/// Wait until domain `name` runs (its host is returned) or has stopped and left its host;
/// a run that fails or crashes on the way is an error with the host's reason.
async fn wait_for_phase(c: &ApiClient, consistency: i32, name: &str, until: Until) -> anyhow::Result<String> {
    let spinner = crate::progress::Spinner::new(format!("waiting for domain {name}"));
    let deadline = std::time::Instant::now() + DOMAIN_WAIT;
    loop {
        let get = pb::GetDomainRequest { name: name.to_owned(), consistency };
        let status = rpc!(c, DomainsClient, get, get.clone()).status.unwrap_or_default();
        let phase = status.phase();
        spinner.say(format!("domain {name}: {} {}", word::<pb::DomainPhase>(status.phase), status.host));
        match (until, phase) {
            (Until::Running, pb::DomainPhase::Running) => return Ok(status.host),
            (Until::Running, pb::DomainPhase::Failed | pb::DomainPhase::Crashed | pb::DomainPhase::Lost) => {
                anyhow::bail!(
                    "domain {name} {} on host {}: {}",
                    word::<pb::DomainPhase>(status.phase),
                    status.host,
                    status.reason
                )
            }
            (Until::Stopped, _) if status.host.is_empty() => return Ok(String::new()),
            _ => {}
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "domain {name} is still {} after {} s",
            word::<pb::DomainPhase>(status.phase),
            DOMAIN_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
}

async fn host(c: &ApiClient, o: Output, consistency: i32, cmd: HostCmd) -> anyhow::Result<Printed> {
    let set = |name: String, state: HostState| pb::SetHostStateRequest {
        request_id: new_id(),
        name,
        state: pb::HostState::from(state).into(),
    };
    Ok(match cmd {
        HostCmd::List => {
            let list =
                list_all!(c, HostsClient, hosts, pb::ListHostsRequest { consistency, ..Default::default() });
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|h| {
                            let cap = h.capacity.unwrap_or_default();
                            let used = h.allocated.unwrap_or_default();
                            vec![
                                h.name.clone(),
                                if h.flapping {
                                    format!("{} (flapping)", word::<pb::HostState>(h.state))
                                } else {
                                    word::<pb::HostState>(h.state)
                                },
                                h.address.clone(),
                                h.labels
                                    .get(controlplane::model::DRIVER_LABEL)
                                    .map_or("-".into(), String::clone),
                                format!("{}/{}", used.vcpus, cap.vcpus),
                                format!("{}/{}", used.memory_mib, cap.memory_mib),
                                h.domains.len().to_string(),
                                h.vm_limits.map_or("-".into(), |l| {
                                    format!(
                                        "{} vCPUs, {} MiB, {} disks, {} NICs",
                                        l.vcpus, l.memory_mib, l.disks, l.nics
                                    )
                                }),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "name",
                            "state",
                            "address",
                            "driver",
                            "vcpus",
                            "memory_mib",
                            "domains",
                            "largest VM",
                        ],
                        rows,
                    )
                },
                || {
                    Value::Array(
                        list.iter()
                            .map(|h| {
                                let limits = h.vm_limits.map(|l| json!({"vcpus": l.vcpus, "memory_mib": l.memory_mib, "disks": l.disks, "nics": l.nics}));
                                json!({"name": h.name, "state": word::<pb::HostState>(h.state), "address": h.address, "domains": h.domains, "flapping": h.flapping, "recent_fences": h.recent_fences, "vm_limits": limits, "labels": h.labels})
                            })
                            .collect(),
                    )
                },
            )
        }
        HostCmd::Clear { name } => {
            let req = pb::ClearHostRequest { request_id: new_id(), name: name.clone() };
            let w = rpc!(c, HostsClient, clear, req.clone());
            written(o, &format!("host {name} cleared"), &w)
        }
        HostCmd::Drain { name, .. } | HostCmd::Ready { name } if name.is_empty() => {
            return Err(anyhow::anyhow!("a host name is required"));
        }
        HostCmd::Drain { name, keep_domains, cold, timeout_s } => {
            let req = set(name.clone(), HostState::Maintenance);
            let w = rpc!(c, HostsClient, set_state, req.clone());
            if keep_domains {
                return Ok(written(o, &format!("host {name} in maintenance; its domains stay"), &w));
            }
            let moved = drain(c, consistency, &name, cold, Duration::from_secs(timeout_s)).await?;
            let lines: Vec<String> = moved
                .iter()
                .map(|m| match (m.live, m.downtime_ms) {
                    (true, Some(ms)) => format!("  {} -> {} (live, downtime {ms} ms)", m.domain, m.to),
                    (true, None) => format!("  {} -> {} (live)", m.domain, m.to),
                    (false, _) => format!("  {} -> {} (restarted)", m.domain, m.to),
                })
                .collect();
            show(
                o,
                || format!("host {name} in maintenance; {} domains moved\n{}", moved.len(), lines.join("\n")),
                || {
                    let moved: Vec<Value> = moved
                        .iter()
                        .map(|m| json!({"domain": m.domain, "host": m.to, "live": m.live, "downtime_ms": m.downtime_ms}))
                        .collect();
                    json!({"host": name, "moved": moved})
                },
            )
        }
        HostCmd::Ready { name } => {
            let req = set(name.clone(), HostState::Ready);
            let w = rpc!(c, HostsClient, set_state, req.clone());
            written(o, &format!("host {name} ready"), &w)
        }
    })
}

async fn token(c: &ApiClient, o: Output, consistency: i32, cmd: TokenCmd) -> anyhow::Result<Printed> {
    let time = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
    };
    let info_json = |t: &pb::Token| {
        json!({"name": t.name, "role": word::<pb::Role>(t.role), "created_ms": t.created_ms,
               "expires_ms": t.expires_ms, "created_by": t.created_by, "version": t.version})
    };
    Ok(match cmd {
        TokenCmd::Create { name, role, ttl } => {
            let req = pb::CreateTokenRequest {
                request_id: new_id(),
                name: name.clone(),
                role: pb::Role::from(role).into(),
                ttl_seconds: ttl,
            };
            let reply = rpc!(c, TokensClient, create, req.clone());
            let info = reply.info.clone().unwrap_or_default();
            show(
                o,
                || {
                    format!(
                        "token for user:{name} ({role}) valid until {} UTC; it is shown once:\n{}",
                        time(info.expires_ms),
                        reply.token
                    )
                },
                || json!({"token": reply.token, "info": info_json(&info)}),
            )
        }
        TokenCmd::Revoke { name } => {
            let req = pb::RevokeTokenRequest { request_id: new_id(), name: name.clone() };
            let w = rpc!(c, TokensClient, revoke, req.clone());
            written(o, &format!("token {name} revoked"), &w)
        }
        TokenCmd::List => {
            let list = rpc!(c, TokensClient, list, pb::ListTokensRequest { consistency }).tokens;
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                word::<pb::Role>(t.role),
                                time(t.expires_ms),
                                t.created_by.clone(),
                            ]
                        })
                        .collect();
                    table(&["name", "role", "expires (utc)", "created by"], rows)
                },
                || Value::Array(list.iter().map(info_json).collect()),
            )
        }
    })
}

async fn net(c: &ApiClient, o: Output, consistency: i32, cmd: NetCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        NetCmd::Create { name, mode, cidr, gateway, bridge } => {
            let req = pb::CreateNetworkRequest {
                request_id: new_id(),
                name: name.clone(),
                config: Some(pb::NetworkConfig {
                    mode: pb::NetworkMode::from(mode).into(),
                    cidr,
                    gateway,
                    bridge,
                }),
            };
            let w = rpc!(c, NetworksClient, create, req.clone());
            written(o, &format!("network {name} created"), &w)
        }
        NetCmd::Delete { name } => {
            let req = pb::DeleteNetworkRequest { request_id: new_id(), name: name.clone() };
            let w = rpc!(c, NetworksClient, delete, req.clone());
            written(o, &format!("network {name} deleted"), &w)
        }
        NetCmd::List => {
            let list = list_all!(
                c,
                NetworksClient,
                networks,
                pb::ListNetworksRequest { consistency, ..Default::default() }
            );
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|n| {
                            let cfg = n.config.clone().unwrap_or_default();
                            vec![
                                n.name.clone(),
                                word::<pb::NetworkMode>(cfg.mode),
                                cfg.cidr,
                                cfg.gateway,
                                n.leases.len().to_string(),
                            ]
                        })
                        .collect();
                    table(&["name", "mode", "cidr", "gateway", "leases"], rows)
                },
                || {
                    Value::Array(
                        list.iter()
                            .map(|n| {
                                let cfg = n.config.clone().unwrap_or_default();
                                json!({"name": n.name, "mode": word::<pb::NetworkMode>(cfg.mode), "cidr": cfg.cidr, "gateway": cfg.gateway, "vni": n.vni,
                                       "leases": n.leases.iter().map(|l| json!({"mac": l.mac, "ip": l.ip, "domain": l.domain})).collect::<Vec<_>>()})
                            })
                            .collect(),
                    )
                },
            )
        }
    })
}

async fn pool(c: &ApiClient, o: Output, consistency: i32, cmd: PoolCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        PoolCmd::Create { name, path, capacity_mib, shared } => {
            let req = pb::CreatePoolRequest {
                request_id: new_id(),
                name: name.clone(),
                config: Some(pb::PoolConfig { kind: pb::PoolKind::Dir.into(), path, shared, capacity_mib }),
            };
            let w = rpc!(c, StoragePoolsClient, create, req.clone());
            written(o, &format!("pool {name} created"), &w)
        }
        PoolCmd::Delete { name } => {
            let req = pb::DeletePoolRequest { request_id: new_id(), name: name.clone() };
            let w = rpc!(c, StoragePoolsClient, delete, req.clone());
            written(o, &format!("pool {name} deleted"), &w)
        }
        PoolCmd::List => {
            let list = list_all!(
                c,
                StoragePoolsClient,
                pools,
                pb::ListPoolsRequest { consistency, ..Default::default() }
            );
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|p| {
                            let cfg = p.config.clone().unwrap_or_default();
                            vec![
                                p.name.clone(),
                                cfg.path,
                                cfg.shared.to_string(),
                                format!("{}/{}", p.allocated_mib, cfg.capacity_mib),
                                p.volumes.to_string(),
                            ]
                        })
                        .collect();
                    table(&["name", "path", "shared", "allocated_mib", "volumes"], rows)
                },
                || {
                    Value::Array(list.iter().map(|p| json!({"name": p.name, "allocated_mib": p.allocated_mib, "volumes": p.volumes})).collect())
                },
            )
        }
    })
}

async fn vol(c: &ApiClient, o: Output, consistency: i32, cmd: VolCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        VolCmd::Create { volume, capacity_mib, format, preallocate, import, no_wait } => {
            let req = pb::CreateVolumeRequest {
                request_id: new_id(),
                volume: Some(vref(&volume)?),
                format: pb::VolumeFormat::from(format).into(),
                capacity_mib,
                backing: String::new(),
                preallocate,
                import,
            };
            let w = rpc!(c, VolumesClient, create, req.clone());
            if no_wait {
                return Ok(written(o, &format!("volume {volume} recorded; its file is asked of a host"), &w));
            }
            let v = wait_for_volume(c, consistency, &volume).await?.ok_or_else(|| gone(&volume))?;
            volume_made(o, &volume, &v, "created")?
        }
        VolCmd::Clone { source, name } => {
            let src = vref(&source)?;
            let base =
                rpc!(c, VolumesClient, get, pb::GetVolumeRequest { volume: Some(src.clone()), consistency });
            let req = pb::CreateVolumeRequest {
                request_id: new_id(),
                volume: Some(pb::VolumeRef { pool: src.pool.clone(), name: name.clone() }),
                format: pb::VolumeFormat::Qcow2.into(),
                capacity_mib: base.capacity_mib,
                backing: src.name.clone(),
                preallocate: false,
                import: String::new(),
            };
            rpc!(c, VolumesClient, create, req.clone());
            let volume = format!("{}/{name}", src.pool);
            let v = wait_for_volume(c, consistency, &volume).await?.ok_or_else(|| gone(&volume))?;
            volume_made(o, &volume, &v, &format!("cloned from {source}"))?
        }
        VolCmd::Delete { volume } => {
            let req = pb::VolumeRequest { request_id: new_id(), volume: Some(vref(&volume)?) };
            let w = rpc!(c, VolumesClient, delete, req.clone());
            if let Some(v) = wait_for_volume(c, consistency, &volume).await? {
                anyhow::bail!("volume {volume} was not deleted: {}", v.failure);
            }
            written(o, &format!("volume {volume} deleted, its file removed"), &w)
        }
        VolCmd::Resize { volume, capacity_mib } => {
            let req =
                pb::ResizeVolumeRequest { request_id: new_id(), volume: Some(vref(&volume)?), capacity_mib };
            rpc!(c, VolumesClient, resize, req.clone());
            let v = wait_for_volume(c, consistency, &volume).await?.ok_or_else(|| gone(&volume))?;
            if v.capacity_mib != capacity_mib {
                anyhow::bail!("volume {volume} was not resized: {}", v.failure);
            }
            volume_made(o, &volume, &v, &format!("resized to {capacity_mib} MiB"))?
        }
        VolCmd::List { pool } => {
            let list = list_all!(
                c,
                VolumesClient,
                volumes,
                pb::ListVolumesRequest { pool: pool.clone(), consistency, ..Default::default() }
            );
            let id =
                |v: &pb::Volume| v.id.clone().map(|i| format!("{}/{}", i.pool, i.name)).unwrap_or_default();
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|v| {
                            vec![
                                id(v),
                                word::<pb::VolumeFormat>(v.format),
                                volume_state(v).into(),
                                v.capacity_mib.to_string(),
                                v.allocation_mib.to_string(),
                                v.backing.clone(),
                                v.host.clone(),
                                v.attachments.keys().cloned().collect::<Vec<_>>().join(","),
                                v.failure.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "volume",
                            "format",
                            "state",
                            "capacity_mib",
                            "allocation_mib",
                            "backing",
                            "host",
                            "attached_to",
                            "failure",
                        ],
                        rows,
                    )
                },
                || Value::Array(list.iter().map(|v| volume_json(&id(v), v)).collect()),
            )
        }
    })
}

fn gone(volume: &str) -> anyhow::Error {
    anyhow::anyhow!("volume {volume} is gone (deleted meanwhile?)")
}

/// Print a volume whose file a host made (or fail with why it could not).
fn volume_made(o: Output, volume: &str, v: &pb::Volume, what: &str) -> anyhow::Result<Printed> {
    if v.state() == pb::VolumeState::Failed {
        anyhow::bail!("volume {volume} failed: {}", v.failure);
    }
    let host = if v.host.is_empty() { String::new() } else { format!(" on host {}", v.host) };
    Ok(show(
        o,
        || {
            format!(
                "volume {volume} {what}{host}: {} MiB, {} MiB allocated",
                v.capacity_mib, v.allocation_mib
            )
        },
        || volume_json(volume, v),
    ))
}

fn volume_state(v: &pb::Volume) -> &'static str {
    match v.state() {
        pb::VolumeState::Creating => "creating",
        pb::VolumeState::Ready => "ready",
        pb::VolumeState::Resizing => "resizing",
        pb::VolumeState::Deleting => "deleting",
        pb::VolumeState::Failed => "failed",
        pb::VolumeState::RecordOnly => "record-only",
        pb::VolumeState::Unspecified => "unknown",
    }
}

fn volume_json(id: &str, v: &pb::Volume) -> Value {
    json!({
        "volume": id, "format": word::<pb::VolumeFormat>(v.format), "state": volume_state(v), "capacity_mib": v.capacity_mib,
        "allocation_mib": v.allocation_mib, "backing": v.backing, "host": v.host, "failure": v.failure,
        "attached_to": v.attachments.keys().collect::<Vec<_>>(),
    })
}

/// How long volume commands wait for a host to carry them out (a large import copies).
const VOLUME_WAIT_MS: u64 = 600_000;

/// Wait until no operation is pending on `volume`; `None` once it is gone.
async fn wait_for_volume(
    c: &ApiClient,
    consistency: i32,
    volume: &str,
) -> anyhow::Result<Option<pb::Volume>> {
    let id = vref(volume)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(VOLUME_WAIT_MS);
    let spinner = crate::progress::Spinner::new(format!("waiting for volume {volume}"));
    loop {
        let req = pb::GetVolumeRequest { volume: Some(id.clone()), consistency };
        let got = c
            .call(|ch| {
                let r = c.request(req.clone());
                async move { Ok(VolumesClient::new(ch).get(r).await?.into_inner()) }
            })
            .await;
        let v = match got {
            Ok(v) => v,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let pending = matches!(
            v.state(),
            pb::VolumeState::Creating | pb::VolumeState::Resizing | pb::VolumeState::Deleting
        );
        if !pending {
            return Ok(Some(v));
        }
        spinner.say(format!("volume {volume}: {} on host {}", volume_state(&v), v.pending_host));
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "volume {volume} still {} on host {} after {} s; `vol list` shows when it ends",
                volume_state(&v),
                v.pending_host,
                VOLUME_WAIT_MS / 1000
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(SNAPSHOT_POLL_MS)).await;
    }
}

async fn snapshot(c: &ApiClient, o: Output, consistency: i32, cmd: SnapshotCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        SnapshotCmd::Create { domain, name, kind, no_wait } => {
            let req = pb::CreateSnapshotRequest {
                request_id: new_id(),
                domain: domain.clone(),
                name: name.clone(),
                kind: pb::SnapshotKind::from(kind).into(),
            };
            let w = rpc!(c, SnapshotsClient, create, req.clone());
            if no_wait {
                return Ok(written(o, &format!("snapshot {domain}/{name} asked of its host"), &w));
            }
            let s = wait_for_snapshot(c, consistency, &domain, &name).await?;
            if s.state() == pb::SnapshotState::Failed {
                anyhow::bail!("snapshot {domain}/{name} failed on host {}: {}", s.host, s.reason);
            }
            show(
                o,
                || {
                    let held =
                        if s.kind() == pb::SnapshotKind::Disk { "disks imaged in" } else { "guest paused" };
                    format!(
                        "snapshot {domain}/{name} taken on host {}: {}, {held} {} ms",
                        s.host,
                        mib(s.bytes),
                        s.duration_ms
                    )
                },
                || snapshot_json(&s),
            )
        }
        SnapshotCmd::Delete { domain, name } => {
            let req =
                pb::SnapshotRequest { request_id: new_id(), domain: domain.clone(), name: name.clone() };
            let w = rpc!(c, SnapshotsClient, delete, req.clone());
            written(o, &format!("snapshot {domain}/{name} deleted"), &w)
        }
        SnapshotCmd::Revert { domain, name } => {
            let req =
                pb::SnapshotRequest { request_id: new_id(), domain: domain.clone(), name: name.clone() };
            let w = rpc!(c, SnapshotsClient, revert, req.clone());
            written(o, &format!("domain {domain} goes back to snapshot {name}"), &w)
        }
        SnapshotCmd::Clone { domain, name, clone } => {
            let req = pb::CloneRequest {
                request_id: new_id(),
                domain: domain.clone(),
                name: name.clone(),
                clone: clone.clone(),
            };
            let w = rpc!(c, SnapshotsClient, clone_domain, req.clone());
            written(o, &format!("domain {clone} defined from snapshot {domain}/{name}; start it to run"), &w)
        }
        SnapshotCmd::List { domain } => {
            let list = list_all!(
                c,
                SnapshotsClient,
                snapshots,
                pb::ListSnapshotsRequest { domain: domain.clone(), consistency, ..Default::default() }
            );
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|s| {
                            let taken = s.state() == pb::SnapshotState::Taken;
                            vec![
                                s.domain.clone(),
                                s.name.clone(),
                                word::<pb::SnapshotKind>(s.kind),
                                s.parent.clone(),
                                snapshot_state(s).to_owned(),
                                if taken { mib(s.bytes) } else { String::new() },
                                if taken { format!("{} ms", s.duration_ms) } else { String::new() },
                                if s.reason.is_empty() { s.host.clone() } else { s.reason.clone() },
                            ]
                        })
                        .collect();
                    table(
                        &["domain", "name", "kind", "parent", "state", "size", "paused", "host / reason"],
                        rows,
                    )
                },
                || Value::Array(list.iter().map(snapshot_json).collect()),
            )
        }
    })
}

/// How long `snapshot create` waits for the host to take the snapshot.
const SNAPSHOT_WAIT_MS: u64 = 300_000;
/// How often it (and the volume commands) look.
const SNAPSHOT_POLL_MS: u64 = 50;

/// Wait until snapshot `domain/name` is taken or failed.
async fn wait_for_snapshot(
    c: &ApiClient,
    consistency: i32,
    domain: &str,
    name: &str,
) -> anyhow::Result<pb::Snapshot> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(SNAPSHOT_WAIT_MS);
    let _spinner =
        crate::progress::Spinner::new(format!("waiting for a host to take snapshot {domain}/{name}"));
    loop {
        let req = pb::ListSnapshotsRequest { domain: domain.to_owned(), consistency, ..Default::default() };
        let list = rpc!(c, SnapshotsClient, list, req.clone()).snapshots;
        let Some(s) = list.into_iter().find(|s| s.name == name) else {
            anyhow::bail!("snapshot {domain}/{name} is gone (deleted meanwhile?)");
        };
        if s.state() != pb::SnapshotState::Pending {
            return Ok(s);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "snapshot {domain}/{name} still pending after {} s; `snapshot list` shows when it ends",
                SNAPSHOT_WAIT_MS / 1000
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(SNAPSHOT_POLL_MS)).await;
    }
}

fn snapshot_state(s: &pb::Snapshot) -> &'static str {
    match s.state() {
        pb::SnapshotState::Pending => "pending",
        pb::SnapshotState::Taken => "taken",
        pb::SnapshotState::Failed => "failed",
        pb::SnapshotState::RecordOnly => "record-only",
        pb::SnapshotState::Unspecified => "unknown",
    }
}

fn snapshot_json(s: &pb::Snapshot) -> Value {
    json!({
        "domain": s.domain, "name": s.name, "kind": word::<pb::SnapshotKind>(s.kind), "parent": s.parent,
        "state": snapshot_state(s), "host": s.host, "bytes": s.bytes, "duration_ms": s.duration_ms,
        "reason": s.reason, "created_ms": s.created_ms,
    })
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

async fn migrate(c: &ApiClient, o: Output, consistency: i32, cmd: MigrateCmd) -> anyhow::Result<Printed> {
    Ok(match cmd {
        MigrateCmd::Start { domain, to, max_downtime_ms, wait } => {
            start_migration(c, o, consistency, domain, to, max_downtime_ms, wait).await?
        }
        MigrateCmd::SetDowntime { id, max_downtime_ms } => {
            let req = pb::SetMigrationDowntimeRequest { request_id: new_id(), id, max_downtime_ms };
            let w = rpc!(c, MigrationsClient, set_downtime, req.clone());
            written(o, &format!("migration {id} may pause the guest {max_downtime_ms} ms"), &w)
        }
        MigrateCmd::Abort { id, reason } => {
            let req = pb::AbortMigrationRequest { request_id: new_id(), id, reason };
            let w = rpc!(c, MigrationsClient, abort, req.clone());
            written(o, &format!("migration {id} rolled back"), &w)
        }
        MigrateCmd::Get { id } => {
            let m = rpc!(c, MigrationsClient, get, pb::GetMigrationRequest { id, consistency });
            let v = migration_json(&m);
            show(o, || key_values(&v), || v.clone())
        }
        MigrateCmd::List => {
            let list = list_all!(
                c,
                MigrationsClient,
                migrations,
                pb::ListMigrationsRequest { consistency, ..Default::default() }
            );
            show(
                o,
                || {
                    let rows = list
                        .iter()
                        .map(|m| {
                            let p = m.progress.unwrap_or_default();
                            vec![
                                m.id.to_string(),
                                m.domain.clone(),
                                m.source.clone(),
                                m.target.clone(),
                                word::<pb::MigrationPhase>(m.phase),
                                mib(p.bytes_sent),
                                p.rounds.to_string(),
                                p.downtime_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
                            ]
                        })
                        .collect();
                    table(&["id", "domain", "source", "target", "phase", "sent", "rounds", "downtime"], rows)
                },
                || Value::Array(list.iter().map(migration_json).collect()),
            )
        }
    })
}

/// Start live-migrating `domain`; with `wait`, follow it (a progress bar over the
/// guest's memory on a terminal) and fail unless it commits.
async fn start_migration(
    c: &ApiClient,
    o: Output,
    consistency: i32,
    domain: String,
    to: String,
    max_downtime_ms: Option<u64>,
    wait: bool,
) -> anyhow::Result<Printed> {
    let req = pb::StartMigrationRequest {
        request_id: new_id(),
        domain: domain.clone(),
        target: to,
        max_downtime_ms,
    };
    let id = rpc!(c, MigrationsClient, start, req.clone()).first_seq;
    if !wait {
        return Ok(show(o, || format!("migration {id} of domain {domain} started"), || json!({"id": id})));
    }
    // The bar is over the guest's memory, asked for only where there is a bar to draw.
    let (spinner, memory_bytes) = if o == Output::Table {
        let get = pb::GetDomainRequest { name: domain.clone(), consistency };
        let memory_bytes = rpc!(c, DomainsClient, get, get.clone()).spec.map_or(0, |s| s.memory_mib << 20);
        (
            Some(crate::progress::Spinner::new(format!("migrating domain {domain} (migration {id})"))),
            memory_bytes,
        )
    } else {
        (None, 0)
    };
    let m = follow_migration(c, id, spinner.as_ref(), memory_bytes).await?;
    drop(spinner);
    anyhow::ensure!(
        m.phase == pb::MigrationPhase::Committed as i32,
        "migration {id} of domain {domain} rolled back: {}; it runs on {} as before",
        m.reason,
        m.source
    );
    Ok(show(o, || migration_summary(&m), || migration_json(&m)))
}

/// A value's fields as `key  value` lines.
fn key_values(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k:<18} {}", v.to_string().trim_matches('"')))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn migration_json(m: &pb::Migration) -> Value {
    let p = m.progress.unwrap_or_default();
    json!({
        "id": m.id,
        "domain": m.domain,
        "source": m.source,
        "target": m.target,
        "phase": word::<pb::MigrationPhase>(m.phase),
        "reason": m.reason,
        "started_ms": m.started_ms,
        "ended_ms": (m.ended_ms != 0).then_some(m.ended_ms),
        "target_address": m.target_address,
        "max_downtime_ms": m.max_downtime_ms,
        "progress": {
            "bytes_sent": p.bytes_sent,
            "rounds": p.rounds,
            "dirty_bytes_per_s": p.dirty_bytes_per_s,
            "remaining_bytes": p.remaining_bytes,
            "expected_downtime_ms": p.expected_downtime_ms,
            "throttle_percent": p.throttle_percent,
            "downtime_ms": p.downtime_ms,
        },
    })
}

/// One line of a migration's progress.
fn migration_line(m: &pb::Migration) -> String {
    let p = m.progress.unwrap_or_default();
    let mut line = format!(
        "migration {} {}: {} sent in {} round(s), {} left, dirtying {}/s",
        m.id,
        word::<pb::MigrationPhase>(m.phase),
        mib(p.bytes_sent),
        p.rounds,
        mib(p.remaining_bytes),
        mib(p.dirty_bytes_per_s),
    );
    if p.throttle_percent > 0 {
        line += &format!(", vCPUs throttled {}%", p.throttle_percent);
    }
    if let Some(ms) = m.max_downtime_ms {
        line += &format!(", pause at most {ms} ms");
    }
    line
}

fn migration_summary(m: &pb::Migration) -> String {
    let p = m.progress.unwrap_or_default();
    let downtime = p.downtime_ms.map(|d| format!("{d} ms")).unwrap_or_else(|| "not yet reported".into());
    format!(
        "migration {} of domain {} committed: {} -> {}, {} sent in {} round(s), downtime {downtime}",
        m.id,
        m.domain,
        m.source,
        m.target,
        mib(p.bytes_sent),
        p.rounds
    )
}

/// How often `migrate start --wait` looks at the migration.
const MIGRATION_POLL_MS: u64 = 250;
/// How long `migrate start --wait` follows a migration.
const MIGRATION_WAIT: Duration = Duration::from_secs(900);
/// How long `--wait` waits, after the commit, for the source's final numbers.
const MIGRATION_DONE_WAIT: Duration = Duration::from_secs(10);

/// Follow migration `id` until it ends (and, once committed, until its downtime is
/// reported or a short wait passes), saying its progress on `spinner` if there is one,
/// as a bar over the guest's `memory_bytes` unless that is 0.
async fn follow_migration(
    c: &ApiClient,
    id: u64,
    spinner: Option<&crate::progress::Spinner>,
    memory_bytes: u64,
) -> anyhow::Result<pb::Migration> {
    let deadline = std::time::Instant::now() + MIGRATION_WAIT;
    let mut committed_at = None;
    loop {
        let get = pb::GetMigrationRequest { id, consistency: pb::Consistency::Linearizable as i32 };
        let m = rpc!(c, MigrationsClient, get, get);
        let line = migration_line(&m);
        if let Some(s) = spinner {
            s.say(line.clone());
            if memory_bytes > 0 {
                let p = m.progress.unwrap_or_default();
                // The first round sends what the guest holds; later ones what it dirtied.
                let copied = if p.rounds == 0 {
                    p.bytes_sent.min(memory_bytes)
                } else {
                    memory_bytes - p.remaining_bytes.min(memory_bytes)
                };
                s.bar(copied, memory_bytes);
            }
        }
        let downtime = m.progress.and_then(|p| p.downtime_ms).is_some();
        if m.phase == pb::MigrationPhase::RolledBack as i32 || downtime {
            return Ok(m);
        }
        if m.phase == pb::MigrationPhase::Committed as i32 {
            let at = *committed_at.get_or_insert_with(std::time::Instant::now);
            if at.elapsed() > MIGRATION_DONE_WAIT {
                return Ok(m);
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "migration {id} did not end within {} s ({line}); `drover migrate abort {id}` rolls it back",
            MIGRATION_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(MIGRATION_POLL_MS)).await;
    }
}

async fn audit(
    c: &ApiClient,
    o: Output,
    cmd: AuditCmd,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Printed> {
    Ok(match cmd {
        AuditCmd::Log { kind, name, principal, from_seq, limit } => {
            let req = pb::AuditLogRequest { kind, name, principal, from_ms: 0, to_ms: 0, from_seq, limit };
            let reply = rpc!(c, AuditClient, log, req.clone());
            show(
                o,
                || {
                    let rows = reply
                        .events
                        .iter()
                        .map(|e| {
                            vec![
                                e.seq.to_string(),
                                e.time_ms.to_string(),
                                e.principal.clone(),
                                e.kind.clone(),
                                e.resource.clone(),
                            ]
                        })
                        .collect();
                    table(&["seq", "time_ms", "principal", "kind", "resource"], rows)
                },
                || json!({"events": reply.events.iter().map(event_json).collect::<Vec<_>>(), "next_seq": reply.next_seq}),
            )
        }
        AuditCmd::At { seq, time_ms } => {
            let at = match (seq, time_ms) {
                (Some(s), None) => pb::state_at_request::At::Seq(s),
                (None, Some(t)) => pb::state_at_request::At::TimeMs(t),
                _ => anyhow::bail!("give a sequence number or --time-ms"),
            };
            let reply = rpc!(c, AuditClient, state_at, pb::StateAtRequest { at: Some(at) });
            let state: Value = serde_json::from_str(&reply.state_json)?;
            show(
                o,
                || {
                    let names = |k: &str| {
                        state
                            .get(k)
                            .and_then(Value::as_object)
                            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    };
                    format!(
                        "seq         {}\nstate_hash  {}\nhosts       {}\ndomains     {}\nnetworks    {}\npools       {}",
                        reply.seq, reply.state_hash, names("hosts"), names("domains"), names("networks"), names("pools")
                    )
                },
                || json!({"seq": reply.seq, "state_hash": reply.state_hash, "state": state}),
            )
        }
        AuditCmd::Verify => {
            let spinner = crate::progress::Spinner::new("replaying the archive");
            let v = rpc!(c, AuditClient, verify, pb::VerifyRequest {});
            drop(spinner);
            if !v.ok {
                anyhow::bail!(
                    "verify FAILED: replaying {} events gives {}, the live state is {}",
                    v.events,
                    v.replay_hash,
                    v.live_hash
                );
            }
            show(
                o,
                || {
                    format!(
                        "verify ok: {} events replayed in {:.3} s, state hash {}",
                        v.events, v.seconds, v.live_hash
                    )
                },
                || json!({"ok": v.ok, "events": v.events, "seconds": v.seconds, "state_hash": v.live_hash}),
            )
        }
        AuditCmd::Export { from_seq } => {
            let mut stream = rpc!(c, AuditClient, export, pb::ExportRequest { from_seq });
            while let Some(chunk) = stream.message().await? {
                out.write_all(chunk.lines.as_bytes())?;
            }
            Printed::Text(String::new())
        }
    })
}

/// A fresh request id; the CLI's own retries reuse it.
fn new_id() -> String {
    format!("cli-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use clap::Subcommand;

    /// Every verb says what it does in `--help` (a verb added without a doc comment fails).
    #[test]
    fn every_verb_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let cli = super::ClientCmd::augment_subcommands(clap::Command::new("drover"));
        let mut missing = Vec::new();
        walk(&cli, "drover", &mut missing);
        assert!(missing.is_empty(), "verbs without help text: {missing:?}");
    }

    #[test]
    fn an_event_is_one_readable_line_with_its_utc_time() {
        let e = proto::api::Event {
            seq: 42,
            time_ms: 1_764_558_245_123,
            principal: "alice".into(),
            kind: "DomainStartRequested".into(),
            resource: "domain/web".into(),
            ..Default::default()
        };
        let line = super::event_line(&e);
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["42", "2025-12-01", "03:04:05.123", "DomainStartRequested", "domain/web", "alice"]
        );
        assert!(!line.contains('\n') && !line.contains('\u{1b}'));
    }
}
