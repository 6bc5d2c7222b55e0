//! Realistic event histories, produced by running commands through the real `decide` and
//! `apply`: hosts join, then domains with a disk and a NIC are defined, started, observed,
//! shut down and undefined, with a bounded number alive at once.

use controlplane::fixtures::{dir_pool, kernel_spec, nat_network, new_volume, Harness};
use controlplane::model::{Disk, Nic, ObservedPhase, VolumeFormat, VolumeRef};
use controlplane::{Command, EventEnvelope};

/// Shape of a generated history.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hosts: usize,
    /// Domains alive at once; older ones are retired as new ones arrive.
    pub live_domains: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape { hosts: 100, live_domains: 5_000 }
    }
}

fn exec(h: &mut Harness, command: Command) {
    if let Err(rejection) = h.exec(command.clone()) {
        panic!("history command {} rejected: {rejection}", command.name());
    }
}

fn run_to(h: &mut Harness, name: &str, phase: ObservedPhase) {
    let d = h.state.domain(name).expect("domain exists");
    let host = d.status.host.clone().expect("domain is placed");
    let generation = d.status.generation;
    exec(h, Command::ReportObservation { domain: name.into(), host, generation, phase, reason: None });
}

/// A harness whose archive holds at least `events` events.
pub fn generate(events: usize, shape: Shape) -> Harness {
    let mut h = Harness::new();
    for i in 0..shape.hosts {
        h.ready_host(&format!("host-{i}"), 256, 1024 * 1024);
    }
    exec(&mut h, nat_network("default", "10.0.0.0/16"));
    exec(&mut h, dir_pool("images", true, 1 << 40));
    let mut born = 0usize;
    let mut retired = 0usize;
    while h.envelopes.len() < events {
        if born - retired >= shape.live_domains {
            let name = format!("vm-{retired}");
            exec(&mut h, Command::ShutdownDomain { name: name.clone() });
            run_to(&mut h, &name, ObservedPhase::Stopped);
            exec(&mut h, Command::UndefineDomain { name: name.clone() });
            h.exec_volume(Command::DeleteVolume { volume: VolumeRef::new("images", name) })
                .expect("history volume deletes");
            retired += 1;
        }
        let name = format!("vm-{born}");
        let volume = VolumeRef::new("images", name.clone());
        h.exec_volume(new_volume("images", &name, VolumeFormat::Qcow2, 1024, None))
            .expect("history volume is made");
        let mut spec = kernel_spec(1, 256);
        spec.disks.push(Disk { volume, read_only: false });
        spec.nics.push(Nic { network: "default".into(), mac: None });
        exec(&mut h, Command::DefineDomain { name: name.clone(), spec });
        exec(&mut h, Command::StartDomain { name: name.clone() });
        run_to(&mut h, &name, ObservedPhase::Starting);
        run_to(&mut h, &name, ObservedPhase::Running);
        born += 1;
    }
    h
}

/// Just the envelopes of [`generate`], cut to exactly `events`.
pub fn envelopes(events: usize, shape: Shape) -> Vec<EventEnvelope> {
    let mut all = generate(events, shape).envelopes;
    all.truncate(events);
    all
}
