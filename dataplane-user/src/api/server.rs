//! Routes of the daemon's API (axum on a Unix socket).

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context as _};
use axum::{
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    error::{ApiError, ApiResult},
    filters::{self, Filters},
    views, Attach, Attachment, Connect, ContainerCreate, Created, Disconnect, ErrorBody,
    NetworkCreate, PortMapping, PublishedPort, ServiceCreate, ServiceUpdate, SetNetns,
};
use crate::engine::Engine;
use crate::model::{PortBinding, Runtime};

pub type Shared = Arc<Engine>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{self}");
        }
        (
            status,
            Json(ErrorBody {
                message: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// Runs a write of the engine off the async runtime (it blocks on netlink,
/// BPF and the reconciler). Writes run in parallel: the store's guards
/// decide between conflicting ones. Reads do not come here: they answer
/// from the engine's snapshot at once.
async fn write<T: Send + 'static>(
    e: Shared,
    f: impl FnOnce(&Engine) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || f(&e))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("worker failed: {e}")))?
}

type JsonResult = ApiResult<Json<Value>>;

/// `?filters=` of the list routes (Docker's JSON of `KEY -> [VALUE...]`).
#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    filters: Option<String>,
    /// `ps -a`: stopped containers too.
    #[serde(default)]
    all: Option<String>,
}

impl ListQuery {
    fn filters(&self, keys: &[&str]) -> ApiResult<Filters> {
        Filters::from_query(self.filters.as_deref(), keys)
    }

    /// Docker's boolean query values: `1`/`true`/`yes` (and `0`/`false`/`no`).
    fn all(&self) -> ApiResult<bool> {
        match self.all.as_deref() {
            None | Some("" | "0" | "false" | "no") => Ok(false),
            Some("1" | "true" | "yes") => Ok(true),
            Some(v) => Err(super::error::bad(format!(
                "invalid value for all: {v:?} (expected true or false)"
            ))),
        }
    }
}

async fn networks(State(e): State<Shared>, Query(q): Query<ListQuery>) -> JsonResult {
    let f = q.filters(filters::NETWORK_KEYS)?;
    Ok(Json(views::list_networks(&e.snapshot(), &f)))
}

/// `network prune`: removes every network no container uses.
async fn networks_prune(State(e): State<Shared>, Query(q): Query<ListQuery>) -> JsonResult {
    let f = q.filters(filters::PRUNE_KEYS)?;
    let gone = write(e, move |e| e.prune_networks(&f)).await?;
    Ok(Json(serde_json::json!({ "NetworksDeleted": gone })))
}

async fn network_create(
    State(e): State<Shared>,
    Json(req): Json<NetworkCreate>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let id = write(e, move |e| e.create_network(req)).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn network_inspect(State(e): State<Shared>, UrlPath(name): UrlPath<String>) -> JsonResult {
    views::inspect_network(&e.snapshot(), &e.status(), &name).map(Json)
}

async fn network_rm(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    write(e, move |e| e.remove_network(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn network_connect(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<Connect>,
) -> ApiResult<StatusCode> {
    write(e, move |e| e.connect(&name, req)).await?;
    Ok(StatusCode::OK)
}

async fn network_disconnect(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<Disconnect>,
) -> ApiResult<StatusCode> {
    write(e, move |e| e.disconnect(&name, &req.container)).await?;
    Ok(StatusCode::OK)
}

async fn containers(State(e): State<Shared>, Query(q): Query<ListQuery>) -> JsonResult {
    let f = q.filters(filters::CONTAINER_KEYS)?;
    Ok(Json(views::list_containers(&e.snapshot(), q.all()?, &f)))
}

async fn container_create(
    State(e): State<Shared>,
    Json(req): Json<ContainerCreate>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let id = write(e, move |e| e.run(req)).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn container_inspect(State(e): State<Shared>, UrlPath(name): UrlPath<String>) -> JsonResult {
    views::inspect_container(&e.snapshot(), &e.status(), &name).map(Json)
}

#[derive(Deserialize)]
struct RmQuery {
    #[serde(default)]
    force: bool,
}

async fn container_rm(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RmQuery>,
) -> ApiResult<StatusCode> {
    write(e, move |e| e.remove_container(&name, q.force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn container_logs(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<String> {
    views::logs(&e.snapshot(), &name)
}

/// The container's published ports (Docker's `Port` objects).
async fn container_ports(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Vec<PublishedPort>>> {
    views::container_ports(&e.snapshot(), &name).map(Json)
}

async fn nodes(State(e): State<Shared>) -> JsonResult {
    Ok(Json(views::list_nodes(&e.snapshot())))
}

async fn services(State(e): State<Shared>) -> JsonResult {
    Ok(Json(views::list_services(&e.snapshot())))
}

async fn service_create(
    State(e): State<Shared>,
    Json(req): Json<ServiceCreate>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let id = write(e, move |e| e.create_service(req)).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn service_inspect(State(e): State<Shared>, UrlPath(name): UrlPath<String>) -> JsonResult {
    write(e, move |e| e.inspect_service(&name).map(Json)).await
}

async fn service_tasks(State(e): State<Shared>, UrlPath(name): UrlPath<String>) -> JsonResult {
    views::service_tasks(&e.snapshot(), &name).map(Json)
}

async fn service_update(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<ServiceUpdate>,
) -> ApiResult<StatusCode> {
    write(e, move |e| e.update_service(&name, req)).await?;
    Ok(StatusCode::OK)
}

async fn service_rm(
    State(e): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    write(e, move |e| e.remove_service(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn runtime(s: &str) -> ApiResult<Runtime> {
    s.parse().map_err(super::error::bad)
}

#[derive(Deserialize)]
struct RuntimeQuery {
    runtime: String,
}

async fn attachments(
    State(e): State<Shared>,
    Query(q): Query<RuntimeQuery>,
) -> ApiResult<Json<Vec<Attachment>>> {
    Ok(Json(e.attachments(runtime(&q.runtime)?)))
}

async fn attach(
    State(e): State<Shared>,
    Json(req): Json<Attach>,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let a = write(e, move |e| e.attach(req)).await?;
    Ok((StatusCode::CREATED, Json(a)))
}

async fn attachment(
    State(e): State<Shared>,
    UrlPath((rt, id)): UrlPath<(String, String)>,
) -> ApiResult<Json<Attachment>> {
    let rt = runtime(&rt)?;
    e.attachment(rt, &id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no {rt} attachment {id}")))
}

async fn detach(
    State(e): State<Shared>,
    UrlPath((rt, id)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let rt = runtime(&rt)?;
    write(e, move |e| e.detach(rt, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attachment_ports(
    State(e): State<Shared>,
    UrlPath((rt, id)): UrlPath<(String, String)>,
    Json(ports): Json<Vec<PortMapping>>,
) -> ApiResult<Json<Vec<PortBinding>>> {
    let rt = runtime(&rt)?;
    write(e, move |e| e.set_ports(rt, &id, ports))
        .await
        .map(Json)
}

async fn attachment_netns(
    State(e): State<Shared>,
    UrlPath((rt, id)): UrlPath<(String, String)>,
    Json(req): Json<SetNetns>,
) -> ApiResult<StatusCode> {
    let rt = runtime(&rt)?;
    write(e, move |e| e.set_netns(rt, &id, &req.netns)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(e): State<Shared>) -> JsonResult {
    write(e, |e| e.stats().map(Json)).await
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/networks", get(networks).post(network_create))
        .route("/networks/prune", post(networks_prune))
        .route("/networks/{name}", get(network_inspect).delete(network_rm))
        .route("/networks/{name}/connect", post(network_connect))
        .route("/networks/{name}/disconnect", post(network_disconnect))
        .route("/containers", get(containers).post(container_create))
        .route(
            "/containers/{name}",
            get(container_inspect).delete(container_rm),
        )
        .route("/containers/{name}/logs", get(container_logs))
        .route("/containers/{name}/ports", get(container_ports))
        .route("/nodes", get(nodes))
        .route("/services", get(services).post(service_create))
        .route("/services/{name}", get(service_inspect).delete(service_rm))
        .route("/services/{name}/tasks", get(service_tasks))
        .route("/services/{name}/update", post(service_update))
        .route("/stats", get(stats))
        .route("/attachments", get(attachments).post(attach))
        .route(
            "/attachments/{runtime}/{id}",
            get(attachment).delete(detach),
        )
        .route("/attachments/{runtime}/{id}/ports", post(attachment_ports))
        .route("/attachments/{runtime}/{id}/netns", post(attachment_netns))
        .with_state(state)
}

/// Binds the API socket, refusing if another daemon already answers on it and
/// replacing a stale socket file left by one that died.
pub fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "another daemon is already listening on {}",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale {}", socket.display()))?;
    }
    let l = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}
