//! The names of networks Docker creates: `CreateNetwork` carries only the
//! NetworkID, and Docker stores the network (so its API knows it) only
//! after the driver answered. With `--docker-host`, the plugin asks
//! Docker's API for the name a little later and renames our network to it
//! (`dataplane network ls` then shows Docker's name). Without it, or when
//! the name is taken by another of our networks, the network keeps its
//! `docker-<12 hex>` name. The same goes for the attachments of Docker's
//! endpoints: they take the name of the container Docker joined them to.

use std::time::Duration;

use hyper::Method;
use tracing::{debug, warn};

use super::Shared;
use crate::api::client::Client;

/// How long the plugin keeps asking Docker for a new network's name.
const LEARN_FOR: Duration = Duration::from_secs(30);
const ASK_EVERY: Duration = Duration::from_millis(100);

/// Starts learning network `id`'s Docker name (if `--docker-host` is set).
pub fn learn_name(p: Shared, id: String) {
    let Some(sock) = p.cfg.docker_host.clone() else {
        return;
    };
    tokio::spawn(async move {
        let client = Client::new(&sock).with_timeout(Some(Duration::from_secs(5)));
        let path = format!("/networks/{id}");
        let tries = LEARN_FOR.as_millis() / ASK_EVERY.as_millis();
        for _ in 0..tries {
            match client.call(Method::GET, &path, None).await {
                Ok(body) => {
                    let name = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("Name")?.as_str().map(str::to_string));
                    let Some(name) = name else {
                        warn!(network = %id, "Docker's answer for the network has no Name");
                        return;
                    };
                    let id2 = id.clone();
                    let r =
                        super::blocking(&p, move |p| p.engine.rename_network(&id2, &name)).await;
                    match r {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!(network = %id, "keeping the provisional name: Docker's name is taken or not valid here")
                        }
                        Err(e) => warn!(network = %id, "naming the network: {e}"),
                    }
                    return;
                }
                Err(e) => debug!(network = %id, "asking Docker for the network's name: {e:#}"),
            }
            tokio::time::sleep(ASK_EVERY).await;
        }
        warn!(network = %id, "Docker did not show the network within {}s: it keeps its provisional name", LEARN_FOR.as_secs());
    });
}

/// Starts learning the name of the container Docker joined endpoint `eid`
/// of network `nid` to (if `--docker-host` is set): Docker's network shows
/// the container with its endpoint once the join completed. The
/// attachment takes the container's name, or `NAME.NETWORK` when the
/// container's name is taken (its endpoint on another of our networks).
pub fn learn_endpoint_name(p: Shared, nid: String, eid: String) {
    let Some(sock) = p.cfg.docker_host.clone() else {
        return;
    };
    tokio::spawn(async move {
        let client = Client::new(&sock).with_timeout(Some(Duration::from_secs(5)));
        let path = format!("/networks/{nid}");
        let tries = LEARN_FOR.as_millis() / ASK_EVERY.as_millis();
        for _ in 0..tries {
            let found = match client.call(Method::GET, &path, None).await {
                Ok(body) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        let net = v.get("Name")?.as_str()?.to_string();
                        let name = v
                            .get("Containers")?
                            .as_object()?
                            .values()
                            .find(|c| {
                                c.get("EndpointID").and_then(|e| e.as_str()) == Some(eid.as_str())
                            })?
                            .get("Name")?
                            .as_str()?
                            .to_string();
                        Some((name, net))
                    }),
                Err(e) => {
                    debug!(endpoint = %eid, "asking Docker for the endpoint's container: {e:#}");
                    None
                }
            };
            if let Some((name, net)) = found {
                let e2 = eid.clone();
                let r = super::blocking(&p, move |p| {
                    Ok(p.engine.rename_docker_endpoint(&e2, &name)?
                        || p.engine
                            .rename_docker_endpoint(&e2, &format!("{name}.{net}"))?)
                })
                .await;
                match r {
                    Ok(_) => {}
                    Err(e) => debug!(endpoint = %eid, "naming the endpoint: {e}"),
                }
                return;
            }
            tokio::time::sleep(ASK_EVERY).await;
        }
        debug!(endpoint = %eid, "Docker did not show the endpoint's container: it keeps its provisional name");
    });
}
