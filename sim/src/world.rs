//! The world: control replicas, hosts and clients on one simulated network, disk and
//! clock, and the fault schedule, all drawn from one seed. [`run`] plays one seed to the
//! end and checks every invariant.
//!
//! The run: start the replicas (replica 1 initializes the cluster with all of them as
//! voters), the hostds and the clients; for `chaos_ms`, draw a fault every few hundred
//! milliseconds while the clients run their workload; then heal everything (partitions,
//! weather, disks; restart every crashed replica and hostd), let the clients finish and
//! give the cluster `settle_ms` to reach the liveness condition; then compare replicas,
//! archives and the clients' history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::state_hash;
use hostd::driver::Driver;
use raft::type_config::NodeId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::client;
use crate::clock::Clocks;
use crate::config::SimConfig;
use crate::history::Outcome;
use crate::host;
use crate::invariants::{self, Violation};
use crate::network::{Net, Weather};
use crate::replica::Replica;
use crate::shared::{Core, HostInfo};
use crate::trace::Trace;

/// Network ids: replicas are 1..=R, hosts from here, clients from [`CLIENT_BASE`].
pub const HOST_BASE: NodeId = 100;
pub const CLIENT_BASE: NodeId = 200;
/// How often the world looks at replicas (supervision, hash samples).
const STEP_MS: u64 = 50;
const SAMPLE_EVERY_MS: u64 = 1_000;
/// A leader acknowledged by a quorum within this long counts as able to commit.
const LEADER_CONTACT_MS: u64 = 300;

/// What one run found.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub seed: u64,
    pub trace_hash: String,
    pub trace: Vec<String>,
    pub violations: Vec<Violation>,
    pub simulated_ms: u64,
    pub wall: Duration,
    pub writes_acked: u64,
    pub writes_refused: u64,
    pub writes_unknown: u64,
    pub faults: u64,
}

/// Where a host's hostd stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostRun {
    Up,
    /// hostd is down; it restarts at this time.
    Down {
        restart_ms: u64,
    },
    /// The machine is gone for good.
    Lost,
}

struct World {
    core: Arc<Core>,
    replicas: Vec<Replica>,
    /// Crashed replicas restart at these times.
    replica_restart: BTreeMap<NodeId, u64>,
    /// Replicas whose disk fails writes until then.
    failing: BTreeMap<NodeId, u64>,
    hosts: Vec<HostRun>,
    /// Each host's learner replica (node id = the host's network id), when hosts hold
    /// replicas; it lives and dies with hostd.
    learners: Vec<Replica>,
    /// Learners the cluster's membership has taken in.
    joined: BTreeSet<NodeId>,
    /// State hashes by replica, with the applied index they were taken at.
    hashes: BTreeMap<NodeId, (u64, controlplane::StateHash)>,
    /// Replicas found equal in state to another replica (the first of their group) at
    /// an applied index both still stood at: a state changes only with its applied index
    /// (or a restart, which forgets the pairs), so the pair need not be compared again
    /// until either moves.
    verified: BTreeMap<NodeId, (NodeId, u64)>,
    boots: Vec<u64>,
    failover: invariants::failover::FailoverWatch,
    fencing: invariants::fencing::FencingWatch,
    clients: Vec<tokio::task::JoinHandle<()>>,
    rng: ChaCha8Rng,
    faults: u64,
    durability: invariants::durability::DurabilityWatch,
}

/// Play seed `cfg.seed` to the end. Runs on its own single-threaded tokio runtime with a
/// paused clock and seeded randomness, so the same seed gives the same trace.
pub fn run(cfg: &SimConfig) -> RunOutcome {
    let started = Instant::now();
    raft::runtime::seed_thread_rng(cfg.seed);
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&cfg.seed.to_le_bytes()));
    let rt = builder.build().expect("tokio runtime");
    let mut outcome = rt.block_on(play(cfg.clone()));
    drop(rt);
    raft::durability::observe(None);
    raft::runtime::unseed_thread_rng();
    outcome.wall = started.elapsed();
    outcome
}

/// Whether this build can replay seeds bit-identically (tokio's own randomness seeded).
pub const DETERMINISTIC: bool = cfg!(tokio_unstable);

async fn play(cfg: SimConfig) -> RunOutcome {
    let net = Net::new(cfg.seed ^ 0x6e65_7477_6f72_6b00);
    let replica_ids: Vec<NodeId> = (1..=cfg.replicas).collect();
    let snapshots = hostd::fake::SnapshotStore::default();
    let volumes = hostd::fake::VolumeStore::default();
    let links = hostd::fake::MigrationLinks::default();
    let hosts: Vec<HostInfo> =
        (0..cfg.hosts).map(|i| host::host_info(i, HOST_BASE + i, &snapshots, &volumes, &links)).collect();
    let core = Arc::new(Core {
        cfg: cfg.clone(),
        net,
        clocks: Clocks::new(),
        trace: Trace::new(cfg.keep_trace),
        history: Mutex::default(),
        violations: Mutex::default(),
        hosts,
        replica_ids: replica_ids.clone(),
        snapshots,
        volumes,
        migration_links: links,
    });
    let mut world = World {
        core: core.clone(),
        replicas: replica_ids.iter().map(|id| Replica::new(*id)).collect(),
        replica_restart: BTreeMap::new(),
        failing: BTreeMap::new(),
        hosts: vec![HostRun::Up; cfg.hosts as usize],
        learners: (0..cfg.hosts).map(|i| Replica::new(HOST_BASE + i)).collect(),
        joined: BTreeSet::new(),
        hashes: BTreeMap::new(),
        verified: BTreeMap::new(),
        boots: vec![0; cfg.hosts as usize],
        failover: Default::default(),
        fencing: Default::default(),
        clients: Vec::new(),
        rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6661_756c_7473),
        faults: 0,
        durability: invariants::durability::DurabilityWatch::install(
            cfg.seed ^ 0x0062_7567_6769_6679,
            replica_ids.iter().copied(),
        ),
    };
    world.boot().await;
    world.chaos().await;
    world.heal().await;
    world.settle().await;
    world.finish()
}

impl World {
    fn now(&self) -> u64 {
        self.core.clocks.elapsed_ms()
    }

    fn trace(&self, line: String) {
        self.core.trace.record(self.now(), line);
    }

    /// Whatever replica `r` promised durable before it went down must be on its disk.
    fn check_durable(&self, r: &Replica) {
        match raft::durability::Durable::read(&r.disk, &r.disk) {
            Ok(durable) => {
                if let Some(broken) = self.durability.check_restart(r.id, &durable) {
                    self.core.violation("durability", format!("replica {} restarts: {broken}", r.id));
                }
            }
            Err(e) => {
                self.core.violation("durability", format!("replica {}'s disk does not read: {e}", r.id))
            }
        }
    }

    async fn start_replica(&mut self, i: usize) {
        let id = self.replicas[i].id;
        self.check_durable(&self.replicas[i]);
        self.forget(id);
        let holders = self.archive_holders();
        match self.replicas[i].start(&self.core.net, &self.core.clocks, self.core.cfg.bug, &holders).await {
            Ok(_) => self.trace(format!("replica {id} up")),
            Err(e) => match self.failing.get(&id).copied() {
                // On a disk that fails every write, a replica cannot start: its supervisor
                // tries again once the disk works.
                Some(until) => {
                    self.replica_restart.insert(id, until + 100);
                    self.trace(format!(
                        "replica {id} cannot start on its failing disk; tries again at {}",
                        until + 100
                    ));
                }
                // On a working disk, whatever a crash left behind must be enough to start.
                None => self.core.violation("replica_starts", format!("replica {id} cannot start: {e}")),
            },
        }
    }

    /// Forget what was known of replica `id`'s state (it restarts).
    fn forget(&mut self, id: NodeId) {
        self.hashes.remove(&id);
        self.verified.retain(|other, (first, _)| *other != id && *first != id);
    }

    async fn start_hostd(&mut self, i: usize) {
        if self.core.cfg.host_replicas {
            let id = self.learners[i].id;
            self.check_durable(&self.learners[i]);
            self.forget(id);
            let holders = self.archive_holders();
            if let Err(e) =
                self.learners[i].start(&self.core.net, &self.core.clocks, self.core.cfg.bug, &holders).await
            {
                self.core.violation("replica_starts", format!("host replica {id} cannot start: {e}"));
            }
        }
        self.boots[i] += 1;
        let (core, boot, id) = (self.core.clone(), self.boots[i], self.core.hosts[i].net_id);
        raft::runtime::spawn_on_node(id, host::hostd(core, i, boot));
        self.hosts[i] = HostRun::Up;
        self.trace(format!("hostd {} up (boot {boot})", self.core.hosts[i].name));
    }

    async fn boot(&mut self) {
        for i in 0..self.replicas.len() {
            self.start_replica(i).await;
        }
        let members: BTreeMap<NodeId, raft::type_config::Node> = self
            .core
            .replica_ids
            .iter()
            .map(|id| (*id, raft::type_config::Member::new(format!("replica-{id}"), format!("replica-{id}"))))
            .collect();
        if let Some(live) = self.core.net.live(1) {
            if let Err(e) = live.raft.initialize(members).await {
                self.core.violation("replica_starts", format!("initializing the cluster: {e}"));
            }
        }
        for i in 0..self.hosts.len() {
            self.start_hostd(i).await;
        }
        let core = self.core.clone();
        let setup_id = CLIENT_BASE + self.core.cfg.clients;
        self.clients.push(raft::runtime::spawn_on_node(setup_id, client::setup(core, setup_id)));
        for c in 0..self.core.cfg.clients {
            let core = self.core.clone();
            let task =
                raft::runtime::spawn_on_node(CLIENT_BASE + c, client::client(core, c, CLIENT_BASE + c));
            self.clients.push(task);
        }
    }

    /// Restarts that are due, crashed rafts (a failed disk write stops openraft), hash samples.
    async fn supervise(&mut self, next_sample: &mut u64) {
        let now = self.now();
        for (id, promise) in self.durability.take_crashed() {
            let i = (id - 1) as usize;
            if self.replicas[i].up {
                self.replicas[i].crash(&self.core.net);
                let restart = now + self.rng.gen_range(100..3_000);
                self.replica_restart.insert(id, restart);
                self.faults += 1;
                self.trace(format!(
                    "fault: replica {id} crashed right after {promise:?}; restarts at {restart}"
                ));
            }
        }
        let due: Vec<NodeId> =
            self.replica_restart.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.replica_restart.remove(&id);
            self.start_replica((id - 1) as usize).await;
        }
        let healed: Vec<NodeId> =
            self.failing.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect();
        for id in healed {
            self.failing.remove(&id);
            self.replicas[(id - 1) as usize].disk.fail_writes(false);
            self.replicas[(id - 1) as usize].archive_disk.fail_writes(false);
            self.trace(format!("replica {id} disk writes succeed again"));
        }
        for i in 0..self.replicas.len() {
            let id = self.replicas[i].id;
            let Some(live) = self.core.net.live(id) else { continue };
            let stopped = live.raft.metrics().borrow().running_state.is_err();
            if stopped {
                // The process exits on a storage error; its supervisor restarts it.
                self.replicas[i].crash(&self.core.net);
                let restart = self.failing.get(&id).copied().unwrap_or(now) + 100;
                self.replica_restart.insert(id, restart);
                self.trace(format!("replica {id} stopped on a storage error; restarts at {restart}"));
            }
        }
        for i in 0..self.hosts.len() {
            if let HostRun::Down { restart_ms } = self.hosts[i] {
                if restart_ms <= now {
                    self.start_hostd(i).await;
                }
            }
        }
        self.join_learners().await;
        let leader = self.leader_in_contact().and_then(|l| self.core.net.live(l));
        let (found, fenced) = {
            let state = leader.as_ref().map(|l| l.shared.state.read().expect("state lock"));
            let lease_end = |name: &str| {
                let host = self.core.hosts.iter().find(|h| h.name == name)?;
                // The driver's lease is on the monotonic clock; `now` counts from the run's start.
                let end = host.driver.lock().expect("driver lock").lease_deadline_ms?;
                Some(end.saturating_sub(crate::clock::EPOCH_MS))
            };
            (
                self.failover.observe(now, state.as_deref()),
                self.fencing.observe(now, state.as_deref(), lease_end),
            )
        };
        for detail in found {
            self.core.violation("failover", detail);
        }
        for detail in fenced {
            self.core.violation("fencing", detail);
        }
        if now >= *next_sample {
            *next_sample = now + SAMPLE_EVERY_MS;
            let mut samples = Vec::new();
            let mut line = String::from("replicas");
            let ids = self.replica_and_learner_ids();
            let index_of =
                |id: NodeId| self.core.net.live(id).map(|l| l.shared.last_applied().map_or(0, |a| a.index));
            let indexes: Vec<(NodeId, Option<u64>)> = ids.iter().map(|id| (*id, index_of(*id))).collect();
            for (id, index) in &indexes {
                let Some(index) = index else { continue };
                let live = self.core.net.live(*id).expect("running");
                let (term, leader) = {
                    let m = live.raft.metrics();
                    let m = m.borrow();
                    (m.current_term, m.current_leader.unwrap_or(0))
                };
                // Only replicas that share their index with another can be compared. The
                // first of a group is hashed; the others are compared with it as states
                // (cheaper than encoding and hashing each) and hashed only if they differ.
                let group: Vec<NodeId> =
                    indexes.iter().filter(|(_, i)| *i == Some(*index)).map(|(g, _)| *g).collect();
                let hash = match group.as_slice() {
                    [_] => None,
                    [first, ..] if first == id => self.hash_of(*id).map(|(_, h)| h),
                    [first, ..] => {
                        let known = self.verified.get(id) == Some(&(*first, *index));
                        let same = known
                            || self.core.net.live(*first).is_some_and(|f| {
                                *f.shared.state.read().expect("state lock")
                                    == *live.shared.state.read().expect("state lock")
                            });
                        if same {
                            self.verified.insert(*id, (*first, *index));
                        }
                        match self.hash_of(*first) {
                            Some((_, h)) if same => Some(h),
                            _ => self.hash_of(*id).map(|(_, h)| h),
                        }
                    }
                    [] => None,
                };
                let shown = hash.map_or_else(|| "-".to_owned(), |h| h.to_string()[..8].to_owned());
                line.push_str(&format!(" {id}@{index}:{shown}/t{term}/l{leader}"));
                if let Some(hash) = hash {
                    samples.push((*id, *index, hash));
                }
            }
            self.trace(line);
            for detail in invariants::replica_hashes::check(&samples) {
                self.core.violation("replica_hashes", detail);
            }
        }
    }

    /// Every replica that holds an archive, learners included (as members, production's
    /// backfill asks them all).
    fn archive_holders(&self) -> Vec<NodeId> {
        let mut ids = self.core.replica_ids.clone();
        if self.core.cfg.host_replicas {
            ids.extend(self.learners.iter().map(|l| l.id));
        }
        ids
    }

    /// The voters, then the learners of the hosts that still exist.
    fn replica_and_learner_ids(&self) -> Vec<NodeId> {
        let mut ids = self.core.replica_ids.clone();
        if self.core.cfg.host_replicas {
            ids.extend(
                (0..self.hosts.len())
                    .filter(|i| self.hosts[*i] != HostRun::Lost)
                    .map(|i| self.learners[i].id),
            );
        }
        ids
    }

    /// Ask the leader to take in every host replica not yet a member (as hostd's join does).
    async fn join_learners(&mut self) {
        if !self.core.cfg.host_replicas {
            return;
        }
        let Some(leader) = self.leader().and_then(|l| self.core.net.live(l)) else { return };
        for r in &self.learners {
            if self.joined.contains(&r.id) {
                continue;
            }
            let node = raft::type_config::Member::new(format!("host-replica-{}", r.id), "");
            let add = leader.raft.add_learner(r.id, node, false);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1_000), add).await {
                self.joined.insert(r.id);
                self.core.trace.record(self.core.clocks.elapsed_ms(), format!("learner {} joined", r.id));
            }
        }
    }

    /// Kill hostd `h` (and the replica it holds).
    fn kill_host(&mut self, h: usize) {
        if self.core.cfg.host_replicas {
            self.learners[h].crash(&self.core.net);
        } else {
            raft::runtime::abort_node(self.core.hosts[h].net_id);
        }
    }

    async fn chaos(&mut self) {
        self.durability.arm(self.core.cfg.faults);
        let mut next_fault = 1_000 + self.rng.gen_range(0..1_000);
        let mut next_sample = 0;
        while self.now() < self.core.cfg.chaos_ms {
            tokio::time::sleep(Duration::from_millis(STEP_MS)).await;
            self.supervise(&mut next_sample).await;
            if self.core.cfg.faults && self.now() >= next_fault {
                self.fault();
                next_fault = self.now() + self.rng.gen_range(200..1_500);
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.core.replica_ids.iter().find_map(|id| {
            let live = self.core.net.live(*id)?;
            live.proposer.is_leader().then_some(*id)
        })
    }

    /// The leader, if a quorum acknowledged it within the last heartbeat or two (one cut
    /// off from the others still believes it leads, but can commit nothing).
    fn leader_in_contact(&self) -> Option<NodeId> {
        let id = self.leader()?;
        let live = self.core.net.live(id)?;
        let ack = live.raft.metrics().borrow().millis_since_quorum_ack;
        ack.is_some_and(|ms| ms <= LEADER_CONTACT_MS).then_some(id)
    }

    fn every_node(&self) -> Vec<NodeId> {
        let mut all = self.core.replica_ids.clone();
        all.extend(self.core.hosts.iter().map(|h| h.net_id));
        // The clients and the operator who set the VMs up.
        all.extend((0..=self.core.cfg.clients).map(|c| CLIENT_BASE + c));
        all
    }

    fn isolate(&self, node: NodeId) {
        for other in self.every_node() {
            if other != node {
                self.core.net.cut(node, other);
                self.core.net.cut(other, node);
            }
        }
    }

    /// Draw and inject one fault.
    fn fault(&mut self) {
        self.faults += 1;
        let now = self.now();
        let replicas = self.core.replica_ids.clone();
        let pick_replica = |rng: &mut ChaCha8Rng| replicas[rng.gen_range(0..replicas.len())];
        let host_count = self.hosts.len();
        match self.rng.gen_range(0..100) {
            0..=9 => {
                let mut nodes = self.every_node();
                nodes.shuffle(&mut self.rng);
                let split = self.rng.gen_range(1..nodes.len());
                let (a, b) = nodes.split_at(split);
                for x in a {
                    for y in b {
                        self.core.net.cut(*x, *y);
                        self.core.net.cut(*y, *x);
                    }
                }
                self.trace(format!("fault: partition {a:?} | {b:?}"));
            }
            10..=14 => {
                let nodes = self.every_node();
                let from = nodes[self.rng.gen_range(0..nodes.len())];
                let to = nodes[self.rng.gen_range(0..nodes.len())];
                self.core.net.cut(from, to);
                self.trace(format!("fault: one-way cut {from} -> {to}"));
            }
            15..=21 => match self.leader() {
                Some(l) => {
                    self.isolate(l);
                    self.trace(format!("fault: isolate leader {l}"));
                }
                None => self.trace("fault: isolate leader (none)".into()),
            },
            22..=26 => {
                let h = self.rng.gen_range(0..host_count);
                for r in &replicas {
                    self.core.net.cut(self.core.hosts[h].net_id, *r);
                    self.core.net.cut(*r, self.core.hosts[h].net_id);
                }
                self.trace(format!("fault: host {} cut off from the control plane", self.core.hosts[h].name));
            }
            27..=38 => {
                self.core.net.heal();
                self.trace("fault: partitions healed".into());
            }
            40..=46 => {
                let w = Weather {
                    loss_pct: self.rng.gen_range(0..=20),
                    dup_pct: self.rng.gen_range(0..=10),
                    delay_max_ms: self.rng.gen_range(1..=60),
                };
                self.core.net.set_weather(w);
                self.trace(format!("fault: weather {w:?}"));
            }
            47..=58 => {
                let id = pick_replica(&mut self.rng);
                let i = (id - 1) as usize;
                if self.replicas[i].up {
                    self.replicas[i].crash(&self.core.net);
                    let restart = now + self.rng.gen_range(100..3_000);
                    self.replica_restart.insert(id, restart);
                    self.trace(format!("fault: replica {id} killed; restarts at {restart}"));
                }
            }
            59..=66 => {
                let h = self.rng.gen_range(0..host_count);
                if self.hosts[h] == HostRun::Up {
                    self.kill_host(h);
                    let restart_ms = now + self.rng.gen_range(100..3_000);
                    self.hosts[h] = HostRun::Down { restart_ms };
                    self.trace(format!(
                        "fault: hostd {} killed; restarts at {restart_ms}",
                        self.core.hosts[h].name
                    ));
                }
            }
            39 => {
                let h = self.rng.gen_range(0..host_count);
                let reason = "the source's certificate is not the host the target expects";
                self.core.hosts[h].driver.lock().expect("driver lock").refuse_next_incoming =
                    Some(reason.into());
                self.trace(format!(
                    "fault: {} refuses the next migration stream it takes in",
                    self.core.hosts[h].name
                ));
            }
            72 => {
                let h = self.rng.gen_range(0..host_count);
                let reason = "the snapshot file could not be written (disk full)";
                self.core.hosts[h].driver.lock().expect("driver lock").fail_next_snapshot =
                    Some(reason.into());
                self.trace(format!("fault: the next snapshot on {} fails", self.core.hosts[h].name));
            }
            73 => {
                let h = self.rng.gen_range(0..host_count);
                let reason = "the volume file could not be written (disk full)";
                self.core.hosts[h].driver.lock().expect("driver lock").fail_next_volume = Some(reason.into());
                self.trace(format!("fault: the next volume operation on {} fails", self.core.hosts[h].name));
            }
            67..=71 => {
                let h = self.rng.gen_range(0..host_count);
                let host = &self.core.hosts[h];
                let now_host = self.core.clocks.monotonic_ms();
                let mut driver = host.driver.lock().expect("driver lock");
                let live: Vec<String> = driver
                    .list(now_host)
                    .into_iter()
                    .filter(|(_, vm)| invariants::single_run::is_live(vm.phase))
                    .map(|(name, _)| name)
                    .collect();
                if let Some(victim) = live.choose(&mut self.rng) {
                    driver.crash(victim, "the VM process was killed");
                    drop(driver);
                    self.trace(format!("fault: VM {victim} on {} crashed", self.core.hosts[h].name));
                }
            }
            74..=79 => {
                let id = pick_replica(&mut self.rng);
                let ms = self.rng.gen_range(5..=200);
                self.replicas[(id - 1) as usize].disk.set_flush_delay_ms(ms);
                self.trace(format!("fault: replica {id} fsync takes {ms} ms"));
            }
            80..=84 => {
                let id = pick_replica(&mut self.rng);
                let until = now + self.rng.gen_range(200..2_000);
                self.replicas[(id - 1) as usize].disk.fail_writes(true);
                self.replicas[(id - 1) as usize].archive_disk.fail_writes(true);
                self.failing.insert(id, until);
                self.trace(format!("fault: replica {id} disk writes fail until {until}"));
            }
            85..=94 => {
                let nodes = self.every_node();
                let node = nodes[self.rng.gen_range(0..nodes.len())];
                let delta: i64 = if self.rng.gen_bool(0.5) {
                    self.rng.gen_range(-2_000..=2_000)
                } else {
                    self.rng.gen_range(-120_000..=120_000)
                };
                self.core.clocks.shift(node, delta);
                self.trace(format!("fault: clock of node {node} moves {delta} ms"));
            }
            _ => {
                let alive = self.hosts.iter().filter(|h| **h != HostRun::Lost).count();
                let h = self.rng.gen_range(0..host_count);
                if alive > 2 && self.hosts[h] != HostRun::Lost {
                    self.kill_host(h);
                    let mut driver = self.core.hosts[h].driver.lock().expect("driver lock");
                    driver.lose_host();
                    *driver = host::new_driver(
                        &self.core.snapshots,
                        &self.core.volumes,
                        &self.core.migration_links,
                        driver.vm_limits,
                    );
                    drop(driver);
                    self.isolate(self.core.hosts[h].net_id);
                    self.hosts[h] = HostRun::Lost;
                    self.trace(format!("fault: host {} lost for good with its VMs", self.core.hosts[h].name));
                }
            }
        }
    }

    fn lost_hosts(&self) -> BTreeSet<String> {
        (0..self.hosts.len())
            .filter(|i| self.hosts[*i] == HostRun::Lost)
            .map(|i| self.core.hosts[i].name.clone())
            .collect()
    }

    /// End every fault: partitions, weather, disks; restart what is down.
    async fn heal(&mut self) {
        self.durability.arm(false);
        let net = &self.core.net;
        net.heal();
        net.set_weather(Weather::CALM);
        for i in 0..self.hosts.len() {
            if self.hosts[i] == HostRun::Lost {
                self.isolate(self.core.hosts[i].net_id);
            }
        }
        for r in &self.replicas {
            r.disk.fail_writes(false);
            r.archive_disk.fail_writes(false);
            r.disk.set_flush_delay_ms(0);
        }
        self.failing.clear();
        self.trace("heal: every fault ends".into());
        let mut next_sample = 0;
        // A replica whose raft stopped is restarted by the supervisor.
        self.supervise(&mut next_sample).await;
        self.replica_restart.clear();
        for i in 0..self.replicas.len() {
            if !self.replicas[i].up {
                self.start_replica(i).await;
            }
        }
        for i in 0..self.hosts.len() {
            if let HostRun::Down { .. } = self.hosts[i] {
                self.start_hostd(i).await;
            }
        }
    }

    /// Wait, at most `settle_ms`, for the liveness condition.
    async fn settle(&mut self) {
        let deadline = self.now() + self.core.cfg.settle_ms;
        let mut next_sample = 0;
        let mut last_problem = String::new();
        while self.now() < deadline {
            tokio::time::sleep(Duration::from_millis(STEP_MS * 4)).await;
            self.supervise(&mut next_sample).await;
            // Clients finish their last writes first (each is bounded in time).
            if self.clients.iter().any(|c| !c.is_finished()) {
                continue;
            }
            match self.settled() {
                Ok(()) => {
                    self.trace("settled: every replica agrees and every domain runs as it should".into());
                    return;
                }
                Err(problem) => last_problem = problem,
            }
        }
        self.core.violation(
            "liveness",
            format!("not settled after {} ms: {last_problem}", self.core.cfg.settle_ms),
        );
    }

    fn settled(&mut self) -> Result<(), String> {
        let ids = self.replica_and_learner_ids();
        // Cheap checks first: every replica up, at one log index, with no archive hole.
        let mut index_of = Vec::new();
        for id in &ids {
            let live = self.core.net.live(*id).ok_or_else(|| format!("replica {id} is down"))?;
            if let Ok(Some((from, to))) = live.archive.first_hole() {
                return Err(format!("replica {id}'s archive still misses events {from}..={to}"));
            }
            index_of.push((*id, live.shared.last_applied().map_or(0, |l| l.index)));
        }
        if let Some((id, index)) = index_of.iter().find(|(_, i)| *i != index_of[0].1) {
            return Err(format!(
                "replica {id} is at log index {index}, replica {} at {}",
                index_of[0].0, index_of[0].1
            ));
        }
        let live = self.core.net.live(ids[0]).ok_or_else(|| "no replicas".to_string())?;
        let state = live.shared.state.read().expect("state lock");
        // Compared as states (cheaper than hashing each); hashed only to report a difference.
        for id in &ids[1..] {
            let other = self.core.net.live(*id).ok_or_else(|| format!("replica {id} is down"))?;
            let differs = *other.shared.state.read().expect("state lock") != *state;
            if differs {
                drop(state);
                let (theirs, ours) = (self.hash_of(*id), self.hash_of(ids[0]));
                return Err(format!(
                    "replica {id} has state {theirs:?}, replica {} {ours:?} at the same index",
                    ids[0]
                ));
            }
        }
        invariants::liveness::check(&state, &self.core.vms(), &self.lost_hosts())?;
        let files = self.core.snapshots.lock().expect("snapshot store lock").clone();
        invariants::snapshots::check_settled(&state, &files, &self.lost_hosts())?;
        let volumes = self.core.volumes.lock().expect("volume store lock").clone();
        invariants::volumes::check_settled(&state, &volumes, &self.lost_hosts())
    }

    /// A running replica's applied index and state hash, hashed again only when its
    /// applied index moved (or it restarted: `start_*` forget the cached hash).
    fn hash_of(&mut self, id: NodeId) -> Option<(u64, controlplane::StateHash)> {
        let live = self.core.net.live(id)?;
        let index = live.shared.last_applied().map_or(0, |l| l.index);
        if let Some((cached_index, hash)) = self.hashes.get(&id) {
            if *cached_index == index {
                return Some((index, *hash));
            }
        }
        let hash = state_hash(&live.shared.state.read().expect("state lock"));
        self.hashes.insert(id, (index, hash));
        Some((index, hash))
    }

    /// Compare replicas, archives and the clients' history; stop every task.
    fn finish(self) -> RunOutcome {
        let core = &self.core;
        // The hosts' replicas are held to the same standard as the voters.
        let lives: Vec<(NodeId, crate::network::Live)> = self
            .replica_and_learner_ids()
            .into_iter()
            .filter_map(|id| core.net.live(id).map(|live| (id, live)))
            .collect();
        // Nothing runs while the checks do, so the states are read in place.
        let guards: Vec<_> =
            lives.iter().map(|(id, live)| (*id, live.shared.state.read().expect("state lock"))).collect();
        let states: Vec<(NodeId, &controlplane::State)> = guards.iter().map(|(id, s)| (*id, &**s)).collect();
        let mut archives: Vec<invariants::archive_replay::ReadArchive> = Vec::new();
        for (id, live) in &lives {
            let read = invariants::archive_replay::ReadArchive::read(*id, &live.archive, &archives);
            archives.push(read);
        }
        let history = std::mem::take(&mut *core.history.lock().expect("history lock"));
        for detail in invariants::acked_writes::check(&history.ops, &states) {
            core.violation("acked_writes", detail);
        }
        for ((_, state), archive) in states.iter().zip(&archives) {
            for detail in invariants::archive_replay::check_replica(archive, state) {
                core.violation("archive_replay", detail);
            }
        }
        for detail in invariants::archive_replay::check_agree(&archives) {
            core.violation("archive_replay", detail);
        }
        for detail in invariants::rights::check(&history.ops, &archives) {
            core.violation("rights", detail);
        }
        if let Some((_, state)) = states.first() {
            for detail in invariants::linearizable::check(&history.ops, &history.reads, state) {
                core.violation("linearizable", detail);
            }
            let files = core.snapshots.lock().expect("snapshot store lock").clone();
            if let Err(detail) = invariants::snapshots::check_settled(state, &files, &self.lost_hosts()) {
                core.violation("snapshots", detail);
            }
            let volumes = core.volumes.lock().expect("volume store lock").clone();
            if let Err(detail) = invariants::volumes::check_settled(state, &volumes, &self.lost_hosts()) {
                core.violation("volumes", detail);
            }
            let links = core.migration_links.lock().expect("migration links lock").clone();
            for detail in invariants::migrations::check(state, &links) {
                core.violation("migrations", detail);
            }
        }
        drop(states);
        drop(guards);

        for id in self.every_node() {
            raft::runtime::abort_node(id);
        }
        let count = |f: fn(&Outcome) -> bool| history.ops.iter().filter(|o| f(&o.outcome)).count() as u64;
        RunOutcome {
            seed: core.cfg.seed,
            trace_hash: core.trace.hash(),
            trace: core.trace.lines(),
            violations: core.violations.lock().expect("violations lock").clone(),
            simulated_ms: core.clocks.elapsed_ms(),
            wall: Duration::ZERO,
            writes_acked: count(|o| matches!(o, Outcome::Acked(_))),
            writes_refused: count(|o| matches!(o, Outcome::Rejected { .. })),
            writes_unknown: count(|o| matches!(o, Outcome::Unknown)),
            faults: self.faults,
        }
    }
}
