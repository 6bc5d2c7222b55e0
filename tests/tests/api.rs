//! The public API against a real 3-replica cluster: hosts and domains through their
//! services, a durable event stream that resumes without gaps or duplicates after the
//! replica serving it is SIGKILLed, the state at a past sequence number, and verify.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::api as pb;
use proto::api::audit_client::AuditClient;
use proto::api::domains_client::DomainsClient;
use proto::api::events_client::EventsClient;
use proto::api::hosts_client::HostsClient;
use tests::{wait_for, Processes};
use tonic::transport::Channel;

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy()
}

fn spec(memory_mib: u64) -> pb::DomainSpec {
    pb::DomainSpec {
        vcpus: 1,
        memory_mib,
        boot: Some(pb::domain_spec::Boot::Kernel(pb::KernelBoot {
            kernel: "/var/lib/drover/vmlinux".into(),
            initrd: String::new(),
            cmdline: "console=ttyS0".into(),
        })),
        ..Default::default()
    }
}

fn act(name: &str) -> pb::DomainActionRequest {
    pb::DomainActionRequest { request_id: String::new(), name: name.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_events_and_audit_over_the_public_api() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(tests::NO_HOSTD).await;
    p.join_voters(&a1, &[2, 3], &[]).await;

    // Write through a follower: the API forwards to the leader.
    let mut hosts = HostsClient::new(channel(&p.addr(2)));
    let mut domains = DomainsClient::new(channel(&p.addr(3)));
    hosts
        .register(pb::RegisterHostRequest {
            request_id: "reg-h1".into(),
            name: "h1".into(),
            address: "127.0.0.1:9001".into(),
            capacity: Some(pb::Resources { vcpus: 8, memory_mib: 8192 }),
            labels: Default::default(),
            vm_limits: None,
        })
        .await
        .unwrap();
    hosts
        .set_state(pb::SetHostStateRequest {
            request_id: String::new(),
            name: "h1".into(),
            state: pb::HostState::Ready.into(),
        })
        .await
        .unwrap();
    let defined = domains
        .define(pb::DefineDomainRequest {
            request_id: "def-web".into(),
            name: "web".into(),
            spec: Some(spec(512)),
        })
        .await
        .unwrap()
        .into_inner();
    // A retry with the same request id gets the first answer.
    let again = domains
        .define(pb::DefineDomainRequest {
            request_id: "def-web".into(),
            name: "web".into(),
            spec: Some(spec(512)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, defined);
    domains.start(act("web")).await.unwrap();
    let mut leader_domains = DomainsClient::new(channel(&a1));
    let web = leader_domains
        .get(pb::GetDomainRequest { name: "web".into(), consistency: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(web.desired(), pb::DesiredState::Running);
    let status = web.status.unwrap();
    assert_eq!(
        (status.host.as_str(), status.generation, status.phase()),
        ("h1", 1, pb::DomainPhase::Scheduled)
    );
    // A follower refuses a linearizable read, naming the leader; it answers a local one.
    let err = domains.get(pb::GetDomainRequest { name: "web".into(), consistency: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.metadata().get("drover-leader-address").is_some());
    let local = wait_for("the follower to apply", Duration::from_secs(10), || {
        let mut d = domains.clone();
        async move { d.get(pb::GetDomainRequest { name: "web".into(), consistency: 1 }).await.ok() }
    })
    .await;
    assert_eq!(local.into_inner().name, "web");
    // Bad input gets its gRPC code.
    let e = domains.start(act("web")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let e = domains.start(act("nope")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let e = domains
        .define(pb::DefineDomainRequest {
            request_id: String::new(),
            name: "Bad_Name".into(),
            spec: Some(spec(512)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    domains
        .define(pb::DefineDomainRequest {
            request_id: String::new(),
            name: "big".into(),
            spec: Some(spec(1 << 20)),
        })
        .await
        .unwrap();
    let e = domains.start(act("big")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");

    // Follow the event stream on replica 3 from the start, then kill replica 3 mid-stream
    // and resume on replica 2 from the last seq seen + 1.
    let mut stream = EventsClient::new(channel(&p.addr(3)))
        .watch(pb::WatchRequest { from_seq: 1, follow: true, kinds: vec![], names: vec![] })
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<pb::Event> = Vec::new();
    let writer = {
        let mut d = DomainsClient::new(channel(&a1));
        tokio::spawn(async move {
            for i in 0..200 {
                let name = format!("vm-{i}");
                d.define(pb::DefineDomainRequest { request_id: name.clone(), name, spec: Some(spec(64)) })
                    .await
                    .unwrap();
            }
        })
    };
    while seen.len() < 60 {
        let e =
            tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
        seen.push(e);
    }
    p.kill(3);
    writer.await.unwrap();
    let resume_at = seen.last().unwrap().seq + 1;
    let mut stream = EventsClient::new(channel(&p.addr(2)))
        .watch(pb::WatchRequest { from_seq: resume_at, follow: true, kinds: vec![], names: vec![] })
        .await
        .unwrap()
        .into_inner();
    let last_seq = tests::wait_for("the writes to apply on replica 2", Duration::from_secs(30), || {
        let c = raft::client::Client::new(vec![p.addr(2)]);
        let a = p.addr(2);
        async move { c.status(&a).await.ok().map(|s| s.last_seq).filter(|s| *s >= 206) }
    })
    .await;
    while seen.last().unwrap().seq < last_seq {
        let e =
            tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
        seen.push(e);
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>(), "no gap, no duplicate across the failover");
    let kinds: BTreeMap<&str, usize> = seen.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.kind.as_str()).or_default() += 1;
        m
    });
    assert_eq!(kinds.get("DomainDefined"), Some(&202));

    // A filtered, non-following watch.
    let mut only_web = EventsClient::new(channel(&a1))
        .watch(pb::WatchRequest {
            from_seq: 1,
            follow: false,
            kinds: vec!["domain".into()],
            names: vec!["web".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut web_kinds = Vec::new();
    while let Some(e) = only_web.message().await.unwrap() {
        web_kinds.push(e.kind);
    }
    assert_eq!(web_kinds, ["DomainDefined", "DomainStartRequested", "DomainScheduled"]);

    // Audit: the state right after the domain was defined, then verify the whole history.
    let mut audit = AuditClient::new(channel(&a1));
    let at = audit
        .state_at(pb::StateAtRequest { at: Some(pb::state_at_request::At::Seq(defined.last_seq)) })
        .await
        .unwrap()
        .into_inner();
    assert!(at.state_json.contains("\"web\""), "web is defined at seq {}", defined.last_seq);
    assert!(!at.state_json.contains("\"vm-0\""), "vm-0 did not exist yet");
    let verify = audit.verify(pb::VerifyRequest {}).await.unwrap().into_inner();
    assert!(verify.ok, "{verify:?}");
    assert_eq!(verify.events, last_seq);
    let log = audit
        .log(pb::AuditLogRequest { kind: "host".into(), name: "h1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let host_kinds: Vec<&str> = log.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(host_kinds, ["HostRegistered", "HostStateChanged", "DomainScheduled"]);
    assert!(log.events.iter().all(|e| e.principal == "anonymous"));
}

/// A List call pages: `page_size` items at a time in name order, each reply naming where
/// the next starts, until a reply with no token; 0 is everything at once, as before; a
/// token that is no list's is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_calls_page_through_everything_once() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(tests::NO_HOSTD).await;
    let mut domains = DomainsClient::new(channel(&a1));
    let names: Vec<String> = (0..5).map(|i| format!("d{i}")).collect();
    for name in &names {
        let define =
            pb::DefineDomainRequest { request_id: String::new(), name: name.clone(), spec: Some(spec(64)) };
        domains.define(define).await.unwrap();
    }
    let list = |page_size: u32, page_token: String| pb::ListDomainsRequest {
        consistency: pb::Consistency::Linearizable as i32,
        page_size,
        page_token,
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = Vec::new();
    for _ in 0..10 {
        let reply = domains.list(list(2, token)).await.unwrap().into_inner();
        pages.push(reply.domains.len());
        seen.extend(reply.domains.into_iter().map(|d| d.name));
        token = reply.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, names, "every domain once, in name order");
    let all = domains.list(list(0, String::new())).await.unwrap().into_inner();
    assert_eq!((all.domains.len(), all.next_page_token.as_str()), (5, ""));
    // A page that ends exactly at the end says so.
    let exact = domains.list(list(5, String::new())).await.unwrap().into_inner();
    assert_eq!((exact.domains.len(), exact.next_page_token.as_str()), (5, ""));
    // Tokens of the wrong shape are refused where the list's keys have a shape.
    let mut volumes = proto::api::volumes_client::VolumesClient::new(channel(&a1));
    let bad = pb::ListVolumesRequest { page_size: 1, page_token: "no-slash".into(), ..Default::default() };
    let err = volumes.list(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("page_token"), "{err:?}");
}
