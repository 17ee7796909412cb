//! A client certificate revoked while its connection is open is refused on
//! that same connection at the next call (the check is per request, and the
//! identity cache forgets revoked credentials).

use std::time::Duration;

use berth_client::connect::{self, ServerTrust};
use berth_client::pinning::PinSource;
use berth_proto::v1 as pb;
use berth_tests::{bin, Berthd};

#[tokio::test]
async fn a_certificate_revoked_mid_connection_is_refused_on_it() {
    let d = Berthd::start();
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("carol");
    d.berth(&[
        "cert",
        "issue",
        "carol",
        "--services",
        "*",
        "--out",
        &dir.display().to_string(),
    ])
    .success();
    let serial = d.berth(&["cert", "list", "-o", "json"]).json()[0]["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let fp = std::process::Command::new(bin("berthd"))
        .arg("fingerprint")
        .arg("--data-dir")
        .arg(&d.data_dir)
        .output()
        .expect("berthd fingerprint");
    let trust = ServerTrust::Pinned {
        fingerprint: String::from_utf8_lossy(&fp.stdout)
            .trim()
            .parse()
            .expect("fp"),
        source: PinSource::Flag,
    };
    let identity =
        connect::read_identity(&dir.join("carol.crt"), &dir.join("carol.key")).expect("identity");
    let channel = connect::connect(
        &d.addr.to_string(),
        &trust,
        Some(identity),
        Duration::from_secs(5),
    )
    .await
    .expect("connect with carol's certificate");
    let mut catalog = pb::service_catalog_client::ServiceCatalogClient::new(channel);
    let before = catalog
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("carol may list before the revocation")
        .into_inner();
    assert_eq!(before.services.len(), 1);

    d.berth(&["cert", "revoke", &serial]).success();

    let err = catalog
        .list_services(pb::ListServicesRequest {})
        .await
        .expect_err("refused on the same connection after the revocation");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
}
