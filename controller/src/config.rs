//! The controller's configuration file and the services it declares.
//!
//! ```toml
//! [[services]]
//! name = "fast"
//! driver = "vfs"
//! [services.options]
//! root = "/ssd/berth"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to listen on (overridden by `--listen`).
    pub listen: Option<String>,
    /// The services, in file order.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Connection and stream limits (`[limits]`); `berthd` flags win.
    #[serde(default)]
    pub limits: crate::rpc::limits::LimitSettings,
    /// Where the volume records live (overridden by `--store`): `sled`
    /// (the default) or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub store: Option<String>,
    /// The `[etcd]` table: settings of an etcd store (flags win).
    #[serde(default)]
    pub etcd: crate::volumes::backend::EtcdConfig,
}

/// One configured service: a named instance of a driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service name clients use.
    pub name: String,
    /// The driver that serves it (a registered name).
    pub driver: String,
    /// Driver options; values may be strings, numbers or booleans.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// Subjects allowed to use this service in addition to what their
    /// credentials allow (empty: credentials decide alone).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Subjects refused whatever their credentials say.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, on one line.
        message: String,
    },
    /// One service's entry is wrong.
    #[error("config file {path}, service {service:?}: {problem}")]
    Service {
        /// The file.
        path: PathBuf,
        /// The service.
        service: String,
        /// What is wrong.
        problem: String,
    },
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

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks the text of a configuration file; `path` only names
    /// it in errors. This is what [`ConfigFile::load`] does after reading it.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        let mut seen = BTreeSet::new();
        for service in &mut file.services {
            let fail = |problem: String| ConfigError::Service {
                path: path.to_owned(),
                service: service.name.clone(),
                problem,
            };
            if let Err(e) = berth_drivers::VolumeName::parse(&service.name) {
                return Err(fail(format!("bad service name: {e}")));
            }
            if !seen.insert(service.name.clone()) {
                return Err(fail("is declared more than once".into()));
            }
            // Subjects are compared in normal form C; an entry with an
            // invisible or bidirectional character could never match a
            // subject (they are refused too) and would only mislead.
            for (list, entries) in [("allow", &mut service.allow), ("deny", &mut service.deny)] {
                for entry in entries.iter_mut() {
                    *entry = crate::auth::subject::normalize_subject(entry)
                        .map_err(|e| fail(format!("{list} list entry refused: {e}")))?;
                }
            }
            // Drivers read options as strings: a table or an array (for
            // example from a dotted key, `a.b = "x"`) has no meaning to them
            // and would reach the driver as TOML text.
            for (key, value) in &service.options {
                if matches!(value, toml::Value::Table(_) | toml::Value::Array(_)) {
                    return Err(fail(format!(
                        "option {:?} is a {}; driver options are strings, numbers or booleans \
                         (quote a key that holds a dot: \"a.b\" = ...)",
                        one_line(key).chars().take(64).collect::<String>(),
                        value.type_str()
                    )));
                }
            }
        }
        if file.services.is_empty() {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: "it declares no services; add at least one [[services]] table".into(),
            });
        }
        Ok(file)
    }
}

impl ServiceConfig {
    /// The options as the strings drivers read.
    pub fn driver_options(&self) -> berth_drivers::DriverOptions {
        berth_drivers::DriverOptions::new(
            self.options
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `controller_config` fuzz target: a dotted key under
    /// `[services.options]` made nested tables, accepted as an option whose
    /// value reached the driver as TOML text (and, nested deep enough,
    /// could not be written back).
    #[test]
    fn option_tables_and_arrays_are_refused() {
        let path = Path::new("/etc/berth/berthd.toml");
        for options in ["a.b = \"x\"", "a = [\"x\"]", "a = { b = 1 }"] {
            let text = format!(
                "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\n{options}\n"
            );
            let err = ConfigFile::parse(&text, path).expect_err(&text);
            let message = err.to_string();
            assert!(message.contains("option \"a\""), "{message}");
            assert!(
                message.contains("strings, numbers or booleans"),
                "{message}"
            );
        }
        let text = "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\n\"a.b\" = \"x\"\nsize = 3\nsync = true\n";
        let file = ConfigFile::parse(text, path).expect("quoted dotted key, number, boolean");
        assert_eq!(file.services[0].driver_options().get("a.b"), Some("x"));
    }

    /// Found by the `controller_config` fuzz target: NULs and a carriage
    /// return inside a string were echoed raw in the error.
    #[test]
    fn parse_errors_are_one_printable_line() {
        let input = "[[servZices]]\nname = \"lD\0\0\0\0\0\0\0riv \rer= 2vfs\"\n";
        let err =
            ConfigFile::parse(input, Path::new("/etc/berth/berthd.toml")).expect_err("not TOML");
        let message = err.to_string();
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains(r"riv \rer"), "{message:?}");
    }
}
