//! Protects: **a live migration moves the whole guest, once.** For every migration the
//! hosts carried out (its target said where it listens): the stream at that address is
//! of the migration's domain; one that committed had the whole VM at its target (the
//! copy complete) before its target was told to run; one that rolled back never told its
//! target to run, nor did one whose target refused its source at the handshake; one the
//! operator gave a longest pause paused the guest no longer than that. (That a target runs only once its source has stopped — never two runs — is
//! `single_run`, checked at every start; that every migration ends, `liveness`.)

use std::collections::BTreeMap;

use controlplane::model::MigrationPhase;
use controlplane::State;
use hostd::fake::FakeLink;

/// `links`: the fake hypervisors' migration streams, by the incoming VM's address. One
/// line per migration that broke the rule.
pub fn check(state: &State, links: &BTreeMap<String, FakeLink>) -> Vec<String> {
    let mut out = Vec::new();
    for m in state.migrations().values() {
        let Some(address) = &m.target_address else { continue };
        let what = format!("migration {} of {} to {} ({address})", m.id, m.domain, m.target);
        let Some(link) = links.get(address) else {
            out.push(format!("{what}: no incoming VM ever listened there"));
            continue;
        };
        if link.domain != m.domain {
            out.push(format!("{what}: the incoming VM there is {}'s", link.domain));
        }
        if link.go && !link.complete {
            out.push(format!("{what}: its target was told to run before it held the whole VM"));
        }
        match m.phase {
            MigrationPhase::RolledBack if link.go => {
                out.push(format!("{what} rolled back, yet its target was told to run"))
            }
            MigrationPhase::Committed if !link.complete => {
                out.push(format!("{what} committed, yet its target never held the whole VM"))
            }
            MigrationPhase::Committed if link.refused.is_some() => {
                out.push(format!("{what} committed, yet its target refused its source"))
            }
            _ => {}
        }
        if let (Some(most), Some(paused)) = (m.max_downtime_ms, m.progress.downtime_ms) {
            if paused > most {
                out.push(format!("{what} paused the guest {paused} ms; the operator allowed {most}"));
            }
        }
    }
    out
}
