//! `berth.v1.ServiceCatalog` and `berth.v1.Volumes`: request validation,
//! mapping to [`Volumes`] and back.

use std::sync::Arc;

use base64::Engine as _;
use berth_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{Authorizer, Identity};
use crate::rpc::call::{Call, Gate};
use crate::rpc::progress::{volume_done, volume_progress, watched, EventStream};
use crate::volumes::store::{AttachmentRecord, VolumeKey, VolumeRecord};
use crate::volumes::{self, AttachmentFilter, NewVolume, VolumeError, VolumeSpec, Volumes};

/// Page size when the request gives none, and the most one page may hold.
pub const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;
const TOKEN_PREFIX: &str = "v1.";

/// Implements `berth.v1.ServiceCatalog` and `berth.v1.Volumes`.
#[derive(Clone)]
pub struct Api {
    pub(crate) volumes: Arc<Volumes>,
    pub(crate) gate: Gate,
}

impl Api {
    /// The services over `volumes`, authorising with `authz`.
    pub fn new(volumes: Arc<Volumes>, authz: Authorizer) -> Self {
        Self {
            volumes,
            gate: Gate::new(authz),
        }
    }

    /// One volume's wire form with the space it uses, as its driver
    /// measures it now (every answer about one volume carries it).
    pub(crate) async fn measured(&self, record: VolumeRecord) -> pb::Volume {
        let used = self.volumes.used_bytes(&record).await;
        pb::Volume {
            used_bytes: used,
            ..to_proto(record)
        }
    }

    /// The services a listing reads: the one asked for (already checked),
    /// else every configured service `who` may see.
    pub(crate) fn visible_services<'a>(
        &'a self,
        who: &Identity,
        asked: Option<&'a str>,
    ) -> Vec<&'a str> {
        match asked {
            Some(service) => vec![service],
            None => self
                .volumes
                .catalog()
                .names()
                .filter(|s| self.gate.authz().visible(who, s))
                .collect(),
        }
    }
}

/// Runs a mutating operation in its own task, so that a client that
/// cancels or disconnects cannot drop it halfway: the operation keeps its
/// volume lock until the driver is done and the record is committed.
pub(crate) async fn detached<T: Send + 'static>(
    operation: impl std::future::Future<Output = Result<T, VolumeError>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(operation)
        .await
        .map_err(|e| Status::internal(format!("the operation's task failed: {e}")))?
        .map_err(Status::from)
}

/// Converts a record to its wire form.
pub fn to_proto(record: VolumeRecord) -> pb::Volume {
    let created = record.created_at();
    let status = if record.attachments.is_empty() {
        pb::VolumeStatus::Available
    } else {
        pb::VolumeStatus::Attached
    };
    pb::Volume {
        id: record.id,
        name: record.name,
        service: record.service,
        driver: record.driver,
        size_bytes: record.size_bytes,
        created_at: Some(prost_types::Timestamp::from(created)),
        options: record.options,
        status: status as i32,
        fields: record.fields,
        attachments: record
            .attachments
            .into_iter()
            .map(attachment_to_proto)
            .collect(),
        source: record.source.unwrap_or_default(),
        used_bytes: None,
    }
}

fn attachment_to_proto(a: AttachmentRecord) -> pb::Attachment {
    pb::Attachment {
        instance: a.instance,
        device: a.device,
        fields: a.fields,
    }
}

fn encode_token(key: &VolumeKey) -> String {
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_cursor())
    )
}

fn decode_token(token: &str) -> Result<VolumeKey, Status> {
    let bad = || {
        Status::invalid_argument(format!(
            "page_token {:?} is not a token this controller issued; start again with an empty page_token",
            token.chars().take(64).collect::<String>()
        ))
    };
    let raw = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| bad())?;
    VolumeKey::from_cursor(&bytes).ok_or_else(bad)
}

#[tonic::async_trait]
impl pb::service_catalog_server::ServiceCatalog for Api {
    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let who = self.gate.listing(request)?.who;
        let services = self
            .volumes
            .catalog()
            .iter()
            .filter(|s| self.gate.authz().visible(&who, &s.name))
            .map(|s| {
                let caps = s.capabilities();
                pb::Service {
                    name: s.name.clone(),
                    driver: s.driver_name.clone(),
                    unavailable: s.unavailable().unwrap_or_default(),
                    capabilities: Some(pb::Capabilities {
                        attach: caps.attach,
                        multi_attach: caps.multi_attach,
                        snapshot: caps.snapshot,
                        copy: caps.copy,
                        create_from_snapshot: caps.create_from_snapshot,
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for Api {
    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let Call {
            who, message: req, ..
        } = self.gate.listing(request)?;
        let service = (!req.service.is_empty()).then_some(req.service);
        let after = match req.page_token.as_str() {
            "" => None,
            token => {
                let key = decode_token(token)?;
                if service.as_ref().is_some_and(|s| *s != key.service) {
                    return Err(Status::invalid_argument(
                        "page_token belongs to a listing of another service; start again with an empty page_token",
                    ));
                }
                Some(key)
            }
        };
        let filter = match pb::AttachmentFilter::try_from(req.attachment) {
            Ok(pb::AttachmentFilter::Any) => AttachmentFilter::Any,
            Ok(pb::AttachmentFilter::Attached) => AttachmentFilter::Attached,
            Ok(pb::AttachmentFilter::Available) => AttachmentFilter::Available,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown attachment filter {}",
                    req.attachment
                )))
            }
        };
        let limit = match req.max_entries as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        // Only the services the caller may see are read, and each call
        // examines a bounded number of records (volumes::SCAN_BUDGET), so
        // the page is read inline: records come from sled's cache, and
        // handing each listing to the blocking pool cost more in thread
        // wake-ups than the read itself (measured with perf under the e2e
        // benchmark).
        let services = self.visible_services(&who, service.as_deref());
        let page = self
            .volumes
            .page(&services, after.as_ref(), limit, |r| {
                volumes::passes(filter, r)
            })
            .await?;
        let mut volumes = Vec::with_capacity(page.records.len());
        for record in page.records {
            let used = match req.with_usage {
                true => self.volumes.used_bytes(&record).await,
                false => None,
            };
            volumes.push(pb::Volume {
                used_bytes: used,
                ..to_proto(record)
            });
        }
        Ok(Response::new(pb::ListVolumesResponse {
            volumes,
            next_page_token: page.next.as_ref().map(encode_token).unwrap_or_default(),
        }))
    }

    async fn get_volume(
        &self,
        request: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let req = self.gate.service(request)?.message;
        let record = self.volumes.get(&req.service, &req.name).await?;
        Ok(Response::new(self.measured(record).await))
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        let record = detached(async move {
            volumes
                .create(NewVolume {
                    service: req.service,
                    name: req.name,
                    size_bytes: req.size_bytes,
                    options: req.options,
                    from_snapshot: (!req.from_snapshot.is_empty()).then_some(req.from_snapshot),
                })
                .await
        })
        .await?;
        Ok(Response::new(self.measured(record).await))
    }

    async fn create_volumes(
        &self,
        request: Request<pb::CreateVolumesRequest>,
    ) -> Result<Response<pb::CreateVolumesResponse>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        let specs = req
            .volumes
            .into_iter()
            .map(|v| VolumeSpec {
                name: v.name,
                size_bytes: v.size_bytes,
                options: v.options,
            })
            .collect();
        let outcomes =
            detached(async move { volumes.create_many(&req.service, specs).await }).await?;
        let results = outcomes
            .into_iter()
            .map(|outcome| {
                use pb::create_volumes_result::Outcome;
                let outcome = match outcome {
                    Ok(record) => Outcome::Volume(to_proto(record)),
                    Err(e) => {
                        let status = Status::from(e);
                        Outcome::Error(pb::ItemError {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        })
                    }
                };
                pb::CreateVolumesResult {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(pb::CreateVolumesResponse { results }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        detached(async move { volumes.delete(&req.service, &req.name, req.force).await }).await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn attach_volume(
        &self,
        request: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::AttachVolumeResponse>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        let (record, attachment) =
            detached(async move { volumes.attach(&req.service, &req.name, &req.instance).await })
                .await?;
        Ok(Response::new(pb::AttachVolumeResponse {
            volume: Some(self.measured(record).await),
            attachment: Some(attachment_to_proto(attachment)),
        }))
    }

    async fn detach_volume(
        &self,
        request: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        let record = detached(async move {
            volumes
                .detach(&req.service, &req.name, &req.instance, req.force)
                .await
        })
        .await?;
        Ok(Response::new(self.measured(record).await))
    }

    type CreateVolumeWithProgressStream = EventStream<pb::VolumeProgress>;
    type CopyVolumeWithProgressStream = EventStream<pb::VolumeProgress>;

    async fn create_volume_with_progress(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<Self::CreateVolumeWithProgressStream>, Status> {
        let req = self.gate.service(request)?.message;
        let api = self.clone();
        Ok(Response::new(watched(
            move |progress| async move {
                let new = NewVolume {
                    service: req.service,
                    name: req.name,
                    size_bytes: req.size_bytes,
                    options: req.options,
                    from_snapshot: (!req.from_snapshot.is_empty()).then_some(req.from_snapshot),
                };
                let record = api.volumes.create_with_progress(new, progress).await?;
                Ok(api.measured(record).await)
            },
            volume_progress,
            volume_done,
        )))
    }

    async fn copy_volume_with_progress(
        &self,
        request: Request<pb::CopyVolumeRequest>,
    ) -> Result<Response<Self::CopyVolumeWithProgressStream>, Status> {
        let req = self.gate.service(request)?.message;
        let api = self.clone();
        Ok(Response::new(watched(
            move |progress| async move {
                let record = api
                    .volumes
                    .copy_with_progress(&req.service, &req.source, &req.name, progress)
                    .await?;
                Ok(api.measured(record).await)
            },
            volume_progress,
            volume_done,
        )))
    }

    async fn copy_volume(
        &self,
        request: Request<pb::CopyVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let req = self.gate.service(request)?.message;
        let volumes = Arc::clone(&self.volumes);
        let record =
            detached(async move { volumes.copy(&req.service, &req.source, &req.name).await })
                .await?;
        Ok(Response::new(self.measured(record).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let key = VolumeKey::new("fast", "db");
        assert_eq!(decode_token(&encode_token(&key)).expect("round trip"), key);
        for bad in ["x", "v1.!!!", "v1.", "v2.ZmFzdABkYg"] {
            let err = decode_token(bad).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }
}
