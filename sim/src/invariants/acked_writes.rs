//! Protects: **no acknowledged write is lost, and no refused write has an effect.**
//! Every write a client or host saw acknowledged is in every replica's committed
//! request window with the very answer it was given; every write refused on its first
//! try is in none. (A refusal after a try that got no answer says nothing of that earlier
//! try, which may still commit: request ids make writes happen at most once, they do not
//! make refusals durable.) An acknowledged write that changed nothing (no events, such as a host
//! registering again unchanged) has nothing to lose and leaves no trace to check.

use controlplane::State;
use raft::type_config::NodeId;

use crate::history::{Op, Outcome};

/// `replicas`: each replica's final state.
pub fn check(ops: &[Op], replicas: &[(NodeId, &State)]) -> Vec<String> {
    let mut found = Vec::new();
    for op in ops {
        for (id, state) in replicas {
            let committed = state.requests().get(&op.principal, &op.request_id);
            match (&op.outcome, committed) {
                (Outcome::Acked(answer), Some(c)) if c == *answer => {}
                (Outcome::Acked(answer), None) if answer.last_seq < answer.first_seq => {}
                (Outcome::Acked(answer), other) => found.push(format!(
                    "{} {} ({}) was acknowledged as seq {}..{} but replica {id} has {other:?}",
                    op.principal, op.request_id, op.command, answer.first_seq, answer.last_seq
                )),
                (Outcome::Rejected { rejection: r, attempts: 1 }, Some(c)) => found.push(format!(
                    "{} {} ({}) was refused ({r}) but replica {id} committed it as {c:?}",
                    op.principal, op.request_id, op.command
                )),
                _ => {}
            }
        }
    }
    found
}
