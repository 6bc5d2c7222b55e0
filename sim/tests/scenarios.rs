//! Scripted scenarios for bugs the simulator found with random seeds, so they stay fixed
//! even when the seeds' timings move on.

use std::collections::BTreeMap;
use std::time::Duration;

use controlplane::model::{Cidr, NetworkConfig, NetworkMode};
use controlplane::{Command, Request};
use raft::proposer::Bug;
use raft::type_config::NodeId;
use sim::caller::{submit_at, Refusal};
use sim::clock::Clocks;
use sim::network::Net;
use sim::replica::Replica;

async fn leader_among(net: &Net, ids: &[NodeId]) -> NodeId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = ids.iter().copied().find(|id| net.live(*id).is_some_and(|l| l.proposer.is_leader()));
        if let Some(l) = leader {
            return l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader among {ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(id: &str, command: Command) -> Request {
    Request {
        request_id: id.into(),
        principal: "operator".into(),
        caller: controlplane::Caller::Cluster,
        command,
    }
}

/// Seed 16: a leader cut off from the others still believes it leads. A write committed
/// by the new leader, retried at the old one, was refused from the old one's stale state.
#[tokio::test(start_paused = true)]
async fn a_deposed_leader_does_not_refuse_a_write_committed_without_it() {
    let net = Net::new(1);
    let clocks = Clocks::new();
    let ids: Vec<NodeId> = vec![1, 2, 3];
    let mut replicas: Vec<Replica> = ids.iter().map(|id| Replica::new(*id)).collect();
    for r in &mut replicas {
        r.start(&net, &clocks, Bug::None, &ids).await.unwrap();
    }
    let members: BTreeMap<NodeId, raft::type_config::Member> = ids
        .iter()
        .map(|id| (*id, raft::type_config::Member::new(format!("replica-{id}"), format!("replica-{id}"))))
        .collect();
    net.live(1).unwrap().raft.initialize(members).await.unwrap();
    let old = leader_among(&net, &ids).await;
    // A first write: the leader has confirmed its state for this term.
    let warm_up = request("warm-up", Command::DeletePool { name: "none".into() });
    let _ = submit_at(net.clone(), clocks.clone(), old, warm_up, true).await;
    let define = request(
        "pool",
        Command::CreatePool {
            name: "p0".into(),
            config: controlplane::model::PoolConfig {
                kind: controlplane::model::PoolKind::Dir,
                path: "/pools/p0".into(),
                shared: true,
                capacity_mib: 1024,
            },
        },
    );
    submit_at(net.clone(), clocks.clone(), old, define, true).await.unwrap();

    // Cut the leader off from the other replicas; they elect a new one.
    let rest: Vec<NodeId> = ids.iter().copied().filter(|id| *id != old).collect();
    for other in &rest {
        net.cut(old, *other);
        net.cut(*other, old);
    }
    let new = leader_among(&net, &rest).await;
    let cidr: Cidr = "10.9.0.0/24".parse().unwrap();
    let config = NetworkConfig { mode: NetworkMode::Isolated, cidr: Some(cidr), gateway: None, bridge: None };
    let create = request("create", Command::CreateNetwork { name: "n1".into(), config });
    let delete = request("delete", Command::DeleteNetwork { name: "n1".into() });
    for r in [&create, &delete] {
        submit_at(net.clone(), clocks.clone(), new, r.clone(), true).await.unwrap();
    }
    assert!(net.live(old).unwrap().proposer.is_leader(), "the old leader does not know it was deposed");

    // The retry of the committed delete reaches the old leader, whose state has no n1.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        submit_at(net.clone(), clocks.clone(), old, delete.clone(), true),
    )
    .await
    .expect("the old leader answers");
    assert!(
        !matches!(answer, Err(Refusal::Rejected(_))),
        "a committed write must not be refused by a deposed leader: {answer:?}"
    );
}
