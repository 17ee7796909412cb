//! The client configuration file (`berth --config FILE`), through
//! `berth_client::config::ClientConfig::parse`, the step `Loaded::load`
//! takes after reading the file.
//!
//! Invariants:
//! - a refusal is one printable line (no control characters), naming the
//!   file;
//! - an accepted file is a TOML table with only the documented keys;
//! - written back out as TOML, it parses to the same configuration;
//! - every controller entry can be looked up by its key, and relative paths in
//!   it are resolved against the file's directory while absolute ones are
//!   left alone.
#![no_main]

use std::path::{Path, PathBuf};

use berth_client::config::{ClientConfig, ControllerEntry, Loaded};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "/etc/berth/config.toml";

fn paths(entry: &ControllerEntry) -> [&Option<PathBuf>; 4] {
    [&entry.ca, &entry.token_file, &entry.cert, &entry.key]
}

/// The configuration as a TOML document, built from the parsed values.
fn emit(config: &ClientConfig) -> String {
    let mut root = toml::Table::new();
    if let Some(host) = &config.host {
        root.insert("host".into(), host.clone().into());
    }
    let mut controllers = toml::Table::new();
    for (name, entry) in &config.controllers {
        let mut t = toml::Table::new();
        let text = |p: &PathBuf| p.to_str().expect("paths come from TOML strings").to_owned();
        let fields = [
            ("fingerprint", entry.fingerprint.clone()),
            ("ca", entry.ca.as_ref().map(text)),
            ("token", entry.token.clone()),
            ("token_file", entry.token_file.as_ref().map(text)),
            ("cert", entry.cert.as_ref().map(text)),
            ("key", entry.key.as_ref().map(text)),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                t.insert(key.into(), value.into());
            }
        }
        t.insert("plaintext".into(), entry.plaintext.into());
        controllers.insert(name.clone(), t.into());
    }
    root.insert("controllers".into(), controllers.into());
    toml::to_string(&root).expect("a table always serialises")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match ClientConfig::parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(err) => {
            let message = err.to_string();
            assert!(
                !message.chars().any(char::is_control),
                "not one printable line: {message:?}"
            );
            assert!(message.contains(FILE), "{message}");
            return;
        }
    };

    let table: toml::Table = toml::from_str(text).expect("accepted text is a TOML table");
    for key in table.keys() {
        assert!(
            matches!(key.as_str(), "host" | "controllers"),
            "key {key:?}"
        );
    }
    assert_eq!(
        table.get("host").and_then(|v| v.as_str()),
        config.host.as_deref()
    );

    let again = ClientConfig::parse(&emit(&config), Path::new(FILE))
        .unwrap_or_else(|e| panic!("re-emitted config refused: {e}"));
    assert_eq!(format!("{again:?}"), format!("{config:?}"));

    let loaded = Loaded {
        config: config.clone(),
        path: Some(PathBuf::from(FILE)),
    };
    let dir = Path::new(FILE).parent().expect("file has a directory");
    for (host, original) in &config.controllers {
        let resolved = loaded
            .controller(host)
            .unwrap_or_else(|| panic!("entry {host:?} not found"));
        for (before, after) in paths(original).into_iter().zip(paths(&resolved)) {
            match (before, after) {
                (None, None) => {}
                (Some(b), Some(a)) if b.is_absolute() => assert_eq!(a, b),
                (Some(b), Some(a)) => assert_eq!(a, &dir.join(b)),
                other => panic!("{host:?}: path changed presence: {other:?}"),
            }
        }
        assert_eq!(resolved.fingerprint, original.fingerprint);
        assert_eq!(resolved.token, original.token);
        assert_eq!(resolved.plaintext, original.plaintext);
    }
});
