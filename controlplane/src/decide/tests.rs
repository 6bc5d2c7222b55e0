//! One test case per rejection `decide` can give, plus the paths that succeed around them.
//! Each case names the command, the gRPC code it must map to and a phrase of the message.

use std::collections::BTreeMap;

use crate::fixtures::{dir_pool, kernel_spec, nat_network, new_volume, register_host, Harness};
use crate::model::{
    Boot, Cidr, Disk, DomainSpec, HaPolicy, HostState, Labels, Mac, MigrationPhase, MigrationProgress,
    MigrationReport, NetworkConfig, NetworkMode, Nic, ObservedPhase, PoolConfig, PoolKind, Resources,
    SnapshotKind, SnapshotState, VolumeFormat, VolumeRef,
};
use crate::{decide, state_hash, Command, Decision, RejectionCode, Request, SnapshotOutcome};

use RejectionCode::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn vol(pool: &str, name: &str) -> VolumeRef {
    VolumeRef::new(pool, name)
}

fn ok(h: &mut Harness, command: Command) {
    let name = command.name();
    if let Err(e) = h.exec(command) {
        panic!("setup {name} rejected: {e}");
    }
}

fn observe(h: &mut Harness, domain: &str, phase: ObservedPhase) {
    let d = h.state.domain(domain).unwrap();
    let (host, generation) = (d.status.host.clone().unwrap(), d.status.generation);
    ok(h, Command::ReportObservation { domain: domain.into(), host, generation, phase, reason: None });
}

fn run(h: &mut Harness, domain: &str) {
    ok(h, Command::StartDomain { name: domain.into() });
    observe(h, domain, ObservedPhase::Running);
}

fn spec_with(disks: &[(VolumeRef, bool)], nets: &[&str]) -> DomainSpec {
    let mut spec = kernel_spec(1, 512);
    spec.disks = disks.iter().map(|(v, ro)| Disk { volume: v.clone(), read_only: *ro }).collect();
    spec.nics = nets.iter().map(|n| Nic { network: n.to_string(), mac: None }).collect();
    spec
}

/// The world every case starts from.
fn world() -> Harness {
    let mut h = Harness::new();
    ok(
        &mut h,
        Command::RegisterHost {
            name: "h1".into(),
            address: "127.0.0.1:7001".into(),
            capacity: Resources { vcpus: 8, memory_mib: 8192 },
            labels: labels(&[("zone", "a")]),
            vm_limits: None,
        },
    );
    ok(&mut h, Command::SetHostState { name: "h1".into(), state: HostState::Ready });
    ok(
        &mut h,
        Command::RegisterHost {
            name: "h2".into(),
            address: "127.0.0.1:7002".into(),
            capacity: Resources { vcpus: 8, memory_mib: 8192 },
            labels: labels(&[("zone", "b")]),
            vm_limits: None,
        },
    );
    ok(&mut h, Command::SetHostState { name: "h2".into(), state: HostState::Ready });
    ok(&mut h, register_host("h3", 4, 4096)); // stays joining
    ok(&mut h, nat_network("net", "10.0.0.0/29")); // .1 gateway, .2-.6 free
    ok(
        &mut h,
        Command::CreateNetwork {
            name: "lan".into(),
            config: NetworkConfig {
                mode: NetworkMode::Bridge,
                cidr: None,
                gateway: None,
                bridge: Some("br0".into()),
            },
        },
    );
    ok(&mut h, dir_pool("local", false, 10_000));
    ok(&mut h, dir_pool("shared", true, 10_000));
    for (pool, name, format, size) in [
        ("shared", "base", VolumeFormat::Qcow2, 1000),
        ("shared", "data", VolumeFormat::Qcow2, 1000),
        ("shared", "spare", VolumeFormat::Qcow2, 100),
        ("shared", "iso", VolumeFormat::Raw, 100),
        ("local", "raw", VolumeFormat::Raw, 1000),
    ] {
        h.exec_volume(new_volume(pool, name, format, size, None)).expect("fixture volume");
    }
    ok(
        &mut h,
        Command::DefineDomain {
            name: "web".into(),
            spec: spec_with(&[(vol("shared", "data"), false)], &["net"]),
        },
    );
    run(&mut h, "web");
    ok(
        &mut h,
        Command::DefineDomain { name: "db".into(), spec: spec_with(&[(vol("local", "raw"), false)], &[]) },
    );
    ok(
        &mut h,
        Command::DefineDomain { name: "cd".into(), spec: spec_with(&[(vol("shared", "iso"), true)], &[]) },
    );
    ok(&mut h, Command::DefineDomain { name: "paused".into(), spec: kernel_spec(1, 256) });
    run(&mut h, "paused");
    ok(&mut h, Command::SuspendDomain { name: "paused".into() });
    ok(&mut h, Command::DefineDomain { name: "stopping".into(), spec: kernel_spec(1, 256) });
    run(&mut h, "stopping");
    ok(&mut h, Command::ShutdownDomain { name: "stopping".into() });
    ok(&mut h, Command::DefineDomain { name: "idle".into(), spec: kernel_spec(1, 256) });
    h
}

/// Assert every case is rejected with its code and phrase, and changes nothing.
#[track_caller]
fn assert_rejections(h: &Harness, cases: Vec<(&str, Command, RejectionCode, &str)>) {
    let before = state_hash(&h.state);
    for (case, command, code, phrase) in cases {
        let request = Request {
            request_id: "case".into(),
            principal: "tester".into(),
            caller: crate::Caller::Cluster,
            command,
        };
        match decide(&h.state, &request, 42) {
            Ok(d) => panic!("case {case:?}: expected {code:?}, was accepted: {d:?}"),
            Err(r) => {
                assert_eq!(r.code(), code, "case {case:?}: {r}");
                assert!(r.to_string().contains(phrase), "case {case:?}: {r:?} lacks {phrase:?}");
            }
        }
    }
    assert_eq!(state_hash(&h.state), before);
}

fn req(request_id: &str, principal: &str, command: Command) -> Request {
    Request {
        request_id: request_id.into(),
        principal: principal.into(),
        caller: crate::Caller::Cluster,
        command,
    }
}

#[test]
fn request_envelope_rejections() {
    let h = world();
    let cmd = || Command::StartDomain { name: "idle".into() };
    for (case, r) in [
        ("empty request id", req("", "p", cmd())),
        ("space in request id", req("a b", "p", cmd())),
        ("long request id", req(&"r".repeat(129), "p", cmd())),
        ("empty principal", req("r", "", cmd())),
        ("long principal", req("r", &"p".repeat(129), cmd())),
    ] {
        let e = decide(&h.state, &r, 1).expect_err(case);
        assert_eq!(e.code(), InvalidArgument, "{case}");
    }
}

#[test]
fn host_rejections() {
    let mut h = world();
    let reg = |name: &str, vcpus, memory_mib, labels: Labels, address: &str| Command::RegisterHost {
        name: name.into(),
        address: address.into(),
        capacity: Resources { vcpus, memory_mib },
        labels,
        vm_limits: None,
    };
    let web_host = h.state.domain("web").unwrap().status.host.clone().unwrap();
    assert_rejections(
        &h,
        vec![
            ("bad name", reg("Bad_Name", 1, 1, Labels::new(), "a:1"), InvalidArgument, "name"),
            ("zero vcpus", reg("h9", 0, 1024, Labels::new(), "a:1"), InvalidArgument, "capacity.vcpus"),
            (
                "huge memory",
                reg("h9", 1, u64::MAX, Labels::new(), "a:1"),
                InvalidArgument,
                "capacity.memory_mib",
            ),
            ("bad label", reg("h9", 1, 1024, labels(&[("Zone", "a")]), "a:1"), InvalidArgument, "label key"),
            ("empty address", reg("h9", 1, 1024, Labels::new(), ""), InvalidArgument, "address"),
            (
                "shrink below use",
                reg(&web_host, 1, 64, Labels::new(), "a:1"),
                FailedPrecondition,
                "below what its domains use",
            ),
            (
                "unknown host",
                Command::SetHostState { name: "nope".into(), state: HostState::Ready },
                NotFound,
                "host nope",
            ),
            (
                "back to joining",
                Command::SetHostState { name: "h2".into(), state: HostState::Joining },
                FailedPrecondition,
                "register the host again",
            ),
            (
                "leave while busy",
                Command::SetHostState { name: web_host.clone(), state: HostState::Left },
                FailedPrecondition,
                "drain it first",
            ),
            (
                "joining to fenced",
                Command::SetHostState { name: "h3".into(), state: HostState::Fenced },
                FailedPrecondition,
                "cannot go from joining to fenced",
            ),
        ],
    );
    ok(&mut h, Command::SetHostState { name: "h3".into(), state: HostState::Left });
    assert_rejections(
        &h,
        vec![(
            "left to ready",
            Command::SetHostState { name: "h3".into(), state: HostState::Ready },
            FailedPrecondition,
            "cannot go from left to ready",
        )],
    );
    // Re-registering brings a departed host back as joining.
    ok(&mut h, register_host("h3", 4, 4096));
    assert_eq!(h.state.host("h3").unwrap().state, HostState::Joining);
}

#[test]
fn define_rejections() {
    let h = world();
    let define = |name: &str, spec: DomainSpec| Command::DefineDomain { name: name.into(), spec };
    let with = |f: &dyn Fn(&mut DomainSpec)| {
        let mut s = kernel_spec(1, 512);
        f(&mut s);
        s
    };
    let mac = |s: &str| Some(s.parse::<Mac>().unwrap());
    let web_mac = h.state.domain("web").unwrap().spec.nics[0].mac;
    let nine_nics: Vec<Nic> = (0..9).map(|_| Nic { network: "lan".into(), mac: None }).collect();
    let seventeen_disks: Vec<Disk> =
        (0..17).map(|i| Disk { volume: vol("shared", &format!("v{i}")), read_only: true }).collect();
    assert_rejections(
        &h,
        vec![
            ("bad name", define("web_1", kernel_spec(1, 512)), InvalidArgument, "a-z, 0-9"),
            ("long name", define(&"a".repeat(64), kernel_spec(1, 512)), InvalidArgument, "1 to 63"),
            ("zero vcpus", define("x", kernel_spec(0, 512)), InvalidArgument, "spec.vcpus"),
            ("too many vcpus", define("x", kernel_spec(257, 512)), InvalidArgument, "spec.vcpus"),
            ("tiny memory", define("x", kernel_spec(1, 1)), InvalidArgument, "spec.memory_mib"),
            ("huge memory", define("x", kernel_spec(1, u64::MAX)), InvalidArgument, "spec.memory_mib"),
            (
                "relative kernel",
                define(
                    "x",
                    with(&|s| {
                        s.boot =
                            Boot::Kernel { kernel: "vmlinux".into(), initrd: None, cmdline: String::new() }
                    }),
                ),
                InvalidArgument,
                "spec.boot.kernel",
            ),
            (
                "bad initrd",
                define(
                    "x",
                    with(&|s| {
                        s.boot = Boot::Kernel {
                            kernel: "/k".into(),
                            initrd: Some("/a/../b".into()),
                            cmdline: String::new(),
                        }
                    }),
                ),
                InvalidArgument,
                "spec.boot.initrd",
            ),
            (
                "long cmdline",
                define(
                    "x",
                    with(&|s| {
                        s.boot = Boot::Kernel { kernel: "/k".into(), initrd: None, cmdline: "x".repeat(2049) }
                    }),
                ),
                InvalidArgument,
                "spec.boot.cmdline",
            ),
            (
                "disk boot without disks",
                define("x", with(&|s| s.boot = Boot::Disk)),
                InvalidArgument,
                "no disks",
            ),
            (
                "too many disks",
                define("x", with(&|s| s.disks = seventeen_disks.clone())),
                InvalidArgument,
                "spec.disks",
            ),
            (
                "volume twice",
                define(
                    "x",
                    spec_with(&[(vol("shared", "spare"), true), (vol("shared", "spare"), true)], &[]),
                ),
                InvalidArgument,
                "listed twice",
            ),
            (
                "too many nics",
                define("x", with(&|s| s.nics = nine_nics.clone())),
                InvalidArgument,
                "spec.nics",
            ),
            (
                "multicast mac",
                define(
                    "x",
                    with(&|s| s.nics = vec![Nic { network: "lan".into(), mac: mac("01:00:5e:00:00:01") }]),
                ),
                InvalidArgument,
                "unicast",
            ),
            (
                "mac twice",
                define(
                    "x",
                    with(&|s| s.nics = vec![Nic { network: "lan".into(), mac: mac("52:54:00:00:00:01") }; 2]),
                ),
                InvalidArgument,
                "listed twice",
            ),
            (
                "ha priority",
                define("x", with(&|s| s.ha = HaPolicy::Restart { priority: 1001 })),
                InvalidArgument,
                "spec.ha.priority",
            ),
            (
                "bad label",
                define("x", with(&|s| s.placement.required_labels = labels(&[("a b", "")]))),
                InvalidArgument,
                "label key",
            ),
            (
                "bad group",
                define("x", with(&|s| s.placement.anti_affinity_group = Some("G".into()))),
                InvalidArgument,
                "anti_affinity_group",
            ),
            ("exists", define("web", kernel_spec(1, 512)), AlreadyExists, "domain web already exists"),
            (
                "unknown volume",
                define("x", spec_with(&[(vol("shared", "nope"), false)], &[])),
                NotFound,
                "volume shared/nope",
            ),
            (
                "unknown pool",
                define("x", spec_with(&[(vol("nope", "x"), false)], &[])),
                NotFound,
                "volume nope/x",
            ),
            ("unknown network", define("x", spec_with(&[], &["nope"])), NotFound, "network nope"),
            (
                "volume held rw",
                define("x", spec_with(&[(vol("shared", "data"), true)], &[])),
                FailedPrecondition,
                "read-write to domain web",
            ),
            (
                "rw over ro",
                define("x", spec_with(&[(vol("shared", "iso"), false)], &[])),
                FailedPrecondition,
                "must be exclusive",
            ),
            (
                "mac in use",
                define("x", with(&|s| s.nics = vec![Nic { network: "net".into(), mac: web_mac }])),
                FailedPrecondition,
                "in use by domain web",
            ),
            ("network full", define("x", spec_with(&[], &["net"; 5])), ResourceExhausted, "no free address"),
        ],
    );
}

#[test]
fn lifecycle_rejections() {
    let mut h = world();
    let name = |n: &str| n.to_string();
    assert_rejections(
        &h,
        vec![
            (
                "undefine unknown",
                Command::UndefineDomain { name: name("nope") },
                NotFound,
                "domain nope not found",
            ),
            (
                "undefine running",
                Command::UndefineDomain { name: name("web") },
                FailedPrecondition,
                "is active",
            ),
            (
                "start running",
                Command::StartDomain { name: name("web") },
                FailedPrecondition,
                "already running",
            ),
            ("start paused", Command::StartDomain { name: name("paused") }, FailedPrecondition, "resume it"),
            (
                "start stopping",
                Command::StartDomain { name: name("stopping") },
                FailedPrecondition,
                "still stopping",
            ),
            ("start bad name", Command::StartDomain { name: name("") }, InvalidArgument, "domain"),
            (
                "shutdown stopped",
                Command::ShutdownDomain { name: name("idle") },
                FailedPrecondition,
                "is not running",
            ),
            (
                "destroy stopped",
                Command::DestroyDomain { name: name("idle") },
                FailedPrecondition,
                "is not running",
            ),
            (
                "reboot stopped",
                Command::RebootDomain { name: name("idle") },
                FailedPrecondition,
                "is not running",
            ),
            (
                "reboot paused",
                Command::RebootDomain { name: name("paused") },
                FailedPrecondition,
                "resume it first",
            ),
            (
                "reboot stopping",
                Command::RebootDomain { name: name("stopping") },
                FailedPrecondition,
                "shutting down",
            ),
            (
                "suspend paused",
                Command::SuspendDomain { name: name("paused") },
                FailedPrecondition,
                "already paused",
            ),
            (
                "suspend stopping",
                Command::SuspendDomain { name: name("stopping") },
                FailedPrecondition,
                "shutting down",
            ),
            (
                "suspend stopped",
                Command::SuspendDomain { name: name("idle") },
                FailedPrecondition,
                "is not running",
            ),
            (
                "resume running",
                Command::ResumeDomain { name: name("web") },
                FailedPrecondition,
                "is not paused",
            ),
            (
                "resume stopped",
                Command::ResumeDomain { name: name("idle") },
                FailedPrecondition,
                "is not paused",
            ),
        ],
    );
    ok(&mut h, Command::DestroyDomain { name: "stopping".into() });
    assert_rejections(
        &h,
        vec![(
            "shutdown destroyed",
            Command::ShutdownDomain { name: name("stopping") },
            FailedPrecondition,
            "being destroyed",
        )],
    );
}

#[test]
fn undefine_with_snapshots_is_refused() {
    let mut h = world();
    ok(&mut h, Command::DefineDomain { name: "snappy".into(), spec: kernel_spec(1, 256) });
    run(&mut h, "snappy");
    h.take_snapshot("snappy", "s1").unwrap();
    ok(&mut h, Command::DestroyDomain { name: "snappy".into() });
    observe(&mut h, "snappy", ObservedPhase::Stopped);
    assert_rejections(
        &h,
        vec![(
            "undefine with snapshots",
            Command::UndefineDomain { name: "snappy".into() },
            FailedPrecondition,
            "has 1 snapshots",
        )],
    );
}

#[test]
fn scheduling_rejections() {
    let mut h = world();
    let define = |h: &mut Harness, name: &str, f: &dyn Fn(&mut DomainSpec)| {
        let mut s = kernel_spec(1, 512);
        f(&mut s);
        ok(h, Command::DefineDomain { name: name.into(), spec: s });
    };
    define(&mut h, "huge", &|s| s.memory_mib = 16 * 1024);
    define(&mut h, "picky", &|s| s.placement.required_labels = labels(&[("zone", "c")]));
    define(&mut h, "ha-1", &|s| s.placement.anti_affinity_group = Some("pair".into()));
    define(&mut h, "ha-2", &|s| s.placement.anti_affinity_group = Some("pair".into()));
    define(&mut h, "ha-3", &|s| s.placement.anti_affinity_group = Some("pair".into()));
    run(&mut h, "ha-1");
    run(&mut h, "ha-2");
    let h1 = h.state.domain("ha-1").unwrap().status.host.clone();
    let h2 = h.state.domain("ha-2").unwrap().status.host.clone();
    assert_ne!(h1, h2, "anti-affinity spreads the pair");
    assert_rejections(
        &h,
        vec![
            (
                "no memory anywhere",
                Command::StartDomain { name: "huge".into() },
                ResourceExhausted,
                "2 short of memory",
            ),
            (
                "no label match",
                Command::StartDomain { name: "picky".into() },
                ResourceExhausted,
                "missing required labels",
            ),
            (
                "anti-affinity",
                Command::StartDomain { name: "ha-3".into() },
                ResourceExhausted,
                "anti-affinity group",
            ),
        ],
    );
    let e = decide(&h.state, &req("r", "p", Command::StartDomain { name: "huge".into() }), 1).unwrap_err();
    assert!(e.to_string().contains("1 not ready"), "the joining host counts as not ready: {e}");
}

#[test]
fn disk_rejections() {
    let mut h = world();
    assert_rejections(
        &h,
        vec![
            (
                "attach to running",
                Command::AttachDisk {
                    domain: "web".into(),
                    disk: Disk { volume: vol("shared", "spare"), read_only: true },
                },
                FailedPrecondition,
                "attach disks while it is stopped",
            ),
            (
                "attach twice",
                Command::AttachDisk {
                    domain: "cd".into(),
                    disk: Disk { volume: vol("shared", "iso"), read_only: true },
                },
                FailedPrecondition,
                "already attached to domain cd",
            ),
            (
                "attach unknown",
                Command::AttachDisk {
                    domain: "idle".into(),
                    disk: Disk { volume: vol("shared", "nope"), read_only: true },
                },
                NotFound,
                "volume shared/nope",
            ),
            (
                "attach held rw",
                Command::AttachDisk {
                    domain: "idle".into(),
                    disk: Disk { volume: vol("shared", "data"), read_only: true },
                },
                FailedPrecondition,
                "read-write to domain web",
            ),
            (
                "detach absent",
                Command::DetachDisk { domain: "idle".into(), volume: vol("shared", "iso") },
                NotFound,
                "shared/iso on domain idle",
            ),
            (
                "detach from running",
                Command::DetachDisk { domain: "web".into(), volume: vol("shared", "data") },
                FailedPrecondition,
                "detach disks while it is stopped",
            ),
        ],
    );
    let mut spec = spec_with(&[(vol("shared", "spare"), false)], &[]);
    spec.boot = Boot::Disk;
    ok(&mut h, Command::DefineDomain { name: "diskboot".into(), spec });
    assert_rejections(
        &h,
        vec![(
            "detach boot disk",
            Command::DetachDisk { domain: "diskboot".into(), volume: vol("shared", "spare") },
            FailedPrecondition,
            "its only disk stays",
        )],
    );
    // The paths around them work: attach, detach.
    ok(
        &mut h,
        Command::AttachDisk {
            domain: "idle".into(),
            disk: Disk { volume: vol("shared", "iso"), read_only: true },
        },
    );
    ok(&mut h, Command::DetachDisk { domain: "idle".into(), volume: vol("shared", "iso") });
}

#[test]
fn observation_rejections() {
    let h = world();
    let web = h.state.domain("web").unwrap();
    let host = web.status.host.clone().unwrap();
    let other = if host == "h1" { "h2" } else { "h1" };
    let report = |host: &str, generation, reason: Option<&str>| Command::ReportObservation {
        domain: "web".into(),
        host: host.into(),
        generation,
        phase: ObservedPhase::Running,
        reason: reason.map(str::to_owned),
    };
    assert_rejections(
        &h,
        vec![
            (
                "stale generation",
                report(&host, web.status.generation - 1, None),
                FailedPrecondition,
                "stale report",
            ),
            (
                "future generation",
                report(&host, web.status.generation + 1, None),
                FailedPrecondition,
                "stale report",
            ),
            ("wrong host", report(other, web.status.generation, None), FailedPrecondition, "belongs to host"),
            ("unknown host", report("h9", web.status.generation, None), NotFound, "host h9"),
            (
                "control chars",
                report(&host, web.status.generation, Some("a\u{7}b")),
                InvalidArgument,
                "reason",
            ),
            (
                "stopped domain",
                Command::ReportObservation {
                    domain: "idle".into(),
                    host: "h1".into(),
                    generation: 0,
                    phase: ObservedPhase::Running,
                    reason: None,
                },
                FailedPrecondition,
                "has ended",
            ),
        ],
    );
}

#[test]
fn network_rejections() {
    let h = world();
    let net = |name: &str, mode, cidr: Option<&str>, gateway: Option<&str>, bridge: Option<&str>| {
        Command::CreateNetwork {
            name: name.into(),
            config: NetworkConfig {
                mode,
                cidr: cidr.map(|c| {
                    let (a, l) = c.split_once('/').unwrap();
                    Cidr { addr: a.parse().unwrap(), prefix_len: l.parse().unwrap() }
                }),
                gateway: gateway.map(|g| g.parse().unwrap()),
                bridge: bridge.map(str::to_owned),
            },
        }
    };
    use NetworkMode::*;
    assert_rejections(
        &h,
        vec![
            ("bad name", net("N", Nat, Some("10.9.0.0/24"), None, None), InvalidArgument, "name"),
            ("nat without cidr", net("x", Nat, None, None, None), InvalidArgument, "need a CIDR"),
            (
                "bridge without name",
                net("x", Bridge, None, None, None),
                InvalidArgument,
                "names its host bridge",
            ),
            (
                "bridge name on nat",
                net("x", Nat, Some("10.9.0.0/24"), None, Some("br0")),
                InvalidArgument,
                "only bridge networks",
            ),
            (
                "bad bridge name",
                net("x", Bridge, None, None, Some("br 0")),
                InvalidArgument,
                "interface name",
            ),
            (
                "long bridge name",
                net("x", Bridge, None, None, Some("b234567890123456")),
                InvalidArgument,
                "interface name",
            ),
            (
                "prefix too long",
                net("x", Isolated, Some("10.9.0.0/31"), None, None),
                InvalidArgument,
                "prefix_len",
            ),
            (
                "prefix too short",
                net("x", Isolated, Some("10.0.0.0/7"), None, None),
                InvalidArgument,
                "prefix_len",
            ),
            ("host bits", net("x", Isolated, Some("10.9.0.1/24"), None, None), InvalidArgument, "host bits"),
            (
                "gateway outside",
                net("x", Nat, Some("10.9.0.0/24"), Some("10.8.0.1"), None),
                InvalidArgument,
                "not a host address",
            ),
            (
                "gateway broadcast",
                net("x", Nat, Some("10.9.0.0/24"), Some("10.9.0.255"), None),
                InvalidArgument,
                "not a host address",
            ),
            (
                "gateway without cidr",
                net("x", Bridge, None, Some("10.9.0.1"), Some("br1")),
                InvalidArgument,
                "needs a CIDR",
            ),
            (
                "overlap",
                net("x", Nat, Some("10.0.0.0/16"), None, None),
                FailedPrecondition,
                "overlaps network net",
            ),
            (
                "exists",
                net("net", Nat, Some("10.9.0.0/24"), None, None),
                AlreadyExists,
                "network net already exists",
            ),
            (
                "delete in use",
                Command::DeleteNetwork { name: "net".into() },
                FailedPrecondition,
                "in use by 1 NICs",
            ),
            ("delete unknown", Command::DeleteNetwork { name: "nope".into() }, NotFound, "network nope"),
        ],
    );
}

#[test]
fn storage_rejections() {
    let mut h = world();
    h.exec_volume(new_volume("shared", "child", VolumeFormat::Qcow2, 1000, Some("base"))).unwrap();
    let pool = |name: &str, path: &str, cap| Command::CreatePool {
        name: name.into(),
        config: PoolConfig { kind: PoolKind::Dir, path: path.into(), shared: false, capacity_mib: cap },
    };
    let create =
        |name: &str, format, cap, backing: Option<&str>| new_volume("shared", name, format, cap, backing);
    use VolumeFormat::*;
    assert_rejections(
        &h,
        vec![
            ("pool relative path", pool("p", "images", 10), InvalidArgument, "absolute"),
            ("pool zero capacity", pool("p", "/images", 0), InvalidArgument, "config.capacity_mib"),
            (
                "pool path reused",
                pool("p", "/var/lib/drover/pools/local", 10),
                FailedPrecondition,
                "already pool local",
            ),
            ("pool exists", pool("local", "/elsewhere", 10), AlreadyExists, "pool local"),
            (
                "pool delete busy",
                Command::DeletePool { name: "local".into() },
                FailedPrecondition,
                "still holds 1 volumes",
            ),
            ("pool delete unknown", Command::DeletePool { name: "nope".into() }, NotFound, "pool nope"),
            ("volume unknown pool", new_volume("nope", "v", Raw, 1, None), NotFound, "pool nope"),
            ("volume zero", create("v", Raw, 0, None), InvalidArgument, "capacity_mib"),
            ("volume too big", create("v", Raw, u64::MAX, None), InvalidArgument, "capacity_mib"),
            ("volume exists", create("base", Raw, 1, None), AlreadyExists, "volume shared/base"),
            ("clone raw", create("v", Raw, 1000, Some("base")), InvalidArgument, "qcow2"),
            ("clone smaller", create("v", Qcow2, 10, Some("base")), InvalidArgument, "at least as large"),
            ("clone unknown", create("v", Qcow2, 1000, Some("nope")), NotFound, "volume shared/nope"),
            ("pool full", create("v", Qcow2, 9000, None), ResourceExhausted, "MiB free"),
            (
                "delete attached",
                Command::DeleteVolume { volume: vol("shared", "data") },
                FailedPrecondition,
                "attached to domain web",
            ),
            (
                "delete backing",
                Command::DeleteVolume { volume: vol("shared", "base") },
                FailedPrecondition,
                "backing volume of 1 clones",
            ),
            (
                "delete unknown",
                Command::DeleteVolume { volume: vol("shared", "nope") },
                NotFound,
                "volume shared/nope",
            ),
            (
                "shrink",
                Command::ResizeVolume { volume: vol("shared", "spare"), capacity_mib: 50 },
                InvalidArgument,
                "only grow",
            ),
            (
                "resize in use",
                Command::ResizeVolume { volume: vol("shared", "data"), capacity_mib: 2000 },
                FailedPrecondition,
                "active domain web",
            ),
            (
                "resize past pool",
                Command::ResizeVolume { volume: vol("shared", "spare"), capacity_mib: 9000 },
                ResourceExhausted,
                "MiB free",
            ),
            (
                "allocation huge",
                Command::ReportVolumeAllocation { volume: vol("shared", "spare"), allocation_mib: u64::MAX },
                InvalidArgument,
                "allocation_mib",
            ),
        ],
    );
    // The paths around them work: clone deleted, then its base; a stopped volume grows.
    h.exec_volume(Command::DeleteVolume { volume: vol("shared", "child") }).unwrap();
    h.exec_volume(Command::DeleteVolume { volume: vol("shared", "base") }).unwrap();
    h.exec_volume(Command::ResizeVolume { volume: vol("shared", "spare"), capacity_mib: 200 }).unwrap();
    assert_eq!(h.state.pool("shared").unwrap().allocated_mib, 1000 + 200 + 100);
}

#[test]
fn snapshot_rejections() {
    let mut h = world();
    let snap = |domain: &str, name: &str, kind| Command::CreateSnapshot {
        domain: domain.into(),
        name: name.into(),
        kind,
    };
    let web = h.state.domain("web").unwrap().clone();
    let (web_host, web_run) = (web.status.host.clone().unwrap(), web.status.generation);
    let report = |name: &str, id: u64, host: &str, generation: u64, outcome: SnapshotOutcome| {
        Command::ReportSnapshot {
            domain: "web".into(),
            name: name.into(),
            id,
            host: host.into(),
            generation,
            outcome,
        }
    };
    let taken = SnapshotOutcome::Taken { bytes: 4096, duration_ms: 2 };
    let other_host = if web_host == "h1" { "h2" } else { "h1" };
    ok(&mut h, snap("web", "s1", SnapshotKind::Full));
    assert!(matches!(h.state.snapshot("web", "s1").unwrap().state, SnapshotState::Pending { .. }));
    let s1 = h.state.snapshot("web", "s1").unwrap().id;
    assert_eq!(h.state.domain("web").unwrap().current_snapshot, None, "asked for is not taken");
    assert_rejections(
        &h,
        vec![
            ("exists", snap("web", "s1", SnapshotKind::Full), AlreadyExists, "snapshot web/s1"),
            ("bad name", snap("web", "S", SnapshotKind::Full), InvalidArgument, "name"),
            ("unknown domain", snap("nope", "s", SnapshotKind::Full), NotFound, "domain nope"),
            (
                "one at a time",
                snap("web", "s2", SnapshotKind::Full),
                FailedPrecondition,
                "s1 is still being taken",
            ),
            (
                "migrate while taking",
                Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: None },
                FailedPrecondition,
                "s1 is still being taken",
            ),
            (
                "full of stopped",
                snap("idle", "s", SnapshotKind::Full),
                FailedPrecondition,
                "running or paused",
            ),
            (
                "disk of a running domain",
                snap("paused", "s", SnapshotKind::Disk),
                FailedPrecondition,
                "stop it first",
            ),
            (
                "disk without disks",
                snap("idle", "s", SnapshotKind::Disk),
                FailedPrecondition,
                "no writable disks",
            ),
            (
                "disk of read-only disks",
                snap("cd", "ro", SnapshotKind::Disk),
                FailedPrecondition,
                "no writable disks",
            ),
            (
                "delete unknown",
                Command::DeleteSnapshot { domain: "web".into(), name: "nope".into() },
                NotFound,
                "snapshot web/nope",
            ),
            (
                "revert pending",
                Command::RevertSnapshot { domain: "web".into(), name: "s1".into() },
                FailedPrecondition,
                "is pending",
            ),
            (
                "report from another host",
                report("s1", s1, other_host, web_run, taken.clone()),
                FailedPrecondition,
                "stale report",
            ),
            (
                "report for another run",
                report("s1", s1, &web_host, web_run + 1, taken.clone()),
                FailedPrecondition,
                "stale report",
            ),
            (
                "report unknown",
                report("nope", 1, &web_host, web_run, taken.clone()),
                NotFound,
                "snapshot web/nope",
            ),
            (
                "empty failure reason",
                report("s1", s1, &web_host, web_run, SnapshotOutcome::Failed { reason: String::new() }),
                InvalidArgument,
                "reason",
            ),
        ],
    );
    ok(&mut h, report("s1", s1, &web_host, web_run, taken.clone()));
    // The same report again (a retry whose answer was lost) changes nothing.
    let before = state_hash(&h.state);
    ok(&mut h, report("s1", s1, &web_host, web_run, taken.clone()));
    assert_eq!(state_hash(&h.state), before);
    assert_eq!(h.state.domain("web").unwrap().current_snapshot.as_deref(), Some("s1"));
    // A failed snapshot is kept with its reason and never becomes current.
    ok(&mut h, snap("web", "bad", SnapshotKind::Full));
    let bad = h.state.snapshot("web", "bad").unwrap().id;
    assert_rejections(
        &h,
        vec![(
            "another id",
            report("bad", s1, &web_host, web_run, taken.clone()),
            FailedPrecondition,
            "another one now",
        )],
    );
    ok(
        &mut h,
        report("bad", bad, &web_host, web_run, SnapshotOutcome::Failed { reason: "disk full".into() }),
    );
    assert_eq!(
        h.state.snapshot("web", "bad").unwrap().state,
        SnapshotState::Failed { reason: "disk full".into() }
    );
    assert_eq!(h.state.domain("web").unwrap().current_snapshot.as_deref(), Some("s1"));
    assert_rejections(
        &h,
        vec![
            (
                "revert failed",
                Command::RevertSnapshot { domain: "web".into(), name: "bad".into() },
                FailedPrecondition,
                "is failed",
            ),
            (
                "late report",
                report("bad", bad, &web_host, web_run, taken.clone()),
                FailedPrecondition,
                "the snapshot is failed",
            ),
        ],
    );
    crate::invariants::check(&h.state).unwrap();
    // Many snapshots, up to the limit.
    for i in 2..crate::limits::SNAPSHOTS_PER_DOMAIN_MAX {
        h.take_snapshot("web", &format!("s{i}")).unwrap();
    }
    assert_rejections(
        &h,
        vec![("too many", snap("web", "one-more", SnapshotKind::Full), ResourceExhausted, "already has 256")],
    );
    // Deleting the root re-parents its child; the chain stays whole.
    ok(&mut h, Command::DeleteSnapshot { domain: "web".into(), name: "s1".into() });
    assert_eq!(h.state.snapshot("web", "bad").unwrap().parent, None);
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn a_disk_snapshot_of_a_stopped_domain_is_taken_by_the_host_of_its_disks_and_reverted_at_the_next_start() {
    let mut h = world();
    let disk_host =
        h.state.volume(&vol("local", "raw")).unwrap().host.clone().expect("a local volume's host");
    ok(&mut h, Command::CreateSnapshot { domain: "db".into(), name: "d1".into(), kind: SnapshotKind::Disk });
    let s = h.state.snapshot("db", "d1").unwrap().clone();
    let generation = h.state.domain("db").unwrap().status.generation;
    assert_eq!(s.state, SnapshotState::Pending { host: disk_host.clone(), generation });
    assert_eq!(s.disks, vec![vol("local", "raw")]);
    // Its disks are being read: the domain does not start, the volume does not grow.
    assert_rejections(
        &h,
        vec![
            (
                "start while imaged",
                Command::StartDomain { name: "db".into() },
                FailedPrecondition,
                "d1 is being taken",
            ),
            (
                "detach while imaged",
                Command::DetachDisk { domain: "db".into(), volume: vol("local", "raw") },
                FailedPrecondition,
                "detach disks once that is done",
            ),
            (
                "resize while imaged",
                Command::ResizeVolume { volume: vol("local", "raw"), capacity_mib: 4000 },
                FailedPrecondition,
                "being imaged for snapshot db/d1",
            ),
        ],
    );
    let report = |outcome| Command::ReportSnapshot {
        domain: "db".into(),
        name: "d1".into(),
        id: s.id,
        host: disk_host.clone(),
        generation,
        outcome,
    };
    ok(&mut h, report(SnapshotOutcome::Taken { bytes: 1 << 20, duration_ms: 3 }));
    assert!(matches!(h.state.snapshot("db", "d1").unwrap().state, SnapshotState::Taken { .. }));
    assert_eq!(h.state.domain("db").unwrap().current_snapshot.as_deref(), Some("d1"));
    // Runs, is reverted while running: a new run starts from the disk snapshot.
    run(&mut h, "db");
    let before = h.state.domain("db").unwrap().clone();
    ok(&mut h, Command::RevertSnapshot { domain: "db".into(), name: "d1".into() });
    let d = h.state.domain("db").unwrap();
    assert_eq!(d.status.generation, before.status.generation + 1);
    assert_eq!(d.restore_from.as_ref().map(|r| r.name.as_str()), Some("d1"));
    observe(&mut h, "db", ObservedPhase::Running);
    assert_eq!(h.state.domain("db").unwrap().restore_from, None);
    assert!(h
        .envelopes
        .iter()
        .any(|e| matches!(&e.event, crate::Event::SnapshotRestored { name, .. } if name == "d1")));
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn a_disk_snapshot_asked_of_a_host_that_is_fenced_fails_and_frees_the_domain() {
    let mut h = world();
    let disk_host = h.state.volume(&vol("local", "raw")).unwrap().host.clone().unwrap();
    ok(&mut h, Command::CreateSnapshot { domain: "db".into(), name: "d1".into(), kind: SnapshotKind::Disk });
    let leave = Command::SetHostState { name: disk_host.clone(), state: HostState::Left };
    assert_rejections(&h, vec![("host leaves", leave, FailedPrecondition, "still taking snapshot db/d1")]);
    ok(&mut h, Command::SetHostState { name: disk_host.clone(), state: HostState::Fenced });
    let SnapshotState::Failed { reason } = &h.state.snapshot("db", "d1").unwrap().state else {
        panic!("still {:?}", h.state.snapshot("db", "d1").unwrap().state);
    };
    assert!(reason.contains("fenced"), "{reason}");
    assert_eq!(h.state.snapshots_asked_of(&disk_host).count(), 0);
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn a_snapshot_pending_when_its_run_ends_fails_with_it() {
    let mut h = world();
    ok(&mut h, Command::CreateSnapshot { domain: "web".into(), name: "s1".into(), kind: SnapshotKind::Full });
    observe(&mut h, "web", ObservedPhase::Crashed);
    let SnapshotState::Failed { reason } = &h.state.snapshot("web", "s1").unwrap().state else {
        panic!("still {:?}", h.state.snapshot("web", "s1").unwrap().state);
    };
    assert!(reason.contains("the run ended"), "{reason}");
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn revert_starts_a_new_run_from_the_snapshot_and_the_host_says_when_it_is_restored() {
    let mut h = world();
    h.take_snapshot("web", "s1").unwrap();
    let before = h.state.domain("web").unwrap().clone();
    // Running: a new run on the same host, from the snapshot.
    ok(&mut h, Command::RevertSnapshot { domain: "web".into(), name: "s1".into() });
    let d = h.state.domain("web").unwrap();
    assert_eq!(d.status.host, before.status.host);
    assert_eq!(d.status.generation, before.status.generation + 1);
    assert_eq!(d.restore_from.as_ref().map(|r| r.name.as_str()), Some("s1"));
    // The old run's report is stale now; the new run's first report clears the mark.
    let host = before.status.host.clone().unwrap();
    let stale = Command::ReportObservation {
        domain: "web".into(),
        host: host.clone(),
        generation: before.status.generation,
        phase: ObservedPhase::Running,
        reason: None,
    };
    assert_rejections(&h, vec![("old run", stale, FailedPrecondition, "stale report")]);
    observe(&mut h, "web", ObservedPhase::Starting);
    assert_eq!(
        h.state.domain("web").unwrap().restore_from.as_ref().map(|r| r.name.as_str()),
        Some("s1"),
        "not restored yet"
    );
    observe(&mut h, "web", ObservedPhase::Running);
    assert_eq!(h.state.domain("web").unwrap().restore_from, None);
    assert!(h
        .envelopes
        .iter()
        .any(|e| matches!(&e.event, crate::Event::SnapshotRestored { name, .. } if name == "s1")));
    // Stopped: the next start restores, so the snapshot cannot go meanwhile.
    ok(&mut h, Command::DestroyDomain { name: "web".into() });
    observe(&mut h, "web", ObservedPhase::Stopped);
    ok(&mut h, Command::RevertSnapshot { domain: "web".into(), name: "s1".into() });
    let d = h.state.domain("web").unwrap();
    assert!(!d.is_placed());
    assert_eq!(d.restore_from.as_ref().map(|r| r.name.as_str()), Some("s1"));
    let delete = Command::DeleteSnapshot { domain: "web".into(), name: "s1".into() };
    assert_rejections(
        &h,
        vec![("delete while restoring", delete, FailedPrecondition, "web is to start from it")],
    );
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn migration_rejections() {
    let mut h = world();
    let web_host = h.state.domain("web").unwrap().status.host.clone().unwrap();
    let other = if web_host == "h1" { "h2" } else { "h1" }.to_string();
    let start = |domain: &str, target: Option<&str>| Command::StartMigration {
        domain: domain.into(),
        target: target.map(str::to_owned),
        max_downtime_ms: None,
    };
    h.exec_volume(new_volume("local", "l2", VolumeFormat::Raw, 10, None)).unwrap();
    assert_rejections(
        &h,
        vec![
            ("not running", start("idle", None), FailedPrecondition, "is not running"),
            ("paused fine but stopping not", start("stopping", None), FailedPrecondition, "is not running"),
            ("to itself", start("web", Some(&web_host)), InvalidArgument, "own host"),
            ("unknown target", start("web", Some("h9")), NotFound, "host h9"),
            ("joining target", start("web", Some("h3")), FailedPrecondition, "host is joining"),
            (
                "progress unknown",
                Command::ReportMigrationProgress { id: 999_999, phase: MigrationPhase::Transferring },
                NotFound,
                "migration 999999",
            ),
            ("commit unknown", Command::CommitMigration { id: 999_999 }, NotFound, "migration 999999"),
        ],
    );
    let free = h.state.host(&other).unwrap().free().memory_mib;
    let mut big = kernel_spec(1, free - 100);
    big.placement.required_labels = labels(&[("zone", if web_host == "h1" { "b" } else { "a" })]);
    ok(&mut h, Command::DefineDomain { name: "filler".into(), spec: big });
    run(&mut h, "filler");
    assert_rejections(
        &h,
        vec![
            ("target full", start("web", Some(&other)), ResourceExhausted, "not enough free memory"),
            ("nowhere to go", start("web", None), ResourceExhausted, "short of memory"),
        ],
    );
    ok(&mut h, Command::DestroyDomain { name: "filler".into() });
    observe(&mut h, "filler", ObservedPhase::Stopped);

    let before = h.state.last_seq();
    ok(&mut h, start("web", None));
    let id = before + 1;
    assert_eq!(h.state.migration(id).unwrap().target, other);
    ok(&mut h, Command::ReportMigrationProgress { id, phase: MigrationPhase::Transferring });
    assert_rejections(
        &h,
        vec![
            ("already migrating", start("web", None), FailedPrecondition, "already migrating"),
            (
                "start while migrating",
                Command::ShutdownDomain { name: "web".into() },
                FailedPrecondition,
                "is migrating",
            ),
            (
                "snapshot while migrating",
                Command::CreateSnapshot { domain: "web".into(), name: "m".into(), kind: SnapshotKind::Full },
                FailedPrecondition,
                "is migrating",
            ),
            (
                "progress backwards",
                Command::ReportMigrationProgress { id, phase: MigrationPhase::Preparing },
                FailedPrecondition,
                "cannot go back",
            ),
            (
                "progress to end",
                Command::ReportMigrationProgress { id, phase: MigrationPhase::Committed },
                InvalidArgument,
                "CommitMigration",
            ),
            (
                "abort without reason",
                Command::AbortMigration { id, reason: String::new() },
                InvalidArgument,
                "reason",
            ),
        ],
    );
    ok(&mut h, Command::SetHostState { name: other.clone(), state: HostState::Suspect });
    assert_rejections(
        &h,
        vec![(
            "commit to suspect",
            Command::CommitMigration { id },
            FailedPrecondition,
            "roll the migration back",
        )],
    );
    ok(&mut h, Command::SetHostState { name: other.clone(), state: HostState::Ready });
    let generation = h.state.domain("web").unwrap().status.generation;
    ok(&mut h, Command::CommitMigration { id });
    let web = h.state.domain("web").unwrap();
    assert_eq!(web.status.host.as_deref(), Some(other.as_str()));
    assert_eq!(web.status.generation, generation + 1);
    assert!(!h.state.host(&web_host).unwrap().domains.contains("web"));
    assert_rejections(
        &h,
        vec![
            ("commit twice", Command::CommitMigration { id }, FailedPrecondition, "already committed"),
            (
                "abort committed",
                Command::AbortMigration { id, reason: "x".into() },
                FailedPrecondition,
                "already committed",
            ),
        ],
    );
    // A local-storage domain cannot live-migrate; a suspect source cannot either.
    ok(
        &mut h,
        Command::DefineDomain { name: "pinned".into(), spec: spec_with(&[(vol("local", "l2"), false)], &[]) },
    );
    run(&mut h, "pinned");
    let pinned_host = h.state.domain("pinned").unwrap().status.host.clone().unwrap();
    assert_rejections(
        &h,
        vec![("local storage", start("pinned", None), FailedPrecondition, "needs shared storage")],
    );
    ok(&mut h, Command::SetHostState { name: pinned_host.clone(), state: HostState::Suspect });
    assert_rejections(
        &h,
        vec![("suspect source", start("pinned", None), FailedPrecondition, "healthy source")],
    );
    crate::invariants::check(&h.state).unwrap();
}

/// A running guest moves live only between hosts of one driver: a target of another is
/// refused, and the scheduler picks none; hosts that name no driver are taken at their word.
#[test]
fn a_running_guest_moves_live_only_between_hosts_of_one_driver() {
    let mut h = world();
    let web_host = h.state.domain("web").unwrap().status.host.clone().unwrap();
    let other = if web_host == "h1" { "h2" } else { "h1" }.to_string();
    let relabel = |h: &mut Harness, name: &str, driver: &str| {
        let host = h.state.host(name).unwrap().clone();
        let mut labels = host.labels.clone();
        labels.insert(crate::model::DRIVER_LABEL.to_owned(), driver.to_owned());
        ok(
            h,
            Command::RegisterHost {
                name: name.into(),
                address: host.address,
                capacity: host.capacity,
                labels,
                vm_limits: host.vm_limits,
            },
        );
    };
    relabel(&mut h, &web_host, "kvm");
    relabel(&mut h, &other, "qemu");
    let start = |target: Option<&str>| Command::StartMigration {
        domain: "web".into(),
        target: target.map(str::to_owned),
        max_downtime_ms: None,
    };
    assert_rejections(
        &h,
        vec![
            ("to another driver", start(Some(&other)), FailedPrecondition, "between hosts of one driver"),
            ("no host of its driver", start(None), ResourceExhausted, "1 running another driver"),
        ],
    );
    relabel(&mut h, &other, "kvm");
    ok(&mut h, start(None));
    let id = h.state.last_seq();
    assert_eq!(h.state.migration(id).map(|m| m.target.as_str()), Some(other.as_str()));
    crate::invariants::check(&h.state).unwrap();
}

/// The source and target of migration `id` in `h`.
fn migration_sides(h: &Harness, id: u64) -> (String, String) {
    let m = h.state.migration(id).unwrap();
    (m.source.clone(), m.target.clone())
}

fn report(id: u64, host: &str, report: MigrationReport) -> Command {
    Command::ReportMigration { id, host: host.into(), report }
}

#[test]
fn hosts_report_a_migration_through_to_its_end() {
    use MigrationReport::*;
    let mut h = world();
    let id = h.state.last_seq() + 1;
    ok(&mut h, Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: None });
    let (source, target) = migration_sides(&h, id);
    let generation = h.state.domain("web").unwrap().status.generation;
    let ready = || TargetReady { address: "127.0.0.1:7100".into() };
    let copied =
        MigrationProgress { bytes_sent: 64 << 20, rounds: 1, remaining_bytes: 1 << 20, ..Default::default() };
    let done = MigrationProgress { downtime_ms: Some(4), ..copied };
    let fail = || Failed { reason: "the link dropped".into() };
    assert_rejections(
        &h,
        vec![
            ("unknown", report(999_999, &source, fail()), NotFound, "migration 999999"),
            (
                "a third host",
                report(id, "h3", fail()),
                FailedPrecondition,
                "neither its source nor its target",
            ),
            ("the source says ready", report(id, &source, ready()), FailedPrecondition, "only its Target"),
            (
                "the target copies",
                report(id, &target, Copying(copied)),
                FailedPrecondition,
                "only its Source",
            ),
            (
                "no address",
                report(id, &target, TargetReady { address: "nowhere".into() }),
                InvalidArgument,
                "address",
            ),
            (
                "an unspecified address",
                report(id, &target, TargetReady { address: "0.0.0.0:7100".into() }),
                InvalidArgument,
                "no reachable listener",
            ),
            (
                "copy before the target",
                report(id, &source, Copying(copied)),
                FailedPrecondition,
                "no target address",
            ),
            (
                "switch too soon",
                report(id, &source, Switch(copied)),
                FailedPrecondition,
                "follows the last copy",
            ),
            ("done too soon", report(id, &source, Done(done)), FailedPrecondition, "only a committed"),
        ],
    );
    ok(&mut h, report(id, &target, ready()));
    assert_eq!(h.state.migration(id).unwrap().target_address.as_deref(), Some("127.0.0.1:7100"));
    let seq = h.state.last_seq();
    ok(&mut h, report(id, &target, ready()));
    assert_eq!(h.state.last_seq(), seq, "the same address said again writes nothing");
    assert_rejections(
        &h,
        vec![
            (
                "another address",
                report(id, &target, TargetReady { address: "127.0.0.1:7101".into() }),
                FailedPrecondition,
                "prepared already",
            ),
            (
                "a throttle past the top",
                report(id, &source, Copying(MigrationProgress { throttle_percent: 100, ..copied })),
                InvalidArgument,
                "throttle_percent",
            ),
            ("a downtime while copying", report(id, &source, Copying(done)), InvalidArgument, "downtime_ms"),
        ],
    );
    ok(&mut h, report(id, &source, Copying(copied)));
    let m = h.state.migration(id).unwrap();
    assert_eq!((m.phase, m.progress), (MigrationPhase::Transferring, copied));
    let last = MigrationProgress { rounds: 2, remaining_bytes: 0, ..copied };
    ok(&mut h, report(id, &source, Completing(last)));
    assert_eq!(h.state.migration(id).unwrap().phase, MigrationPhase::Completing);
    assert_eq!(h.state.domain("web").unwrap().status.host.as_deref(), Some(source.as_str()));
    ok(&mut h, report(id, &source, Switch(last)));
    let web = h.state.domain("web").unwrap();
    assert_eq!(h.state.migration(id).unwrap().phase, MigrationPhase::Committed);
    assert_eq!((web.status.host.as_deref(), web.status.generation), (Some(target.as_str()), generation + 1));
    assert_rejections(
        &h,
        vec![
            ("a failure after the switch", report(id, &target, fail()), FailedPrecondition, "has committed"),
            ("done without the downtime", report(id, &source, Done(last)), InvalidArgument, "downtime_ms"),
        ],
    );
    ok(&mut h, report(id, &source, Done(done)));
    assert_eq!(h.state.migration(id).unwrap().progress.downtime_ms, Some(4));
    let seq = h.state.last_seq();
    ok(&mut h, report(id, &source, Done(MigrationProgress { downtime_ms: Some(9), ..copied })));
    assert_eq!(h.state.last_seq(), seq, "the final numbers are said once");
    crate::invariants::check(&h.state).unwrap();
}

/// An operator's longest pause: set at the start (in the same proposal), changed while
/// the copy runs, refused out of range, once the last copy is under way, or after the end.
#[test]
fn an_operator_sets_a_migrations_longest_pause_while_it_copies() {
    use MigrationReport::*;
    let mut h = world();
    assert_rejections(
        &h,
        vec![
            (
                "no pause at all",
                Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: Some(0) },
                InvalidArgument,
                "max_downtime_ms",
            ),
            (
                "past a minute",
                Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: Some(60_001) },
                InvalidArgument,
                "max_downtime_ms",
            ),
        ],
    );
    let id = h.state.last_seq() + 1;
    let before = h.state.last_seq();
    ok(&mut h, Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: Some(30) });
    assert_eq!(h.state.last_seq(), before + 2, "the start and its pause, in one proposal");
    assert_eq!(h.state.migration(id).unwrap().max_downtime_ms, Some(30));
    let (source, target) = migration_sides(&h, id);
    ok(&mut h, report(id, &target, TargetReady { address: "127.0.0.1:7100".into() }));
    ok(&mut h, report(id, &source, Copying(MigrationProgress { rounds: 1, ..Default::default() })));
    ok(&mut h, Command::SetMigrationDowntime { id, max_downtime_ms: 8 });
    assert_eq!(h.state.migration(id).unwrap().max_downtime_ms, Some(8));
    let seq = h.state.last_seq();
    ok(&mut h, Command::SetMigrationDowntime { id, max_downtime_ms: 8 });
    assert_eq!(h.state.last_seq(), seq, "the same pause again writes nothing");
    assert_rejections(
        &h,
        vec![
            ("zero", Command::SetMigrationDowntime { id, max_downtime_ms: 0 }, InvalidArgument, "1..="),
            (
                "unknown",
                Command::SetMigrationDowntime { id: 999_999, max_downtime_ms: 8 },
                NotFound,
                "migration 999999",
            ),
        ],
    );
    ok(&mut h, report(id, &source, Completing(MigrationProgress { rounds: 2, ..Default::default() })));
    assert_rejections(
        &h,
        vec![(
            "during the last copy",
            Command::SetMigrationDowntime { id, max_downtime_ms: 20 },
            FailedPrecondition,
            "last copy",
        )],
    );
    ok(&mut h, Command::AbortMigration { id, reason: "x".into() });
    assert_rejections(
        &h,
        vec![(
            "after the end",
            Command::SetMigrationDowntime { id, max_downtime_ms: 20 },
            FailedPrecondition,
            "rolled back",
        )],
    );
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn a_host_that_fails_a_migration_rolls_it_back() {
    let mut h = world();
    for failing in [0, 1] {
        let id = h.state.last_seq() + 1;
        let free = |h: &Harness| h.state.hosts().values().map(|x| x.free().memory_mib).collect::<Vec<_>>();
        let before = free(&h);
        ok(&mut h, Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: None });
        let (source, target) = migration_sides(&h, id);
        ok(&mut h, report(id, &target, MigrationReport::TargetReady { address: "127.0.0.1:7100".into() }));
        let host = if failing == 0 { &source } else { &target };
        ok(&mut h, report(id, host, MigrationReport::Failed { reason: "the link dropped".into() }));
        let m = h.state.migration(id).unwrap();
        assert_eq!(m.phase, MigrationPhase::RolledBack);
        let web = h.state.domain("web").unwrap();
        assert_eq!((web.migration, web.status.host.as_deref()), (None, Some(source.as_str())));
        assert_eq!(free(&h), before, "the target's reservation is released");
        let seq = h.state.last_seq();
        ok(&mut h, report(id, &target, MigrationReport::Failed { reason: "late word".into() }));
        assert_eq!(h.state.last_seq(), seq, "a failure after the rollback writes nothing");
        assert_rejections(
            &h,
            vec![(
                "an empty reason",
                report(id, &target, MigrationReport::Failed { reason: String::new() }),
                InvalidArgument,
                "reason",
            )],
        );
    }
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn aborted_maps_to_its_code() {
    let r = crate::Rejection::Aborted { resource: "domain web".into(), attempts: 5 };
    assert_eq!(r.code(), Aborted);
    assert!(r.to_string().contains("after 5 attempts"));
}

#[test]
fn a_retried_request_gets_its_first_answer() {
    let mut h = world();
    let request = h.request(Command::StartDomain { name: "idle".into() });
    let first = h.submit(&request).unwrap();
    assert_eq!(first.event_count(), 2);
    let hash = state_hash(&h.state);
    // Decided again: the window answers without proposing anything.
    assert_eq!(decide(&h.state, &request, 99).unwrap(), Decision::AlreadyCommitted(first));
    // Two proposals of one request raced into the log: the second applies nothing.
    let mut h2 = world();
    let request = h2.request(Command::StartDomain { name: "idle".into() });
    let Decision::Propose(p) = decide(&h2.state, &request, 5).unwrap() else {
        panic!("fresh request proposes")
    };
    let (first, _) = crate::apply_proposal(&mut h2.state, &p);
    let (second, events) = crate::apply_proposal(&mut h2.state, &p);
    let crate::ProposalOutcome::Applied(c) = first else { panic!("{first:?}") };
    assert_eq!(second, crate::ProposalOutcome::Duplicate(c));
    assert!(events.is_empty());
    // The same request id from another principal is another request.
    let mut other = request.clone();
    other.principal = "someone-else".into();
    assert!(matches!(decide(&h2.state, &other, 6), Err(e) if e.code() == FailedPrecondition));
    let _ = hash;
}

#[test]
fn a_stale_proposal_conflicts_and_changes_nothing() {
    let mut h = world();
    let r1 = h.request(Command::DefineDomain { name: "twin".into(), spec: kernel_spec(1, 256) });
    let r2 = h.request(Command::DefineDomain { name: "twin".into(), spec: kernel_spec(2, 256) });
    let Decision::Propose(p1) = decide(&h.state, &r1, 1).unwrap() else { panic!() };
    let Decision::Propose(p2) = decide(&h.state, &r2, 1).unwrap() else { panic!() };
    assert!(matches!(crate::apply_proposal(&mut h.state, &p1).0, crate::ProposalOutcome::Applied(_)));
    let hash = state_hash(&h.state);
    let (outcome, events) = crate::apply_proposal(&mut h.state, &p2);
    assert!(matches!(outcome, crate::ProposalOutcome::Conflict { expected: 0, .. }), "{outcome:?}");
    assert!(events.is_empty());
    assert_eq!(state_hash(&h.state), hash);
}

#[test]
fn terminal_observations_release_and_ha_keeps_wanting_to_run() {
    let mut h = world();
    let mut spec = kernel_spec(2, 1024);
    spec.ha = HaPolicy::Restart { priority: 10 };
    ok(&mut h, Command::DefineDomain { name: "ha".into(), spec });
    run(&mut h, "ha");
    let host = h.state.domain("ha").unwrap().status.host.clone().unwrap();
    let before = h.state.host(&host).unwrap().allocated;
    observe(&mut h, "ha", ObservedPhase::Crashed);
    let d = h.state.domain("ha").unwrap();
    assert_eq!((d.status.host.as_deref(), d.desired), (None, crate::model::DesiredState::Running));
    assert_eq!(d.status.phase, crate::model::Phase::Crashed);
    let after = h.state.host(&host).unwrap().allocated;
    assert_eq!(after.memory_mib + 1024, before.memory_mib);
    // Without HA, a crash leaves the domain stopped; a self-poweroff always does.
    observe(&mut h, "web", ObservedPhase::Stopped);
    assert_eq!(h.state.domain("web").unwrap().desired, crate::model::DesiredState::Stopped);
    // A repeated identical report changes nothing.
    let seq = h.state.last_seq();
    run(&mut h, "web");
    let seq2 = h.state.last_seq();
    observe(&mut h, "web", ObservedPhase::Running);
    assert_eq!(h.state.last_seq(), seq2);
    assert!(seq2 > seq);
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn destroy_during_migration_rolls_it_back() {
    let mut h = world();
    let seq = h.state.last_seq();
    ok(&mut h, Command::StartMigration { domain: "web".into(), target: None, max_downtime_ms: None });
    let id = seq + 1;
    ok(&mut h, Command::DestroyDomain { name: "web".into() });
    let m = h.state.migration(id).unwrap();
    assert_eq!(m.phase, MigrationPhase::RolledBack);
    assert!(h.state.domain("web").unwrap().migration.is_none());
    assert_eq!(
        h.state.host(&m.target).unwrap().domains.len(),
        h.state.host(&m.target).unwrap().domains.iter().filter(|d| *d != "web").count()
    );
    observe(&mut h, "web", ObservedPhase::Stopped);
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn macs_and_addresses_are_deterministic_and_unique() {
    let mut a = world();
    let mut b = world();
    for h in [&mut a, &mut b] {
        ok(
            h,
            Command::DefineDomain { name: "two-nics".into(), spec: spec_with(&[], &["net", "net", "lan"]) },
        );
    }
    let nics = &a.state.domain("two-nics").unwrap().spec.nics;
    assert_eq!(nics, &b.state.domain("two-nics").unwrap().spec.nics);
    let net = a.state.network("net").unwrap();
    let ips: Vec<_> = net.leases.values().map(|l| l.ip.unwrap().to_string()).collect();
    assert_eq!(ips.len(), 3, "web + two NICs");
    let unique: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), 3);
    assert!(a.state.network("lan").unwrap().leases.values().all(|l| l.ip.is_none()));
    let _: BTreeMap<u8, u8> = BTreeMap::new();
}

#[test]
fn a_clone_is_a_new_domain_that_starts_from_another_domains_snapshot() {
    let mut h = world();
    // A read-write disk cannot be shared with a clone.
    run(&mut h, "db");
    h.take_snapshot("db", "s0").unwrap();
    let of_db = Command::CloneDomain { clone: "db2".into(), source: "db".into(), snapshot: "s0".into() };
    assert_rejections(&h, vec![("read-write disk", of_db, FailedPrecondition, "attached read-write")]);
    ok(&mut h, Command::DefineDomain { name: "nic".into(), spec: spec_with(&[], &["net"]) });
    run(&mut h, "nic");
    h.take_snapshot("nic", "s0").unwrap();
    // A clone of a domain with NICs has MACs and addresses of its own.
    ok(&mut h, Command::CloneDomain { clone: "nic2".into(), source: "nic".into(), snapshot: "s0".into() });
    let mac_of = |h: &Harness, d: &str| h.state.domain(d).unwrap().spec.nics[0].mac.unwrap();
    let (mac, clone_mac) = (mac_of(&h, "nic"), mac_of(&h, "nic2"));
    assert_ne!(mac, clone_mac);
    let leases = &h.state.network("net").unwrap().leases;
    assert_eq!((leases[&mac].domain.as_str(), leases[&clone_mac].domain.as_str()), ("nic", "nic2"));
    assert_ne!(leases[&mac].ip, leases[&clone_mac].ip);
    ok(&mut h, Command::DefineDomain { name: "src".into(), spec: spec_with(&[], &[]) });
    run(&mut h, "src");
    let clone =
        |c: &str, s: &str| Command::CloneDomain { clone: c.into(), source: "src".into(), snapshot: s.into() };
    ok(&mut h, Command::CreateSnapshot { domain: "src".into(), name: "s0".into(), kind: SnapshotKind::Full });
    assert_rejections(
        &h,
        vec![("pending", clone("web2", "s0"), FailedPrecondition, "a pending Full snapshot")],
    );
    let web = h.state.domain("src").unwrap().clone();
    let src_s0 = h.state.snapshot("src", "s0").unwrap().id;
    ok(
        &mut h,
        Command::ReportSnapshot {
            domain: "src".into(),
            name: "s0".into(),
            id: src_s0,
            host: web.status.host.clone().unwrap(),
            generation: web.status.generation,
            outcome: SnapshotOutcome::Taken { bytes: 1, duration_ms: 1 },
        },
    );
    assert_rejections(
        &h,
        vec![
            ("existing name", clone("idle", "s0"), AlreadyExists, "domain idle"),
            ("unknown snapshot", clone("web2", "nope"), NotFound, "snapshot src/nope"),
            ("bad name", clone("Web 2", "s0"), InvalidArgument, "name"),
        ],
    );
    ok(&mut h, clone("web2", "s0"));
    let c = h.state.domain("web2").unwrap().clone();
    assert_eq!(c.restore_from, Some(crate::model::SnapshotRef { domain: "src".into(), name: "s0".into() }));
    assert!(!c.is_placed());
    assert_eq!((c.spec.vcpus, c.spec.memory_mib), (web.spec.vcpus, web.spec.memory_mib));
    run(&mut h, "web2");
    assert_eq!(h.state.domain("web2").unwrap().restore_from, None, "its host restored it");
    assert!(h.envelopes.iter().any(|e| matches!(&e.event, crate::Event::SnapshotRestored { domain, source, .. } if domain == "web2" && source == "src")));
    // A clone not started yet keeps its source snapshot from going.
    ok(&mut h, clone("web3", "s0"));
    let delete = Command::DeleteSnapshot { domain: "src".into(), name: "s0".into() };
    assert_rejections(
        &h,
        vec![("delete a clone's source", delete, FailedPrecondition, "web3 is to start from it")],
    );
    ok(&mut h, Command::UndefineDomain { name: "web3".into() });
    ok(&mut h, Command::DeleteSnapshot { domain: "src".into(), name: "s0".into() });
    crate::invariants::check(&h.state).unwrap();
}

#[test]
fn a_revert_is_refused_once_the_domains_disks_changed() {
    let mut h = world();
    h.take_snapshot("web", "s1").unwrap();
    let disk =
        h.state.domain("web").unwrap().spec.disks.iter().find(|d| !d.read_only).unwrap().volume.clone();
    assert_eq!(h.state.snapshot("web", "s1").unwrap().disks, vec![disk.clone()]);
    ok(&mut h, Command::DestroyDomain { name: "web".into() });
    observe(&mut h, "web", ObservedPhase::Stopped);
    ok(&mut h, Command::DetachDisk { domain: "web".into(), volume: disk });
    let revert = Command::RevertSnapshot { domain: "web".into(), name: "s1".into() };
    assert_rejections(
        &h,
        vec![("disks changed", revert, FailedPrecondition, "writable disks changed since snapshot s1")],
    );
}

/// A volume's file is made, grown and removed by a host, and only its report of doing so
/// moves the volume on; a late or foreign report changes nothing.
#[test]
fn volume_operations_are_carried_out_by_hosts() {
    use crate::command::VolumeOutcome;
    use crate::model::{VolumeOp, VolumeState};
    let mut h = world();
    let v = vol("shared", "new");
    ok(&mut h, new_volume("shared", "new", VolumeFormat::Raw, 100, None));
    let VolumeState::Pending { op: VolumeOp::Create { .. }, host, id } =
        h.state.volume(&v).unwrap().state.clone()
    else {
        panic!("a new volume waits for its host")
    };
    assert_eq!(h.state.volume(&v).unwrap().host, None, "a shared pool's volume is bound to no host");
    let report = |host: &str, id: u64, outcome: VolumeOutcome| Command::ReportVolume {
        volume: v.clone(),
        host: host.into(),
        id,
        outcome,
    };
    let done = VolumeOutcome::Done { allocation_mib: 0 };
    let other = if host == "h1" { "h2" } else { "h1" };
    ok(&mut h, Command::DefineDomain { name: "user".into(), spec: spec_with(&[(v.clone(), false)], &[]) });
    assert_rejections(
        &h,
        vec![
            ("other host", report(other, id, done.clone()), FailedPrecondition, "no operation"),
            ("other operation", report(&host, id + 1, done.clone()), FailedPrecondition, "no operation"),
            (
                "start before the file",
                Command::StartDomain { name: "user".into() },
                FailedPrecondition,
                "is creating",
            ),
            (
                "delete while made",
                Command::DeleteVolume { volume: v.clone() },
                FailedPrecondition,
                "carries out its create",
            ),
            (
                "resize while made",
                Command::ResizeVolume { volume: v.clone(), capacity_mib: 200 },
                FailedPrecondition,
                "carries out its create",
            ),
            (
                "clone while made",
                new_volume("shared", "c", VolumeFormat::Qcow2, 100, Some("new")),
                FailedPrecondition,
                "cannot be cloned while creating",
            ),
        ],
    );
    ok(&mut h, report(&host, id, VolumeOutcome::Done { allocation_mib: 7 }));
    assert_eq!(h.state.volume(&v).unwrap().state, VolumeState::Ready);
    assert_eq!(h.state.volume(&v).unwrap().allocation_mib, 7);
    ok(&mut h, Command::DetachDisk { domain: "user".into(), volume: v.clone() });

    // A failed resize leaves the volume as it was and gives the pool its room back.
    let allocated = h.state.pool("shared").unwrap().allocated_mib;
    ok(&mut h, Command::ResizeVolume { volume: v.clone(), capacity_mib: 300 });
    assert_eq!(
        h.state.pool("shared").unwrap().allocated_mib,
        allocated + 200,
        "a resize reserves its growth"
    );
    let VolumeState::Pending { id, .. } = h.state.volume(&v).unwrap().state else { panic!("resizing") };
    ok(&mut h, report(&host, id, VolumeOutcome::Failed { reason: "disk full".into() }));
    let after = h.state.volume(&v).unwrap();
    assert_eq!(
        (after.capacity_mib, &after.state, after.failure.as_deref()),
        (100, &VolumeState::Ready, Some("disk full"))
    );
    assert_eq!(h.state.pool("shared").unwrap().allocated_mib, allocated);

    // Delete: the record goes only once the host removed the file.
    ok(&mut h, Command::DeleteVolume { volume: v.clone() });
    let VolumeState::Pending { op: VolumeOp::Delete, id, .. } = h.state.volume(&v).unwrap().state else {
        panic!("deleting")
    };
    ok(&mut h, report(&host, id, done.clone()));
    assert!(h.state.volume(&v).is_none());

    // A volume whose file could not be made is failed, and its record goes at once.
    ok(&mut h, new_volume("shared", "bad", VolumeFormat::Qcow2, 10, None));
    let bad = vol("shared", "bad");
    let VolumeState::Pending { host, id, .. } = h.state.volume(&bad).unwrap().state.clone() else { panic!() };
    ok(
        &mut h,
        Command::ReportVolume {
            volume: bad.clone(),
            host,
            id,
            outcome: VolumeOutcome::Failed { reason: "EACCES".into() },
        },
    );
    assert_eq!(h.state.volume(&bad).unwrap().state, VolumeState::Failed { reason: "EACCES".into() });
    ok(&mut h, Command::DeleteVolume { volume: bad.clone() });
    assert!(h.state.volume(&bad).is_none());
}

/// An operation on a shared pool's volume asked of a host that is fenced before reporting
/// is asked of another ready host; the first host's late report completes nothing. A
/// local pool's volume waits for its host, and no host leaves with an operation asked
/// of it.
#[test]
fn a_fenced_hosts_volume_operations_go_to_another_host() {
    use crate::command::VolumeOutcome;
    use crate::model::VolumeState;
    let mut h = world();
    let v = vol("shared", "new");
    ok(&mut h, new_volume("shared", "new", VolumeFormat::Raw, 100, None));
    let pending = |h: &Harness, v: &VolumeRef| match &h.state.volume(v).unwrap().state {
        VolumeState::Pending { host, id, .. } => (host.clone(), *id),
        other => panic!("{v} is {}", other.name()),
    };
    let (first, first_id) = pending(&h, &v);
    let leave = Command::SetHostState { name: first.clone(), state: HostState::Left };
    assert_rejections(&h, vec![("leave while asked", leave, FailedPrecondition, "is still creating volume")]);
    ok(&mut h, Command::SetHostState { name: first.clone(), state: HostState::Fenced });
    let (second, second_id) = pending(&h, &v);
    assert_ne!(second, first);
    assert!(second_id > first_id);
    let report = |host: &str, id: u64| Command::ReportVolume {
        volume: v.clone(),
        host: host.into(),
        id,
        outcome: VolumeOutcome::Done { allocation_mib: 0 },
    };
    assert_rejections(
        &h,
        vec![("late report", report(&first, first_id), FailedPrecondition, "no operation")],
    );
    ok(&mut h, report(&second, second_id));
    assert_eq!(h.state.volume(&v).unwrap().state, VolumeState::Ready);

    // With no other ready host it waits, and the HA controller fences again once one is.
    let mut h = world();
    ok(&mut h, new_volume("shared", "new", VolumeFormat::Raw, 100, None));
    let (first, _) = pending(&h, &v);
    let others: Vec<String> = h
        .state
        .hosts()
        .values()
        .filter(|x| x.name != first && x.state == HostState::Ready)
        .map(|x| x.name.clone())
        .collect();
    for other in &others {
        ok(&mut h, Command::SetHostState { name: other.clone(), state: HostState::Maintenance });
    }
    ok(&mut h, Command::SetHostState { name: first.clone(), state: HostState::Fenced });
    assert_eq!(pending(&h, &v).0, first, "no ready host to take it");
    let settings = crate::ha::HaSettings::default();
    assert!(crate::ha::plan_hosts(&h.state, &BTreeMap::new(), &settings).is_empty());
    ok(&mut h, Command::SetHostState { name: others[0].clone(), state: HostState::Ready });
    let again = crate::ha::plan_hosts(&h.state, &BTreeMap::new(), &settings);
    assert_eq!(again, vec![Command::SetHostState { name: first.clone(), state: HostState::Fenced }]);
    ok(&mut h, again[0].clone());
    assert_eq!(pending(&h, &v).0, others[0]);

    // A local pool's volume stays with the host its file is on.
    let mut h = world();
    h.exec_volume(new_volume("local", "mine", VolumeFormat::Raw, 10, None)).unwrap();
    let local = vol("local", "mine");
    let owner = h.state.volume(&local).unwrap().host.clone().unwrap();
    ok(&mut h, Command::ResizeVolume { volume: local.clone(), capacity_mib: 20 });
    ok(&mut h, Command::SetHostState { name: owner.clone(), state: HostState::Fenced });
    assert_eq!(pending(&h, &local).0, owner);
    // Its host leaving for good fails the resize: the volume stays as it was.
    ok(&mut h, Command::SetHostState { name: owner.clone(), state: HostState::Left });
    let after = h.state.volume(&local).unwrap();
    assert_eq!((after.capacity_mib, &after.state), (10, &VolumeState::Ready));
    assert!(after.failure.as_deref().unwrap().contains("left before it carried out the resize"));
}

/// A local pool's volume lives on the host that made it: its domains run there, and its
/// operations wait for that host.
#[test]
fn a_local_volume_binds_its_domains_to_its_host() {
    let mut h = world();
    let raw = h.state.volume(&vol("local", "raw")).unwrap();
    let file_host = raw.host.clone().expect("a local pool's volume is bound to its host");
    run(&mut h, "db");
    let db = h.state.domain("db").unwrap();
    assert_eq!(db.status.host.as_ref(), Some(&file_host), "db runs where its disk is");
    // A clone lives beside its backing file.
    h.exec_volume(new_volume("local", "base", VolumeFormat::Qcow2, 10, None)).unwrap();
    let base_host = h.state.volume(&vol("local", "base")).unwrap().host.clone().unwrap();
    h.exec_volume(new_volume("local", "child", VolumeFormat::Qcow2, 10, Some("base"))).unwrap();
    assert_eq!(h.state.volume(&vol("local", "child")).unwrap().host.as_ref(), Some(&base_host));
    // With its host down, nothing can run its domains or touch its file.
    ok(&mut h, Command::SetHostState { name: base_host.clone(), state: HostState::Maintenance });
    ok(
        &mut h,
        Command::DefineDomain {
            name: "pinned".into(),
            spec: spec_with(&[(vol("local", "child"), false)], &[]),
        },
    );
    assert_rejections(
        &h,
        vec![
            (
                "start elsewhere",
                Command::StartDomain { name: "pinned".into() },
                ResourceExhausted,
                "without its local disks",
            ),
            (
                "resize",
                Command::ResizeVolume { volume: vol("local", "base"), capacity_mib: 20 },
                FailedPrecondition,
                "which is maintenance",
            ),
        ],
    );
}

#[test]
fn a_caller_without_the_rights_is_refused_before_anything_is_looked_at() {
    use crate::model::Role;
    use crate::Caller;
    let h = world();
    let before = state_hash(&h.state);
    let define = || Command::DefineDomain { name: "new".into(), spec: kernel_spec(1, 256) };
    let report = |host: &str| Command::ReportObservation {
        domain: "web".into(),
        host: host.into(),
        generation: 1,
        phase: ObservedPhase::Running,
        reason: None,
    };
    let token = || Command::CreateToken {
        name: "t".into(),
        role: Role::Admin,
        secret_sha256: [1; 32],
        ttl_ms: 1_000,
    };
    let restart = || Command::RestartDomain { name: "web".into() };
    let cases: Vec<(Caller, Command, bool)> = vec![
        (Caller::User(Role::Viewer), define(), false),
        (Caller::User(Role::Operator), define(), true),
        (Caller::User(Role::Operator), token(), false),
        (Caller::User(Role::Admin), token(), true),
        (Caller::Host("h1".into()), define(), false),
        (Caller::Host("h1".into()), report("h2"), false),
        (Caller::Host("h1".into()), report("h1"), true),
        (Caller::User(Role::Admin), report("h1"), true),
        (Caller::User(Role::Operator), report("h1"), false),
        (Caller::User(Role::Admin), restart(), false),
        (Caller::Cluster, restart(), true),
    ];
    for (caller, command, allowed) in cases {
        let name = command.name();
        let request = Request {
            request_id: "rights".into(),
            principal: "someone".into(),
            caller: caller.clone(),
            command,
        };
        match decide(&h.state, &request, 42) {
            Err(r) if r.code() == PermissionDenied => {
                assert!(!allowed, "{caller:?} {name}: refused: {r}");
                assert!(r.to_string().contains("someone may not"), "{r}");
            }
            // Allowed through to the command's own checks (which may refuse it too).
            _ => assert!(allowed, "{caller:?} {name} got past the rights check"),
        }
    }
    assert_eq!(state_hash(&h.state), before);
}
