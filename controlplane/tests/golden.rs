//! Golden files: encodings written by earlier builds must decode forever.
//!
//! `tests/golden/events-N.bin` holds the first N entries of [`samples`] (one envelope of
//! every event variant, in declaration order), each as a u32 little-endian length and a
//! codec encoding. Because variants are only appended, samples are only appended too, and
//! every file must decode to a prefix of today's samples. A build that appends a variant
//! appends a sample and writes a new file with `DROVER_WRITE_GOLDEN=1 cargo test -p
//! controlplane --test golden`; existing files are never rewritten.
//!
//! `state-1.bin` and `proposal-1.bin` hold a state snapshot and a proposal written by the
//! first format; they must decode (the proposal re-encodes to the same payload). The
//! `-2` files are the same written by format version 2 (snapshots taken by hosts), which
//! must decode too, as must the `-3` files (format 3: HA restart counts); the `-4` files
//! are format version 4 (cluster settings, hosts' fencings), which must decode too; the
//! `-5` files are format version 5 (volume files made by hosts), which must decode too,
//! as must the `-6` files (format 6: a network's VNI); the `-7` files are written by
//! format version 7 (a host's VM limits) and must decode, as must the `-8` files (format
//! 8: a proposal's trace); the `-9` files are written by format version 9 (bearer tokens)
//! and must decode, as must the `-10` files (format 10: a live migration's target address
//! and progress), as must the `-11` files (format 11: an operator's longest pause for a
//! migration); the `-12` files (format 12: the raft term a proposal holds in) must
//! re-encode to the very same bytes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use controlplane::codec::{self, Durable};
use controlplane::fixtures::{dir_pool, kernel_spec, nat_network, new_volume, Harness};
use controlplane::model::{
    Cidr, DesiredState, Disk, HostState, Labels, Mac, MigrationPhase, MigrationProgress, MigrationReport,
    NetworkConfig, NetworkMode, Nic, ObservedPhase, PoolConfig, PoolKind, Resources, Role, SnapshotKind,
    SnapshotState, VmLimits, VolumeFormat, VolumeRef, VolumeState,
};
use controlplane::{
    invariants, Command, Decision, Event, EventEnvelope, Proposal, Request, State, TraceParent,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// One event of every variant, in declaration order. Append only.
fn samples() -> Vec<EventEnvelope> {
    let labels: Labels = [("zone".to_string(), "a".to_string())].into();
    let capacity = Resources { vcpus: 16, memory_mib: 65536 };
    let vol = VolumeRef::new("images", "root");
    let mut spec = kernel_spec(2, 1024);
    spec.disks.push(Disk { volume: vol.clone(), read_only: false });
    spec.nics.push(Nic { network: "default".into(), mac: Some(Mac([0x52, 0x54, 0, 1, 2, 3])) });
    let events = vec![
        Event::HostRegistered {
            name: "h1".into(),
            address: "127.0.0.1:7001".into(),
            capacity,
            labels: labels.clone(),
        },
        Event::HostUpdated { name: "h1".into(), address: "127.0.0.1:7002".into(), capacity, labels },
        Event::HostStateChanged { name: "h1".into(), state: HostState::Ready },
        Event::DomainDefined { name: "web".into(), spec: spec.into() },
        Event::DomainUndefined { name: "web".into() },
        Event::DomainStartRequested { name: "web".into() },
        Event::DomainShutdownRequested { name: "web".into() },
        Event::DomainDestroyRequested { name: "web".into() },
        Event::DomainRebootRequested { name: "web".into() },
        Event::DomainSuspendRequested { name: "web".into() },
        Event::DomainResumeRequested { name: "web".into() },
        Event::DomainScheduled { name: "web".into(), host: "h1".into(), generation: 3 },
        Event::DomainObserved {
            name: "web".into(),
            generation: 3,
            phase: ObservedPhase::Crashed,
            reason: Some("triple fault".into()),
        },
        Event::DomainReleased { name: "web".into(), generation: 3, desired: DesiredState::Running },
        Event::DomainDiskAdded { name: "web".into(), disk: Disk { volume: vol.clone(), read_only: true } },
        Event::DomainDiskRemoved { name: "web".into(), volume: vol.clone() },
        Event::NetworkCreated {
            name: "default".into(),
            config: NetworkConfig {
                mode: NetworkMode::Nat,
                cidr: Some(Cidr { addr: Ipv4Addr::new(10, 0, 0, 0), prefix_len: 24 }),
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                bridge: None,
            },
        },
        Event::NetworkDeleted { name: "default".into() },
        Event::IpAllocated {
            network: "default".into(),
            mac: Mac([0x52, 0x54, 0, 1, 2, 3]),
            ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            domain: "web".into(),
        },
        Event::IpReleased { network: "default".into(), mac: Mac([0x52, 0x54, 0, 1, 2, 3]) },
        Event::PoolCreated {
            name: "images".into(),
            config: PoolConfig {
                kind: PoolKind::Dir,
                path: "/var/lib/drover/images".into(),
                shared: true,
                capacity_mib: 1 << 20,
            },
        },
        Event::PoolDeleted { name: "images".into() },
        Event::VolumeCreated {
            volume: vol.clone(),
            format: VolumeFormat::Qcow2,
            capacity_mib: 10240,
            backing: Some("base".into()),
        },
        Event::VolumeDeleted { volume: vol.clone() },
        Event::VolumeResized { volume: vol.clone(), capacity_mib: 20480 },
        Event::VolumeAllocationObserved { volume: vol.clone(), allocation_mib: 512 },
        Event::VolumeAttached { volume: vol.clone(), domain: "web".into(), read_only: false },
        Event::VolumeDetached { volume: vol.clone(), domain: "web".into() },
        Event::SnapshotCreated {
            domain: "web".into(),
            name: "s2".into(),
            parent: Some("s1".into()),
            kind: SnapshotKind::Full,
        },
        Event::SnapshotDeleted { domain: "web".into(), name: "s1".into() },
        Event::SnapshotReparented { domain: "web".into(), name: "s2".into(), parent: None },
        Event::SnapshotReverted { domain: "web".into(), name: "s2".into() },
        Event::MigrationStarted { domain: "web".into(), source: "h1".into(), target: "h2".into() },
        Event::MigrationPhaseChanged { id: 33, phase: MigrationPhase::Transferring },
        Event::MigrationCommitted { id: 33, generation: 4 },
        Event::MigrationRolledBack { id: 33, reason: "target unreachable".into() },
        Event::SnapshotRequested {
            domain: "web".into(),
            name: "s3".into(),
            parent: Some("s2".into()),
            kind: SnapshotKind::Full,
            host: "h1".into(),
            generation: 4,
        },
        Event::SnapshotTaken { domain: "web".into(), name: "s3".into(), bytes: 1 << 20, duration_ms: 7 },
        Event::SnapshotFailed { domain: "web".into(), name: "s4".into(), reason: "disk full".into() },
        Event::SnapshotRevertRequested { domain: "web".into(), name: "s3".into(), generation: Some(5) },
        Event::SnapshotRestored {
            domain: "web".into(),
            source: "web".into(),
            name: "s3".into(),
            generation: 5,
        },
        Event::DomainCloned { clone: "web2".into(), source: "web".into(), name: "s3".into() },
        Event::DomainLost { name: "web".into(), generation: 5, host: "h1".into() },
        Event::DomainHaRestarting { name: "web".into() },
        Event::DomainHaWaiting { name: "web".into(), reason: "no host can run it".into() },
        Event::DomainHaGaveUp { name: "web".into(), reason: "crashed again".into() },
        Event::ClusterSettingsChanged { ha_reserve_hosts: 1 },
        Event::HostCleared { name: "h1".into() },
        Event::VolumeRequested {
            volume: vol.clone(),
            format: VolumeFormat::Qcow2,
            capacity_mib: 4096,
            backing: Some("base".into()),
            preallocate: false,
            import: Some("/srv/images/debian.qcow2".into()),
            host: "h1".into(),
        },
        Event::VolumeResizeRequested { volume: vol.clone(), capacity_mib: 8192, host: "h1".into() },
        Event::VolumeDeleteRequested { volume: vol.clone(), host: "h2".into() },
        Event::VolumeReady { volume: vol.clone(), allocation_mib: 12 },
        Event::VolumeFailed { volume: vol, reason: "No space left on device".into() },
        Event::NetworkDefined {
            name: "lan".into(),
            config: NetworkConfig {
                mode: NetworkMode::Isolated,
                cidr: Some(Cidr { addr: Ipv4Addr::new(10, 1, 0, 0), prefix_len: 24 }),
                gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
                bridge: None,
            },
            vni: 7,
        },
        Event::VolumeReassigned { volume: VolumeRef::new("images", "root"), host: "h3".into() },
        Event::HostVmLimits {
            name: "h1".into(),
            limits: Some(VmLimits { vcpus: 32, memory_mib: 3072, disks: 8, nics: 8 }),
        },
        Event::TokenCreated {
            name: "ci".into(),
            role: Role::Operator,
            secret_sha256: [0x5a; 32],
            expires_ms: 1_764_086_400_000,
        },
        Event::TokenRevoked { name: "ci".into() },
        Event::MigrationTargetReady { id: 33, address: "127.0.0.1:7100".into() },
        Event::MigrationProgressed { id: 33, progress: progress() },
        Event::MigrationDowntimeSet { domain: "web".into(), max_downtime_ms: 25 },
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| EventEnvelope {
            seq: i as u64 + 1,
            time_ms: 1_764_000_000_000 + i as u64,
            principal: "golden".into(),
            request_id: format!("golden-{i}"),
            event,
        })
        .collect()
}

fn progress() -> MigrationProgress {
    MigrationProgress {
        bytes_sent: 3 << 30,
        rounds: 4,
        dirty_bytes_per_s: 1 << 27,
        remaining_bytes: 1 << 20,
        expected_downtime_ms: 12,
        throttle_percent: 20,
        downtime_ms: None,
    }
}

fn write_events(path: &Path, envelopes: &[EventEnvelope]) {
    let mut out = Vec::new();
    for e in envelopes {
        let bytes = codec::encode(e);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    std::fs::write(path, out).unwrap();
}

fn read_events(path: &Path) -> Vec<EventEnvelope> {
    let bytes = std::fs::read(path).unwrap();
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(codec::decode(&rest[4..4 + len]).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        rest = &rest[4 + len..];
    }
    out
}

fn writing() -> bool {
    std::env::var_os("DROVER_WRITE_GOLDEN").is_some()
}

#[test]
fn samples_cover_every_variant_in_order() {
    let kinds: Vec<&str> = samples().iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds, Event::KINDS, "append a sample for every new variant, in order");
}

#[test]
fn every_golden_event_file_decodes_to_todays_samples() {
    let samples = samples();
    let newest = dir().join(format!("events-{}.bin", samples.len()));
    if writing() && !newest.exists() {
        write_events(&newest, &samples);
    }
    let mut covered = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("events-") && name.ends_with(".bin")) {
            continue;
        }
        let decoded = read_events(&path);
        assert_eq!(
            decoded,
            samples[..decoded.len()],
            "{name} no longer decodes to the samples it was written from"
        );
        covered = covered.max(decoded.len());
    }
    assert_eq!(
        covered,
        samples.len(),
        "no golden file holds the newest variants; run with DROVER_WRITE_GOLDEN=1"
    );
}

/// A state with one of everything, built through decide and apply.
fn rich_state() -> (State, Proposal) {
    let (h, p) = rich_harness();
    (h.state, p)
}

/// The rich state, then host h2 says its VM limits (format 7 records them).
fn rich_state_saying_limits() -> (State, Proposal) {
    let (h, p) = rich_harness_saying_limits();
    (h.state, p)
}

fn rich_harness_saying_limits() -> (Harness, Proposal) {
    let (mut h, p) = rich_harness();
    h.exec(Command::RegisterHost {
        name: "h2".into(),
        address: "127.0.0.1:7002".into(),
        capacity: Resources { vcpus: 16, memory_mib: 65536 },
        labels: Labels::new(),
        vm_limits: Some(VmLimits { vcpus: 32, memory_mib: 3072, disks: 8, nics: 8 }),
    })
    .unwrap();
    (h, p)
}

fn rich_harness() -> (Harness, Proposal) {
    let mut h = Harness::new();
    h.ready_host("h1", 16, 65536);
    h.ready_host("h2", 16, 65536);
    for c in [nat_network("default", "10.0.0.0/24"), dir_pool("images", true, 1 << 20)] {
        h.exec(c).unwrap();
    }
    let vol = VolumeRef::new("images", "root");
    h.exec_volume(new_volume("images", "root", VolumeFormat::Qcow2, 4096, None)).unwrap();
    let mut spec = kernel_spec(2, 2048);
    spec.disks.push(Disk { volume: vol, read_only: false });
    spec.nics.push(Nic { network: "default".into(), mac: None });
    h.exec(Command::DefineDomain { name: "web".into(), spec }).unwrap();
    h.exec(Command::StartDomain { name: "web".into() }).unwrap();
    let d = h.state.domain("web").unwrap();
    let (host, generation) = (d.status.host.clone().unwrap(), d.status.generation);
    h.exec(Command::ReportObservation {
        domain: "web".into(),
        host,
        generation,
        phase: ObservedPhase::Running,
        reason: None,
    })
    .unwrap();
    h.take_snapshot("web", "before").unwrap();
    h.exec(Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: None }).unwrap();
    let id = *h.state.migrations().keys().next().unwrap();
    let command = Command::ReportMigrationProgress { id, phase: MigrationPhase::Transferring };
    let request = Request {
        request_id: "golden-proposal".into(),
        principal: "golden".into(),
        caller: controlplane::Caller::Cluster,
        command,
    };
    let Ok(Decision::Propose(p)) = controlplane::decide(&h.state, &request, 1_764_000_000_000) else {
        panic!("migration progress decides");
    };
    (h, p)
}

fn check_fixed_bytes<T: Durable + PartialEq + std::fmt::Debug>(name: &str, fresh: &T) -> T {
    let path = dir().join(name);
    if writing() && !path.exists() {
        std::fs::write(&path, codec::encode(fresh)).unwrap();
    }
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with DROVER_WRITE_GOLDEN=1", path.display()));
    let value: T = codec::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(codec::encode(&value), bytes, "{name} re-encodes to other bytes");
    value
}

fn read_golden<T: Durable>(name: &str) -> (T, Vec<u8>) {
    let bytes = std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    (codec::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")), bytes)
}

/// Today's payload of a proposal written by a format before 8: the same bytes, then the
/// trace format 8 added and the term format 12 added (neither).
fn payload_today(old_bytes: &[u8]) -> Vec<u8> {
    [&old_bytes[5..], &[0u8, 0u8][..]].concat()
}

/// Today's payload of a proposal written by formats 8 to 11: the same bytes, then the
/// term format 12 added (none).
fn payload_with_no_term(old_bytes: &[u8]) -> Vec<u8> {
    [&old_bytes[5..], &[0u8][..]].concat()
}

/// The rich state saying limits, with a bearer token (format 9 records them).
fn rich_state_with_a_token() -> (State, Proposal) {
    let (mut h, p) = rich_harness_saying_limits();
    h.exec(token_command()).unwrap();
    (h.state, p)
}

fn token_command() -> Command {
    Command::CreateToken {
        name: "ci".into(),
        role: Role::Viewer,
        secret_sha256: [0x5a; 32],
        ttl_ms: 3_600_000,
    }
}

fn trace_of(mut proposal: Proposal) -> Proposal {
    proposal.trace = Some(TraceParent { trace_id: [0xab; 16], span_id: [0xcd; 8], flags: 1 });
    proposal
}

/// The state with a token, its first migration aborted and a second one copying: the
/// target prepared (format 10 records its address) and the source's progress reported.
/// The proposal is the source's next progress report.
fn rich_state_migrating() -> (State, Proposal) {
    let (h, p) = rich_harness_migrating();
    (h.state, p)
}

fn rich_harness_migrating() -> (Harness, Proposal) {
    let (mut h, _) = rich_harness_saying_limits();
    h.exec(token_command()).unwrap();
    let first = *h.state.migrations().keys().next().unwrap();
    h.exec(Command::AbortMigration { id: first, reason: "a second try".into() }).unwrap();
    h.exec(Command::StartMigration {
        domain: "web".into(),
        target: Some("h2".into()),
        max_downtime_ms: None,
    })
    .unwrap();
    let id = *h.state.migrations().keys().last().unwrap();
    let ready = MigrationReport::TargetReady { address: "127.0.0.1:7100".into() };
    h.exec(Command::ReportMigration { id, host: "h2".into(), report: ready }).unwrap();
    let copying = MigrationReport::Copying(progress());
    h.exec(Command::ReportMigration { id, host: "h1".into(), report: copying }).unwrap();
    let more = MigrationProgress { rounds: 5, remaining_bytes: 1 << 16, ..progress() };
    let request = Request {
        request_id: "golden-proposal".into(),
        principal: "golden".into(),
        caller: controlplane::Caller::Cluster,
        command: Command::ReportMigration {
            id,
            host: "h1".into(),
            report: MigrationReport::Completing(more),
        },
    };
    let Ok(Decision::Propose(p)) = controlplane::decide(&h.state, &request, 1_764_000_000_000) else {
        panic!("the source's report decides");
    };
    (h, p)
}

/// The migrating state with the operator's longest pause set (format 11 records it); the
/// proposal changes it again.
fn rich_state_with_a_pause() -> (State, Proposal) {
    let (mut h, _) = rich_harness_migrating();
    let id = *h.state.migrations().keys().last().unwrap();
    h.exec(Command::SetMigrationDowntime { id, max_downtime_ms: 25 }).unwrap();
    let request = Request {
        request_id: "golden-proposal".into(),
        principal: "golden".into(),
        caller: controlplane::Caller::Cluster,
        command: Command::SetMigrationDowntime { id, max_downtime_ms: 40 },
    };
    let Ok(Decision::Propose(p)) = controlplane::decide(&h.state, &request, 1_764_000_000_000) else {
        panic!("the operator's change decides");
    };
    (h.state, p)
}

/// The proposal a leader of term 7 decided from its leases: a host turns suspect.
fn proposal_in_a_term() -> Proposal {
    let (h, _) = rich_harness_migrating();
    let request = Request {
        request_id: "golden-proposal".into(),
        principal: controlplane::ha::PRINCIPAL.into(),
        caller: controlplane::Caller::Cluster,
        command: Command::SetHostState { name: "h2".into(), state: HostState::Suspect },
    };
    let Ok(Decision::Propose(mut p)) = controlplane::decide(&h.state, &request, 1_764_000_000_000) else {
        panic!("the leader's suspicion decides");
    };
    p.term = Some(7);
    trace_of(p)
}

#[test]
fn golden_state_and_proposal_decode_and_reencode_identically() {
    let (state, _) = rich_state_with_a_pause();
    let new_state: State = check_fixed_bytes("state-12.bin", &state);
    invariants::check(&new_state).unwrap();
    assert_eq!(new_state, state, "today's rich state is the one written by format 12");
    let proposal = proposal_in_a_term();
    let new: Proposal = check_fixed_bytes("proposal-12.bin", &proposal);
    assert_eq!(new, proposal, "format 12 carries the term a proposal holds in");
    assert_eq!(new.term, Some(7));
}

#[test]
fn format_11_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state_with_a_pause();
    let m = state.migrations().values().last().unwrap();
    assert_eq!((m.target_address.as_deref(), m.progress), (Some("127.0.0.1:7100"), progress()));
    assert_eq!(m.max_downtime_ms, Some(25));
    let (old_state, _): (State, _) = read_golden("state-11.bin");
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state, state, "format 12 changed no state");
    let (old, bytes): (Proposal, _) = read_golden("proposal-11.bin");
    assert_eq!(old.term, None, "format 11 carried no term");
    assert_eq!(old, trace_of(proposal));
    assert_eq!(codec::encode(&old)[5..], payload_with_no_term(&bytes), "format 11's payload, with no term");
}

#[test]
fn format_10_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state_migrating();
    let (old_state, _): (State, _) = read_golden("state-10.bin");
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state, state, "format 10 held no operator's longest pause");
    let (old, bytes): (Proposal, _) = read_golden("proposal-10.bin");
    assert_eq!(old, trace_of(proposal));
    assert_eq!(codec::encode(&old)[5..], payload_with_no_term(&bytes), "format 10's payload, with no term");
}

#[test]
fn format_9_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state_with_a_token();
    let (old_state, _): (State, _) = read_golden("state-9.bin");
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state, state, "format 9 held no target addresses nor progress");
    let (old, bytes): (Proposal, _) = read_golden("proposal-9.bin");
    assert_eq!(old, trace_of(proposal));
    assert_eq!(codec::encode(&old)[5..], payload_with_no_term(&bytes), "format 9's payload, with no term");
}

#[test]
fn format_8_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state_saying_limits();
    let (old_state, _): (State, _) = read_golden("state-8.bin");
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state, state, "format 8 held no tokens");
    let (old, bytes): (Proposal, _) = read_golden("proposal-8.bin");
    let proposal = trace_of(proposal);
    assert_eq!(old, proposal);
    assert_eq!(codec::encode(&old)[5..], payload_with_no_term(&bytes), "format 8's payload, with no term");
}

#[test]
fn format_7_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state_saying_limits();
    let (old_state, _): (State, _) = read_golden("state-7.bin");
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state, state, "format 8 changed no state");
    let (old, bytes): (Proposal, _) = read_golden("proposal-7.bin");
    assert_eq!(old.trace, None, "format 7 carried no trace");
    assert_eq!(old, proposal);
    assert_eq!(
        codec::encode(&old)[5..],
        payload_today(&bytes),
        "a format 7 proposal's payload, with no trace"
    );
}

#[test]
fn format_5_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state();
    let (old_state, _): (State, _) = read_golden("state-5.bin");
    invariants::check(&old_state).unwrap();
    // Format 5 held today's rich state but for the network's VNI, which it did not record:
    // the network's VNI is derived from its name.
    let (old_net, net) = (old_state.network("default").unwrap(), state.network("default").unwrap());
    assert_eq!((old_net.vni, net.vni), (0, 1));
    assert_ne!(old_net.vni(), 0);
    assert_eq!((&old_net.leases, &old_net.config), (&net.leases, &net.config));
    assert_eq!(old_state.domains(), state.domains());
    assert_eq!(old_state.volumes(), state.volumes());
    assert_eq!(old_state.snapshots(), state.snapshots());
    assert_eq!(old_state.hosts(), state.hosts());
    let (old, bytes): (Proposal, _) = read_golden("proposal-5.bin");
    assert_eq!(old, proposal);
    assert_eq!(
        codec::encode(&old)[5..],
        payload_today(&bytes),
        "a proposal's payload is format 5's, with no trace"
    );
}

#[test]
fn format_6_states_and_proposals_still_decode() {
    let (state, proposal) = rich_state();
    let (old_state, _): (State, _) = read_golden("state-6.bin");
    invariants::check(&old_state).unwrap();
    // Format 6 held today's rich state but for the hosts' VM limits, which no host said.
    assert!(old_state.hosts().values().all(|h| h.vm_limits.is_none()));
    assert_eq!(old_state.hosts(), state.hosts());
    assert_eq!(old_state.domains(), state.domains());
    assert_eq!(old_state.networks(), state.networks());
    assert_eq!(old_state.volumes(), state.volumes());
    let (old, bytes): (Proposal, _) = read_golden("proposal-6.bin");
    assert_eq!(old, proposal);
    assert_eq!(
        codec::encode(&old)[5..],
        payload_today(&bytes),
        "a proposal's payload is format 6's, with no trace"
    );
}

/// A state and proposal of formats 2 to 4: the rich state of their day (its volume made
/// before hosts made files, so record-only now), and a proposal whose payload is the
/// same in every format.
fn check_old_format(version: u16) {
    let (old_state, _): (State, _) = read_golden(&format!("state-{version}.bin"));
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state.domains().len(), 1);
    assert_eq!(old_state.migrations().len(), 1);
    assert_eq!(old_state.snapshot("web", "before").unwrap().state.name(), "taken");
    let root = old_state.volume(&VolumeRef::new("images", "root")).unwrap();
    assert_eq!(root.state, VolumeState::RecordOnly, "format {version} volumes had no files made by hosts");
    assert_eq!((root.capacity_mib, root.host.as_deref()), (4096, None));
    let (old, bytes): (Proposal, _) = read_golden(&format!("proposal-{version}.bin"));
    assert_eq!(old.request_id, "golden-proposal");
    assert_eq!(
        codec::encode(&old)[5..],
        payload_today(&bytes),
        "a proposal's payload is format {version}'s, with no trace"
    );
}

#[test]
fn format_4_states_and_proposals_still_decode() {
    check_old_format(4);
}

#[test]
fn format_3_states_and_proposals_still_decode() {
    check_old_format(3);
}

#[test]
fn format_2_states_and_proposals_still_decode() {
    check_old_format(2);
}

#[test]
fn format_1_states_and_proposals_still_decode() {
    let (old_state, _): (State, _) = read_golden("state-1.bin");
    invariants::check(&old_state).unwrap();
    assert_eq!(old_state.domains().len(), 1);
    assert_eq!(old_state.migrations().len(), 1);
    // A snapshot of format 1 was only a record: no host ever wrote a file for it.
    let before = old_state.snapshot("web", "before").unwrap();
    assert_eq!(before.state, SnapshotState::RecordOnly);
    assert_eq!(old_state.domain("web").unwrap().current_snapshot.as_deref(), Some("before"));
    assert_eq!(old_state.domain("web").unwrap().restore_from, None);
    let (old, bytes): (Proposal, _) = read_golden("proposal-1.bin");
    assert_eq!(old.request_id, "golden-proposal");
    assert_eq!(
        codec::encode(&old)[5..],
        payload_today(&bytes),
        "a proposal's payload is format 1's, with no trace"
    );
}
