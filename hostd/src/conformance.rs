//! The shared driver test suite: the behaviour every [`Driver`] must have, run against
//! each driver by `hostd/tests/drivers.rs` (fake, kvm, qemu). A harness supplies the
//! driver, specs that boot on it, and a clock (virtual for the fake, real otherwise).

use std::collections::BTreeMap;
use std::path::PathBuf;

use controlplane::model::ObservedPhase;

use crate::driver::{snapshot_path, Driver, DriverError, VmSpec, VmStatus};

/// What the suite needs from a driver under test.
pub trait Harness {
    fn driver(&mut self) -> &mut dyn Driver;
    /// A spec for a guest that boots and runs until asked to stop.
    fn spec(&self, domain: &str, generation: u64) -> VmSpec;
    /// A spec whose kernel is missing.
    fn missing_kernel(&self, domain: &str) -> VmSpec;
    /// Let time pass (virtual or real) and return the new now.
    fn advance(&mut self) -> u64;
    /// Where snapshot files may be written (empty, or holding only this suite's files).
    fn snapshot_dir(&self) -> PathBuf;
}

/// How many `advance` steps a transition may take before the suite fails.
pub const STEPS_MAX: usize = 2_000;

fn wait_for(
    h: &mut dyn Harness,
    domain: &str,
    what: &str,
    ok: impl Fn(Option<&VmStatus>) -> bool,
) -> VmStatus {
    for _ in 0..STEPS_MAX {
        let now = h.advance();
        let all: BTreeMap<String, VmStatus> = h.driver().list(now);
        if ok(all.get(domain)) {
            return all.get(domain).cloned().unwrap_or(VmStatus {
                generation: 0,
                phase: ObservedPhase::Stopped,
                reason: None,
            });
        }
    }
    let now = h.advance();
    panic!("{domain}: never {what}; last seen {:?}", h.driver().list(now).get(domain));
}

fn start(h: &mut dyn Harness, spec: VmSpec, now: u64) -> Result<(), DriverError> {
    h.driver().start(&spec, now)
}

fn phase_is(p: ObservedPhase) -> impl Fn(Option<&VmStatus>) -> bool {
    move |s| s.is_some_and(|s| s.phase == p)
}

/// Run every case; each uses its own domain names.
pub fn run_all(h: &mut dyn Harness) {
    lifecycle(h);
    graceful_shutdown(h);
    destroy_and_start_again(h);
    reboot_keeps_running(h);
    bad_input_is_an_error_not_a_crash(h);
    unknown_domains(h);
    snapshot_and_restore(h);
}

/// start → running → pause → paused → resume → running, reported with its generation.
pub fn lifecycle(h: &mut dyn Harness) {
    let spec = h.spec("conf-life", 3);
    let now = h.advance();
    h.driver().start(&spec, now).expect("start");
    let s = wait_for(h, "conf-life", "ran", phase_is(ObservedPhase::Running));
    assert_eq!(s.generation, 3);
    let now = h.advance();
    let again = h.driver().start(&spec, now);
    assert!(
        matches!(again, Err(DriverError::WrongPhase { .. })),
        "a second start of a running VM: {again:?}"
    );
    let now = h.advance();
    h.driver().pause("conf-life", now).expect("pause");
    wait_for(h, "conf-life", "paused", phase_is(ObservedPhase::Paused));
    let now = h.advance();
    h.driver().resume("conf-life", now).expect("resume");
    wait_for(h, "conf-life", "resumed", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().destroy("conf-life", now).expect("destroy");
    wait_for(h, "conf-life", "stopped", phase_is(ObservedPhase::Stopped));
    h.driver().remove("conf-life");
    let now = h.advance();
    assert!(!h.driver().list(now).contains_key("conf-life"));
}

/// A graceful shutdown reaches the guest, which stops on its own.
pub fn graceful_shutdown(h: &mut dyn Harness) {
    let spec = h.spec("conf-shut", 1);
    let now = h.advance();
    h.driver().start(&spec, now).expect("start");
    wait_for(h, "conf-shut", "ran", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().shutdown("conf-shut", now).expect("shutdown");
    let s = wait_for(h, "conf-shut", "stopped", phase_is(ObservedPhase::Stopped));
    assert_eq!(s.generation, 1);
    h.driver().remove("conf-shut");
}

/// After destroy and remove, the same domain starts again under a new generation.
pub fn destroy_and_start_again(h: &mut dyn Harness) {
    let now = h.advance();
    {
        let spec = h.spec("conf-again", 1);
        start(h, spec, now)
    }
    .expect("start");
    wait_for(h, "conf-again", "ran", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().destroy("conf-again", now).expect("destroy");
    wait_for(h, "conf-again", "stopped", phase_is(ObservedPhase::Stopped));
    h.driver().remove("conf-again");
    let now = h.advance();
    {
        let spec = h.spec("conf-again", 2);
        start(h, spec, now)
    }
    .expect("second start");
    let s = wait_for(h, "conf-again", "ran again", phase_is(ObservedPhase::Running));
    assert_eq!(s.generation, 2);
    let now = h.advance();
    h.driver().destroy("conf-again", now).expect("destroy");
    wait_for(h, "conf-again", "stopped", phase_is(ObservedPhase::Stopped));
    h.driver().remove("conf-again");
}

/// A reboot leaves the VM running.
pub fn reboot_keeps_running(h: &mut dyn Harness) {
    let now = h.advance();
    {
        let spec = h.spec("conf-reboot", 1);
        start(h, spec, now)
    }
    .expect("start");
    wait_for(h, "conf-reboot", "ran", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().reboot("conf-reboot", now).expect("reboot");
    wait_for(h, "conf-reboot", "ran after the reboot", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().destroy("conf-reboot", now).expect("destroy");
    wait_for(h, "conf-reboot", "stopped", phase_is(ObservedPhase::Stopped));
    h.driver().remove("conf-reboot");
}

/// A missing kernel is refused at start or reported as a crash with a reason; the
/// driver keeps working afterwards.
pub fn bad_input_is_an_error_not_a_crash(h: &mut dyn Harness) {
    let now = h.advance();
    let spec = h.missing_kernel("conf-bad");
    match start(h, spec, now) {
        Err(DriverError::StartFailed { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("a missing kernel gave {other:?}"),
        Ok(()) => {
            let s = wait_for(h, "conf-bad", "failed", |s| {
                s.is_some_and(|s| matches!(s.phase, ObservedPhase::Crashed | ObservedPhase::Stopped))
            });
            assert_eq!(s.phase, ObservedPhase::Crashed);
            assert!(s.reason.is_some_and(|r| !r.is_empty()), "a crash without a reason");
            h.driver().remove("conf-bad");
        }
    }
    let now = h.advance();
    {
        let spec = h.spec("conf-after-bad", 1);
        start(h, spec, now)
    }
    .expect("start after a bad one");
    wait_for(h, "conf-after-bad", "ran", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().destroy("conf-after-bad", now).expect("destroy");
    wait_for(h, "conf-after-bad", "stopped", phase_is(ObservedPhase::Stopped));
    h.driver().remove("conf-after-bad");
}

/// Operations on a domain the driver does not know are NoSuchVm.
pub fn unknown_domains(h: &mut dyn Harness) {
    let now = h.advance();
    let d = h.driver();
    for r in [
        d.pause("conf-ghost", now),
        d.resume("conf-ghost", now),
        d.shutdown("conf-ghost", now),
        d.reboot("conf-ghost", now),
    ] {
        assert_eq!(r, Err(DriverError::NoSuchVm("conf-ghost".into())));
    }
}

/// A snapshot leaves a running VM running and a paused one paused; a new run restored
/// from it comes up in the phase it was taken in; a missing file is a start failure;
/// the files are listed and removed; a stopped or unknown VM cannot be snapshotted.
pub fn snapshot_and_restore(h: &mut dyn Harness) {
    let dir = h.snapshot_dir();
    let (running, paused) =
        (snapshot_path(&dir, "conf-snap", "s1", 1), snapshot_path(&dir, "conf-snap", "s2", 2));
    let now = h.advance();
    let spec = h.spec("conf-snap", 1);
    start(h, spec, now).expect("start");
    wait_for(h, "conf-snap", "ran", phase_is(ObservedPhase::Running));
    let now = h.advance();
    let taken = h.driver().snapshot("conf-snap", &running, now).expect("snapshot of a running VM");
    assert!(taken.bytes > 0, "{taken:?}");
    wait_for(h, "conf-snap", "ran on after the snapshot", phase_is(ObservedPhase::Running));
    let now = h.advance();
    h.driver().pause("conf-snap", now).expect("pause");
    wait_for(h, "conf-snap", "paused", phase_is(ObservedPhase::Paused));
    let now = h.advance();
    h.driver().snapshot("conf-snap", &paused, now).expect("snapshot of a paused VM");
    wait_for(h, "conf-snap", "stayed paused", phase_is(ObservedPhase::Paused));
    let files: Vec<(String, String)> =
        h.driver().snapshot_files(&dir).into_iter().map(|f| (f.domain, f.name)).collect();
    assert_eq!(files, [("conf-snap".to_owned(), "s1".to_owned()), ("conf-snap".to_owned(), "s2".to_owned())]);

    for (generation, file, phase) in
        [(2, &running, ObservedPhase::Running), (3, &paused, ObservedPhase::Paused)]
    {
        let now = h.advance();
        h.driver().destroy("conf-snap", now).expect("destroy");
        wait_for(h, "conf-snap", "stopped", phase_is(ObservedPhase::Stopped));
        let now = h.advance();
        let err = h.driver().snapshot("conf-snap", &dir.join("stopped.snap"), now);
        assert!(matches!(err, Err(DriverError::WrongPhase { .. })), "snapshot of a stopped VM: {err:?}");
        h.driver().remove("conf-snap");
        let mut spec = h.spec("conf-snap", generation);
        spec.restore_from = Some(file.display().to_string());
        let now = h.advance();
        start(h, spec, now).expect("restore");
        let s = wait_for(h, "conf-snap", "came back from its snapshot", phase_is(phase));
        assert_eq!(s.generation, generation);
    }
    let now = h.advance();
    h.driver().destroy("conf-snap", now).expect("destroy");
    wait_for(h, "conf-snap", "stopped", phase_is(ObservedPhase::Stopped));
    h.driver().remove("conf-snap");

    let mut spec = h.spec("conf-snap", 4);
    spec.restore_from = Some(dir.join("missing.snap").display().to_string());
    let now = h.advance();
    match start(h, spec, now) {
        Err(DriverError::StartFailed { reason, .. }) => assert!(!reason.is_empty()),
        other => panic!("a restore from a missing file gave {other:?}"),
    }
    h.driver().remove("conf-snap");
    for file in [&running, &paused] {
        h.driver().remove_snapshot_file(file).expect("remove a snapshot file");
        h.driver().remove_snapshot_file(file).expect("removing it again is no error");
    }
    assert!(h.driver().snapshot_files(&dir).is_empty());
    let now = h.advance();
    let ghost = h.driver().snapshot("conf-ghost", &dir.join("ghost.snap"), now);
    assert_eq!(ghost, Err(DriverError::NoSuchVm("conf-ghost".into())));
}
