//! `drover.api.v1.Snapshots` and `drover.api.v1.Migrations`.

use controlplane::model::ResourceKind;
use controlplane::Command;
use proto::api as pb;
use proto::api::migrations_server::Migrations;
use proto::api::snapshots_server::Snapshots;
use tonic::{Request, Response, Status};

use super::{not_found, Api};
use crate::convert;

#[tonic::async_trait]
impl Snapshots for Api {
    async fn create(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        let command = Command::CreateSnapshot {
            domain: r.domain,
            name: r.name,
            kind: convert::snapshot_kind(&r.kind)?,
        };
        Ok(Response::new(self.write(&meta, r.request_id, command).await?))
    }

    async fn delete(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, r.request_id, Command::DeleteSnapshot { domain: r.domain, name: r.name })
                .await?,
        ))
    }

    async fn revert(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, r.request_id, Command::RevertSnapshot { domain: r.domain, name: r.name })
                .await?,
        ))
    }

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsReply>, Status> {
        let r = request.into_inner();
        let snapshots = self
            .read(r.consistency, |s| {
                if r.domain.is_empty() {
                    s.snapshots().values().map(convert::snapshot_to_pb).collect()
                } else {
                    s.snapshots_of(&r.domain).map(convert::snapshot_to_pb).collect()
                }
            })
            .await?;
        Ok(Response::new(pb::ListSnapshotsReply { snapshots }))
    }

    async fn clone_domain(
        &self,
        request: Request<pb::CloneRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        let command = Command::CloneDomain { clone: r.clone, source: r.domain, snapshot: r.name };
        Ok(Response::new(self.write(&meta, r.request_id, command).await?))
    }

    async fn report(
        &self,
        request: Request<pb::ReportSnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        let request_id = r.request_id.clone();
        Ok(Response::new(self.write(&meta, request_id, convert::snapshot_report(r)).await?))
    }
}

#[tonic::async_trait]
impl Migrations for Api {
    async fn start(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        let command =
            Command::StartMigration { domain: r.domain, target: (!r.target.is_empty()).then_some(r.target) };
        Ok(Response::new(self.write(&meta, r.request_id, command).await?))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, _, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, r.request_id, Command::AbortMigration { id: r.id, reason: r.reason }).await?,
        ))
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
        let migrations = self
            .read(r.consistency, |s| s.migrations().values().map(convert::migration_to_pb).collect())
            .await?;
        Ok(Response::new(pb::ListMigrationsReply { migrations }))
    }
}
