//! `drover.api.v1.Domains`.

use controlplane::model::ResourceKind;
use controlplane::Command;
use proto::api as pb;
use proto::api::domains_server::Domains;
use tonic::{Request, Response, Status};

use super::{not_found, Api};
use proto::convert;

#[tonic::async_trait]
impl Domains for Api {
    async fn define(
        &self,
        request: Request<pb::DefineDomainRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        let spec = convert::domain_spec(r.spec)?;
        Ok(Response::new(
            self.write(&meta, r.request_id, Command::DefineDomain { name: r.name, spec }).await?,
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
