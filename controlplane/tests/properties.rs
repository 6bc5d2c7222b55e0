//! Property tests of the core over random command sequences, valid and invalid, with
//! stale proposals applied late and retried requests:
//! - `decide` never panics, and `apply` never trips an assertion;
//! - after every step every invariant holds (no host over capacity, addresses unique per
//!   network, a read-write volume held by one domain at most, every placement on a host
//!   that was ready when the domain was scheduled, …);
//! - a proposal that conflicts or duplicates changes nothing;
//! - replaying the produced events onto an empty state gives the same hash, and every
//!   event and the state survive an encode/decode round trip.

use std::collections::{BTreeMap, BTreeSet};

use controlplane::model::{
    Boot, Cidr, DesiredState, Disk, DomainSpec, HaPolicy, HostState, Mac, MigrationPhase, MigrationProgress,
    MigrationReport, NetworkConfig, NetworkMode, Nic, ObservedPhase, Phase, Placement, PoolConfig, PoolKind,
    Resources, Role, SnapshotKind, SnapshotState, VmLimits, VolumeFormat, VolumeRef, VolumeState,
};
use controlplane::{
    apply, apply_proposal, codec, decide, invariants, state_hash, Command, Decision, Event, EventEnvelope,
    Proposal, ProposalOutcome, Request, SnapshotOutcome, State, VolumeOutcome,
};
use proptest::prelude::*;

// Names: mostly ones the seeded cluster uses, sometimes new ones, rarely invalid ones.
const HOSTS: &[&str] = &["h0", "h1", "h2", "h3"];
const DOMAINS: &[&str] = &["d0", "d1", "d2", "d3"];
const NETWORKS: &[&str] = &["n0", "n1", "n2"];
const POOLS: &[&str] = &["p0", "p1", "p2"];
const VOLUMES: &[&str] = &["v0", "v1", "v2", "v3"];
const TOKENS: &[&str] = &["t0", "t1"];
const SNAPSHOTS: &[&str] = &["s0", "s1", "s2"];
const INVALID: &[&str] = &["", "Bad_Name", "-x", "a b"];

fn pick(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        19 => proptest::sample::select(names).prop_map(str::to_owned),
        1 => proptest::sample::select(INVALID).prop_map(str::to_owned),
    ]
}

fn volume_ref() -> impl Strategy<Value = VolumeRef> {
    prop_oneof![
        4 => pick(VOLUMES).prop_map(|v| VolumeRef::new("p0", v)),
        1 => (pick(POOLS), pick(VOLUMES)).prop_map(|(p, v)| VolumeRef::new(p, v)),
    ]
}

fn host_state() -> impl Strategy<Value = HostState> {
    prop_oneof![
        4 => Just(HostState::Ready),
        1 => Just(HostState::Joining),
        1 => Just(HostState::Suspect),
        1 => Just(HostState::Fenced),
        1 => Just(HostState::Maintenance),
        1 => Just(HostState::Left),
    ]
}

fn observed_phase() -> impl Strategy<Value = ObservedPhase> {
    prop_oneof![
        1 => Just(ObservedPhase::Starting),
        3 => Just(ObservedPhase::Running),
        1 => Just(ObservedPhase::Paused),
        1 => Just(ObservedPhase::ShuttingDown),
        2 => Just(ObservedPhase::Stopped),
        1 => Just(ObservedPhase::Crashed),
        1 => Just(ObservedPhase::Failed),
    ]
}

fn spec() -> impl Strategy<Value = DomainSpec> {
    prop_oneof![
        6 => sane_spec(),
        1 => wild_spec(),
    ]
}

/// Mostly valid: existing volumes and networks, sizes that fit.
fn sane_spec() -> impl Strategy<Value = DomainSpec> {
    (
        1u32..=3,
        64u64..=3000,
        proptest::collection::vec(
            (proptest::sample::select(&["v0", "v1", "v2"][..]), proptest::bool::weighted(0.3)),
            0..3,
        ),
        proptest::collection::vec(proptest::sample::select(&["n0", "n1"][..]), 0..3),
        proptest::option::weighted(0.5, Just("g".to_string())),
        any::<bool>(),
    )
        .prop_map(|(vcpus, memory_mib, disks, nics, group, ha)| DomainSpec {
            vcpus,
            memory_mib,
            boot: Boot::Kernel { kernel: "/boot/vmlinuz".into(), initrd: None, cmdline: "quiet".into() },
            disks: disks
                .into_iter()
                .map(|(v, read_only)| Disk { volume: VolumeRef::new("p0", v), read_only })
                .collect(),
            nics: nics.into_iter().map(|n| Nic { network: n.to_string(), mac: None }).collect(),
            ha: if ha { HaPolicy::Restart { priority: 5 } } else { HaPolicy::None },
            placement: Placement { required_labels: Default::default(), anti_affinity_group: group },
        })
}

/// Anything: bad sizes, unknown volumes and networks, fixed MACs, disk boot.
fn wild_spec() -> impl Strategy<Value = DomainSpec> {
    (
        0u32..=300,
        prop_oneof![Just(0u64), 16u64..=9000, Just(u64::MAX)],
        proptest::collection::vec((volume_ref(), any::<bool>()), 0..3),
        proptest::collection::vec((pick(NETWORKS), proptest::option::of(any::<[u8; 6]>())), 0..3),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just("g".to_string()), Just("G".to_string())]),
    )
        .prop_map(|(vcpus, memory_mib, disks, nics, boot_disk, group)| DomainSpec {
            vcpus,
            memory_mib,
            boot: if boot_disk {
                Boot::Disk
            } else {
                Boot::Kernel { kernel: "boot/vmlinuz".into(), initrd: None, cmdline: "quiet".into() }
            },
            disks: disks.into_iter().map(|(volume, read_only)| Disk { volume, read_only }).collect(),
            nics: nics.into_iter().map(|(network, mac)| Nic { network, mac: mac.map(Mac) }).collect(),
            ha: HaPolicy::Restart { priority: vcpus },
            placement: Placement { required_labels: Default::default(), anti_affinity_group: group },
        })
}

fn network_config() -> impl Strategy<Value = NetworkConfig> {
    prop_oneof![
        (0u8..4, 27u8..=31).prop_map(|(third, len)| NetworkConfig {
            mode: NetworkMode::Nat,
            cidr: Some(Cidr { addr: std::net::Ipv4Addr::new(10, 0, third, 0), prefix_len: len }),
            gateway: None,
            bridge: None,
        }),
        Just(NetworkConfig {
            mode: NetworkMode::Bridge,
            cidr: None,
            gateway: None,
            bridge: Some("br0".into())
        }),
        Just(NetworkConfig { mode: NetworkMode::Isolated, cidr: None, gateway: None, bridge: None }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let domain = || pick(DOMAINS);
    prop_oneof![
        1 => (pick(HOSTS), 0u32..=8, 0u64..=8192, proptest::option::of((1u32..=4, 16u64..=2048))).prop_map(
            |(name, vcpus, memory_mib, limits)| Command::RegisterHost {
                address: format!("127.0.0.1:{}", 7000 + vcpus),
                name,
                capacity: Resources { vcpus, memory_mib },
                labels: Default::default(),
                vm_limits: limits.map(|(vcpus, memory_mib)| VmLimits { vcpus, memory_mib, disks: 2, nics: 2 }),
            }
        ),
        1 => (pick(HOSTS), host_state()).prop_map(|(name, state)| Command::SetHostState { name, state }),
        6 => (domain(), spec()).prop_map(|(name, spec)| Command::DefineDomain { name, spec }),
        1 => domain().prop_map(|name| Command::UndefineDomain { name }),
        6 => domain().prop_map(|name| Command::StartDomain { name }),
        2 => domain().prop_map(|name| Command::ShutdownDomain { name }),
        1 => domain().prop_map(|name| Command::DestroyDomain { name }),
        1 => domain().prop_map(|name| Command::RebootDomain { name }),
        2 => domain().prop_map(|name| Command::SuspendDomain { name }),
        3 => domain().prop_map(|name| Command::ResumeDomain { name }),
        1 => (domain(), volume_ref(), any::<bool>())
            .prop_map(|(domain, volume, read_only)| Command::AttachDisk { domain, disk: Disk { volume, read_only } }),
        1 => (domain(), volume_ref()).prop_map(|(domain, volume)| Command::DetachDisk { domain, volume }),
        1 => (pick(NETWORKS), network_config()).prop_map(|(name, config)| Command::CreateNetwork { name, config }),
        1 => pick(NETWORKS).prop_map(|name| Command::DeleteNetwork { name }),
        1 => (pick(POOLS), any::<bool>(), 0u64..=5000).prop_map(|(name, shared, capacity_mib)| Command::CreatePool {
            config: PoolConfig { kind: PoolKind::Dir, path: format!("/pools/{name}"), shared, capacity_mib },
            name,
        }),
        1 => pick(POOLS).prop_map(|name| Command::DeletePool { name }),
        1 => (volume_ref(), 0u64..=2000)
            .prop_map(|(volume, allocation_mib)| Command::ReportVolumeAllocation { volume, allocation_mib }),
        2 => (volume_ref(), any::<bool>(), 0u64..=2000, proptest::option::weighted(0.3, pick(VOLUMES))).prop_map(
            |(volume, qcow2, capacity_mib, backing)| Command::CreateVolume {
                volume,
                format: if qcow2 { VolumeFormat::Qcow2 } else { VolumeFormat::Raw },
                capacity_mib,
                backing,
                preallocate: !qcow2 && capacity_mib % 2 == 0,
                import: (capacity_mib % 5 == 0).then(|| "/srv/images/base.img".to_owned()),
            }
        ),
        1 => volume_ref().prop_map(|volume| Command::DeleteVolume { volume }),
        1 => (volume_ref(), 0u64..=3000).prop_map(|(volume, capacity_mib)| Command::ResizeVolume { volume, capacity_mib }),
        6 => (domain(), pick(SNAPSHOTS), proptest::bool::weighted(0.8)).prop_map(|(domain, name, full)| Command::CreateSnapshot {
            domain,
            name,
            kind: if full { SnapshotKind::Full } else { SnapshotKind::Disk },
        }),
        6 => (domain(), pick(SNAPSHOTS)).prop_map(|(domain, name)| Command::DeleteSnapshot { domain, name }),
        4 => (domain(), pick(SNAPSHOTS)).prop_map(|(domain, name)| Command::RevertSnapshot { domain, name }),
        1 => (domain(), domain(), pick(SNAPSHOTS))
            .prop_map(|(clone, source, snapshot)| Command::CloneDomain { clone, source, snapshot }),
        3 => (domain(), proptest::option::of(pick(HOSTS)), proptest::option::of(0u64..100)).prop_map(|(domain, target, max_downtime_ms)| Command::StartMigration { domain, target, max_downtime_ms }),
        1 => domain().prop_map(|name| Command::RestartDomain { name }),
        1 => prop_oneof![4 => Just(0u32), 1 => Just(1u32)].prop_map(|ha_reserve_hosts| Command::SetClusterSettings { ha_reserve_hosts }),
        1 => pick(HOSTS).prop_map(|name| Command::ClearHost { name }),
        1 => (pick(TOKENS), prop_oneof![Just(Role::Viewer), Just(Role::Operator), Just(Role::Admin)], prop_oneof![Just(0u64), 1u64..=10_000, Just(u64::MAX)])
            .prop_map(|(name, role, ttl_ms)| Command::CreateToken { name, role, secret_sha256: [7; 32], ttl_ms }),
        1 => pick(TOKENS).prop_map(|name| Command::RevokeToken { name }),
    ]
}

fn report(id: u64, host: &str, report: MigrationReport) -> Command {
    Command::ReportMigration { id, host: host.to_owned(), report }
}

/// One step of a run. Some steps are resolved against the state when they run.
#[derive(Debug, Clone)]
enum Step {
    Do(Command),
    /// The host asked reports on the `which`-th volume with an operation pending: done
    /// when `done`; from the true host and operation when `honest`.
    Volume {
        which: usize,
        done: bool,
        honest: bool,
    },
    /// A host reports on domain `domain`: the true host and generation when `honest`, and
    /// the phase a working host would report next when `phase` is `None`.
    Observe {
        domain: usize,
        phase: Option<ObservedPhase>,
        honest: bool,
    },
    /// The host of `domain` reports its pending snapshot: taken when `taken`; from the
    /// true host and run when `honest`.
    Snapshot {
        domain: usize,
        taken: bool,
        honest: bool,
    },
    /// Ask for a full snapshot and have the host take it at once.
    Take {
        domain: usize,
        name: usize,
    },
    /// Clone a domain from one of its taken snapshots under the first free name.
    CloneOf {
        source: usize,
    },
    /// Revert a domain to one of its taken snapshots, then let its host report twice.
    RevertAndRun {
        domain: usize,
    },
    /// Move the `which`-th live migration on: 0 progress, 1 commit, 2 abort.
    Migrate {
        which: usize,
        action: u8,
    },
    /// Decide now, apply `delay` steps later, against whatever the state is then.
    Stale {
        command: Command,
        delay: usize,
    },
    /// Submit an earlier request again, same id.
    Retry {
        which: usize,
    },
    /// The HA controller runs once, with these lease ages (ms) for the hosts in order.
    Ha {
        ages: Vec<u64>,
    },
    /// Domain `domain` crashes on its host and the HA controller runs, `times` over.
    CrashLoop {
        domain: usize,
        times: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => command().prop_map(Step::Do),
        3 => (0usize..8, proptest::bool::weighted(0.85), proptest::bool::weighted(0.9))
            .prop_map(|(which, done, honest)| Step::Volume { which, done, honest }),
        8 => (0..DOMAINS.len(), proptest::option::weighted(0.3, observed_phase()), proptest::bool::weighted(0.9))
            .prop_map(|(domain, phase, honest)| Step::Observe { domain, phase, honest }),
        6 => (0..DOMAINS.len(), proptest::bool::weighted(0.8), proptest::bool::weighted(0.9))
            .prop_map(|(domain, taken, honest)| Step::Snapshot { domain, taken, honest }),
        4 => (0..DOMAINS.len(), 0..SNAPSHOTS.len()).prop_map(|(domain, name)| Step::Take { domain, name }),
        2 => (0..DOMAINS.len()).prop_map(|domain| Step::RevertAndRun { domain }),
        2 => (0..DOMAINS.len()).prop_map(|source| Step::CloneOf { source }),
        4 => (0usize..4, 0u8..6).prop_map(|(which, action)| Step::Migrate { which, action }),
        2 => (command(), 1usize..6).prop_map(|(command, delay)| Step::Stale { command, delay }),
        1 => (0usize..64).prop_map(|which| Step::Retry { which }),
        2 => proptest::collection::vec(prop_oneof![35 => Just(0u64), 3 => Just(1_500u64), 2 => Just(60_000u64)], HOSTS.len())
            .prop_map(|ages| Step::Ha { ages }),
        1 => (0..DOMAINS.len(), 1usize..6).prop_map(|(domain, times)| Step::CrashLoop { domain, times }),
    ]
}

struct Run {
    state: State,
    archive: Vec<EventEnvelope>,
    requests: Vec<Request>,
    pending: Vec<(usize, Proposal)>,
    now_ms: u64,
}

impl Run {
    /// Run the HA controller once and submit what it asks for.
    fn ha(&mut self, ages: &BTreeMap<String, u64>) {
        let settings = controlplane::ha::HaSettings::default();
        for command in controlplane::ha::plan(&self.state, ages, &settings, self.now_ms) {
            let r = self.request(command);
            self.submit(&r);
        }
    }

    /// Build the seeded cluster, its volumes' files made by their hosts.
    fn seed(&mut self) {
        for c in seeded() {
            let r = self.request(c);
            self.submit(&r);
            self.step(0, Step::Volume { which: 0, done: true, honest: true });
        }
        assert!(self.state.volumes().values().all(|v| v.usable()), "the seeded volumes are made");
    }

    fn request(&mut self, command: Command) -> Request {
        let r = Request {
            request_id: format!("r{}", self.requests.len()),
            principal: "prop".into(),
            caller: controlplane::Caller::Cluster,
            command,
        };
        self.requests.push(r.clone());
        r
    }

    fn apply(&mut self, proposal: &Proposal) {
        let before = state_hash(&self.state);
        let (outcome, envelopes) = apply_proposal(&mut self.state, proposal);
        match outcome {
            ProposalOutcome::Applied(c) => {
                assert_eq!(c.event_count(), envelopes.len() as u64);
                for e in &envelopes {
                    if let Event::DomainScheduled { host, .. } = &e.event {
                        assert_eq!(
                            self.state.host(host).unwrap().state,
                            HostState::Ready,
                            "scheduled on a host not ready"
                        );
                    }
                }
                self.archive.extend(envelopes);
            }
            ProposalOutcome::Duplicate(_)
            | ProposalOutcome::Conflict { .. }
            | ProposalOutcome::Unfit { .. }
            | ProposalOutcome::OutOfTerm { .. } => {
                assert!(envelopes.is_empty());
                assert_eq!(state_hash(&self.state), before, "{outcome:?} changed the state");
            }
        }
        if let Err(v) = invariants::check(&self.state) {
            panic!("{v} after {proposal:?}");
        }
    }

    fn submit(&mut self, request: &Request) {
        self.now_ms += 7;
        match decide(&self.state, request, self.now_ms) {
            Ok(Decision::Propose(p)) => self.apply(&p),
            Ok(Decision::AlreadyCommitted(c)) => {
                assert_eq!(self.state.requests().get(&request.principal, &request.request_id), Some(c));
            }
            Err(_) => {}
        }
    }

    fn step(&mut self, index: usize, step: Step) {
        let due: Vec<Proposal> = {
            let (now, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(at, _)| *at <= index);
            self.pending = later;
            now.into_iter().map(|(_, p)| p).collect()
        };
        for p in due {
            self.apply(&p);
        }
        match step {
            Step::Do(command) => {
                let r = self.request(command);
                self.submit(&r);
            }
            Step::Volume { which, done, honest } => {
                let pending: Vec<_> = self
                    .state
                    .volumes()
                    .values()
                    .filter_map(|v| match &v.state {
                        VolumeState::Pending { host, id, .. } => Some((v.id.clone(), host.clone(), *id)),
                        _ => None,
                    })
                    .collect();
                if pending.is_empty() {
                    return;
                }
                let (volume, host, id) = pending[which % pending.len()].clone();
                let outcome = if done {
                    VolumeOutcome::Done { allocation_mib: 3 }
                } else {
                    VolumeOutcome::Failed { reason: "test".into() }
                };
                let id = if honest { id } else { id + 1 };
                let r = self.request(Command::ReportVolume { volume, host, id, outcome });
                self.submit(&r);
            }
            Step::Observe { domain, phase, honest } => {
                let name = DOMAINS[domain];
                let Some(d) = self.state.domain(name) else {
                    return;
                };
                let phase = phase.unwrap_or(match (d.desired, d.status.phase) {
                    (DesiredState::Stopped, _) => ObservedPhase::Stopped,
                    (DesiredState::Paused, _) => ObservedPhase::Paused,
                    (DesiredState::Running, Phase::Scheduled) => ObservedPhase::Starting,
                    (DesiredState::Running, _) => ObservedPhase::Running,
                });
                let (host, generation) = match (&d.status.host, honest) {
                    (Some(h), true) => (h.clone(), d.status.generation),
                    (Some(h), false) => (h.clone(), d.status.generation.wrapping_sub(1)),
                    (None, _) => ("h0".to_string(), d.status.generation),
                };
                let command = Command::ReportObservation {
                    domain: name.into(),
                    host,
                    generation,
                    phase,
                    reason: Some("seen".into()),
                };
                let r = self.request(command);
                self.submit(&r);
            }
            Step::Snapshot { domain, taken, honest } => {
                let name = DOMAINS[domain];
                let Some(s) =
                    self.state.snapshots_of(name).find(|s| matches!(s.state, SnapshotState::Pending { .. }))
                else {
                    return;
                };
                let SnapshotState::Pending { host, generation } = s.state.clone() else { return };
                let outcome = if taken {
                    SnapshotOutcome::Taken { bytes: 4096, duration_ms: 1 }
                } else {
                    SnapshotOutcome::Failed { reason: "test".into() }
                };
                let generation = if honest { generation } else { generation + 1 };
                let command = Command::ReportSnapshot {
                    domain: name.into(),
                    name: s.name.clone(),
                    id: s.id,
                    host,
                    generation,
                    outcome,
                };
                let r = self.request(command);
                self.submit(&r);
            }
            Step::Take { domain, name } => {
                let kind = SnapshotKind::Full;
                let create = Command::CreateSnapshot {
                    domain: DOMAINS[domain].into(),
                    name: SNAPSHOTS[name].into(),
                    kind,
                };
                let r = self.request(create);
                self.submit(&r);
                self.step(0, Step::Snapshot { domain, taken: true, honest: true });
            }
            Step::CloneOf { source } => {
                let name = DOMAINS[source];
                let Some(s) =
                    self.state.snapshots_of(name).find(|s| matches!(s.state, SnapshotState::Taken { .. }))
                else {
                    return;
                };
                let Some(clone) = DOMAINS.iter().find(|d| self.state.domain(d).is_none()) else { return };
                let command = Command::CloneDomain {
                    clone: (*clone).into(),
                    source: name.into(),
                    snapshot: s.name.clone(),
                };
                let r = self.request(command);
                self.submit(&r);
            }
            Step::RevertAndRun { domain } => {
                let name = DOMAINS[domain];
                let Some(s) =
                    self.state.snapshots_of(name).find(|s| matches!(s.state, SnapshotState::Taken { .. }))
                else {
                    return;
                };
                let r = self.request(Command::RevertSnapshot { domain: name.into(), name: s.name.clone() });
                self.submit(&r);
                for _ in 0..2 {
                    self.step(0, Step::Observe { domain, phase: None, honest: true });
                }
            }
            Step::Migrate { which, action: 3 } => {
                // A whole migration of a running domain, start to commit, so commits are
                // common enough to be tested.
                let running: Vec<String> = self
                    .state
                    .domains()
                    .values()
                    .filter(|d| d.status.phase == Phase::Running && d.migration.is_none())
                    .map(|d| d.name.clone())
                    .collect();
                let Some(domain) = running.get(which % running.len().max(1)).cloned() else {
                    return;
                };
                let r = self.request(Command::StartMigration {
                    domain: domain.clone(),
                    target: None,
                    max_downtime_ms: None,
                });
                self.submit(&r);
                let Some(id) = self.state.domain(&domain).and_then(|d| d.migration) else { return };
                let commands = if which % 2 == 0 {
                    // The record-only saga an operator drives.
                    vec![
                        Command::ReportMigrationProgress { id, phase: MigrationPhase::Transferring },
                        Command::CommitMigration { id },
                    ]
                } else {
                    // The hosts' saga: the target listens, the source copies and switches.
                    let m = &self.state.migrations()[&id];
                    let (source, target) = (m.source.clone(), m.target.clone());
                    let copied = MigrationProgress { bytes_sent: 1 << 20, rounds: 1, ..Default::default() };
                    let done = MigrationProgress { downtime_ms: Some(3), ..copied };
                    vec![
                        report(
                            id,
                            &target,
                            MigrationReport::TargetReady { address: "127.0.0.1:7100".into() },
                        ),
                        report(id, &source, MigrationReport::Copying(copied)),
                        report(id, &source, MigrationReport::Completing(copied)),
                        report(id, &source, MigrationReport::Switch(copied)),
                        report(id, &source, MigrationReport::Done(done)),
                    ]
                };
                for command in commands {
                    let r = self.request(command);
                    self.submit(&r);
                }
            }
            Step::Migrate { which, action: 4 } => {
                // A host's report out of turn, or a failure from either side.
                let live: Vec<(u64, String, String)> = self
                    .state
                    .migrations()
                    .values()
                    .filter(|m| !m.phase.is_ended())
                    .map(|m| (m.id, m.source.clone(), m.target.clone()))
                    .collect();
                let Some((id, source, target)) = live.get(which % live.len().max(1)).cloned() else {
                    return;
                };
                let host = if which % 2 == 0 { source } else { target };
                let r = match which % 4 {
                    0 | 1 => MigrationReport::Failed { reason: "the link dropped".into() },
                    2 => MigrationReport::Switch(MigrationProgress::default()),
                    _ => MigrationReport::TargetReady { address: "127.0.0.1:7101".into() },
                };
                let r = self.request(report(id, &host, r));
                self.submit(&r);
            }
            Step::Migrate { which, action } => {
                let live: Vec<u64> =
                    self.state.migrations().values().filter(|m| !m.phase.is_ended()).map(|m| m.id).collect();
                let Some(&id) = live.get(which % live.len().max(1)) else {
                    return;
                };
                let command = match action {
                    0 => Command::ReportMigrationProgress { id, phase: MigrationPhase::Transferring },
                    1 => Command::CommitMigration { id },
                    5 => Command::SetMigrationDowntime { id, max_downtime_ms: which as u64 * 20 },
                    _ => Command::AbortMigration { id, reason: "test".into() },
                };
                let r = self.request(command);
                self.submit(&r);
            }
            Step::Stale { command, delay } => {
                let r = self.request(command);
                self.now_ms += 1;
                if let Ok(Decision::Propose(p)) = decide(&self.state, &r, self.now_ms) {
                    self.pending.push((index + delay, p));
                }
            }
            Step::Retry { which } => {
                if let Some(r) = self.requests.get(which).cloned() {
                    self.submit(&r);
                }
            }
            Step::Ha { ages } => {
                let ages = HOSTS.iter().zip(ages).map(|(h, a)| (h.to_string(), a)).collect();
                self.ha(&ages);
            }
            Step::CrashLoop { domain, times } => {
                for _ in 0..times {
                    let Some(d) = self.state.domain(DOMAINS[domain]) else { return };
                    let Some(host) = d.status.host.clone() else { return };
                    let command = Command::ReportObservation {
                        domain: d.name.clone(),
                        host,
                        generation: d.status.generation,
                        phase: ObservedPhase::Crashed,
                        reason: Some("crash loop".into()),
                    };
                    let r = self.request(command);
                    self.submit(&r);
                    self.ha(&BTreeMap::new());
                }
            }
        }
    }
}

/// A small cluster to start from, so random commands find things to act on.
fn seeded() -> Vec<Command> {
    let mut out = Vec::new();
    for (i, h) in ["h0", "h1", "h2"].iter().enumerate() {
        out.push(Command::RegisterHost {
            name: h.to_string(),
            address: format!("127.0.0.1:{}", 7000 + i),
            capacity: Resources { vcpus: 8, memory_mib: 8192 },
            labels: Default::default(),
            vm_limits: None,
        });
        out.push(Command::SetHostState { name: h.to_string(), state: HostState::Ready });
    }
    out.push(Command::CreateNetwork {
        name: "n0".into(),
        config: NetworkConfig {
            mode: NetworkMode::Nat,
            cidr: Some("10.9.0.0/29".parse().unwrap()),
            gateway: None,
            bridge: None,
        },
    });
    out.push(Command::CreateNetwork {
        name: "n1".into(),
        config: NetworkConfig {
            mode: NetworkMode::Bridge,
            cidr: None,
            gateway: None,
            bridge: Some("br0".into()),
        },
    });
    out.push(Command::CreatePool {
        name: "p0".into(),
        config: PoolConfig {
            kind: PoolKind::Dir,
            path: "/pools/p0".into(),
            shared: true,
            capacity_mib: 8000,
        },
    });
    out.push(Command::CreatePool {
        name: "p1".into(),
        config: PoolConfig {
            kind: PoolKind::Dir,
            path: "/pools/p1".into(),
            shared: false,
            capacity_mib: 8000,
        },
    });
    for v in ["v0", "v1", "v2"] {
        out.push(Command::CreateVolume {
            volume: VolumeRef::new("p0", v),
            format: VolumeFormat::Qcow2,
            capacity_mib: 1000,
            backing: None,
            preallocate: false,
            import: None,
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_invariants_and_replay_to_the_same_hash(steps in proptest::collection::vec(step(), 1..200)) {
        let mut run = Run { state: State::new(), archive: Vec::new(), requests: Vec::new(), pending: Vec::new(), now_ms: 1_000 };
        run.seed();
        for (i, s) in steps.into_iter().enumerate() {
            run.step(i, s);
        }
        let late: Vec<Proposal> = run.pending.drain(..).map(|(_, p)| p).collect();
        for p in late {
            run.apply(&p);
        }

        // Replay the archive onto an empty state: same hash.
        let mut replayed = State::new();
        for e in &run.archive {
            apply(&mut replayed, e);
        }
        prop_assert_eq!(state_hash(&replayed), state_hash(&run.state));
        prop_assert_eq!(&replayed, &run.state);

        // Every envelope and the state survive the codec.
        for e in &run.archive {
            let back: EventEnvelope = codec::decode(&codec::encode(e)).unwrap();
            prop_assert_eq!(&back, e);
        }
        let back: State = codec::decode(&codec::encode(&run.state)).unwrap();
        prop_assert_eq!(state_hash(&back), state_hash(&run.state));

        // Sequence numbers are dense.
        let seqs: Vec<u64> = run.archive.iter().map(|e| e.seq).collect();
        prop_assert_eq!(seqs, (1..=run.archive.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn decide_never_panics_on_arbitrary_text(
        name in ".{0,80}",
        path in ".{0,40}",
        principal in ".{0,140}",
        request_id in ".{0,140}",
        vcpus in any::<u32>(),
        memory_mib in any::<u64>(),
    ) {
        let mut state = State::new();
        for c in seeded() {
            let r = Request { request_id: format!("seed-{}", state.last_seq()), principal: "p".into(), caller: controlplane::Caller::Cluster, command: c };
            if let Ok(Decision::Propose(p)) = decide(&state, &r, 1) {
                apply_proposal(&mut state, &p);
            }
        }
        let hash = state_hash(&state);
        let spec = DomainSpec {
            vcpus,
            memory_mib,
            boot: Boot::Kernel { kernel: path.clone(), initrd: Some(path.clone()), cmdline: name.clone() },
            disks: vec![Disk { volume: VolumeRef::new(name.clone(), name.clone()), read_only: false }],
            nics: vec![Nic { network: name.clone(), mac: None }],
            ha: HaPolicy::Restart { priority: vcpus },
            placement: Placement { required_labels: [(name.clone(), path.clone())].into(), anti_affinity_group: Some(name.clone()) },
        };
        let commands = vec![
            Command::DefineDomain { name: name.clone(), spec },
            Command::StartDomain { name: name.clone() },
            Command::RegisterHost { name: name.clone(), address: path.clone(), capacity: Resources { vcpus, memory_mib }, labels: [(path.clone(), name.clone())].into(), vm_limits: None },
            Command::CreatePool { name: name.clone(), config: PoolConfig { kind: PoolKind::Dir, path: path.clone(), shared: false, capacity_mib: memory_mib } },
            Command::ReportObservation { domain: name.clone(), host: path.clone(), generation: memory_mib, phase: ObservedPhase::Running, reason: Some(name.clone()) },
            Command::CreateSnapshot { domain: name.clone(), name: path.clone(), kind: SnapshotKind::Full },
            Command::AbortMigration { id: memory_mib, reason: name.clone() },
            Command::SetMigrationDowntime { id: memory_mib, max_downtime_ms: u64::from(vcpus) },
            Command::StartMigration { domain: name.clone(), target: Some(path.clone()), max_downtime_ms: Some(memory_mib) },
            Command::ReportMigration { id: memory_mib, host: path.clone(), report: MigrationReport::TargetReady { address: name.clone() } },
            Command::ReportMigration { id: memory_mib, host: path.clone(), report: MigrationReport::Failed { reason: name.clone() } },
        ];
        for command in commands {
            let r = Request { request_id: request_id.clone(), principal: principal.clone(), caller: controlplane::Caller::Cluster, command };
            let _ = decide(&state, &r, memory_mib);
        }
        prop_assert_eq!(state_hash(&state), hash);
    }
}

#[test]
fn the_seeded_cluster_is_valid() {
    // Guards the property test's starting point: if seeding broke, the properties would
    // run against an empty cluster and prove little.
    let mut state = State::new();
    let mut applied = BTreeSet::new();
    for (i, c) in seeded().into_iter().enumerate() {
        let name = c.name();
        let r = Request {
            request_id: format!("s{i}"),
            principal: "p".into(),
            caller: controlplane::Caller::Cluster,
            command: c,
        };
        match decide(&state, &r, 1) {
            Ok(Decision::Propose(p)) => {
                assert!(matches!(apply_proposal(&mut state, &p).0, ProposalOutcome::Applied(_)));
                applied.insert(name);
            }
            other => panic!("seed command {name} failed: {other:?}"),
        }
    }
    assert_eq!(state.hosts().values().filter(|h| h.state == HostState::Ready).count(), 3);
    assert_eq!(state.volumes().len(), 3);
}

#[test]
fn the_generator_reaches_every_event_kind() {
    // The properties above are only as strong as the histories they see: this checks
    // that a fixed sample of generated runs produces every kind of event there is.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(step(), 100..200);
    let mut seen = BTreeSet::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..700 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let mut run = Run {
            state: State::new(),
            archive: Vec::new(),
            requests: Vec::new(),
            pending: Vec::new(),
            now_ms: 1_000,
        };
        run.seed();
        for (i, s) in steps.into_iter().enumerate() {
            run.step(i, s);
        }
        seen.extend(run.archive.iter().map(|e| e.event.kind()));
        run.archive.iter().for_each(|e| *counts.entry(e.event.kind()).or_default() += 1);
    }
    // Kept for replaying older logs; no decision emits them any more.
    let legacy = ["SnapshotCreated", "SnapshotReverted", "VolumeCreated", "VolumeResized", "NetworkCreated"];
    let missing: Vec<_> = Event::KINDS.iter().filter(|k| !seen.contains(*k) && !legacy.contains(k)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}; generated: {counts:?}");
}
