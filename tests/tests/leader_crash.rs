//! Leader crash under load: 3 replica processes, 10,000 writes from 16 concurrent
//! clients, the leader SIGKILLed in the middle. A new leader takes over; every
//! acknowledged write is present exactly once on every replica; the killed replica
//! restarts, catches up, and all state hashes and archives agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::{Committed, Event};
use raft::client::Client;
use tests::{converged, define_request, wait_for, Processes};

const CLIENTS: usize = 16;
const WRITES: usize = 10_000;
const KILL_AFTER: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_under_load_loses_nothing_acknowledged() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(&[]).await;
    p.join_voters(&a1, &[2, 3], &[]).await;
    let probe = Client::new(vec![a1.clone()]);
    let addrs = p.addrs();

    let acked: Arc<Mutex<BTreeMap<String, Committed>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut endpoints = addrs.clone();
        endpoints.rotate_left(c % addrs.len());
        let client = Client::new(endpoints);
        let (acked, failed, done) = (acked.clone(), failed.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..WRITES / CLIENTS {
                let name = format!("c{c}-{i}");
                let request = define_request(&name, "load");
                match client.submit(&request).await {
                    Ok(committed) => {
                        acked.lock().unwrap().insert(name, committed);
                    }
                    Err(e) => failed.lock().unwrap().push(format!("{name}: {e}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    wait_for("a third of the writes", Duration::from_secs(300), || async {
        (done.load(Ordering::Relaxed) >= KILL_AFTER).then_some(())
    })
    .await;
    let leader = probe.status(&a1).await.map(|s| s.leader_id).unwrap_or(1);
    let leader = if leader == 0 { 1 } else { leader };
    p.kill(leader);
    let survivors: Vec<String> =
        p.replicas.values().filter(|r| r.id != leader).map(|r| r.addr.clone()).collect();
    let probe = Client::new(survivors.clone());

    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} writes failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), WRITES);

    let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
        probe.status(&survivors[0]).await.ok().map(|s| s.leader_id).filter(|l| *l != 0 && *l != leader)
    })
    .await;
    assert_ne!(new_leader, leader);
    let (last_seq, _) =
        wait_for("the survivors to converge", Duration::from_secs(60), || converged(&probe, &survivors))
            .await;
    assert_eq!(last_seq, WRITES as u64, "one event per write, no more, no less");

    // Every acknowledged write is in every survivor's archive exactly once, where its
    // answer said it was.
    for addr in &survivors {
        let archive = probe.archive(addr, 1).await.unwrap();
        assert_eq!(archive.len(), WRITES);
        let mut defined: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &archive {
            let Event::DomainDefined { name, .. } = &e.event else {
                panic!("unexpected event {:?}", e.event)
            };
            assert_eq!(&e.request_id, name);
            assert!(defined.insert(name, e.seq).is_none(), "{name} defined twice on {addr}");
        }
        for (name, committed) in &acked {
            assert_eq!(defined.get(name.as_str()), Some(&committed.first_seq), "{name} on {addr}");
        }
    }

    // The killed replica comes back, catches up, and agrees.
    p.start(leader, &[]);
    let all = p.addrs();
    let probe = Client::new(all.clone());
    let (seq, hash) =
        wait_for("the restarted replica to catch up", Duration::from_secs(120), || converged(&probe, &all))
            .await;
    assert_eq!(seq, WRITES as u64);
    let restarted = probe.archive(&p.addr(leader), 1).await.unwrap();
    let reference = probe.archive(&survivors[0], 1).await.unwrap();
    assert_eq!(restarted, reference, "archives agree");
    let at_end = probe.state_hash_at(&p.addr(leader), seq).await.unwrap();
    assert_eq!(at_end, hash, "replaying the restarted replica's archive gives the live state");
}
