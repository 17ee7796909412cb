//! The one door into a handler. The pipeline records which method a request
//! is for ([`Method`], from the gRPC path it was routed on) beside the
//! caller's [`Identity`]; a handler gets its message only through a
//! [`Gate`], which authorises that method on the service the message names
//! (or the admin role) first. No handler types a method name or calls the
//! authorizer itself.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use berth_proto::v1 as pb;
use prost::Message as _;
use tonic::{Request, Status};

use crate::auth::authn::AuthnError;
use crate::auth::{Authorizer, Identity};

/// The gRPC method a request is for (`CreateVolume`), put in its
/// extensions by [`crate::rpc::pipeline`] from the path it was routed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Method(pub String);

impl Method {
    /// The method of a gRPC path: `/berth.v1.Volumes/CreateVolume` is
    /// `CreateVolume`.
    pub fn from_path(path: &str) -> Self {
        Self(path.rsplit('/').next().unwrap_or(path).to_owned())
    }
}

impl Method {
    /// The method name to use as a metric label: the method of a path this
    /// controller serves, else `unknown` (a client may send any path; labels
    /// must stay few).
    pub fn label(path: &str) -> &str {
        static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
        let known = KNOWN.get_or_init(|| {
            let mut paths = HashSet::new();
            for set in [
                pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            ] {
                let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                    continue;
                };
                for file in set.file {
                    for service in &file.service {
                        for method in &service.method {
                            paths.insert(format!(
                                "/{}.{}/{}",
                                file.package(),
                                service.name(),
                                method.name()
                            ));
                        }
                    }
                }
            }
            paths
        });
        if known.contains(path) {
            path.rsplit('/').next().unwrap_or("unknown")
        } else {
            "unknown"
        }
    }
}

/// What the layers of one call learn about it for its log line and
/// metrics, shared through the request's extensions: the pipeline puts it
/// there, the [`Gate`] fills in the service once it has authorised the call
/// on a configured one.
#[derive(Debug, Default)]
pub struct CallInfo {
    service: OnceLock<String>,
}

impl CallInfo {
    /// A new, empty record, to share.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The service the call was authorised on, or empty.
    pub fn service(&self) -> &str {
        self.service.get().map_or("", String::as_str)
    }

    fn set_service(&self, service: &str) {
        let _ = self.service.set(service.to_owned());
    }
}

/// An authorised call: who made it, the method, and the message.
pub struct Call<T> {
    /// The authenticated caller.
    pub who: Identity,
    /// The method, as the route named it.
    pub method: String,
    /// The request message.
    pub message: T,
}

/// A message that names the one service it acts on.
pub trait OnService {
    /// The service named (possibly empty or invalid: the gate refuses it).
    fn service(&self) -> &str;
}

/// A listing, which may narrow itself to one service.
pub trait MaybeOnService {
    /// The service asked for, if any.
    fn service_filter(&self) -> Option<&str>;
}

/// Authorises calls before their handlers see them.
#[derive(Clone)]
pub struct Gate {
    authz: Authorizer,
}

impl Gate {
    /// A gate deciding with `authz`.
    pub fn new(authz: Authorizer) -> Self {
        Self { authz }
    }

    /// The authorizer, for filtering listings.
    pub fn authz(&self) -> &Authorizer {
        &self.authz
    }

    fn open<T>(mut request: Request<T>) -> Result<(Call<T>, Option<Arc<CallInfo>>), Status> {
        // Taken, not cloned: the request is the handler's from here on.
        let info = request.extensions_mut().remove::<Arc<CallInfo>>();
        let who = request.extensions_mut().remove::<Identity>();
        let method = request.extensions_mut().remove::<Method>();
        match (who, method) {
            (Some(who), Some(Method(method))) => Ok((
                Call {
                    who,
                    method,
                    message: request.into_inner(),
                },
                info,
            )),
            _ => Err(AuthnError::Bypassed.into()),
        }
    }

    /// A call on the service its message names, once the caller may use it.
    pub fn service<T: OnService>(&self, request: Request<T>) -> Result<Call<T>, Status> {
        let (call, info) = Self::open(request)?;
        self.authz
            .check(&call.who, &call.method, call.message.service())?;
        if let Some(info) = info {
            info.set_service(call.message.service());
        }
        Ok(call)
    }

    /// A listing: authorised on the service it narrows to, if any; else
    /// the handler shows only what [`Authorizer::visible`] allows.
    pub fn listing<T: MaybeOnService>(&self, request: Request<T>) -> Result<Call<T>, Status> {
        let (call, info) = Self::open(request)?;
        match call.message.service_filter() {
            Some(service) => {
                self.authz.check(&call.who, &call.method, service)?;
                if let Some(info) = info {
                    info.set_service(service);
                }
            }
            None => self.authz.listing(&call.who, &call.method),
        }
        Ok(call)
    }

    /// An admin call, once the caller has the admin role.
    pub fn admin<T>(&self, request: Request<T>) -> Result<Call<T>, Status> {
        let (call, _) = Self::open(request)?;
        self.authz.admin(&call.who, &call.method)?;
        Ok(call)
    }
}

macro_rules! on_service {
    ($($message:ty),* $(,)?) => {$(
        impl OnService for $message {
            fn service(&self) -> &str {
                &self.service
            }
        }
    )*};
}

on_service!(
    pb::GetVolumeRequest,
    pb::CreateVolumeRequest,
    pb::CreateVolumesRequest,
    pb::DeleteVolumeRequest,
    pb::AttachVolumeRequest,
    pb::DetachVolumeRequest,
    pb::CopyVolumeRequest,
    pb::CreateSnapshotRequest,
    pb::GetSnapshotRequest,
    pb::DeleteSnapshotRequest,
);

impl MaybeOnService for pb::ListVolumesRequest {
    fn service_filter(&self) -> Option<&str> {
        (!self.service.is_empty()).then_some(self.service.as_str())
    }
}

impl MaybeOnService for pb::ListSnapshotsRequest {
    fn service_filter(&self) -> Option<&str> {
        (!self.service.is_empty()).then_some(self.service.as_str())
    }
}

impl MaybeOnService for pb::ListServicesRequest {
    fn service_filter(&self) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_the_last_path_segment() {
        assert_eq!(
            Method::from_path("/berth.v1.Volumes/CreateVolume"),
            Method("CreateVolume".into())
        );
    }

    #[test]
    fn only_served_methods_are_labels() {
        assert_eq!(
            Method::label("/berth.v1.Volumes/ListVolumes"),
            "ListVolumes"
        );
        assert_eq!(Method::label("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(Method::label("/berth.v1.Volumes/Nope"), "unknown");
        assert_eq!(Method::label("/x/y"), "unknown");
    }
}
