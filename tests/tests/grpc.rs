//! The gRPC API spoken directly with tonic: paging, error codes, and
//! shutdown with a connected client.
//!
//! These tests start the controller with `--insecure-plaintext` on loopback
//! and present the bootstrap admin token with `berth_client`'s bearer, so
//! what they see is the API alone; TLS is exercised by the CLI tests and
//! `credentials_hardening.rs`. Everything about reaching the controller
//! lives in [`start`], [`channel`] and [`volumes`].
//!
//! The standard health service answers without a credential; everything
//! else, gRPC reflection included, needs one.

// Request literals end in `..Default::default()` so that fields the API
// gains later do not break these tests; some messages have none to fill yet.
#![allow(clippy::needless_update)]

use std::collections::BTreeSet;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_tests::{entries, grpc, Berthd};
use pb::volumes_client::VolumesClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// A controller these tests can reach with plain tonic.
fn start() -> Berthd {
    Berthd::start_with(&["--insecure-plaintext"])
}

/// The one place that knows how to open a connection to a controller.
async fn channel(d: &Berthd) -> Channel {
    Endpoint::from_shared(format!("http://{}", d.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to berthd")
}

/// The bootstrap admin token, found through the client profile berthd
/// writes into its data directory (`token_file = "..."`).
fn admin_token(d: &Berthd) -> grpc::Bearer {
    let profile_path = d.data_dir.join("client.toml");
    let profile = std::fs::read_to_string(&profile_path).expect("berthd wrote client.toml");
    let token_file = profile
        .lines()
        .find_map(|l| l.trim().strip_prefix("token_file"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no token_file in {}:\n{profile}", profile_path.display()));
    let token = std::fs::read_to_string(&token_file).expect("read the admin token");
    grpc::bearer(&token)
}

type Client = VolumesClient<grpc::Authed>;

async fn volumes(d: &Berthd) -> Client {
    VolumesClient::with_interceptor(channel(d).await, admin_token(d))
}

fn create_request(service: &str, name: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        service: service.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn list_request(service: &str, max_entries: u32, page_token: &str) -> pb::ListVolumesRequest {
    pb::ListVolumesRequest {
        service: service.into(),
        max_entries,
        page_token: page_token.into(),
        ..Default::default()
    }
}

/// Pages through every volume; returns the page sizes and the names in
/// the order received.
async fn page_through(
    client: &mut Client,
    service: &str,
    max_entries: u32,
) -> (Vec<usize>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut names = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = client
            .list_volumes(list_request(service, max_entries, &token))
            .await
            .expect("ListVolumes")
            .into_inner();
        sizes.push(page.volumes.len());
        names.extend(page.volumes.into_iter().map(|v| v.name));
        if page.next_page_token.is_empty() {
            return (sizes, names);
        }
        token = page.next_page_token;
    }
    panic!("ListVolumes never returned an empty next_page_token: pages {sizes:?}");
}

#[tokio::test]
async fn list_volumes_pages_in_name_order() {
    let d = start();
    let mut client = volumes(&d).await;
    // Created out of order, so the listing has to sort.
    let mut expected = Vec::new();
    for i in 0..25 {
        let name = format!("page-{:02}", (i * 7) % 25);
        let v = client
            .create_volume(create_request("local", &name))
            .await
            .expect("CreateVolume")
            .into_inner();
        assert_eq!(v.name, name);
        expected.push(name);
    }
    expected.sort();

    for service in ["", "local"] {
        let (sizes, names) = page_through(&mut client, service, 10).await;
        assert_eq!(sizes, [10, 10, 5], "service {service:?}");
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "duplicates across pages: {names:?}"
        );
        assert_eq!(names, expected, "service {service:?}");
    }

    // The token of the last full page leads to the rest and then ends.
    let first = client
        .list_volumes(list_request("local", 10, ""))
        .await
        .expect("ListVolumes")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let first_again = client
        .list_volumes(list_request("local", 10, ""))
        .await
        .expect("ListVolumes")
        .into_inner();
    assert_eq!(first.volumes, first_again.volumes, "paging is repeatable");

    // One page holding exactly everything: no further token.
    let (sizes, names) = page_through(&mut client, "", 25).await;
    assert_eq!(sizes, [25]);
    assert_eq!(names, expected);
    // The default page size holds everything too.
    let (sizes, _) = page_through(&mut client, "", 0).await;
    assert_eq!(sizes, [25]);
    // Pages of one.
    let (sizes, names) = page_through(&mut client, "", 1).await;
    assert_eq!(sizes, vec![1; 25]);
    assert_eq!(names, expected);
}

#[tokio::test]
async fn a_garbage_page_token_is_invalid_argument() {
    let d = start();
    let mut client = volumes(&d).await;
    client
        .create_volume(create_request("local", "one"))
        .await
        .expect("CreateVolume");
    for token in [
        "garbage",
        "v1.",
        "v1.!!!",
        "v2.bG9jYWwAb25l",
        "v1.bm8tc2VwYXJhdG9y",
    ] {
        let status = client
            .list_volumes(list_request("", 10, token))
            .await
            .expect_err(token);
        assert_eq!(status.code(), Code::InvalidArgument, "{token}: {status:?}");
        assert!(status.message().contains("page_token"), "{status:?}");
    }
}

#[tokio::test]
async fn get_and_delete_of_a_missing_volume_are_not_found() {
    let d = start();
    let mut client = volumes(&d).await;
    let status = client
        .get_volume(pb::GetVolumeRequest {
            service: "local".into(),
            name: "missing".into(),
            ..Default::default()
        })
        .await
        .expect_err("GetVolume of a missing volume");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("missing"), "{status:?}");

    let status = client
        .delete_volume(pb::DeleteVolumeRequest {
            service: "local".into(),
            name: "missing".into(),
            ..Default::default()
        })
        .await
        .expect_err("DeleteVolume of a missing volume");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = client
        .get_volume(pb::GetVolumeRequest {
            service: "nosuch".into(),
            name: "missing".into(),
            ..Default::default()
        })
        .await
        .expect_err("GetVolume in a missing service");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("nosuch"), "{status:?}");
}

#[tokio::test]
async fn create_volume_refuses_bad_requests_and_creates_nothing() {
    let d = start();
    let mut client = volumes(&d).await;
    let root = d.data_dir.join("volumes");
    let before = entries(&root);

    let with_option = |key: &str, value: &str| {
        let mut r = create_request("local", "opt");
        r.options.insert(key.into(), value.into());
        r
    };
    let cases = [
        (
            "empty name",
            create_request("local", ""),
            Code::InvalidArgument,
        ),
        (
            "empty service",
            create_request("", "x"),
            Code::InvalidArgument,
        ),
        (
            "unknown service",
            create_request("nosuch", "x"),
            Code::NotFound,
        ),
        (
            "dot-dot name",
            create_request("local", ".."),
            Code::InvalidArgument,
        ),
        (
            "slash name",
            create_request("local", "a/b"),
            Code::InvalidArgument,
        ),
        (
            "NUL in name",
            create_request("local", "a\0b"),
            Code::InvalidArgument,
        ),
        (
            "empty option key",
            with_option("", "x"),
            Code::InvalidArgument,
        ),
        (
            "unknown option",
            with_option("colour", "blue"),
            Code::InvalidArgument,
        ),
        (
            "bad mode",
            with_option("mode", "999"),
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in cases {
        let status = client.create_volume(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
    }
    assert_eq!(entries(&root), before);
    assert!(entries(&root.join(".berth/volumes")).is_empty());
    let page = client
        .list_volumes(list_request("", 0, ""))
        .await
        .expect("ListVolumes")
        .into_inner();
    assert!(page.volumes.is_empty(), "{:?}", page.volumes);
}

#[tokio::test]
async fn create_get_delete_round_trip() {
    let d = start();
    let mut client = volumes(&d).await;
    let mut request = create_request("local", "rt");
    request.size_bytes = 3 << 30;
    request.options.insert("mode".into(), "0700".into());
    let created = client
        .create_volume(request.clone())
        .await
        .expect("CreateVolume")
        .into_inner();
    assert_eq!(created.service, "local");
    assert_eq!(created.driver, "vfs");
    assert_eq!(created.size_bytes, 3 << 30);
    assert_eq!(created.status, pb::VolumeStatus::Available as i32);
    assert!(created.created_at.is_some_and(|t| t.seconds > 0));
    let path = d.data_dir.join("volumes/rt");
    assert_eq!(
        created.fields.get("path"),
        Some(&path.display().to_string())
    );
    assert!(path.is_dir());

    let again = client
        .create_volume(request)
        .await
        .expect("CreateVolume again")
        .into_inner();
    assert_eq!(again, created);
    let got = client
        .get_volume(pb::GetVolumeRequest {
            service: "local".into(),
            name: "rt".into(),
            ..Default::default()
        })
        .await
        .expect("GetVolume")
        .into_inner();
    assert_eq!(got, created);

    let mut other = create_request("local", "rt");
    other.size_bytes = 1;
    let status = client.create_volume(other).await.expect_err("conflict");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    client
        .delete_volume(pb::DeleteVolumeRequest {
            service: "local".into(),
            name: "rt".into(),
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");
    assert!(!path.exists());
    let status = client
        .get_volume(pb::GetVolumeRequest {
            service: "local".into(),
            name: "rt".into(),
            ..Default::default()
        })
        .await
        .expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
}

/// A client that made a call and keeps its connection open must not stop
/// SIGTERM from shutting the controller down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_connected_idle_client_exits_promptly() {
    let mut d = start();
    let mut client = volumes(&d).await;
    client
        .list_volumes(list_request("", 0, ""))
        .await
        .expect("ListVolumes");
    d.signal("TERM");
    let (mut d, status) = tokio::task::spawn_blocking(move || {
        let status = d.wait_exit(Duration::from_secs(10));
        (d, status)
    })
    .await
    .expect("waiter");
    let status = status.unwrap_or_else(|| {
        panic!(
            "berthd still running 10 s after SIGTERM with one idle gRPC client; its log:\n{}",
            d.log()
        )
    });
    assert!(status.success(), "berthd exited with {status}");
    drop(client);
    d.kill9();
}

#[tokio::test]
async fn health_answers_without_a_credential_and_nothing_else_does() {
    let d = start();
    let channel = channel(&d).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a credential")
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut catalog = pb::service_catalog_client::ServiceCatalogClient::new(channel.clone());
    let err = catalog
        .list_services(pb::ListServicesRequest {})
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let err = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect_err("reflection needs a credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
