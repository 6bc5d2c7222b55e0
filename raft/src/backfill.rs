//! Filling the archive's holes: a replica that installed a snapshot lacks the events the
//! snapshot covered. This task fetches them from other replicas ([`ArchivePeers`]: gRPC in
//! production, the simulated network in the simulator), writes them, and closes the hole
//! only once replaying them reproduces the checkpoint written at the snapshot
//! ([`Archive::close_hole`]). Memory stays bounded: events are written batch by batch and
//! the check replays them from the archive.

use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use crate::archive::{Archive, ArchivedEvent};
use crate::kv::Kv;

/// Events fetched per request.
pub const BACKFILL_BATCH_EVENTS: usize = 1_000;

/// Where missing events come from.
pub trait ArchivePeers: Send + 'static {
    /// Archived events from `from_seq` on, at most `limit`, from some other replica (an
    /// empty answer or an error: try again later, perhaps elsewhere).
    fn fetch(
        &mut self,
        from_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ArchivedEvent>, String>> + Send;
}

/// Fill holes every `interval` until the task is dropped.
pub async fn run<K: Kv, P: ArchivePeers>(archive: Archive<K>, mut peers: P, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let (from, to) = match archive.first_hole() {
            Ok(Some(hole)) => hole,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "cannot read the archive's holes");
                continue;
            }
        };
        if let Err(e) = fill(&archive, &mut peers, from, to).await {
            warn!(from, to, error = %e, "archive hole not filled yet");
        }
    }
}

async fn fill<K: Kv, P: ArchivePeers>(
    archive: &Archive<K>,
    peers: &mut P,
    from: u64,
    to: u64,
) -> Result<(), String> {
    archive.begin_backfill(from, to).map_err(|e| e.to_string())?;
    let mut next = from;
    while next <= to {
        let want = usize::try_from(to - next + 1).unwrap_or(usize::MAX).min(BACKFILL_BATCH_EVENTS);
        let batch = peers.fetch(next, want).await?;
        let batch: Vec<ArchivedEvent> = batch.into_iter().take_while(|e| e.envelope.seq <= to).collect();
        let contiguous = batch.iter().zip(next..).all(|(e, seq)| e.envelope.seq == seq);
        if batch.is_empty() || !contiguous {
            return Err(format!("no contiguous events from seq {next}"));
        }
        archive.backfill(&batch).map_err(|e| e.to_string())?;
        next += batch.len() as u64;
    }
    archive.close_hole(from, to).map_err(|e| e.to_string())?;
    archive.flush().await.map_err(|e| e.to_string())?;
    info!(from, to, "archive hole filled");
    Ok(())
}
