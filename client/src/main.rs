//! `berth`: the Berth command-line client.

use std::process::ExitCode;

use anyhow::bail;
use berth_client::output::{self, Format};
use berth_client::{connect, pb, size};
use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;

/// Talk to a Berth controller.
#[derive(Parser, Debug)]
#[command(name = "berth", version, about)]
struct Cli {
    /// The controller, as HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "BERTH_HOST",
        default_value = "127.0.0.1:7979"
    )]
    host: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configured services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// List the services you may use.
    #[command(alias = "ls")]
    List,
}

#[derive(Args, Debug)]
struct ServiceArg {
    /// The service (default: the only one, when there is one).
    #[arg(long, short)]
    service: Option<String>,
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// List volumes.
    #[command(alias = "ls")]
    List {
        /// Only this service's volumes.
        #[arg(long, short)]
        service: Option<String>,
    },
    /// Create a volume (again with the same parameters: returns it).
    Create {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// Size, e.g. 4096, 512MiB, 10GiB, 1G.
        #[arg(long, value_parser = size::parse_size, default_value = "0")]
        size: u64,
        /// Driver option, KEY=VALUE (repeatable).
        #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_option)]
        options: Vec<(String, String)>,
    },
    /// Show one volume.
    Inspect {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Remove a volume and its data.
    #[command(alias = "rm")]
    Remove {
        name: String,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, with gRPC codes in words.
fn one_line(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_line(status);
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) => status_line(status),
            None => cause.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn status_line(status: &tonic::Status) -> String {
    use tonic::Code::*;
    let word = match status.code() {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "timed out",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "not supported",
        Internal => "internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "not authenticated",
    };
    format!("{word}: {}", status.message())
}

struct Session {
    channel: Channel,
}

impl Session {
    async fn open(cli: &Cli) -> anyhow::Result<Self> {
        let stream = connect::dial(&cli.host).await?;
        let channel = connect::channel_over(&cli.host, stream).await?;
        Ok(Self { channel })
    }

    fn catalog(&self) -> pb::service_catalog_client::ServiceCatalogClient<Channel> {
        pb::service_catalog_client::ServiceCatalogClient::new(self.channel.clone())
    }

    fn volumes(&self) -> pb::volumes_client::VolumesClient<Channel> {
        pb::volumes_client::VolumesClient::new(self.channel.clone())
    }

    async fn services(&self) -> anyhow::Result<Vec<pb::Service>> {
        Ok(self
            .catalog()
            .list_services(pb::ListServicesRequest {})
            .await?
            .into_inner()
            .services)
    }

    /// The `--service` given, or the only service there is.
    async fn service(&self, arg: &ServiceArg) -> anyhow::Result<String> {
        if let Some(s) = &arg.service {
            return Ok(s.clone());
        }
        let services = self.services().await?;
        match services.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => bail!("the controller has no service you may use"),
            several => bail!(
                "the controller has several services ({}): choose one with --service",
                several
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let session = Session::open(&cli).await?;
    match &cli.command {
        Command::Service(ServiceCommand::List) => {
            let services = session.services().await?;
            match cli.output {
                Format::Table => println!("{}", output::service_table(&services)),
                Format::Json => print_json(&services.iter().map(output::service_json).collect())?,
            }
        }
        Command::Volume(VolumeCommand::List { service }) => {
            let mut volumes = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = session
                    .volumes()
                    .list_volumes(pb::ListVolumesRequest {
                        service: service.clone().unwrap_or_default(),
                        max_entries: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                volumes.extend(page.volumes);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            match cli.output {
                Format::Table => println!("{}", output::volume_table(&volumes)),
                Format::Json => print_json(&volumes.iter().map(output::volume_json).collect())?,
            }
        }
        Command::Volume(VolumeCommand::Create {
            name,
            service,
            size,
            options,
        }) => {
            let service = session.service(service).await?;
            let volume = session
                .volumes()
                .create_volume(pb::CreateVolumeRequest {
                    service,
                    name: name.clone(),
                    size_bytes: *size,
                    options: options.iter().cloned().collect(),
                })
                .await?
                .into_inner();
            print_volume(cli.output, &volume)?;
        }
        Command::Volume(VolumeCommand::Inspect { name, service }) => {
            let service = session.service(service).await?;
            let volume = session
                .volumes()
                .get_volume(pb::GetVolumeRequest {
                    service,
                    name: name.clone(),
                })
                .await?
                .into_inner();
            print_volume(cli.output, &volume)?;
        }
        Command::Volume(VolumeCommand::Remove { name, service }) => {
            let service = session.service(service).await?;
            session
                .volumes()
                .delete_volume(pb::DeleteVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                })
                .await?;
            match cli.output {
                Format::Table => println!("removed volume {name} from service {service}"),
                Format::Json => {
                    print_json(&serde_json::json!({"removed": name, "service": service}))?
                }
            }
        }
    }
    Ok(())
}

fn print_volume(format: Format, volume: &pb::Volume) -> anyhow::Result<()> {
    match format {
        Format::Table => println!("{}", output::volume_detail(volume)),
        Format::Json => print_json(&output::volume_json(volume))?,
    }
    Ok(())
}
