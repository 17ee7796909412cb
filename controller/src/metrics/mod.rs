//! Prometheus metrics: what is counted, and the listener that serves them.
//!
//! Every instrument lives in one process-wide [`Metrics`] ([`global`]), so
//! the layers that count (the pipeline, the gate, the authorizer, the
//! connection loop, the volume operations) need no handle passed down.
//! Counting costs a few atomic operations per call and happens whether or
//! not `--metrics-listen` is given; only serving them is optional.
//!
//! | module | what it is |
//! | --- | --- |
//! | this file | the instruments, their names and labels |
//! | [`serve`] | the plain-HTTP listener (`GET /metrics`) and what it reads at each scrape |
//! | [`process`] | process metrics from `/proc/self` (resident memory, CPU, descriptors, start time) |
//!
//! Label values are bounded: `method` is a method this controller serves
//! (else `unknown`), `service` a configured service the call was
//! authorised on (else empty), `code` a gRPC code name.

pub mod process;
pub mod serve;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of one RPC's counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The gRPC method (`CreateVolume`), or `unknown`.
    pub method: String,
    /// The Berth service the call was authorised on, or empty.
    pub service: String,
    /// The gRPC code name (`OK`, `PERMISSION_DENIED`).
    pub code: String,
}

/// The labels of one RPC's latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcTimeLabels {
    /// The gRPC method, or `unknown`.
    pub method: String,
    /// The Berth service, or empty.
    pub service: String,
}

/// The labels of one driver operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabels {
    /// The service whose driver was called.
    pub service: String,
    /// The driver's registered name (`vfs`).
    pub driver: String,
    /// The operation (`create`, `delete`, `attach`...).
    pub operation: String,
    /// `ok` or `error`.
    pub result: String,
}

/// A label set with one `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: String,
}

/// A label set with one `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `failed` or `timeout`.
    pub result: String,
}

/// A label set with one `service`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// A configured service.
    pub service: String,
}

/// A label set with one `certificate`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `server` or `ca`.
    pub certificate: String,
}

/// Every instrument the controller keeps.
pub struct Metrics {
    registry: Registry,
    /// `berth_rpc_requests_total{method,service,code}`.
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// `berth_rpc_duration_seconds{method,service}`.
    pub rpc_duration: Family<RpcTimeLabels, Histogram>,
    /// `berth_driver_operation_seconds{service,driver,operation,result}`.
    pub driver_operation: Family<DriverLabels, Histogram>,
    /// `berth_authz_refusals_total{reason}`.
    pub authz_refusals: Family<ReasonLabels, Counter>,
    /// `berth_tls_handshakes_total{result}`.
    pub tls_handshakes: Family<ResultLabels, Counter>,
    /// `berth_connections_open`.
    pub connections_open: Gauge,
    /// `berth_connections_refused_total` (over the connection limit).
    pub connections_refused: Counter,
    /// `berth_volumes{service}`, set at each scrape.
    pub volumes: Family<ServiceLabels, Gauge>,
    /// `berth_snapshots{service}`, set at each scrape.
    pub snapshots: Family<ServiceLabels, Gauge>,
    /// `berth_certificate_expiry_seconds{certificate}`: seconds until the
    /// certificate expires (negative once it has), set at each scrape.
    pub cert_expiry: Family<CertLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `berth_store_flush_batch_size`: callers whose writes one group-commit
    /// flush of the record store made durable.
    pub flush_batch: Histogram,
    /// `berth_store_flush_duration_seconds`: how long one such flush took.
    pub flush_duration: Histogram,
}

fn rpc_histogram() -> Histogram {
    // 100 µs to about 15 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

fn driver_histogram() -> Histogram {
    // 500 µs to about 75 s (copies and snapshots can be long).
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            driver_operation: Family::new_with_constructor(driver_histogram as fn() -> Histogram),
            authz_refusals: Family::default(),
            tls_handshakes: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            volumes: Family::default(),
            snapshots: Family::default(),
            cert_expiry: Family::default(),
            // 1 to 1024 callers per flush.
            flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 100 µs to about 15 s, as the RPCs.
            flush_duration: rpc_histogram(),
            registry: Registry::default(),
        };
        // Names are given without the suffixes the encoder adds
        // (`_total` for counters).
        registry.register(
            "berth_rpc_requests",
            "RPCs answered, by method, service and gRPC code",
            m.rpc_requests.clone(),
        );
        registry.register(
            "berth_rpc_duration_seconds",
            "RPC latency until the response headers, by method and service",
            m.rpc_duration.clone(),
        );
        registry.register(
            "berth_driver_operation_seconds",
            "Driver operation latency, by service, driver, operation and result",
            m.driver_operation.clone(),
        );
        registry.register(
            "berth_authz_refusals",
            "Calls refused by authentication or authorisation, by reason",
            m.authz_refusals.clone(),
        );
        registry.register(
            "berth_tls_handshakes",
            "TLS handshakes, by result (ok, failed, timeout)",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "berth_connections_open",
            "Connections held now, TLS handshakes included",
            m.connections_open.clone(),
        );
        registry.register(
            "berth_connections_refused",
            "Connections closed at once because the connection limit was reached",
            m.connections_refused.clone(),
        );
        registry.register(
            "berth_volumes",
            "Volume records, by service",
            m.volumes.clone(),
        );
        registry.register(
            "berth_snapshots",
            "Snapshot records, by service",
            m.snapshots.clone(),
        );
        registry.register(
            "berth_certificate_expiry_seconds",
            "Seconds until the certificate expires (negative once expired), for the server and CA certificates",
            m.cert_expiry.clone(),
        );
        registry.register(
            "berth_store_flush_batch_size",
            "Callers whose writes one group-commit flush of the record store made durable",
            m.flush_batch.clone(),
        );
        registry.register(
            "berth_store_flush_duration_seconds",
            "Duration of one group-commit flush (fsync) of the record store",
            m.flush_duration.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        Self { registry, ..m }
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one answered RPC.
    pub fn rpc(&self, method: &str, service: &str, code: &str, seconds: f64) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                service: service.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.rpc_duration
            .get_or_create(&RpcTimeLabels {
                method: method.to_owned(),
                service: service.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts one refusal.
    pub fn refused(&self, reason: &str) {
        self.authz_refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records one group-commit flush of the record store.
    pub fn flushed(&self, stats: crate::volumes::store::FlushStats) {
        self.flush_batch.observe(stats.batch as f64);
        self.flush_duration.observe(stats.seconds);
    }

    /// Counts one TLS handshake.
    pub fn handshake(&self, result: &str) {
        self.tls_handshakes
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// The process-wide instruments.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Runs one driver operation, timing it into
/// `berth_driver_operation_seconds`.
pub async fn driver_op<T, E>(
    service: &str,
    driver: &str,
    operation: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = work.await;
    global()
        .driver_operation
        .get_or_create(&DriverLabels {
            service: service.to_owned(),
            driver: driver.to_owned(),
            operation: operation.to_owned(),
            result: if result.is_ok() { "ok" } else { "error" }.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The canonical name of a gRPC code number (`7` is `PERMISSION_DENIED`).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_with_their_conventional_names() {
        let m = global();
        m.rpc("ListVolumes", "", "OK", 0.001);
        m.refused("out_of_scope");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, m.registry()).unwrap();
        assert!(text
            .contains("berth_rpc_requests_total{method=\"ListVolumes\",service=\"\",code=\"OK\"}"));
        assert!(text.contains("berth_rpc_duration_seconds_bucket{"));
        assert!(text.contains("berth_authz_refusals_total{reason=\"out_of_scope\"} "));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.ends_with("# EOF\n"));
    }
}
