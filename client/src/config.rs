//! The client configuration file (`--config FILE`, `BERTH_CONFIG`, or
//! `$XDG_CONFIG_HOME/berth/config.toml`).
//!
//! ```toml
//! host = "ctl.example:7979"          # default controller
//! # hosts = ["ctl-a:7979", "ctl-b:7979"]  # or: the controllers of one cluster,
//! #                                  # tried in order (instead of `host`)
//! # mount_root = "/var/lib/berth/mounts"  # where `berth volume mount` mounts
//! # instance = "node-1"              # this node's instance ID (default: host name)
//!
//! [controllers."ctl.example:7979"]
//! fingerprint = "AB:CD:..."          # preseeded pin: never prompts
//! # ca = "/etc/berth/ca.pem"         # or: verify with WebPKI rules against this CA
//! # plaintext = true                 # only for an --insecure-plaintext controller
//! token_file = "/home/me/.berth/token"
//! # token = "eyJ..."                 # or the token itself
//! # cert = "me.crt"                  # client certificate and key
//! # key = "me.key"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The controller used when `--host`/`BERTH_HOST` are not given.
    pub host: Option<String>,
    /// The controllers of one cluster (one CA, one catalogue), tried in
    /// order: a connection error fails over to the next. Instead of `host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where `berth volume mount` and the plugins mount volumes (default:
    /// `/var/lib/berth/mounts` for root, else `$XDG_RUNTIME_DIR/berth/mounts`).
    pub mount_root: Option<PathBuf>,
    /// The instance this node attaches volumes as (default: the host name).
    pub instance: Option<String>,
    /// Per-controller settings, keyed by `HOST:PORT`.
    #[serde(default)]
    pub controllers: BTreeMap<String, ControllerEntry>,
    /// The node socket of each `csi` service's plugin, by service name
    /// (`hostpath = "unix:///run/csi/hostpath.sock"`): where `berth volume
    /// mount` calls the plugin's Node service.
    #[serde(default)]
    pub csi_plugins: BTreeMap<String, String>,
}

impl ClientConfig {
    /// Parses the text of a configuration file; `path` only names it in the
    /// error. This is what [`Loaded::load`] does after reading the file.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
            rendered: printable_lines(&e.to_string()),
        })
    }
}

/// What the client knows about one controller.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerEntry {
    /// The pinned SHA-256 fingerprint of its CA (parsed when used).
    pub fingerprint: Option<String>,
    /// Verify it with WebPKI against this CA bundle instead of pinning.
    pub ca: Option<PathBuf>,
    /// Talk to it without TLS (`--insecure-plaintext` controllers).
    #[serde(default)]
    pub plaintext: bool,
    /// The bearer token to present.
    pub token: Option<String>,
    /// A file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
}

/// Problems with the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read client config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid client config.
    #[error("client config {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, on one line.
        message: String,
        /// The parser's message as the toml crate renders it for a person:
        /// line, column, the offending line and a caret under it, over
        /// several lines (other control characters escaped).
        rendered: String,
    },
}

impl ConfigError {
    /// The error for a person at a terminal: a parse error keeps the toml
    /// crate's rendering (line, column, the line and a caret), on several
    /// lines; anything else is its one-line message.
    pub fn for_person(&self) -> String {
        match self {
            Self::Parse { path, rendered, .. } => {
                format!(
                    "client config {} is not valid:\n{}",
                    path.display(),
                    rendered
                )
            }
            other => other.to_string(),
        }
    }
}

/// A parser message as one line: its line breaks become spaces and other
/// control characters (a stray `\r` or NUL echoed from the file) are
/// escaped, so the message cannot break or overwrite a terminal line.
fn one_line(message: &str) -> String {
    message
        .trim()
        .chars()
        .map(|c| match c {
            '\n' => " ".to_owned(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A parser message over several lines: line breaks kept, other control
/// characters escaped as in [`one_line`].
fn printable_lines(message: &str) -> String {
    message
        .trim_end()
        .lines()
        .map(one_line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The default location, `$XDG_CONFIG_HOME/berth/config.toml` or
/// `~/.config/berth/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth").join("config.toml"))
}

/// A loaded configuration and where it came from.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// The configuration (empty when there is no file).
    pub config: ClientConfig,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// Loads `explicit` (which must exist), else the default file if present.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(Self::default()),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = ClientConfig::parse(&text, &path)?;
        Ok(Self {
            config,
            path: Some(path),
        })
    }

    /// The entry for `host`, if any. Relative paths in it are resolved
    /// against the file's directory.
    pub fn controller(&self, host: &str) -> Option<ControllerEntry> {
        let mut entry = self.config.controllers.get(host)?.clone();
        if let Some(dir) = self.path.as_deref().and_then(Path::parent) {
            for p in [
                &mut entry.ca,
                &mut entry.token_file,
                &mut entry.cert,
                &mut entry.key,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `client_config` fuzz target: a bad string holding a NUL
    /// and a carriage return was echoed raw in the error, so the "one line"
    /// could overwrite itself on a terminal.
    #[test]
    fn parse_errors_are_one_printable_line() {
        let input = "hAst = \"):\0\r\n";
        let err =
            ClientConfig::parse(input, Path::new("/etc/berth/config.toml")).expect_err("not TOML");
        let message = err.to_string();
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains(r#""):\u{0}\r"#), "{message:?}");
    }

    /// For a person the toml crate's rendering stays on its lines (the
    /// caret under the offending key), still without other control
    /// characters.
    #[test]
    fn parse_errors_for_a_person_keep_the_caret() {
        let input = "host = \"x\"\n[controllers.a]\nfoo = 1\n";
        let err = ClientConfig::parse(input, Path::new("/etc/berth/config.toml")).expect_err("bad");
        let text = err.for_person();
        assert!(text.contains("/etc/berth/config.toml"), "{text}");
        assert!(text.contains("line 3, column 1"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_end().ends_with("| ^^^")),
            "{text}"
        );
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
    }
}
