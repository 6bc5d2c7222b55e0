//! `drover.api.v1.Migrations`.

use controlplane::model::ResourceKind;
use controlplane::Command;
use proto::api as pb;
use proto::api::migrations_server::Migrations;
use tonic::{Request, Response, Status};

use super::{not_found, Api};
use proto::convert;

#[tonic::async_trait]
impl Migrations for Api {
    async fn start(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let command = Command::StartMigration {
            domain: r.domain,
            target: (!r.target.is_empty()).then_some(r.target),
            max_downtime_ms: r.max_downtime_ms,
        };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn set_downtime(
        &self,
        request: Request<pb::SetMigrationDowntimeRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let command = Command::SetMigrationDowntime { id: r.id, max_downtime_ms: r.max_downtime_ms };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::AbortMigration { id: r.id, reason: r.reason })
                .await?,
        ))
    }

    async fn report(
        &self,
        request: Request<pb::ReportMigrationRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        raft::tls::acts_for_host(ext.get(), &r.host)?;
        let command = convert::migration_report(&r)?;
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn get(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let r = request.into_inner();
        let found = self.read(r.consistency, |s| s.migration(r.id).map(convert::migration_to_pb)).await?;
        found.map(Response::new).ok_or_else(|| not_found(ResourceKind::Migration, &r.id.to_string()))
    }

    async fn list(
        &self,
        request: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsReply>, Status> {
        let r = request.into_inner();
        let after = match r.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("invalid page_token {t:?}: not from this list"))
            })?),
        };
        let (migrations, next_page_token) = self
            .read(r.consistency, |s| {
                let from = s.migrations().range(super::after(after));
                super::page(from, r.page_size, |id| id.to_string(), convert::migration_to_pb)
            })
            .await?;
        Ok(Response::new(pb::ListMigrationsReply { migrations, next_page_token }))
    }
}
