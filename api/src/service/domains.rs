//! `drover.api.v1.Domains`.

use controlplane::model::ResourceKind;
use controlplane::Command;
use proto::api as pb;
use proto::api::domains_server::Domains;
use tonic::{Request, Response, Status};

use super::Api;
use crate::convert;

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
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::UndefineDomain { name: r.name }).await?))
    }

    async fn start(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::StartDomain { name: r.name }).await?))
    }

    async fn shutdown(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::ShutdownDomain { name: r.name }).await?))
    }

    async fn destroy(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::DestroyDomain { name: r.name }).await?))
    }

    async fn reboot(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::RebootDomain { name: r.name }).await?))
    }

    async fn suspend(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::SuspendDomain { name: r.name }).await?))
    }

    async fn resume(
        &self,
        request: Request<pb::DomainActionRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, r.request_id, Command::ResumeDomain { name: r.name }).await?))
    }

    async fn get(&self, request: Request<pb::GetDomainRequest>) -> Result<Response<pb::Domain>, Status> {
        let r = request.into_inner();
        let found = self.read(r.consistency, |s| s.domain(&r.name).map(convert::domain_to_pb)).await?;
        let domain = found.ok_or_else(|| {
            Status::not_found(
                controlplane::Rejection::NotFound { kind: ResourceKind::Domain, name: r.name.clone() }
                    .to_string(),
            )
        })?;
        Ok(Response::new(domain))
    }

    async fn list(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsReply>, Status> {
        let r = request.into_inner();
        let domains =
            self.read(r.consistency, |s| s.domains().values().map(convert::domain_to_pb).collect()).await?;
        Ok(Response::new(pb::ListDomainsReply { domains }))
    }
}
