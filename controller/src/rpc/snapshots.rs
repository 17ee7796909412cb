//! `berth.v1.Snapshots`: taking, listing and removing snapshots.

use std::sync::Arc;

use berth_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::rpc::call::Call;
use crate::rpc::progress::{snapshot_done, snapshot_progress, watched, EventStream};
use crate::rpc::volumes::{detached, Api};
use crate::volumes::store::SnapshotRecord;

/// Converts a snapshot record to its wire form.
pub fn snapshot_to_proto(record: SnapshotRecord) -> pb::Snapshot {
    pb::Snapshot {
        created_at: Some(prost_types::Timestamp::from(record.created_at())),
        id: record.id,
        name: record.name,
        service: record.service,
        volume: record.volume,
        size_bytes: record.size_bytes,
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Api {
    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        let record = detached(async move {
            volumes
                .create_snapshot(&req.service, &req.volume, &req.name)
                .await
        })
        .await?;
        Ok(Response::new(snapshot_to_proto(record)))
    }

    type CreateSnapshotWithProgressStream = EventStream<pb::SnapshotProgress>;

    async fn create_snapshot_with_progress(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<Self::CreateSnapshotWithProgressStream>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        Ok(Response::new(watched(
            move |progress| async move {
                let record = volumes
                    .create_snapshot_with_progress(&req.service, &req.volume, &req.name, progress)
                    .await?;
                Ok(snapshot_to_proto(record))
            },
            snapshot_progress,
            snapshot_done,
        )))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let Call {
            who, message: req, ..
        } = self.gate.listing(request)?;
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let volume = (!req.volume.is_empty()).then_some(req.volume.as_str());
        if volume.is_some() && service.is_none() {
            return Err(Status::invalid_argument(
                "a volume filter needs the service too",
            ));
        }
        let services = self.visible_services(&who, service);
        let snapshots = self
            .volumes
            .list_snapshots(&services, volume)
            .await?
            .into_iter()
            .map(snapshot_to_proto)
            .collect();
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots }))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let req = self.gate.service(request)?.message;
        Ok(Response::new(snapshot_to_proto(
            self.volumes.get_snapshot(&req.service, &req.name).await?,
        )))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        detached(async move { volumes.delete_snapshot(&req.service, &req.name).await }).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }
}
