//! Placement: which host runs a domain. A pure function of the state.
//!
//! A host fits when it is ready and not flapping (fenced too often lately), its driver
//! runs a VM of the domain's size (the host's VM limits), it has the vCPUs and memory
//! free, carries every required label, and runs no other domain of the domain's
//! anti-affinity group. Among the hosts
//! that fit, the scheduler spreads load: it picks the host whose fuller dimension (vCPU or
//! memory share) would be lowest after the placement, counted in whole percent; hosts in
//! the same percent are told apart by a hash of the domain and host names. The hash keeps
//! the answer deterministic for a given state while sending domains that are placed at the
//! same moment (decided against the same state) to different hosts, so their proposals do
//! not collide on one host's version.
//!
//! A live migration's target must also run the source's driver ([`live_target`]): a
//! running guest's state moves only between two VMMs of one kind.

use std::fmt;

use crate::model::{DomainSpec, Host, HostState};
use crate::state::State;

/// Why one host cannot take a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    NotReady(HostState),
    Vcpus,
    Memory,
    Labels,
    /// Another domain of the group runs there.
    AntiAffinity(String),
    /// Fenced too often lately; an operator must clear it.
    Flapping,
    /// A disk of the domain is a local pool's volume whose file is on another host.
    LocalVolume {
        volume: String,
        host: String,
    },
    /// The host's driver runs no VM this large: what is over its limits.
    TooLarge(String),
    /// A live migration's target runs another driver than its source.
    OtherDriver {
        target: String,
        source: String,
    },
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::NotReady(s) => write!(f, "host is {s}"),
            Misfit::Vcpus => f.write_str("not enough free vCPUs"),
            Misfit::Memory => f.write_str("not enough free memory"),
            Misfit::Labels => f.write_str("missing required labels"),
            Misfit::AntiAffinity(d) => write!(f, "runs {d} of the same anti-affinity group"),
            Misfit::Flapping => f.write_str("host was fenced too often lately (drover host clear)"),
            Misfit::LocalVolume { volume, host } => write!(f, "its disk {volume} is on host {host}"),
            Misfit::TooLarge(what) => write!(f, "its driver runs no VM with {what}"),
            Misfit::OtherDriver { target, source } => write!(
                f,
                "it runs the {target} driver and the source the {source} driver: a running guest moves live only between hosts of one driver"
            ),
        }
    }
}

/// Why no host could take a domain: how many hosts failed for each reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoPlacement {
    pub hosts: usize,
    pub not_ready: usize,
    pub vcpus: usize,
    pub memory: usize,
    pub labels: usize,
    pub anti_affinity: usize,
    pub flapping: usize,
    pub local_volume: usize,
    pub too_large: usize,
    /// What was over the limits of the first host too small for it.
    pub too_large_detail: Option<String>,
    pub other_driver: usize,
}

impl fmt::Display for NoPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hosts == 0 {
            return f.write_str("no host can run it: the cluster has no candidate hosts");
        }
        write!(f, "no host can run it: of {} hosts", self.hosts)?;
        let parts = [
            (self.not_ready, "not ready"),
            (self.vcpus, "short of vCPUs"),
            (self.memory, "short of memory"),
            (self.labels, "missing required labels"),
            (self.anti_affinity, "running its anti-affinity group"),
            (self.flapping, "flapping"),
            (self.local_volume, "without its local disks"),
            (self.too_large, "whose driver runs no VM this large"),
            (self.other_driver, "running another driver than the source"),
        ];
        let mut first = true;
        for (n, what) in parts.into_iter().filter(|(n, _)| *n > 0) {
            write!(f, "{} {n} {what}", if first { "" } else { "," })?;
            first = false;
        }
        if let Some(detail) = &self.too_large_detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// Whether `host` can take domain `name` with `spec` now.
pub fn fit(state: &State, host: &Host, name: &str, spec: &DomainSpec) -> Result<(), Misfit> {
    if host.state != HostState::Ready {
        return Err(Misfit::NotReady(host.state));
    }
    if state.is_flapping(&host.name) {
        return Err(Misfit::Flapping);
    }
    if let Some(over) = host.vm_limits.and_then(|l| l.exceeded_by(spec)) {
        return Err(Misfit::TooLarge(over));
    }
    let free = host.free();
    if spec.vcpus > free.vcpus {
        return Err(Misfit::Vcpus);
    }
    if spec.memory_mib > free.memory_mib {
        return Err(Misfit::Memory);
    }
    if !spec.placement.required_labels.iter().all(|(k, v)| host.labels.get(k) == Some(v)) {
        return Err(Misfit::Labels);
    }
    for disk in &spec.disks {
        if let Some(file_host) = state.volume(&disk.volume).and_then(|v| v.host.as_ref()) {
            if *file_host != host.name {
                return Err(Misfit::LocalVolume { volume: disk.volume.to_string(), host: file_host.clone() });
            }
        }
    }
    if let Some(group) = &spec.placement.anti_affinity_group {
        for other in host.domains.iter().filter(|d| d.as_str() != name) {
            let same_group = state
                .domain(other)
                .is_some_and(|d| d.spec.placement.anti_affinity_group.as_ref() == Some(group));
            if same_group {
                return Err(Misfit::AntiAffinity(other.clone()));
            }
        }
    }
    Ok(())
}

/// Granularity of load comparison: one percent, in millionths.
const LOAD_BUCKET_MILLIONTHS: u64 = 10_000;

/// FNV-1a over the domain and host names: a stable, platform-independent tie-break.
fn tie_break(domain: &str, host: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes().chain([0]).chain(host.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Load after placing `spec` on `host`, in millionths of the fuller dimension.
fn load_after(host: &Host, spec: &DomainSpec) -> u64 {
    let share = |used: u64, cap: u64| used.saturating_mul(1_000_000).checked_div(cap).unwrap_or(u64::MAX);
    let cpu = share(u64::from(host.allocated.vcpus + spec.vcpus), u64::from(host.capacity.vcpus));
    let mem = share(host.allocated.memory_mib + spec.memory_mib, host.capacity.memory_mib);
    cpu.max(mem)
}

/// Whether a running guest of `source` can move live to `target`: both run one driver. A
/// host that names no driver (registered by an older build) is taken at its word.
pub fn live_target(source: &Host, target: &Host) -> Result<(), Misfit> {
    match (source.driver(), target.driver()) {
        (Some(s), Some(t)) if s != t => {
            Err(Misfit::OtherDriver { target: t.to_owned(), source: s.to_owned() })
        }
        _ => Ok(()),
    }
}

/// Pick a host for domain `name`.
pub fn place(state: &State, name: &str, spec: &DomainSpec) -> Result<String, NoPlacement> {
    place_where(state, name, spec, |_| Ok(()))
}

/// Pick a live migration's target for domain `name`, running on `source`: never the
/// source, and a host of its driver ([`live_target`]).
pub fn place_live(
    state: &State,
    name: &str,
    spec: &DomainSpec,
    source: &Host,
) -> Result<String, NoPlacement> {
    place_where(state, name, spec, |host| match host.name == source.name {
        true => Err(None),
        false => live_target(source, host).map_err(Some),
    })
}

/// Pick a host for domain `name` among those `also` takes: `Err(None)` leaves a host out
/// uncounted, `Err(Some(misfit))` counts it as unfit.
fn place_where(
    state: &State,
    name: &str,
    spec: &DomainSpec,
    also: impl Fn(&Host) -> Result<(), Option<Misfit>>,
) -> Result<String, NoPlacement> {
    let mut best: Option<((u64, u64), &Host)> = None;
    let mut why = NoPlacement::default();
    for host in state.hosts().values() {
        if host.state == HostState::Left {
            continue;
        }
        let verdict = match also(host) {
            Err(None) => continue,
            Err(Some(misfit)) => Err(misfit),
            Ok(()) => fit(state, host, name, spec),
        };
        why.hosts += 1;
        match verdict {
            Ok(()) => {
                let rank = (load_after(host, spec) / LOAD_BUCKET_MILLIONTHS, tie_break(name, &host.name));
                if best.is_none_or(|(b, _)| rank < b) {
                    best = Some((rank, host));
                }
            }
            Err(Misfit::NotReady(_)) => why.not_ready += 1,
            Err(Misfit::Vcpus) => why.vcpus += 1,
            Err(Misfit::Memory) => why.memory += 1,
            Err(Misfit::Labels) => why.labels += 1,
            Err(Misfit::AntiAffinity(_)) => why.anti_affinity += 1,
            Err(Misfit::Flapping) => why.flapping += 1,
            Err(Misfit::LocalVolume { .. }) => why.local_volume += 1,
            Err(Misfit::TooLarge(over)) => {
                why.too_large += 1;
                why.too_large_detail.get_or_insert(over);
            }
            Err(Misfit::OtherDriver { .. }) => why.other_driver += 1,
        }
    }
    best.map(|(_, h)| h.name.clone()).ok_or(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{kernel_spec, Harness};
    use crate::model::Labels;
    use crate::Command;

    fn cluster(hosts: &[(&str, u32, u64)]) -> Harness {
        let mut h = Harness::new();
        for (name, vcpus, mem) in hosts {
            h.ready_host(name, *vcpus, *mem);
        }
        h
    }

    fn start(h: &mut Harness, name: &str, spec: DomainSpec) -> String {
        h.exec(Command::DefineDomain { name: name.into(), spec }).unwrap();
        h.exec(Command::StartDomain { name: name.into() }).unwrap();
        h.state.domain(name).unwrap().status.host.clone().unwrap()
    }

    #[test]
    fn spreads_load_evenly() {
        let mut h = cluster(&[("a", 8, 8192), ("b", 8, 8192), ("c", 8, 8192)]);
        for i in 0..9 {
            start(&mut h, &format!("d{i}"), kernel_spec(1, 1024));
        }
        for host in h.state.hosts().values() {
            assert_eq!(host.domains.len(), 3, "host {} got {:?}", host.name, host.domains);
        }
    }

    #[test]
    fn weighs_by_share_not_absolute_free_space() {
        // A big host half full is a better fit than a small host nearly empty but whose
        // share would end up higher.
        let mut h = cluster(&[("big", 64, 65536), ("small", 2, 2048)]);
        start(&mut h, "filler", kernel_spec(32, 32768));
        let mut s = kernel_spec(1, 1024);
        s.placement.required_labels = Labels::new();
        assert_eq!(place(&h.state, "x", &s).unwrap(), "small"); // 50% vs 51.5%
        let heavy = kernel_spec(1, 1536);
        assert_eq!(place(&h.state, "y", &heavy).unwrap(), "big"); // 75% vs 52.3%
    }

    #[test]
    fn is_deterministic_and_spreads_simultaneous_placements() {
        let hosts: Vec<(String, u32, u64)> = (0..10).map(|i| (format!("h{i}"), 64, 65536)).collect();
        let refs: Vec<(&str, u32, u64)> = hosts.iter().map(|(n, c, m)| (n.as_str(), *c, *m)).collect();
        let h = cluster(&refs);
        let spec = kernel_spec(1, 512);
        let first = place(&h.state, "x", &spec).unwrap();
        for _ in 0..10 {
            assert_eq!(place(&h.state, "x", &spec).unwrap(), first, "same state, same answer");
        }
        let other = place_live(&h.state, "x", &spec, h.state.host(&first).unwrap()).unwrap();
        assert_ne!(other, first);
        // Twenty domains decided against the same state land on many hosts, not one.
        let chosen: std::collections::BTreeSet<String> =
            (0..20).map(|i| place(&h.state, &format!("d{i}"), &spec).unwrap()).collect();
        assert!(chosen.len() >= 6, "placements spread over {chosen:?}");
    }

    /// A live migration's target runs its source's driver; a host that names no driver
    /// (an older build's) is taken at its word.
    #[test]
    fn a_live_target_runs_the_sources_driver() {
        let mut h = Harness::new();
        for (name, driver, vcpus, memory_mib) in [
            ("kvm1", Some("kvm"), 8, 8192),
            ("kvm2", Some("kvm"), 8, 4096),
            ("qemu1", Some("qemu"), 64, 65536),
            ("old", None, 8, 2048),
        ] {
            let labels: Labels =
                driver.map(|d| (crate::model::DRIVER_LABEL.to_owned(), d.to_owned())).into_iter().collect();
            let mut register = crate::fixtures::register_host(name, vcpus, memory_mib);
            if let Command::RegisterHost { labels: l, .. } = &mut register {
                *l = labels;
            }
            h.exec(register).unwrap();
            h.exec(Command::SetHostState { name: name.into(), state: HostState::Ready }).unwrap();
        }
        let host = |n: &str| h.state.host(n).unwrap();
        let spec = kernel_spec(1, 512);
        // qemu1 is the emptiest, but runs another driver.
        assert_eq!(place(&h.state, "x", &spec).unwrap(), "qemu1");
        assert_eq!(place_live(&h.state, "x", &spec, host("kvm1")).unwrap(), "kvm2");
        let refused = live_target(host("kvm1"), host("qemu1")).unwrap_err();
        assert!(
            refused.to_string().contains("runs the qemu driver and the source the kvm driver"),
            "{refused}"
        );
        assert!(live_target(host("kvm1"), host("old")).is_ok());
        assert!(live_target(host("old"), host("qemu1")).is_ok());
        // No host of the driver has room: said so.
        let big = kernel_spec(1, 6144);
        let why = place_live(&h.state, "x", &big, host("kvm1")).unwrap_err();
        assert_eq!((why.hosts, why.other_driver, why.memory), (3, 1, 2), "{why}");
        assert!(why.to_string().contains("1 running another driver than the source"), "{why}");
    }

    #[test]
    fn honours_labels_anti_affinity_and_readiness() {
        let mut h = cluster(&[("a", 8, 8192), ("b", 8, 8192)]);
        h.exec(Command::RegisterHost {
            name: "c".into(),
            address: "127.0.0.1:7003".into(),
            capacity: crate::model::Resources { vcpus: 64, memory_mib: 1 << 20 },
            labels: [("gpu".to_string(), "yes".to_string())].into(),
            vm_limits: None,
        })
        .unwrap();
        // c is the emptiest by far but still joining: never chosen.
        assert_ne!(place(&h.state, "x", &kernel_spec(1, 512)).unwrap(), "c");
        let mut gpu = kernel_spec(1, 512);
        gpu.placement.required_labels = [("gpu".to_string(), "yes".to_string())].into();
        let why = place(&h.state, "x", &gpu).unwrap_err();
        assert_eq!((why.hosts, why.not_ready, why.labels), (3, 1, 2));
        h.exec(Command::SetHostState { name: "c".into(), state: crate::model::HostState::Ready }).unwrap();
        assert_eq!(place(&h.state, "x", &gpu).unwrap(), "c");

        let mut member = kernel_spec(1, 512);
        member.placement.anti_affinity_group = Some("db".into());
        let hosts: std::collections::BTreeSet<String> =
            (0..3).map(|i| start(&mut h, &format!("db{i}"), member.clone())).collect();
        assert_eq!(hosts.len(), 3, "one per host");
        let why = place(&h.state, "db3", &member).unwrap_err();
        assert_eq!(why.anti_affinity, 3);
        assert!(why.to_string().contains("3 running its anti-affinity group"), "{why}");
    }

    /// A host's driver runs VMs up to the limits the host said: a larger domain goes
    /// elsewhere, or nowhere, with the reason; the limits change only when said again.
    #[test]
    fn honours_the_vm_limits_hosts_say() {
        use crate::model::VmLimits;
        let mut h = cluster(&[("a", 64, 1 << 20), ("b", 64, 1 << 20)]);
        let own_vmm = VmLimits { vcpus: 32, memory_mib: 3072, disks: 8, nics: 8 };
        let say = |h: &mut Harness, name: &str, vm_limits| {
            h.exec(Command::RegisterHost {
                name: name.into(),
                address: "127.0.0.1:7001".into(),
                capacity: crate::model::Resources { vcpus: 64, memory_mib: 1 << 20 },
                labels: Labels::new(),
                vm_limits,
            })
        };
        let said = say(&mut h, "a", Some(own_vmm)).unwrap();
        assert_eq!(h.state.host("a").unwrap().vm_limits, Some(own_vmm));
        let again = say(&mut h, "a", Some(own_vmm)).unwrap();
        assert_eq!(again.last_seq, said.last_seq, "the same limits again change nothing");
        let none = VmLimits { vcpus: 0, ..own_vmm };
        let refused = say(&mut h, "a", Some(none)).unwrap_err();
        assert!(refused.to_string().contains("vm_limits.vcpus"), "{refused}");
        assert_eq!(h.state.host("a").unwrap().vm_limits, Some(own_vmm), "a refusal changes nothing");
        let big = kernel_spec(4, 4096);
        assert_eq!(place(&h.state, "x", &big).unwrap(), "b", "only b runs a 4 GiB VM");
        assert!(fit(&h.state, h.state.host("a").unwrap(), "x", &kernel_spec(32, 3072)).is_ok());
        say(&mut h, "b", Some(own_vmm)).unwrap();
        let why = place(&h.state, "x", &big).unwrap_err();
        assert_eq!((why.hosts, why.too_large), (2, 2));
        assert!(
            why.to_string()
                .contains("2 whose driver runs no VM this large (4096 MiB of memory (at most 3072))"),
            "{why}"
        );
        let mut wide = kernel_spec(33, 512);
        let why = place(&h.state, "x", &wide).unwrap_err();
        assert!(why.to_string().contains("33 vCPUs (at most 32)"), "{why}");
        wide.vcpus = 1;
        wide.nics = (0..9).map(|_| crate::model::Nic { network: "n".into(), mac: None }).collect();
        assert!(place(&h.state, "x", &wide).unwrap_err().to_string().contains("9 NICs (at most 8)"));
        // A host that says nothing any more has no limits beyond the cluster's.
        say(&mut h, "b", None).unwrap();
        assert_eq!(place(&h.state, "x", &big).unwrap(), "b");
    }
}
