//! A crash loop: SIGKILL the controller at a random moment while 8 clients
//! create and remove volumes, restart it, ten times. After every restart
//! each acknowledged create is there, each acknowledged remove is gone, and
//! the `vfs` root holds exactly the recorded volumes.
//!
//! The moments are drawn from a seed printed at the start (set
//! `BERTH_CRASH_SEED` to replay a run).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_tests::grpc::{admin_channel, volume_names, Authed};
use berth_tests::{vfs_metadata, vfs_root, volume_dirs, Berthd};
use pb::volumes_client::VolumesClient;

const ROUNDS: usize = 10;
const CLIENTS: usize = 8;
/// A hang guard on each call: a live controller answers in milliseconds,
/// a killed one at once (the connection drops).
const DEADLINE: Duration = Duration::from_secs(10);

/// What the clients were told, across rounds.
#[derive(Default)]
struct Told {
    /// Acknowledged creates not since acknowledged as removed.
    present: BTreeSet<String>,
    /// Acknowledged removes.
    absent: BTreeSet<String>,
    /// Calls cut off by the kill: either outcome is right.
    unsure: BTreeSet<String>,
}

/// A small deterministic generator (xorshift), so a failing run replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn client_loop(
    mut client: VolumesClient<Authed>,
    round: usize,
    c: usize,
    told: Arc<Mutex<Told>>,
) {
    for k in 0.. {
        let name = format!("r{round}-c{c}-{k}");
        let created = tokio::time::timeout(
            DEADLINE,
            client.create_volume(pb::CreateVolumeRequest {
                service: "local".into(),
                name: name.clone(),
                ..Default::default()
            }),
        )
        .await;
        let victim = {
            let mut t = told.lock().expect("lock");
            match created {
                Ok(Ok(_)) => {
                    t.present.insert(name);
                }
                _ => {
                    t.unsure.insert(name);
                    return;
                }
            }
            // Every other step removes the oldest acknowledged volume of
            // this client.
            let prefix = format!("-c{c}-");
            (k % 2 == 1)
                .then(|| t.present.iter().find(|n| n.contains(&prefix)).cloned())
                .flatten()
        };
        if let Some(victim) = victim {
            let removed = tokio::time::timeout(
                DEADLINE,
                client.delete_volume(pb::DeleteVolumeRequest {
                    service: "local".into(),
                    name: victim.clone(),
                    ..Default::default()
                }),
            )
            .await;
            let mut t = told.lock().expect("lock");
            t.present.remove(&victim);
            match removed {
                Ok(Ok(_)) => {
                    t.absent.insert(victim);
                }
                _ => {
                    t.unsure.insert(victim);
                    return;
                }
            }
        }
    }
}

async fn listed(d: &Berthd) -> BTreeSet<String> {
    volume_names(&mut VolumesClient::new(admin_channel(d).await), "local").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let seed = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    eprintln!("crash loop seed {seed} (BERTH_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let mut d = Berthd::start_logging(&["--insecure-plaintext"], "warn");
    let told = Arc::new(Mutex::new(Told::default()));
    for round in 0..ROUNDS {
        let channel = admin_channel(&d).await;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client_loop(
                    VolumesClient::new(channel.clone()),
                    round,
                    c,
                    Arc::clone(&told),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(750))).await;
        d.kill9();
        for c in clients {
            c.await.expect("client task");
        }
        d.restart();

        let listed = listed(&d).await;
        let mut t = told.lock().expect("lock");
        let lost: Vec<_> = t.present.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged creates lost: {lost:?}"
        );
        let back: Vec<_> = t.absent.intersection(&listed).collect();
        assert!(
            back.is_empty(),
            "round {round}: acknowledged removes undone: {back:?}"
        );
        let root = vfs_root(&d);
        assert_eq!(
            volume_dirs(&root),
            listed,
            "round {round}: vfs root vs records"
        );
        assert_eq!(
            vfs_metadata(&root),
            listed,
            "round {round}: driver metadata vs records"
        );
        // Settle what the kill cut off, for the next rounds.
        let unsure = std::mem::take(&mut t.unsure);
        for name in unsure {
            if listed.contains(&name) {
                t.present.insert(name);
            } else {
                t.present.remove(&name);
                t.absent.insert(name);
            }
        }
        assert!(!t.present.is_empty() || round == 0 || !t.absent.is_empty());
    }
    let t = told.lock().expect("lock");
    eprintln!(
        "crash loop: {} volumes kept, {} removed over {ROUNDS} kills",
        t.present.len(),
        t.absent.len()
    );
    assert!(
        t.present.len() + t.absent.len() >= ROUNDS * CLIENTS,
        "the clients did too little to test anything"
    );
}
