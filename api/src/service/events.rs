//! `drover.api.v1.Events`: the durable event stream, from any sequence number.
//!
//! Events come from the replica's archive, so a stream can start anywhere in the history
//! the replica holds and survives restarts: a client that resumes one past the last seq
//! it saw, on this replica or another, gets no gap and no duplicate. With `follow`, the
//! stream waits for newly applied events.

use std::pin::Pin;

use controlplane::model::ResourceKey;
use controlplane::EventEnvelope;
use proto::api as pb;
use proto::api::events_server::Events;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::Api;
use proto::convert;

/// Events read from the archive per step.
const WATCH_BATCH_EVENTS: usize = 512;
/// Events buffered per stream before the sender waits for the client.
const WATCH_BUFFER_EVENTS: usize = 1024;
/// Most kind or name filters per watch.
const WATCH_FILTERS_MAX: usize = 64;

/// The name part of a resource key, as filters match it.
pub fn key_name(key: &ResourceKey) -> String {
    match key {
        ResourceKey::Host(n)
        | ResourceKey::Domain(n)
        | ResourceKey::Network(n)
        | ResourceKey::Pool(n)
        | ResourceKey::Token(n) => n.clone(),
        ResourceKey::Volume(v) => v.to_string(),
        ResourceKey::Snapshot { domain, name } => format!("{domain}/{name}"),
        ResourceKey::Migration(id) => id.to_string(),
        ResourceKey::Cluster => "settings".into(),
    }
}

/// Whether `e` is about a resource of one of `kinds` with one of `names` (empty: any).
pub fn matches(e: &EventEnvelope, kinds: &[String], names: &[String]) -> bool {
    if kinds.is_empty() && names.is_empty() {
        return true;
    }
    std::iter::once(e.event.subject()).chain(e.event.related()).any(|k| {
        (kinds.is_empty() || kinds.iter().any(|x| x == k.kind().as_str()))
            && (names.is_empty() || names.contains(&key_name(&k)))
    })
}

#[tonic::async_trait]
impl Events for Api {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        if r.kinds.len() > WATCH_FILTERS_MAX || r.names.len() > WATCH_FILTERS_MAX {
            return Err(Status::invalid_argument(format!("at most {WATCH_FILTERS_MAX} kinds and names")));
        }
        if let Some(bad) = r.kinds.iter().find(|k| {
            !["host", "domain", "network", "pool", "volume", "snapshot", "migration"].contains(&k.as_str())
        }) {
            return Err(Status::invalid_argument(format!("invalid kinds: {bad:?} is not a resource kind")));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER_EVENTS);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut applied = node.applied_seq();
            let mut next = r.from_seq.max(1);
            loop {
                let batch = match node.archive().events(next, WATCH_BATCH_EVENTS) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("reading the archive: {e}")))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    if !r.follow {
                        return;
                    }
                    // Wait for something new to be applied (or the client to leave).
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for e in batch {
                    if e.envelope.seq != next {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "event {next} is missing from this replica's archive"
                            ))))
                            .await;
                        return;
                    }
                    next += 1;
                    if matches(&e.envelope, &r.kinds, &r.names)
                        && tx.send(Ok(convert::event_to_pb(&e.envelope))).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
