//! Mutual TLS between real `drover server` processes: only certificates of the cluster's
//! CA get in, each kind and role only where it may, a host only for itself, refusals
//! change nothing and are logged, and the audit log names the certificate's holder, not
//! what the client claims.

use std::path::Path;
use std::time::Duration;

use api::certs::{Ca, Validity};
use proto::api as pb;
use proto::api::domains_client::DomainsClient;
use proto::api::hosts_client::HostsClient;
use proto::api::networks_client::NetworksClient;
use proto::raft::raft_client::RaftClient;
use proto::raft::replication_client::ReplicationClient;
use raft::tls::{Kind, Role, Tls, TlsFiles, Transport};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;

use tests::{drover_command, wait_for, Processes};

fn day() -> Validity {
    Validity::days(1).unwrap()
}

fn transport(dir: &Path) -> Transport {
    Transport::tls(Tls::load(&TlsFiles::new(dir)).unwrap())
}

/// The status of replica `addr` as `who` sees it (open to every certificate).
async fn state_hash(who: &Transport, addr: &str) -> Option<(u64, String)> {
    let channel = who.endpoint(addr).ok()?.connect().await.ok()?;
    let s = ReplicationClient::new(channel)
        .status(proto::raft::StatusRequest::default())
        .await
        .ok()?
        .into_inner();
    Some((s.last_seq, s.state_hash))
}

/// The code a `Domains/List` call made over `endpoint` ends with (a failed handshake is
/// `Unavailable` or `Unknown`: the connection never carried the call).
async fn list_code(endpoint: Endpoint) -> Code {
    match endpoint.connect().await {
        Err(_) => Code::Unavailable,
        Ok(channel) => {
            match DomainsClient::new(channel).list(proto::api::ListDomainsRequest::default()).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_clusters_certificates_get_in_each_where_its_kind_may_and_the_audit_names_them() {
    let mut p = Processes::new().with_tls();
    let pki = p.pki.as_ref().unwrap();
    let alice = pki.dir_with_role(Kind::User, "alice", Role::Operator);
    let viewer = pki.dir_for(Kind::User, "vic");
    let host = pki.dir_for(Kind::Host, "h1");
    let replica_1 = pki.dir_for(Kind::Replica, "1");
    let ca_pem = std::fs::read(TlsFiles::new(&alice).ca()).unwrap();
    let root = p.dir.path().join("more-tls");
    let expired = root.join("expired");
    Ca::load(&p.dir.path().join("tls/ca"))
        .unwrap()
        .issue(Kind::User, "late", &[], Validity::expired(), &expired)
        .unwrap();
    let other_ca = Ca::create(&root.join("other-ca"), "other", day()).unwrap();
    let stranger = root.join("stranger");
    other_ca.issue(Kind::User, "alice", &[], day(), &stranger).unwrap();
    let stranger_replica = root.join("stranger-replica");
    other_ca.issue(Kind::Replica, "1", &["127.0.0.1".to_owned()], day(), &stranger_replica).unwrap();

    // A replica with replica 1's certificate and `args` does not start, and says `why`.
    let refused = |args: &[&str], why: &str| {
        let out = drover_command()
            .arg("server")
            .args(args)
            .arg("--data-dir")
            .arg(p.dir.path().join("nope"))
            .arg("--tls-dir")
            .arg(&replica_1)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{out:?}");
    };
    // It refuses to serve under another holder's certificate.
    refused(&["--id", "2"], "replica:1, not replica:2");
    // Beyond loopback, a replica keeps its peer services on a port of their own.
    refused(&["--id", "1", "--listen", "0.0.0.0:0"], "pass --peer-listen");

    // Three replicas over mutual TLS.
    let (seed, _) = p.three_voters(&[], false).await;
    let addrs = p.addrs();
    let as_alice = transport(&alice);

    // Alice writes through the CLI while claiming to be root: the audit log says alice.
    let endpoints = addrs.join(",");
    let spec = p.dir.path().join("web.yaml");
    std::fs::write(&spec, "vcpus: 1\nmemory_mib: 64\nkernel: /boot/vmlinuz\n").unwrap();
    let cli = |tls_dir: &Path, args: &[&str]| {
        drover_command()
            .args(["--endpoint", &endpoints, "--output", "json"])
            .arg("--tls-dir")
            .arg(tls_dir)
            .args(args)
            .output()
            .unwrap()
    };
    let defined =
        cli(&alice, &["--principal", "root", "domain", "define", "web", "--file", spec.to_str().unwrap()]);
    assert!(defined.status.success(), "{defined:?}");
    // (The replica that answers may not have archived it yet.)
    let log = wait_for("the define in the audit log", Duration::from_secs(30), || async {
        let log = cli(&alice, &["audit", "log", "--kind", "domain", "--name", "web"]);
        let log = String::from_utf8_lossy(&log.stdout).into_owned();
        log.contains("DomainDefined").then_some(log)
    })
    .await;
    assert!(log.contains("user:alice"), "{log}");
    assert!(!log.contains("root"), "{log}");

    let converged = wait_for("the replicas to agree", Duration::from_secs(30), || async {
        let mut seen = Vec::new();
        for a in &addrs {
            seen.push(state_hash(&as_alice, a).await?);
        }
        seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0].clone())
    })
    .await;

    // Refused: no certificate (UNAUTHENTICATED), another CA's, an expired one, plain text.
    let ca_only = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let no_cert = Endpoint::from_shared(format!("https://{seed}")).unwrap().tls_config(ca_only).unwrap();
    assert_eq!(list_code(no_cert).await, Code::Unauthenticated);
    assert_eq!(list_code(transport(&alice).endpoint(&seed).unwrap()).await, Code::Ok);
    for (what, dir) in [("another CA's", &stranger), ("an expired", &expired)] {
        let code = list_code(transport(dir).endpoint(&seed).unwrap()).await;
        assert_ne!(code, Code::Ok, "{what} certificate got in");
    }
    let plain = Endpoint::from_shared(format!("http://{seed}")).unwrap();
    assert_ne!(list_code(plain).await, Code::Ok, "a plain-text call got in");
    // The raft and replication services are on the peer port, not the public one.
    let peer = p.peer_addr(1);
    assert_ne!(peer, seed);
    // A replica of another cluster's CA cannot send AppendEntries.
    let foreign = transport(&stranger_replica).endpoint(&peer).unwrap();
    if let Ok(channel) = foreign.connect().await {
        let r = RaftClient::new(channel).append_entries(proto::raft::RaftPayload::default()).await;
        assert!(r.is_err(), "another CA's replica reached raft");
    }

    // The public port serves no peer method but a replica's status, to anyone, even a
    // replica; the peer port takes no user, not even for a status.
    let as_host = transport(&host);
    let as_replica = transport(&replica_1);
    for who in [&as_alice, &as_host, &as_replica] {
        let channel = who.endpoint(&seed).unwrap().connect().await.unwrap();
        let r = RaftClient::new(channel.clone()).append_entries(proto::raft::RaftPayload::default()).await;
        assert_eq!(r.unwrap_err().code(), Code::Unimplemented);
        let r = ReplicationClient::new(channel.clone()).submit(proto::raft::SubmitRequest::default()).await;
        assert_eq!(r.unwrap_err().code(), Code::Unimplemented);
        assert!(ReplicationClient::new(channel).status(proto::raft::StatusRequest::default()).await.is_ok());
    }
    let channel = as_alice.endpoint(&peer).unwrap().connect().await.unwrap();
    let r = ReplicationClient::new(channel.clone()).status(proto::raft::StatusRequest::default()).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(list_code(as_alice.endpoint(&peer).unwrap()).await, Code::Unimplemented);
    // Another member's status through a replica's public port: the replica asks it over its
    // peer port.
    let via = ReplicationClient::new(as_alice.endpoint(&seed).unwrap().connect().await.unwrap())
        .status(proto::raft::StatusRequest { member: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via.node_id, 2);

    // Each kind only where it may: a host may not send raft messages or forwarded writes,
    // and joins only as a learner.
    let channel = as_host.endpoint(&peer).unwrap().connect().await.unwrap();
    let r = RaftClient::new(channel.clone()).append_entries(proto::raft::RaftPayload::default()).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let r = ReplicationClient::new(channel.clone()).submit(proto::raft::SubmitRequest::default()).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let join = proto::raft::JoinRequest {
        node_id: 9,
        address: "127.0.0.1:1".into(),
        cluster_id: String::new(),
        voter: true,
        api_address: "127.0.0.1:2".into(),
    };
    let r = ReplicationClient::new(channel).join(join).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);

    // Each role only what it may: a viewer reads but does not write, an operator runs
    // domains but makes no networks; a host reads and renews its own lease, but defines
    // nothing and acts for no other host.
    let api = |who: &Transport| who.endpoint(&seed).unwrap().connect_lazy();
    // (Refused at the door, before their contents are looked at.)
    let define = |name: &str| pb::DefineDomainRequest {
        request_id: format!("tls-{name}"),
        name: name.to_owned(),
        ..Default::default()
    };
    let as_viewer = transport(&viewer);
    assert_eq!(list_code(as_viewer.endpoint(&seed).unwrap()).await, Code::Ok);
    let r = DomainsClient::new(api(&as_viewer)).define(define("by-viewer")).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let network =
        pb::CreateNetworkRequest { request_id: "tls-net".into(), name: "n1".into(), ..Default::default() };
    let r = NetworksClient::new(api(&as_alice)).create(network).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let r = DomainsClient::new(api(&as_host)).define(define("by-host")).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(list_code(as_host.endpoint(&seed).unwrap()).await, Code::Ok);
    let r = HostsClient::new(api(&as_host)).heartbeat(pb::HeartbeatRequest { name: "h2".into() }).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let report = pb::ReportRequest {
        request_id: "tls-report".into(),
        domain: "web".into(),
        host: "h2".into(),
        generation: 1,
        phase: pb::ObservedPhase::Running as i32,
        reason: String::new(),
    };
    let r = HostsClient::new(api(&as_host)).report(report).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);

    // Nothing changed, and the leader's log names who was refused and what they called.
    for a in &addrs {
        assert_eq!(state_hash(&as_alice, a).await, Some(converged.clone()), "replica {a} changed");
    }
    let log = p.log_of(1);
    assert!(log.contains("refused: no client certificate"), "{log}");
    assert!(log.contains("user:alice") && log.contains("a user on the peer port"), "{log}");
    assert!(log.contains("host:h1") && log.contains("/drover.raft.v1.Raft/AppendEntries"), "{log}");
    assert!(log.contains("host:h1") && log.contains("a voter's join"), "{log}");
    assert!(log.contains("user:vic") && log.contains("/drover.api.v1.Domains/Define"), "{log}");
    assert!(log.contains("acting for another host"), "{log}");
}

/// What `drover` printed, and whether it succeeded.
struct Said {
    ok: bool,
    out: String,
    err: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_made_by_admins_act_with_their_role_expire_and_are_revoked_everywhere() {
    let mut p = Processes::new().with_tls();
    let (seed, _) = p.three_voters(&[], false).await;
    let addrs = p.addrs();
    let pki = p.pki.as_ref().unwrap();
    let admin = pki.user_dir.clone();
    let as_admin = pki.user.clone();
    // A token holder has the CA's certificate only: it checks the servers, and the token
    // says who it is.
    let ca_only = p.dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(TlsFiles::new(&admin).ca(), TlsFiles::new(&ca_only).ca()).unwrap();
    let drover = |endpoints: &str, tls_dir: &Path, token: Option<&str>, args: &[&str]| {
        let mut c = drover_command();
        c.args(["--endpoint", endpoints, "--output", "json", "--tls-dir"]).arg(tls_dir);
        if let Some(t) = token {
            c.env("DROVER_TOKEN", t);
        }
        let out = c.args(args).output().unwrap();
        Said {
            ok: out.status.success(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let all = addrs.join(",");
    let as_holder = |token: &str, args: &[&str]| drover(&all, &ca_only, Some(token), args);
    let create = |name: &str, role: &str, ttl: &str| {
        let said = drover(&all, &admin, None, &["token", "create", name, "--role", role, "--ttl", ttl]);
        assert!(said.ok, "{}", said.err);
        let v: serde_json::Value = serde_json::from_str(&said.out).unwrap();
        assert_eq!(v["info"]["created_by"], "user:tester", "{v}");
        v["token"].as_str().unwrap().to_owned()
    };
    let viewer = create("ci", "viewer", "1h");
    let operator = create("ops", "operator", "30d");
    let spec = p.dir.path().join("web.yaml");
    std::fs::write(&spec, "vcpus: 1\nmemory_mib: 64\nkernel: /boot/vmlinuz\n").unwrap();
    let spec = spec.to_str().unwrap();

    // Each token acts with its role, audited under its holder's name.
    let listed = as_holder(&viewer, &["domain", "list"]);
    assert!(listed.ok, "{}", listed.err);
    let defined = as_holder(&operator, &["domain", "define", "web", "--file", spec]);
    assert!(defined.ok, "{}", defined.err);
    let log = wait_for("the define in the audit log", Duration::from_secs(30), || async {
        let log = as_holder(&viewer, &["audit", "log", "--kind", "domain", "--name", "web"]).out;
        log.contains("DomainDefined").then_some(log)
    })
    .await;
    assert!(log.contains("user:ops"), "{log}");
    // The list shows holders, roles and makers, never a secret; only admins see it.
    let tokens = drover(&all, &admin, None, &["token", "list"]);
    assert!(tokens.ok, "{}", tokens.err);
    for t in [&viewer, &operator] {
        let (name, secret) = t.rsplit_once('.').unwrap();
        assert!(tokens.out.contains(name) && !tokens.out.contains(secret), "{}", tokens.out);
    }
    let denied = as_holder(&operator, &["token", "list"]);
    assert!(!denied.ok && denied.err.contains("PermissionDenied"), "{}", denied.err);
    let denied = as_holder(&operator, &["token", "create", "mine", "--role", "admin"]);
    assert!(!denied.ok && denied.err.contains("PermissionDenied"), "{}", denied.err);
    // Bad creates change nothing: a name taken, no lifetime.
    let taken = drover(&all, &admin, None, &["token", "create", "ci", "--role", "viewer"]);
    assert!(!taken.ok && taken.err.contains("AlreadyExists"), "{}", taken.err);
    let forever = drover(&all, &admin, None, &["token", "create", "zero", "--role", "viewer", "--ttl", "0"]);
    assert!(!forever.ok && forever.err.contains("InvalidArgument"), "{}", forever.err);
    // A token is never sent in plain text.
    let plain =
        drover_command().args(["--endpoint", &all, "--token", &viewer, "domain", "list"]).output().unwrap();
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("only over TLS"), "{plain:?}");

    let converged = wait_for("the replicas to agree", Duration::from_secs(30), || async {
        let mut seen = Vec::new();
        for a in &addrs {
            seen.push(state_hash(&as_admin, a).await?);
        }
        seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0].clone())
    })
    .await;

    // Refused, changing nothing: a viewer's write, a wrong secret, no token at all, a
    // token where raft listens.
    let denied = as_holder(&viewer, &["domain", "define", "by-viewer", "--file", spec]);
    assert!(!denied.ok && denied.err.contains("PermissionDenied"), "{}", denied.err);
    let wrong =
        format!("{}{}", &operator[..operator.len() - 1], if operator.ends_with('0') { '1' } else { '0' });
    let forged = as_holder(&wrong, &["domain", "define", "by-forger", "--file", spec]);
    assert!(!forged.ok && forged.err.contains("Unauthenticated"), "{}", forged.err);
    let garbage = as_holder("not-a-token", &["domain", "list"]);
    assert!(!garbage.ok && garbage.err.contains("Unauthenticated"), "{}", garbage.err);
    let nobody = drover(&all, &ca_only, None, &["domain", "list"]);
    assert!(!nobody.ok && nobody.err.contains("Unauthenticated"), "{}", nobody.err);
    let channel =
        Transport::from_dir(Some(&ca_only)).unwrap().endpoint(&p.peer_addr(1)).unwrap().connect_lazy();
    let mut append = tonic::Request::new(proto::raft::RaftPayload::default());
    append.metadata_mut().insert("authorization", format!("Bearer {operator}").parse().unwrap());
    let r = RaftClient::new(channel).append_entries(append).await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);

    // A token expires.
    let brief = create("brief", "viewer", "1s");
    wait_for("the brief token to expire", Duration::from_secs(20), || async {
        let said = as_holder(&brief, &["domain", "list"]);
        said.err.contains("expired").then_some(())
    })
    .await;

    // Revoked, it is refused by every replica.
    let revoked = drover(&all, &admin, None, &["token", "revoke", "ops"]);
    assert!(revoked.ok, "{}", revoked.err);
    for a in &addrs {
        wait_for("the revocation to reach the replica", Duration::from_secs(30), || async {
            let said = drover(a, &ca_only, Some(&operator), &["--local", "domain", "list"]);
            said.err.contains("unknown or revoked").then_some(())
        })
        .await;
    }
    let late = as_holder(&operator, &["domain", "define", "by-revoked", "--file", spec]);
    assert!(!late.ok && late.err.contains("Unauthenticated"), "{}", late.err);

    // The refused calls changed nothing beyond the expiring token and the revocation.
    let (seq, _) = converged;
    let after = state_hash(&as_admin, &seed).await.unwrap();
    assert_eq!(after.0, seq + 2, "only the brief token and the revocation were written");
    let log = p.log_of(1);
    assert!(log.contains("refused: a bearer token"), "{log}");
}
