//! `decide`: validate a command against the latest applied state and turn it into a
//! proposal of events guarded by preconditions on the versions of what it read.
//!
//! `decide` is a pure function of the state, the request and the proposer's `now_ms`. It
//! never panics on any input. A rejection changes nothing. The proposal it returns is
//! applied later with [`crate::apply_proposal`], possibly against a newer state: the
//! preconditions make that safe, and a conflict sends the proposer back here.
//!
//! Known limit: checks that span resources without a shared version (two networks created
//! at once with overlapping CIDRs, two pools on one path) are made against the state the
//! proposer saw; the API serializes decisions on the leader, which closes that gap there.

mod domain;
mod ha;
mod host;
mod migration;
mod network;
mod snapshot;
mod storage;
mod token;

use tracing::{debug, warn};

use crate::command::{Command, Request};
use crate::event::Event;
use crate::limits::{EVENTS_PER_PROPOSAL_MAX, PRINCIPAL_LEN_MAX, REQUEST_ID_LEN_MAX};
use crate::model::{
    Domain, Host, Migration, MigrationId, Network, Pool, ResourceKey, ResourceKind, Volume, VolumeRef,
};
use crate::proposal::{Decision, HostFit, Precondition, Proposal};
use crate::rejection::Rejection;
use crate::state::State;
use crate::validate;

/// Decide one request. See the module documentation.
pub fn decide(state: &State, request: &Request, now_ms: u64) -> Result<Decision, Rejection> {
    validate::token("request_id", &request.request_id, REQUEST_ID_LEN_MAX)?;
    validate::token("principal", &request.principal, PRINCIPAL_LEN_MAX)?;
    if !request.caller.may(request.command.needs()) {
        warn!(principal = %request.principal, caller = ?request.caller, command = request.command.name(), "refused: the caller's rights");
        return Err(Rejection::PermissionDenied {
            caller: request.principal.clone(),
            command: request.command.name().to_owned(),
        });
    }
    if let Some(first) = state.requests().get(&request.principal, &request.request_id) {
        return Ok(Decision::AlreadyCommitted(first));
    }
    let mut draft = Draft { state, now_ms, preconditions: Vec::new(), fits: Vec::new(), events: Vec::new() };
    decide_command(&mut draft, &request.command).inspect_err(|rejection| {
        debug!(command = request.command.name(), request_id = %request.request_id, %rejection, "rejected");
    })?;
    assert!(
        draft.events.len() <= EVENTS_PER_PROPOSAL_MAX,
        "{} emits too many events",
        request.command.name()
    );
    Ok(Decision::Propose(Proposal {
        request_id: request.request_id.clone(),
        principal: request.principal.clone(),
        time_ms: now_ms,
        preconditions: draft.preconditions,
        fits: draft.fits,
        events: draft.events,
        trace: None,
        term: None,
    }))
}

fn decide_command(d: &mut Draft<'_>, command: &Command) -> Result<(), Rejection> {
    match command {
        Command::RegisterHost { name, address, capacity, labels, vm_limits } => {
            host::register(d, name, address, *capacity, labels, *vm_limits)
        }
        Command::SetHostState { name, state } => host::set_state(d, name, *state),
        Command::DefineDomain { name, spec } => domain::define(d, name, spec),
        Command::UndefineDomain { name } => domain::undefine(d, name),
        Command::StartDomain { name } => domain::start(d, name),
        Command::ShutdownDomain { name } => domain::shutdown(d, name),
        Command::DestroyDomain { name } => domain::destroy(d, name),
        Command::RebootDomain { name } => domain::reboot(d, name),
        Command::SuspendDomain { name } => domain::suspend(d, name),
        Command::ResumeDomain { name } => domain::resume(d, name),
        Command::AttachDisk { domain, disk } => domain::attach_disk(d, domain, disk),
        Command::DetachDisk { domain, volume } => domain::detach_disk(d, domain, volume),
        Command::ReportObservation { domain, host, generation, phase, reason } => {
            domain::report_observation(d, domain, host, *generation, *phase, reason.as_deref())
        }
        Command::CreateNetwork { name, config } => network::create(d, name, config),
        Command::DeleteNetwork { name } => network::delete(d, name),
        Command::CreatePool { name, config } => storage::create_pool(d, name, config),
        Command::DeletePool { name } => storage::delete_pool(d, name),
        Command::CreateVolume { volume, format, capacity_mib, backing, preallocate, import } => {
            storage::create_volume(
                d,
                storage::NewVolume {
                    volume,
                    format: *format,
                    capacity_mib: *capacity_mib,
                    backing: backing.as_deref(),
                    preallocate: *preallocate,
                    import: import.as_deref(),
                },
            )
        }
        Command::DeleteVolume { volume } => storage::delete_volume(d, volume),
        Command::ResizeVolume { volume, capacity_mib } => storage::resize_volume(d, volume, *capacity_mib),
        Command::ReportVolumeAllocation { volume, allocation_mib } => {
            storage::report_allocation(d, volume, *allocation_mib)
        }
        Command::ReportVolume { volume, host, id, outcome } => {
            storage::report_volume(d, volume, host, *id, outcome)
        }
        Command::CreateSnapshot { domain, name, kind } => snapshot::create(d, domain, name, *kind),
        Command::DeleteSnapshot { domain, name } => snapshot::delete(d, domain, name),
        Command::RevertSnapshot { domain, name } => snapshot::revert(d, domain, name),
        Command::StartMigration { domain, target, max_downtime_ms } => {
            migration::start(d, domain, target.as_deref(), *max_downtime_ms)
        }
        Command::SetMigrationDowntime { id, max_downtime_ms } => {
            migration::set_downtime(d, *id, *max_downtime_ms)
        }
        Command::ReportMigrationProgress { id, phase } => migration::progress(d, *id, *phase),
        Command::CommitMigration { id } => migration::commit(d, *id),
        Command::AbortMigration { id, reason } => migration::abort(d, *id, reason),
        Command::CloneDomain { clone, source, snapshot } => snapshot::clone(d, clone, source, snapshot),
        Command::ReportSnapshot { domain, name, id, host, generation, outcome } => snapshot::report(
            d,
            snapshot::Reported { domain, name, id: *id, host, generation: *generation },
            outcome,
        ),
        Command::RestartDomain { name } => ha::restart(d, name),
        Command::SetClusterSettings { ha_reserve_hosts } => host::set_settings(d, *ha_reserve_hosts),
        Command::ClearHost { name } => host::clear(d, name),
        Command::CreateToken { name, role, secret_sha256, ttl_ms } => {
            token::create(d, name, *role, secret_sha256, *ttl_ms)
        }
        Command::RevokeToken { name } => token::revoke(d, name),
        Command::ReportMigration { id, host, report } => migration::report(d, *id, host, report),
    }
}

/// A proposal being built: what was read (with its version) and what to emit.
struct Draft<'s> {
    state: &'s State,
    /// The proposer's clock, as `decide` got it.
    now_ms: u64,
    preconditions: Vec<Precondition>,
    fits: Vec<HostFit>,
    events: Vec<Event>,
}

impl<'s> Draft<'s> {
    /// Guard on `key` staying at its current version until the proposal applies.
    fn guard(&mut self, key: ResourceKey) {
        if self.preconditions.iter().any(|p| p.key == key) {
            return;
        }
        let version = self.state.version_of(&key);
        self.preconditions.push(Precondition { key, version });
    }

    /// Guard on `domain` still fitting on `host` when the proposal applies.
    fn fit(&mut self, host: &str, domain: &str) {
        self.fits.push(HostFit { host: host.to_owned(), domain: domain.to_owned() });
    }

    fn emit(&mut self, event: Event) {
        self.events.push(event);
    }

    fn host(&mut self, name: &str) -> Result<&'s Host, Rejection> {
        validate::name("host", name)?;
        let host = self.state.host(name).ok_or_else(|| Rejection::not_found(ResourceKind::Host, name))?;
        self.guard(ResourceKey::Host(name.to_owned()));
        Ok(host)
    }

    fn domain(&mut self, name: &str) -> Result<&'s Domain, Rejection> {
        validate::name("domain", name)?;
        let domain =
            self.state.domain(name).ok_or_else(|| Rejection::not_found(ResourceKind::Domain, name))?;
        self.guard(ResourceKey::Domain(name.to_owned()));
        Ok(domain)
    }

    fn network(&mut self, name: &str) -> Result<&'s Network, Rejection> {
        validate::name("network", name)?;
        let network =
            self.state.network(name).ok_or_else(|| Rejection::not_found(ResourceKind::Network, name))?;
        self.guard(ResourceKey::Network(name.to_owned()));
        Ok(network)
    }

    fn pool(&mut self, name: &str) -> Result<&'s Pool, Rejection> {
        validate::name("pool", name)?;
        let pool = self.state.pool(name).ok_or_else(|| Rejection::not_found(ResourceKind::Pool, name))?;
        self.guard(ResourceKey::Pool(name.to_owned()));
        Ok(pool)
    }

    fn volume(&mut self, id: &VolumeRef) -> Result<&'s Volume, Rejection> {
        validate::name("volume.pool", &id.pool)?;
        validate::name("volume.name", &id.name)?;
        let volume = self.state.volume(id).ok_or_else(|| Rejection::not_found(ResourceKind::Volume, id))?;
        self.guard(ResourceKey::Volume(id.clone()));
        Ok(volume)
    }

    fn migration(&mut self, id: MigrationId) -> Result<&'s Migration, Rejection> {
        let m = self.state.migration(id).ok_or_else(|| Rejection::not_found(ResourceKind::Migration, id))?;
        self.guard(ResourceKey::Migration(id));
        Ok(m)
    }

    /// Guard that a resource does not exist yet; reject with AlreadyExists if it does.
    fn absent(&mut self, key: ResourceKey, name: impl ToString) -> Result<(), Rejection> {
        if self.state.version_of(&key) != 0 {
            return Err(Rejection::exists(key.kind(), name));
        }
        self.guard(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
