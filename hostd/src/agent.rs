//! The agent loop: register the host, then reconcile whenever the state may have changed
//! and on every tick as a safety net — read this host's share of the cluster state, ask
//! the driver what runs, apply the reconciler's actions, and report observations back
//! through the API (with the run's generation, so a report about an old run is refused).
//!
//! With a replica of its own (`AgentConfig::replica`: a raft learner, as `drover up` runs
//! every host), the agent reads the state locally and wakes whenever the replica applies
//! events. Without one it reads through the public API (linearizable) and wakes on a
//! watch of domain events. Live migrations are carried out only with a replica (the
//! listing the API path reads holds no migrations); while one is under way the loop
//! looks every `MIGRATION_POLL_MS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::api as pb;
use proto::api::domains_client::DomainsClient;
use proto::api::events_client::EventsClient;
use proto::api::hosts_client::HostsClient;
use proto::api::migrations_client::MigrationsClient;
use proto::api::networks_client::NetworksClient;
use proto::api::snapshots_client::SnapshotsClient;
use proto::api::storage_pools_client::StoragePoolsClient;
use proto::api::volumes_client::VolumesClient;
use tonic::transport::Channel;
use tonic::Code;
use tracing::{info, warn, Instrument};

use crate::assignment::{share_from_state, HostShare};
use crate::driver::{ConvergeLimits, Driver};
use crate::lease::HostLease;
use crate::migrations::{HostMigrations, MigrationUpdate, Sent};
use crate::networks::HostNetworks;
use crate::pass::{HostPass, Observation};
use crate::reconciler::Assigned;
use crate::snapshots::{HostSnapshots, SnapshotReport};
use crate::volumes::{HostVolumes, VolumeReport};
use controlplane::model::{HostState, ObservedPhase, ResourceKey};
use controlplane::State;
use proto::convert;

/// How a host agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    /// Where this host's agent can be reached (recorded in the cluster).
    pub address: String,
    /// Control replicas (`host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// How it reaches them: with the host's certificate, or insecure.
    pub transport: raft::tls::Transport,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub labels: BTreeMap<String, String>,
    pub tick_ms: u64,
    /// How live migrations from this host end: the longest pause, the most throttle.
    pub migration_limits: ConvergeLimits,
    /// After a graceful shutdown request, destroy the VM if it has not stopped by then.
    pub shutdown_timeout_ms: u64,
    /// This host's replica of the log (a raft learner), read locally; `None`: read the
    /// state through the API.
    pub replica: Option<raft::node::Node>,
    /// Where snapshot files are written and restored from (`<dir>/<domain>/<name>-<id>.snap`);
    /// shared by every host that should be able to restore any snapshot.
    pub snapshot_dir: PathBuf,
    /// Where the host's lease deadline is written for its VM processes to watch
    /// (`vmm_control::lease`); `None` when no VM process watches one (the fake driver).
    pub lease_file: Option<PathBuf>,
    /// Where the driver keeps each VM's console (`<dir>/<domain>/console.log`); `None`:
    /// it keeps none (the fake driver).
    pub console_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no control replica answered: {0}")]
    Unavailable(String),
    #[error("the cluster refused: {0}")]
    Refused(String),
    #[error("bad endpoint {0}")]
    Endpoint(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Api {
    channels: Vec<Channel>,
    next: usize,
}

impl Api {
    /// Channels to every replica; each call gives up after `timeout`.
    fn new(
        endpoints: &[String],
        transport: &raft::tls::Transport,
        timeout: Duration,
    ) -> Result<Api, AgentError> {
        let channels = endpoints
            .iter()
            .map(|e| {
                transport
                    .endpoint(e)
                    .map(|ep| {
                        ep.connect_timeout(timeout.min(Duration::from_secs(2)))
                            .timeout(timeout)
                            .connect_lazy()
                    })
                    .map_err(|_| AgentError::Endpoint(e.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Api { channels, next: 0 })
    }

    /// Call `f` on each replica in turn until one answers (at most one round).
    async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = tonic::Status::unavailable("no replica");
        for _ in 0..self.channels.len() {
            let ch = self.channels[self.next % self.channels.len()].clone();
            match f(ch).await {
                Err(s) if s.code() == Code::Unavailable => {
                    self.next += 1;
                    last = s;
                }
                other => return other,
            }
        }
        Err(last)
    }
}

fn request<T>(host: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = format!("host/{host}").parse() {
        r.metadata_mut().insert("drover-principal", v);
    }
    // A report from a traced pass carries its trace on to the cluster.
    raft::telemetry::inject(r.metadata_mut());
    r
}

/// Run blocking `work` where it does not hold up other tasks: `block_in_place` on a
/// multi-thread runtime (hostd's), in place on a current-thread one (tests).
fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The span of a reconcile pass that acts on traced writes: it continues the newest trace
/// this host's replica applied for a domain placed here, and links the others. None (a
/// `Span::none()`) when there is none, or traces are off.
fn reconcile_span(config: &AgentConfig, domains: &BTreeMap<String, Assigned>) -> tracing::Span {
    let Some(node) = config.replica.as_ref().filter(|_| raft::telemetry::on()) else {
        return tracing::Span::none();
    };
    let traced: Vec<_> = node
        .take_traces()
        .into_iter()
        .filter_map(|(key, parent)| match key {
            ResourceKey::Domain(d) if domains.contains_key(&d) => Some(parent),
            _ => None,
        })
        .collect();
    let Some((newest, others)) = traced.split_last() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "reconcile",
        host = %config.host,
        traced = traced.len(),
        trace_id = tracing::field::Empty,
    );
    raft::telemetry::continue_from(&span, newest);
    for other in others {
        raft::telemetry::link(&span, other);
    }
    span
}

/// Guests started under a traced pass, until their first console output: each one's
/// `guest.boot` span then ends, so the trace reaches the guest.
#[derive(Debug, Default)]
struct Boots(BTreeMap<String, (tracing::Span, std::time::Instant)>);

impl Boots {
    fn extend(&mut self, started: Vec<(String, tracing::Span)>) {
        let now = std::time::Instant::now();
        self.0.extend(started.into_iter().map(|(domain, span)| (domain, (span, now))));
    }

    /// End the span of every guest whose console has output, or that has had none for
    /// [`BOOT_TRACE_MAX`] (a driver that keeps no consoles ends them at once).
    fn watch(&mut self, console_dir: Option<&Path>) {
        self.0.retain(|domain, (span, since)| {
            let Some(dir) = console_dir else { return false };
            let console = crate::vm_dir::dir_for(dir, domain)
                .map(|d| d.join(vmm_control::control::CONSOLE_FILE))
                .ok()
                .and_then(|f| std::fs::metadata(f).ok());
            if console.is_some_and(|m| m.len() > 0) {
                span.record("console", "output");
                return false;
            }
            if since.elapsed() > BOOT_TRACE_MAX {
                span.record("console", "none");
                return false;
            }
            true
        });
    }
}

/// Register the host and make it ready, retrying for up to two minutes. `boot` and
/// `attempt` make the request ids (a host registers again after being fenced). Returns
/// the log's last seq once it is ready.
async fn register(
    api: &mut Api,
    config: &AgentConfig,
    vm_limits: Option<pb::VmLimits>,
    boot: u64,
    attempt: u64,
) -> Result<u64, AgentError> {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let reg = pb::RegisterHostRequest {
            request_id: format!("{}-register-{boot}-{attempt}", config.host),
            name: config.host.clone(),
            address: config.address.clone(),
            capacity: Some(pb::Resources { vcpus: config.vcpus, memory_mib: config.memory_mib }),
            labels: config.labels.clone().into_iter().collect(),
            vm_limits,
        };
        let ready = pb::SetHostStateRequest {
            request_id: format!("{}-ready-{boot}-{attempt}", config.host),
            name: config.host.clone(),
            state: pb::HostState::from(HostState::Ready).into(),
        };
        let host = config.host.clone();
        let result = async {
            api.call(|ch| {
                let r = request(&host, reg.clone());
                async move { HostsClient::new(ch).register(r).await }
            })
            .await?;
            api.call(|ch| {
                let r = request(&host, ready.clone());
                async move { HostsClient::new(ch).set_state(r).await }
            })
            .await
        }
        .await;
        match result {
            Ok(reply) => return Ok(reply.into_inner().last_seq),
            Err(s) if s.code() == Code::Unavailable && std::time::Instant::now() < until => {
                warn!(status = %s, "cluster not reachable yet; retrying registration");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) if s.code() == Code::Unavailable => return Err(AgentError::Unavailable(s.to_string())),
            Err(s) => return Err(AgentError::Refused(s.to_string())),
        }
    }
}

/// Run the agent until `stop` resolves.
pub async fn run<D: Driver>(
    config: AgentConfig,
    mut driver: D,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut api = Api::new(&config.endpoints, &config.transport, API_CALL_TIMEOUT)?;
    let boot = now_ms();
    // Driver time is monotonic: a wall-clock jump must not stretch or cut a shutdown
    // timeout (or the fake driver's boot delay).
    let started = std::time::Instant::now();
    let mut registrations = 0;
    // What the driver runs, said with every registration: the cluster places here only
    // the domains it fits.
    let limits = convert::vm_limits_to_pb(driver.vm_limits());
    // The log as far as this host's (re-)registration: a replica of its own that has not
    // applied that much may still hand it runs the cluster gave to others while it was
    // fenced, so it acts on nothing until it has.
    let mut registered_seq = register(&mut api, &config, limits, boot, registrations).await?;
    info!(host = %config.host, "host registered and ready");
    let lease = Arc::new(HostLease::new(config.lease_file.clone()));
    let heartbeats = tokio::spawn(heartbeat(
        Api::new(&config.endpoints, &config.transport, HEARTBEAT_TIMEOUT)?,
        config.host.clone(),
        lease.clone(),
    ));
    let _stop_heartbeats = AbortOnDrop(heartbeats);
    // Nothing runs here before the lease is held. A host fenced before it ever held one
    // (its first heartbeats lost while the cluster elected a leader) joins afresh, or it
    // would wait for a lease the cluster refuses it for ever (the simulator found this).
    tokio::pin!(stop);
    while !lease.held() {
        if lease.fenced() {
            registrations += 1;
            registered_seq = register(&mut api, &config, limits, boot, registrations).await?;
            info!(host = %config.host, "registered again: fenced before it first held its lease");
            lease.clear_fenced();
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let mut pass = HostPass::new(config.shutdown_timeout_ms);
    let mut snapshots = HostSnapshots::new(config.snapshot_dir.clone());
    let mut volumes = HostVolumes::new();
    let mut networks = HostNetworks::new();
    let mut migrations = HostMigrations::new(listen_ip(&config.address), config.migration_limits);
    let mut reporter = Reporter { host: config.host.clone(), boot, sent: 0 };
    let mut tick = tokio::time::interval(Duration::from_millis(config.tick_ms));
    // Domain events wake the loop at once (a start reaches the hypervisor without waiting
    // for the tick); the tick still runs, to catch anything a broken stream missed.
    let mut watch: Option<tonic::Streaming<pb::Event>> = None;
    // With a replica of its own, hostd wakes whenever it applies new events instead.
    let mut applied = config.replica.as_ref().map(|node| node.applied_seq());
    let mut last_pass = tokio::time::Instant::now();
    let mut last_usage: Option<std::time::Instant> = None;
    let mut boots = Boots::default();
    // Without a replica: the last view read through the API, and whether the last pass
    // reported a migration step (the view to act on next must show what came of it).
    let mut api_view: Option<(std::time::Instant, HostShare)> = None;
    let mut reported = false;
    loop {
        let (woken, polled) = tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => (false, false),
            // A copy or a switch-over under way is looked at often: the guest's pause
            // lasts from the last copy to the commit this host reports.
            _ = tokio::time::sleep(Duration::from_millis(MIGRATION_POLL_MS)), if migrations.busy() => (false, true),
            m = next_event(&mut watch) => match m {
                Ok(Some(_)) => (true, false),
                Ok(None) | Err(_) => {
                    watch = None;
                    (false, false)
                }
            },
            woke = next_applied(&mut applied) => (woke, false),
        };
        if woken {
            // Coalesce bursts: at most one pass per PASS_GAP_MS.
            tokio::time::sleep_until(last_pass + Duration::from_millis(PASS_GAP_MS)).await;
        }
        last_pass = tokio::time::Instant::now();
        let now = started.elapsed().as_millis() as u64;
        let monotonic = vmm_control::lease::monotonic_ms();
        crate::metrics::lease_remaining(lease.deadline_ms() as i64 - monotonic as i64);
        if lease.fenced() || lease.expired(monotonic) {
            let fenced = off_the_workers(|| fence(&mut driver, now));
            // What it reported of those runs says nothing of runs to come (a domain
            // defined again starts its generations from 1 again).
            pass = HostPass::new(config.shutdown_timeout_ms);
            if fenced > 0 {
                warn!(host = %config.host, vms = fenced, "the lease has passed: destroyed every VM of this host");
            }
            if lease.fenced() {
                // The cluster has given this host's runs to others: join it afresh.
                registrations += 1;
                registered_seq = register(&mut api, &config, limits, boot, registrations).await?;
                info!(host = %config.host, "registered again after being fenced");
                lease.clear_fenced();
            }
            continue;
        }
        let share = match &config.replica {
            // The host's own replica: no round trip, and as fresh as the log it follows
            // (once it holds this host's registration, a lagging replica only delays
            // actions; generations keep them safe).
            Some(node) => {
                let share = node.read_local(|state| {
                    (state.last_seq() >= registered_seq)
                        .then(|| share_from_state(&config.host, state, &config.snapshot_dir))
                });
                match share {
                    Some(share) => share,
                    None => continue,
                }
            }
            // A pass that only polls a copy reuses a view read less than
            // API_VIEW_REUSE_MS ago, unless it has reported since.
            None => match api_view.as_ref().filter(|(at, _)| {
                polled && !reported && at.elapsed() < Duration::from_millis(API_VIEW_REUSE_MS)
            }) {
                Some((_, share)) => share.clone(),
                None => {
                    match read_through_api(&mut api, &config.host, &mut watch, &config.snapshot_dir).await {
                        Some(share) => {
                            api_view = Some((std::time::Instant::now(), share.clone()));
                            share
                        }
                        None => continue,
                    }
                }
            },
        };
        // Driver calls block (a VMM's socket, QMP, a snapshot written to disk): off the
        // async workers, so the host's replica and the API calls keep going meanwhile.
        // Networks first: a guest that boots finds its DHCP server there.
        let pass_started = std::time::Instant::now();
        let span = reconcile_span(&config, &share.domains);
        // Migrations before the reconcile pass: a committed switch-over is carried out
        // before the pass removes the source's VM (no longer this host's).
        let updates =
            off_the_workers(|| span.in_scope(|| migrations.run(&mut driver, &share.migrations, now)));
        reported = !updates.is_empty();
        for update in updates {
            let sent = reporter.send_migration(&mut api, &update).await;
            crate::metrics::report("migration", report_result(&sent));
            let fate = match &sent {
                Ok(()) => Sent::Accepted,
                Err(s)
                    if matches!(
                        s.code(),
                        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
                    ) =>
                {
                    Sent::Refused
                }
                Err(_) => Sent::Unsure,
            };
            if let Err(s) = &sent {
                warn!(migration = update.id, status = %s, "migration report not accepted");
            }
            migrations.reported(&update, fate);
        }
        off_the_workers(|| span.in_scope(|| networks.run(&mut driver, &share.networks)));
        let observations = off_the_workers(|| span.in_scope(|| pass.run(&mut driver, &share.domains, now)));
        metrics::histogram!(crate::metrics::RECONCILE_SECONDS).record(pass_started.elapsed().as_secs_f64());
        boots.extend(pass.take_boots());
        boots.watch(config.console_dir.as_deref());
        // Per-VM usage reads /proc for every VM: once a second, not on every pass (passes
        // woken by events come every few ms).
        if last_usage.is_none_or(|at| at.elapsed() >= USAGE_EVERY) {
            crate::metrics::vm_usage(&off_the_workers(|| driver.usage()));
            last_usage = Some(std::time::Instant::now());
        }
        for observation in observations {
            let Observation { domain, generation, phase, reason } = observation.clone();
            match reporter.send(&mut api, &domain, generation, phase, reason).instrument(span.clone()).await {
                Ok(_) => {
                    crate::metrics::report("phase", "accepted");
                    pass.reported(&observation)
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    // The run moved on (stale generation): nothing to report any more.
                    crate::metrics::report("phase", "refused");
                    pass.reported(&observation);
                }
                Err(s) => {
                    crate::metrics::report("phase", "unsure");
                    warn!(domain = %domain, status = %s, "report not accepted; will retry");
                    pass.unsure(&observation);
                }
            }
        }
        // Volume files first: a domain waiting on one starts once it is reported made.
        let lease_until = Some(lease.deadline_ms());
        let volume_reports = off_the_workers(|| volumes.run(&mut driver, &share.volumes, lease_until));
        for report in volume_reports {
            let sent = reporter.send_volume(&mut api, &report).await;
            crate::metrics::report("volume", report_result(&sent));
            match sent {
                Ok(()) => volumes.reported(&report),
                // Deleted meanwhile, or no longer pending under this id: nothing to report.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
                    ) =>
                {
                    volumes.reported(&report)
                }
                Err(s) => {
                    warn!(volume = %report.volume, status = %s, "volume report not accepted; will retry")
                }
            }
        }
        let reports = off_the_workers(|| snapshots.run(&mut driver, &share.snapshots, now));
        for report in reports {
            let sent = reporter.send_snapshot(&mut api, &report).await;
            crate::metrics::report("snapshot", report_result(&sent));
            match sent {
                Ok(()) => snapshots.reported(&report),
                // Deleted meanwhile, or no longer pending for this run: nothing to report.
                // (Refused as malformed, sending it again would not help either.)
                Err(s)
                    if matches!(
                        s.code(),
                        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
                    ) =>
                {
                    snapshots.reported(&report)
                }
                Err(s) => {
                    warn!(domain = %report.domain, snapshot = %report.name, status = %s, "snapshot report not accepted; will retry")
                }
            }
        }
    }
}

/// A volume or snapshot report's fate, for metrics: refused for good (deleted meanwhile,
/// no longer pending, malformed) or without a definite answer.
fn report_result(sent: &Result<(), tonic::Status>) -> &'static str {
    match sent {
        Ok(()) => "accepted",
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument) => {
            "refused"
        }
        Err(_) => "unsure",
    }
}

/// One list call of a linearizable read; `None` (and a warning) when the cluster cannot
/// be read.
async fn listed<T, F, Fut>(api: &mut Api, what: &str, f: F) -> Option<T>
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    match api.call(f).await {
        Ok(listed) => Some(listed),
        Err(s) => {
            warn!(status = %s, "cannot read {what}; VMs keep running as they are");
            None
        }
    }
}

/// This host's share of the cluster as the control replicas list it (linearizable),
/// converted to the model and taken by the same code as a replica's state
/// (`share_from_state`); opens the domain-event watch if it is not open. `None` when the
/// cluster cannot be read: VMs keep running as they are.
async fn read_through_api(
    api: &mut Api,
    host: &str,
    watch: &mut Option<tonic::Streaming<pb::Event>>,
    snapshot_dir: &Path,
) -> Option<HostShare> {
    let linearizable = pb::Consistency::Linearizable as i32;
    let domains = listed(api, "the domains", |ch| {
        let r = request(host, pb::ListDomainsRequest { consistency: linearizable, ..Default::default() });
        async move { Ok(DomainsClient::new(ch).list(r).await?.into_inner().domains) }
    })
    .await?;
    let mine = domains.iter().any(|d| d.status.as_ref().is_some_and(|s| s.host == host));
    // Volumes (and the pools that say where their files are): for this host's disks, and
    // for the volume operations asked of it.
    let volumes = listed(api, "the volumes", |ch| {
        let r = request(host, pb::ListVolumesRequest { consistency: linearizable, ..Default::default() });
        async move { Ok(VolumesClient::new(ch).list(r).await?.into_inner().volumes) }
    })
    .await?;
    let pools = if volumes.is_empty() {
        Vec::new()
    } else {
        listed(api, "the storage pools", |ch| {
            let r = request(host, pb::ListPoolsRequest { consistency: linearizable, ..Default::default() });
            async move { Ok(StoragePoolsClient::new(ch).list(r).await?.into_inner().pools) }
        })
        .await?
    };
    // The networks this host's domains use, and where their other hosts are (overlays).
    let needs_networks = mine && domains.iter().any(|d| d.spec.as_ref().is_some_and(|s| !s.nics.is_empty()));
    let (networks, hosts) = if needs_networks {
        let networks = listed(api, "the networks", |ch| {
            let r =
                request(host, pb::ListNetworksRequest { consistency: linearizable, ..Default::default() });
            async move { Ok(NetworksClient::new(ch).list(r).await?.into_inner().networks) }
        })
        .await?;
        let hosts = listed(api, "the hosts", |ch| {
            let r = request(host, pb::ListHostsRequest { consistency: linearizable, ..Default::default() });
            async move { Ok(HostsClient::new(ch).list(r).await?.into_inner().hosts) }
        })
        .await?;
        (networks, hosts)
    } else {
        (Vec::new(), Vec::new())
    };
    // Every migration a domain read above takes part in (read after the domains), for
    // this host's side of the live migrations.
    let migrations = listed(api, "the migrations", |ch| {
        let r = request(host, pb::ListMigrationsRequest { consistency: linearizable, ..Default::default() });
        async move { Ok(MigrationsClient::new(ch).list(r).await?.into_inner().migrations) }
    })
    .await?;
    // Read last: every snapshot asked by an event the reads above saw is in it, so the
    // newest version of all is a point the whole view is complete up to.
    let snapshots = listed(api, "the snapshots", |ch| {
        let r = request(host, pb::ListSnapshotsRequest { consistency: linearizable, ..Default::default() });
        async move { Ok(SnapshotsClient::new(ch).list(r).await?.into_inner().snapshots) }
    })
    .await?;
    if watch.is_none() {
        // Every domain event after the newest domain version seen is news.
        let from_seq = domains.iter().map(|d| d.version).max().unwrap_or(0) + 1;
        let w = pb::WatchRequest {
            from_seq,
            follow: true,
            kinds: vec![
                "domain".into(),
                "snapshot".into(),
                "volume".into(),
                "network".into(),
                "migration".into(),
            ],
            names: Vec::new(),
        };
        match api
            .call(|ch| {
                let r = request(host, w.clone());
                async move { EventsClient::new(ch).watch(r).await }
            })
            .await
        {
            Ok(stream) => *watch = Some(stream.into_inner()),
            Err(s) => warn!(status = %s, "cannot watch domain events; reconciling on the tick only"),
        }
    }
    let state = (|| {
        Ok::<_, tonic::Status>(State::from_listing(
            hosts.into_iter().map(convert::host_from_pb).collect::<Result<Vec<_>, _>>()?,
            domains.into_iter().map(convert::domain_from_pb).collect::<Result<Vec<_>, _>>()?,
            networks.into_iter().map(convert::network_from_pb).collect::<Result<Vec<_>, _>>()?,
            pools.into_iter().map(convert::pool_from_pb).collect::<Result<Vec<_>, _>>()?,
            volumes.into_iter().map(convert::volume_from_pb).collect::<Result<Vec<_>, _>>()?,
            snapshots.into_iter().map(convert::snapshot_from_pb).collect::<Result<Vec<_>, _>>()?,
            migrations.into_iter().map(convert::migration_from_pb).collect::<Result<Vec<_>, _>>()?,
        ))
    })();
    match state {
        Ok(state) => Some(share_from_state(host, &state, snapshot_dir)),
        Err(s) => {
            warn!(status = %s, "the cluster's lists do not convert; VMs keep running as they are");
            None
        }
    }
}

/// How often hostd records each VM's usage for its metrics.
const USAGE_EVERY: Duration = Duration::from_secs(1);
/// How long a traced guest's boot span waits for its first console output.
const BOOT_TRACE_MAX: Duration = Duration::from_secs(60);

/// The shortest time between two reconcile passes woken by events.
const PASS_GAP_MS: u64 = 5;
/// How often a host with a migration under way looks at it.
const MIGRATION_POLL_MS: u64 = 5;
/// How old a view read through the API may be for a pass that only polls a migration's
/// copy (a hostd without a replica would otherwise list the cluster every
/// `MIGRATION_POLL_MS`); a pass after one that reported reads afresh.
const API_VIEW_REUSE_MS: u64 = 50;

/// Where this host's incoming migrations listen: the IP of its recorded address (which
/// other hosts reach it at), or loopback where that is no IP or the unspecified one.
fn listen_ip(address: &str) -> std::net::IpAddr {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// How long an API call of the agent may take.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a heartbeat may take: an answer later than this would renew little.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);

/// Aborts a task when dropped (the agent's heartbeats end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renew the host's lease with the leader for ever, as often as the leader asks.
async fn heartbeat(mut api: Api, host: String, lease: Arc<HostLease>) {
    let mut interval = Duration::from_millis(controlplane::ha::HaSettings::default().heartbeat_interval_ms);
    loop {
        let sent = vmm_control::lease::monotonic_ms();
        let message = pb::HeartbeatRequest { name: host.clone() };
        let answer = api
            .call(|ch| {
                let r = request(&host, message.clone());
                async move { HostsClient::new(ch).heartbeat(r).await }
            })
            .await;
        match answer {
            Ok(reply) => {
                let reply = reply.into_inner();
                lease.renewed(sent, reply.fence_ms);
                interval = Duration::from_millis(reply.heartbeat_interval_ms.clamp(10, 10_000));
            }
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                if !lease.fenced() {
                    warn!(host = %host, status = %s, "the cluster refuses this host's lease");
                }
                lease.set_fenced();
            }
            Err(s) => tracing::debug!(host = %host, status = %s, "lease not renewed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Self-fencing: destroy every VM of this host that may still run. Returns how many.
pub fn fence(driver: &mut impl Driver, now_ms: u64) -> usize {
    let live: Vec<String> =
        driver.list(now_ms).into_iter().filter(|(_, vm)| vm.phase.is_live()).map(|(name, _)| name).collect();
    for name in &live {
        if let Err(e) = driver.destroy(name, now_ms) {
            warn!(domain = %name, error = %e, "self-fencing could not destroy a VM");
        }
    }
    live.len()
}

/// Whether the replica applied new events (false, and never again, once it stopped).
async fn next_applied(applied: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    let Some(rx) = applied else { return std::future::pending().await };
    if rx.changed().await.is_ok() {
        return true;
    }
    *applied = None;
    false
}

/// The next event of the watch, or never when there is none.
async fn next_event(
    watch: &mut Option<tonic::Streaming<pb::Event>>,
) -> Result<Option<pb::Event>, tonic::Status> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// Sends observations, each under a request id of its own.
struct Reporter {
    host: String,
    boot: u64,
    sent: u64,
}

impl Reporter {
    async fn send(
        &mut self,
        api: &mut Api,
        domain: &str,
        generation: u64,
        phase: ObservedPhase,
        reason: Option<String>,
    ) -> Result<(), tonic::Status> {
        self.sent += 1;
        let report = pb::ReportRequest {
            request_id: format!("{}-{}-{}", self.host, self.boot, self.sent),
            domain: domain.to_owned(),
            host: self.host.clone(),
            generation,
            phase: pb::ObservedPhase::from(phase).into(),
            reason: reason.unwrap_or_default(),
        };
        let host = &self.host;
        api.call(|ch| {
            let r = request(host, report.clone());
            async move { HostsClient::new(ch).report(r).await }
        })
        .await
        .map(|_| ())
    }

    async fn send_volume(&mut self, api: &mut Api, report: &VolumeReport) -> Result<(), tonic::Status> {
        self.sent += 1;
        let (failed, failure, allocation_mib) = match &report.outcome {
            controlplane::VolumeOutcome::Done { allocation_mib } => (false, String::new(), *allocation_mib),
            controlplane::VolumeOutcome::Failed { reason } => (true, reason.clone(), 0),
        };
        let message = pb::ReportVolumeRequest {
            request_id: format!("{}-{}-{}", self.host, self.boot, self.sent),
            volume: Some(pb::VolumeRef {
                pool: report.volume.pool.clone(),
                name: report.volume.name.clone(),
            }),
            host: self.host.clone(),
            id: report.id,
            failed,
            failure,
            allocation_mib,
        };
        let host = &self.host;
        api.call(|ch| {
            let r = request(host, message.clone());
            async move { VolumesClient::new(ch).report(r).await }
        })
        .await
        .map(|_| ())
    }

    async fn send_migration(&mut self, api: &mut Api, update: &MigrationUpdate) -> Result<(), tonic::Status> {
        self.sent += 1;
        let message = convert::report_migration_to_pb(
            format!("{}-{}-{}", self.host, self.boot, self.sent),
            update.id,
            &self.host,
            &update.report,
        );
        let host = &self.host;
        api.call(|ch| {
            let r = request(host, message.clone());
            async move { MigrationsClient::new(ch).report(r).await }
        })
        .await
        .map(|_| ())
    }

    async fn send_snapshot(&mut self, api: &mut Api, report: &SnapshotReport) -> Result<(), tonic::Status> {
        self.sent += 1;
        let (failed, failure, bytes, duration_ms) = match &report.outcome {
            controlplane::SnapshotOutcome::Taken { bytes, duration_ms } => {
                (false, String::new(), *bytes, *duration_ms)
            }
            controlplane::SnapshotOutcome::Failed { reason } => (true, reason.clone(), 0, 0),
        };
        let message = pb::ReportSnapshotRequest {
            request_id: format!("{}-{}-{}", self.host, self.boot, self.sent),
            domain: report.domain.clone(),
            name: report.name.clone(),
            host: self.host.clone(),
            generation: report.generation,
            failure,
            bytes,
            duration_ms,
            id: report.id,
            failed,
        };
        let host = &self.host;
        api.call(|ch| {
            let r = request(host, message.clone());
            async move { SnapshotsClient::new(ch).report(r).await }
        })
        .await
        .map(|_| ())
    }
}
