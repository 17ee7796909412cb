//! `berth trust`: the pinned controllers (the client's known_hosts). The
//! only group that opens no session: it manages what a session trusts.

use anyhow::bail;
use berth_client::connect::{self, ConnectError, ServerTrust};
use berth_client::output::{self, Format};
use berth_client::pinning::{Fingerprint, TrustStore};
use berth_client::session::{host_list, Target};

use super::{print, print_json};
use crate::cli::Globals;

/// `berth trust ...`
#[derive(clap::Subcommand, Debug)]
pub enum TrustCommand {
    /// List pinned controllers and where each pin lives (trust store or config file).
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  berth trust ls -o json"
    )]
    List,
    /// Pin a controller's CA fingerprint in the trust store (get it with `berthd fingerprint`).
    #[command(
        after_help = "Examples:\n  berth trust add ctl.example AB:CD:...:EF   # port 7979\n  \
                      berth trust add ctl-a,ctl-b,ctl-c AB:CD:...:EF   # a cluster: one CA"
    )]
    Add {
        /// The controller, HOST[:PORT] (port 7979 if omitted), or a comma-separated list of one cluster's controllers.
        host: String,
        /// SHA-256 fingerprint of its CA: 64 hex digits, colons optional.
        fingerprint: Fingerprint,
    },
    /// Remove a controller's pin from the trust store (a pin in the config file is edited there).
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  berth trust rm ctl.example:7979"
    )]
    Remove {
        /// The controller, HOST[:PORT] (port 7979 if omitted), or a comma-separated list.
        host: String,
    },
    /// Connect, show the CA the controller presents and compare it with the pin.
    #[command(
        after_help = "Fails (exit 1) when the presented fingerprint differs from the pin.\n\n\
                            Examples:\n  berth trust show\n  berth trust show ctl.example"
    )]
    Show {
        /// The controller, HOST[:PORT] [default: the controller in use].
        host: Option<String>,
    },
}

/// Runs `berth trust ...`.
pub async fn run(globals: &Globals, command: &TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::List => {
            let target = Target::resolve(&globals.session_options())?;
            let mut rows: Vec<(String, String, String)> = Vec::new();
            if let Some(path) = &target.loaded.path {
                for (host, entry) in &target.loaded.config.controllers {
                    let how = match (&entry.fingerprint, &entry.ca, entry.plaintext) {
                        (Some(fp), _, _) => fp.clone(),
                        (None, Some(ca), _) => format!("CA {}", ca.display()),
                        (None, None, true) => "plaintext".into(),
                        _ => continue,
                    };
                    rows.push((host.clone(), how, format!("config {}", path.display())));
                }
            }
            let store = TrustStore::open_default()?;
            for (host, fp) in store.list()? {
                rows.push((host, fp.to_string(), "trust store".into()));
            }
            let json = || {
                rows.iter()
                    .map(|(h, f, s)| serde_json::json!({"host": h, "fingerprint": f, "source": s}))
                    .collect()
            };
            let table = || {
                let mut t = output::table(&["HOST", "FINGERPRINT", "SOURCE"]);
                for (h, f, s) in &rows {
                    t.add_row(vec![h, f, s]);
                }
                output::render(&t)
            };
            print(globals.output, table, json)?;
        }
        TrustCommand::Add { host, fingerprint } => {
            let hosts = host_list(host)?;
            let store = TrustStore::open_default()?;
            for host in &hosts {
                store.add(host, *fingerprint)?;
                println!(
                    "pinned {host} to {fingerprint} in {}",
                    store.path().display()
                );
            }
        }
        TrustCommand::Remove { host } => {
            for host in host_list(host)? {
                remove(globals, &host)?;
            }
        }
        TrustCommand::Show { host } => show(globals, host.as_deref()).await?,
    }
    Ok(())
}

/// `berth trust remove HOST`: one controller's pin, from the trust store.
fn remove(globals: &Globals, host: &str) -> anyhow::Result<()> {
    let target = target_for(globals, host)?;
    let in_config = target
        .entry()
        .filter(|(_, e)| e.fingerprint.is_some())
        .map(|(key, _)| key);
    let config_path = target.loaded.path.clone().unwrap_or_default();
    let where_in_config = |key: &str| {
        format!(
            "the client config {} pins it: delete the `fingerprint` line under \
             [controllers.\"{key}\"] there",
            config_path.display()
        )
    };
    let store = TrustStore::open_default()?;
    let stored = target.stored_pin(&store)?.map(|(key, _)| key);
    match (stored, in_config) {
        (Some(key), in_config) => {
            store.remove(&key)?;
            println!(
                "removed the pin for {key} from the trust store {}",
                store.path().display()
            );
            if let Some(config_key) = in_config {
                eprintln!("note: {} too", where_in_config(&config_key));
            }
        }
        (None, Some(config_key)) => bail!(
            "the trust store {} has no pin for {host}; {}",
            store.path().display(),
            where_in_config(&config_key)
        ),
        (None, None) => bail!(
            "no pin for {host} in the trust store {}",
            store.path().display()
        ),
    }
    Ok(())
}

/// The target `host` with the rest of the global options.
fn target_for(globals: &Globals, host: &str) -> anyhow::Result<Target> {
    let mut opts = globals.session_options();
    opts.host = Some(host.to_owned());
    Ok(Target::resolve(&opts)?)
}

/// `berth trust show [HOST]`: what the controller presents, and whether it
/// is what this client pins.
async fn show(globals: &Globals, host: Option<&str>) -> anyhow::Result<()> {
    let target = match host {
        Some(h) => target_for(globals, h)?,
        None => Target::resolve(&globals.session_options())?,
    };
    let host = target.host.clone();
    let mut opts = globals.session_options();
    opts.host = Some(host.clone());
    opts.plaintext = false;
    let trust = target.trust(&opts)?;
    let pin = match &trust {
        ServerTrust::Pinned {
            fingerprint,
            source,
        } => Some((*fingerprint, source.clone())),
        _ => None,
    };
    let first_contact = ServerTrust::FirstContact;
    let observed = match connect::connect(&host, &first_contact, None, globals.wait).await {
        Err(ConnectError::Unknown { observed, .. }) => observed,
        Err(e) => return Err(e.into()),
        Ok(_) => bail!("unexpectedly connected without trusting anything"),
    };
    let matches = pin.as_ref().map(|(fp, _)| *fp == observed);
    match globals.output {
        Format::Json => {
            let mut v = serde_json::json!({"host": host, "fingerprint": observed.to_string()});
            if let Some((fp, source)) = &pin {
                v["pinned"] = serde_json::json!(fp.to_string());
                v["pin_source"] = serde_json::json!(source.to_string());
                v["matches"] = serde_json::json!(*fp == observed);
            }
            print_json(&v)?;
        }
        Format::Table => {
            println!(
                "{host} presents a certificate authority with SHA-256 fingerprint\n  {observed}"
            );
            match &pin {
                Some((_, source)) if matches == Some(true) => {
                    println!("This matches the pin in {source}.")
                }
                Some((fp, source)) => {
                    println!("This DIFFERS from the pin in {source}:\n  {fp}")
                }
                None => match &trust {
                    ServerTrust::Ca { roots } => println!(
                        "Not pinned: it is verified against the CA bundle {} (host name \
                         included) instead.",
                        roots.display()
                    ),
                    _ => println!(
                        "Not pinned yet: compare it with `berthd fingerprint` on the controller, \
                         then `berth trust add {host} {observed}`."
                    ),
                },
            }
        }
    }
    if matches == Some(false) {
        let (fp, source) = pin
            .as_ref()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .unwrap_or_default();
        bail!(
            "the controller at {host} presents fingerprint {observed}, which differs from the pin \
             {fp} in {source}: it is another controller, or its CA was replaced; check \
             `berthd fingerprint` on the controller before changing the pin"
        );
    }
    Ok(())
}
