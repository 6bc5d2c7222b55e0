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

use crate::network::{Live, Net, SimNetwork};

/// Archive checkpoint interval in the simulation, in events (small, so restarts and
/// `state_at` use checkpoints).
pub const CHECKPOINT_EVERY_EVENTS: u64 = 64;
/// Entries between raft snapshots (small, so compaction and snapshot installs happen).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 200;

/// openraft's settings in the simulation: production's shape, faster timers.
pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "drover-sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: 50,
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

    /// Start (or restart) the replica from what its disks hold.
    pub async fn start(&mut self, net: &Net, bug: Bug) -> Result<Live, String> {
        let (id, disk, archive_disk, network) = (
            self.id,
            self.disk.clone(),
            self.archive_disk.clone(),
            SimNetwork { net: net.clone(), from: self.id },
        );
        let live = raft::runtime::as_node(id, async move {
            let sm = StateMachine::open_with_archive(disk.clone(), archive_disk, CHECKPOINT_EVERY_EVENTS)
                .map_err(|e| format!("opening the state machine: {e}"))?;
            let shared = sm.shared();
            let archive = sm.archive();
            let raft = Raft::new(id, raft_config(), network, LogStore::new(disk), sm)
                .await
                .map_err(|e| format!("starting raft: {e}"))?;
            let proposer = Proposer::new(id, raft.clone(), shared.clone(), bug);
            Ok::<_, String>(Live { raft, proposer, shared, archive })
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
