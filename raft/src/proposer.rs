//! The leader's write path, shared by production ([`crate::node::Node::submit`]) and the
//! simulator: decide a request against the applied state, batch the proposal into a log
//! entry, and answer once raft has committed and applied it.
//!
//! A version conflict (another write changed what the decision read) makes the proposer
//! decide again, at most [`SUBMIT_ATTEMPTS_MAX`] times, then `Aborted`. Time is passed in
//! (`now_ms`), so the simulator's clock stamps the events. The proposer only answers
//! [`ProposeError::NotLeader`]; [`submit`] is a replica's whole decision path around it
//! (propose here, or forward once to the leader), over a [`LeaderPath`] that production
//! (`Node`: gRPC) and the simulator (its network) each give.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use controlplane::{apply_proposal, decide, Committed, Decision, ProposalOutcome, Rejection, Request};
use openraft::error::{ClientWriteError, RaftError};
use tracing::Instrument;

use crate::state_machine::Shared;
use crate::type_config::{ApplyResult, NodeId, ProposalBatch, Raft};

/// How many times the leader re-decides a write that lost a version race.
pub const SUBMIT_ATTEMPTS_MAX: u32 = 8;
/// Most proposals in one log entry.
pub const BATCH_PROPOSALS_MAX: usize = 1024;
/// Log entries being committed at once; proposals arriving meanwhile wait for a slot
/// and go together in the next entry.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Proposals waiting for a batch; a full queue makes writers wait.
pub const PROPOSAL_QUEUE_MAX: usize = 16_384;
/// How long a linearizable read or decision waits for a restarted replica to apply the
/// log it had when it started.
pub const CATCH_UP_WAIT_MS: u64 = 5_000;
/// Longest wait for one batch to commit. A leader cut off from the others may wait for
/// ever (openraft 0.9 does not always answer writes a deposed leader held); past this the
/// batch's writers hear "unknown, retry" (their request ids make a retry safe) and its
/// slot is freed: with every slot held by such writes, this replica could never commit
/// again, even as leader of a later term (found by the simulator).
pub const COMMIT_WAIT_MAX_MS: u64 = 10_000;

/// A deliberately wrong replica (its write path or its storage), for proving that the
/// simulator catches bugs. Only the simulator sets one; production always runs
/// [`Bug::None`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bug {
    #[default]
    None,
    /// Answer a write as soon as it is decided, before raft has committed it.
    AckBeforeCommit,
    /// Save the vote without flushing it.
    VoteUnsynced,
    /// Acknowledge appended entries before their flush.
    AppendUnsynced,
    /// Record a purge without flushing it.
    PurgeUnsynced,
    /// Store a snapshot without flushing it.
    SnapshotUnsynced,
    /// Decide every request with the cluster's rights, not its caller's.
    CallerAsCluster,
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader,
    #[error(transparent)]
    Rejected(Rejection),
    #[error("{0}")]
    Unavailable(String),
}

/// How one replica reaches the leader for [`submit`]: who leads, how to hand it a write,
/// and the caller's error type.
pub trait LeaderPath {
    /// How the leader is reached (an address, a network id).
    type Leader;
    type Error;
    /// Whether this replica leads, and how to reach the leader it knows of otherwise.
    fn leader(&self) -> (bool, Option<Self::Leader>);
    /// "Not the leader", with whatever hint the caller gives.
    fn not_leader(&self) -> Self::Error;
    /// What the proposer's refusal is to the caller (never `NotLeader`: [`submit`]
    /// answers that with [`LeaderPath::not_leader`]).
    fn refused(&self, e: ProposeError) -> Self::Error;
    /// The time the proposer stamps a decision with.
    fn now_ms(&self) -> u64;
    /// Hand `request` to the leader, marked as forwarded once.
    fn forward(
        &self,
        leader: Self::Leader,
        request: &Request,
    ) -> impl std::future::Future<Output = Result<Committed, Self::Error>> + Send;
}

/// A write arriving at a replica: proposed here if it leads, else forwarded once to the
/// leader it knows (`forwarded`: it came forwarded, so it goes no further). Two rounds: a
/// leader that loses its leadership mid-write forwards the retry to the new leader.
pub async fn submit<P: LeaderPath>(
    path: &P,
    proposer: &Proposer,
    request: &Request,
    forwarded: bool,
) -> Result<Committed, P::Error> {
    for _ in 0..2 {
        let (leads, leader) = path.leader();
        if !leads {
            return match (forwarded, leader) {
                (false, Some(leader)) => path.forward(leader, request).await,
                _ => Err(path.not_leader()),
            };
        }
        match proposer.propose(request, path.now_ms()).await {
            Ok(c) => return Ok(c),
            Err(ProposeError::NotLeader) if !forwarded => continue,
            Err(ProposeError::NotLeader) => return Err(path.not_leader()),
            Err(e) => return Err(path.refused(e)),
        }
    }
    Err(path.not_leader())
}

/// Why a batched write did not commit.
#[derive(Debug)]
enum WriteFailure {
    NotLeader,
    Other(String),
}

type Pending = (controlplane::Proposal, tokio::sync::oneshot::Sender<Result<ProposalOutcome, WriteFailure>>);

/// The leader's write path of one replica. Clones share it.
#[derive(Clone)]
pub struct Proposer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("id", &self.inner.id).field("bug", &self.inner.bug).finish()
    }
}

struct Inner {
    id: NodeId,
    raft: Raft,
    shared: Arc<Shared>,
    queue: tokio::sync::mpsc::Sender<Pending>,
    /// The term in which this leader last confirmed its applied state is current.
    linearized_term: AtomicU64,
    /// The last log index this replica held when it started.
    start_index: Option<u64>,
    bug: Bug,
}

impl Proposer {
    /// The write path of replica `id`, whose log ended at `start_index` when it started;
    /// spawns its batcher (see [`crate::runtime::spawn`]).
    pub fn new(id: NodeId, raft: Raft, shared: Arc<Shared>, start_index: Option<u64>, bug: Bug) -> Proposer {
        let (queue, rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE_MAX);
        crate::runtime::spawn(batcher(raft.clone(), rx));
        let linearized_term = AtomicU64::new(0);
        Proposer { inner: Arc::new(Inner { id, raft, shared, queue, linearized_term, start_index, bug }) }
    }

    /// Confirm this replica leads and that its applied state includes every committed
    /// write: openraft's read index, and — after a restart — the whole log the replica
    /// had when it started.
    ///
    /// The second half matters because openraft 0.9 lets a leader that restarts within
    /// its term take up its leadership again, and its read index is then the commit index
    /// it recovered, which the log store persists only now and then: a read answered from
    /// that stale state missed writes this very leader had acknowledged before its crash
    /// (found by the simulator in its 5-replica world). Everything it had
    /// acknowledged is in the log it started with, so applying that far is enough.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        self.inner.raft.ensure_linearizable().await.map_err(|_| ProposeError::NotLeader)?;
        let applied = self.inner.shared.last_applied().map(|l| l.index);
        if applied < self.inner.start_index {
            self.inner
                .raft
                .wait(Some(std::time::Duration::from_millis(CATCH_UP_WAIT_MS)))
                .applied_index_at_least(self.inner.start_index, "catch up with the log held at start")
                .await
                .map_err(|e| {
                    ProposeError::Unavailable(format!("still applying the log held at start: {e}"))
                })?;
        }
        Ok(())
    }

    /// Run `f` on a state that includes every write committed before this call (the
    /// leader only).
    pub async fn read<T>(&self, f: impl FnOnce(&controlplane::State) -> T) -> Result<T, ProposeError> {
        self.ensure_linearizable().await?;
        Ok(f(&self.inner.shared.state.read().expect("state lock")))
    }

    /// Whether this replica believes it leads.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id)
    }

    /// Decide `request` at `now_ms` and commit it, on the leader.
    pub async fn propose(&self, request: &Request, now_ms: u64) -> Result<Committed, ProposeError> {
        let span = crate::traced_span!("propose", request_id = %request.request_id, command = request.command.name());
        self.propose_traced(request, now_ms, None).instrument(span).await
    }

    /// As [`Proposer::propose`], for a request the leader of `term` made from what only
    /// it knows (its hosts' leases): it commits only in a log entry of that term, and a
    /// write that could not be appended in it is `NotLeader` (never retried in a later
    /// term, whose leader knows other leases).
    pub async fn propose_in_term(
        &self,
        request: &Request,
        now_ms: u64,
        term: u64,
    ) -> Result<Committed, ProposeError> {
        let span = crate::traced_span!("propose", request_id = %request.request_id, command = request.command.name());
        self.propose_traced(request, now_ms, Some(term)).instrument(span).await
    }

    async fn propose_traced(
        &self,
        request: &Request,
        now_ms: u64,
        term: Option<u64>,
    ) -> Result<Committed, ProposeError> {
        let mut last_conflict = String::new();
        for _ in 0..SUBMIT_ATTEMPTS_MAX {
            if !self.is_leader() || term.is_some_and(|t| t != self.inner.raft.metrics().borrow().current_term)
            {
                return Err(ProposeError::NotLeader);
            }
            self.ensure_current().await?;
            let deciding = crate::traced_span!("decide");
            let decision = match deciding.in_scope(|| self.decide(request, now_ms)) {
                // A refusal is an answer read from the state, so it must come from a state
                // that is current *now*: a leader cut off from the others may still believe
                // it leads, with a state that misses writes committed elsewhere (the
                // simulator found this: a retried report refused as stale although its
                // first attempt had committed). Confirm leadership and catch up (read
                // index), then decide again. An acceptance needs no such check: a stale
                // leader's proposal never commits, and preconditions void stale decisions.
                Err(_) => {
                    self.ensure_linearizable().await?;
                    deciding.in_scope(|| self.decide(request, now_ms))
                }
                fresh => fresh,
            };
            let mut proposal = match decision {
                Err(r) => {
                    crate::metrics::proposal("rejected");
                    return Err(ProposeError::Rejected(r));
                }
                Ok(Decision::AlreadyCommitted(c)) => {
                    crate::metrics::proposal("duplicate");
                    return Ok(c);
                }
                Ok(Decision::Propose(p)) => p,
            };
            drop(deciding);
            // The log append, its fsyncs on a majority, the commit and the leader's apply;
            // the proposal carries this span's context to every replica that applies it.
            let committing = crate::traced_span!("commit", events = proposal.events.len());
            proposal.trace = crate::telemetry::current_of(&committing);
            proposal.term = term;
            let speculative = (self.inner.bug == Bug::AckBeforeCommit).then(|| {
                let mut state = self.inner.shared.state.read().expect("state lock").clone();
                apply_proposal(&mut state, &proposal).0
            });
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.inner.queue.send((proposal, tx)).await.is_err() {
                return Err(ProposeError::Unavailable("the replica is shutting down".into()));
            }
            if let Some(ProposalOutcome::Applied(c)) = speculative {
                // The deliberate bug: the answer does not wait for the commit.
                return Ok(c);
            }
            let answer = rx.instrument(committing).await;
            crate::metrics::proposal(match &answer {
                Ok(Ok(ProposalOutcome::Applied(_))) => "applied",
                Ok(Ok(ProposalOutcome::Duplicate(_))) => "duplicate",
                Ok(Ok(ProposalOutcome::Conflict { .. })) => "conflict",
                Ok(Ok(ProposalOutcome::Unfit { .. })) => "unfit",
                Ok(Ok(ProposalOutcome::OutOfTerm { .. })) => "out_of_term",
                Ok(Err(WriteFailure::NotLeader)) => "not_leader",
                Ok(Err(WriteFailure::Other(_))) | Err(_) => "failed",
            });
            match answer {
                Ok(Ok(ProposalOutcome::Applied(c) | ProposalOutcome::Duplicate(c))) => return Ok(c),
                Ok(Ok(ProposalOutcome::Conflict { key, .. })) => last_conflict = key.to_string(),
                Ok(Ok(ProposalOutcome::Unfit { host, .. })) => last_conflict = format!("host {host}"),
                // Its term is over: what it was decided from is gone with it.
                Ok(Ok(ProposalOutcome::OutOfTerm { .. })) => return Err(ProposeError::NotLeader),
                Ok(Err(WriteFailure::NotLeader)) => return Err(ProposeError::NotLeader),
                Ok(Err(WriteFailure::Other(m))) => return Err(ProposeError::Unavailable(m)),
                Err(_) => return Err(ProposeError::Unavailable("the replica is shutting down".into())),
            }
        }
        Err(ProposeError::Rejected(Rejection::Aborted {
            resource: last_conflict,
            attempts: SUBMIT_ATTEMPTS_MAX,
        }))
    }

    fn decide(&self, request: &Request, now_ms: u64) -> Result<Decision, Rejection> {
        let state = self.inner.shared.state.read().expect("state lock");
        if self.inner.bug == Bug::CallerAsCluster {
            let elevated = Request { caller: controlplane::Caller::Cluster, ..request.clone() };
            return decide(&state, &elevated, now_ms);
        }
        decide(&state, request, now_ms)
    }

    /// After winning an election, wait until the applied state includes everything
    /// committed before, so decisions never see a stale state.
    async fn ensure_current(&self) -> Result<(), ProposeError> {
        let term = self.inner.raft.metrics().borrow().current_term;
        if self.inner.linearized_term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        self.ensure_linearizable().await?;
        self.inner.linearized_term.store(term, Ordering::Release);
        Ok(())
    }
}

/// Groups the proposals that arrive while earlier entries are being committed into one
/// log entry each, at most [`BATCHES_IN_FLIGHT_MAX`] entries in flight.
async fn batcher(raft: Raft, mut queue: tokio::sync::mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH_PROPOSALS_MAX {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        crate::runtime::spawn(async move {
            let (proposals, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let count = proposals.len();
            metrics::histogram!(crate::metrics::BATCH_PROPOSALS).record(count as f64);
            let started = std::time::Instant::now();
            let write = raft.client_write(ProposalBatch(Arc::new(proposals)));
            let result =
                tokio::time::timeout(std::time::Duration::from_millis(COMMIT_WAIT_MAX_MS), write).await;
            metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            drop(slot);
            let Ok(result) = result else {
                let why = format!("not committed within {COMMIT_WAIT_MAX_MS} ms; it may still commit: retry with the same request id");
                for waiter in waiters {
                    let _ = waiter.send(Err(WriteFailure::Other(why.clone())));
                }
                return;
            };
            let outcomes: Vec<Result<ProposalOutcome, WriteFailure>> = match result {
                Ok(resp) => match resp.data {
                    ApplyResult::Batch(outcomes) if outcomes.len() == count => {
                        outcomes.into_iter().map(Ok).collect()
                    }
                    other => (0..count)
                        .map(|_| Err(WriteFailure::Other(format!("unexpected apply result {other:?}"))))
                        .collect(),
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    (0..count).map(|_| Err(WriteFailure::NotLeader)).collect()
                }
                Err(e) => (0..count)
                    .map(|_| Err(WriteFailure::Other(format!("write not committed: {e}"))))
                    .collect(),
            };
            for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                let _ = waiter.send(outcome);
            }
        });
    }
}
