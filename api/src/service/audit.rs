//! `drover.api.v1.Audit`: who changed what and when, the state at any past point, proof
//! that replaying history gives today's state, and export as JSON lines.

use std::pin::Pin;
use std::time::Instant;

use controlplane::model::{ResourceKey, VolumeRef};
use controlplane::{apply, state_hash, State};
use proto::api as pb;
use proto::api::audit_server::Audit;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::events::matches;
use super::Api;
use proto::convert;

/// Most events one log page returns.
const AUDIT_PAGE_EVENTS_MAX: usize = 10_000;
/// Events per export chunk.
const EXPORT_CHUNK_EVENTS: usize = 1_000;

fn archive_err(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("reading the archive: {e}"))
}

/// The resource key a (kind, name) filter names, if it names one exactly.
fn resource(kind: &str, name: &str) -> Result<Option<ResourceKey>, Status> {
    if kind.is_empty() || name.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument(format!("invalid resource: {kind} {name:?}"));
    Ok(Some(match kind {
        "host" => ResourceKey::Host(name.into()),
        "domain" => ResourceKey::Domain(name.into()),
        "network" => ResourceKey::Network(name.into()),
        "pool" => ResourceKey::Pool(name.into()),
        "token" => ResourceKey::Token(name.into()),
        "volume" => {
            let (p, v) = name.split_once('/').ok_or_else(bad)?;
            ResourceKey::Volume(VolumeRef::new(p, v))
        }
        "snapshot" => {
            let (d, s) = name.split_once('/').ok_or_else(bad)?;
            ResourceKey::Snapshot { domain: d.into(), name: s.into() }
        }
        "migration" => ResourceKey::Migration(name.parse().map_err(|_| bad())?),
        "cluster" if name == "settings" => ResourceKey::Cluster,
        _ => return Err(Status::invalid_argument(format!("invalid kind: {kind:?}"))),
    }))
}

impl Api {
    /// The seq of the last event at or before `time_ms` (0 if none).
    fn seq_at_time(&self, time_ms: u64, last: u64) -> Result<u64, Status> {
        let archive = self.node.archive();
        let (first, _) = archive.bounds().map_err(archive_err)?.unwrap_or((1, 0));
        let time_of = |seq: u64| -> Result<u64, Status> {
            let e = archive.events(seq, 1).map_err(archive_err)?;
            e.first().filter(|e| e.envelope.seq == seq).map(|e| e.envelope.time_ms).ok_or_else(|| {
                Status::data_loss(format!("event {seq} is missing from this replica's archive"))
            })
        };
        // Binary search over seq. Event times come from the leaders' clocks; where a clock
        // stepped back across a leader change, this finds an event at or before the time
        // rather than the very last one.
        let (mut lo, mut hi) = (first, last);
        if last < first || time_of(first)? > time_ms {
            return Ok(0);
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if time_of(mid)? <= time_ms {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }
}

#[tonic::async_trait]
impl Audit for Api {
    async fn log(
        &self,
        request: Request<pb::AuditLogRequest>,
    ) -> Result<Response<pb::AuditLogReply>, Status> {
        let r = request.into_inner();
        let limit =
            if r.limit == 0 { AUDIT_PAGE_EVENTS_MAX } else { (r.limit as usize).min(AUDIT_PAGE_EVENTS_MAX) };
        let archive = self.node.archive();
        let in_range = |t: u64| (r.from_ms == 0 || t >= r.from_ms) && (r.to_ms == 0 || t <= r.to_ms);
        let kinds: Vec<String> = if r.kind.is_empty() { vec![] } else { vec![r.kind.clone()] };
        let names: Vec<String> = if r.name.is_empty() { vec![] } else { vec![r.name.clone()] };
        let mut events = Vec::new();
        let mut next = r.from_seq.max(1);
        let exact = resource(&r.kind, &r.name)?;
        loop {
            let page: Vec<controlplane::EventEnvelope> = match &exact {
                Some(key) => {
                    let seqs = archive.seqs_for(key, next, limit).map_err(archive_err)?;
                    let mut out = Vec::with_capacity(seqs.len());
                    for seq in seqs {
                        if let Some(e) = archive.events(seq, 1).map_err(archive_err)?.into_iter().next() {
                            out.push(e.envelope);
                        }
                    }
                    out
                }
                None => archive
                    .events(next, limit)
                    .map_err(archive_err)?
                    .into_iter()
                    .map(|e| e.envelope)
                    .collect(),
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                return Ok(Response::new(pb::AuditLogReply { events, next_seq: 0 }));
            };
            for e in &page {
                let principal_ok = r.principal.is_empty() || e.principal == r.principal;
                if principal_ok && in_range(e.time_ms) && matches(e, &kinds, &names) {
                    events.push(convert::event_to_pb(e));
                    if events.len() == limit {
                        return Ok(Response::new(pb::AuditLogReply { events, next_seq: e.seq + 1 }));
                    }
                }
            }
            next = last + 1;
        }
    }

    async fn state_at(
        &self,
        request: Request<pb::StateAtRequest>,
    ) -> Result<Response<pb::StateAtReply>, Status> {
        let r = request.into_inner();
        let last = self.node.read_local(State::last_seq);
        let seq = match r.at {
            Some(pb::state_at_request::At::Seq(seq)) => seq,
            Some(pb::state_at_request::At::TimeMs(t)) => self.seq_at_time(t, last)?,
            None => return Err(Status::invalid_argument("invalid at: give seq or time_ms")),
        };
        if seq > last {
            return Err(Status::out_of_range(format!("seq {seq} is beyond the last applied event {last}")));
        }
        let state = self.node.archive().state_at(seq, last).map_err(archive_err)?;
        let json = serde_json::to_string(&state).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::StateAtReply {
            seq,
            state_hash: state_hash(&state).to_string(),
            state_json: json,
        }))
    }

    async fn verify(
        &self,
        _request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        let (seq, live_hash) = self.node.read_local(|s| (s.last_seq(), state_hash(s)));
        let archive = self.node.archive();
        match archive.bounds().map_err(archive_err)? {
            Some((first, _)) if first > 1 => {
                return Err(Status::failed_precondition(format!(
                    "this replica's archive starts at seq {first} (it joined from a snapshot); verify on a replica with the whole history"
                )));
            }
            _ => {}
        }
        let started = Instant::now();
        let mut state = State::new();
        let mut next = 1;
        while next <= seq {
            let want = usize::try_from(seq - next + 1).unwrap_or(usize::MAX).min(5_000);
            let batch = archive.events(next, want).map_err(archive_err)?;
            if batch.is_empty() {
                return Err(Status::data_loss(format!("event {next} is missing from the archive")));
            }
            for e in batch {
                if e.envelope.seq != next {
                    return Err(Status::data_loss(format!("event {next} is missing from the archive")));
                }
                apply(&mut state, &e.envelope);
                next += 1;
            }
        }
        let replay_hash = state_hash(&state);
        Ok(Response::new(pb::VerifyReply {
            ok: replay_hash == live_hash,
            events: seq,
            seq,
            replay_hash: replay_hash.to_string(),
            live_hash: live_hash.to_string(),
            seconds: started.elapsed().as_secs_f64(),
        }))
    }

    type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let from = request.into_inner().from_seq.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut next = from;
            loop {
                let batch = match node.archive().events(next, EXPORT_CHUNK_EVENTS) {
                    Ok(b) if b.is_empty() => return,
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(archive_err(e))).await;
                        return;
                    }
                };
                let mut lines = String::new();
                for e in &batch {
                    next = e.envelope.seq + 1;
                    let line = serde_json::json!({
                        "seq": e.envelope.seq,
                        "raft_index": e.raft_index,
                        "time_ms": e.envelope.time_ms,
                        "principal": e.envelope.principal,
                        "request_id": e.envelope.request_id,
                        "resource": e.envelope.event.subject().to_string(),
                        "event": e.envelope.event,
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
                if tx.send(Ok(pb::ExportChunk { lines })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
