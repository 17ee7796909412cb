//! `berth volume mount`, `berth volume unmount` and `berth plugin docker`:
//! the command-line side of the node library ([`berth_client::node`]) and
//! of the Docker plugin ([`berth_client::docker`]).

use std::path::PathBuf;

use anyhow::Context;
use berth_client::config::Loaded;
use berth_client::node::{self, MountRequest, Node, UnmountRequest};
use berth_client::output::Format;
use berth_client::session::{Session, SessionOptions};
use clap::Subcommand;

/// The node's volume commands, flattened into `berth volume`.
#[derive(Subcommand, Debug)]
pub enum NodeVolumeCommand {
    /// Attach a volume to this node and make it usable at a directory; prints the directory.
    Mount {
        name: String,
        /// The service (default: the only one, when there is one).
        #[arg(long, short)]
        service: Option<String>,
        /// Where [default: <mount root>/<service>/<name>; mount root: `mount_root` in the config,
        /// else /var/lib/berth/mounts for root, else $XDG_RUNTIME_DIR/berth/mounts].
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// The instance to attach to [default: `instance` in the config, else the host name].
        #[arg(long, value_name = "ID")]
        instance: Option<String>,
        /// Mount it read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Unmount a volume; after its last mount on this node, release it and detach it.
    Unmount {
        name: String,
        /// The service (default: the only one, when there is one).
        #[arg(long, short)]
        service: Option<String>,
        /// Which mount [default: <mount root>/<service>/<name>].
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// The instance it is attached to [default: as for mount].
        #[arg(long, value_name = "ID")]
        instance: Option<String>,
        /// Unmount lazily when busy (the mount goes now, the kernel finishes when it is free).
        #[arg(long)]
        force: bool,
    },
}

/// `berth plugin ...`: long-running node agents.
#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Serve Docker's volume plugin API on a unix socket.
    Docker {
        /// The socket [default: /run/docker/plugins/berth.sock].
        #[arg(long, value_name = "PATH", default_value = berth_client::docker::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// A CSI v1 plugin (Identity, Controller, Node) on a unix socket.
    Csi(berth_client::csi::CsiArgs),
}

fn node_for(opts: &SessionOptions) -> anyhow::Result<(Node, Loaded)> {
    let loaded = Loaded::load(opts.config.as_deref())?;
    let root = node::default_mount_root(&loaded.config)?;
    let plugins = loaded.config.csi_plugins.clone();
    Ok((Node::new(root).with_csi_plugins(plugins), loaded))
}

/// Runs `berth volume mount|unmount`.
pub async fn volume(
    session: &Session,
    opts: &SessionOptions,
    format: Format,
    command: &NodeVolumeCommand,
) -> anyhow::Result<()> {
    let (node, loaded) = node_for(opts)?;
    match command {
        NodeVolumeCommand::Mount {
            name,
            service,
            path,
            instance,
            read_only,
        } => {
            let service = session.service(service.as_deref()).await?;
            let request = MountRequest {
                service: service.clone(),
                name: name.clone(),
                path: path.clone(),
                read_only: *read_only,
                instance: node::default_instance(instance.as_deref(), &loaded.config),
                holder: None,
            };
            let path = node
                .mount(session, &request)
                .await
                .with_context(|| format!("cannot mount volume {name}"))?;
            match format {
                Format::Table => println!("{}", path.display()),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "volume": name, "service": service, "path": path,
                        "instance": request.instance, "read_only": read_only,
                    }))?
                ),
            }
        }
        NodeVolumeCommand::Unmount {
            name,
            service,
            path,
            instance,
            force,
        } => {
            let service = session.service(service.as_deref()).await?;
            let request = UnmountRequest {
                service: service.clone(),
                name: name.clone(),
                path: path.clone(),
                force: *force,
                instance: node::default_instance(instance.as_deref(), &loaded.config),
                holder: None,
            };
            node.unmount(session, &request)
                .await
                .with_context(|| format!("cannot unmount volume {name}"))?;
            let path = match path {
                Some(p) => p.clone(),
                None => node.default_path(&service, name)?,
            };
            match format {
                Format::Table => println!("unmounted volume {name} from {}", path.display()),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "volume": name, "service": service, "unmounted": path,
                    }))?
                ),
            }
        }
    }
    Ok(())
}

/// Runs `berth plugin docker` until SIGTERM or SIGINT.
pub async fn plugin(mut opts: SessionOptions, command: &PluginCommand) -> anyhow::Result<()> {
    // A daemon never prompts: an unknown controller is refused.
    opts.may_prompt = false;
    match command {
        PluginCommand::Docker { socket } => {
            let (node, loaded) = node_for(&opts)?;
            let instance = node::default_instance(None, &loaded.config);
            berth_client::docker::serve(berth_client::docker::PluginConfig {
                session: opts,
                socket: socket.clone(),
                node,
                instance,
            })
            .await?;
        }
        PluginCommand::Csi(args) => {
            berth_client::csi::serve(opts, args, berth_client::csi::shutdown_signal()).await?;
        }
    }
    Ok(())
}
