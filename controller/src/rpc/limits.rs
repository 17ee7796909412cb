//! The connection and stream limits: their defaults (sized for the
//! open-file limit), the settings from the command line and the config
//! file's `[limits]`, and how the two resolve.

use std::time::Duration;

use serde::Deserialize;

/// The default of [`Limits::max_connections`] never exceeds this, however
/// high the open-file limit: it bounds the memory idle connections can
/// hold (tens of KiB each) on hosts with a very high limit.
pub const MAX_DEFAULT_CONNECTIONS: u32 = 16_384;

/// The connection and stream limits the server enforces. The defaults are
/// those of [`Limits::sized_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, TLS handshakes included; one more is
    /// closed as soon as it is accepted. Default: three quarters of the
    /// open-file limit, keeping at least 32 descriptors for the store, the
    /// drivers and the logs, and at most [`MAX_DEFAULT_CONNECTIONS`]
    /// (see [`default_max_connections`]).
    pub max_connections: u32,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised on every connection:
    /// calls in flight at once per connection. Default 128.
    pub max_concurrent_streams: u32,
    /// A connection with no call in flight for this long is closed
    /// (GOAWAY, then dropped), whatever else it sends. Default 60 s.
    pub idle_timeout: Duration,
    /// An HTTP/2 PING is sent to a peer silent for this long. Default 30 s.
    pub keepalive_interval: Duration,
    /// A PING not answered within this closes the connection. Default 20 s.
    pub keepalive_timeout: Duration,
    /// A call whose request body has not fully arrived this long after its
    /// headers fails with DEADLINE_EXCEEDED and is freed. Default 10 s.
    pub request_body_timeout: Duration,
}

impl Limits {
    /// The default `max_concurrent_streams`.
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
    /// The default `idle_timeout`.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default `keepalive_interval`.
    pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
    /// The default `keepalive_timeout`.
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
    /// The default `request_body_timeout`.
    pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);

    /// The defaults for a process that may open `open_files` descriptors
    /// (`None`: unlimited).
    pub fn sized_for(open_files: Option<u64>) -> Self {
        Self {
            max_connections: default_max_connections(open_files),
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: Self::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: Self::DEFAULT_KEEPALIVE_TIMEOUT,
            request_body_timeout: Self::DEFAULT_REQUEST_BODY_TIMEOUT,
        }
    }
}

/// The default connection cap for an open-file limit (`None`: unlimited):
/// three quarters of it, at least 32 descriptors kept back, at least 1 and
/// at most [`MAX_DEFAULT_CONNECTIONS`].
pub fn default_max_connections(open_files: Option<u64>) -> u32 {
    let files = open_files.unwrap_or(u64::MAX);
    let kept = (files / 4).max(32);
    let cap = files
        .saturating_sub(kept)
        .clamp(1, u64::from(MAX_DEFAULT_CONNECTIONS));
    u32::try_from(cap).unwrap_or(MAX_DEFAULT_CONNECTIONS)
}

/// Limits as the operator gave them, each optional: a `berthd` flag wins
/// over the config file's `[limits]` table, which wins over the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// See [`Limits::max_connections`].
    pub max_connections: Option<u32>,
    /// See [`Limits::max_concurrent_streams`].
    pub max_concurrent_streams: Option<u32>,
    /// See [`Limits::idle_timeout`] (`"60s"`, `"5m"`).
    #[serde(default, deserialize_with = "duration_setting")]
    pub idle_timeout: Option<Duration>,
    /// See [`Limits::keepalive_interval`].
    #[serde(default, deserialize_with = "duration_setting")]
    pub keepalive_interval: Option<Duration>,
    /// See [`Limits::keepalive_timeout`].
    #[serde(default, deserialize_with = "duration_setting")]
    pub keepalive_timeout: Option<Duration>,
    /// See [`Limits::request_body_timeout`].
    #[serde(default, deserialize_with = "duration_setting")]
    pub request_body_timeout: Option<Duration>,
}

/// A limit that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name} = {value} cannot be used: {problem}")]
pub struct LimitError {
    /// The setting's name (as in the config file).
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong and what to give instead.
    pub problem: &'static str,
}

impl LimitSettings {
    /// These settings, with `fallback`'s where these have none.
    pub fn or(&self, fallback: &LimitSettings) -> LimitSettings {
        LimitSettings {
            max_connections: self.max_connections.or(fallback.max_connections),
            max_concurrent_streams: self
                .max_concurrent_streams
                .or(fallback.max_concurrent_streams),
            idle_timeout: self.idle_timeout.or(fallback.idle_timeout),
            keepalive_interval: self.keepalive_interval.or(fallback.keepalive_interval),
            keepalive_timeout: self.keepalive_timeout.or(fallback.keepalive_timeout),
            request_body_timeout: self.request_body_timeout.or(fallback.request_body_timeout),
        }
    }

    /// The limits in force: these settings over the defaults for
    /// `open_files` descriptors. Zero counts and durations are refused.
    pub fn resolve(&self, open_files: Option<u64>) -> Result<Limits, LimitError> {
        let defaults = Limits::sized_for(open_files);
        let count = |name, value: Option<u32>, default| match value {
            Some(0) => Err(LimitError {
                name,
                value: "0".into(),
                problem: "it must be at least 1",
            }),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let span = |name, value: Option<Duration>, default| match value {
            Some(d) if d.is_zero() => Err(LimitError {
                name,
                value: "0s".into(),
                problem: "it must be longer than zero (e.g. 10s)",
            }),
            Some(d) => Ok(d),
            None => Ok(default),
        };
        Ok(Limits {
            max_connections: count(
                "max_connections",
                self.max_connections,
                defaults.max_connections,
            )?,
            max_concurrent_streams: count(
                "max_concurrent_streams",
                self.max_concurrent_streams,
                defaults.max_concurrent_streams,
            )?,
            idle_timeout: span("idle_timeout", self.idle_timeout, defaults.idle_timeout)?,
            keepalive_interval: span(
                "keepalive_interval",
                self.keepalive_interval,
                defaults.keepalive_interval,
            )?,
            keepalive_timeout: span(
                "keepalive_timeout",
                self.keepalive_timeout,
                defaults.keepalive_timeout,
            )?,
            request_body_timeout: span(
                "request_body_timeout",
                self.request_body_timeout,
                defaults.request_body_timeout,
            )?,
        })
    }
}

/// Reads a duration written as humans do (`"10s"`, `"1m 30s"`).
fn duration_setting<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write it like \"10s\" or \"5m\""
        ))
    })
}

/// The soft open-file limit now in force (`None`: unlimited).
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft open-file limit to the hard limit, so the connection
/// cap, not `EMFILE`, is what bounds connections. Returns the soft limit
/// before and after (`None`: unlimited).
pub fn raise_open_file_limit() -> std::io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        return Ok((before.current, before.current));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        },
    )?;
    Ok((before.current, getrlimit(Resource::Nofile).current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_cap_follows_the_open_file_limit() {
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(64)), 32);
        assert_eq!(default_max_connections(Some(20)), 1);
        assert_eq!(
            default_max_connections(Some(1 << 20)),
            MAX_DEFAULT_CONNECTIONS
        );
        assert_eq!(default_max_connections(None), MAX_DEFAULT_CONNECTIONS);
    }

    #[test]
    fn settings_fall_back_in_order_and_refuse_zero() {
        let flags = LimitSettings {
            idle_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let file = LimitSettings {
            idle_timeout: Some(Duration::from_secs(9)),
            max_concurrent_streams: Some(7),
            ..Default::default()
        };
        let limits = flags.or(&file).resolve(Some(1024)).expect("valid");
        assert_eq!(limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(limits.max_concurrent_streams, 7);
        assert_eq!(limits.max_connections, 768);
        assert_eq!(
            limits.request_body_timeout,
            Limits::DEFAULT_REQUEST_BODY_TIMEOUT
        );
        let zero = LimitSettings {
            max_connections: Some(0),
            ..Default::default()
        };
        let e = zero.resolve(Some(1024)).expect_err("zero refused");
        assert!(e.to_string().starts_with("max_connections = 0 "), "{e}");
    }
}
