//! Reaching a controller with plain tonic: a plaintext channel to a
//! controller started with `--insecure-plaintext`, carrying a bearer token
//! the way `berth` does ([`berth_client::session::Bearer`]).
//!
//! TLS is exercised through the `berth` binary and, where a test needs a
//! gRPC client over TLS, through [`berth_client::connect`].

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use berth_client::session::Bearer;

use crate::Berthd;

/// A channel that presents a [`Bearer`] on every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A bearer credential carrying `token`.
pub fn bearer(token: &str) -> Bearer {
    Bearer::new(Some(token.trim())).expect("token is ASCII")
}

/// A plaintext channel to `d` (started with `--insecure-plaintext`).
pub async fn channel(d: &Berthd) -> Channel {
    Endpoint::from_shared(format!("http://{}", d.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to berthd")
}

/// A plaintext channel to `d` carrying `token`.
pub async fn channel_as(d: &Berthd, token: &str) -> Authed {
    InterceptedService::new(channel(d).await, bearer(token))
}

/// A plaintext channel to `d` carrying its bootstrap admin token.
pub async fn admin_channel(d: &Berthd) -> Authed {
    channel_as(d, &d.admin_token()).await
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
