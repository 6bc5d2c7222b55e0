//! Power loss of every replica at once: 3 `drover server` processes keep their data
//! directories on a lazyfs mount (data a process wrote but did not fsync/fdatasync lives
//! only in memory there). Under concurrent writes, all three are SIGKILLed and the power
//! is cut: everything unsynced is gone. Restarted, no replica refuses its data directory,
//! every write that was acknowledged is there at the sequence number its answer gave, and
//! each archive replays to the live state.
//!
//! (That the filesystem really drops what sled's own flush left unsynced is
//! `lazyfs`'s `sled` test.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::{Committed, Event};
use lazyfs::LazyFs;
use raft::client::Client;
use tests::{converged, define_request, wait_for, Processes};

const CLIENTS: usize = 8;
/// Writes acknowledged before the cut (snapshots every 200 entries: several are taken
/// and the log behind them purged, so those boundaries are crossed too).
const CUT_AFTER: usize = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_every_replica_loses_nothing_acknowledged() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let (backing, mountpoint) = (scratch.path().join("backing"), scratch.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mountpoint).unwrap();
    let fs = LazyFs::mount(&backing, &mountpoint).expect("lazyfs mounts (needs root and /dev/fuse)");

    let mut p = Processes::new().with_data_root(&mountpoint);
    let flags = ["--snapshot-every", "200", "--log-kept", "50"];
    let a1 = p.bootstrap(&flags).await;
    p.join_voters(&a1, &[2, 3], &flags).await;
    let addrs = p.addrs();

    let acked: Arc<Mutex<BTreeMap<String, Committed>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = Client::new(addrs.clone());
        let (acked, done) = (acked.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded: the cut comes long before the last of these.
            for i in 0..10 * CUT_AFTER / CLIENTS {
                let name = format!("c{c}-{i}");
                let request = define_request(&name, "load");
                match client.submit(&request).await {
                    Ok(committed) => {
                        acked.lock().unwrap().insert(name, committed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("writes before the cut", Duration::from_secs(300), || async {
        (done.load(Ordering::Relaxed) >= CUT_AFTER).then_some(())
    })
    .await;

    // Every replica dies at once, writes in flight; then the power goes.
    for id in [1, 2, 3] {
        p.kill(id);
    }
    let acked = acked.lock().unwrap().clone();
    for t in tasks {
        t.abort();
    }
    let cut = fs.power_cut();
    eprintln!(
        "power cut: {} writes acknowledged; dropped {cut:?} unsynced; {} syncs",
        acked.len(),
        fs.syncs()
    );
    assert!(cut.bytes > 0, "the cut dropped nothing: the test would not notice a missing sync");

    for id in [1, 2, 3] {
        p.start(id, &flags);
    }
    let probe = Client::new(addrs.clone());
    // Restarted replicas first agree on their snapshots, before a leader commits what
    // their logs hold after them: a write in the new term commits all of it, so the
    // comparison waits for that write to be applied everywhere.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut marker: Option<u64> = None;
    let (last_seq, hash) = loop {
        for id in [1, 2, 3] {
            if !p.replicas.get_mut(&id).expect("started").is_running() {
                let log = p.log_of(id);
                panic!("replica {id} exited after the cut: {}", log.lines().last().unwrap_or_default());
            }
        }
        assert!(Instant::now() < deadline, "the replicas did not come back and agree within 120 s");
        match marker {
            None => {
                let leader = probe.status(&addrs[0]).await.ok().is_some_and(|s| s.leader_id != 0);
                if leader {
                    marker =
                        probe.submit(&define_request("after-the-cut", "t")).await.ok().map(|c| c.last_seq);
                }
            }
            Some(seq) => {
                if let Some(agreed) = converged(&probe, &addrs).await.filter(|(last, _)| *last >= seq) {
                    break agreed;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        last_seq > acked.len() as u64,
        "{last_seq} events for {} acknowledged writes and the marker",
        acked.len()
    );

    for addr in &addrs {
        let archive = probe.archive(addr, 1).await.unwrap();
        assert_eq!(archive.len() as u64, last_seq, "{addr}'s archive is complete");
        let mut defined: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &archive {
            let Event::DomainDefined { name, .. } = &e.event else {
                panic!("unexpected event {:?}", e.event)
            };
            assert!(defined.insert(name, e.seq).is_none(), "{name} defined twice on {addr}");
        }
        let lost: Vec<&String> = acked
            .iter()
            .filter(|(n, c)| defined.get(n.as_str()) != Some(&c.first_seq))
            .map(|(n, _)| n)
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged writes lost on {addr}, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        );
        let replayed = probe.state_hash_at(addr, last_seq).await.unwrap();
        assert_eq!(replayed, hash, "{addr}'s archive replays to the live state");
    }
    drop(p);
    drop(fs);
}
