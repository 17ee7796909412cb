//! Berth against the ceiling of its own stack, measured in one run on one
//! machine: `cargo bench -p berth-tests --bench e2e`.
//!
//! The ceiling is a bare tonic + rustls server (ECDSA P-256 self-signed,
//! TLS 1.3) answering `ListVolumes` with a canned page of 10 volumes; for
//! durable writes it is the disk itself (4 KiB write + fsync rounds). Berth
//! is `berthd` on its defaults: TLS, authentication, the sled store, a `vfs`
//! service. Both are driven by the same client code (`berth_client::connect`
//! plus a bearer token). Prints a table: figure, Berth, ceiling, ratio.
//! The fronts put Berth behind its plugins beside their peers: CSI's
//! hostpathplugin, Docker's `local` volume driver (a private dockerd, as the
//! Docker suite starts it), etcd's own put rate.
//!
//! `BERTH_BENCH_ONLY=scale`, `=unary`, `=cli`, `=durable`, `=docker` or
//! `=csi` runs only those figures.

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
use berth_tests::docker::{busybox, DockerPlugin, Dockerd, MountSweep, PluginSpec};
use berth_tests::{bin, Berthd};
use tonic::transport::Channel;

/// How long each throughput figure runs.
const RUN: Duration = Duration::from_secs(3);
const VOLUMES_LISTED: usize = 10;

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
    async fn create_volumes(
        &self,
        _: tonic::Request<pb::CreateVolumesRequest>,
    ) -> Result<tonic::Response<pb::CreateVolumesResponse>, tonic::Status> {
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
    seed(&target).await;
    (d, target)
}

/// Creates the volumes the unary figures list.
async fn seed(target: &Target) {
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
    /// How long its tasks run.
    run: Duration,
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
        Self::start_for(RUN)
    }

    /// A meter whose tasks run for `run` instead of RUN.
    fn start_for(run: Duration) -> Self {
        Self {
            done: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            run,
            handles: Vec::new(),
        }
    }

    /// Spawns the task `task(deadline, done)`; it adds one to `done` a round
    /// and returns the call times it kept (none, if it keeps none).
    fn spawn<F>(&mut self, task: impl FnOnce(Instant, Arc<AtomicU64>) -> F)
    where
        F: std::future::Future<Output = Vec<Duration>> + Send + 'static,
    {
        let task = task(self.start + self.run, Arc::clone(&self.done));
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
async fn create_delete_rate(
    target: &Target,
    tasks: usize,
    conns: usize,
    run: Duration,
) -> Measured {
    let clients = clients(target, conns).await;
    let mut meter = Meter::start_for(run);
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

/// fsync-class system calls (fsync, fdatasync, syncfs, and sync_file_range,
/// which is how sled flushes its log on Linux) berthd makes per
/// acknowledged create+delete pair, one pair at a time, counted by strace
/// attached to the running process; `None` without strace (or ptrace).
async fn fsyncs_per_pair(target: &Target, pid: u32, pairs: u64) -> Option<f64> {
    let out = tempfile::NamedTempFile::new().expect("strace output");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync,syncfs,sync_file_range",
            "-o",
        ])
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
                Some(&("fsync" | "fdatasync" | "syncfs" | "sync_file_range")) => {
                    fields.get(3)?.parse::<u64>().ok()
                }
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

/// A `berthd` whose data directory, and so its `vfs` root and sled store,
/// are on tmpfs (a fresh directory under `/dev/shm`), where `fsync` and
/// sled's `sync_file_range` cost nothing: the same path as on disk without
/// the disk. Stopped, then its directory removed, when dropped (fields drop
/// in order).
struct TmpfsBerthd {
    _berthd: Berthd,
    _dir: tempfile::TempDir,
}

impl TmpfsBerthd {
    /// Starts it; `None`, said in one line, without a writable `/dev/shm`.
    fn start() -> Option<(Self, Target)> {
        let dir = match tempfile::Builder::new()
            .prefix("berth-bench-")
            .tempdir_in("/dev/shm")
        {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("skipping figure 3 on tmpfs: cannot make a directory in /dev/shm: {e}");
                return None;
            }
        };
        let berthd = Berthd::start_in(&dir.path().join("data"), &[], "warn");
        let target = berthd_target(&berthd);
        Some((
            Self {
                _berthd: berthd,
                _dir: dir,
            },
            target,
        ))
    }
}

/// Figure 3's figures besides its table rows.
struct Durable {
    /// The pair rate and CreateVolume times at 32 in flight, on disk.
    loaded: Measured,
    /// fsync-class calls per pair, 1 in flight, when strace runs.
    fsyncs: Option<f64>,
    /// (in flight, pairs/s on disk, pairs/s on tmpfs), when tmpfs is there.
    tmpfs: Vec<(usize, f64, f64)>,
}

/// Figure 3: durable create+delete pairs on `d` against the disk's 4 KiB
/// write+fsync rounds, at 1 and 32 in flight, and the same pairs on a
/// second `berthd` on tmpfs against the same disk rounds: what the path
/// reaches when syncing costs nothing, so whether the disk or the CPU
/// limits it. Pushes the table rows; returns the rest.
fn durable_figures(
    rt: &tokio::runtime::Runtime,
    d: &Berthd,
    berth: &Target,
    rows: &mut Vec<Row>,
) -> Durable {
    eprintln!("measuring durable create+delete (on disk, then on tmpfs)...");
    let tmpfs = TmpfsBerthd::start();
    let disk_dir = d.data_dir.join("volumes");
    let mut loaded = None;
    let mut compared = Vec::new();
    for (tasks, conns) in [(1, 1), (32, 4)] {
        let measured = rt.block_on(create_delete_rate(berth, tasks, conns, RUN));
        let c = fsync_rate(&disk_dir, tasks);
        rows.push(row(
            &format!("3. create+delete pairs/s (vs 4 KiB write+fsync rounds/s), {tasks} in flight"),
            measured.per_second,
            c,
            "/s",
            if tasks == 32 { ">= 0.5" } else { "" },
            true,
        ));
        if let Some((_, target)) = &tmpfs {
            let on_tmpfs = rt.block_on(create_delete_rate(target, tasks, conns, RUN));
            rows.push(row(
                &format!(
                    "3. the same pairs on tmpfs (no fsync cost; vs the disk's rounds), {tasks} in flight"
                ),
                on_tmpfs.per_second,
                c,
                "/s",
                "",
                true,
            ));
            compared.push((tasks, measured.per_second, on_tmpfs.per_second));
        }
        if tasks == 32 {
            loaded = Some(measured);
        }
    }
    drop(tmpfs);
    let fsyncs = rt.block_on(fsyncs_per_pair(berth, d.pid(), 100));
    Durable {
        loaded: loaded.expect("measured at 32 in flight"),
        fsyncs,
        tmpfs: compared,
    }
}

/// Figure 3's lines of the second table: disk against tmpfs, and the
/// fsync-class calls per pair.
fn print_durable(durable: &Durable) {
    if durable.tmpfs.is_empty() {
        println!("| 3. create+delete pairs/s, disk vs tmpfs | skipped (no /dev/shm) | |");
    }
    for (tasks, disk, tmpfs) in &durable.tmpfs {
        println!(
            "| 3. create+delete pairs/s on disk vs on tmpfs (what syncing costs), {tasks} in flight | {disk:.1} /s vs {tmpfs:.1} /s = {:.2} | |",
            disk / tmpfs
        );
    }
    match durable.fsyncs {
        Some(n) => {
            println!("| 3. fsync-class calls (with sled's sync_file_range) per create+delete pair, 1 in flight (strace) | {n:.1} | |")
        }
        None => println!(
            "| 3. fsync calls per create+delete pair, 1 in flight | strace not available | |"
        ),
    }
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
/// one TLS call with a current-thread runtime: the `ListVolumes` that
/// `berth volume list` makes (with usage).
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
        // The request `berth volume list` sends (its USED column asks for
        // usage), so both sides of figure 4 ask the server for the same work.
        let page = c
            .list_volumes(pb::ListVolumesRequest {
                with_usage: true,
                ..list_request()
            })
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

// ---------------------------------------------------------------- fronts

/// How many CreateVolume calls each CSI p50 is taken over.
const CSI_CALLS: usize = 101;

/// The CSI figure: CreateVolume p50 through `berth plugin csi`, straight
/// to `berthd` (the same volume request, without the plugin), and through
/// the reference hostpathplugin.
struct CsiFront {
    plugin: Duration,
    direct: Duration,
    reference: Duration,
}

/// The p50 of `n` creates of the volume `berth plugin csi` asks for (1 MiB
/// on `local`), sent straight to `berthd` over one kept connection, then
/// deleted: what the plugin's own path adds is the difference.
async fn direct_create_p50(target: &Target, n: usize) -> Duration {
    let mut c = target.client().await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        c.create_volume(pb::CreateVolumeRequest {
            service: "local".into(),
            name: format!("direct-{i}"),
            size_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .expect("create");
        times.push(t.elapsed());
    }
    for i in 0..n {
        c.delete_volume(pb::DeleteVolumeRequest {
            service: "local".into(),
            name: format!("direct-{i}"),
            force: false,
        })
        .await
        .expect("delete");
    }
    times.sort();
    times[n / 2]
}

/// CreateVolume p50 through `berth plugin csi` (against `d`'s `local`
/// vfs service), straight to `d`, and through the reference
/// hostpathplugin, the CSI ones over their unix sockets; `None` (with one
/// line) without the hostpathplugin.
fn csi_front(rt: &tokio::runtime::Runtime, d: &Berthd) -> Option<CsiFront> {
    use berth_tests::csi::{connect, create_p50, Hostpath, Plugin};
    let hostpath = std::env::var_os("BERTH_CSI_HOSTPATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/hostpathplugin")
        });
    if !hostpath.is_file() {
        eprintln!(
            "skipped the CSI figure: no hostpathplugin at {} (set BERTH_CSI_HOSTPATH=PATH)",
            hostpath.display()
        );
        return None;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(d, work.path(), &[], &[]);
    let (_reference, endpoint) = Hostpath::start(&hostpath, work.path());
    let socket = std::path::PathBuf::from(endpoint.trim_start_matches("unix://"));
    let params = std::collections::HashMap::from([("service".to_owned(), "local".to_owned())]);
    let target = berthd_target(d);
    Some(rt.block_on(async {
        let plugin = create_p50(plugin.channel().await, params, CSI_CALLS).await;
        let direct = direct_create_p50(&target, CSI_CALLS).await;
        let reference = create_p50(connect(&socket).await, Default::default(), CSI_CALLS).await;
        CsiFront {
            plugin,
            direct,
            reference,
        }
    }))
}

/// How many `docker run`s on an existing volume each Docker median is
/// taken over (per driver, alternating).
const DOCKER_RUNS: usize = 15;
/// How many fresh volumes each first-use median is taken over.
const DOCKER_FIRST_USES: usize = 5;

/// What the Docker figure measured: medians of wall time.
struct DockerFront {
    /// `docker run --rm -v VOL:/data IMAGE true`, VOL a Berth volume.
    berth_run: Duration,
    /// The same, VOL a volume of Docker's `local` driver.
    local_run: Duration,
    /// `docker volume create` (Berth) and that first run.
    berth_first: Duration,
    /// `docker volume create` (`local`) and that first run.
    local_first: Duration,
}

/// `docker run --rm -v VOL:/data IMAGE true` through a private dockerd
/// (`berth_tests::docker`), VOL a Berth volume (`berth plugin docker`
/// against `d`'s `local` vfs service, with the admin token) or a volume of
/// Docker's `local` driver: the median of [`DOCKER_RUNS`] runs each on a
/// volume created beforehand (alternating the two), and of
/// [`DOCKER_FIRST_USES`] `docker volume create` + first run. `Err` (one
/// line) where Docker cannot run here or a step fails; whatever it started
/// is stopped, and the spec file removed, either way.
fn docker_front(d: &Berthd) -> Result<DockerFront, String> {
    let busybox =
        busybox().ok_or("busybox is not installed (Debian: apt-get install busybox-static)")?;
    // Short paths: unix socket names are limited to 108 bytes.
    let work = tempfile::Builder::new()
        .prefix("bbd")
        .tempdir_in("/tmp")
        .map_err(|e| format!("tempdir: {e}"))?;
    let mount_root = work.path().join("mnt");
    // Dropped after the engine and the plugin: unmounts whatever the
    // plugin left under its mount root, before the directory goes.
    let _sweep = MountSweep(mount_root.clone());
    let dockerd = Dockerd::start()?;
    // The plugin's config: a private mount root and an instance, then the
    // client config berthd installed for this user (host, pin, token).
    let client = d.home.join(".config/berth/config.toml");
    let client = std::fs::read_to_string(&client)
        .map_err(|e| format!("cannot read {}: {e}", client.display()))?;
    let config = work.path().join("plugin.toml");
    std::fs::write(
        &config,
        format!("mount_root = {mount_root:?}\ninstance = \"bench-node\"\n{client}"),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let socket = work.path().join("p.sock");
    let plugin = DockerPlugin::start(d, &config, &socket, &work.path().join("plugin.log"))?;
    let spec = PluginSpec::install("berth-bench", &socket)?;
    let volumes = berth_tests::vfs_root(d);
    let measured = docker_runs(&dockerd, &busybox, spec.name(), &volumes);
    // The engine first: its containers' unmounts still reach the plugin.
    drop(dockerd);
    drop(spec);
    drop(plugin);
    measured
}

/// The timed part of [`docker_front`], against a running engine whose
/// Berth plugin is called `driver`, its volumes' directories in `volumes`.
fn docker_runs(
    dockerd: &Dockerd,
    busybox: &Path,
    driver: &str,
    volumes: &Path,
) -> Result<DockerFront, String> {
    let image = dockerd.busybox_image(busybox)?;
    let timed = |args: &[&str]| -> Result<Duration, String> {
        let start = Instant::now();
        dockerd.run(args)?;
        Ok(start.elapsed())
    };
    let run = |volume: &str| -> Result<Duration, String> {
        let mount = format!("{volume}:/data");
        timed(&["run", "--rm", "-v", &mount, &image, "true"])
    };
    // The engine's first container is slower than any after it.
    dockerd.run(&["run", "--rm", &image, "true"])?;
    let (mut berth_first, mut local_first) = (Vec::new(), Vec::new());
    for i in 0..DOCKER_FIRST_USES {
        let berth = format!("berth-{i}");
        let create = ["volume", "create", "-d", driver, "--opt", "service=local"];
        let took = timed(&[&create[..], &[berth.as_str()]].concat())?;
        berth_first.push(took + run(&berth)?);
        let local = format!("local-{i}");
        let took = timed(&["volume", "create", &local])?;
        local_first.push(took + run(&local)?);
    }
    let (mut berth_run, mut local_run) = (Vec::new(), Vec::new());
    for _ in 0..DOCKER_RUNS {
        berth_run.push(run("berth-0")?);
        local_run.push(run("local-0")?);
    }
    // The runs went through Berth: a container's write lands in the vfs
    // service's directory of the volume.
    let write = "echo probe > /data/probe";
    dockerd.run(&[
        "run",
        "--rm",
        "-v",
        "berth-0:/data",
        &image,
        "sh",
        "-c",
        write,
    ])?;
    let probe = volumes.join("berth-0").join("probe");
    match std::fs::read_to_string(&probe) {
        Ok(text) if text == "probe\n" => {}
        other => {
            return Err(format!(
                "a container's write to the Berth volume is not in {}: {other:?}",
                probe.display()
            ))
        }
    }
    for i in 0..DOCKER_FIRST_USES {
        let (berth, local) = (format!("berth-{i}"), format!("local-{i}"));
        if let Err(e) = dockerd.run(&["volume", "rm", &berth, &local]) {
            eprintln!("after the Docker figure: {e}");
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    Ok(DockerFront {
        berth_run: median(berth_run),
        local_run: median(local_run),
        berth_first: median(berth_first),
        local_first: median(local_first),
    })
}

/// Prints the Docker figure's rows (or why it was skipped).
fn print_docker(docker: &Result<DockerFront, String>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match docker {
        Ok(f) => {
            println!(
                "| fronts: `docker run --rm -v VOL:/data IMG true`, VOL an existing Berth (vfs) volume vs a `local` driver volume, median of {DOCKER_RUNS} | {:.0} ms vs {:.0} ms = {:.2}x | |",
                ms(f.berth_run),
                ms(f.local_run),
                f.berth_run.as_secs_f64() / f.local_run.as_secs_f64()
            );
            println!(
                "| fronts: `docker volume create` + first `docker run -v`, Berth (vfs) vs `local`, median of {DOCKER_FIRST_USES} | {:.0} ms vs {:.0} ms = {:.2}x | |",
                ms(f.berth_first),
                ms(f.local_first),
                f.berth_first.as_secs_f64() / f.local_first.as_secs_f64()
            );
        }
        Err(why) => println!(
            "| fronts: `docker run -v` with a Berth volume vs Docker's `local` driver | skipped: {why} | |"
        ),
    }
}

/// [`docker_front`], saying on stderr why when it was skipped.
fn measure_docker(d: &Berthd) -> Result<DockerFront, String> {
    let started = Instant::now();
    let measured = docker_front(d);
    eprintln!(
        "the Docker figure took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Err(why) = &measured {
        eprintln!("skipped the Docker figure: {why}");
    }
    measured
}

fn print_csi(csi: Option<&CsiFront>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match csi {
        Some(f) => println!(
            "| fronts: CSI CreateVolume p50, berth plugin csi (vfs) vs hostpathplugin, {CSI_CALLS} calls (the same create straight to berthd: {:.2} ms) | {:.2} ms vs {:.2} ms = {:.2}x | <= 2x |",
            ms(f.direct),
            ms(f.plugin),
            ms(f.reference),
            f.plugin.as_secs_f64() / f.reference.as_secs_f64()
        ),
        None => println!("| fronts: CSI CreateVolume p50 | skipped: no hostpathplugin | <= 2x |"),
    }
}

/// Durable create+delete pairs/s, 32 in flight, on a berthd whose records
/// are in etcd (`--store etcd://`, `vfs` service), and etcd's own put rate
/// from a bare etcd client at the same concurrency; `None` (with one line)
/// without etcd or the `etcd` feature.
#[cfg(feature = "etcd")]
fn etcd_front(rt: &tokio::runtime::Runtime) -> Option<(f64, f64)> {
    let etcd = berth_tests::etcd::Etcd::start()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"etcd://{}\"\n\n[[services]]\nname = \"local\"\ndriver = \"vfs\"\n[services.options]\nroot = \"{}\"\n",
            etcd.endpoint(),
            dir.path().join("root").display()
        ),
    )
    .expect("config");
    let d = Berthd::start_logging(&["--config", &config.display().to_string()], "warn");
    let target = berthd_target(&d);
    let berth = rt
        .block_on(create_delete_rate(&target, 32, 4, RUN))
        .per_second;
    drop(d);
    let puts = rt.block_on(async {
        let client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("etcd client");
        let mut meter = Meter::start();
        for t in 0..32 {
            let mut kv = client.kv_client();
            meter.spawn(|deadline, done| async move {
                let value = vec![b'x'; 300];
                let mut i = 0u64;
                while Instant::now() < deadline {
                    kv.put(format!("bench/{t}/{i}"), value.clone(), None)
                        .await
                        .expect("put");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Vec::new()
            });
        }
        meter.finish().await.per_second
    });
    Some((berth, puts))
}

#[cfg(not(feature = "etcd"))]
fn etcd_front(_: &tokio::runtime::Runtime) -> Option<(f64, f64)> {
    eprintln!("skipped the etcd figure: build the bench with `--features etcd`");
    None
}

// ---------------------------------------------------------------- scale

/// The driver of the scale figures: a volume is its record and nothing
/// else (create and delete succeed at once, `get` knows nothing, `list`
/// is not supported), so the figures measure the controller (API,
/// authentication, journal, store, listing, start-up) rather than a disk
/// that a million `vfs` directories would keep busy for an hour.
struct RecordsOnly;

#[berth_drivers::async_trait]
impl berth_drivers::VolumeDriver for RecordsOnly {
    fn name(&self) -> &str {
        "records"
    }
    async fn create(
        &self,
        request: &berth_drivers::CreateRequest,
    ) -> berth_drivers::DriverResult<berth_drivers::DriverVolume> {
        Ok(berth_drivers::DriverVolume {
            name: request.name.clone(),
            size_bytes: request.size_bytes,
            fields: Default::default(),
        })
    }
    async fn delete(&self, _: &berth_drivers::VolumeName) -> berth_drivers::DriverResult<()> {
        Ok(())
    }
    async fn get(
        &self,
        _: &berth_drivers::VolumeName,
    ) -> berth_drivers::DriverResult<Option<berth_drivers::DriverVolume>> {
        Ok(None)
    }
    async fn list(&self) -> berth_drivers::DriverResult<Vec<berth_drivers::DriverVolume>> {
        Err(self.unsupported("listing (it keeps records only)"))
    }
}

/// This binary as a controller: berthd's command line with the built-in
/// drivers and `records` (see [`RecordsOnly`]).
fn run_controller() -> std::process::ExitCode {
    let mut registry = berth_drivers::DriverRegistry::with_builtin();
    registry.register("records", |_| {
        Ok(Arc::new(RecordsOnly) as Arc<dyn berth_drivers::VolumeDriver>)
    });
    match berth_controller::cli::main(registry) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", berth_controller::cli::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Environment variable that makes this binary run as a controller.
const CONTROLLER_ROLE: &str = "BERTH_BENCH_CONTROLLER";

/// How many volumes the scale figures hold: `BERTH_BENCH_VOLUMES`, else a
/// million (the issue's figure).
fn scale_volumes() -> usize {
    std::env::var("BERTH_BENCH_VOLUMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// What the scale run measured.
struct Scale {
    volumes: usize,
    create: Duration,
    list: Duration,
    rss_kib: u64,
    start: Duration,
    list_after_start: Duration,
    rss_after_start_kib: u64,
    none_p50: Duration,
}

/// Creates `n` volumes through `CreateVolumes` (1000 a call, `in_flight`
/// calls at once over as many connections).
async fn create_batches(target: &Target, n: usize, in_flight: usize) {
    let clients = clients(target, in_flight).await;
    let next = Arc::new(AtomicU64::new(0));
    let batches = n.div_ceil(BATCH) as u64;
    let mut tasks = Vec::new();
    for mut c in clients {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let from = b as usize * BATCH;
                let volumes = (from..(from + BATCH).min(n))
                    .map(|i| pb::VolumeSpec {
                        name: format!("v{i:07}"),
                        size_bytes: 1 << 30,
                        ..Default::default()
                    })
                    .collect();
                let answer = c
                    .create_volumes(pb::CreateVolumesRequest {
                        service: "local".into(),
                        volumes,
                    })
                    .await
                    .expect("CreateVolumes")
                    .into_inner();
                for r in answer.results {
                    if let Some(pb::create_volumes_result::Outcome::Error(e)) = r.outcome {
                        panic!("an item failed: {e:?}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("batch task");
    }
}

/// The codec of [`list_all`]'s calls: the request encoded as usual, the
/// answer handed back undecoded, so that the next page can be asked for
/// (its token read) before this one is decoded.
#[derive(Clone, Copy, Default)]
struct UndecodedAnswer;

/// Encodes a `ListVolumesRequest` with prost.
struct RequestEncoder;

/// Takes the answer's bytes as they are.
struct BytesDecoder;

impl tonic::codec::Encoder for RequestEncoder {
    type Item = pb::ListVolumesRequest;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: pb::ListVolumesRequest,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::Message::encode(&item, dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

impl tonic::codec::Decoder for BytesDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl tonic::codec::Codec for UndecodedAnswer {
    type Encode = pb::ListVolumesRequest;
    type Decode = bytes::Bytes;
    type Encoder = RequestEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// `ListVolumesResponse` with only its token: decoding it skips the
/// volumes (one length prefix each) without building them.
#[derive(Clone, PartialEq, prost::Message)]
struct TokenOnly {
    #[prost(string, tag = "2")]
    next_page_token: String,
}

/// Pages through every volume of `service` (10,000 a page): the time until
/// the last page is decoded, and how many were listed. Each page is
/// decoded (every volume built, as `berth volume list` does) on another
/// thread while the next one is fetched with the token the page carries:
/// the pages still follow one another through the cursor, but the
/// client's decoding of one overlaps the controller's reading of the next.
async fn list_all(target: &Target, service: &str) -> (Duration, usize) {
    let trust = ServerTrust::Pinned {
        fingerprint: target.pin,
        source: PinSource::Flag,
    };
    let channel = connect::connect(&target.host, &trust, None, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        channel,
        target.bearer.clone(),
    ))
    .max_decoding_message_size(64 << 20);
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/berth.v1.Volumes/ListVolumes");
    let start = Instant::now();
    let mut token = String::new();
    let mut count = 0usize;
    // The page being decoded.
    let mut decoding: Option<tokio::task::JoinHandle<Decoded>> = None;
    let mut last_name: Option<String> = None;
    loop {
        grpc.ready().await.expect("channel ready");
        let raw = grpc
            .unary(
                tonic::Request::new(pb::ListVolumesRequest {
                    service: service.into(),
                    max_entries: 10_000,
                    page_token: token,
                    ..Default::default()
                }),
                path.clone(),
                UndecodedAnswer,
            )
            .await
            .expect("page")
            .into_inner();
        token = <TokenOnly as prost::Message>::decode(raw.clone())
            .expect("page token")
            .next_page_token;
        let page = tokio::task::spawn_blocking(move || {
            let page = <pb::ListVolumesResponse as prost::Message>::decode(raw).expect("page");
            let first = page.volumes.first().map(|v| v.name.clone());
            let last = page.volumes.last().map(|v| v.name.clone());
            (page.volumes.len(), first, last)
        });
        // The page before this one was decoded meanwhile: count it, and
        // check that the pages follow one another in name order.
        if let Some(earlier) = decoding.replace(page) {
            count += decoded(earlier.await.expect("decoding task"), &mut last_name);
        }
        if token.is_empty() {
            break;
        }
    }
    if let Some(earlier) = decoding.take() {
        count += decoded(earlier.await.expect("decoding task"), &mut last_name);
    }
    (start.elapsed(), count)
}

/// A page [`list_all`] decoded: how many volumes, its first and last names.
type Decoded = (usize, Option<String>, Option<String>);

/// One decoded page of [`list_all`]: its count, after checking that it
/// starts after the previous page's last name.
fn decoded((listed, first, last): Decoded, last_name: &mut Option<String>) -> usize {
    if let (Some(first), Some(before)) = (&first, &*last_name) {
        assert!(
            first > before,
            "page starting at {first} repeats or goes back before {before}"
        );
    }
    if last.is_some() {
        *last_name = last;
    }
    listed
}

const BATCH: usize = 1000;

/// A million volumes (or `BERTH_BENCH_VOLUMES`) in one `records` service,
/// created through the API; listed, restarted, listed again; and listed by
/// a caller allowed none of them.
fn scale(rt: &tokio::runtime::Runtime) -> Scale {
    let n = scale_volumes();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berthd.toml");
    std::fs::write(
        &config,
        "[[services]]\nname = \"local\"\ndriver = \"records\"\n\n\
         [[services]]\nname = \"other\"\ndriver = \"records\"\n",
    )
    .expect("config");
    let exe = std::env::current_exe().expect("exe");
    let mut d = Berthd::start_program(
        &exe,
        &[(CONTROLLER_ROLE, "1")],
        &["--config", &config.display().to_string()],
        "warn",
    );
    let target = berthd_target(&d);
    let started = Instant::now();
    rt.block_on(create_batches(&target, n, 4));
    let create = started.elapsed();
    let (list, count) = rt.block_on(list_all(&target, "local"));
    assert_eq!(count, n, "every created volume is listed");
    let held_kib = rss_kib(d.pid());
    // Start-up after a crash: kill -9, start, until it serves (sled's
    // recovery, credentials, reconcile).
    let restarted = Instant::now();
    d.restart();
    let start = restarted.elapsed();
    let (list_after_start, count) = rt.block_on(list_all(&target, "local"));
    assert_eq!(count, n, "every volume is listed after the restart");
    let rss_after_start_kib = rss_kib(d.pid());
    // A caller allowed only `other`, which holds none of them.
    let token = berth_tests::tokens::issue(&d, &["outsider", "--services", "other"]);
    let outsider = Target {
        bearer: bearer(&token),
        ..target.clone()
    };
    let none_p50 = rt.block_on(async {
        let mut c = outsider.client().await;
        let mut times = Vec::new();
        for _ in 0..51 {
            let call = Instant::now();
            let page = c
                .list_volumes(pb::ListVolumesRequest::default())
                .await
                .expect("list")
                .into_inner();
            times.push(call.elapsed());
            assert!(page.volumes.is_empty(), "the outsider sees no volume");
        }
        times.sort();
        times[times.len() / 2]
    });
    Scale {
        volumes: n,
        create,
        list,
        rss_kib: held_kib,
        start,
        list_after_start,
        rss_after_start_kib,
        none_p50,
    }
}

/// Prints the scale figures as table rows.
fn print_scale(big: &Scale) {
    let mib = |k: u64| k as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = big.volumes;
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "| scale: create {n} volumes through CreateVolumes ({BATCH} a call, 4 in flight; `records` driver) | {:.1} s ({:.0} /s) | fits the 10-minute run |",
        secs(big.create),
        n as f64 / secs(big.create)
    );
    println!(
        "| scale: list all {n} volumes (10,000 a page) | {:.2} s | < 5 s |",
        secs(big.list)
    );
    println!(
        "| scale: berthd resident memory holding {n} volumes, after listing them | {:.1} MiB | < 600 MiB |",
        mib(big.rss_kib)
    );
    println!(
        "| scale: start-up with {n} volumes after kill -9 (until it serves; recovery, reconcile) | {:.2} s | < 5 s |",
        secs(big.start)
    );
    println!(
        "| scale: list all {n} volumes after that start | {:.2} s | < 5 s |",
        secs(big.list_after_start)
    );
    println!(
        "| scale: berthd resident memory after that start and listing | {:.1} MiB | < 600 MiB |",
        mib(big.rss_after_start_kib)
    );
    println!(
        "| scale: ListVolumes by a caller allowed none of them (median of 51) | {:.2} ms | < 5 ms |",
        ms(big.none_p50)
    );
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

/// The ceiling server in a process of its own (this executable run as
/// `e2e ceiling`), as `berthd` is: stopped when dropped.
struct CeilingProcess {
    child: std::process::Child,
}

impl Drop for CeilingProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the ceiling in its own process; returns it and its target.
fn start_ceiling_process() -> (CeilingProcess, Target) {
    use std::io::BufRead as _;
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("ceiling")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the ceiling");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the ceiling's address");
    let process = CeilingProcess { child };
    let (host, pin) = line.trim().split_once(' ').expect("HOST PIN");
    let target = Target {
        host: host.to_owned(),
        pin: pin.parse().expect("pin"),
        bearer: bearer("not-checked-by-the-ceiling"),
    };
    (process, target)
}

/// Figures 1 and 2: unary calls and new connections, Berth and the ceiling.
/// The ceiling runs in a process of its own, like `berthd`, so that both
/// servers share the two cores with the client the same way;
/// `BERTH_BENCH_CEILING=inproc` serves it from the benchmark's own runtime
/// instead (as before issue 18's second round).
fn unary_figures(rt: &tokio::runtime::Runtime, berth: &Target, rows: &mut Vec<Row>) {
    let (_process, ceiling) = if std::env::var("BERTH_BENCH_CEILING").is_ok_and(|v| v == "inproc") {
        (None, rt.block_on(start_ceiling()))
    } else {
        let (process, target) = start_ceiling_process();
        (Some(process), target)
    };
    eprintln!("measuring unary calls...");
    for (tasks, conns, label) in [(1, 1, "1 caller"), (64, 4, "64 in flight / 4 conns")] {
        let b = rt.block_on(unary_rate(berth, tasks, conns)).per_second;
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
    let b = rt.block_on(connection_rate(berth, 4));
    let c = rt.block_on(connection_rate(&ceiling, 4));
    rows.push(row(
        "2. new TLS connections + 1 call /s, 4 at a time",
        b,
        c,
        "/s",
        ">= 0.9",
        true,
    ));
}

/// Figure 4: a cold `berth volume list` against the one-shot floor, with
/// the pin in the config and in the sled trust store.
fn cli_figures(d: &Berthd, berth: &Target, rows: &mut Vec<Row>) {
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
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(CONTROLLER_ROLE).is_some() {
        return run_controller();
    }
    bench();
    std::process::ExitCode::SUCCESS
}

/// A single-threaded runtime for the by-hand modes (`calls`,
/// `handshakes`, `seed`).
fn one_shot_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
}

/// The controller named by the by-hand modes' `HOST PIN TOKEN` arguments.
fn target_from_args(args: &[String]) -> Target {
    Target {
        host: args[2].clone(),
        pin: args[3].parse().expect("pin"),
        bearer: bearer(&args[4]),
    }
}

fn bench() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("oneshot") {
        oneshot(&args[2], &args[3], &args[4]);
        return;
    }
    // `e2e calls HOST PIN TOKEN N`: N sequential ListVolumes calls on one
    // connection, to drive a controller under a profiler. `e2e handshakes
    // HOST PIN TOKEN N`: N new connections, one after another, each with one
    // ListVolumes call, to drive either side of a handshake under a profiler.
    let mode = args.get(1).map(String::as_str);
    if mode == Some("calls") || mode == Some("handshakes") {
        let n: usize = args[5].parse().expect("count");
        let reconnect = mode == Some("handshakes");
        one_shot_runtime().block_on(async {
            let target = target_from_args(&args);
            let mut c = target.client().await;
            for i in 0..n {
                if reconnect && i > 0 {
                    c = target.client().await;
                }
                c.list_volumes(list_request()).await.expect("list");
            }
        });
        return;
    }
    // `e2e pairs HOST PIN TOKEN IN_FLIGHT SECONDS`: durable create+delete
    // pairs (figure 3's loop: IN_FLIGHT tasks over up to 4 connections) for
    // SECONDS, to drive a controller under a profiler; prints pairs/s.
    if mode == Some("pairs") {
        let tasks: usize = args[5].parse().expect("in flight");
        let seconds: u64 = args[6].parse().expect("seconds");
        let measured = one_shot_runtime().block_on(create_delete_rate(
            &target_from_args(&args),
            tasks,
            tasks.clamp(1, 4),
            Duration::from_secs(seconds),
        ));
        println!("{:.1} pairs/s", measured.per_second);
        return;
    }
    // `e2e ceiling`: the ceiling server alone, to run under a profiler; it
    // prints `HOST PIN` and serves until its standard input closes.
    if args.get(1).map(String::as_str) == Some("ceiling") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let target = start_ceiling().await;
            println!("{} {}", target.host, target.pin);
            let _ = tokio::task::spawn_blocking(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            })
            .await;
        });
        return;
    }
    // `e2e seed HOST PIN TOKEN`: the 10 volumes the unary figures list, on a
    // controller started by hand (for profiling).
    if args.get(1).map(String::as_str) == Some("seed") {
        one_shot_runtime().block_on(seed(&target_from_args(&args)));
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let started = Instant::now();
    let _ = bin("berthd"); // builds the binaries once, in this profile
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `BERTH_BENCH_ONLY=scale`: the scale figures alone; `=unary`: figures
    // 1 and 2 alone; `=cli`: figure 4 alone.
    let only = std::env::var("BERTH_BENCH_ONLY").ok();
    let only = only.as_deref();
    if only == Some("scale") {
        let big = scale(&rt);
        println!("| figure | Berth | target |");
        println!("| --- | ---: | --- |");
        print_scale(&big);
        return;
    }
    // `BERTH_BENCH_ONLY=docker`: the Docker figure alone.
    if only == Some("docker") {
        let d = Berthd::start_logging(&[], "warn");
        let docker = measure_docker(&d);
        drop(d);
        println!("| figure | Berth vs peer = ratio | target |");
        println!("| --- | ---: | --- |");
        print_docker(&docker);
        return;
    }
    // `BERTH_BENCH_ONLY=csi`: the CSI figure alone (on a berthd seeded
    // as for the whole run).
    if only == Some("csi") {
        let (d, _) = rt.block_on(start_berthd());
        let csi = csi_front(&rt, &d);
        println!("| figure | Berth | target |");
        println!("| --- | ---: | --- |");
        print_csi(csi.as_ref());
        return;
    }
    // `BERTH_BENCH_ONLY=durable`: figure 3 alone (on disk and on tmpfs).
    if only == Some("durable") {
        let (d, berth) = rt.block_on(start_berthd());
        let mut rows = Vec::new();
        let durable = durable_figures(&rt, &d, &berth, &mut rows);
        drop(d);
        print_table(&rows);
        println!();
        println!("| figure | Berth | target |");
        println!("| --- | ---: | --- |");
        print_durable(&durable);
        print_latency(Some(&durable.loaded), None);
        return;
    }
    let mut rows = Vec::new();

    let (d, berth) = rt.block_on(start_berthd());
    if only != Some("cli") {
        unary_figures(&rt, &berth, &mut rows);
    }
    if only == Some("unary") {
        print_table(&rows);
        return;
    }
    let mut durable = None;
    let mut lists_loaded = None;
    if only.is_none() {
        durable = Some(durable_figures(&rt, &d, &berth, &mut rows));
        eprintln!("measuring latency under load...");
        lists_loaded = Some(rt.block_on(unary_rate(&berth, 32, 4)));
    }
    cli_figures(&d, &berth, &mut rows);
    if only == Some("cli") {
        print_table(&rows);
        return;
    }
    eprintln!("measuring the fronts (CSI, Docker, etcd)...");
    let csi = csi_front(&rt, &d);
    let docker = measure_docker(&d);
    drop(d);
    let etcd = etcd_front(&rt);

    let idle = Berthd::start_logging(&[], "warn");
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(idle.pid());
    drop(idle);
    eprintln!("measuring {} volumes...", scale_volumes());
    let big = scale(&rt);
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
        "| 5. berthd resident memory, idle | {:.1} MiB | < 30 MiB |",
        mib(idle_rss)
    );
    print_scale(&big);
    print_csi(csi.as_ref());
    match etcd {
        Some((berth, puts)) => println!(
            "| fronts: create+delete pairs/s on etcd (vfs, 32 in flight) vs etcd puts/s (32 in flight) | {berth:.1} /s vs {puts:.1} /s = {:.3} | |",
            berth / puts
        ),
        None => println!("| fronts: create+delete pairs/s on etcd | skipped (see above) | |"),
    }
    print_docker(&docker);
    if let Some(durable) = &durable {
        print_durable(durable);
    }
    print_latency(durable.as_ref().map(|d| &d.loaded), lists_loaded.as_ref());
    println!();
    println!("ratios: Berth / ceiling (higher is better for rates, lower for times)");
}

/// The latency table: CreateVolume (from figure 3's run at 32 in flight)
/// and ListVolumes under load, each when measured.
fn print_latency(creates: Option<&Measured>, lists: Option<&Measured>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| latency at 32 in flight / 4 conns | rate | p50 | p99 | p99/p50 | target |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for (label, measured, target) in [
        ("CreateVolume (rate: create+delete pairs/s)", creates, ""),
        ("ListVolumes(10)", lists, "p99 <= 10x p50"),
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
}
