//! Process metrics, read from `/proc/self` at each scrape (prometheus-client
//! has no process collector): the standard names of Prometheus client
//! libraries, `process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`,
//! `process_virtual_memory_bytes`. A value that cannot be read (not Linux)
//! is left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    /// Resident set size, bytes (`VmRSS`).
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes (`VmSize`).
    pub virtual_bytes: Option<u64>,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft open-file limit.
    pub max_fds: Option<u64>,
}

/// Reads the current [`Sample`].
pub fn sample() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let times = stat_times(&stat);
    Sample {
        resident_bytes: status_kib(&status, "VmRSS:").map(|k| k * 1024),
        virtual_bytes: status_kib(&status, "VmSize:").map(|k| k * 1024),
        cpu_seconds: times.map(|(u, s, _)| (u + s) as f64 / ticks),
        start_time_seconds: times
            .zip(boot)
            .map(|((_, _, start), boot)| boot as f64 + start as f64 / ticks),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: crate::rpc::limits::open_file_limit(),
    }
}

/// A `Key:   123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// utime, stime and starttime (clock ticks) of `/proc/self/stat`. The
/// command name may hold spaces and parentheses: fields are counted from
/// the last `)`.
fn stat_times(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3; utime 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(22)?))
}

/// Encodes a fresh [`Sample`] at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = sample();
        let mut gauge = |name: &str, help: &str, value: Option<f64>| {
            if let Some(v) = value {
                let metric = ConstGauge::new(v);
                let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                metric.encode(e)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.resident_bytes.map(|v| v as f64),
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            s.virtual_bytes.map(|v| v as f64),
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            s.open_fds.map(|v| v as f64),
        )?;
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit)",
            s.max_fds.map(|v| v as f64),
        )?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            s.start_time_seconds,
        )?;
        if let Some(cpu) = s.cpu_seconds {
            let metric = ConstCounter::new(cpu);
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            metric.encode(e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat =
            "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 1000 200 rest";
        assert_eq!(stat_times(stat), Some((250, 50, 12345)));
        assert_eq!(stat_times("garbage"), None);
    }

    #[test]
    fn this_process_is_sampled() {
        let s = sample();
        assert!(s.resident_bytes.unwrap_or(0) > 0);
        assert!(s.open_fds.unwrap_or(0) > 0);
        assert!(s.start_time_seconds.unwrap_or(0.0) > 1.0e9);
    }
}
