//! A control replica in the simulation: real openraft, the real storage code on an
//! in-memory disk with an fsync model, the real write path ([`raft::proposer::Proposer`]).
//! The disk outlives crashes; a crash loses what was not synced and every task of the
//! replica at once.

use std::sync::Arc;

use raft::kv_mem::MemKv;
use raft::log_store::LogStore;
use raft::proposer::{Bug, Proposer};
use raft::state_machine::StateMachine;
use raft::type_config::{NodeId, Raft};

use crate::clock::Clocks;
use crate::network::{Live, Net, SimNetwork};

/// How often a replica looks for archive holes to fill (production: 1 s).
pub const BACKFILL_INTERVAL_MS: u64 = 500;

/// The other replicas' archives over the simulated network.
#[derive(Debug)]
pub struct SimArchivePeers {
    net: Net,
    me: NodeId,
    others: Vec<NodeId>,
    turn: usize,
}

impl raft::backfill::ArchivePeers for SimArchivePeers {
    async fn fetch(
        &mut self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<raft::archive::ArchivedEvent>, String> {
        self.turn = self.turn.wrapping_add(1);
        let peer = self.others[self.turn % self.others.len()];
        let ttl = std::time::Duration::from_millis(crate::caller::CALL_TTL_MS);
        let answer = self
            .net
            .call_once(self.me, peer, ttl, move |live: Live| async move {
                live.archive.events(from_seq, limit).map_err(|e| e.to_string())
            })
            .await;
        answer.map_err(|e| format!("replica {peer}: {e}"))?.map_err(|e| format!("replica {peer}: {e}"))
    }
}

/// Archive checkpoint interval in the simulation, in events (small, so restarts and
/// `state_at` use checkpoints).
pub const CHECKPOINT_EVERY_EVENTS: u64 = 256;
/// Entries between raft snapshots (small, so compaction, snapshot installs and their
/// crash points happen several times in a 20 s run of the small world, ~80 entries).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 30;
/// Entries kept behind a snapshot.
const LOG_KEPT_AFTER_SNAPSHOT: u64 = 10;

/// openraft's settings in the simulation: production's timers (`NodeConfig::new`), small
/// snapshot and checkpoint intervals so compaction and installs happen within a run.
/// Built once (openraft builds its defaults by parsing an empty command line) and shared.
pub fn raft_config() -> Arc<openraft::Config> {
    static CONFIG: std::sync::OnceLock<Arc<openraft::Config>> = std::sync::OnceLock::new();
    CONFIG.get_or_init(build_raft_config).clone()
}

fn build_raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "drover-sim".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT,
        snapshot_max_chunk_size: 16 << 10,
        max_payload_entries: 256,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// One replica's disks and whether it runs.
#[derive(Debug)]
pub struct Replica {
    pub id: NodeId,
    /// Raft log, vote and snapshots.
    pub disk: MemKv,
    /// The event archive (its own store, as in production).
    pub archive_disk: MemKv,
    pub up: bool,
}

impl Replica {
    pub fn new(id: NodeId) -> Replica {
        Replica { id, disk: MemKv::new(), archive_disk: MemKv::new(), up: false }
    }

    /// Start (or restart) the replica from what its disks hold; its HA loop stamps events
    /// with its own wall clock from `clocks`. `holders`: every replica that holds an
    /// archive, learners included, as production backfills from every member.
    pub async fn start(
        &mut self,
        net: &Net,
        clocks: &Clocks,
        bug: Bug,
        holders: &[NodeId],
    ) -> Result<Live, String> {
        let peers = SimArchivePeers {
            net: net.clone(),
            me: self.id,
            others: holders.iter().copied().filter(|r| *r != self.id).collect(),
            turn: 0,
        };
        let (id, disk, archive_disk, network) = (
            self.id,
            self.disk.clone(),
            self.archive_disk.clone(),
            SimNetwork { net: net.clone(), from: self.id },
        );
        let clock: raft::ha::WallClock = {
            let clocks = clocks.clone();
            Arc::new(move || clocks.now_ms(id))
        };
        let live = raft::runtime::as_node(id, async move {
            let sm = StateMachine::open_with_archive(disk.clone(), archive_disk, CHECKPOINT_EVERY_EVENTS)
                .map_err(|e| format!("opening the state machine: {e}"))?
                .with_bug(bug);
            let shared = sm.shared();
            let archive = sm.archive();
            let log_store = LogStore::new(disk).with_bug(bug);
            let start_index = log_store.last_index().map_err(|e| format!("reading the log: {e}"))?;
            let raft = Raft::new(id, raft_config(), network, log_store, sm)
                .await
                .map_err(|e| format!("starting raft: {e}"))?;
            let proposer = Proposer::new(id, raft.clone(), shared.clone(), start_index, bug);
            let interval = std::time::Duration::from_millis(BACKFILL_INTERVAL_MS);
            raft::runtime::spawn(raft::backfill::run(archive.clone(), peers, interval));
            let leases = Arc::new(raft::leases::Leases::default());
            let ha = raft::ha::HaLoop {
                id,
                raft: raft.clone(),
                shared: shared.clone(),
                proposer: proposer.clone(),
                leases: leases.clone(),
                settings: controlplane::ha::HaSettings::default(),
                clock,
            };
            raft::runtime::spawn(ha.run());
            Ok::<_, String>(Live { raft, proposer, shared, archive, leases })
        })
        .await?;
        net.set_live(self.id, live.clone());
        self.up = true;
        Ok(live)
    }

    /// Kill the replica: its tasks end at once and its disks lose what was not synced.
    pub fn crash(&mut self, net: &Net) {
        net.remove_live(self.id);
        raft::runtime::abort_node(self.id);
        self.disk.crash();
        self.archive_disk.crash();
        self.up = false;
    }
}
