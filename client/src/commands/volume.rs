//! `berth volume`: create, list, inspect, remove, attach, detach and copy
//! volumes.

use berth_client::output::{self, Format};
use berth_client::{instance, pb, size};

use super::{print, print_json};
use crate::cli::{Globals, ServiceArg};
use crate::progress;

/// `berth volume ...`
#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// List volumes, sorted by name.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  berth volume ls\n  berth volume ls --attached -o json"
    )]
    List {
        /// Only this service's volumes.
        #[arg(long, short)]
        service: Option<String>,
        /// Only volumes attached to some instance.
        #[arg(long, conflicts_with = "available")]
        attached: bool,
        /// Only volumes attached nowhere.
        #[arg(long)]
        available: bool,
    },
    /// Create a volume (again with the same parameters: returns it).
    #[command(
        after_help = "Without --size the volume is unsized: the driver decides (vfs: no limit; \
                      image: refused, it needs a size; --from-snapshot: the snapshot's size).\n\n\
                      Examples:\n  berth volume create db --size 10GiB\n  \
                      berth volume create db2 --from-snapshot nightly\n  \
                      berth volume create scratch --opt mode=0700"
    )]
    Create {
        /// Name of the new volume (unique within its service).
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// Size, e.g. 4096, 512MiB, 10GiB (powers of 1024) or 1G, 500M (powers of 1000)
        /// [default: unsized, see below].
        #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
        size: Option<u64>,
        /// Driver option, KEY=VALUE (repeatable; `berth service ls` names the drivers).
        #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_option)]
        options: Vec<(String, String)>,
        /// Restore this snapshot into the new volume.
        #[arg(long, value_name = "SNAPSHOT")]
        from_snapshot: Option<String>,
    },
    /// Show one volume: size, status, attachments and what the driver reports.
    #[command(
        after_help = "Examples:\n  berth volume inspect db\n  berth volume inspect db -o json"
    )]
    Inspect {
        /// The volume.
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Remove a volume and its data.
    #[command(
        visible_alias = "rm",
        after_help = "Examples:\n  berth volume rm scratch\n  berth volume rm db --force   # detach it first"
    )]
    Remove {
        /// The volume.
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// Detach it from every instance first.
        #[arg(long)]
        force: bool,
    },
    /// Attach a volume to an instance and print how to reach it.
    #[command(
        after_help = "Examples:\n  berth volume attach db               # to this machine\n  \
                            berth volume attach db --instance vm1"
    )]
    Attach {
        /// The volume.
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// The instance [default: this machine's host name].
        #[arg(long)]
        instance: Option<String>,
    },
    /// Detach a volume from an instance.
    #[command(after_help = "Examples:\n  berth volume detach db --instance vm1\n  \
                            berth volume detach db --force       # from whichever instances hold it")]
    Detach {
        /// The volume.
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// The instance [default: this machine's host name].
        #[arg(long)]
        instance: Option<String>,
        /// Detach it from whichever instances hold it.
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Node(super::node::NodeVolumeCommand),
    /// Create DESTINATION as a copy of SOURCE (same service).
    #[command(after_help = "Example:\n  berth volume copy db db-test")]
    Copy {
        /// The volume to copy.
        source: String,
        /// Name of the new volume.
        destination: String,
        #[command(flatten)]
        service: ServiceArg,
    },
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs `berth volume ...`.
pub async fn run(globals: &Globals, command: &VolumeCommand) -> anyhow::Result<()> {
    let session = globals.session().await?;
    let format = globals.output;
    let mut volumes = session.volumes();
    match command {
        VolumeCommand::List {
            service,
            attached,
            available,
        } => {
            let attachment = match (attached, available) {
                (true, _) => pb::AttachmentFilter::Attached,
                (_, true) => pb::AttachmentFilter::Available,
                _ => pb::AttachmentFilter::Any,
            } as i32;
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = volumes
                    .list_volumes(pb::ListVolumesRequest {
                        service: service.clone().unwrap_or_default(),
                        max_entries: 0,
                        page_token,
                        attachment,
                        with_usage: true,
                    })
                    .await?
                    .into_inner();
                all.extend(page.volumes);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print(
                format,
                || output::volume_table(&all),
                || all.iter().map(output::volume_json).collect(),
            )
        }
        VolumeCommand::Create {
            name,
            service,
            size,
            options,
            from_snapshot,
        } => {
            let request = pb::CreateVolumeRequest {
                service: service.resolve(&session).await?,
                name: name.clone(),
                // 0: unsized (the driver decides; from a snapshot, its size).
                size_bytes: size.unwrap_or(0),
                options: options.iter().cloned().collect(),
                from_snapshot: from_snapshot.clone().unwrap_or_default(),
            };
            let volume = match from_snapshot {
                Some(snapshot) if progress::wanted(format) => {
                    let stream = volumes
                        .create_volume_with_progress(request)
                        .await?
                        .into_inner();
                    let what = format!("restoring {snapshot} into {name}");
                    progress::follow(stream, &what, globals.timeout, progress::volume_event).await?
                }
                _ => volumes.create_volume(request).await?.into_inner(),
            };
            if size.is_none() && from_snapshot.is_none() && volume.size_bytes == 0 {
                eprintln!(
                    "note: no --size given, so volume {name} is unsized: the {} driver sets \
                     no limit; give --size (e.g. --size 10GiB) for a sized volume",
                    volume.driver
                );
            }
            print_volume(format, &volume)
        }
        VolumeCommand::Inspect { name, service } => {
            let request = pb::GetVolumeRequest {
                service: service.resolve(&session).await?,
                name: name.clone(),
            };
            let volume = volumes.get_volume(request).await?.into_inner();
            print_volume(format, &volume)
        }
        VolumeCommand::Remove {
            name,
            service,
            force,
        } => {
            let service = service.resolve(&session).await?;
            volumes
                .delete_volume(pb::DeleteVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                    force: *force,
                })
                .await?;
            print(
                format,
                || format!("removed volume {name} from service {service}"),
                || serde_json::json!({"removed": name, "service": service}),
            )
        }
        VolumeCommand::Attach {
            name,
            service,
            instance,
        } => {
            let request = pb::AttachVolumeRequest {
                service: service.resolve(&session).await?,
                name: name.clone(),
                instance: instance.clone().unwrap_or_else(instance::this_host),
            };
            let attached = volumes.attach_volume(request).await?.into_inner();
            let attachment = attached.attachment.unwrap_or_default();
            print(
                format,
                || {
                    format!(
                        "attached volume {name} to {}: {}",
                        attachment.instance, attachment.device
                    )
                },
                || {
                    serde_json::json!({
                        "volume": attached.volume.as_ref().map(output::volume_json),
                        "instance": attachment.instance,
                        "device": attachment.device,
                        "fields": attachment.fields,
                    })
                },
            )
        }
        VolumeCommand::Detach {
            name,
            service,
            instance,
            force,
        } => {
            let service = service.resolve(&session).await?;
            // The reply is the volume after the detach; what it was attached
            // to before tells what this detach did.
            let before = volumes
                .get_volume(pb::GetVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                })
                .await
                .map(|r| r.into_inner().attachments)
                .unwrap_or_default();
            let request = pb::DetachVolumeRequest {
                service,
                name: name.clone(),
                instance: instance.clone().unwrap_or_else(instance::this_host),
                force: *force,
            };
            let volume = volumes.detach_volume(request).await?.into_inner();
            let detached: Vec<&str> = before
                .iter()
                .map(|a| a.instance.as_str())
                .filter(|i| !volume.attachments.iter().any(|a| a.instance == *i))
                .collect();
            match format {
                Format::Table => {
                    if detached.is_empty() {
                        println!("volume {name} was not attached there: nothing to detach");
                    } else {
                        println!("detached {name} from {}", detached.join(", "));
                    }
                    if volume.attachments.is_empty() {
                        println!("volume {name} is attached to nothing");
                    } else {
                        let holders: Vec<_> = volume
                            .attachments
                            .iter()
                            .map(|a| a.instance.as_str())
                            .collect();
                        println!("volume {name} is still attached to {}", holders.join(", "));
                    }
                }
                Format::Json => print_json(&output::volume_json(&volume))?,
            }
            Ok(())
        }
        VolumeCommand::Copy {
            source,
            destination,
            service,
        } => {
            let request = pb::CopyVolumeRequest {
                service: service.resolve(&session).await?,
                source: source.clone(),
                name: destination.clone(),
            };
            let volume = if progress::wanted(format) {
                let stream = volumes
                    .copy_volume_with_progress(request)
                    .await?
                    .into_inner();
                let what = format!("copying {source} to {destination}");
                progress::follow(stream, &what, globals.timeout, progress::volume_event).await?
            } else {
                volumes.copy_volume(request).await?.into_inner()
            };
            print_volume(format, &volume)
        }
        VolumeCommand::Node(c) => {
            super::node::volume(&session, &globals.session_options(), format, c).await
        }
    }
}

fn print_volume(format: Format, volume: &pb::Volume) -> anyhow::Result<()> {
    print(
        format,
        || output::volume_detail(volume),
        || output::volume_json(volume),
    )
}
