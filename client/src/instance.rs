//! This machine as an instance volumes are attached to.

/// This machine's host name: the default instance ID (`localhost` when it
/// has none that can be read).
pub fn this_host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
