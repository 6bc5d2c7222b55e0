//! Three in-process replicas on loopback: writes sent to a follower are forwarded to the
//! leader; linearizable reads are answered by the leader only; local reads answer from
//! any replica's applied state.

use std::time::{Duration, Instant};

use controlplane::fixtures::kernel_spec;
use controlplane::{Command, Request};
use raft::node::{Node, NodeConfig, NodeError};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn start(id: u64, dir: &std::path::Path) -> Node {
    let config = NodeConfig::new(id, free_addr(), dir.join(format!("n{id}")));
    let node = Node::start(config).await.unwrap();
    tokio::spawn(raft::service::serve(node.clone(), std::future::pending()));
    node
}

/// A replica whose peer services have a port of their own (served here; its public API,
/// which these tests do not serve, has another).
async fn start_apart(id: u64, dir: &std::path::Path) -> Node {
    let mut config = NodeConfig::new(id, free_addr(), dir.join(format!("n{id}")));
    let peer = free_addr();
    config.peer_listen = Some(peer);
    config.advertise.peer = peer.to_string();
    let node = Node::start(config).await.unwrap();
    tokio::spawn(raft::service::serve(node.clone(), std::future::pending()));
    node
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn define(name: &str) -> Request {
    Request {
        request_id: name.into(),
        principal: "t".into(),
        caller: controlplane::Caller::Cluster,
        command: Command::DefineDomain { name: name.into(), spec: kernel_spec(1, 64) },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_forward_and_reads_come_in_two_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start_apart(1, dir.path()).await;
    n1.bootstrap().await.unwrap();
    until("node 1 to lead", || (n1.status().leader_id == 1).then_some(())).await;
    let seed = n1.peer_listen_addr().unwrap().to_string();
    let api = n1.listen_addr().to_string();
    let n2 = start_apart(2, dir.path()).await;
    n2.join(&seed, true, Duration::from_secs(30)).await.unwrap();
    let n3 = start_apart(3, dir.path()).await;
    n3.join(&seed, true, Duration::from_secs(30)).await.unwrap();
    until("three voters", || (n1.members().0.len() == 3).then_some(())).await;

    // A write to a follower is forwarded to the leader and committed.
    let committed = n2.submit(define("via-follower"), false).await.unwrap();
    assert_eq!(committed.event_count(), 1);
    // The leader reads it linearizably, at once.
    assert!(n1.read_linearizable(|s| s.domain("via-follower").is_some()).await.unwrap());
    // A follower will not answer a linearizable read; it names the leader instead.
    match n3.read_linearizable(|s| s.last_seq()).await {
        Err(e @ NodeError::NotLeader { .. }) => {
            let NodeError::NotLeader { leader_id, leader } = &e else { unreachable!() };
            assert_eq!(*leader_id, Some(1));
            assert_eq!(leader.as_ref(), Some(&raft::type_config::Member::new(&seed, &api)));
            // The answer points an API client to the leader's API, a replication client to
            // its peer port.
            let status = e.to_status();
            let header = |h: &str| status.metadata().get(h).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(header(raft::node::LEADER_ADDRESS_HEADER), Some(api.clone()));
            assert_eq!(header(raft::node::LEADER_PEER_HEADER), Some(seed.clone()));
            // Each member's two addresses are in every replica's status.
            let s = n3.status();
            assert_eq!(s.leader_address, api);
            assert_eq!(s.addresses[&1], seed);
            assert_eq!(s.api_addresses[&1], api);
        }
        other => panic!("a follower answered a linearizable read: {other:?}"),
    }
    // A local read on a follower sees the write once it has applied it.
    until("the follower to apply", || n3.read_local(|s| s.domain("via-follower").is_some()).then_some(()))
        .await;

    // A write already forwarded once is not forwarded again: it fails with the hint.
    match n3.submit(define("twice-forwarded"), true).await {
        Err(e @ NodeError::NotLeader { .. }) => {
            let status = e.to_status();
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(
                status.metadata().get(raft::node::LEADER_PEER_HEADER).unwrap().to_str().unwrap(),
                seed
            );
        }
        other => panic!("{other:?}"),
    }
    // Rejections keep their meaning across forwarding.
    match n2.submit(define("via-follower"), false).await {
        Ok(c) => assert_eq!(c, committed, "the same request id gets the first answer"),
        Err(e) => panic!("{e}"),
    }
    let mut again = define("via-follower");
    again.request_id = "another-id".into();
    let err = n2.submit(again, false).await.unwrap_err();
    assert_eq!(err.to_status().code(), tonic::Code::AlreadyExists, "{err}");
    for n in [&n1, &n2, &n3] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_answer_in_order_and_a_bad_batch_changes_nothing() {
    use proto::raft::replication_client::ReplicationClient;
    use proto::raft::SubmitBatchRequest;
    use raft::client::{Client, ClientError};

    let dir = tempfile::tempdir().unwrap();
    let n1 = start(1, dir.path()).await;
    n1.bootstrap().await.unwrap();
    until("node 1 to lead", || (n1.status().leader_id == 1).then_some(())).await;
    let addr = n1.listen_addr().to_string();
    let client = Client::new(vec![addr.clone()]);

    // Each write is decided as if alone: the third names a domain the first defined.
    let mut again = define("a");
    again.request_id = "a-again".into();
    let outcomes = client.submit_batch(&[define("a"), define("b"), again]).await;
    assert_eq!(outcomes.len(), 3);
    let first = outcomes[0].as_ref().expect("a is defined");
    let second = outcomes[1].as_ref().expect("b is defined");
    assert_ne!(first.first_seq, second.first_seq);
    match &outcomes[2] {
        Err(ClientError::Refused { code, .. }) => assert_eq!(*code, tonic::Code::AlreadyExists),
        other => panic!("a second definition of a: {other:?}"),
    }
    // Sent again, the same request ids get the first answers.
    let replayed = client.submit_batch(&[define("a")]).await;
    assert_eq!(replayed[0].as_ref().unwrap().first_seq, first.first_seq);

    let before = n1.read_local(|s| s.last_seq());
    let mut raw = ReplicationClient::connect(format!("http://{addr}")).await.unwrap();
    let good = raft::encoding::encode(&define("c"));
    let bad = SubmitBatchRequest { requests: vec![good.clone(), b"not a request".to_vec()] };
    let status = raw.submit_batch(bad).await.expect_err("a batch with a bad write is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("write 1"), "{}", status.message());
    let too_many = SubmitBatchRequest { requests: vec![good; raft::service::SUBMIT_BATCH_MAX + 1] };
    let status = raw.submit_batch(too_many).await.expect_err("an oversized batch is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(n1.read_local(|s| s.last_seq()), before, "refused batches change nothing");
    assert!(!n1.read_local(|s| s.domain("c").is_some()));
}

fn cluster_request(id: &str, command: Command) -> Request {
    Request { request_id: id.into(), principal: "t".into(), caller: controlplane::Caller::Cluster, command }
}

/// An operator's fencing is the leader's to decide, from its leases: refused while the host
/// renews, on a follower, and for a host that does not exist; granted once the host has been
/// silent for `lease + fence + drift`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_fences_a_host_only_once_its_lease_has_run_out() {
    use controlplane::fixtures::register_host;
    use controlplane::ha::HaSettings;
    use controlplane::model::HostState;
    use controlplane::Rejection;

    let ha = HaSettings { heartbeat_interval_ms: 100, lease_ms: 1_000, fence_ms: 1_000, drift_ms: 50 };
    let dir = tempfile::tempdir().unwrap();
    let start_with = |id: u64| {
        let mut config = NodeConfig::new(id, free_addr(), dir.path().join(format!("n{id}")));
        config.ha = ha;
        async move {
            let node = Node::start(config).await.unwrap();
            tokio::spawn(raft::service::serve(node.clone(), std::future::pending()));
            node
        }
    };
    let n1 = start_with(1).await;
    n1.bootstrap().await.unwrap();
    until("node 1 to lead", || (n1.status().leader_id == 1).then_some(())).await;
    let n2 = start_with(2).await;
    n2.join(&n1.listen_addr().to_string(), true, Duration::from_secs(30)).await.unwrap();
    n1.submit(cluster_request("reg", register_host("h1", 4, 4096)), false).await.unwrap();
    let ready = Command::SetHostState { name: "h1".into(), state: HostState::Ready };
    n1.submit(cluster_request("ready", ready), false).await.unwrap();
    let fence = |name: &str| {
        cluster_request(
            &format!("fence-{name}"),
            Command::SetHostState { name: name.into(), state: HostState::Fenced },
        )
    };
    let state_of = |n: &Node| n.read_local(|s| s.host("h1").map(|h| h.state));

    n1.renew_lease("h1").await.unwrap();
    match n1.fence_host("h1", fence("h1")).await {
        Err(NodeError::Rejected(Rejection::FailedPrecondition { reason, .. })) => {
            assert!(reason.contains("renewed its lease"), "{reason}")
        }
        other => panic!("a renewing host was fenced: {other:?}"),
    }
    assert_eq!(state_of(&n1), Some(HostState::Ready), "a refused fencing changes nothing");
    assert!(matches!(n2.fence_host("h1", fence("h1")).await, Err(NodeError::NotLeader { .. })));
    assert!(matches!(
        n1.fence_host("nope", fence("nope")).await,
        Err(NodeError::Rejected(Rejection::NotFound { .. }))
    ));

    // Silent from now on: the fencing is refused until the lease has run out, then granted
    // (or HA's own came first; asking again is then no change).
    let silent = Instant::now();
    let deadline = silent + Duration::from_secs(10);
    loop {
        match n1.fence_host("h1", fence("h1")).await {
            Ok(_) => break,
            Err(NodeError::Rejected(Rejection::FailedPrecondition { reason, .. }))
                if reason.contains("renewed its lease") =>
            {
                assert!(Instant::now() < deadline, "still refused 10 s after the last renewal: {reason}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("fencing a silent host: {other:?}"),
        }
    }
    assert!(
        silent.elapsed() >= Duration::from_millis(ha.fence_after_ms()),
        "fenced before its lease ran out"
    );
    assert_eq!(state_of(&n1), Some(HostState::Fenced));
    assert!(n1.renew_lease("h1").await.is_err(), "a fenced host renews nothing");
    // Asked again (a retry), the fencing of a fenced host is no refusal.
    n1.fence_host("h1", fence("h1")).await.unwrap();
}
