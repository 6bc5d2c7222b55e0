//! The leader's HA loop: every [`HA_TICK_MS`], while this replica leads, ask the pure
//! controller what to do given the leases ([`controlplane::ha::plan_hosts`]), and submit
//! its commands one at a time through the ordinary write path (each decided against the
//! state the previous one left); then, in the same tick as a fencing or at least every
//! [`RESTART_SCAN_MS`], which HA domains to restart ([`controlplane::ha::plan_restarts`],
//! a look at every domain: with 100,000 domains every tick it took a tenth of a busy
//! leader's CPU, and held the state lock against the apply while it ran). Followers run
//! the loop too and do nothing.

use std::sync::Arc;
use std::time::Duration;

use controlplane::ha::{plan_hosts, plan_restarts, HaSettings, PRINCIPAL};
use controlplane::model::HostState;
use controlplane::{Command, Committed, Request};
use tracing::{debug, info};

use crate::leases::Leases;
use crate::proposer::{ProposeError, Proposer};
use crate::state_machine::Shared;
use crate::type_config::{NodeId, Raft};

/// How often the leader looks at leases and domains to restart.
pub const HA_TICK_MS: u64 = 100;
/// How often the leader looks for HA domains to restart when no host was fenced (a
/// crashed HA domain on a live host waits at most this long).
pub const RESTART_SCAN_MS: u64 = 1_000;
/// How long the loop waits for one of its writes to commit.
pub const HA_PROPOSE_TIMEOUT_MS: u64 = 2_000;

/// The wall clock the leader stamps events with (the simulator passes its own).
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What the loop needs of its replica.
pub struct HaLoop {
    pub id: NodeId,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub proposer: Proposer,
    pub leases: Arc<Leases>,
    pub settings: HaSettings,
    pub clock: WallClock,
}

impl std::fmt::Debug for HaLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaLoop").field("id", &self.id).field("settings", &self.settings).finish()
    }
}

impl HaLoop {
    /// Run until the replica's tasks end.
    pub async fn run(self) {
        // Request ids must not repeat across restarts of this replica within a term.
        let boot = (self.clock)();
        let mut sent = 0u64;
        let mut last_scan: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(HA_TICK_MS)).await;
            let term = {
                let m = self.raft.metrics();
                let m = m.borrow();
                if m.running_state.is_err() {
                    return; // raft has stopped: so has this replica
                }
                if m.current_leader != Some(self.id) {
                    continue;
                }
                m.current_term
            };
            let now = tokio::time::Instant::now();
            let hosts = {
                let state = self.shared.state.read().expect("state lock");
                let ages = self.leases.ages(term, state.hosts().keys().map(String::as_str), now);
                plan_hosts(&state, &ages, &self.settings)
            };
            // Host states first, one at a time (each may lose runs the restarts need).
            let mut fenced_now = false;
            let mut led = true;
            for command in hosts {
                // A plan is made from the leases at one moment and carried out over several
                // commits: a host that renewed meanwhile is not fenced, and one being fenced
                // cannot renew until its fencing has committed or failed.
                let fencing = match &command {
                    Command::SetHostState { name, state: HostState::Fenced } => {
                        let now = tokio::time::Instant::now();
                        let fence_after = self.settings.fence_after_ms();
                        if !self.leases.begin_fencing(term, name, now, fence_after) {
                            continue;
                        }
                        Some(name.clone())
                    }
                    _ => None,
                };
                sent += 1;
                // Decided from this term's leases, so it holds only in this term.
                let outcome = self.propose(command, term, boot, sent, true).await;
                fenced_now |= fencing.is_some();
                if let Some(host) = fencing {
                    // Renewals are answered again only once the fencing has certainly
                    // committed (the state then refuses them) or certainly not; a write
                    // whose fate is unknown may still commit in this term, so the mark
                    // stays. A new term clears it: the write can then commit only from
                    // this term's entries, which the new leader applies before it renews
                    // anyone (and a host that old is fenced again next tick).
                    if matches!(outcome, Ok(_) | Err(ProposeError::Rejected(_))) {
                        self.leases.fenced(&host);
                    }
                }
                if matches!(outcome, Err(ProposeError::NotLeader)) {
                    led = false;
                    break;
                }
            }
            let due =
                last_scan.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(RESTART_SCAN_MS));
            if !led || !(fenced_now || due) {
                continue;
            }
            last_scan = Some(now);
            let restarts = {
                let state = self.shared.state.read().expect("state lock");
                plan_restarts(&state, (self.clock)())
            };
            if restarts.is_empty() {
                continue;
            }
            // Restarts together: decided in priority order as they are handed over, they
            // share raft entries, so a dead host's many domains come back in one or two
            // commits rather than one commit each. (Two decided against the same state may
            // want the same room; the write path decides the loser again on the newer
            // state, so under a shortage a lower priority can win a slot: the plan's next
            // tick sees what is left.)
            let writes = restarts.into_iter().map(|command| {
                sent += 1;
                self.propose(command, term, boot, sent, false)
            });
            futures::future::join_all(writes).await;
        }
    }

    /// Submit one command of the controller, bounded in time: a write a cut-off leader
    /// made may wait for a commit that never comes, and the loop must go on (a later tick
    /// decides again). `in_term`: it was decided from this term's leases and holds only
    /// in a log entry of `term`.
    async fn propose(
        &self,
        command: Command,
        term: u64,
        boot: u64,
        sent: u64,
        in_term: bool,
    ) -> Result<Committed, ProposeError> {
        let name = command.name();
        let request = Request {
            request_id: format!("ha-{}-{term}-{boot}-{sent}", self.id),
            principal: PRINCIPAL.to_owned(),
            caller: controlplane::Caller::Cluster,
            command,
        };
        let now = (self.clock)();
        let proposed = async {
            match in_term {
                true => self.proposer.propose_in_term(&request, now, term).await,
                false => self.proposer.propose(&request, now).await,
            }
        };
        let outcome = tokio::time::timeout(Duration::from_millis(HA_PROPOSE_TIMEOUT_MS), proposed)
            .await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("no commit in time".into())));
        match &outcome {
            Ok(c) => info!(command = name, ?request.command, seq = c.last_seq, "HA"),
            Err(e) => debug!(command = name, error = %e, "HA command not committed"),
        }
        outcome
    }
}
