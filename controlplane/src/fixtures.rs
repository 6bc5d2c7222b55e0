//! Builders for well-formed commands and a single-replica harness that decides and
//! applies in one step. For tests, benches and the simulator (feature `fixtures`).

use crate::model::{
    Boot, DomainSpec, HaPolicy, HostState, Labels, NetworkConfig, NetworkMode, Placement, PoolConfig,
    PoolKind, Resources, SnapshotKind, VolumeFormat, VolumeRef, VolumeState,
};
use crate::{
    apply_proposal, decide, Command, Committed, Decision, EventEnvelope, ProposalOutcome, Rejection, Request,
    SnapshotOutcome, State, VolumeOutcome,
};

/// A domain spec that boots a kernel directly, with no disks or NICs.
pub fn kernel_spec(vcpus: u32, memory_mib: u64) -> DomainSpec {
    DomainSpec {
        vcpus,
        memory_mib,
        boot: Boot::Kernel {
            kernel: "/var/lib/drover/vmlinux".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        },
        disks: Vec::new(),
        nics: Vec::new(),
        ha: HaPolicy::None,
        placement: Placement::default(),
    }
}

pub fn register_host(name: &str, vcpus: u32, memory_mib: u64) -> Command {
    Command::RegisterHost {
        name: name.into(),
        address: format!("127.0.0.1:{}", 7000 + name.len()),
        capacity: Resources { vcpus, memory_mib },
        labels: Labels::new(),
        vm_limits: None,
    }
}

pub fn nat_network(name: &str, cidr: &str) -> Command {
    Command::CreateNetwork {
        name: name.into(),
        config: NetworkConfig {
            mode: NetworkMode::Nat,
            cidr: Some(cidr.parse().expect("fixture CIDR parses")),
            gateway: None,
            bridge: None,
        },
    }
}

pub fn dir_pool(name: &str, shared: bool, capacity_mib: u64) -> Command {
    Command::CreatePool {
        name: name.into(),
        config: PoolConfig {
            kind: PoolKind::Dir,
            path: format!("/var/lib/drover/pools/{name}"),
            shared,
            capacity_mib,
        },
    }
}

/// `CreateVolume` of an empty volume (a qcow2 overlay on `backing` with one).
pub fn new_volume(
    pool: &str,
    name: &str,
    format: VolumeFormat,
    capacity_mib: u64,
    backing: Option<&str>,
) -> Command {
    Command::CreateVolume {
        volume: VolumeRef::new(pool, name),
        format,
        capacity_mib,
        backing: backing.map(str::to_owned),
        preallocate: false,
        import: None,
    }
}

/// One replica's worth of state, driven command by command.
#[derive(Debug, Default)]
pub struct Harness {
    pub state: State,
    /// Every envelope applied so far, in order: the archive.
    pub envelopes: Vec<EventEnvelope>,
    pub now_ms: u64,
    next_request: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness { now_ms: 1_700_000_000_000, ..Harness::default() }
    }

    /// A fresh request id for `command`.
    pub fn request(&mut self, command: Command) -> Request {
        self.next_request += 1;
        Request {
            request_id: format!("req-{}", self.next_request),
            principal: "test".into(),
            caller: crate::Caller::Cluster,
            command,
        }
    }

    /// Decide and apply a request, as a leader with no concurrent writers would.
    pub fn submit(&mut self, request: &Request) -> Result<Committed, Rejection> {
        self.now_ms += 1;
        match decide(&self.state, request, self.now_ms)? {
            Decision::AlreadyCommitted(first) => Ok(first),
            Decision::Propose(proposal) => match apply_proposal(&mut self.state, &proposal) {
                (ProposalOutcome::Applied(c), envelopes) => {
                    self.envelopes.extend(envelopes);
                    Ok(c)
                }
                (ProposalOutcome::Duplicate(c), _) => Ok(c),
                (
                    conflict @ (ProposalOutcome::Conflict { .. }
                    | ProposalOutcome::Unfit { .. }
                    | ProposalOutcome::OutOfTerm { .. }),
                    _,
                ) => {
                    panic!("a proposal decided on the latest state conflicts: {conflict:?}")
                }
            },
        }
    }

    /// Decide and apply `command` under a fresh request id.
    pub fn exec(&mut self, command: Command) -> Result<Committed, Rejection> {
        let request = self.request(command);
        self.submit(&request)
    }

    /// Take a full snapshot of a running domain, as its host would: ask for it, then
    /// report it taken.
    pub fn take_snapshot(&mut self, domain: &str, name: &str) -> Result<Committed, Rejection> {
        self.exec(Command::CreateSnapshot {
            domain: domain.into(),
            name: name.into(),
            kind: SnapshotKind::Full,
        })?;
        let d = self.state.domain(domain).expect("the snapshot was asked for, so the domain exists");
        let (host, generation) = (d.status.host.clone().expect("placed"), d.status.generation);
        let id = self.state.snapshot(domain, name).expect("asked for").id;
        self.exec(Command::ReportSnapshot {
            domain: domain.into(),
            name: name.into(),
            id,
            host,
            generation,
            outcome: SnapshotOutcome::Taken { bytes: 1 << 20, duration_ms: 3 },
        })
    }

    /// Report the operation pending on `volume` done, as the host asked would once it
    /// made, grew or removed the file. `None` when nothing is pending.
    pub fn host_carries_out(&mut self, volume: &VolumeRef) -> Option<Result<Committed, Rejection>> {
        let VolumeState::Pending { host, id, .. } = &self.state.volume(volume)?.state else { return None };
        let (host, id) = (host.clone(), *id);
        Some(self.exec(Command::ReportVolume {
            volume: volume.clone(),
            host,
            id,
            outcome: VolumeOutcome::Done { allocation_mib: 1 },
        }))
    }

    /// Exec a volume command (create, resize, delete), then carry out what it asked of
    /// a host. Returns the command's own commit.
    pub fn exec_volume(&mut self, command: Command) -> Result<Committed, Rejection> {
        let volume = match &command {
            Command::CreateVolume { volume, .. }
            | Command::ResizeVolume { volume, .. }
            | Command::DeleteVolume { volume } => volume.clone(),
            other => panic!("{} is not a volume command", other.name()),
        };
        let committed = self.exec(command)?;
        if let Some(report) = self.host_carries_out(&volume) {
            report.expect("the host's report of a volume operation is accepted");
        }
        Ok(committed)
    }

    /// Register a host and mark it ready.
    pub fn ready_host(&mut self, name: &str, vcpus: u32, memory_mib: u64) {
        self.exec(register_host(name, vcpus, memory_mib)).expect("fixture host registers");
        self.exec(Command::SetHostState { name: name.into(), state: HostState::Ready })
            .expect("fixture host readies");
    }
}
