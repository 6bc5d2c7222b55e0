//! Drover's pure core: the resource model, the events, `apply`, `decide`, the scheduler,
//! the HA controller and its what-if (`ha`), the idempotency window, the codec and the
//! state hash.
//!
//! Contract:
//! - **Pure.** Nothing here reads a clock, draws randomness, does I/O or spawns a task.
//!   Time comes in as `now_ms`; the same inputs give the same outputs on every machine.
//!   The simulator and production run this very code.
//! - **The log holds events.** [`decide`] turns a [`Request`] into a [`Proposal`]: events
//!   plus preconditions on the versions of what it read. [`apply_proposal`] applies all of
//!   a proposal's events or none; [`apply`] applies one event and cannot fail. Replaying
//!   the envelopes of an archive with [`apply`] rebuilds the state exactly
//!   ([`state_hash`] proves it).
//! - **Idempotent.** A request id already committed gets its first answer
//!   ([`Decision::AlreadyCommitted`], [`ProposalOutcome::Duplicate`]); see
//!   [`request_window`] for the window's bound.
//! - **Typed rejections.** Every [`Rejection`] maps to one gRPC code ([`RejectionCode`])
//!   and leaves the state untouched.
//! - **Versioned, append-only formats.** Everything durable goes through [`codec`].
#![forbid(unsafe_code)]

mod apply;
pub mod codec;
mod command;
mod decide;
mod event;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod ha;
pub mod invariants;
pub mod limits;
pub mod model;
mod proposal;
mod rejection;
pub mod request_window;
pub mod scheduler;
mod state;
mod state_hash;
mod state_v1;
mod state_v10;
mod state_v2;
mod state_v3;
mod state_v4;
mod state_v5;
mod state_v6;
mod state_v8;
mod state_v9;
mod validate;

pub use apply::{apply, apply_proposal, apply_proposal_in_term};
pub use command::{Caller, Command, Need, Request, SnapshotOutcome, VolumeOutcome};
pub use decide::decide;
pub use event::{Event, EventEnvelope};
pub use proposal::{
    Committed, Decision, HostFit, Precondition, Proposal, ProposalOutcome, ProposalV11, ProposalV7,
    TraceParent,
};
pub use rejection::{Rejection, RejectionCode};
pub use state::State;
pub use state_hash::{state_hash, StateHash};
