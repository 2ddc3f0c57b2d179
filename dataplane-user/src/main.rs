//! `dataplane`: the daemon and its Docker-shaped CLI.

use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;
use dataplane_user::{
    api::server,
    cli::{self, Cli, Cmd, DaemonArgs},
    engine::{ClusterConfig, Config, Engine},
    host,
    store::{RedbStore, Store},
};
use tracing::{info, warn};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, as for every other bad input.
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("invalid arguments"));
            std::process::exit(2);
        }
    };
    if !matches!(cli.cmd, Cmd::Daemon(_)) {
        // A client whose output goes to a closed pipe (`dataplane ps | head`)
        // ends quietly, as Unix tools do, instead of panicking in println!.
        // The daemon keeps Rust's default (ignored) for its sockets.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Daemon(args) => daemon(args).await.map(|()| 0),
            cmd => cli::run_client(&cli.host, cli.timeout, cmd).await,
        }
    });
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("Error: {}", format!("{e:#}").replace('\n', " "));
            std::process::exit(1);
        }
    }
}

async fn daemon(args: DaemonArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn,hickory_proto=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if host::in_ip_netns_exec_mount_ns() {
        bail!(
            "the daemon is running in a private mount namespace with /sys remounted (as `ip netns exec` makes): \
             its bpffs pins would die with it; start it with `nsenter --net=/var/run/netns/NAME dataplane daemon` instead"
        );
    }
    // Every published port holds a socket: allow as many as the hard limit.
    match host::raise_nofile_limit() {
        Ok(n) => info!(limit = n, "open file limit"),
        Err(e) => warn!("raising the open file limit: {e}"),
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let socket = args.run_dir.join("api.sock");
    let listener = server::bind(&socket)?;
    let started = async {
        let (store, cluster) = open_store(&args)?;
        let cfg = Config {
            state_dir: args.state_dir.clone(),
            bpffs: args.bpffs.clone(),
            cluster,
            beside_docker: args.docker_plugin,
        };
        tokio::task::spawn_blocking(move || Engine::start(cfg, store)).await?
    };
    let d = match started.await {
        Ok(d) => d,
        Err(e) => {
            // Leave no socket behind that would look like a live daemon.
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    tokio::spawn(expire_conntrack(d.ct_pin()));
    info!(socket = %socket.display(), bpffs = %args.bpffs.display(), "daemon ready");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        info!("shutting down; containers and their traffic keep running");
    };
    let plugin = match docker_plugin(&args, &d) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let plugin_task = plugin.map(|(l, router, path)| {
        let mut rx = stop_rx.clone();
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            axum::serve(l, router).with_graceful_shutdown(stopped).await
        });
        (task, path)
    });
    axum::serve(listener, server::router(d))
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = stop_tx.send(true);
    if let Some((task, path)) = plugin_task {
        let _ = task.await;
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// With `--docker-plugin`: the plugin socket bound and its routes.
fn docker_plugin(
    args: &DaemonArgs,
    engine: &Arc<dataplane_user::engine::Engine>,
) -> Result<Option<(tokio::net::UnixListener, axum::Router, std::path::PathBuf)>> {
    use dataplane_user::docker;
    if !args.docker_plugin {
        return Ok(None);
    }
    if !dataplane_user::model::validate::valid_name(&args.docker_plugin_name) {
        bail!("invalid --docker-plugin-name {:?}", args.docker_plugin_name);
    }
    let path = args
        .docker_plugin_dir
        .join(format!("{}.sock", args.docker_plugin_name));
    let docker_host = match &args.docker_host {
        None => None,
        Some(h) => Some(std::path::PathBuf::from(
            h.strip_prefix("unix://")
                .with_context(|| format!("invalid --docker-host {h:?}: expected unix:///PATH"))?,
        )),
    };
    let listener = server::bind(&path)?;
    let plugin = Arc::new(docker::Plugin {
        engine: engine.clone(),
        cfg: docker::PluginConfig {
            socket: path.clone(),
            docker_host,
        },
    });
    info!(socket = %path.display(), "Docker network and IPAM driver plugin ready");
    Ok(Some((listener, docker::router(plugin), path)))
}

/// The embedded store, or with `--store` the cluster's etcd seen as this
/// host (its own keys under `nodes/<name>/`).
fn open_store(args: &DaemonArgs) -> Result<(Arc<dyn Store>, Option<ClusterConfig>)> {
    let Some(url) = &args.store else {
        let store = RedbStore::open(&args.state_dir.join("dataplane.redb"))?;
        return Ok((Arc::new(store), None));
    };
    let endpoints = dataplane_user::store::parse_store_url(url)?;
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("reading the hostname (or give --node-name)")?
            .to_string_lossy()
            .into_owned(),
    };
    if !dataplane_user::model::validate::valid_name(&node) {
        bail!("invalid --node-name {node:?}: use letters, digits, '_', '.', '-'");
    }
    let addr = args.advertise_addr.context(
        "--store needs --advertise-addr IP: the underlay address other hosts send this host's VXLAN to",
    )?;
    let etcd = dataplane_user::store::EtcdStore::connect(&endpoints, "/dataplane/")?;
    let scoped = dataplane_user::store::NodeScoped::new(Arc::new(etcd), &node);
    let cluster = ClusterConfig {
        node,
        addr,
        lease_ttl: std::time::Duration::from_secs(args.lease_ttl),
        grace: std::time::Duration::from_secs(args.node_grace),
    };
    Ok((Arc::new(scoped), Some(cluster)))
}

/// Every ten seconds: conntrack expiry, on a handle of its own on the pinned
/// map (the LRU map would evict idle flows under pressure anyway; this keeps
/// the count honest and the map roomy). Uplinks, host addresses and every
/// other projection are the reconciler's.
async fn expire_conntrack(ct_pin: std::path::PathBuf) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pin = ct_pin.clone();
        let now = dataplane_user::host::monotonic_ns();
        match tokio::task::spawn_blocking(move || {
            dataplane_user::bpf::expire_conntrack_at(&pin, now)
        })
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(entries = n, "expired conntrack entries"),
            Ok(Err(e)) => tracing::warn!("expiring conntrack entries: {e:#}"),
            Err(e) => tracing::warn!("conntrack expiry task: {e}"),
        }
    }
}
