//! `CreateVolumes`: many volumes in one call, journaled together.
//!
//! Each item is answered as its own `CreateVolume` would be (idempotent on
//! its name, a clear per-item error), the call is authorised on its service
//! as a whole, and a controller killed while batches run leaves records and
//! the driver's volumes equal. Also: the comparison of records with the
//! driver, which now runs after start-up, still reports a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_tests::grpc::{admin_channel, channel_as, volume_names, Authed};
use berth_tests::{tokens, vfs_metadata, volume_dirs, Berthd};
use pb::create_volumes_result::Outcome;
use pb::volumes_client::VolumesClient;
use tonic::Code;

const MIB: u64 = 1 << 20;

/// A plaintext controller with vfs services `fs` and `other`, roots under
/// `dir`.
fn start(dir: &Path) -> Berthd {
    let config = dir.join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "[[services]]\nname = \"fs\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n\n\
             [[services]]\nname = \"other\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n",
            dir.join("fs"),
            dir.join("other"),
        ),
    )
    .expect("config");
    Berthd::start_with(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--insecure-plaintext",
    ])
}

fn spec(name: &str, size_bytes: u64) -> pb::VolumeSpec {
    pb::VolumeSpec {
        name: name.into(),
        size_bytes,
        options: Default::default(),
    }
}

async fn batch(
    c: &mut VolumesClient<Authed>,
    service: &str,
    volumes: Vec<pb::VolumeSpec>,
) -> Result<Vec<Outcome>, tonic::Status> {
    let answer = c
        .create_volumes(pb::CreateVolumesRequest {
            service: service.into(),
            volumes,
        })
        .await?
        .into_inner();
    Ok(answer
        .results
        .into_iter()
        .map(|r| r.outcome.expect("every result has an outcome"))
        .collect())
}

fn created(outcome: &Outcome) -> &pb::Volume {
    match outcome {
        Outcome::Volume(v) => v,
        Outcome::Error(e) => panic!("expected a volume, got {e:?}"),
    }
}

fn refused(outcome: &Outcome, code: Code, says: &str) {
    match outcome {
        Outcome::Error(e) => {
            assert_eq!(e.code, code as i32, "{e:?}");
            assert!(e.message.contains(says), "{e:?} should say {says:?}");
        }
        Outcome::Volume(v) => panic!("expected {code:?}, got volume {}", v.name),
    }
}

#[tokio::test]
async fn a_batch_answers_each_item_and_makes_only_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start(dir.path());
    let mut c = VolumesClient::new(admin_channel(&d).await);
    let before = c
        .create_volume(pb::CreateVolumeRequest {
            service: "fs".into(),
            name: "same".into(),
            size_bytes: MIB,
            ..Default::default()
        })
        .await
        .expect("create same")
        .into_inner();
    let mut bad_option = spec("opt", MIB);
    bad_option.options = [("bogus".to_owned(), "1".to_owned())].into();
    let items = vec![
        spec("new1", MIB),
        spec("same", MIB),
        spec("same", MIB),
        spec("Bad/Name", MIB),
        bad_option,
        spec("new2", 2 * MIB),
    ];
    let out = batch(&mut c, "fs", items.clone()).await.expect("batch");
    assert_eq!(out.len(), 6, "one result per item");
    assert_eq!(created(&out[0]).name, "new1");
    assert_eq!(
        created(&out[1]).id,
        before.id,
        "an existing volume with the same parameters is answered as it is"
    );
    refused(&out[2], Code::InvalidArgument, "named twice in this batch");
    refused(&out[3], Code::InvalidArgument, "Bad/Name");
    refused(&out[4], Code::InvalidArgument, "bogus");
    assert_eq!(created(&out[5]).size_bytes, 2 * MIB);

    let want: BTreeSet<String> = ["new1", "new2", "same"].map(String::from).into();
    assert_eq!(volume_names(&mut c, "fs").await, want, "records");
    let root = dir.path().join("fs");
    assert_eq!(volume_dirs(&root), want, "volume directories");
    assert_eq!(vfs_metadata(&root), want, "driver metadata");

    // Again: idempotent, the same ids; and other parameters for an existing
    // name are ALREADY_EXISTS for that item only.
    let mut again = items;
    again[5] = spec("new2", 3 * MIB);
    let second = batch(&mut c, "fs", again).await.expect("batch again");
    assert_eq!(created(&second[0]).id, created(&out[0]).id);
    refused(&second[5], Code::AlreadyExists, "different parameters");
    assert_eq!(volume_names(&mut c, "fs").await, want, "nothing more made");
}

#[tokio::test]
async fn a_batch_is_refused_whole_when_empty_too_large_or_not_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start(dir.path());
    let mut c = VolumesClient::new(admin_channel(&d).await);
    let empty = batch(&mut c, "fs", vec![]).await.expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert!(empty.message().contains("no volumes given"), "{empty:?}");
    let many = (0..1001).map(|i| spec(&format!("v{i}"), MIB)).collect();
    let large = batch(&mut c, "fs", many).await.expect_err("1001 items");
    assert_eq!(large.code(), Code::InvalidArgument, "{large:?}");
    assert!(large.message().contains("at most 1000"), "{large:?}");

    let token = tokens::issue(&d, &["alice", "--services", "other"]);
    let mut alice = VolumesClient::new(channel_as(&d, &token).await);
    let denied = batch(&mut alice, "fs", vec![spec("mine", MIB)])
        .await
        .expect_err("not alice's service");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let allowed = batch(&mut alice, "other", vec![spec("mine", MIB)])
        .await
        .expect("alice's own service");
    assert_eq!(created(&allowed[0]).service, "other");

    assert!(
        volume_names(&mut c, "fs").await.is_empty(),
        "no record in fs"
    );
    assert!(
        volume_dirs(&dir.path().join("fs")).is_empty(),
        "no volume in fs"
    );
}

/// Batches run on four connections while the controller is killed with
/// SIGKILL, three times: afterwards every acknowledged volume is listed, and
/// the records, the volume directories and the driver's metadata are the
/// same set (what was journaled and never acknowledged was undone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_during_batches_keeps_records_and_volumes_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = start(dir.path());
    let root = dir.path().join("fs");
    let mut acknowledged = BTreeSet::new();
    for round in 0..3u64 {
        let mut tasks = Vec::new();
        for t in 0..4 {
            let mut c = VolumesClient::new(admin_channel(&d).await);
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for b in 0..200 {
                    let names: Vec<String> =
                        (0..50).map(|i| format!("r{round}-{t}-{b}-{i}")).collect();
                    let items = names.iter().map(|n| spec(n, MIB)).collect();
                    match batch(&mut c, "fs", items).await {
                        Ok(out) => {
                            for (name, o) in names.into_iter().zip(&out) {
                                created(o);
                                acked.push(name);
                            }
                        }
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 150 * round)).await;
        d.kill9();
        for t in tasks {
            acknowledged.extend(t.await.expect("task"));
        }
        d.restart();
        let mut c = VolumesClient::new(admin_channel(&d).await);
        let records = volume_names(&mut c, "fs").await;
        let missing: Vec<_> = acknowledged.difference(&records).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged, not listed: {missing:?}"
        );
        assert_eq!(volume_dirs(&root), records, "round {round}: directories");
        assert_eq!(vfs_metadata(&root), records, "round {round}: metadata");
    }
    assert!(!acknowledged.is_empty(), "some batches were acknowledged");
}

/// A volume removed behind the controller's back is reported after a
/// restart, by the comparison that now runs once the controller serves.
#[tokio::test]
async fn a_volume_missing_from_its_driver_is_still_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = start(dir.path());
    let mut c = VolumesClient::new(admin_channel(&d).await);
    let out = batch(&mut c, "fs", vec![spec("kept", MIB), spec("gone", MIB)])
        .await
        .expect("batch");
    assert_eq!(out.len(), 2);
    let root = dir.path().join("fs");
    std::fs::remove_dir(root.join("gone")).expect("remove the directory");
    std::fs::remove_file(root.join(".berth/volumes/gone")).expect("remove the metadata");
    d.restart();
    assert!(
        d.wait_drift_checked(Duration::from_secs(10)),
        "no comparison finished:\n{}",
        d.log()
    );
    let log = d.log();
    let reported: BTreeMap<&str, usize> = ["gone", "kept"]
        .into_iter()
        .map(|n| {
            let needle = format!("volume=\"{n}\"");
            let alt = format!("volume={n}");
            let count = log
                .lines()
                .filter(|l| l.contains("missing from its driver"))
                .filter(|l| l.contains(&needle) || l.contains(&alt))
                .count();
            (n, count)
        })
        .collect();
    assert_eq!(reported["gone"], 1, "gone is reported once:\n{log}");
    assert_eq!(reported["kept"], 0, "kept is not reported:\n{log}");
}
