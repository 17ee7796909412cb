//! `berth snapshot`: take, list, inspect and remove snapshots of volumes.

use berth_client::output::{self, Format};
use berth_client::pb;

use super::print;
use crate::cli::{Globals, ServiceArg};
use crate::progress;

/// `berth snapshot ...`
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a point-in-time snapshot NAME of VOLUME.
    #[command(after_help = "Example:\n  berth snapshot create db before-upgrade")]
    Create {
        /// The volume to snapshot.
        volume: String,
        /// Name of the snapshot (unique within the service).
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// List snapshots (of VOLUME, if given).
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  berth snapshot ls\n  berth snapshot ls db -o json"
    )]
    List {
        /// Only this volume's snapshots.
        volume: Option<String>,
        /// Only this service's snapshots.
        #[arg(long, short)]
        service: Option<String>,
    },
    /// Show one snapshot.
    #[command(after_help = "Example:\n  berth snapshot inspect before-upgrade")]
    Inspect {
        /// The snapshot.
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Remove a snapshot (volumes made from it keep their data).
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  berth snapshot rm before-upgrade"
    )]
    Remove {
        /// The snapshot.
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
}

/// Runs `berth snapshot ...`.
pub async fn run(globals: &Globals, command: &SnapshotCommand) -> anyhow::Result<()> {
    let session = globals.session().await?;
    let format = globals.output;
    let mut client = session.snapshots();
    match command {
        SnapshotCommand::Create {
            volume,
            name,
            service,
        } => {
            let request = pb::CreateSnapshotRequest {
                service: service.resolve(&session).await?,
                volume: volume.clone(),
                name: name.clone(),
            };
            let snap = if progress::wanted(format) {
                let stream = client
                    .create_snapshot_with_progress(request)
                    .await?
                    .into_inner();
                let what = format!("taking snapshot {name} of {volume}");
                progress::follow(stream, &what, globals.timeout, progress::snapshot_event).await?
            } else {
                client.create_snapshot(request).await?.into_inner()
            };
            print_snapshot(format, &snap)
        }
        SnapshotCommand::List { volume, service } => {
            let service = match (volume, service) {
                (Some(_), None) => session.service(None).await?,
                (_, s) => s.clone().unwrap_or_default(),
            };
            let request = pb::ListSnapshotsRequest {
                service,
                volume: volume.clone().unwrap_or_default(),
            };
            let snaps = client.list_snapshots(request).await?.into_inner().snapshots;
            print(
                format,
                || output::snapshot_table(&snaps),
                || snaps.iter().map(output::snapshot_json).collect(),
            )
        }
        SnapshotCommand::Inspect { name, service } => {
            let request = pb::GetSnapshotRequest {
                service: service.resolve(&session).await?,
                name: name.clone(),
            };
            let snap = client.get_snapshot(request).await?.into_inner();
            print_snapshot(format, &snap)
        }
        SnapshotCommand::Remove { name, service } => {
            let service = service.resolve(&session).await?;
            client
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    service: service.clone(),
                    name: name.clone(),
                })
                .await?;
            print(
                format,
                || format!("removed snapshot {name} from service {service}"),
                || serde_json::json!({"removed": name, "service": service}),
            )
        }
    }
}

fn print_snapshot(format: Format, snap: &pb::Snapshot) -> anyhow::Result<()> {
    print(
        format,
        || output::snapshot_table(std::slice::from_ref(snap)),
        || output::snapshot_json(snap),
    )
}
