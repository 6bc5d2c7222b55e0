//! `drover.api.v1.Networks`.

use controlplane::model::ResourceKind;
use controlplane::Command;
use proto::api as pb;
use proto::api::networks_server::Networks;
use tonic::{Request, Response, Status};

use super::{not_found, Api};
use proto::convert;

#[tonic::async_trait]
impl Networks for Api {
    async fn create(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let config = convert::network_config(r.config)?;
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::CreateNetwork { name: r.name, config }).await?,
        ))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::DeleteNetwork { name: r.name }).await?,
        ))
    }

    async fn get(&self, request: Request<pb::GetNetworkRequest>) -> Result<Response<pb::Network>, Status> {
        let r = request.into_inner();
        let found = self.read(r.consistency, |s| s.network(&r.name).map(convert::network_to_pb)).await?;
        found.map(Response::new).ok_or_else(|| not_found(ResourceKind::Network, &r.name))
    }

    async fn list(
        &self,
        request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksReply>, Status> {
        let r = request.into_inner();
        let (networks, next_page_token) = self
            .read(r.consistency, |s| {
                super::page_by_name(s.networks(), &r.page_token, r.page_size, convert::network_to_pb)
            })
            .await?;
        Ok(Response::new(pb::ListNetworksReply { networks, next_page_token }))
    }
}
