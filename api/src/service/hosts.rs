//! `drover.api.v1.Hosts`.

use controlplane::Command;
use proto::api as pb;
use proto::api::hosts_server::Hosts;
use tonic::{Request, Response, Status};

use super::Api;
use proto::convert;

#[tonic::async_trait]
impl Hosts for Api {
    async fn register(
        &self,
        request: Request<pb::RegisterHostRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        raft::tls::acts_for_host(ext.get(), &r.name)?;
        let command = Command::RegisterHost {
            name: r.name,
            address: r.address,
            capacity: convert::resources(r.capacity)?,
            labels: r.labels.into_iter().collect(),
            vm_limits: convert::vm_limits_from_pb(r.vm_limits),
        };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn set_state(
        &self,
        request: Request<pb::SetHostStateRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        raft::tls::acts_for_host(ext.get(), &r.name)?;
        let state = convert::required::<pb::HostState>(r.state, "state")?;
        let command = Command::SetHostState { name: r.name.clone(), state };
        if state == controlplane::model::HostState::Fenced {
            // Fencing releases the host's runs for HA to start elsewhere: refused while
            // the host still renews its lease (its VMs may be running), asked of the
            // leader, which holds the leases.
            let request = self.request(&meta, &ext, r.request_id, command)?;
            let c = self.node.fence_host(&r.name, request).await.map_err(|e| e.to_status())?;
            return Ok(Response::new(pb::WriteReply { first_seq: c.first_seq, last_seq: c.last_seq }));
        }
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        raft::tls::acts_for_host(ext.get(), &r.host)?;
        let command = Command::ReportObservation {
            domain: r.domain,
            host: r.host,
            generation: r.generation,
            phase: convert::required::<pb::ObservedPhase>(r.phase, "phase")?,
            reason: (!r.reason.is_empty()).then_some(r.reason),
        };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let (_, caller, r) = request.into_parts();
        if r.name.is_empty() || r.name.len() > controlplane::limits::NAME_LEN_MAX {
            return Err(Status::invalid_argument("invalid name: must name a registered host"));
        }
        raft::tls::acts_for_host(caller.get(), &r.name)?;
        let ha = self.node.renew_lease(&r.name).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::HeartbeatReply {
            heartbeat_interval_ms: ha.heartbeat_interval_ms,
            lease_ms: ha.lease_ms,
            fence_ms: ha.fence_ms,
        }))
    }

    async fn ha_plan(
        &self,
        request: Request<pb::HaPlanRequest>,
    ) -> Result<Response<pb::HaPlanReply>, Status> {
        let r = request.into_inner();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (fail, fail_any) = (r.fail, r.fail_any as usize);
        if fail.is_empty() == (fail_any == 0) {
            return Err(Status::invalid_argument(
                "invalid plan: name the hosts that fail, or give fail_any, not both",
            ));
        }
        if fail.iter().any(|h| h.is_empty() || h.len() > controlplane::limits::NAME_LEN_MAX) {
            return Err(Status::invalid_argument("invalid fail: host names are 1 to 63 characters"));
        }
        let scenarios = self
            .read(r.consistency, move |s| {
                if let Some(missing) = fail.iter().find(|h| s.host(h).is_none()) {
                    return Err(super::not_found(controlplane::model::ResourceKind::Host, missing));
                }
                if fail.is_empty() {
                    controlplane::ha::what_if_any(s, fail_any, now_ms).map_err(Status::invalid_argument)
                } else {
                    Ok(vec![controlplane::ha::what_if(s, &fail, now_ms)])
                }
            })
            .await??;
        let scenarios = scenarios
            .into_iter()
            .map(|w| pb::HaScenario {
                failed: w.failed,
                placed: w.placed.into_iter().map(|(domain, host)| pb::HaPlacement { domain, host }).collect(),
                unplaced: w
                    .unplaced
                    .into_iter()
                    .map(|(domain, reason)| pb::HaMisfit { domain, reason })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::HaPlanReply { scenarios }))
    }

    async fn leases(&self, _: Request<pb::LeasesRequest>) -> Result<Response<pb::LeasesReply>, Status> {
        let age_ms = self.node.lease_ages().map_err(|e| e.to_status())?.into_iter().collect();
        Ok(Response::new(pb::LeasesReply { age_ms }))
    }

    async fn clear(
        &self,
        request: Request<pb::ClearHostRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, &ext, r.request_id, Command::ClearHost { name: r.name }).await?))
    }

    async fn set_cluster_settings(
        &self,
        request: Request<pb::SetClusterSettingsRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let settings =
            r.settings.ok_or_else(|| Status::invalid_argument("invalid settings: are required"))?;
        let command = Command::SetClusterSettings { ha_reserve_hosts: settings.ha_reserve_hosts };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn get_cluster_settings(
        &self,
        request: Request<pb::GetClusterSettingsRequest>,
    ) -> Result<Response<pb::ClusterSettings>, Status> {
        let r = request.into_inner();
        let ha_reserve_hosts = self.read(r.consistency, |s| s.settings().ha_reserve_hosts).await?;
        Ok(Response::new(pb::ClusterSettings { ha_reserve_hosts }))
    }

    async fn list(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsReply>, Status> {
        let r = request.into_inner();
        let (hosts, next_page_token) = self
            .read(r.consistency, |s| {
                super::page_by_name(s.hosts(), &r.page_token, r.page_size, |h| convert::host_to_pb(s, h))
            })
            .await?;
        Ok(Response::new(pb::ListHostsReply { hosts, next_page_token }))
    }
}
