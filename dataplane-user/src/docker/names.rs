//! The names of networks Docker creates: `CreateNetwork` carries only the
//! NetworkID, and Docker stores the network (so its API knows it) only
//! after the driver answered. With `--docker-host`, the plugin asks
//! Docker's API for the name a little later and renames our network to it
//! (`dataplane network ls` then shows Docker's name). Without it, or when
//! the name is taken by another of our networks, the network keeps its
//! `docker-<12 hex>` name.

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
