//! Membership and identity: a replica of one cluster is refused, with a clear error, when
//! it tries to join another; members can be promoted and removed.

use std::time::Duration;

use raft::client::Client;
use tests::{wait_for, Processes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_cluster_is_refused() {
    let mut p = Processes::new();
    let a1 = p.start(1, &["--bootstrap"]);
    let a5 = p.start(5, &["--bootstrap"]);
    let client = Client::new(vec![a1.clone(), a5.clone()]);
    let (c1, c5) = wait_for("both clusters to elect", Duration::from_secs(30), || async {
        let s1 = client.status(&a1).await.ok().filter(|s| s.leader_id == 1)?;
        let s5 = client.status(&a5).await.ok().filter(|s| s.leader_id == 5)?;
        Some((s1.cluster_id, s5.cluster_id))
    })
    .await;
    assert_ne!(c1, c5, "every bootstrap makes a new cluster id");

    // Replica 5 (cluster B) restarts and tries to join cluster A.
    p.kill(5);
    p.start(5, &["--join", &a1]);
    let status = p.wait_exit(5, Duration::from_secs(30));
    assert!(!status.success());
    let log = p.log_of(5);
    assert!(log.contains("cluster id mismatch"), "no clear error in:\n{log}");
    let s1 = client.status(&a1).await.unwrap();
    assert_eq!(s1.voters, vec![1]);
    assert!(s1.learners.is_empty(), "cluster A did not take the stranger in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_join_get_promoted_and_removed() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(&[]).await;
    let client = Client::new(vec![a1.clone()]);
    let a2 = p.start(2, &["--join", &a1]);
    let s = wait_for("a learner", Duration::from_secs(60), || async {
        client.status(&a1).await.ok().filter(|s| s.learners == vec![2])
    })
    .await;
    assert_eq!(s.voters, vec![1]);
    // The learner follows the same cluster.
    let s2 = wait_for("the learner to know its cluster", Duration::from_secs(30), || async {
        client.status(&a2).await.ok().filter(|s| !s.cluster_id.is_empty())
    })
    .await;
    assert_eq!(s2.cluster_id, s.cluster_id);

    // Membership changes are made on the leader (elsewhere they answer Unavailable with a
    // leader hint).
    let members = client.promote(&a1, 2).await.unwrap();
    assert_eq!((members.voters, members.learners), (vec![1, 2], vec![]));
    let members = client.remove(&a1, 2).await.unwrap();
    assert_eq!((members.voters, members.learners), (vec![1], vec![]));
}
