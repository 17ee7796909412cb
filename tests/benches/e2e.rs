//! Berth against the ceiling of its own stack, measured in one run on one
//! machine: `cargo bench -p berth-tests --bench e2e`.
//!
//! The ceiling is a bare tonic + rustls server (ECDSA P-256 self-signed,
//! TLS 1.3) answering `ListVolumes` with a canned page of 10 volumes; for
//! durable writes it is the disk itself (4 KiB write + fsync rounds). Berth
//! is `berthd` on its defaults: TLS, authentication, the sled store, a `vfs`
//! service. Both are driven by the same client code (`berth_client::connect`
//! plus a bearer token). Prints a table: figure, Berth, ceiling, ratio.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_client::connect::{self, ServerTrust};
use berth_client::pinning::{Fingerprint, PinSource};
use berth_client::session::Bearer;
use berth_proto::v1 as pb;
use berth_tests::{bin, Berthd};
use tonic::transport::Channel;

/// How long each throughput figure runs.
const RUN: Duration = Duration::from_secs(3);
const VOLUMES_LISTED: usize = 10;
const BIG: usize = 100_000;

type Client = pb::volumes_client::VolumesClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;

/// The bearer `berth` presents, carrying `token`.
fn bearer(token: &str) -> Bearer {
    Bearer::new(Some(token)).expect("token is ASCII")
}

/// A server the same client code can reach: address, pin, token.
#[derive(Clone)]
struct Target {
    host: String,
    pin: Fingerprint,
    bearer: Bearer,
}

impl Target {
    async fn client(&self) -> Client {
        let trust = ServerTrust::Pinned {
            fingerprint: self.pin,
            source: PinSource::Flag,
        };
        let channel = connect::connect(&self.host, &trust, None, Duration::from_secs(5))
            .await
            .expect("connect");
        pb::volumes_client::VolumesClient::with_interceptor(channel, self.bearer.clone())
    }
}

fn list_request() -> pb::ListVolumesRequest {
    pb::ListVolumesRequest {
        service: "local".into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- ceiling

/// The ceiling: answers ListVolumes with a fixed page, nothing else.
struct Ceiling {
    page: pb::ListVolumesResponse,
}

fn sample_page() -> pb::ListVolumesResponse {
    let volumes = (0..VOLUMES_LISTED)
        .map(|i| pb::Volume {
            id: format!("00000000-0000-4000-8000-{i:012}"),
            name: format!("bench-{i}"),
            service: "local".into(),
            driver: "vfs".into(),
            size_bytes: 1 << 30,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            options: Default::default(),
            status: pb::VolumeStatus::Available as i32,
            fields: [(
                "path".to_owned(),
                format!("/var/lib/berth/volumes/bench-{i}"),
            )]
            .into(),
            attachments: vec![],
            source: String::new(),
            used_bytes: None,
        })
        .collect();
    pb::ListVolumesResponse {
        volumes,
        next_page_token: String::new(),
    }
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for Ceiling {
    type CreateVolumeWithProgressStream =
        tokio_stream::Empty<Result<pb::VolumeProgress, tonic::Status>>;
    type CopyVolumeWithProgressStream =
        tokio_stream::Empty<Result<pb::VolumeProgress, tonic::Status>>;
    async fn create_volume_with_progress(
        &self,
        _: tonic::Request<pb::CreateVolumeRequest>,
    ) -> Result<tonic::Response<Self::CreateVolumeWithProgressStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn copy_volume_with_progress(
        &self,
        _: tonic::Request<pb::CopyVolumeRequest>,
    ) -> Result<tonic::Response<Self::CopyVolumeWithProgressStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn list_volumes(
        &self,
        _: tonic::Request<pb::ListVolumesRequest>,
    ) -> Result<tonic::Response<pb::ListVolumesResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.page.clone()))
    }
    async fn get_volume(
        &self,
        _: tonic::Request<pb::GetVolumeRequest>,
    ) -> Result<tonic::Response<pb::Volume>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn create_volume(
        &self,
        _: tonic::Request<pb::CreateVolumeRequest>,
    ) -> Result<tonic::Response<pb::Volume>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn delete_volume(
        &self,
        _: tonic::Request<pb::DeleteVolumeRequest>,
    ) -> Result<tonic::Response<pb::DeleteVolumeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn attach_volume(
        &self,
        _: tonic::Request<pb::AttachVolumeRequest>,
    ) -> Result<tonic::Response<pb::AttachVolumeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn detach_volume(
        &self,
        _: tonic::Request<pb::DetachVolumeRequest>,
    ) -> Result<tonic::Response<pb::Volume>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn copy_volume(
        &self,
        _: tonic::Request<pb::CopyVolumeRequest>,
    ) -> Result<tonic::Response<pb::Volume>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
}

/// Starts the ceiling server on loopback; returns its target.
async fn start_ceiling() -> Target {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let pin = Fingerprint::of(cert.der());
    let identity = tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("tls")
            .add_service(pb::volumes_server::VolumesServer::new(Ceiling {
                page: sample_page(),
            }))
            .serve_with_incoming(nodelay(listener))
            .await
            .expect("ceiling server");
    });
    Target {
        host: addr.to_string(),
        pin,
        bearer: bearer("not-checked-by-the-ceiling"),
    }
}

/// Accepted connections with TCP_NODELAY, as berthd sets it (tonic's own
/// `tcp_nodelay` applies only when it binds the listener itself).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

// ---------------------------------------------------------------- berthd

/// Starts berthd on its defaults with 10 volumes; returns it and its target.
async fn start_berthd() -> (Berthd, Target) {
    let d = Berthd::start_logging(&[], "warn");
    let target = berthd_target(&d);
    let mut c = target.client().await;
    for i in 0..VOLUMES_LISTED {
        c.create_volume(pb::CreateVolumeRequest {
            service: "local".into(),
            name: format!("bench-{i}"),
            size_bytes: 1 << 30,
            ..Default::default()
        })
        .await
        .expect("seed volume");
    }
    (d, target)
}

fn berthd_target(d: &Berthd) -> Target {
    let fp = run_text(
        Command::new(bin("berthd"))
            .arg("fingerprint")
            .arg("--data-dir")
            .arg(&d.data_dir),
    );
    let token = d.admin_token();
    Target {
        host: d.addr.to_string(),
        pin: fp.trim().parse().expect("fingerprint"),
        bearer: bearer(&token),
    }
}

fn run_text(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------- measures

/// Rounds counted by spawned tasks that run until RUN is over.
struct Meter {
    done: Arc<AtomicU64>,
    start: Instant,
    handles: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
}

/// What a [`Meter`] measured: the rate, and the call times its tasks kept.
struct Measured {
    per_second: f64,
    /// Sorted, shortest first.
    samples: Vec<Duration>,
}

impl Measured {
    /// The `p`-th percentile (0..=100) of the kept call times.
    fn percentile(&self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.samples.len() - 1) as f64).round() as usize;
        self.samples[rank.min(self.samples.len() - 1)]
    }
}

impl Meter {
    fn start() -> Self {
        Self {
            done: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            handles: Vec::new(),
        }
    }

    /// Spawns the task `task(deadline, done)`; it adds one to `done` a round
    /// and returns the call times it kept (none, if it keeps none).
    fn spawn<F>(&mut self, task: impl FnOnce(Instant, Arc<AtomicU64>) -> F)
    where
        F: std::future::Future<Output = Vec<Duration>> + Send + 'static,
    {
        let task = task(self.start + RUN, Arc::clone(&self.done));
        self.handles.push(tokio::spawn(task));
    }

    /// Waits for every task: rounds per second and the kept call times.
    async fn finish(self) -> Measured {
        let mut samples = Vec::new();
        for h in self.handles {
            samples.extend(h.await.expect("task"));
        }
        samples.sort_unstable();
        Measured {
            per_second: self.done.load(Ordering::Relaxed) as f64
                / self.start.elapsed().as_secs_f64(),
            samples,
        }
    }
}

/// `conns` connections to `target`.
async fn clients(target: &Target, conns: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(target.client().await);
    }
    clients
}

/// Calls per second (and each call's time): `tasks` loops spread over
/// `conns` connections, for RUN.
async fn unary_rate(target: &Target, tasks: usize, conns: usize) -> Measured {
    let clients = clients(target, conns).await;
    let mut meter = Meter::start();
    for i in 0..tasks {
        let mut c = clients[i % conns].clone();
        meter.spawn(|deadline, done| async move {
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let call = Instant::now();
                c.list_volumes(list_request()).await.expect("list");
                times.push(call.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            times
        });
    }
    meter.finish().await
}

/// New connections per second (TCP + full TLS handshake + one call).
async fn connection_rate(target: &Target, tasks: usize) -> f64 {
    let mut meter = Meter::start();
    for _ in 0..tasks {
        let target = target.clone();
        meter.spawn(|deadline, done| async move {
            while Instant::now() < deadline {
                let mut c = target.client().await;
                c.list_volumes(list_request()).await.expect("list");
                done.fetch_add(1, Ordering::Relaxed);
            }
            Vec::new()
        });
    }
    meter.finish().await.per_second
}

/// Acknowledged (durable) create + delete pairs per second, with the time of
/// each CreateVolume call.
async fn create_delete_rate(target: &Target, tasks: usize, conns: usize) -> Measured {
    let clients = clients(target, conns).await;
    let mut meter = Meter::start();
    for t in 0..tasks {
        let mut c = clients[t % conns].clone();
        meter.spawn(|deadline, done| async move {
            let mut times = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let name = format!("churn-{tasks}-{t}-{i}");
                let call = Instant::now();
                c.create_volume(pb::CreateVolumeRequest {
                    service: "local".into(),
                    name: name.clone(),
                    ..Default::default()
                })
                .await
                .expect("create");
                times.push(call.elapsed());
                c.delete_volume(pb::DeleteVolumeRequest {
                    service: "local".into(),
                    name,
                    force: false,
                })
                .await
                .expect("delete");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            times
        });
    }
    meter.finish().await
}

/// fsync-class system calls (fsync, fdatasync, syncfs) berthd makes per
/// acknowledged create+delete pair, one pair at a time, counted by strace
/// attached to the running process; `None` without strace (or ptrace).
async fn fsyncs_per_pair(target: &Target, pid: u32, pairs: u64) -> Option<f64> {
    let out = tempfile::NamedTempFile::new().expect("strace output");
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync,syncfs", "-o"])
        .arg(out.path())
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // strace attaches to every thread before it counts anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = target.client().await;
    for i in 0..pairs {
        let name = format!("counted-{i}");
        c.create_volume(pb::CreateVolumeRequest {
            service: "local".into(),
            name: name.clone(),
            ..Default::default()
        })
        .await
        .expect("create");
        c.delete_volume(pb::DeleteVolumeRequest {
            service: "local".into(),
            name,
            force: false,
        })
        .await
        .expect("delete");
    }
    // SIGINT makes strace detach and write its summary.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let summary = std::fs::read_to_string(out.path()).ok()?;
    let calls: u64 = summary
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.last() {
                Some(&("fsync" | "fdatasync" | "syncfs")) => fields.get(3)?.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum();
    (calls > 0).then(|| calls as f64 / pairs as f64)
}

/// The disk's ceiling: 4 KiB write + fsync rounds per second, `tasks` at once,
/// each on its own file in `dir`.
fn fsync_rate(dir: &Path, tasks: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + RUN;
    let threads: Vec<_> = (0..tasks)
        .map(|t| {
            let (path, done) = (dir.join(format!("fsync-{t}")), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut f = std::fs::File::create(&path).expect("file");
                let block = [7u8; 4096];
                while Instant::now() < deadline {
                    f.write_all(&block).expect("write");
                    f.sync_data().expect("fsync");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Median wall time of `runs` runs of a command.
fn median_wall(runs: usize, mut make: impl FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let mut cmd = make();
            let start = Instant::now();
            let out = cmd.stdin(Stdio::null()).output().expect("run");
            let took = start.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            took
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// The one-shot floor: this binary re-run as a minimal client process doing
/// one TLS call with a current-thread runtime.
fn oneshot(host: &str, pin: &str, token: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let target = Target {
            host: host.to_owned(),
            pin: pin.parse().expect("pin"),
            bearer: bearer(token),
        };
        let mut c = target.client().await;
        let page = c
            .list_volumes(list_request())
            .await
            .expect("list")
            .into_inner();
        println!("{}", page.volumes.len());
    });
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `n` volume records straight into a fresh data directory's store
/// (the same store berthd opens), so paging can be measured without
/// creating 100,000 directories first.
fn seed_records(data_dir: &Path, n: usize) {
    use berth_controller::volumes::store::{Store, VolumeKey, VolumeRecord};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let store = Store::open(&data_dir.join("db")).expect("store");
        for i in 0..n {
            let name = format!("v{i:06}");
            let record = VolumeRecord {
                id: format!("00000000-0000-4000-8000-{i:012}"),
                name: name.clone(),
                service: "local".into(),
                driver: "vfs".into(),
                size_bytes: 1 << 30,
                created_at_ms: 1_790_000_000_000,
                options: Default::default(),
                fields: [("path".to_owned(), format!("/var/lib/berth/volumes/{name}"))].into(),
                attachments: vec![],
                source: None,
            };
            store
                .commit(&VolumeKey::new("local", &name), Some(&record))
                .expect("commit");
        }
        store.flush().await.expect("flush");
    });
}

struct Row {
    figure: String,
    berth: String,
    ceiling: String,
    ratio: String,
    target: String,
}

fn row(
    figure: &str,
    berth: f64,
    ceiling: f64,
    unit: &str,
    target: &str,
    higher_is_better: bool,
) -> Row {
    let _ = higher_is_better;
    let ratio = berth / ceiling;
    Row {
        figure: figure.into(),
        berth: format!("{berth:.1} {unit}"),
        ceiling: format!("{ceiling:.1} {unit}"),
        ratio: format!("{ratio:.2}"),
        target: target.into(),
    }
}

fn print_table(rows: &[Row]) {
    let widths = [
        rows.iter()
            .map(|r| r.figure.len())
            .max()
            .unwrap_or(0)
            .max(6),
        rows.iter().map(|r| r.berth.len()).max().unwrap_or(0).max(5),
        rows.iter()
            .map(|r| r.ceiling.len())
            .max()
            .unwrap_or(0)
            .max(7),
        5,
    ];
    println!(
        "| {:w0$} | {:>w1$} | {:>w2$} | {:>w3$} | target |",
        "figure",
        "Berth",
        "ceiling",
        "ratio",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3]
    );
    println!(
        "| {} | {}: | {}: | {}: | --- |",
        "-".repeat(widths[0]),
        "-".repeat(widths[1] - 1),
        "-".repeat(widths[2] - 1),
        "-".repeat(widths[3] - 1)
    );
    for r in rows {
        println!(
            "| {:w0$} | {:>w1$} | {:>w2$} | {:>w3$} | {} |",
            r.figure,
            r.berth,
            r.ceiling,
            r.ratio,
            r.target,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("oneshot") {
        oneshot(&args[2], &args[3], &args[4]);
        return;
    }
    // `e2e calls HOST PIN TOKEN N`: N sequential ListVolumes calls on one
    // connection, to drive a controller under a profiler.
    if args.get(1).map(String::as_str) == Some("calls") {
        let n: usize = args[5].parse().expect("count");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let target = Target {
                host: args[2].clone(),
                pin: args[3].parse().expect("pin"),
                bearer: bearer(&args[4]),
            };
            let mut c = target.client().await;
            for _ in 0..n {
                c.list_volumes(list_request()).await.expect("list");
            }
        });
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let started = Instant::now();
    let _ = bin("berthd"); // builds the binaries once, in this profile
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();

    let (d, berth) = rt.block_on(start_berthd());
    let ceiling = rt.block_on(start_ceiling());
    eprintln!("measuring unary calls...");
    for (tasks, conns, label) in [(1, 1, "1 caller"), (64, 4, "64 in flight / 4 conns")] {
        let b = rt.block_on(unary_rate(&berth, tasks, conns)).per_second;
        let c = rt.block_on(unary_rate(&ceiling, tasks, conns)).per_second;
        rows.push(row(
            &format!("1. ListVolumes(10) calls/s, {label}"),
            b,
            c,
            "/s",
            if tasks == 64 { ">= 0.9" } else { "" },
            true,
        ));
    }
    eprintln!("measuring new connections...");
    let b = rt.block_on(connection_rate(&berth, 4));
    let c = rt.block_on(connection_rate(&ceiling, 4));
    rows.push(row(
        "2. new TLS connections + 1 call /s, 4 at a time",
        b,
        c,
        "/s",
        ">= 0.9",
        true,
    ));

    eprintln!("measuring durable create+delete...");
    let disk_dir = d.data_dir.join("volumes");
    let mut creates_loaded = None;
    for (tasks, conns) in [(1, 1), (32, 4)] {
        let measured = rt.block_on(create_delete_rate(&berth, tasks, conns));
        let c = fsync_rate(&disk_dir, tasks);
        rows.push(row(
            &format!("3. create+delete pairs/s (vs 4 KiB write+fsync rounds/s), {tasks} in flight"),
            measured.per_second,
            c,
            "/s",
            if tasks == 32 { ">= 0.5" } else { "" },
            true,
        ));
        if tasks == 32 {
            creates_loaded = Some(measured);
        }
    }
    let fsyncs = rt.block_on(fsyncs_per_pair(&berth, d.pid(), 100));
    eprintln!("measuring latency under load...");
    let lists_loaded = rt.block_on(unary_rate(&berth, 32, 4));

    eprintln!("measuring cold CLI processes...");
    let token = std::fs::read_to_string(d.data_dir.join("auth/admin.token")).expect("token");
    let floor = median_wall(21, || {
        let mut c = Command::new(std::env::current_exe().expect("exe"));
        c.args(["oneshot", &berth.host, &berth.pin.to_string(), token.trim()]);
        c
    });
    let from_config = median_wall(21, || d.berth_cmd(&["volume", "list"]));
    // The same, with the pin in the sled trust store instead of the config.
    let home2 = d.path("home-store");
    std::fs::create_dir_all(&home2).expect("home");
    let config2 = home2.join("config.toml");
    std::fs::write(
        &config2,
        format!(
            "host = \"{h}\"\n[controllers.\"{h}\"]\ntoken_file = \"{t}\"\n",
            h = berth.host,
            t = d.data_dir.join("auth/admin.token").display()
        ),
    )
    .expect("config");
    let env2 = |c: &mut Command| {
        c.env("HOME", &home2)
            .env("XDG_CONFIG_HOME", home2.join(".config"))
            .env("XDG_DATA_HOME", home2.join(".local/share"))
            .env("BERTH_CONFIG", &config2);
    };
    let mut add = Command::new(bin("berth"));
    env2(&mut add);
    run_text(add.args(["trust", "add", &berth.host, &berth.pin.to_string()]));
    let from_store = median_wall(21, || {
        let mut c = Command::new(bin("berth"));
        env2(&mut c);
        c.args(["volume", "list"]);
        c
    });
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    rows.push(row(
        "4. cold `berth volume list`, pin in config (ms)",
        ms(from_config),
        ms(floor),
        "ms",
        "<= 1.3",
        false,
    ));
    rows.push(row(
        "4. cold `berth volume list`, pin in sled store (ms)",
        ms(from_store),
        ms(floor),
        "ms",
        "<= 2.0",
        false,
    ));
    drop(d);

    eprintln!("measuring 100,000 volumes...");
    let idle = Berthd::start_logging(&[], "warn");
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(idle.pid());
    drop(idle);
    // A data dir seeded with 100,000 records, then berthd on it.
    let seeded = tempfile::tempdir().expect("tempdir");
    let data = seeded.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    seed_records(&data, BIG);
    let big = Berthd::start_in(&data, &[], "error");
    let target = berthd_target(&big);
    let (page_time, count) = rt.block_on(async {
        let mut c = target.client().await;
        let start = Instant::now();
        let mut token = String::new();
        let mut count = 0usize;
        loop {
            let page = c
                .list_volumes(pb::ListVolumesRequest {
                    service: "local".into(),
                    max_entries: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .expect("page")
                .into_inner();
            count += page.volumes.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        (start.elapsed(), count)
    });
    assert_eq!(count, BIG, "every seeded volume is listed");
    let big_rss = rss_kib(big.pid());
    let mib = |k: u64| k as f64 / 1024.0;

    println!();
    println!(
        "Berth benchmark ({} s run; figures are medians or rates over {} s)",
        started.elapsed().as_secs(),
        RUN.as_secs()
    );
    print_table(&rows);
    println!();
    println!("| figure | Berth | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| 5. page through {BIG} volumes (1000 per page) | {:.0} ms | < 1000 ms |",
        ms(page_time)
    );
    println!(
        "| 5. berthd resident memory, idle | {:.1} MiB | < 30 MiB |",
        mib(idle_rss)
    );
    println!("| 5. berthd resident memory, holding {BIG} records after listing them | {:.1} MiB | < 150 MiB |", mib(big_rss));
    match fsyncs {
        Some(n) => {
            println!("| 3. fsync calls per create+delete pair, 1 in flight (strace) | {n:.1} | |")
        }
        None => println!(
            "| 3. fsync calls per create+delete pair, 1 in flight | strace not available | |"
        ),
    }
    println!();
    println!("| latency at 32 in flight / 4 conns | rate | p50 | p99 | p99/p50 | target |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for (label, measured, target) in [
        (
            "CreateVolume (rate: create+delete pairs/s)",
            creates_loaded.as_ref(),
            "",
        ),
        ("ListVolumes(10)", Some(&lists_loaded), "p99 <= 10x p50"),
    ] {
        let Some(m) = measured else { continue };
        let (p50, p99) = (m.percentile(50.0), m.percentile(99.0));
        println!(
            "| {label} | {:.1} /s | {:.2} ms | {:.2} ms | {:.1} | {target} |",
            m.per_second,
            ms(p50),
            ms(p99),
            p99.as_secs_f64() / p50.as_secs_f64().max(f64::MIN_POSITIVE)
        );
    }
    println!();
    println!("ratios: Berth / ceiling (higher is better for rates, lower for times)");
}
