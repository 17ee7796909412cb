//! Listings cost what the caller can see, not what the controller holds.
//!
//! A controller holding 20,000 volumes of a service a caller may not use:
//! that caller's listings must not read them, and no listing call, however
//! selective its filter, examines an unbounded number of records.
//!
//! The records are written into the controller's own store (through the
//! controller library, while it is stopped), which is what 20,000 creates
//! would leave, without the minutes they would take.

use std::collections::BTreeMap;
use std::path::Path;

use berth_controller::volumes::store::{Store, VolumeKey, VolumeRecord};
use berth_proto::v1 as pb;
use berth_tests::grpc::{bearer, channel, Authed};
use berth_tests::Berthd;
use pb::service_catalog_client::ServiceCatalogClient;
use pb::volumes_client::VolumesClient;
use tonic::service::interceptor::InterceptedService;

const HIDDEN: usize = 20_000;

fn record(service: &str, name: &str) -> VolumeRecord {
    VolumeRecord {
        id: format!("{service}-{name}"),
        name: name.into(),
        service: service.into(),
        driver: "vfs".into(),
        size_bytes: 0,
        created_at_ms: 0,
        options: BTreeMap::new(),
        fields: BTreeMap::new(),
        attachments: vec![],
        source: None,
    }
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A controller with services `hidden` (20,000 volumes) and `open` (two),
/// and a token for bob, who may use `open` only.
async fn setup() -> (Berthd, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("berthd.toml");
    let root = |n: &str| tmp.path().join(n).display().to_string();
    std::fs::write(
        &config,
        format!(
            "[[services]]\nname = \"hidden\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n\n\
             [[services]]\nname = \"open\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n",
            root("hidden"),
            root("open"),
        ),
    )
    .expect("write config");
    let config = config.display().to_string();
    let mut d = Berthd::start_with(&["--insecure-plaintext", "--config", &config]);
    for name in ["one", "two"] {
        d.berth(&["--plaintext", "volume", "create", name, "--service", "open"])
            .success();
    }
    let bob = d
        .berth(&["--plaintext", "token", "issue", "bob", "--services", "open"])
        .success()
        .trim()
        .to_owned();
    d.signal("TERM");
    assert!(d.wait_exit(std::time::Duration::from_secs(30)).is_some());
    fill(&d.data_dir.join("db")).await;
    d.restart();
    // The temporary directory must outlive the controller.
    std::mem::forget(tmp);
    (d, bob)
}

async fn fill(db: &Path) {
    let store = Store::open(db).expect("open the stopped controller's store");
    for i in 0..HIDDEN {
        let name = format!("h{i:05}");
        store
            .commit(
                &VolumeKey::new("hidden", &name),
                Some(&record("hidden", &name)),
            )
            .expect("commit");
    }
    store.flush().await.expect("flush");
}

fn as_user(channel: tonic::transport::Channel, token: &str) -> Authed {
    InterceptedService::new(channel, bearer(token))
}

#[test]
fn listings_read_only_what_the_caller_may_see_and_each_call_is_bounded() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (d, bob) = setup().await;
        let ch = channel(&d).await;
        let mut volumes = VolumesClient::new(as_user(ch.clone(), &bob));
        let mut catalog = ServiceCatalogClient::new(as_user(ch.clone(), &bob));

        // What bob gets is right...
        let page = volumes
            .list_volumes(pb::ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner();
        let names: Vec<_> = page.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(page.next_page_token.is_empty());

        // ...and costs about what listing the catalogue costs, not a read
        // of 20,000 records. CPU ticks of the controller process, with a
        // floor of half a second so that scheduling noise cannot matter;
        // reading the hidden records costs tens of seconds here.
        const CALLS: usize = 50;
        let before = cpu_ticks(d.pid());
        for _ in 0..CALLS {
            catalog
                .list_services(pb::ListServicesRequest::default())
                .await
                .expect("ListServices");
        }
        let catalogue = cpu_ticks(d.pid()) - before;
        let before = cpu_ticks(d.pid());
        for _ in 0..CALLS {
            volumes
                .list_volumes(pb::ListVolumesRequest::default())
                .await
                .expect("ListVolumes");
        }
        let listing = cpu_ticks(d.pid()) - before;
        assert!(
            listing <= (5 * catalogue).max(50),
            "{CALLS} listings by a caller who sees 2 volumes took {listing} ticks of CPU, \
             {CALLS} catalogue listings {catalogue}"
        );

        // An admin's listing with a filter nothing passes examines a
        // bounded number of records per call: short pages with a cursor,
        // then the end.
        let mut admin = VolumesClient::new(as_user(ch, &d.admin_token()));
        let mut token = String::new();
        let mut pages = 0;
        loop {
            pages += 1;
            let page = admin
                .list_volumes(pb::ListVolumesRequest {
                    service: "hidden".into(),
                    attachment: pb::AttachmentFilter::Attached as i32,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .expect("ListVolumes")
                .into_inner();
            assert!(page.volumes.is_empty());
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
            assert!(pages < 100, "the listing never ends");
        }
        assert!(
            pages > 1,
            "one call examined all {HIDDEN} records to return nothing"
        );
    });
}
