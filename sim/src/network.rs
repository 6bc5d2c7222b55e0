//! The simulated network: every message between nodes (raft RPCs, client and host calls
//! to replicas) goes through [`Net::call`], which draws its fate from the seed — delay,
//! loss, duplication (so reordering too) — and honours partitions, one-way or both ways.
//! A lost message costs the caller its timeout, as on a real network.
//!
//! openraft reaches its peers through [`SimNetwork`], the same `RaftNetworkFactory` trait
//! the gRPC transport implements in production.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raft::archive::Archive;
use raft::kv_mem::MemKv;
use raft::proposer::Proposer;
use raft::state_machine::Shared;
use raft::type_config::{Node, NodeId, Raft, TypeConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A running replica, as other nodes reach it.
#[derive(Clone)]
pub struct Live {
    pub raft: Raft,
    pub proposer: Proposer,
    pub shared: Arc<Shared>,
    pub archive: Archive<MemKv>,
    /// The host leases this replica holds while it leads.
    pub leases: Arc<raft::leases::Leases>,
}

impl Live {
    /// What renewing a lease needs of this replica.
    pub fn as_lease_replica(&self, id: NodeId) -> raft::leases::Replica<'_> {
        raft::leases::Replica { id, raft: &self.raft, proposer: &self.proposer, shared: &self.shared }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("proposer", &self.proposer).finish()
    }
}

/// Why a message got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    #[error("message lost or timed out")]
    Lost,
    #[error("nobody listening")]
    Down,
}

/// How messages fare when no partition stops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weather {
    pub loss_pct: u32,
    pub dup_pct: u32,
    pub delay_max_ms: u64,
}

impl Weather {
    pub const CALM: Weather = Weather { loss_pct: 0, dup_pct: 0, delay_max_ms: 2 };
}

#[derive(Debug)]
struct State {
    rng: ChaCha8Rng,
    /// One-way cuts: (from, to) pairs that deliver nothing.
    cut: BTreeSet<(NodeId, NodeId)>,
    weather: Weather,
    live: BTreeMap<NodeId, Live>,
}

enum Fate {
    Lost,
    Deliver { delay_ms: u64, duplicate_after_ms: Option<u64> },
}

/// The network; clones share it.
#[derive(Debug, Clone)]
pub struct Net {
    state: Arc<Mutex<State>>,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            state: Arc::new(Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                cut: BTreeSet::new(),
                weather: Weather::CALM,
                live: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("net lock")
    }

    pub fn set_live(&self, id: NodeId, live: Live) {
        self.lock().live.insert(id, live);
    }

    pub fn remove_live(&self, id: NodeId) {
        self.lock().live.remove(&id);
    }

    pub fn live(&self, id: NodeId) -> Option<Live> {
        self.lock().live.get(&id).cloned()
    }

    /// Stop everything from `from` reaching `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.lock().cut.contains(&(from, to))
    }

    /// Remove every partition.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn set_weather(&self, weather: Weather) {
        self.lock().weather = weather;
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        let mut s = self.lock();
        let w = s.weather;
        if s.cut.contains(&(from, to)) || s.rng.gen_range(0..100) < w.loss_pct {
            return Fate::Lost;
        }
        let delay_ms = s.rng.gen_range(1..=w.delay_max_ms.max(1));
        let duplicate_after_ms =
            (s.rng.gen_range(0..100) < w.dup_pct).then(|| s.rng.gen_range(1..=w.delay_max_ms.max(1) * 2));
        Fate::Deliver { delay_ms, duplicate_after_ms }
    }

    /// Send a request from `from` to `to`, run `handle` there, and bring its answer back,
    /// each way subject to the network's fate (a request may arrive twice); give up after
    /// `ttl`. Raft's messages travel this way.
    pub async fn call<T, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        handle: F,
    ) -> Result<T, Undelivered>
    where
        F: Fn(Live) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.send(from, to, ttl, handle, true).await
    }

    /// As [`Net::call`], but a request arrives at most once, as a gRPC call over one
    /// HTTP/2 connection does (a client's retry is a new request). API calls travel
    /// this way.
    pub async fn call_once<T, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        handle: F,
    ) -> Result<T, Undelivered>
    where
        F: Fn(Live) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.send(from, to, ttl, handle, false).await
    }

    async fn send<T, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        handle: F,
        may_duplicate: bool,
    ) -> Result<T, Undelivered>
    where
        F: Fn(Live) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let Fate::Deliver { delay_ms, duplicate_after_ms } = self.fate(from, to) else {
            tokio::time::sleep(ttl).await;
            return Err(Undelivered::Lost);
        };
        let delay = Duration::from_millis(delay_ms);
        tokio::time::sleep(delay).await;
        if self.is_cut(from, to) {
            // The partition began while the message was on the wire.
            tokio::time::sleep(ttl.saturating_sub(delay)).await;
            return Err(Undelivered::Lost);
        }
        let Some(live) = self.live(to) else { return Err(Undelivered::Down) };
        if let Some(after) = duplicate_after_ms.filter(|_| may_duplicate) {
            // The same message arrives a second time; its answer goes nowhere.
            let copy = handle(live.clone());
            raft::runtime::spawn_on_node(to, async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let _ = copy.await;
            });
        }
        let answer = match tokio::time::timeout(ttl.saturating_sub(delay), handle(live)).await {
            Ok(a) => a,
            Err(_) => return Err(Undelivered::Lost),
        };
        match self.fate(to, from) {
            Fate::Lost => {
                tokio::time::sleep(ttl.saturating_sub(delay)).await;
                Err(Undelivered::Lost)
            }
            Fate::Deliver { delay_ms, .. } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(answer)
            }
        }
    }
}

/// openraft's view of the simulated network from one replica.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    pub net: Net,
    pub from: NodeId,
}

/// One replica's connection to another.
#[derive(Debug)]
pub struct SimPeer {
    net: Net,
    from: NodeId,
    to: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> SimPeer {
        SimPeer { net: self.net.clone(), from: self.from, to: target }
    }
}

impl SimPeer {
    /// Carry `rpc` to the target's raft (`deliver` hands it over there) and its answer
    /// back, as openraft expects from a network.
    async fn relay<Req, R, E, F, Fut>(
        &self,
        rpc: Req,
        option: RPCOption,
        deliver: F,
    ) -> Result<R, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Clone + Send + Sync + 'static,
        R: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RaftError<NodeId, E>>> + Send + 'static,
    {
        let answer = self
            .net
            .call(self.from, self.to, option.hard_ttl(), move |live: Live| deliver(live.raft, rpc.clone()))
            .await;
        match answer {
            Ok(Ok(v)) => Ok(v),
            Err(u) => Err(RPCError::Unreachable(Unreachable::new(&u))),
            // The target's raft stopped under the message: as unreachable as a dead process.
            Ok(Err(RaftError::Fatal(f))) => Err(RPCError::Unreachable(Unreachable::new(&f))),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.to, e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.relay(rpc, option, |raft: Raft, rpc| async move { raft.append_entries(rpc).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.relay(rpc, option, |raft: Raft, rpc| async move { raft.install_snapshot(rpc).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.relay(rpc, option, |raft: Raft, rpc| async move { raft.vote(rpc).await }).await
    }
}
