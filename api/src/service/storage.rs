//! `drover.api.v1.StoragePools` and `drover.api.v1.Volumes`.

use controlplane::model::{ResourceKind, VolumeRef};
use controlplane::Command;
use proto::api as pb;
use proto::api::storage_pools_server::StoragePools;
use proto::api::volumes_server::Volumes;
use tonic::{Request, Response, Status};

use super::{not_found, Api};
use proto::convert;

#[tonic::async_trait]
impl StoragePools for Api {
    async fn create(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let config = convert::pool_config(r.config)?;
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::CreatePool { name: r.name, config }).await?,
        ))
    }

    async fn delete(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, &ext, r.request_id, Command::DeletePool { name: r.name }).await?))
    }

    async fn get(&self, request: Request<pb::GetPoolRequest>) -> Result<Response<pb::Pool>, Status> {
        let r = request.into_inner();
        let found = self.read(r.consistency, |s| s.pool(&r.name).map(convert::pool_to_pb)).await?;
        found.map(Response::new).ok_or_else(|| not_found(ResourceKind::Pool, &r.name))
    }

    async fn list(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsReply>, Status> {
        let r = request.into_inner();
        let (pools, next_page_token) = self
            .read(r.consistency, |s| {
                super::page_by_name(s.pools(), &r.page_token, r.page_size, convert::pool_to_pb)
            })
            .await?;
        Ok(Response::new(pb::ListPoolsReply { pools, next_page_token }))
    }
}

#[tonic::async_trait]
impl Volumes for Api {
    async fn create(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let command = Command::CreateVolume {
            volume: convert::volume_ref(r.volume, "volume")?,
            format: convert::required::<pb::VolumeFormat>(r.format, "format")?,
            capacity_mib: r.capacity_mib,
            backing: (!r.backing.is_empty()).then_some(r.backing),
            preallocate: r.preallocate,
            import: (!r.import.is_empty()).then_some(r.import),
        };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn delete(&self, request: Request<pb::VolumeRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let volume = convert::volume_ref(r.volume, "volume")?;
        Ok(Response::new(self.write(&meta, &ext, r.request_id, Command::DeleteVolume { volume }).await?))
    }

    async fn resize(
        &self,
        request: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let volume = convert::volume_ref(r.volume, "volume")?;
        let command = Command::ResizeVolume { volume, capacity_mib: r.capacity_mib };
        Ok(Response::new(self.write(&meta, &ext, r.request_id, command).await?))
    }

    async fn attach(
        &self,
        request: Request<pb::AttachDiskRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let disk = r.disk.ok_or_else(|| Status::invalid_argument("invalid disk: is required"))?;
        let disk = controlplane::model::Disk {
            volume: convert::volume_ref(disk.volume, "disk.volume")?,
            read_only: disk.read_only,
        };
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::AttachDisk { domain: r.domain, disk }).await?,
        ))
    }

    async fn detach(
        &self,
        request: Request<pb::DetachDiskRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let volume = convert::volume_ref(r.volume, "volume")?;
        Ok(Response::new(
            self.write(&meta, &ext, r.request_id, Command::DetachDisk { domain: r.domain, volume }).await?,
        ))
    }

    async fn get(&self, request: Request<pb::GetVolumeRequest>) -> Result<Response<pb::Volume>, Status> {
        let r = request.into_inner();
        let id = convert::volume_ref(r.volume, "volume")?;
        let found = self.read(r.consistency, |s| s.volume(&id).map(convert::volume_to_pb)).await?;
        found.map(Response::new).ok_or_else(|| not_found(ResourceKind::Volume, &id.to_string()))
    }

    async fn list(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesReply>, Status> {
        let r = request.into_inner();
        let after = super::pair_token(&r.page_token)?.map(|(pool, name)| VolumeRef::new(&pool, &name));
        let (volumes, next_page_token) = self
            .read(r.consistency, |s| {
                let from = s
                    .volumes()
                    .range(super::after(after))
                    .filter(|(id, _): &(&VolumeRef, _)| r.pool.is_empty() || id.pool == r.pool);
                super::page(from, r.page_size, |k| k.to_string(), convert::volume_to_pb)
            })
            .await?;
        Ok(Response::new(pb::ListVolumesReply { volumes, next_page_token }))
    }

    async fn report(
        &self,
        request: Request<pb::ReportVolumeRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        raft::tls::acts_for_host(ext.get(), &r.host)?;
        let request_id = r.request_id.clone();
        Ok(Response::new(self.write(&meta, &ext, request_id, convert::volume_report(r)?).await?))
    }
}
