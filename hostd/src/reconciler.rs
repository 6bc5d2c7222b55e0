//! The reconciler: a pure function from what this host should run (its share of the
//! replicated state) and what its hypervisor runs, to actions. No I/O, no clock: the
//! agent passes both in, runs the actions, and calls it again.

use std::collections::BTreeMap;

use controlplane::model::{DesiredState, ObservedPhase};

use crate::driver::{VmSpec, VmStatus};

/// What the cluster wants for one domain placed on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub spec: VmSpec,
    pub desired: DesiredState,
    /// Destroy rather than shut down gracefully.
    pub force: bool,
    /// Reboots requested so far.
    pub reboots: u64,
    /// A live migration holds its VM (`crate::migrations`): the source's, paused for
    /// the last copy, or the target's incoming one. Nothing is done to it or reported.
    pub migrating: bool,
}

/// Something for the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(VmSpec),
    Pause(String),
    Resume(String),
    Shutdown(String),
    Destroy(String),
    Reboot(String),
    /// Forget a stopped VM.
    Remove(String),
    Report {
        domain: String,
        generation: u64,
        phase: ObservedPhase,
        reason: Option<String>,
    },
}

/// What the agent remembers between passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The last report acknowledged per domain: (generation, phase).
    pub reported: BTreeMap<String, (u64, ObservedPhase)>,
    /// Reboots carried out per domain and generation.
    pub rebooted: BTreeMap<String, (u64, u64)>,
}

/// Decide the actions that bring the hypervisor towards `assigned`.
pub fn reconcile(
    assigned: &BTreeMap<String, Assigned>,
    observed: &BTreeMap<String, VmStatus>,
    memory: &Memory,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let report = |actions: &mut Vec<Action>,
                  name: &str,
                  generation: u64,
                  phase: ObservedPhase,
                  reason: Option<String>| {
        if memory.reported.get(name) != Some(&(generation, phase)) {
            actions.push(Action::Report { domain: name.to_owned(), generation, phase, reason });
        }
    };
    for (name, want) in assigned {
        if want.migrating {
            continue;
        }
        let generation = want.spec.generation;
        match observed.get(name) {
            Some(vm) if vm.generation < generation => {
                // A VM of an older run: it must not keep running.
                actions.push(Action::Destroy(name.clone()));
                actions.push(Action::Remove(name.clone()));
            }
            Some(vm) if vm.generation > generation => {
                // The cluster moved on to a run this host does not hold; leave it to the
                // next pass, when the state catches up.
            }
            None => match want.desired {
                DesiredState::Running | DesiredState::Paused => {
                    actions.push(Action::Start(want.spec.clone()))
                }
                DesiredState::Stopped => report(&mut actions, name, generation, ObservedPhase::Stopped, None),
            },
            Some(vm) => {
                match (want.desired, vm.phase) {
                    (_, ObservedPhase::Stopped | ObservedPhase::Crashed) => {}
                    (DesiredState::Stopped, ObservedPhase::ShuttingDown) if !want.force => {}
                    (DesiredState::Stopped, _) if want.force => actions.push(Action::Destroy(name.clone())),
                    (DesiredState::Stopped, ObservedPhase::Paused) => {
                        // A paused guest cannot hear a shutdown request: wake it first.
                        actions.push(Action::Resume(name.clone()));
                        actions.push(Action::Shutdown(name.clone()));
                    }
                    (DesiredState::Stopped, _) => actions.push(Action::Shutdown(name.clone())),
                    (DesiredState::Paused, ObservedPhase::Running) => {
                        actions.push(Action::Pause(name.clone()))
                    }
                    (DesiredState::Running, ObservedPhase::Paused) => {
                        actions.push(Action::Resume(name.clone()))
                    }
                    _ => {}
                }
                let done = memory.rebooted.get(name).filter(|(g, _)| *g == generation).map_or(0, |(_, n)| *n);
                if want.desired == DesiredState::Running
                    && want.reboots > done
                    && vm.phase == ObservedPhase::Running
                {
                    actions.push(Action::Reboot(name.clone()));
                }
                report(&mut actions, name, generation, vm.phase, vm.reason.clone());
            }
        }
    }
    for (name, vm) in observed {
        if !assigned.contains_key(name) {
            // Not this host's (any more), or a VM it has no record of: stop and forget it.
            if !matches!(vm.phase, ObservedPhase::Stopped | ObservedPhase::Crashed) {
                actions.push(Action::Destroy(name.clone()));
            }
            actions.push(Action::Remove(name.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, generation: u64) -> VmSpec {
        VmSpec {
            domain: name.into(),
            generation,
            vcpus: 1,
            memory_mib: 64,
            kernel: Some("/k".into()),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            restore_from: None,
            disks_from: None,
        }
    }

    fn assigned(name: &str, generation: u64, desired: DesiredState) -> BTreeMap<String, Assigned> {
        [(
            name.to_owned(),
            Assigned { spec: spec(name, generation), desired, force: false, reboots: 0, migrating: false },
        )]
        .into()
    }

    fn vm(generation: u64, phase: ObservedPhase) -> VmStatus {
        VmStatus { generation, phase, reason: None }
    }

    #[test]
    fn starts_what_should_run_and_reports_phases_once() {
        let want = assigned("web", 1, DesiredState::Running);
        assert_eq!(
            reconcile(&want, &BTreeMap::new(), &Memory::default()),
            vec![Action::Start(spec("web", 1))]
        );
        let running: BTreeMap<_, _> = [("web".to_owned(), vm(1, ObservedPhase::Running))].into();
        let report = Action::Report {
            domain: "web".into(),
            generation: 1,
            phase: ObservedPhase::Running,
            reason: None,
        };
        assert_eq!(reconcile(&want, &running, &Memory::default()), vec![report]);
        let mut memory = Memory::default();
        memory.reported.insert("web".into(), (1, ObservedPhase::Running));
        assert!(reconcile(&want, &running, &memory).is_empty(), "nothing to do once reported");
    }

    #[test]
    fn stops_pauses_resumes_and_cleans_up() {
        let running: BTreeMap<_, _> = [("web".to_owned(), vm(1, ObservedPhase::Running))].into();
        let mut memory = Memory::default();
        memory.reported.insert("web".into(), (1, ObservedPhase::Running));
        assert_eq!(
            reconcile(&assigned("web", 1, DesiredState::Stopped), &running, &memory),
            vec![Action::Shutdown("web".into())]
        );
        let mut forced = assigned("web", 1, DesiredState::Stopped);
        forced.get_mut("web").unwrap().force = true;
        assert_eq!(reconcile(&forced, &running, &memory), vec![Action::Destroy("web".into())]);
        assert_eq!(
            reconcile(&assigned("web", 1, DesiredState::Paused), &running, &memory),
            vec![Action::Pause("web".into())]
        );
        let paused: BTreeMap<_, _> = [("web".to_owned(), vm(1, ObservedPhase::Paused))].into();
        let acts = reconcile(&assigned("web", 1, DesiredState::Running), &paused, &memory);
        assert_eq!(acts[0], Action::Resume("web".into()));
        let acts = reconcile(&assigned("web", 1, DesiredState::Stopped), &paused, &memory);
        assert_eq!(acts[..2], [Action::Resume("web".into()), Action::Shutdown("web".into())]);
        // A VM nobody assigned here is destroyed and forgotten.
        assert_eq!(
            reconcile(&BTreeMap::new(), &running, &memory),
            vec![Action::Destroy("web".into()), Action::Remove("web".into())]
        );
        // A VM of an older run is destroyed before the new run starts.
        let acts = reconcile(&assigned("web", 2, DesiredState::Running), &running, &memory);
        assert_eq!(acts, vec![Action::Destroy("web".into()), Action::Remove("web".into())]);
    }

    #[test]
    fn a_stopped_vm_is_reported_so_its_placement_is_released() {
        let stopped: BTreeMap<_, _> = [("web".to_owned(), vm(1, ObservedPhase::Stopped))].into();
        let acts = reconcile(&assigned("web", 1, DesiredState::Stopped), &stopped, &Memory::default());
        assert_eq!(
            acts,
            vec![Action::Report {
                domain: "web".into(),
                generation: 1,
                phase: ObservedPhase::Stopped,
                reason: None
            }]
        );
    }
}
