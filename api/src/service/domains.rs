//! `drover.api.v1.Domains`.

use std::time::Duration;

use controlplane::model::ResourceKind;
use controlplane::Command;
use proto::api as pb;
use proto::api::domains_server::Domains;
use proto::host::host_agent_client::HostAgentClient;
use tonic::{Request, Response, Status};

use super::{not_found, Api};
use proto::convert;

/// How long a replica waits to reach the host whose console it forwards.
const HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[tonic::async_trait]
impl Domains for Api {
    type ConsoleStream = hostd::console::ConsoleStream;

    /// Forwarded to the host that runs the domain's current run (from this replica's own
    /// state: a console needs no linearizable read), which streams its VM's console log.
    async fn console(
        &self,
        request: Request<pb::ConsoleRequest>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let r = request.into_inner();
        let placed = self.node.read_local(|s| {
            let d = s.domain(&r.name)?;
            Some(d.status.host.as_ref().map(|h| (h.clone(), s.host(h).map(|h| h.address.clone()))))
        });
        let (host, address) = match placed {
            None => return Err(not_found(ResourceKind::Domain, &r.name)),
            Some(None) => {
                return Err(Status::failed_precondition(format!(
                    "domain {} is not placed on a host: it has no console now",
                    r.name
                )))
            }
            Some(Some((host, address))) => (host, address.unwrap_or_default()),
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!(
                "cannot reach host {host} at {address:?} for the console of {}: {e} (a host serves consoles on its --replica-listen)",
                r.name
            ))
        };
        let endpoint = self
            .node
            .transport()
            .endpoint(&address)
            .map_err(|e| unreachable(&e))?
            .connect_timeout(HOST_CONNECT_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
        let stream = HostAgentClient::new(channel).console(r.clone()).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn define(
        &self,
        request: Request<pb::DefineDomainRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let spec = convert::domain_spec(r.spec)?;
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::DefineDomain { name: r.name, spec }).await?,
        ))
    }

    async fn undefine(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::UndefineDomain { name }).await
    }

    async fn start(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::StartDomain { name }).await
    }

    async fn shutdown(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::ShutdownDomain { name }).await
    }

    async fn destroy(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::DestroyDomain { name }).await
    }

    async fn reboot(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::RebootDomain { name }).await
    }

    async fn suspend(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::SuspendDomain { name }).await
    }

    async fn resume(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.act(request, |name| Command::ResumeDomain { name }).await
    }

    async fn get(&self, request: Request<pb::GetDomainRequest>) -> Result<Response<pb::Domain>, Status> {
        let r = request.into_inner();
        let found = self.read(r.consistency, |s| s.domain(&r.name).map(convert::domain_to_pb)).await?;
        found.map(Response::new).ok_or_else(|| not_found(ResourceKind::Domain, &r.name))
    }

    async fn list(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsReply>, Status> {
        let r = request.into_inner();
        let (domains, next_page_token) = self
            .read(r.consistency, |s| {
                super::page_by_name(s.domains(), &r.page_token, r.page_size, convert::domain_to_pb)
            })
            .await?;
        Ok(Response::new(pb::ListDomainsReply { domains, next_page_token }))
    }
}
