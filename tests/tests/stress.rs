//! Many concurrent writers against one controller: every call answers
//! within its deadline, and what the controller kept is exactly what it
//! acknowledged.
//!
//! The calls come in bursts (32 callers meet at a barrier before each
//! call), so a caller whose reply is lost stays waiting: nothing that comes
//! later releases it, as nothing did for the user whose `berth volume
//! create` hung until the next create came along.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_tests::grpc::{admin_channel, volume_names, Authed};
use berth_tests::{vfs_root, volume_dirs, Berthd};
use pb::volumes_client::VolumesClient;

/// Concurrent callers.
const CALLERS: usize = 32;
/// Rounds per caller: each three rounds create two volumes and remove one.
const ROUNDS: usize = 96;
/// The deadline of every call. A hang guard, not a speed target: a create
/// takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(5);
/// Calls past their deadline after which the test stops early (bounds the
/// time a broken build spends here).
const GIVE_UP_AFTER: usize = 3;

#[derive(Debug)]
enum Op {
    Create(String),
    Delete(String),
}

/// What caller `c` does in round `r`: create `a`, create `b`, remove `a`.
fn op(c: usize, r: usize) -> Op {
    let k = r / 3;
    match r % 3 {
        0 => Op::Create(format!("a-{c:02}-{k:02}")),
        1 => Op::Create(format!("b-{c:02}-{k:02}")),
        _ => Op::Delete(format!("a-{c:02}-{k:02}")),
    }
}

async fn call(client: &mut VolumesClient<Authed>, op: &Op) -> Result<(), tonic::Status> {
    match op {
        Op::Create(name) => client
            .create_volume(pb::CreateVolumeRequest {
                service: "local".into(),
                name: name.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        Op::Delete(name) => client
            .delete_volume(pb::DeleteVolumeRequest {
                service: "local".into(),
                name: name.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_concurrent_creates_and_removes_all_answer_in_time() {
    let d = Berthd::start_logging(&["--insecure-plaintext"], "warn");
    // Four connections shared by the callers, as several clients would.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(VolumesClient::new(admin_channel(&d).await));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let late = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let mut client = clients[c % clients.len()].clone();
        let (barrier, late) = (Arc::clone(&barrier), Arc::clone(&late));
        tasks.push(tokio::spawn(async move {
            let mut kept = BTreeSet::new();
            let mut unsure = BTreeSet::new();
            for r in 0..ROUNDS {
                barrier.wait().await;
                let give_up = late.lock().map(|l| l.len()).unwrap_or(0) >= GIVE_UP_AFTER;
                if give_up {
                    continue;
                }
                let op = op(c, r);
                match tokio::time::timeout(DEADLINE, call(&mut client, &op)).await {
                    Ok(Ok(())) => match &op {
                        Op::Create(name) => {
                            kept.insert(name.clone());
                        }
                        Op::Delete(name) => {
                            kept.remove(name);
                        }
                    },
                    Ok(Err(status)) => panic!("{op:?} failed: {status}"),
                    Err(_) => {
                        if let Ok(mut l) = late.lock() {
                            l.push(format!("{op:?} in round {r}"));
                        }
                        let (Op::Create(name) | Op::Delete(name)) = &op;
                        unsure.insert(name.clone());
                    }
                }
            }
            (kept, unsure)
        }));
    }
    let mut acknowledged = BTreeSet::new();
    let mut unsure = BTreeSet::new();
    for t in tasks {
        let (kept, u) = t.await.expect("caller task");
        acknowledged.extend(kept);
        unsure.extend(u);
    }
    let late = late.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        late.is_empty(),
        "{} call(s) got no reply within {DEADLINE:?}: {late:?}",
        late.len()
    );
    assert_eq!(acknowledged.len(), CALLERS * ROUNDS / 3);
    assert!(unsure.is_empty());

    let mut client = clients[0].clone();
    let listed = volume_names(&mut client, "local").await;
    assert_eq!(
        listed, acknowledged,
        "records differ from the acknowledged answers"
    );
    let dirs = volume_dirs(&vfs_root(&d));
    assert_eq!(dirs, acknowledged, "the vfs root differs from the records");
}
