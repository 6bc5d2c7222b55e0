//! The API's decision path, in process: what `drover server` does with a write or a
//! linearizable read, without tonic. A write runs production's own path
//! ([`raft::proposer::submit`], over the simulated network): a replica that is not the
//! leader forwards it once to the leader it knows. Callers retry with the same request id
//! on no answer and follow leader hints, as the CLI does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use controlplane::{Committed, Rejection, Request, State};
use raft::proposer::{LeaderPath, ProposeError};
use raft::type_config::{NodeId, Raft};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::clock::Clocks;
use crate::history::Outcome;
use crate::network::Net;

/// How long a caller waits for one answer.
pub const CALL_TTL_MS: u64 = 2_000;
/// How long a replica waits for the leader it forwarded to.
pub const FORWARD_TTL_MS: u64 = 1_500;
/// Tries per write before the caller gives up (the outcome is then unknown).
pub const ATTEMPTS_MAX: u32 = 20;

/// What a replica answers.
#[derive(Debug, Clone)]
pub enum Refusal {
    NotLeader(Option<NodeId>),
    Rejected(Rejection),
    Unavailable(String),
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<T, Refusal>> + Send>>;

/// The simulated network's way to the leader for [`raft::proposer::submit`], the decision
/// path production runs: the leader from the replica's raft metrics, a forward as one call
/// over the network.
struct SimPath {
    net: Net,
    clocks: Clocks,
    at: NodeId,
    raft: Raft,
}

impl SimPath {
    fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }
}

impl LeaderPath for SimPath {
    type Leader = NodeId;
    type Error = Refusal;

    fn leader(&self) -> (bool, Option<NodeId>) {
        let leader = self.current_leader();
        (leader == Some(self.at), leader)
    }

    fn not_leader(&self) -> Refusal {
        Refusal::NotLeader(self.current_leader().filter(|l| *l != self.at))
    }

    fn refused(&self, e: ProposeError) -> Refusal {
        match e {
            ProposeError::NotLeader => Refusal::NotLeader(None),
            ProposeError::Rejected(r) => Refusal::Rejected(r),
            ProposeError::Unavailable(m) => Refusal::Unavailable(m),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clocks.now_ms(self.at)
    }

    async fn forward(&self, l: NodeId, request: &Request) -> Result<Committed, Refusal> {
        let (n, c, r) = (self.net.clone(), self.clocks.clone(), request.clone());
        let ttl = Duration::from_millis(FORWARD_TTL_MS);
        match self
            .net
            .call_once(self.at, l, ttl, move |_| submit_at(n.clone(), c.clone(), l, r.clone(), true))
            .await
        {
            Ok(answer) => answer,
            Err(e) => Err(Refusal::Unavailable(format!("forwarding to {l}: {e}"))),
        }
    }
}

/// At replica `at`: commit `request` on the leader, forwarding it there once.
pub fn submit_at(
    net: Net,
    clocks: Clocks,
    at: NodeId,
    request: Request,
    forwarded: bool,
) -> Answer<Committed> {
    Box::pin(async move {
        let live = net.live(at).ok_or_else(|| Refusal::Unavailable("replica down".into()))?;
        let path = SimPath { net, clocks, at, raft: live.raft.clone() };
        raft::proposer::submit(&path, &live.proposer, &request, forwarded).await
    })
}

/// What a reader wants of the state (the whole state would be a large copy per read).
pub type View<T> = Arc<dyn Fn(&State) -> T + Send + Sync>;

/// At replica `at`: `view` of the applied state, after confirming it includes every
/// committed write (the leader only; see `Proposer::read`).
pub fn read_at<T: Send + 'static>(net: Net, at: NodeId, view: View<T>) -> Answer<T> {
    Box::pin(async move {
        let live = net.live(at).ok_or_else(|| Refusal::Unavailable("replica down".into()))?;
        let leader = live.raft.metrics().borrow().current_leader;
        if leader != Some(at) {
            return Err(Refusal::NotLeader(leader));
        }
        live.proposer.read(|s| view(s)).await.map_err(|e| match e {
            ProposeError::Unavailable(m) => Refusal::Unavailable(m),
            _ => Refusal::NotLeader(None),
        })
    })
}

/// A client of the cluster: tries replicas, follows hints, retries with the same id.
#[derive(Debug)]
pub struct Caller {
    net: Net,
    clocks: Clocks,
    me: NodeId,
    replicas: Vec<NodeId>,
    hint: Option<NodeId>,
    rng: ChaCha8Rng,
}

impl Caller {
    pub fn new(net: Net, clocks: Clocks, me: NodeId, replicas: Vec<NodeId>, seed: u64) -> Caller {
        Caller { net, clocks, me, replicas, hint: None, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    fn target(&mut self) -> NodeId {
        match self.hint.take() {
            Some(h) => h,
            None => self.replicas[self.rng.gen_range(0..self.replicas.len())],
        }
    }

    async fn back_off(&mut self) {
        let ms = self.rng.gen_range(20..120);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Send a write until it has a definite answer, [`ATTEMPTS_MAX`] tries or until
    /// `deadline_ms` (simulated time), whichever comes first.
    pub async fn submit(&mut self, request: &Request, deadline_ms: u64) -> Outcome {
        let ttl = Duration::from_millis(CALL_TTL_MS);
        for attempt in 1..=ATTEMPTS_MAX {
            if self.clocks.elapsed_ms() >= deadline_ms {
                break;
            }
            let to = self.target();
            let (n, c, r) = (self.net.clone(), self.clocks.clone(), request.clone());
            let answer = self
                .net
                .call_once(self.me, to, ttl, move |_| submit_at(n.clone(), c.clone(), to, r.clone(), false))
                .await;
            match answer {
                Ok(Ok(committed)) => {
                    self.hint = Some(to);
                    return Outcome::Acked(committed);
                }
                Ok(Err(Refusal::Rejected(r))) => {
                    self.hint = Some(to);
                    return Outcome::Rejected { rejection: r, attempts: attempt };
                }
                Ok(Err(Refusal::NotLeader(Some(l)))) if l != to => self.hint = Some(l),
                _ => self.back_off().await,
            }
        }
        Outcome::Unknown
    }

    /// A linearizable read of `view` of the state, a few tries.
    pub async fn read<T: Send + 'static>(&mut self, view: View<T>) -> Option<T> {
        let ttl = Duration::from_millis(CALL_TTL_MS);
        for _ in 0..3 {
            let to = self.target();
            let (n, v) = (self.net.clone(), view.clone());
            match self.net.call_once(self.me, to, ttl, move |_| read_at(n.clone(), to, v.clone())).await {
                Ok(Ok(state)) => {
                    self.hint = Some(to);
                    return Some(state);
                }
                Ok(Err(Refusal::NotLeader(Some(l)))) if l != to => self.hint = Some(l),
                _ => self.back_off().await,
            }
        }
        None
    }
}
