//! `berth trust`: the pinned controllers (the client's known_hosts). The
//! only group that opens no session: it manages what a session trusts.

use anyhow::bail;
use berth_client::connect::{self, ConnectError, ServerTrust};
use berth_client::output::{self, Format};
use berth_client::pinning::{Fingerprint, TrustStore};
use berth_client::session::Target;

use super::{print, print_json};
use crate::cli::Globals;

/// `berth trust ...`
#[derive(clap::Subcommand, Debug)]
pub enum TrustCommand {
    /// List pinned controllers (trust store and config file).
    #[command(alias = "ls")]
    List,
    /// Pin a controller's fingerprint (get it with `berthd fingerprint`).
    Add {
        /// HOST:PORT
        host: String,
        fingerprint: Fingerprint,
    },
    /// Remove a controller's pin from the trust store.
    #[command(alias = "rm")]
    Remove {
        /// HOST:PORT
        host: String,
    },
    /// Connect and show what the controller presents, trusting nothing.
    Show {
        /// HOST:PORT [default: the controller in use]
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
            let store = TrustStore::open_default()?;
            store.add(host, *fingerprint)?;
            println!(
                "pinned {host} to {fingerprint} in {}",
                store.path().display()
            );
        }
        TrustCommand::Remove { host } => {
            let store = TrustStore::open_default()?;
            if !store.remove(host)? {
                bail!(
                    "no pin for {host} in the trust store {}",
                    store.path().display()
                );
            }
            println!("removed the pin for {host}");
        }
        TrustCommand::Show { host } => {
            let host = match host {
                Some(h) => h.clone(),
                None => Target::resolve(&globals.session_options())?.host,
            };
            let first_contact = ServerTrust::FirstContact;
            match connect::connect(&host, &first_contact, None, globals.wait).await {
                Err(ConnectError::Unknown { observed, .. }) => match globals.output {
                    Format::Json => print_json(&serde_json::json!({"host": host, "fingerprint": observed.to_string()}))?,
                    Format::Table => println!("{host} presents a certificate authority with SHA-256 fingerprint\n  {observed}"),
                },
                Err(e) => return Err(e.into()),
                Ok(_) => bail!("unexpectedly connected without trusting anything"),
            }
        }
    }
    Ok(())
}
