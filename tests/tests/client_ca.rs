//! Client certificates from an operator's own CA (`--client-ca`): accepted
//! at the TLS layer, given the `user` role with no services of their own,
//! and granted exactly what the services' `allow` lists name.

use std::path::Path;

use berth_tests::{entries, openssl, Berthd};

/// An operator CA and a clientAuth certificate for `ext-user` signed by it.
fn operator_pki(dir: &Path) {
    openssl::operator_ca(dir);
    let (_key, csr) = openssl::csr(dir, "ext", "ext-user");
    openssl::operator_sign_client(dir, &csr);
}

#[test]
fn operator_ca_certificates_get_only_what_allow_lists_grant() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    operator_pki(dir);
    let (fast, bulk) = (dir.join("fast"), dir.join("bulk"));
    let config = dir.join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "[[services]]\nname = \"fast\"\ndriver = \"vfs\"\n[services.options]\nroot = \"{}\"\n\n\
             [[services]]\nname = \"bulk\"\ndriver = \"vfs\"\nallow = [\"ext-user\"]\n[services.options]\nroot = \"{}\"\n",
            fast.display(),
            bulk.display()
        ),
    )
    .expect("config");
    let ca = dir.join("ca.pem").display().to_string();
    let d = Berthd::start_with(&[
        "--config",
        &config.display().to_string(),
        "--client-ca",
        &ca,
    ]);
    let (crt, key) = (
        dir.join("ext.crt").display().to_string(),
        dir.join("ext.key").display().to_string(),
    );
    let as_ext = |args: &[&str]| {
        let mut all = vec!["--cert", crt.as_str(), "--key", key.as_str()];
        all.extend_from_slice(args);
        d.berth(&all)
    };

    let services = as_ext(&["service", "list", "-o", "json"]).json();
    let names: Vec<&str> = services
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["bulk"],
        "only the service whose allow list names ext-user"
    );

    let before = entries(&fast);
    let err = as_ext(&["volume", "create", "x", "--service", "fast"]).failure();
    assert!(err.starts_with("error: permission denied"), "{err}");
    assert!(err.contains("ext-user") && err.contains("fast"), "{err}");
    assert_eq!(entries(&fast), before, "nothing created in fast");

    as_ext(&["volume", "create", "x", "--service", "bulk"]).success();
    assert!(bulk.join("x").is_dir());
    let err = as_ext(&["token", "list"]).failure();
    assert!(
        err.starts_with("error: permission denied"),
        "a user, not an admin: {err}"
    );

    // The same certificate against a controller that does not trust the
    // operator CA is refused.
    let other = Berthd::start_with(&["--config", &config.display().to_string()]);
    let refused = other.berth(&["--cert", &crt, "--key", &key, "service", "list"]);
    let err = refused.failure();
    assert!(err.starts_with("error: "), "{err}");
}
