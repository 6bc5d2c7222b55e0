//! Snapshot install: after the cluster has compacted its log, a new learner can only catch
//! up from a snapshot (sent in bounded chunks). It converges to the same state hash,
//! restarts with its archive's hole noted, and backfills that hole from the others.

use std::time::Duration;

use raft::client::Client;
use tests::{define_request, wait_for, Processes};

const FLAGS: [&str; 4] = ["--snapshot-every", "200", "--log-kept", "20"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joining_after_compaction_converges() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(&FLAGS).await;
    p.join_voters(&a1, &[2], &FLAGS).await;
    let client = Client::new(vec![a1.clone()]);

    let mut tasks = Vec::new();
    for c in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let name = format!("c{c}-{i}");
                let r = define_request(&name, "t");
                client.submit(&r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let leader = wait_for("the log to be compacted", Duration::from_secs(60), || async {
        client.status(&a1).await.ok().filter(|s| s.first_log_index > 100 && s.snapshot_index > 0)
    })
    .await;
    assert_eq!(leader.last_seq, 1200);

    // Node 3 joins as a learner: entries 1..first_log_index are gone, so only a snapshot
    // can bring it up to date.
    let a3 = p.start(3, &[&["--join", &a1][..], &FLAGS].concat());
    let all = Client::new(vec![a1.clone(), a3.clone()]);
    let joined = wait_for("the learner to converge", Duration::from_secs(60), || async {
        let s = all.status(&a3).await.ok()?;
        (s.last_seq == leader.last_seq).then_some(s)
    })
    .await;
    assert_eq!(joined.state_hash, leader.state_hash);
    assert!(joined.snapshot_index > 0, "the learner installed a snapshot");
    assert!(joined.learners.contains(&3) && !joined.voters.contains(&3));

    // It keeps following: a later write reaches it too.
    let r = define_request("late", "t");
    all.submit(&r).await.unwrap();
    let after = wait_for("the learner to apply a later write", Duration::from_secs(30), || async {
        all.status(&a3).await.ok().filter(|s| s.last_seq == 1201)
    })
    .await;
    assert_eq!(after.state_hash, all.status(&a1).await.unwrap().state_hash);
    assert_eq!(all.state_hash_at(&a3, 1201).await.unwrap(), after.state_hash);

    // SIGKILL the learner at once (most likely before its archive is backfilled): the
    // noted hole is not damage, so it starts again.
    p.kill(3);
    let a3 = p.start(3, &[&["--join", &a1][..], &FLAGS].concat());
    // The events its snapshot skipped are fetched from the others and checked: its
    // archive ends up complete, and the past reads the same on it as on the leader.
    wait_for("the learner's archive to be backfilled", Duration::from_secs(60), || async {
        let first = all.archive(&a3, 1).await.ok()?;
        (first.first().map(|e| e.seq) == Some(1)).then_some(())
    })
    .await;
    for seq in [1, 300, 600, 1200] {
        assert_eq!(
            all.state_hash_at(&a3, seq).await.unwrap(),
            all.state_hash_at(&a1, seq).await.unwrap(),
            "state at seq {seq}"
        );
    }
}
