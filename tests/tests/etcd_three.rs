//! The cluster test of issue 16: one etcd, three `berthd` sharing one `vfs`
//! root, 32 clients spread over the three creating, inspecting and
//! removing volumes with overlapping names; one controller is killed with
//! SIGKILL mid-run, another is stopped (SIGTERM) and started again.
//!
//! Identity: the first controller makes the cluster's CA and the others
//! join it (`berthd join`), so the clients' one pin (that CA's fingerprint)
//! trusts all three; the clients authenticate with one client certificate
//! signed by an operator CA (`--client-ca` on every controller, the
//! service's `allow` list naming its subject).
//!
//! The clients are real gRPC clients through `berth_client::session` (what
//! the `berth` binary uses), each naming the three controllers as a host
//! list in its own order and opening a new connection per operation, so a
//! dead controller is failed over at connect.
//!
//! Afterwards: every name whose last operation was acknowledged with
//! nothing else on that name after it is in the state that operation left
//! (created: listed once, with the id it answered; removed: gone); two
//! acknowledged creates of a name with no removal between them answered
//! one id; every controller lists the same volumes; the `vfs` root holds
//! exactly the listed volumes; and TTL + 5 s after the kill, no intent is
//! left without a live lock (the dead controller's were settled).
//!
//! Skipped with one line without etcd (see `berth_tests::etcd`).

use berth_tests::etcd::Etcd;

#[test]
fn three_controllers_32_clients_one_killed_one_restarted() {
    let Some(etcd) = Etcd::start() else { return };
    #[cfg(feature = "etcd")]
    cluster::run(etcd);
    #[cfg(not(feature = "etcd"))]
    drop(etcd);
}

#[cfg(feature = "etcd")]
mod cluster {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use berth_client::pb;
    use berth_client::session::{Session, SessionOptions};
    use berth_tests::etcd::{fingerprint as cluster_pin, start_joined, Etcd};
    use berth_tests::openssl;
    use berth_tests::{listed, volume_dirs, Berthd};

    /// The controllers' lease TTL.
    const TTL: Duration = Duration::from_secs(3);
    /// Clients, and the names they share.
    const CLIENTS: usize = 32;
    const NAMES: usize = 16;
    /// How long the clients run; the kill and the restart happen within.
    const RUN: Duration = Duration::from_secs(20);

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Op {
        Create,
        Inspect,
        Remove,
    }

    #[derive(Clone, Debug)]
    struct Done {
        op: Op,
        name: String,
        start: Instant,
        end: Instant,
        /// The answer: the volume's id for a create or inspect, "" for a
        /// remove; `Err(code)` when not acknowledged.
        answer: Result<String, tonic::Code>,
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }

    /// One operation through a new session on the host list.
    async fn once(opts: &SessionOptions, op: Op, name: &str) -> Result<String, tonic::Code> {
        let session = Session::open(opts)
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let service = "local".to_owned();
        let answer = match op {
            Op::Create => session
                .volumes()
                .create_volume(pb::CreateVolumeRequest {
                    service,
                    name: name.to_owned(),
                    ..Default::default()
                })
                .await
                .map(|v| v.into_inner().id),
            Op::Inspect => session
                .volumes()
                .get_volume(pb::GetVolumeRequest {
                    service,
                    name: name.to_owned(),
                })
                .await
                .map(|v| v.into_inner().id),
            Op::Remove => session
                .volumes()
                .delete_volume(pb::DeleteVolumeRequest {
                    service,
                    name: name.to_owned(),
                    force: false,
                })
                .await
                .map(|_| String::new())
                // Gone already is what a remove asks for.
                .or_else(|status| match status.code() {
                    tonic::Code::NotFound => Ok(String::new()),
                    _ => Err(status),
                }),
        };
        answer.map_err(|status| {
            if !matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::Unavailable
            ) {
                println!("{op:?} {name}: {:?} {}", status.code(), status.message());
            }
            status.code()
        })
    }

    async fn timed(opts: &SessionOptions, op: Op, name: String) -> Done {
        let start = Instant::now();
        let answer = once(opts, op, &name).await;
        Done {
            op,
            name,
            start,
            end: Instant::now(),
            answer,
        }
    }

    /// Intents under the prefix that no lock holds, read at one revision.
    async fn unheld_intents(etcd: &mut etcd_client::Client) -> Vec<String> {
        let resp = etcd
            .get(
                "/berth/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("etcd get");
        let keys: Vec<String> = resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        keys.iter()
            .filter_map(|k| k.strip_prefix("/berth/intents/"))
            .filter(|rest| !keys.contains(&format!("/berth/locks/{rest}")))
            .map(str::to_owned)
            .collect()
    }

    /// The test, once etcd runs.
    pub fn run(etcd: Etcd) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = tmp.path().join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        openssl::operator_ca(&pki);
        let ca = pki.join("ca.pem");
        let (client_key, csr) = openssl::csr(&pki, "cluster", "cluster-user");
        openssl::operator_sign_client(&pki, &csr);
        let client_cert = pki.join("ext.crt");
        let root = tmp.path().join("shared-root");
        std::fs::create_dir_all(&root).expect("root");
        let config = tmp.path().join("berthd.toml");
        std::fs::write(
            &config,
            format!(
                "store = \"etcd://{}\"\n\n[etcd]\nlease_ttl = \"{}s\"\n\n[[services]]\nname = \"local\"\n\
                 driver = \"vfs\"\nallow = [\"cluster-user\"]\n[services.options]\nroot = \"{}\"\n",
                etcd.endpoint(),
                TTL.as_secs(),
                root.display()
            ),
        )
        .expect("config");
        let args = ["--config", s(&config), "--client-ca", s(&ca)];
        let first = Berthd::start_with(&args);
        let mut nodes = vec![];
        for i in 1..3 {
            let dir = tmp.path().join(format!("node-{i}"));
            nodes.push(start_joined(&first, &dir, &args));
        }
        nodes.insert(0, first);
        let hosts: Vec<String> = nodes.iter().map(|d| d.addr.to_string()).collect();
        let empty_config = tmp.path().join("client.toml");
        std::fs::write(&empty_config, "").expect("client config");
        let pin = cluster_pin(&nodes[0]).parse().expect("fingerprint");
        let options = |i: usize| SessionOptions {
            host: Some(
                (0..3)
                    .map(|k| hosts[(i + k) % 3].as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            config: Some(empty_config.clone()),
            fingerprint: Some(pin),
            timeout: Duration::from_secs(10),
            cert: Some(client_cert.clone()),
            key: Some(client_key.clone()),
            ..SessionOptions::default()
        };

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Done>>> = Arc::default();
        let began = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (opts, stop, log) = (options(i), Arc::clone(&stop), Arc::clone(&log));
                rt.spawn(async move {
                    let mut seed = 0x9E37_79B9_u64.wrapping_mul(i as u64 + 1);
                    while !stop.load(Ordering::SeqCst) {
                        seed = seed
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let name = format!("v{}", (seed >> 33) as usize % NAMES);
                        let op = match (seed >> 20) % 5 {
                            0 | 1 => Op::Create,
                            2 => Op::Inspect,
                            _ => Op::Remove,
                        };
                        let done = timed(&opts, op, name).await;
                        log.lock().expect("log").push(done);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();

        // Mid-run: one controller dies, and one is stopped and started again.
        std::thread::sleep(Duration::from_secs(5));
        nodes[0].kill9();
        let killed = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        nodes[1].signal("TERM");
        assert!(
            nodes[1].wait_exit(Duration::from_secs(35)).is_some(),
            "the stopped controller exited"
        );
        nodes[1].restart();

        // TTL + 5 s after the kill, while the clients still run: every intent
        // left is held by a live lock (the dead controller's were settled).
        let mut etcd_client = rt
            .block_on(etcd_client::Client::connect([etcd.endpoint()], None))
            .expect("connect to etcd");
        let due = killed + TTL + Duration::from_secs(5);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let orphans = rt.block_on(unheld_intents(&mut etcd_client));
        assert!(
            orphans.is_empty(),
            "intents left without a lock TTL + 5 s after the kill: {orphans:?}"
        );

        std::thread::sleep(RUN.saturating_sub(began.elapsed()));
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            rt.block_on(c).expect("client task");
        }
        // A last operation on every name, one client per name, after all the
        // others ended: each name's final state is then known.
        let finals: Vec<_> = (0..NAMES)
            .map(|n| {
                let opts = options(n);
                let op = if n % 2 == 0 { Op::Create } else { Op::Remove };
                rt.spawn(async move { timed(&opts, op, format!("v{n}")).await })
            })
            .collect();
        for f in finals {
            let done = rt.block_on(f).expect("final task");
            log.lock().expect("log").push(done);
        }
        let log = log.lock().expect("log").clone();

        // Figures.
        let acked = log.iter().filter(|d| d.answer.is_ok()).count();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for d in log.iter().filter(|d| d.answer.is_err()) {
            *codes.entry(format!("{:?}", d.answer)).or_default() += 1;
        }
        println!(
            "{} operations in {} s, {acked} acknowledged; not acknowledged: {codes:?}",
            log.len(),
            began.elapsed().as_secs()
        );
        assert!(acked > log.len() / 2, "most operations succeed: {codes:?}");

        // Every live controller lists the same volumes, once each; the vfs
        // root holds exactly those.
        let on: Vec<BTreeMap<String, String>> = nodes[1..]
            .iter()
            .map(|d| {
                listed(d)
                    .into_iter()
                    .map(|(n, v)| (n, v["id"].as_str().expect("id").to_owned()))
                    .collect()
            })
            .collect();
        assert_eq!(on[0], on[1], "both live controllers list the same volumes");
        let names: std::collections::BTreeSet<String> = on[0].keys().cloned().collect();
        assert_eq!(
            volume_dirs(&root),
            names,
            "the vfs root holds exactly the recorded volumes"
        );

        // Each name's last operation decides, when nothing overlapped it.
        let mut decided = 0;
        for n in 0..NAMES {
            let name = format!("v{n}");
            let muts: Vec<&Done> = log
                .iter()
                .filter(|d| d.name == name && d.op != Op::Inspect)
                .collect();
            let Some(last) = muts
                .iter()
                .filter(|d| d.answer.is_ok())
                .max_by_key(|d| d.end)
            else {
                continue;
            };
            if muts
                .iter()
                .any(|d| !std::ptr::eq(*d, *last) && d.end >= last.start)
            {
                continue;
            }
            decided += 1;
            match (last.op, &last.answer) {
                (Op::Create, Ok(id)) => assert_eq!(
                    on[0].get(&name),
                    Some(id),
                    "{name}: created last (acknowledged), so listed with that id"
                ),
                (Op::Remove, Ok(_)) => assert!(
                    !on[0].contains_key(&name),
                    "{name}: removed last (acknowledged), so gone"
                ),
                other => unreachable!("{other:?}"),
            }
        }
        println!("{decided} of {NAMES} names decided by a last acknowledged operation");
        assert_eq!(decided, NAMES, "the final round decides every name");

        // Two acknowledged creates of one name with no removal (acknowledged
        // or not) around or between them answered the same id.
        for a in log
            .iter()
            .filter(|d| d.op == Op::Create && d.answer.is_ok())
        {
            for b in log
                .iter()
                .filter(|d| d.op == Op::Create && d.name == a.name && d.answer.is_ok())
            {
                if a.end >= b.start {
                    continue;
                }
                let removed_between = log.iter().any(|r| {
                    r.op == Op::Remove && r.name == a.name && r.end >= a.start && r.start <= b.end
                });
                if !removed_between {
                    assert_eq!(a.answer, b.answer, "{}: one volume, one id", a.name);
                }
            }
        }

        // Nothing left behind in etcd: no intents, no locks.
        let left = rt.block_on(async {
            let resp = etcd_client
                .get(
                    "/berth/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .expect("etcd get");
            resp.kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .filter(|k| k.starts_with("/berth/intents/") || k.starts_with("/berth/locks/"))
                .collect::<Vec<_>>()
        });
        assert!(left.is_empty(), "{left:?}");
        let settled = nodes[1..]
            .iter()
            .flat_map(|d| {
                d.log()
                    .lines()
                    .filter(|l| l.contains("interrupted by its controller's death"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .count();
        println!("operations the killed controller left, settled by the others: {settled}");
        drop(etcd);
    }
}
