//! Docker's front door: the remote network driver and remote IPAM driver
//! plugin protocols (HTTP+JSON on a Unix socket in Docker's plugin
//! directory, `/run/docker/plugins/dataplane.sock` by default). Every call
//! maps onto the engine's operations: networks (`create_network_as`,
//! `remove_network`), attachments (`attach`, `detach`, `set_ports`,
//! `set_netns`) and the IPAM records (`request_pool`, `request_address`,
//! ...). Errors come back as the protocol's `{"Err": "..."}`.

pub mod ipam;
pub mod names;
pub mod network;
pub mod proto;

use std::{path::PathBuf, sync::Arc};

use axum::{
    body::Bytes,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    api::error::{ApiError, ApiResult},
    engine::Engine,
};

/// Docker looks for plugin sockets here.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
/// The driver's name (`docker network create -d dataplane --ipam-driver
/// dataplane`): the socket is `<dir>/<name>.sock`.
pub const DEFAULT_PLUGIN_NAME: &str = "dataplane";

/// Where the plugin listens, and the Docker engine it may ask for names.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    pub socket: PathBuf,
    /// Docker's API socket (`--docker-host unix:///var/run/docker.sock`):
    /// used to learn the name of a network Docker creates (the protocol
    /// does not send it).
    pub docker_host: Option<PathBuf>,
}

pub struct Plugin {
    pub engine: Arc<Engine>,
    pub cfg: PluginConfig,
}

pub type Shared = Arc<Plugin>;

/// A plugin answer: the body as JSON, or `{"Err": ...}` with a status
/// (Docker reads the message from either).
pub struct Answer(Result<serde_json::Value, (StatusCode, String)>);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, body) = match self.0 {
            Ok(v) => (StatusCode::OK, v),
            Err((status, msg)) => {
                if status == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::warn!("docker plugin: {msg}");
                }
                (
                    status,
                    serde_json::to_value(proto::ErrResponse { err: msg }).unwrap_or_default(),
                )
            }
        };
        (
            status,
            [(header::CONTENT_TYPE, proto::CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

impl Answer {
    pub fn ok<T: Serialize>(v: &T) -> Self {
        match serde_json::to_value(v) {
            Ok(v) => Answer(Ok(v)),
            Err(e) => Answer(Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))),
        }
    }

    pub fn empty() -> Self {
        Answer(Ok(serde_json::json!({})))
    }

    pub fn err(e: ApiError) -> Self {
        let status = match &e {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Answer(Err((status, e.to_string())))
    }

    pub fn from_result<T: Serialize>(r: ApiResult<T>) -> Self {
        match r {
            Ok(v) => Answer::ok(&v),
            Err(e) => Answer::err(e),
        }
    }
}

/// Decodes a request body. An empty body reads as `{}` (Docker sends
/// nothing to `Plugin.Activate` and the capability calls); anything that is
/// not the JSON object the call takes is a bad request, never a crash.
pub fn decode<T: DeserializeOwned>(method: &str, body: &[u8]) -> ApiResult<T> {
    tracing::debug!(method, body = %String::from_utf8_lossy(body), "docker plugin call");
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::BadRequest(format!("{method}: the request body is not valid: {e}"))
    };
    // Only an object: serde would also read a struct from an array.
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    if !v.is_object() {
        return Err(invalid(&format!("expected a JSON object, got {v}")));
    }
    serde_json::from_value(without_nulls(v)).map_err(|e| invalid(&e))
}

/// Go encodes a nil map, slice or pointer as `null`: it means the zero
/// value, which is what a missing field takes here.
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        v => v,
    }
}

/// Runs a write of the engine off the async runtime (it blocks on netlink,
/// BPF and the reconciler).
pub async fn blocking<T: Send + 'static>(
    p: &Shared,
    f: impl FnOnce(&Plugin) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let p = p.clone();
    tokio::task::spawn_blocking(move || f(&p))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("worker failed: {e}")))?
}

async fn activate() -> Answer {
    Answer::ok(&proto::Activate {
        implements: vec!["NetworkDriver", "IpamDriver"],
    })
}

pub fn router(plugin: Shared) -> Router {
    let r = Router::new().route("/Plugin.Activate", post(activate));
    network::routes(ipam::routes(r))
        .fallback(|uri: axum::http::Uri| async move {
            Answer::err(ApiError::NotFound(format!(
                "{}: not a call of the NetworkDriver or IpamDriver protocol",
                uri.path()
            )))
        })
        .with_state(plugin)
}

/// Reads a body as bytes whatever its content type (Docker sends its own
/// media type, curl may send none).
pub type Body = Bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_the_call_s_object_are_bad_requests() {
        for bad in [
            &b"{"[..],
            b"[]",
            b"null",
            b"\"NetworkID\"",
            b"{\"NetworkID\": 5}",
            b"{\"Interface\": \"eth0\"}",
            b"\xff\xfe",
        ] {
            let e = decode::<proto::CreateEndpointRequest>("CreateEndpoint", bad);
            assert!(
                matches!(e, Err(ApiError::BadRequest(ref m)) if m.starts_with("CreateEndpoint: ")),
                "{:?} -> {e:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_fields_and_empty_bodies_are_accepted() {
        let r: proto::CreateEndpointRequest = decode(
            "CreateEndpoint",
            br#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.0.0.2/24","Future":1},"Later":{"x":[1]}}"#,
        )
        .unwrap();
        assert_eq!(r.network_id, "n");
        assert_eq!(r.interface.unwrap().address, "10.0.0.2/24");
        let r: proto::RequestAddressRequest = decode(
            "RequestAddress",
            br#"{"PoolID":"p","Address":"","Options":null}"#,
        )
        .unwrap();
        assert!(r.options.is_empty());
        let r: proto::NetworkRequest = decode("DeleteNetwork", b"  \n").unwrap();
        assert_eq!(r.network_id, "");
    }

    #[test]
    fn errors_are_the_protocol_s_err_object() {
        let resp =
            Answer::err(ApiError::Conflict("address 10.0.0.2 is in use".into())).into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], proto::CONTENT_TYPE);
        let v = serde_json::to_value(proto::ErrResponse { err: "x".into() }).unwrap();
        assert_eq!(v, serde_json::json!({"Err": "x"}));
    }
}
