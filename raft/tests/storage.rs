//! The storage layer with real proposals: group commit, the fsync model, restart from
//! snapshot + log, and the archive (checkpoints, state at a past seq, resource index).

use controlplane::fixtures::{kernel_spec, register_host, Harness};
use controlplane::model::{HostState, ResourceKey};
use controlplane::{decide, state_hash, Command, Decision, Proposal, Request, State};
use openraft::storage::{
    RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::{CommittedLeaderId, EntryPayload};
use raft::kv::Kv;
use raft::kv_mem::MemKv;
use raft::log_store::LogStore;
use raft::state_machine::StateMachine;
use raft::type_config::{ApplyResult, Entry, LogId, ProposalBatch};

/// Decided proposals for a little cluster's life: a host, then domains defined and started.
fn proposals(domains: usize) -> Vec<Proposal> {
    let mut h = Harness::new();
    let mut out = Vec::new();
    let mut commands = vec![
        register_host("h1", 64, 1 << 20),
        Command::SetHostState { name: "h1".into(), state: HostState::Ready },
    ];
    for i in 0..domains {
        commands.push(Command::DefineDomain { name: format!("d{i}"), spec: kernel_spec(1, 64) });
        commands.push(Command::StartDomain { name: format!("d{i}") });
    }
    for c in commands {
        let r: Request = h.request(c);
        let Ok(Decision::Propose(p)) = decide(&h.state, &r, h.now_ms) else { panic!("fixture decides") };
        out.push(p);
        h.submit(&r).unwrap();
    }
    out
}

fn entry(index: u64, proposal: Proposal) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(ProposalBatch(std::sync::Arc::new(vec![proposal]))),
    }
}

#[tokio::test]
async fn an_appended_batch_costs_one_fsync() {
    let kv = MemKv::new();
    let mut log = LogStore::new(kv.clone());
    let entries: Vec<Entry> =
        proposals(20).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    let n = entries.len() as u64;
    let before = kv.flushes();
    log.blocking_append(entries).await.unwrap();
    assert_eq!(kv.flushes() - before, 1, "one fsync for {n} entries");
    assert_eq!(log.try_get_log_entries(1..=n).await.unwrap().len() as u64, n);
}

#[tokio::test]
async fn reads_agree_with_the_store_across_truncation_and_purge() {
    let kv = MemKv::new();
    let mut log = LogStore::new(kv.clone());
    let entries: Vec<Entry> =
        proposals(10).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    let n = entries.len() as u64;
    log.blocking_append(entries.clone()).await.unwrap();
    assert_eq!(log.try_get_log_entries(1..=n).await.unwrap(), entries);
    // A new leader's entries replace the tail from 6 on.
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 6)).await.unwrap();
    let mut replaced = entries[..5].to_vec();
    for (i, e) in entries[10..12].iter().enumerate() {
        let mut e = e.clone();
        e.log_id = LogId::new(CommittedLeaderId::new(2, 1), 6 + i as u64);
        replaced.push(e);
    }
    log.blocking_append(replaced[5..].to_vec()).await.unwrap();
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
    let cached = log.try_get_log_entries(3..=7).await.unwrap();
    assert_eq!(cached, replaced[2..7].to_vec());
    assert!(log.try_get_log_entries(8..=n).await.unwrap().is_empty(), "truncated entries are gone");
    assert!(log.try_get_log_entries(1..3).await.unwrap().is_empty(), "purged entries are gone");
    // What a fresh store (nothing cached) reads is the same.
    let mut fresh = LogStore::new(kv.clone());
    assert_eq!(fresh.try_get_log_entries(3..=7).await.unwrap(), cached);
    assert_eq!(fresh.try_get_log_entries(3..=7).await.unwrap(), cached, "and again, from its cache");
}

#[tokio::test]
async fn what_was_not_flushed_is_lost_in_a_crash() {
    let kv = MemKv::new();
    kv.put(raft::kv::Tree::Meta, b"a", b"1").unwrap();
    kv.flush().await.unwrap();
    kv.put(raft::kv::Tree::Meta, b"b", b"2").unwrap();
    kv.crash();
    assert_eq!(kv.get(raft::kv::Tree::Meta, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv.get(raft::kv::Tree::Meta, b"b").unwrap(), None);
    kv.fail_writes(true);
    assert!(kv.put(raft::kv::Tree::Meta, b"c", b"3").is_err());
    assert!(kv.flush().await.is_err());
}

#[tokio::test]
async fn a_crash_takes_back_overwrites_and_removals_since_the_last_flush() {
    use raft::kv::Tree::{Log, Meta};
    let kv = MemKv::new();
    let all = |tree| kv.range(tree, b"", None, usize::MAX).unwrap();
    for k in [b"a", b"b", b"c", b"d"] {
        kv.put(Log, k, b"1").unwrap();
    }
    kv.put(Meta, b"m", b"1").unwrap();
    kv.flush().await.unwrap();
    let durable = (all(Log), all(Meta));
    kv.put(Log, b"b", b"2").unwrap();
    kv.remove_range(Log, b"b", Some(b"d")).unwrap();
    kv.put(Log, b"c", b"3").unwrap();
    kv.put(Log, b"e", b"3").unwrap();
    kv.remove_range(Log, b"a", None).unwrap();
    kv.put(Meta, b"m", b"2").unwrap();
    assert!(all(Log).is_empty());
    kv.crash();
    assert_eq!((all(Log), all(Meta)), durable, "back to what was flushed");
    // What a flush covered survives the next crash.
    kv.remove_range(Log, b"b", Some(b"d")).unwrap();
    kv.flush().await.unwrap();
    kv.put(Log, b"b", b"4").unwrap();
    kv.crash();
    let keys: Vec<Vec<u8>> = all(Log).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"d".to_vec()]);
}

#[tokio::test]
async fn restart_is_snapshot_plus_log_and_the_archive_answers_the_past() {
    let kv = MemKv::new();
    let mut log = LogStore::new(kv.clone());
    let mut sm = StateMachine::open(kv.clone(), 10).unwrap();
    let entries: Vec<Entry> =
        proposals(30).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    let total = entries.len() as u64;
    log.blocking_append(entries.clone()).await.unwrap();

    // Apply the first 40 entries, snapshot, then the rest.
    let results = sm.apply(entries[..40].to_vec()).await.unwrap();
    assert!(results.iter().all(
        |r| matches!(r, ApplyResult::Batch(o) if matches!(o[..], [controlplane::ProposalOutcome::Applied(_)]))
    ));
    let snap = sm.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 40);
    sm.apply(entries[40..].to_vec()).await.unwrap();
    let live = sm.shared().state.read().unwrap().clone();
    let live_hash = state_hash(&live);

    // Power loss, then restart: the snapshot, plus openraft re-applying the log after it.
    kv.crash();
    let mut reopened = StateMachine::open(kv.clone(), 10).unwrap();
    let (applied, _) = reopened.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 40);
    let mut log = LogStore::new(kv.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.unwrap().index, total, "the log was flushed on append");
    let rest = log.try_get_log_entries(41..=total).await.unwrap();
    reopened.apply(rest).await.unwrap();
    assert_eq!(state_hash(&reopened.shared().state.read().unwrap()), live_hash);

    // The archive holds every event, has checkpoints, and rebuilds any past state.
    let archive = reopened.archive();
    let (first, last) = archive.bounds().unwrap().unwrap();
    assert_eq!((first, last), (1, live.last_seq()));
    let mut replay = State::new();
    for e in archive.events(1, usize::MAX).unwrap() {
        controlplane::apply(&mut replay, &e.envelope);
    }
    assert_eq!(state_hash(&replay), live_hash);
    let mut expect = State::new();
    for e in archive.events(1, usize::MAX).unwrap() {
        let seq = e.envelope.seq;
        controlplane::apply(&mut expect, &e.envelope);
        if seq % 7 == 0 || seq == last {
            assert_eq!(
                state_hash(&archive.state_at(seq, last).unwrap()),
                state_hash(&expect),
                "state at {seq}"
            );
        }
    }
    assert!(archive.state_at(last + 1, last).is_err());
    let d3 = archive.seqs_for(&ResourceKey::Domain("d3".into()), 0, 100).unwrap();
    assert_eq!(d3.len(), 3, "defined, start requested, scheduled: {d3:?}");
    let host_events = archive.seqs_for(&ResourceKey::Host("h1".into()), 0, 1000).unwrap();
    assert_eq!(host_events.len(), 2 + 30, "registered, ready, and every placement");
}

#[tokio::test]
async fn a_snapshot_installs_on_an_empty_replica() {
    let kv = MemKv::new();
    let mut sm = StateMachine::open(kv.clone(), 1000).unwrap();
    let entries: Vec<Entry> =
        proposals(5).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    sm.apply(entries).await.unwrap();
    let snap = sm.build_snapshot().await.unwrap();
    let hash = state_hash(&sm.shared().state.read().unwrap());

    let other = MemKv::new();
    let mut fresh = StateMachine::open(other.clone(), 1000).unwrap();
    fresh.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(state_hash(&fresh.shared().state.read().unwrap()), hash);
    let seq = fresh.shared().state.read().unwrap().last_seq();
    // A checkpoint at the snapshot answers state_at there; the events before it are a
    // noted hole, durable with the snapshot.
    assert_eq!(state_hash(&fresh.archive().state_at(seq, seq).unwrap()), hash);
    assert_eq!(fresh.archive().first_hole().unwrap(), Some((1, seq)));
    other.crash();
    let reopened = StateMachine::open(other, 1000).unwrap();
    assert_eq!(state_hash(&reopened.shared().state.read().unwrap()), hash);
    assert_eq!(reopened.archive().first_hole().unwrap(), Some((1, seq)));
}

/// Serves events from an archive, optionally altered.
struct Peer {
    archive: raft::archive::Archive<MemKv>,
    tamper: bool,
}

impl raft::backfill::ArchivePeers for Peer {
    async fn fetch(
        &mut self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<raft::archive::ArchivedEvent>, String> {
        let mut events = self.archive.events(from_seq, limit).map_err(|e| e.to_string())?;
        if self.tamper {
            if let Some(e) = events.first_mut() {
                e.envelope.principal = "mallory".into();
            }
        }
        Ok(events)
    }
}

/// Run the backfill task against `peer` until `archive` has no hole (bounded: 100 rounds
/// of paused time).
async fn backfill_until_whole(archive: &raft::archive::Archive<MemKv>, peer: Peer) {
    let task = tokio::spawn(raft::backfill::run(archive.clone(), peer, std::time::Duration::from_millis(10)));
    for _ in 0..100 {
        if archive.first_hole().unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn backfill_fills_the_hole_a_snapshot_left_and_refuses_events_that_do_not_replay() {
    let kv = MemKv::new();
    let mut sm = StateMachine::open(kv.clone(), 7).unwrap();
    let entries: Vec<Entry> =
        proposals(40).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    sm.apply(entries).await.unwrap();
    let snap = sm.build_snapshot().await.unwrap();
    let last = sm.shared().state.read().unwrap().last_seq();

    let other = MemKv::new();
    let mut fresh = StateMachine::open(other.clone(), 7).unwrap();
    fresh.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    let archive = fresh.archive();
    assert_eq!(archive.first_hole().unwrap(), Some((1, last)));

    // Events that were altered do not replay to the checkpoint: the hole stays.
    let liar = Peer { archive: sm.archive(), tamper: true };
    let task = tokio::spawn(raft::backfill::run(archive.clone(), liar, std::time::Duration::from_millis(10)));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    task.abort();
    assert_eq!(archive.first_hole().unwrap(), Some((1, last)), "a tampered history is refused");

    backfill_until_whole(&archive, Peer { archive: sm.archive(), tamper: false }).await;
    assert_eq!(archive.first_hole().unwrap(), None, "the hole is filled");
    assert_eq!(archive.events(1, usize::MAX).unwrap(), sm.archive().events(1, usize::MAX).unwrap());
    for seq in [1, last / 2, last] {
        assert_eq!(
            state_hash(&archive.state_at(seq, last).unwrap()),
            state_hash(&sm.archive().state_at(seq, last).unwrap()),
            "state at {seq}"
        );
    }
    // The filled hole is durable.
    archive.flush().await.unwrap();
    other.crash();
    assert_eq!(StateMachine::open(other, 7).unwrap().archive().first_hole().unwrap(), None);
}

/// A second snapshot installed while the first one's hole is only partly backfilled notes
/// the events after that hole, not after the last event present: holes never overlap (a
/// fill of one would drop events of the other; the simulator found an archive left
/// without events no hole named). Both are then filled.
#[tokio::test(start_paused = true)]
async fn a_snapshot_installed_during_a_partial_backfill_notes_a_hole_that_does_not_overlap() {
    let kv = MemKv::new();
    let mut sm = StateMachine::open(kv.clone(), 7).unwrap();
    let all = proposals(30);
    let entries = |range: std::ops::Range<usize>| -> Vec<Entry> {
        range.map(|i| entry(i as u64 + 1, all[i].clone())).collect()
    };
    sm.apply(entries(0..30)).await.unwrap();
    let first = sm.build_snapshot().await.unwrap();
    let a = sm.shared().state.read().unwrap().last_seq();

    let other = MemKv::new();
    let mut fresh = StateMachine::open(other.clone(), 7).unwrap();
    fresh.install_snapshot(&first.meta, first.snapshot).await.unwrap();
    let archive = fresh.archive();
    assert_eq!(archive.holes().unwrap(), vec![(1, a)]);
    // A fill that stopped after a few events.
    archive.begin_backfill(1, a).unwrap();
    archive.backfill(&sm.archive().events(1, 5).unwrap()).unwrap();

    sm.apply(entries(30..all.len())).await.unwrap();
    let second = sm.build_snapshot().await.unwrap();
    let b = sm.shared().state.read().unwrap().last_seq();
    fresh.install_snapshot(&second.meta, second.snapshot).await.unwrap();
    assert_eq!(archive.holes().unwrap(), vec![(1, a), (a + 1, b)], "two holes side by side");

    backfill_until_whole(&archive, Peer { archive: sm.archive(), tamper: false }).await;
    assert_eq!(archive.holes().unwrap(), vec![], "both holes are filled");
    assert_eq!(archive.events(1, usize::MAX).unwrap(), sm.archive().events(1, usize::MAX).unwrap());
}

/// A replica restarted right after installing a snapshot, before it applied anything
/// after it or backfilled its archive, opens: the archive's noted hole is not damage.
#[tokio::test]
async fn a_data_directory_with_a_noted_archive_hole_opens() {
    let source = MemKv::new();
    let mut sm = StateMachine::open(source, 1000).unwrap();
    let entries: Vec<Entry> =
        proposals(5).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    sm.apply(entries).await.unwrap();
    let snap = sm.build_snapshot().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    {
        let data = raft::data_dir::DataDir::open(dir.path(), 7).await.unwrap();
        let mut fresh =
            StateMachine::open_with_archive(data.kv.clone(), data.archive_kv.clone(), 1000).unwrap();
        fresh.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert!(fresh.archive().first_hole().unwrap().is_some());
        data.kv.flush().await.unwrap();
        data.archive_kv.flush().await.unwrap();
    }
    let reopened = raft::data_dir::DataDir::open(dir.path(), 7).await;
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

/// A purge records its point, then removes the entries; a crash between the two (seen
/// with SIGKILL in `tests/tests/damaged_storage.rs`) leaves entries at or below the point.
/// The data directory opens, and the log store finishes the purge when it starts.
#[tokio::test]
async fn a_purge_interrupted_after_its_point_was_recorded_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> =
        proposals(5).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    let n = entries.len() as u64;
    {
        let data = raft::data_dir::DataDir::open(dir.path(), 7).await.unwrap();
        // Written as the log store writes them (its flusher task would hold the database
        // open past this block).
        let pairs =
            entries.iter().map(|e| (raft::kv::u64_key(e.log_id.index).to_vec(), raft::encoding::encode(e)));
        data.kv.put_in_order(raft::kv::Tree::Log, pairs.collect()).unwrap();
        // What a purge up to 4 writes first, without what it removes after.
        let point = LogId::new(CommittedLeaderId::new(1, 1), 4);
        data.kv.put(raft::kv::Tree::Meta, b"last_purged", &raft::encoding::encode(&point)).unwrap();
        data.kv.flush().await.unwrap();
    }
    // sled's background flusher lets go of the database's file lock shortly after the
    // last handle is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let data = loop {
        match raft::data_dir::DataDir::open(dir.path(), 7).await {
            Ok(data) => break data,
            Err(e) if e.to_string().contains("damaged") && format!("{e:?}").contains("acquire lock") => {
                assert!(std::time::Instant::now() < deadline, "the database stays locked: {e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a half-done purge is not damage: {e:?}"),
        }
    };
    let mut log = LogStore::new(data.kv.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(n));
    assert_eq!(log.last_index().unwrap(), Some(n));
    let first = data.kv.first(raft::kv::Tree::Log).unwrap().map(|(k, _)| raft::kv::key_u64(&k));
    assert_eq!(first, Some(5), "the leftovers are gone");
    assert_eq!(log.try_get_log_entries(5..=n).await.unwrap().len() as u64, n - 4);
}

#[tokio::test]
async fn a_proposal_bound_to_its_term_applies_only_in_an_entry_of_that_term() {
    let kv = MemKv::new();
    let mut sm = StateMachine::open(kv.clone(), 10).unwrap();
    let mut ps = proposals(0);
    let ready = ps.pop().unwrap();
    sm.apply(vec![entry(1, ps.pop().unwrap())]).await.unwrap();
    // The leader of term 1 decided the host ready from its leases; the entry that carries
    // it was appended by the leader of term 2 (it waited through an election).
    let bound = Proposal { term: Some(1), ..ready };
    let mut late = entry(2, bound.clone());
    late.log_id = LogId::new(CommittedLeaderId::new(2, 1), 2);
    let before = state_hash(&sm.shared().state.read().unwrap());
    let results = sm.apply(vec![late]).await.unwrap();
    assert!(
        matches!(&results[..], [ApplyResult::Batch(o)]
            if o[..] == [controlplane::ProposalOutcome::OutOfTerm { decided: 1, appended: 2 }]),
        "{results:?}"
    );
    assert_eq!(state_hash(&sm.shared().state.read().unwrap()), before, "a voided proposal changes nothing");
    // In an entry of its own term it applies.
    let results = sm.apply(vec![entry(3, bound)]).await.unwrap();
    assert!(
        matches!(&results[..], [ApplyResult::Batch(o)] if matches!(o[..], [controlplane::ProposalOutcome::Applied(_)])),
        "{results:?}"
    );
    assert_eq!(sm.shared().state.read().unwrap().host("h1").unwrap().state, HostState::Ready);
}

#[tokio::test]
async fn replication_reads_only_entries_that_follow_where_it_asked() {
    let kv = MemKv::new();
    let mut log = LogStore::new(kv.clone());
    let entries: Vec<Entry> =
        proposals(4).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    log.blocking_append(entries.clone()).await.unwrap();
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.unwrap();
    // A send that began before the purge asks from 3: what is left (6 on) must not go out
    // as if it followed 2.
    assert!(log.limited_get_log_entries(3, 9).await.unwrap().is_empty());
    assert_eq!(log.limited_get_log_entries(6, 9).await.unwrap(), entries[5..8].to_vec());
    // Uncached reads, from the store, answer alike.
    let mut reopened = LogStore::new(kv.clone());
    assert!(reopened.limited_get_log_entries(4, 9).await.unwrap().is_empty());
    assert_eq!(reopened.limited_get_log_entries(6, 8).await.unwrap(), entries[5..7].to_vec());
}

#[tokio::test]
async fn a_replication_reader_reads_nothing_once_its_store_has_truncated() {
    let kv = MemKv::new();
    let mut log = LogStore::new(kv.clone());
    let entries: Vec<Entry> =
        proposals(2).into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
    log.blocking_append(entries.clone()).await.unwrap();
    // A leader's replication stream reads its log.
    let mut stream = log.get_log_reader().await;
    assert_eq!(stream.limited_get_log_entries(3, 6).await.unwrap(), entries[2..5].to_vec());
    // The leader stepped down: a new leader's entries replace the tail from 4 on.
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.unwrap();
    let newer: Vec<Entry> = entries[3..5]
        .iter()
        .map(|e| Entry { log_id: LogId::new(CommittedLeaderId::new(2, 2), e.log_id.index), ..e.clone() })
        .collect();
    log.blocking_append(newer.clone()).await.unwrap();
    // The old stream would send the new term's entries after its own term's 3: nothing.
    assert!(stream.limited_get_log_entries(4, 6).await.unwrap().is_empty());
    // A stream of a later leadership reads them, and other reads are not affected.
    let mut later = log.get_log_reader().await;
    assert_eq!(later.limited_get_log_entries(4, 6).await.unwrap(), newer);
    assert_eq!(stream.try_get_log_entries(4..6).await.unwrap(), newer);
}
