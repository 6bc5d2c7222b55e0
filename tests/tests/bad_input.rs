//! Bad input over the public API: every case gets its gRPC code and leaves the cluster's
//! state exactly as it was (same last seq, same state hash).

use std::future::Future;
use std::pin::Pin;

use bytes::{Buf, BufMut};
use proto::api as pb;
use proto::api::audit_client::AuditClient;
use proto::api::domains_client::DomainsClient;
use proto::api::events_client::EventsClient;
use proto::api::hosts_client::HostsClient;
use proto::api::migrations_client::MigrationsClient;
use proto::api::networks_client::NetworksClient;
use proto::api::snapshots_client::SnapshotsClient;
use proto::api::storage_pools_client::StoragePoolsClient;
use proto::api::volumes_client::VolumesClient;
use tests::Processes;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Code;

/// Sends and receives raw bytes, to put malformed protobuf on the wire.
#[derive(Debug, Default, Clone)]
struct RawCodec;

#[derive(Debug, Default, Clone)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    Ok(grpc.unary(tonic::Request::new(body), path, RawCodec).await?.into_inner())
}

fn kernel_spec(memory_mib: u64) -> pb::DomainSpec {
    pb::DomainSpec {
        vcpus: 1,
        memory_mib,
        boot: Some(pb::domain_spec::Boot::Kernel(pb::KernelBoot {
            kernel: "/var/lib/drover/vmlinux".into(),
            initrd: String::new(),
            cmdline: String::new(),
        })),
        ..Default::default()
    }
}

type Case = (&'static str, Code, Pin<Box<dyn Future<Output = tonic::Status> + Send>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_kinds_of_bad_input_change_nothing() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(tests::NO_HOSTD).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{a1}")).unwrap().connect_lazy();
    let domains = DomainsClient::new(ch.clone());
    let hosts = HostsClient::new(ch.clone());
    let nets = NetworksClient::new(ch.clone());
    let pools = StoragePoolsClient::new(ch.clone());
    let vols = VolumesClient::new(ch.clone());
    let snaps = SnapshotsClient::new(ch.clone());
    let migs = MigrationsClient::new(ch.clone());

    // A small world: a ready host, a network, a pool with a volume, a running domain
    // using both, a stopped domain.
    let id = |s: &str| s.to_string();
    hosts
        .clone()
        .register(pb::RegisterHostRequest {
            request_id: id("r1"),
            name: id("h1"),
            address: id("127.0.0.1:9201"),
            capacity: Some(pb::Resources { vcpus: 4, memory_mib: 4096 }),
            labels: Default::default(),
            vm_limits: None,
        })
        .await
        .unwrap();
    hosts
        .clone()
        .set_state(pb::SetHostStateRequest {
            request_id: id("r2"),
            name: id("h1"),
            state: pb::HostState::Ready.into(),
        })
        .await
        .unwrap();
    nets.clone()
        .create(pb::CreateNetworkRequest {
            request_id: id("r3"),
            name: id("net"),
            config: Some(pb::NetworkConfig {
                mode: pb::NetworkMode::Nat.into(),
                cidr: id("10.8.0.0/24"),
                gateway: String::new(),
                bridge: String::new(),
            }),
        })
        .await
        .unwrap();
    pools
        .clone()
        .create(pb::CreatePoolRequest {
            request_id: id("r4"),
            name: id("images"),
            config: Some(pb::PoolConfig {
                kind: pb::PoolKind::Dir.into(),
                path: id("/var/lib/drover/images"),
                shared: true,
                capacity_mib: 100_000,
            }),
        })
        .await
        .unwrap();
    let vref = |n: &str| Some(pb::VolumeRef { pool: id("images"), name: n.to_string() });
    vols.clone()
        .create(pb::CreateVolumeRequest {
            request_id: id("r5"),
            volume: vref("root"),
            format: pb::VolumeFormat::Qcow2.into(),
            capacity_mib: 1000,
            backing: String::new(),
            preallocate: false,
            import: String::new(),
        })
        .await
        .unwrap();
    // No hostd runs here: report the volume's file made, as its host would.
    let root = vols
        .clone()
        .get(pb::GetVolumeRequest { volume: vref("root"), consistency: pb::Consistency::Linearizable as i32 })
        .await
        .unwrap()
        .into_inner();
    vols.clone()
        .report(pb::ReportVolumeRequest {
            request_id: id("r5b"),
            volume: vref("root"),
            host: root.pending_host,
            id: root.pending_id,
            failed: false,
            failure: String::new(),
            allocation_mib: 1,
        })
        .await
        .unwrap();
    let mut web = kernel_spec(512);
    web.disks.push(pb::Disk { volume: vref("root"), read_only: false });
    web.nics.push(pb::Nic { network: id("net"), mac: String::new() });
    domains
        .clone()
        .define(pb::DefineDomainRequest { request_id: id("r6"), name: id("web"), spec: Some(web) })
        .await
        .unwrap();
    domains.clone().start(pb::DomainActionRequest { request_id: id("r7"), name: id("web") }).await.unwrap();
    domains
        .clone()
        .define(pb::DefineDomainRequest {
            request_id: id("r8"),
            name: id("idle"),
            spec: Some(kernel_spec(256)),
        })
        .await
        .unwrap();

    let probe = raft::client::Client::new(vec![a1.clone()]);
    let before = probe.status(&a1).await.unwrap();

    let define = |name: &str, spec: Option<pb::DomainSpec>| pb::DefineDomainRequest {
        request_id: String::new(),
        name: name.to_string(),
        spec,
    };
    let act = |name: &str| pb::DomainActionRequest { request_id: String::new(), name: name.to_string() };
    let spec_with = |f: &dyn Fn(&mut pb::DomainSpec)| {
        let mut s = kernel_spec(256);
        f(&mut s);
        Some(s)
    };
    macro_rules! case {
        ($name:expr, $code:expr, $client:expr, $method:ident, $req:expr) => {{
            let mut c = $client.clone();
            let req = $req;
            let fut: Pin<Box<dyn Future<Output = tonic::Status> + Send>> = Box::pin(async move {
                match c.$method(req).await {
                    Ok(_) => tonic::Status::ok("accepted"),
                    Err(s) => s,
                }
            });
            ($name, $code, fut)
        }};
    }
    let mut long_id = act("idle");
    long_id.request_id = "x".repeat(200);
    let mut bad_principal = tonic::Request::new(act("idle"));
    bad_principal.metadata_mut().insert("drover-principal", "has space".parse().unwrap());
    let huge = spec_with(&|s| {
        s.boot = Some(pb::domain_spec::Boot::Kernel(pb::KernelBoot {
            kernel: "/k".into(),
            initrd: String::new(),
            cmdline: "x".repeat(2 << 20),
        }))
    });
    let cases: Vec<Case> = vec![
        case!("bad name", Code::InvalidArgument, domains, define, define("Bad_Name", Some(kernel_spec(256)))),
        case!("empty name", Code::InvalidArgument, domains, define, define("", Some(kernel_spec(256)))),
        case!(
            "long name",
            Code::InvalidArgument,
            domains,
            define,
            define(&"a".repeat(64), Some(kernel_spec(256)))
        ),
        case!("zero vcpus", Code::InvalidArgument, domains, define, define("x", spec_with(&|s| s.vcpus = 0))),
        case!("zero memory", Code::InvalidArgument, domains, define, define("x", Some(kernel_spec(0)))),
        case!(
            "huge memory",
            Code::InvalidArgument,
            domains,
            define,
            define("x", Some(kernel_spec(u64::MAX)))
        ),
        case!("no spec", Code::InvalidArgument, domains, define, define("x", None)),
        case!("no boot", Code::InvalidArgument, domains, define, define("x", spec_with(&|s| s.boot = None))),
        case!(
            "relative kernel",
            Code::InvalidArgument,
            domains,
            define,
            define(
                "x",
                spec_with(&|s| s.boot = Some(pb::domain_spec::Boot::Kernel(pb::KernelBoot {
                    kernel: "vmlinux".into(),
                    initrd: String::new(),
                    cmdline: String::new()
                })))
            )
        ),
        case!(
            "bad mac",
            Code::InvalidArgument,
            domains,
            define,
            define("x", spec_with(&|s| s.nics.push(pb::Nic { network: "net".into(), mac: "zz:zz".into() })))
        ),
        case!(
            "unknown network",
            Code::NotFound,
            domains,
            define,
            define("x", spec_with(&|s| s.nics.push(pb::Nic { network: "nope".into(), mac: String::new() })))
        ),
        case!(
            "unknown volume",
            Code::NotFound,
            domains,
            define,
            define(
                "x",
                spec_with(&|s| s.disks.push(pb::Disk {
                    volume: Some(pb::VolumeRef { pool: "images".into(), name: "nope".into() }),
                    read_only: true
                }))
            )
        ),
        case!(
            "volume held rw",
            Code::FailedPrecondition,
            domains,
            define,
            define(
                "x",
                spec_with(&|s| s.disks.push(pb::Disk {
                    volume: Some(pb::VolumeRef { pool: "images".into(), name: "root".into() }),
                    read_only: true
                }))
            )
        ),
        case!("already exists", Code::AlreadyExists, domains, define, define("web", Some(kernel_spec(256)))),
        case!("start unknown", Code::NotFound, domains, start, act("nope")),
        case!("start running", Code::FailedPrecondition, domains, start, act("web")),
        case!("resume stopped", Code::FailedPrecondition, domains, resume, act("idle")),
        case!("suspend stopped", Code::FailedPrecondition, domains, suspend, act("idle")),
        case!("undefine running", Code::FailedPrecondition, domains, undefine, act("web")),
        case!(
            "get unknown",
            Code::NotFound,
            domains,
            get,
            pb::GetDomainRequest { name: "nope".into(), consistency: 0 }
        ),
        case!("request id too long", Code::InvalidArgument, domains, start, long_id),
        case!("principal with a space", Code::InvalidArgument, domains, start, bad_principal),
        case!("oversized message", Code::OutOfRange, domains, define, define("x", huge)),
        case!(
            "bad host state",
            Code::InvalidArgument,
            hosts,
            set_state,
            pb::SetHostStateRequest { request_id: String::new(), name: "h1".into(), state: 99 }
        ),
        case!(
            "host back to joining",
            Code::FailedPrecondition,
            hosts,
            set_state,
            pb::SetHostStateRequest {
                request_id: String::new(),
                name: "h1".into(),
                state: pb::HostState::Joining.into()
            }
        ),
        case!(
            "host without capacity",
            Code::InvalidArgument,
            hosts,
            register,
            pb::RegisterHostRequest {
                request_id: String::new(),
                name: "h2".into(),
                address: "a:1".into(),
                capacity: None,
                labels: Default::default(),
                vm_limits: None
            }
        ),
        case!(
            "network in use",
            Code::FailedPrecondition,
            nets,
            delete,
            pb::DeleteNetworkRequest { request_id: String::new(), name: "net".into() }
        ),
        case!(
            "network overlap",
            Code::FailedPrecondition,
            nets,
            create,
            pb::CreateNetworkRequest {
                request_id: String::new(),
                name: "other".into(),
                config: Some(pb::NetworkConfig {
                    mode: pb::NetworkMode::Nat.into(),
                    cidr: "10.8.0.0/16".into(),
                    gateway: String::new(),
                    bridge: String::new()
                })
            }
        ),
        case!(
            "network bad cidr",
            Code::InvalidArgument,
            nets,
            create,
            pb::CreateNetworkRequest {
                request_id: String::new(),
                name: "other".into(),
                config: Some(pb::NetworkConfig {
                    mode: pb::NetworkMode::Nat.into(),
                    cidr: "10.9.0.0/99".into(),
                    gateway: String::new(),
                    bridge: String::new()
                })
            }
        ),
        case!(
            "network bad mode",
            Code::InvalidArgument,
            nets,
            create,
            pb::CreateNetworkRequest {
                request_id: String::new(),
                name: "other".into(),
                config: Some(pb::NetworkConfig {
                    mode: pb::NetworkMode::Unspecified.into(),
                    cidr: String::new(),
                    gateway: String::new(),
                    bridge: String::new()
                })
            }
        ),
        case!(
            "pool relative path",
            Code::InvalidArgument,
            pools,
            create,
            pb::CreatePoolRequest {
                request_id: String::new(),
                name: "p2".into(),
                config: Some(pb::PoolConfig {
                    kind: pb::PoolKind::Dir.into(),
                    path: "pools".into(),
                    shared: false,
                    capacity_mib: 10
                })
            }
        ),
        case!(
            "pool with volumes",
            Code::FailedPrecondition,
            pools,
            delete,
            pb::DeletePoolRequest { request_id: String::new(), name: "images".into() }
        ),
        case!(
            "volume zero size",
            Code::InvalidArgument,
            vols,
            create,
            pb::CreateVolumeRequest {
                request_id: String::new(),
                volume: vref("v0"),
                format: pb::VolumeFormat::Raw.into(),
                capacity_mib: 0,
                backing: String::new(),
                preallocate: false,
                import: String::new()
            }
        ),
        case!(
            "volume bad format",
            Code::InvalidArgument,
            vols,
            create,
            pb::CreateVolumeRequest {
                request_id: String::new(),
                volume: vref("v0"),
                format: 42,
                capacity_mib: 10,
                backing: String::new(),
                preallocate: false,
                import: String::new()
            }
        ),
        case!(
            "volume unknown pool",
            Code::NotFound,
            vols,
            create,
            pb::CreateVolumeRequest {
                request_id: String::new(),
                volume: Some(pb::VolumeRef { pool: "nope".into(), name: "v0".into() }),
                format: pb::VolumeFormat::Raw.into(),
                capacity_mib: 10,
                backing: String::new(),
                preallocate: false,
                import: String::new()
            }
        ),
        case!(
            "volume import from a relative path",
            Code::InvalidArgument,
            vols,
            create,
            pb::CreateVolumeRequest {
                request_id: String::new(),
                volume: vref("v0"),
                format: pb::VolumeFormat::Raw.into(),
                capacity_mib: 10,
                backing: String::new(),
                preallocate: false,
                import: "images/debian.img".into()
            }
        ),
        case!(
            "volume report of no pending operation",
            Code::FailedPrecondition,
            vols,
            report,
            pb::ReportVolumeRequest {
                request_id: String::new(),
                volume: vref("root"),
                host: "h1".into(),
                id: 1,
                failed: true,
                failure: "made up".into(),
                allocation_mib: 0
            }
        ),
        case!(
            "volume attached",
            Code::FailedPrecondition,
            vols,
            delete,
            pb::VolumeRequest { request_id: String::new(), volume: vref("root") }
        ),
        case!(
            "volume shrink",
            Code::InvalidArgument,
            vols,
            resize,
            pb::ResizeVolumeRequest { request_id: String::new(), volume: vref("root"), capacity_mib: 10 }
        ),
        case!(
            "full snapshot of a stopped domain",
            Code::FailedPrecondition,
            snaps,
            create,
            pb::CreateSnapshotRequest {
                request_id: String::new(),
                domain: "idle".into(),
                name: "s".into(),
                kind: pb::SnapshotKind::Full.into()
            }
        ),
        case!(
            "migrate a stopped domain",
            Code::FailedPrecondition,
            migs,
            start,
            pb::StartMigrationRequest {
                request_id: String::new(),
                domain: "idle".into(),
                target: String::new(),
                max_downtime_ms: None
            }
        ),
        case!(
            "migrate with a pause of 0 ms",
            Code::InvalidArgument,
            migs,
            start,
            pb::StartMigrationRequest {
                request_id: String::new(),
                domain: "idle".into(),
                target: String::new(),
                max_downtime_ms: Some(0)
            }
        ),
        case!(
            "migration pause past a minute",
            Code::InvalidArgument,
            migs,
            set_downtime,
            pb::SetMigrationDowntimeRequest {
                request_id: String::new(),
                id: 424_242,
                max_downtime_ms: 60_001
            }
        ),
        case!(
            "pause of an unknown migration",
            Code::NotFound,
            migs,
            set_downtime,
            pb::SetMigrationDowntimeRequest { request_id: String::new(), id: 424_242, max_downtime_ms: 50 }
        ),
        case!(
            "abort unknown migration",
            Code::NotFound,
            migs,
            abort,
            pb::AbortMigrationRequest { request_id: String::new(), id: 424_242, reason: "x".into() }
        ),
        case!(
            "events bad kind",
            Code::InvalidArgument,
            EventsClient::new(ch.clone()),
            watch,
            pb::WatchRequest { from_seq: 1, follow: false, kinds: vec!["spaceship".into()], names: vec![] }
        ),
        case!(
            "state at no point",
            Code::InvalidArgument,
            AuditClient::new(ch.clone()),
            state_at,
            pb::StateAtRequest { at: None }
        ),
        case!(
            "state at the future",
            Code::OutOfRange,
            AuditClient::new(ch.clone()),
            state_at,
            pb::StateAtRequest { at: Some(pb::state_at_request::At::Seq(1 << 40)) }
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, code, fut) in cases {
        let status = fut.await;
        assert_eq!(status.code(), code, "case {name:?}: {status:?}");
        assert!(!status.message().is_empty(), "case {name:?} has a message");
    }

    // Malformed protobuf bytes on the wire.
    for (name, bytes) in [
        ("truncated varint", vec![0x0a, 0xff]),
        ("length past the end", vec![0x12, 0x7f, 0x01]),
        ("invalid wire type", vec![0x0f, 0x00]),
    ] {
        let status = raw_call(ch.clone(), "/drover.api.v1.Domains/Define", bytes).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{name}: {status:?}");
    }

    let after = probe.status(&a1).await.unwrap();
    assert_eq!(
        (after.last_seq, &after.state_hash),
        (before.last_seq, &before.state_hash),
        "bad input changed the state"
    );
    // And the replica still serves.
    let ok = domains.clone().get(pb::GetDomainRequest { name: "web".into(), consistency: 0 }).await.unwrap();
    assert_eq!(ok.into_inner().name, "web");
}
