//! One reconcile pass, without I/O to the cluster: ask the driver what runs, let the
//! reconciler decide, carry out its hypervisor actions, and hand back the observations to
//! report. The agent (over gRPC) and the simulator (in process) both run this, so the
//! simulator exercises the same host logic production does.

use std::collections::BTreeMap;
use std::path::Path;

use controlplane::model::ObservedPhase;
use tracing::{info, warn};

use crate::driver::{Driver, DriverError};
use crate::metrics::timed;
use crate::reconciler::{reconcile, Action, Assigned, Memory};

/// An observation to send to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub domain: String,
    pub generation: u64,
    pub phase: ObservedPhase,
    pub reason: Option<String>,
}

/// What a host remembers between passes.
#[derive(Debug, Clone, Default)]
pub struct HostPass {
    memory: Memory,
    /// When a graceful shutdown of each domain was first asked for.
    shutdown_since: BTreeMap<String, u64>,
    /// After a graceful shutdown request, destroy the VM if it has not stopped by then.
    shutdown_timeout_ms: u64,
    /// Guests started under a traced pass, with their `guest.boot` span (the agent ends it
    /// at the guest's first console output).
    boots: Vec<(String, tracing::Span)>,
}

impl HostPass {
    pub fn new(shutdown_timeout_ms: u64) -> HostPass {
        HostPass { shutdown_timeout_ms, ..HostPass::default() }
    }

    /// Run one pass at `now_ms`; returns the observations to report, in order.
    pub fn run<D: Driver + ?Sized>(
        &mut self,
        driver: &mut D,
        assigned: &BTreeMap<String, Assigned>,
        now_ms: u64,
    ) -> Vec<Observation> {
        let observed = timed("list", || driver.list(now_ms));
        crate::metrics::vms(&observed);
        let mut out = Vec::new();
        for action in reconcile(assigned, &observed, &self.memory) {
            match action {
                Action::Start(spec) => {
                    // A revert to a disk snapshot: the disks go back first, the VM boots
                    // afresh on them (again at each try: the images are the same).
                    let disks_back = match &spec.disks_from {
                        Some(file) => timed("restore_disks", || {
                            driver.restore_disks(&spec.domain, &spec.disks, Path::new(file))
                        }),
                        None => Ok(()),
                    };
                    let started = disks_back.and_then(|()| timed("start", || driver.start(&spec, now_ms)));
                    if started.is_ok() {
                        info!(domain = %spec.domain, generation = spec.generation, "started");
                        if raft::telemetry::recording() {
                            let boot = tracing::info_span!(
                                "guest.boot",
                                domain = %spec.domain,
                                console = tracing::field::Empty
                            );
                            self.boots.push((spec.domain.clone(), boot));
                        }
                    }
                    if let Err(e) = started {
                        warn!(domain = %spec.domain, error = %e, "start failed");
                        out.push(Observation {
                            domain: spec.domain.clone(),
                            generation: spec.generation,
                            phase: ObservedPhase::Failed,
                            reason: Some(e.to_string()),
                        });
                    }
                }
                Action::Pause(d) => log_err(&d, "pause", timed("pause", || driver.pause(&d, now_ms))),
                Action::Resume(d) => log_err(&d, "resume", timed("resume", || driver.resume(&d, now_ms))),
                Action::Shutdown(d) => {
                    let since = *self.shutdown_since.entry(d.clone()).or_insert(now_ms);
                    if now_ms.saturating_sub(since) > self.shutdown_timeout_ms {
                        warn!(domain = %d, "graceful shutdown timed out; destroying");
                        log_err(&d, "destroy", timed("destroy", || driver.destroy(&d, now_ms)));
                    } else {
                        log_err(&d, "shutdown", timed("shutdown", || driver.shutdown(&d, now_ms)));
                    }
                }
                Action::Destroy(d) => log_err(&d, "destroy", timed("destroy", || driver.destroy(&d, now_ms))),
                Action::Reboot(d) => {
                    info!(domain = %d, "rebooting on request");
                    log_err(&d, "reboot", timed("reboot", || driver.reboot(&d, now_ms)));
                    if let Some(a) = assigned.get(&d) {
                        self.memory.rebooted.insert(d.clone(), (a.spec.generation, a.reboots));
                    }
                }
                Action::Remove(d) => {
                    timed("remove", || driver.remove(&d));
                    self.shutdown_since.remove(&d);
                }
                Action::Report { domain, generation, phase, reason } => {
                    out.push(Observation { domain, generation, phase, reason })
                }
            }
        }
        out
    }

    /// The guests started under traced passes since the last take.
    pub fn take_boots(&mut self) -> Vec<(String, tracing::Span)> {
        std::mem::take(&mut self.boots)
    }

    /// The cluster has taken `observation` (or refused it as being about an old run): do
    /// not send it again.
    pub fn reported(&mut self, observation: &Observation) {
        self.memory.reported.insert(observation.domain.clone(), (observation.generation, observation.phase));
    }
}

impl HostPass {
    /// `observation` got no definite answer: it may or may not have been recorded.
    /// Forget what was last recorded for its domain, so the next pass reports the VM's
    /// phase again, whatever it is by then. (Remembering the earlier acknowledged phase
    /// would be wrong: after a reboot, an in-doubt `starting` that did commit, followed by
    /// `running` again, would leave the cluster at `starting` for good. The simulator
    /// found this.)
    pub fn unsure(&mut self, observation: &Observation) {
        self.memory.reported.remove(&observation.domain);
    }
}

fn log_err(domain: &str, what: &str, r: Result<(), DriverError>) {
    if let Err(e) = r {
        warn!(domain, error = %e, "{what} failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::VmSpec;
    use crate::fake::FakeDriver;
    use controlplane::model::DesiredState;

    #[test]
    fn a_report_without_an_answer_is_sent_again_even_if_the_phase_returns() {
        let spec = VmSpec {
            domain: "web".into(),
            generation: 1,
            vcpus: 1,
            memory_mib: 64,
            kernel: Some("/k".into()),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            restore_from: None,
            disks_from: None,
        };
        let assigned: BTreeMap<String, Assigned> = [(
            "web".into(),
            Assigned { spec, desired: DesiredState::Running, force: false, reboots: 0, migrating: false },
        )]
        .into();
        let mut driver = FakeDriver::new(10, 10);
        let mut pass = HostPass::new(1_000);
        assert!(pass.run(&mut driver, &assigned, 0).is_empty(), "the start is not a report");
        let running = pass.run(&mut driver, &assigned, 20);
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].phase, ObservedPhase::Running);
        pass.reported(&running[0]);
        assert!(pass.run(&mut driver, &assigned, 30).is_empty(), "an acknowledged phase is not sent twice");
        // A reboot: `starting` is sent but its answer is lost.
        driver.reboot("web", 40).unwrap();
        let starting = pass.run(&mut driver, &assigned, 41);
        assert_eq!(starting[0].phase, ObservedPhase::Starting);
        pass.unsure(&starting[0]);
        // Back to running: the cluster may hold `starting`, so `running` goes again.
        let again = pass.run(&mut driver, &assigned, 60);
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].phase, ObservedPhase::Running);
    }
}
