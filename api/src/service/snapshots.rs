//! `drover.api.v1.Snapshots`.

use std::ops::Bound;

use controlplane::Command;
use proto::api as pb;
use proto::api::snapshots_server::Snapshots;
use tonic::{Request, Response, Status};

use super::Api;
use proto::convert;

#[tonic::async_trait]
impl Snapshots for Api {
    async fn create(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let command = Command::CreateSnapshot {
            domain: r.domain,
            name: r.name,
            kind: convert::required::<pb::SnapshotKind>(r.kind, "kind")?,
        };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn delete(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::DeleteSnapshot { domain: r.domain, name: r.name })
                .await?,
        ))
    }

    async fn revert(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::RevertSnapshot { domain: r.domain, name: r.name })
                .await?,
        ))
    }

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsReply>, Status> {
        let r = request.into_inner();
        let after = super::pair_token(&r.page_token)?;
        let (snapshots, next_page_token) = self
            .read(r.consistency, |s| {
                // One domain's snapshots are a run of keys: start at its first.
                let start = match after {
                    Some(key) => Bound::Excluded(key),
                    None if r.domain.is_empty() => Bound::Unbounded,
                    None => Bound::Included((r.domain.clone(), String::new())),
                };
                let from = s
                    .snapshots()
                    .range((start, Bound::Unbounded))
                    .take_while(|((domain, _), _)| r.domain.is_empty() || *domain == r.domain);
                super::page(from, r.page_size, |(d, n)| format!("{d}/{n}"), convert::snapshot_to_pb)
            })
            .await?;
        Ok(Response::new(pb::ListSnapshotsReply { snapshots, next_page_token }))
    }

    async fn clone_domain(
        &self,
        request: Request<pb::CloneRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let command = Command::CloneDomain { clone: r.clone, source: r.domain, snapshot: r.name };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn report(
        &self,
        request: Request<pb::ReportSnapshotRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        raft::tls::acts_for_host(ext.get(), &r.host)?;
        let request_id = r.request_id.clone();
        Ok(Response::new(self.write(&meta, &ext, request_id, convert::snapshot_report(r)).await?))
    }
}
