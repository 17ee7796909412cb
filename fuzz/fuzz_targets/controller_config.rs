//! The controller configuration file (`berthd --config FILE`), through
//! `berth_controller::config::ConfigFile::parse`, the step `load` takes after
//! reading the file.
//!
//! Invariants:
//! - a refusal is one printable line (no control characters), naming the
//!   file;
//! - an accepted file declares at least one service, every service name is a
//!   valid name (`VolumeName`), and no name is declared twice;
//! - an accepted file is a TOML table with only the documented keys;
//! - written back out as TOML, it parses to the same listen address and the
//!   same services, with the same driver options as drivers read them.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use berth_controller::config::ConfigFile;
use berth_drivers::VolumeName;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "/etc/berth/berthd.toml";

/// The configuration as a TOML document, built from the parsed values.
fn emit(file: &ConfigFile) -> String {
    let mut root = toml::Table::new();
    if let Some(listen) = &file.listen {
        root.insert("listen".into(), listen.clone().into());
    }
    let services: Vec<toml::Value> = file
        .services
        .iter()
        .map(|s| {
            let mut t = toml::Table::new();
            t.insert("name".into(), s.name.clone().into());
            t.insert("driver".into(), s.driver.clone().into());
            let options: toml::Table = s.options.clone().into_iter().collect();
            t.insert("options".into(), options.into());
            t.insert("allow".into(), s.allow.clone().into());
            t.insert("deny".into(), s.deny.clone().into());
            t.into()
        })
        .collect();
    root.insert("services".into(), services.into());
    toml::to_string(&root).expect("a table always serialises")
}

/// What the controller uses of a parsed file, comparably.
fn seen(file: &ConfigFile) -> String {
    let services: Vec<_> = file
        .services
        .iter()
        .map(|s| {
            (
                &s.name,
                &s.driver,
                s.driver_options()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<Vec<_>>(),
                &s.allow,
                &s.deny,
            )
        })
        .collect();
    format!("{:?} {services:?}", file.listen)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match ConfigFile::parse(text, Path::new(FILE)) {
        Ok(file) => file,
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

    assert!(!file.services.is_empty());
    let mut names = BTreeSet::new();
    for service in &file.services {
        assert!(
            VolumeName::parse(&service.name).is_ok(),
            "{:?}",
            service.name
        );
        assert!(names.insert(&service.name), "{:?} twice", service.name);
    }

    let table: toml::Table = toml::from_str(text).expect("accepted text is a TOML table");
    for key in table.keys() {
        assert!(matches!(key.as_str(), "listen" | "services"), "key {key:?}");
    }

    let again = ConfigFile::parse(&emit(&file), Path::new(FILE))
        .unwrap_or_else(|e| panic!("re-emitted config refused: {e}"));
    assert_eq!(seen(&again), seen(&file));
});
