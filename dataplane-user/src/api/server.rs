//! Routes of the daemon's API (axum on a Unix socket).

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

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
    Connect, ContainerCreate, Created, Disconnect, ErrorBody, NetworkCreate, PublishedPort,
};
use crate::daemon::{ApiError, ApiResult, Daemon};

pub type Shared = Arc<Mutex<Daemon>>;

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

/// Runs `f` on the daemon state off the async runtime (netlink and BPF work
/// block), one operation at a time.
async fn with<T: Send + 'static>(
    s: Shared,
    f: impl FnOnce(&mut Daemon) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || {
        let mut d = s.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("worker failed: {e}")))?
}

type JsonResult = ApiResult<Json<Value>>;

async fn networks(State(s): State<Shared>) -> JsonResult {
    with(s, |d| Ok(Json(d.list_networks()))).await
}

async fn network_create(
    State(s): State<Shared>,
    Json(req): Json<NetworkCreate>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let id = with(s, move |d| d.create_network(req)).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn network_inspect(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> JsonResult {
    with(s, move |d| d.inspect_network(&name).map(Json)).await
}

async fn network_rm(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    with(s, move |d| d.remove_network(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn network_connect(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<Connect>,
) -> ApiResult<StatusCode> {
    with(s, move |d| d.connect(&name, req)).await?;
    Ok(StatusCode::OK)
}

async fn network_disconnect(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<Disconnect>,
) -> ApiResult<StatusCode> {
    with(s, move |d| d.disconnect(&name, &req.container)).await?;
    Ok(StatusCode::OK)
}

async fn containers(State(s): State<Shared>) -> JsonResult {
    with(s, |d| Ok(Json(d.list_containers()))).await
}

async fn container_create(
    State(s): State<Shared>,
    Json(req): Json<ContainerCreate>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let id = with(s, move |d| d.run(req)).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn container_inspect(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> JsonResult {
    with(s, move |d| d.inspect_container(&name).map(Json)).await
}

#[derive(Deserialize)]
struct RmQuery {
    #[serde(default)]
    force: bool,
}

async fn container_rm(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RmQuery>,
) -> ApiResult<StatusCode> {
    with(s, move |d| d.remove_container(&name, q.force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn container_logs(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<String> {
    with(s, move |d| d.logs(&name)).await
}

/// The container's published ports (Docker's `Port` objects).
async fn container_ports(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Vec<PublishedPort>>> {
    with(s, move |d| d.container_ports(&name).map(Json)).await
}

async fn stats(State(s): State<Shared>) -> JsonResult {
    with(s, |d| d.stats().map(Json)).await
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/networks", get(networks).post(network_create))
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
        .route("/stats", get(stats))
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
