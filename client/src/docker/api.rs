//! The endpoints of Docker's volume plugin protocol.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Plugin;
use crate::node::{self, MountRequest, NodeError, UnmountRequest};
use crate::session::{Session, SessionError};
use crate::{output, pb, size};

/// The routes Docker calls, over the shared plugin state.
pub fn router(plugin: Arc<Plugin>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Create", post(create))
        .route("/VolumeDriver.Remove", post(remove))
        .route("/VolumeDriver.Mount", post(mount))
        .route("/VolumeDriver.Unmount", post(unmount))
        .route("/VolumeDriver.Path", post(path))
        .route("/VolumeDriver.Get", post(get))
        .route("/VolumeDriver.List", post(list))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .with_state(plugin)
}

/// A failure on its way to Docker: one line, and what to do.
struct Failure(String);

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Self {
        Failure(e.to_string())
    }
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Status(status) => status.into(),
            e => Failure(e.to_string()),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure(node::status_text(&status))
    }
}

/// Docker's media type for plugin answers.
const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

fn reply(value: Value) -> Response {
    ([(header::CONTENT_TYPE, MEDIA_TYPE)], value.to_string()).into_response()
}

fn answer(endpoint: &str, name: &str, result: Result<Value, Failure>) -> Response {
    match result {
        Ok(v) => reply(v),
        Err(Failure(message)) => {
            let line: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            eprintln!("berth plugin docker: {endpoint} {name:?}: {line}");
            reply(json!({ "Err": line }))
        }
    }
}

/// Parses a request body; an empty body is `{}`.
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Failure(format!("the request is not valid JSON: {e}")))
}

#[derive(Deserialize, Default)]
struct NameRequest {
    #[serde(rename = "Name", default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct CreateRequest {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct MountIdRequest {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

// Every handler reads the whole body, even when it needs none: a reply sent
// with the request still unread makes the kernel reset the connection, and
// the caller may lose the reply.
async fn activate(_body: Bytes) -> Response {
    reply(json!({ "Implements": ["VolumeDriver"] }))
}

async fn capabilities(_body: Bytes) -> Response {
    reply(json!({ "Capabilities": { "Scope": "global" } }))
}

/// Docker's name for a volume: `name`, or `service/name`.
fn split_name(docker_name: &str) -> Result<(Option<&str>, &str), Failure> {
    match docker_name.split_once('/') {
        _ if docker_name.is_empty() => Err(Failure("the request names no volume".into())),
        Some((service, name)) if !service.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((Some(service), name))
        }
        Some(_) => Err(Failure(format!(
            "{docker_name:?} is not a volume name; use NAME or SERVICE/NAME"
        ))),
        None => Ok((None, docker_name)),
    }
}

/// The service holding a volume Docker names: the one its name gives, else
/// the only service holding a volume of that name.
async fn locate(session: &Session, docker_name: &str) -> Result<pb::Volume, Failure> {
    let (service, name) = split_name(docker_name)?;
    let services = match service {
        Some(s) => vec![s.to_owned()],
        None => session
            .services()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect(),
    };
    let mut found = Vec::new();
    for service in services {
        match session
            .volumes()
            .get_volume(pb::GetVolumeRequest {
                service,
                name: name.to_owned(),
            })
            .await
        {
            Ok(v) => found.push(v.into_inner()),
            Err(status)
                if status.code() == tonic::Code::NotFound && service_unnamed(docker_name) => {}
            Err(status) => return Err(status.into()),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Failure(format!(
            "volume {name} does not exist in any service you may use; create it with `docker volume create -d <this plugin> {name}`"
        ))),
        _ => Err(Failure(format!(
            "volume {name} exists in several services ({}); name it SERVICE/{name}",
            found
                .iter()
                .map(|v| v.service.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn service_unnamed(docker_name: &str) -> bool {
    !docker_name.contains('/')
}

async fn create(State(plugin): State<Arc<Plugin>>, body: Bytes) -> Response {
    let request: Result<CreateRequest, _> = parse(&body);
    let name = request.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = async {
        let request = request?;
        let (named_service, name) = split_name(&request.name)?;
        let mut opts = request.opts.unwrap_or_default();
        let opt_service = opts.remove("service");
        let service = match (named_service, opt_service) {
            (Some(a), Some(b)) if a != b => {
                return Err(Failure(format!(
                    "the name says service {a} and --opt service says {b}; give one"
                )))
            }
            (Some(a), _) => a.to_owned(),
            (None, Some(b)) => b,
            (None, None) => {
                let session = plugin.session().await;
                session.service(None).await.map_err(|e| match e {
                    SessionError::SeveralServices(list) => Failure(format!(
                        "several services may hold it ({list}): add --opt service=NAME"
                    )),
                    e => e.into(),
                })?
            }
        };
        let size_bytes = match opts.remove("size") {
            Some(text) => {
                size::parse_size(&text).map_err(|e| Failure(format!("--opt size: {e}")))?
            }
            None => 0,
        };
        let session = plugin.session().await;
        session
            .volumes()
            .create_volume(pb::CreateVolumeRequest {
                service,
                name: name.to_owned(),
                size_bytes,
                options: opts,
                from_snapshot: String::new(),
            })
            .await?;
        Ok(json!({ "Err": "" }))
    }
    .await;
    answer("Create", &name, result)
}

async fn remove(State(plugin): State<Arc<Plugin>>, body: Bytes) -> Response {
    let request: Result<NameRequest, _> = parse(&body);
    let name = request.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = async {
        let request = request?;
        let session = plugin.session().await;
        let volume = locate(&session, &request.name).await?;
        let paths = plugin.node.paths_of(&volume.service, &volume.name).await?;
        if let Some(p) = paths.first() {
            return Err(Failure(format!(
                "volume {} is mounted at {}; stop the containers using it first",
                request.name,
                p.display()
            )));
        }
        session
            .volumes()
            .delete_volume(pb::DeleteVolumeRequest {
                service: volume.service,
                name: volume.name,
                force: false,
            })
            .await?;
        Ok(json!({ "Err": "" }))
    }
    .await;
    answer("Remove", &name, result)
}

async fn mount(State(plugin): State<Arc<Plugin>>, body: Bytes) -> Response {
    let request: Result<MountIdRequest, _> = parse(&body);
    let name = request.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = async {
        let request = request?;
        if request.id.is_empty() {
            return Err(Failure("the mount request has no ID".into()));
        }
        let session = plugin.session().await;
        let volume = locate(&session, &request.name).await?;
        let path = plugin
            .node
            .mount(
                &session,
                &MountRequest {
                    service: volume.service,
                    name: volume.name,
                    path: None,
                    read_only: false,
                    instance: plugin.instance.clone(),
                    holder: Some(request.id),
                },
            )
            .await?;
        Ok(json!({ "Mountpoint": path, "Err": "" }))
    }
    .await;
    answer("Mount", &name, result)
}

/// The `service/name` entries of the node state that Docker's name matches.
async fn mounted(plugin: &Plugin, docker_name: &str) -> Result<Option<(String, String)>, Failure> {
    let (service, name) = split_name(docker_name)?;
    let state = plugin.node.state().await?;
    let mut hits = state
        .volumes
        .values()
        .filter(|v| v.name == name && service.is_none_or(|s| s == v.service));
    Ok(hits.next().map(|v| (v.service.clone(), v.name.clone())))
}

async fn unmount(State(plugin): State<Arc<Plugin>>, body: Bytes) -> Response {
    let request: Result<MountIdRequest, _> = parse(&body);
    let name = request.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = async {
        let request = request?;
        // Only what this node mounted can be unmounted: no controller call
        // is needed to find it.
        let Some((service, vol)) = mounted(&plugin, &request.name).await? else {
            return Ok(json!({ "Err": "" }));
        };
        let session = plugin.session().await;
        plugin
            .node
            .unmount(
                &session,
                &UnmountRequest {
                    service,
                    name: vol,
                    path: None,
                    force: false,
                    instance: plugin.instance.clone(),
                    holder: Some(request.id).filter(|id| !id.is_empty()),
                },
            )
            .await?;
        Ok(json!({ "Err": "" }))
    }
    .await;
    answer("Unmount", &name, result)
}

async fn mountpoint(plugin: &Plugin, docker_name: &str) -> Result<String, Failure> {
    let Some((service, name)) = mounted(plugin, docker_name).await? else {
        return Ok(String::new());
    };
    Ok(plugin
        .node
        .paths_of(&service, &name)
        .await?
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_default())
}

async fn path(State(plugin): State<Arc<Plugin>>, body: Bytes) -> Response {
    let request: Result<NameRequest, _> = parse(&body);
    let name = request.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = async {
        let request = request?;
        let mountpoint = mountpoint(&plugin, &request.name).await?;
        Ok(json!({ "Mountpoint": mountpoint, "Err": "" }))
    }
    .await;
    answer("Path", &name, result)
}

async fn get(State(plugin): State<Arc<Plugin>>, body: Bytes) -> Response {
    let request: Result<NameRequest, _> = parse(&body);
    let name = request.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = async {
        let request = request?;
        let session = plugin.session().await;
        let volume = locate(&session, &request.name).await?;
        let mountpoint = mountpoint(&plugin, &request.name).await?;
        let json = output::volume_json(&volume);
        Ok(json!({
            "Volume": {
                "Name": request.name,
                "Mountpoint": mountpoint,
                "CreatedAt": json["created_at"],
                "Status": json,
            },
            "Err": "",
        }))
    }
    .await;
    answer("Get", &name, result)
}

async fn list(State(plugin): State<Arc<Plugin>>, _body: Bytes) -> Response {
    let result = async {
        let session = plugin.session().await;
        // One listing of every service the credential may see; never a
        // call per volume. Pages follow only for very large catalogues.
        let mut volumes = Vec::new();
        let mut page_token = String::new();
        for _ in 0..1000 {
            let page = session
                .volumes()
                .list_volumes(pb::ListVolumesRequest {
                    service: String::new(),
                    max_entries: 0,
                    page_token,
                    attachment: pb::AttachmentFilter::Any as i32,
                    with_usage: false,
                })
                .await?
                .into_inner();
            volumes.extend(page.volumes);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut count: HashMap<&str, usize> = HashMap::new();
        for v in &volumes {
            *count.entry(v.name.as_str()).or_default() += 1;
        }
        let state = plugin.node.state().await?;
        let listed: Vec<Value> = volumes
            .iter()
            .map(|v| {
                let docker_name = if count.get(v.name.as_str()) == Some(&1) {
                    v.name.clone()
                } else {
                    format!("{}/{}", v.service, v.name)
                };
                let mountpoint = state
                    .volumes
                    .get(&node::state::key(&v.service, &v.name))
                    .and_then(|s| s.paths.keys().next())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                json!({ "Name": docker_name, "Mountpoint": mountpoint })
            })
            .collect();
        Ok(json!({ "Volumes": listed, "Err": "" }))
    }
    .await;
    answer("List", "", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_map_to_berth_names() {
        assert!(matches!(split_name("v1"), Ok((None, "v1"))));
        assert!(matches!(split_name("fast/v1"), Ok((Some("fast"), "v1"))));
        for bad in ["", "/v1", "fast/", "a/b/c"] {
            assert!(split_name(bad).is_err(), "{bad:?}");
        }
    }
}
