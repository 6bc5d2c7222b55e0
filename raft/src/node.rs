//! A replica: its data directory, openraft, the gRPC services, and the write path.
//!
//! Writes ([`Node::submit`]) are decided on the leader against its applied state and
//! committed through raft; a version conflict makes the leader decide again, at most
//! [`crate::proposer::SUBMIT_ATTEMPTS_MAX`] times. A write that reaches a follower is forwarded to the
//! leader once; a forwarded write that finds no leader fails with `Unavailable` and the
//! leader hint, which clients retry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use controlplane::ha::HaSettings;
use controlplane::model::HostState;
use controlplane::{state_hash, Committed, Rejection, Request, State};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, SnapshotPolicy};
use proto::raft::replication_client::ReplicationClient;
use proto::raft::{JoinRequest, StatusReply, SubmitRequest};
use tracing::{info, warn, Instrument};

use crate::archive::Archive;
use crate::archive_peers::GrpcArchivePeers;
use crate::backfill;
use crate::data_dir::{DataDir, DataDirError};
use crate::encoding;
use crate::ha::HaLoop;
use crate::kv::{Kv, Tree};
use crate::kv_sled::SledKv;
use crate::leases::{self, Leases};
use crate::log_store::LogStore;
use crate::network::{Channels, ClusterId, GrpcNetwork};
use crate::proposer::{self, Bug, LeaderPath, ProposeError, Proposer};
use crate::state_machine::{Shared, SnapshotHook, StateMachine};
use crate::tls::Transport;
use crate::type_config::{Member, NodeId, Raft, StorageError};

/// How often a replica looks for holes in its archive to fill.
pub const BACKFILL_INTERVAL_MS: u64 = 1_000;
/// Header marking a write or join already forwarded once.
pub const FORWARDED_HEADER: &str = "drover-forwarded";
/// Headers naming the leader on an `Unavailable` answer.
pub const LEADER_ID_HEADER: &str = "drover-leader-id";
/// The leader's public API, for clients of the API.
pub const LEADER_ADDRESS_HEADER: &str = "drover-leader-address";
/// The leader's peer port, for clients of the replication service.
pub const LEADER_PEER_HEADER: &str = "drover-leader-peer";
const CLUSTER_ID_KEY: &[u8] = b"cluster_id";

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where the public API listens (and the peer services, without `peer_listen`).
    pub listen: SocketAddr,
    /// Where the raft and replication services listen, on a port of their own that only
    /// cluster members may call; `None` serves them on `listen` too (loopback clusters).
    pub peer_listen: Option<SocketAddr>,
    /// How this replica is reached: its peer port by other members, its public API by
    /// clients (recorded in the membership).
    pub advertise: Member,
    pub data_dir: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little.
    pub log_entries_kept_after_snapshot: u64,
    /// Archive checkpoint interval, in events.
    pub checkpoint_every_events: u64,
    /// Host lease timings (the leader suspects and fences by them; hosts learn them from
    /// each heartbeat's answer).
    pub ha: HaSettings,
    /// How it connects to other replicas and serves them: TLS or insecure.
    pub transport: Transport,
}

impl NodeConfig {
    /// Defaults for a replica serving everything on `listen`, storing into `data_dir`.
    pub fn new(node_id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            node_id,
            listen,
            peer_listen: None,
            advertise: Member::new(listen.to_string(), listen.to_string()),
            data_dir,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 20_000,
            log_entries_kept_after_snapshot: 1_000,
            checkpoint_every_events: 10_000,
            ha: HaSettings::default(),
            transport: Transport::insecure(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("storage")]
    Storage(#[from] StorageError),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Rejected(Rejection),
    #[error("not the leader (leader: {})", leader.as_ref().map_or("unknown".to_owned(), |m| m.to_string()))]
    NotLeader { leader_id: Option<NodeId>, leader: Option<Member> },
    #[error("cluster id mismatch: this replica is in cluster {ours}, the other side in cluster {theirs}")]
    ClusterMismatch { ours: String, theirs: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("forwarded to the leader")]
    Remote(#[source] tonic::Status),
}

impl NodeError {
    /// The gRPC status this error answers with.
    pub fn to_status(&self) -> tonic::Status {
        use controlplane::RejectionCode as R;
        match self {
            NodeError::Rejected(r) => {
                let code = match r.code() {
                    R::InvalidArgument => tonic::Code::InvalidArgument,
                    R::NotFound => tonic::Code::NotFound,
                    R::AlreadyExists => tonic::Code::AlreadyExists,
                    R::FailedPrecondition => tonic::Code::FailedPrecondition,
                    R::ResourceExhausted => tonic::Code::ResourceExhausted,
                    R::Aborted => tonic::Code::Aborted,
                    R::PermissionDenied => tonic::Code::PermissionDenied,
                };
                tonic::Status::new(code, r.to_string())
            }
            NodeError::NotLeader { leader_id, leader } => {
                let mut s = tonic::Status::unavailable(self.to_string());
                if let Some(id) = leader_id {
                    s.metadata_mut().insert(LEADER_ID_HEADER, id.to_string().parse().expect("digits"));
                }
                let leader = leader.as_ref();
                for (header, addr) in [
                    (LEADER_ADDRESS_HEADER, leader.map(|m| m.api.as_str())),
                    (LEADER_PEER_HEADER, leader.map(|m| m.peer.as_str())),
                ] {
                    if let Some(v) = addr.filter(|a| !a.is_empty()).and_then(|a| a.parse().ok()) {
                        s.metadata_mut().insert(header, v);
                    }
                }
                s
            }
            NodeError::ClusterMismatch { .. } => tonic::Status::failed_precondition(self.to_string()),
            NodeError::Unavailable(m) => tonic::Status::unavailable(m.clone()),
            NodeError::Remote(s) => s.clone(),
            NodeError::DataDir(_) | NodeError::Storage(_) | NodeError::Config(_) | NodeError::Raft(_) => {
                tonic::Status::internal(self.to_string())
            }
        }
    }
}

pub(crate) struct NodeInner {
    pub(crate) id: NodeId,
    pub(crate) advertise: Member,
    pub(crate) raft: Raft,
    pub(crate) shared: Arc<Shared>,
    pub(crate) archive: Archive<SledKv>,
    pub(crate) kv: SledKv,
    pub(crate) cluster: ClusterId,
    pub(crate) channels: Channels,
    pub(crate) listen: SocketAddr,
    pub(crate) peer_listen: Option<SocketAddr>,
    proposer: Proposer,
    leases: Arc<Leases>,
    ha: HaSettings,
}

/// A running replica. Clones share it.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.id).finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn raft_err<E: std::fmt::Display>(e: E) -> NodeError {
    NodeError::Raft(e.to_string())
}

/// Production's way to the leader: its peer port from the membership, over gRPC.
impl LeaderPath for Node {
    type Leader = String;
    type Error = NodeError;

    fn leader(&self) -> (bool, Option<String>) {
        let (leader, member) = Node::leader(self);
        (leader == Some(self.inner.id), member.map(|m| m.peer))
    }

    fn not_leader(&self) -> NodeError {
        Node::not_leader(self)
    }

    fn refused(&self, e: ProposeError) -> NodeError {
        match e {
            ProposeError::NotLeader => Node::not_leader(self),
            ProposeError::Rejected(r) => NodeError::Rejected(r),
            ProposeError::Unavailable(m) => NodeError::Unavailable(m),
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    async fn forward(&self, leader: String, request: &Request) -> Result<Committed, NodeError> {
        self.forward_to(&leader, request).await
    }
}

impl Node {
    /// Open the data directory and start raft (not yet serving).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let dir = DataDir::open(&config.data_dir, config.node_id).await?;
        let kv = dir.kv.clone();
        let cluster = ClusterId::default();
        if let Some(id) = kv.get(Tree::Meta, CLUSTER_ID_KEY).map_err(|e| NodeError::Raft(format!("{e:?}")))? {
            cluster.set(String::from_utf8_lossy(&id).into_owned());
        }
        let path = config.data_dir.clone();
        let hook = SnapshotHook(Arc::new(move |index| {
            if let Err(e) = DataDir::write_watermark(&path, index) {
                warn!(error = %e, index, "could not record the snapshot watermark");
            }
        }));
        let sm = StateMachine::open_with_archive(
            kv.clone(),
            dir.archive_kv.clone(),
            config.checkpoint_every_events,
        )?
        .with_snapshot_hook(hook);
        let shared = sm.shared();
        let archive = sm.archive();
        let raft_config = openraft::Config {
            cluster_name: "drover".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let channels = Channels::new(config.transport.clone());
        let network = GrpcNetwork { channels: channels.clone(), cluster: cluster.clone() };
        let log_store = LogStore::new(dir.log_kv.clone());
        let start_index = log_store.last_index()?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log_store, sm)
            .await
            .map_err(raft_err)?;
        let proposer = Proposer::new(config.node_id, raft.clone(), shared.clone(), start_index, Bug::None);
        let peers = GrpcArchivePeers {
            me: config.node_id,
            shared: shared.clone(),
            channels: channels.clone(),
            cluster: cluster.clone(),
            turn: 0,
        };
        tokio::spawn(backfill::run(archive.clone(), peers, Duration::from_millis(BACKFILL_INTERVAL_MS)));
        config.ha.check().map_err(NodeError::Config)?;
        let leases = Arc::new(Leases::default());
        let ha = HaLoop {
            id: config.node_id,
            raft: raft.clone(),
            shared: shared.clone(),
            proposer: proposer.clone(),
            leases: leases.clone(),
            settings: config.ha,
            clock: Arc::new(now_ms),
        };
        tokio::spawn(ha.run());
        tokio::spawn(crate::metrics::sample(raft.clone(), config.node_id));
        info!(node = config.node_id, cluster = ?cluster.get(), "replica started");
        Ok(Node {
            inner: Arc::new(NodeInner {
                id: config.node_id,
                advertise: config.advertise,
                raft,
                shared,
                archive,
                kv,
                cluster,
                channels,
                listen: config.listen,
                peer_listen: config.peer_listen,
                proposer,
                leases,
                ha: config.ha,
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn archive(&self) -> &Archive<SledKv> {
        &self.inner.archive
    }

    /// The last applied sequence number, updated as entries apply.
    pub fn applied_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.applied_seq.subscribe()
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.inner.cluster.get()
    }

    /// Persist the cluster id this replica belongs to.
    pub(crate) async fn adopt_cluster(&self, id: &str) -> Result<(), NodeError> {
        if let Some(ours) = self.inner.cluster.get() {
            if ours != id {
                return Err(NodeError::ClusterMismatch { ours, theirs: id.to_owned() });
            }
            return Ok(());
        }
        self.inner
            .kv
            .put(Tree::Meta, CLUSTER_ID_KEY, id.as_bytes())
            .map_err(|e| NodeError::Raft(format!("{e:?}")))?;
        self.inner.kv.flush().await.map_err(|e| NodeError::Raft(format!("{e:?}")))?;
        self.inner.cluster.set(id.to_owned());
        info!(cluster = id, "joined cluster");
        Ok(())
    }

    /// Start a new single-voter cluster, unless this replica already belongs to one.
    pub async fn bootstrap(&self) -> Result<(), NodeError> {
        if self.inner.cluster.get().is_some() {
            return Ok(());
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.adopt_cluster(&id).await?;
        let members = [(self.inner.id, self.inner.advertise.clone())]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>();
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(raft_err(e)),
        }
    }

    /// Join the cluster reachable at `seed` (any member's public API or peer port), retrying
    /// until `deadline`.
    pub async fn join(&self, seed: &str, voter: bool, deadline: Duration) -> Result<(), NodeError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let peer = self.peer_port_of(seed).await;
            let channel =
                self.inner.channels.get(&peer).map_err(|e| NodeError::Unavailable(e.to_string()))?;
            let mut request = tonic::Request::new(JoinRequest {
                node_id: self.inner.id,
                address: self.inner.advertise.peer.clone(),
                cluster_id: self.inner.cluster.get().unwrap_or_default(),
                voter,
                api_address: self.inner.advertise.api.clone(),
            });
            request.set_timeout(Duration::from_secs(30));
            match ReplicationClient::new(channel).join(request).await {
                Ok(reply) => return self.adopt_cluster(&reply.into_inner().cluster_id).await,
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        || s.code() == tonic::Code::InvalidArgument =>
                {
                    return Err(NodeError::Remote(s));
                }
                Err(s) if tokio::time::Instant::now() >= until => return Err(NodeError::Remote(s)),
                Err(s) => {
                    warn!(seed, status = %s, "join not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// The peer port of the member at `seed` (its public API or its peer port), as its
    /// status names it; `seed` itself where it does not answer or names none (a member
    /// that serves both on one port).
    async fn peer_port_of(&self, seed: &str) -> String {
        let Ok(channel) = self.inner.channels.get(seed) else { return seed.to_owned() };
        let mut request = tonic::Request::new(proto::raft::StatusRequest::default());
        request.set_timeout(Duration::from_secs(5));
        match ReplicationClient::new(channel).status(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                reply.addresses.get(&reply.node_id).cloned().unwrap_or_else(|| seed.to_owned())
            }
            Err(_) => seed.to_owned(),
        }
    }

    fn leader(&self) -> (Option<NodeId>, Option<Member>) {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let member = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        (m.current_leader, member)
    }

    fn not_leader(&self) -> NodeError {
        let (leader_id, leader) = self.leader();
        NodeError::NotLeader { leader_id, leader }
    }

    /// Decide and commit a request on the leader (forwarding it there from a follower).
    pub async fn submit(&self, request: Request, forwarded: bool) -> Result<Committed, NodeError> {
        proposer::submit(self, &self.inner.proposer, &request, forwarded).await
    }

    /// A client of the leader at `leader`, and `message` marked as forwarded once, with a
    /// deadline and this cluster's id.
    fn to_leader<T>(
        &self,
        leader: &str,
        message: T,
        timeout: Duration,
    ) -> Result<(ReplicationClient<tonic::transport::Channel>, tonic::Request<T>), NodeError> {
        let channel = self.inner.channels.get(leader).map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(FORWARDED_HEADER, "1".parse().expect("ascii"));
        req.set_timeout(timeout);
        self.inner.cluster.stamp(&mut req);
        crate::telemetry::inject(req.metadata_mut());
        Ok((ReplicationClient::new(channel), req))
    }

    async fn forward_to(&self, leader: &str, request: &Request) -> Result<Committed, NodeError> {
        let span = crate::traced_span!("forward", leader);
        self.forward_traced(leader, request).instrument(span).await
    }

    async fn forward_traced(&self, leader: &str, request: &Request) -> Result<Committed, NodeError> {
        let message = SubmitRequest { request: encoding::encode(request) };
        let (mut client, req) = self.to_leader(leader, message, Duration::from_secs(10))?;
        let reply = client.submit(req).await.map_err(|s| match s.code() {
            // The call, not the leader, failed (a leader killed mid-call resets the
            // connection): the write may or may not have been taken, and a retry with its
            // request id finds out, so the caller is told to try again.
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                NodeError::Unavailable(format!("the leader at {leader} did not answer: {s}"))
            }
            _ => NodeError::Remote(s),
        })?;
        encoding::decode(&reply.into_inner().committed)
            .map_err(|e| NodeError::Raft(format!("bad forwarded reply: {e}")))
    }

    /// Run `f` on a state that includes every write committed before this call
    /// (openraft's read index). Only the leader answers.
    pub async fn read_linearizable<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, NodeError> {
        match self.inner.proposer.read(f).await {
            Ok(v) => Ok(v),
            Err(ProposeError::Unavailable(m)) => Err(NodeError::Unavailable(m)),
            Err(_) => Err(self.not_leader()),
        }
    }

    /// A heartbeat from host `host` (see [`Leases::renew_from`]): answers the timings the
    /// host must keep, or why it may not renew: this replica does not lead, the host is
    /// unknown, or fenced (it must destroy its VMs and register again).
    pub async fn renew_lease(&self, host: &str) -> Result<HaSettings, NodeError> {
        let replica = leases::Replica {
            id: self.inner.id,
            raft: &self.inner.raft,
            proposer: &self.inner.proposer,
            shared: &self.inner.shared,
        };
        let kind = controlplane::model::ResourceKind::Host;
        match self.inner.leases.renew_from(replica, host, self.inner.ha.lease_ms).await {
            Ok(()) => Ok(self.inner.ha),
            Err(leases::Refusal::NotLeader) => Err(self.not_leader()),
            Err(leases::Refusal::NotConfirmed) => Err(NodeError::Unavailable(
                "the leader has not heard from a quorum recently; try again".into(),
            )),
            Err(leases::Refusal::Fencing) => {
                Err(NodeError::Unavailable(format!("host {host} is being fenced; its lease is not renewed")))
            }
            Err(leases::Refusal::Unknown) => {
                Err(NodeError::Rejected(Rejection::NotFound { kind, name: host.to_owned() }))
            }
            Err(leases::Refusal::Gone(s)) => Err(NodeError::Rejected(Rejection::FailedPrecondition {
                kind,
                name: host.to_owned(),
                reason: format!("is {s}: destroy its VMs and register again"),
            })),
        }
    }

    /// An operator's request to fence host `host` (`request` sets it fenced), on the
    /// leader only, which holds the leases: refused while the host may still run its VMs
    /// (it renewed within `lease_ms + fence_ms + drift_ms`). As for the HA loop's own
    /// fencing, the host's renewals wait while the write commits, and the write holds only
    /// in this term (a later leader has renewed leases afresh). A host that holds no lease
    /// (unknown, left, or fenced already: a retried request gets its first answer) is
    /// left to the write path.
    pub async fn fence_host(&self, host: &str, request: Request) -> Result<Committed, NodeError> {
        let (leader, _) = self.leader();
        if leader != Some(self.inner.id) {
            return Err(self.not_leader());
        }
        let term = self.inner.raft.metrics().borrow().current_term;
        let leased = self.read_local(|s| {
            s.host(host).is_some_and(|h| !matches!(h.state, HostState::Left | HostState::Fenced))
        });
        if !leased {
            return proposer::submit(self, &self.inner.proposer, &request, true).await;
        }
        let now = tokio::time::Instant::now();
        let fence_after = self.inner.ha.fence_after_ms();
        if !self.inner.leases.begin_fencing(term, host, now, fence_after) {
            let age = self.inner.leases.ages(term, [host], now).get(host).copied().unwrap_or(0);
            return Err(NodeError::Rejected(Rejection::FailedPrecondition {
                kind: controlplane::model::ResourceKind::Host,
                name: host.to_owned(),
                reason: format!(
                    "renewed its lease {age} ms ago and may still run its VMs; drain it, or stop its hostd and wait for HA to fence it"
                ),
            }));
        }
        let outcome = self.inner.proposer.propose_in_term(&request, now_ms(), term).await;
        // As in the HA loop: renewals resume once the write's fate is certain.
        if matches!(outcome, Ok(_) | Err(ProposeError::Rejected(_))) {
            self.inner.leases.fenced(host);
        }
        outcome.map_err(|e| LeaderPath::refused(self, e))
    }

    /// Run `f` on this replica's applied state, however far behind it may be.
    pub fn read_local<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.shared.state.read().expect("state lock"))
    }

    /// The traces of proposals this replica applied since the last take, by the resources
    /// they changed (empty while traces are off): its host continues them.
    pub fn take_traces(&self) -> Vec<(controlplane::model::ResourceKey, controlplane::TraceParent)> {
        self.inner.shared.traces.take()
    }

    pub(crate) async fn handle_join(&self, req: JoinRequest, forwarded: bool) -> Result<String, NodeError> {
        let ours = self
            .inner
            .cluster
            .get()
            .ok_or_else(|| NodeError::Unavailable("this replica has not joined a cluster yet".into()))?;
        if !req.cluster_id.is_empty() && req.cluster_id != ours {
            return Err(NodeError::ClusterMismatch { ours, theirs: req.cluster_id });
        }
        for (field, value, may_be_empty) in
            [("address", &req.address, false), ("api_address", &req.api_address, !req.voter)]
        {
            if value.parse::<SocketAddr>().is_err() && !(may_be_empty && value.is_empty()) {
                return Err(NodeError::Rejected(Rejection::InvalidArgument {
                    field: field.into(),
                    reason: format!("{value:?} is not ip:port"),
                }));
            }
        }
        let (leader, member) = self.leader();
        if leader != Some(self.inner.id) {
            return match (forwarded, member) {
                (false, Some(m)) => {
                    let (mut client, r) = self.to_leader(&m.peer, req, Duration::from_secs(30))?;
                    let reply = client.join(r).await.map_err(NodeError::Remote)?;
                    Ok(reply.into_inner().cluster_id)
                }
                _ => Err(self.not_leader()),
            };
        }
        let membership = self.inner.shared.membership();
        let joining = Member::new(&req.address, &req.api_address);
        if membership.membership().get_node(&req.node_id) != Some(&joining) {
            self.inner
                .raft
                .add_learner(req.node_id, joining.clone(), true)
                .await
                .map_err(|e| NodeError::Unavailable(format!("adding learner {}: {e}", req.node_id)))?;
        }
        if req.voter && !membership.membership().voter_ids().any(|v| v == req.node_id) {
            self.change(ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id]))).await?;
        }
        info!(node = req.node_id, address = %joining, voter = req.voter, "member joined");
        Ok(ours)
    }

    /// Change membership (on the leader).
    pub async fn change(&self, change: ChangeMembers<NodeId, Member>) -> Result<(), NodeError> {
        match self.inner.raft.change_membership(change, false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(self.not_leader()),
            Err(e) => Err(NodeError::Unavailable(format!("membership change: {e}"))),
        }
    }

    /// Voters and learners as this replica last applied them.
    pub fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<NodeId> = m.membership().voter_ids().collect();
        let learners: Vec<NodeId> = m.membership().learner_ids().collect();
        (voters, learners)
    }

    pub fn status(&self) -> StatusReply {
        let m = self.inner.raft.metrics().borrow().clone();
        let (voters, learners) = self.members();
        let (hash, last_seq) = self.read_local(|s| (state_hash(s).to_string(), s.last_seq()));
        let (leader_id, leader) = self.leader();
        StatusReply {
            node_id: self.inner.id,
            cluster_id: self.inner.cluster.get().unwrap_or_default(),
            leader_id: leader_id.unwrap_or(0),
            leader_address: leader.map(|m| m.api).unwrap_or_default(),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            last_seq,
            state_hash: hash,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            first_log_index: m.purged.map_or(0, |l| l.index + 1),
            voters,
            learners,
            term: m.current_term,
            addresses: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.peer.clone()))
                .collect(),
            api_addresses: m
                .membership_config
                .membership()
                .nodes()
                .filter(|(_, n)| !n.api.is_empty())
                .map(|(id, n)| (*id, n.api.clone()))
                .collect(),
        }
    }

    /// Member `member`'s own status, asked over its peer port (as a member).
    pub async fn status_of(&self, member: NodeId) -> Result<StatusReply, tonic::Status> {
        let peer = self.inner.shared.membership().membership().get_node(&member).map(|m| m.peer.clone());
        let peer =
            peer.ok_or_else(|| tonic::Status::not_found(format!("no member {member} in the cluster")))?;
        let channel =
            self.inner.channels.get(&peer).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(proto::raft::StatusRequest::default());
        request.set_timeout(Duration::from_secs(5));
        let reply = ReplicationClient::new(channel).status(request).await.map_err(|s| {
            tonic::Status::unavailable(format!("member {member} at {peer} did not answer: {}", s.message()))
        })?;
        Ok(reply.into_inner())
    }

    /// The lease timings this replica runs with.
    pub fn ha_settings(&self) -> HaSettings {
        self.inner.ha
    }

    /// How long ago each host renewed its lease, in ms, as this replica holds them (only
    /// the leader holds any: a follower answers `NotLeader`).
    pub fn lease_ages(&self) -> Result<BTreeMap<String, u64>, NodeError> {
        let (leader, _) = self.leader();
        if leader != Some(self.inner.id) {
            return Err(self.not_leader());
        }
        let term = self.inner.raft.metrics().borrow().current_term;
        let hosts: Vec<String> = self.read_local(|s| {
            s.hosts().values().filter(|h| h.state != HostState::Left).map(|h| h.name.clone()).collect()
        });
        Ok(self.inner.leases.ages(term, hosts.iter().map(String::as_str), tokio::time::Instant::now()))
    }

    /// Where the public API listens (and the peer services, without a peer port).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// Where the raft and replication services listen when they have a port of their
    /// own.
    pub fn peer_listen_addr(&self) -> Option<SocketAddr> {
        self.inner.peer_listen.filter(|p| *p != self.inner.listen)
    }

    /// How this replica connects and serves (TLS or insecure).
    pub fn transport(&self) -> &Transport {
        self.inner.channels.transport()
    }

    /// Stop raft (the services stop with [`crate::service::serve`]'s shutdown future).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }
}
