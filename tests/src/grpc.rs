//! Reaching a controller with plain tonic: a channel and the bootstrap
//! admin token as a bearer credential.
//!
//! The harness has no TLS client stack of its own, so these helpers are for
//! controllers started with `--insecure-plaintext` on loopback; TLS is
//! exercised through the `berth` binary.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::Berthd;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// A bearer credential carrying `token`.
    pub fn new(token: &str) -> Self {
        Self(
            format!("Bearer {}", token.trim())
                .parse()
                .expect("token is ASCII"),
        )
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that presents [`Bearer`] on every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A plaintext channel to `d` (started with `--insecure-plaintext`).
pub async fn channel(d: &Berthd) -> Channel {
    Endpoint::from_shared(format!("http://{}", d.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to berthd")
}

/// A plaintext channel to `d` carrying its bootstrap admin token.
pub async fn admin_channel(d: &Berthd) -> Authed {
    InterceptedService::new(channel(d).await, Bearer::new(&d.admin_token()))
}

/// The names of every volume of `service`, following the page tokens.
pub async fn volume_names(
    client: &mut berth_proto::v1::volumes_client::VolumesClient<Authed>,
    service: &str,
) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = client
            .list_volumes(berth_proto::v1::ListVolumesRequest {
                service: service.into(),
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        names.extend(page.volumes.into_iter().map(|v| v.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        token = page.next_page_token;
    }
    panic!("ListVolumes never ended");
}
